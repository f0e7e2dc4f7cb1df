"""Separation quality: metrics, the methods compared, and the runner behind ``stembridge evaluate``.

Test songs are folders ``DIR/<song>/{mixture,vocals,drums,bass,other}.wav`` (any sample rate, mono or stereo).

Metrics, per song and stem (all audio at the song's own rate):

- ``sdr``: BSS Eval v4 SDR as museval computes it (``museval.evaluate`` with 1 s windows and 1 s hop, the SiSEC 2018
  / MUSDB18 protocol), the median over windows ignoring NaN. In v4's "images" mode the SDR of a window is exactly
  ``10 log10(|s|^2 / |s_hat - s|^2)``: the distortion filters change ISR/SIR/SAR, never the SDR. ``window_sdr``
  computes that directly (museval's cost is dominated by its filters: 6-19 s per 10 s song), including museval's
  NaN rule (a window where the reference or the estimate is digital silence) and its windowing (whole windows
  only). One difference is deliberate: museval run on all four stems together sets a window to NaN for every stem
  when any one stem is silent there; we evaluate each stem on its own windows, which gives the same values where
  both are defined and keeps songs with a silent stem (instrumentals, drumless grooves) in the other stems'
  figures. ``museval_sdr`` runs museval itself; a test and the benchmark check that the two agree.
- ``sdr_full`` and ``si_sdr``: whole-track SDR (the MDX "new SDR") and scale-invariant SDR, fast secondary figures.
- ``vocal_leakage_db`` (karaoke figure), see ``vocal_leakage_db``.

Summary: per method and stem the median over songs (songs where the stem is silent are left out), and the mean of
the four stem medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.signal import resample_poly, stft
from stembridge.engine.audio_io import read_audio
from stembridge.engine.baselines import STEMS, ClassicalSeparator, ideal_ratio_mask, mixture_fraction

WINDOW_S = 1.0
LEAKAGE_FLOOR_DB = -100.0
KARAOKE_HIGH_BAND_HZ = (11000.0, 16000.0)  # a vocal's sibilants and breaths (and where Spleeter's band ends)
REPORT_SCHEMA_VERSION = 1
TARGET_OVER_CLASSICAL_DB = 5.0  # every stem at least this far above the classical separator
TARGET_BELOW_IRM_DB = 3.0  # the mean at most this far below the ideal ratio mask
CARD_QUALITY_KEYS = ("quality", "quality_heldout_timbres")  # where a card's provenance holds evaluation figures
IRM_FALLBACK_STFT = (1024, 256)  # the oracle's STFT when no model card is there to give one


class EvaluationError(Exception):
    """A problem with the evaluation's input (missing folder, missing stem file, mismatched files)."""


# ----------------------------------------------------------------------------------------------------- songs


@dataclass
class Song:
    """One test song: mixture float32 (num_channels, n), references float32 (4, num_channels, n) in STEMS order."""

    name: str
    sample_rate: int
    mixture: np.ndarray
    references: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.mixture.shape[1] / self.sample_rate


def find_songs(root: str | Path) -> list[Path]:
    """Song folders under ``root`` (each holding mixture.wav), sorted by name.

    ``root`` may be a folder of songs, a parent with a ``test/`` folder of songs, or one song folder.
    """
    root = Path(root)
    if not root.exists():
        raise EvaluationError(f"{root}: no such folder")
    if not root.is_dir():
        raise EvaluationError(f"{root}: is not a folder (give the folder that holds the test songs)")
    if _is_song(root):
        return [root]
    for base in (root, root / "test"):
        if base.is_dir():
            songs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_song(p))
            if songs:
                return songs
    raise EvaluationError(
        f"{root}: no test songs found (expected {root}/<song>/mixture.wav with "
        f"{', '.join(s + '.wav' for s in STEMS)} beside it, or a test/ folder holding such songs)"
    )


def _is_song(path: Path) -> bool:
    return (path / "mixture.wav").exists() or all((path / f"{s}.wav").exists() for s in STEMS)


def load_song(path: str | Path, max_seconds: float | None = None) -> Song:
    """Read ``path/{mixture,vocals,drums,bass,other}.wav``; crop to ``max_seconds`` (from the start) if given.
    Without mixture.wav the mixture is the sum of the stems (a song bank such as engine/training/musdb.py writes:
    real multitracks are scored against the sum of their decoded stems)."""
    path = Path(path)
    has_mixture = (path / "mixture.wav").exists()
    names = ("mixture", *STEMS) if has_mixture else STEMS
    missing = [f"{name}.wav" for name in names if not (path / f"{name}.wav").exists()]
    if missing:
        raise EvaluationError(f"{path}: missing {', '.join(missing)}")
    if has_mixture:
        mixture, rate = read_audio(path / "mixture.wav")
    else:
        first, rate = read_audio(path / f"{STEMS[0]}.wav")
        mixture = np.zeros_like(first)
    stems = []
    for stem in STEMS:
        audio, stem_rate = read_audio(path / f"{stem}.wav")
        if stem_rate != rate or audio.shape[0] != mixture.shape[0]:
            raise EvaluationError(
                f"{path / (stem + '.wav')}: {stem_rate} Hz, {audio.shape[0]} channel(s), but mixture.wav has "
                f"{rate} Hz, {mixture.shape[0]} channel(s)"
            )
        stems.append(audio)
    if not has_mixture:
        n = min(a.shape[1] for a in stems)
        mixture = np.sum([a[:, :n] for a in stems], axis=0).astype(np.float32)
    n = min(a.shape[1] for a in (mixture, *stems))
    if max_seconds is not None:
        n = min(n, max(1, int(round(max_seconds * rate))))
    references = np.stack([a[:, :n] for a in stems])
    return Song(path.name, rate, np.ascontiguousarray(mixture[:, :n]), np.ascontiguousarray(references))


# --------------------------------------------------------------------------------------------------- metrics


def window_sdr(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, window_s: float = WINDOW_S) -> np.ndarray:
    """BSS Eval v4 SDR per window, as ``museval.evaluate(win=hop=window_s * sample_rate)`` computes it for one source.

    reference, estimate: float (num_channels, n). Returns float64 (num_windows,): whole windows only (one window
    when the signal is shorter than a window); NaN where the reference or the estimate is silent (all channels
    summing to exactly 0 throughout the window), +inf for a perfect estimate.
    """
    n = reference.shape[1]
    win = int(window_s * sample_rate)
    est = np.zeros_like(reference, dtype=np.float64)
    m = min(n, estimate.shape[1])
    est[:, :m] = estimate[:, :m]
    ref = reference.astype(np.float64)
    starts = [0] if win >= n else range(0, n - win + 1, win)
    out = np.empty(len(starts))
    for i, a in enumerate(starts):
        r, e = ref[:, a : a + win], est[:, a : a + win]
        if not np.any(r.sum(axis=0)) or not np.any(e.sum(axis=0)):
            out[i] = np.nan
            continue
        err = np.sum((e - r) ** 2)
        out[i] = np.inf if err == 0 else 10.0 * np.log10(np.sum(r**2) / err)
    return out


def museval_sdr(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, window_s: float = WINDOW_S
) -> np.ndarray:
    """The same figure from museval itself (slow; for cross-checks). Shapes as ``window_sdr``."""
    import museval

    win = int(window_s * sample_rate)
    sdr, _, _, _ = museval.evaluate(reference.T[None], estimate.T[None], win=win, hop=win)
    return np.asarray(sdr[0], dtype=np.float64)


def median_sdr(windows: np.ndarray) -> float:
    """Median over windows ignoring NaN; NaN when no window is defined."""
    valid = windows[~np.isnan(windows)]
    return float(np.median(valid)) if valid.size else math.nan


def full_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Whole-track SDR in dB: 10 log10(|s|^2 / |s_hat - s|^2) over all channels; NaN for a silent reference."""
    energy = float(np.sum(reference.astype(np.float64) ** 2))
    if energy == 0:
        return math.nan
    err = float(np.sum((estimate.astype(np.float64) - reference) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(energy / err)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB over the whole track (all channels as one vector); NaN for a silent reference."""
    s = reference.astype(np.float64).ravel()
    e = estimate.astype(np.float64).ravel()
    energy = float(s @ s)
    if energy == 0:
        return math.nan
    target = (float(e @ s) / energy) * s
    target_energy = float(target @ target)
    if target_energy == 0:
        return -math.inf
    err = float(np.sum((e - target) ** 2))
    return math.inf if err == 0 else 10.0 * math.log10(target_energy / err)


def vocal_leakage_db(
    instrumental: np.ndarray,
    vocals: np.ndarray,
    accompaniment: np.ndarray,
    sample_rate: int,
    band_hz: tuple[float, float] | None = None,
) -> float:
    """Karaoke figure: how much of the true vocal is left when the vocal stem is muted, in dB (lower is better).

    instrumental: the estimate with vocals muted (sum of the other estimated stems); vocals, accompaniment: the true
    vocal and the true sum of the other stems; all float (num_channels, n). In the STFT domain (about 46 ms Hann,
    hop a quarter), for each channel and frequency bin the instrumental's frames are fitted by least squares as
    ``alpha * V + beta * A`` (complex gains, constant over the track: a time-invariant filter per channel, like
    BSS Eval v4's distortion filters). The leaked vocal is ``alpha * V``; the figure is
    ``10 log10(sum |alpha V|^2 / sum |V|^2)``, the leaked vocal's energy relative to the vocal's energy in the mix.
    Fitting A jointly keeps the accompaniment from being counted as vocal. Mixture/4 gives 20 log10(3/4) = -2.5 dB,
    the true accompaniment -inf (reported as ``LEAKAGE_FLOOR_DB``). NaN for a song without vocals.
    ``band_hz``: the same figure over the bins of that band only (e.g. (11000, 16000): sibilants and breaths).
    """
    n_fft = int(2 ** round(np.log2(0.046 * sample_rate)))
    args = dict(fs=sample_rate, window="hann", nperseg=n_fft, noverlap=n_fft - n_fft // 4, boundary="zeros")
    y, v, a = (stft(x.astype(np.float64), **args)[2] for x in (instrumental, vocals, accompaniment))
    if band_hz is not None:
        freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        keep = (freqs >= band_hz[0]) & (freqs < band_hz[1])
        y, v, a = y[:, keep], v[:, keep], a[:, keep]
    vocal_energy = np.sum(np.abs(v) ** 2, axis=-1)  # (channels, bins)
    if vocal_energy.sum() == 0:
        return math.nan
    basis = np.stack([v, a], axis=-1)  # (channels, bins, frames, 2)
    gram = np.einsum("cftk,cftl->cfkl", basis.conj(), basis)
    rhs = np.einsum("cftk,cft->cfk", basis.conj(), y)
    ridge = 1e-9 * np.trace(gram, axis1=-2, axis2=-1).real[..., None, None] + 1e-30
    gains = np.linalg.solve(gram + ridge * np.eye(2), rhs[..., None])[..., 0]
    leaked = np.sum(np.abs(gains[..., 0]) ** 2 * vocal_energy)
    if leaked == 0:
        return LEAKAGE_FLOOR_DB
    return max(LEAKAGE_FLOOR_DB, 10.0 * math.log10(leaked / vocal_energy.sum()))


def source_shares(
    estimates: np.ndarray, source: np.ndarray, rest: np.ndarray, sample_rate: int, home: str
) -> dict[str, float]:
    """Where one known source of a mix went: its share in each estimated stem and outside its ``home`` stem, in dB
    relative to the source (``vocal_leakage_db``'s fit: each estimate as a * source + b * rest). estimates:
    (num_stems, channels, n) in STEMS order; source and rest: (channels, n), mixture = source + rest. For ``home``
    higher is better (0 dB: all of it); for the other stems and ``outside_<home>`` lower is better. Mixture/4 puts
    -12.0 dB in every stem and -2.5 dB outside ``home``."""
    shares = {s: vocal_leakage_db(estimates[i], source, rest, sample_rate) for i, s in enumerate(STEMS)}
    outside = sum(estimates[i] for i, s in enumerate(STEMS) if s != home)
    shares[f"outside_{home}"] = vocal_leakage_db(outside, source, rest, sample_rate)
    return {k: round(v, 2) for k, v in shares.items()}


def score(song: Song, estimates: np.ndarray) -> dict[str, Any]:
    """All metrics of one method on one song. estimates: float32 (4, num_channels, n) in STEMS order."""
    result: dict[str, Any] = {"sdr": {}, "sdr_full": {}, "si_sdr": {}, "num_windows": {}}
    for i, stem in enumerate(STEMS):
        windows = window_sdr(song.references[i], estimates[i], song.sample_rate)
        result["sdr"][stem] = median_sdr(windows)
        result["num_windows"][stem] = int(np.sum(~np.isnan(windows)))
        result["sdr_full"][stem] = full_sdr(song.references[i], estimates[i])
        result["si_sdr"][stem] = si_sdr(song.references[i], estimates[i])
    v = STEMS.index("vocals")
    instrumental = estimates.sum(axis=0) - estimates[v]
    accompaniment = song.references.sum(axis=0) - song.references[v]
    result["vocal_leakage_db"] = vocal_leakage_db(instrumental, song.references[v], accompaniment, song.sample_rate)
    result["vocal_leakage_db_11_16k"] = (
        vocal_leakage_db(instrumental, song.references[v], accompaniment, song.sample_rate, KARAOKE_HIGH_BAND_HZ)
        if song.sample_rate >= 2 * KARAOKE_HIGH_BAND_HZ[1]
        else math.nan
    )
    return result


# --------------------------------------------------------------------------------------------------- methods


class Method(Protocol):
    """A separator under evaluation: ``separate(song)`` -> float32 (4, num_channels, n) in STEMS order."""

    name: str
    description: str
    params: dict

    def separate(self, song: Song) -> np.ndarray: ...


def _resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """audio: float (..., n) -> float32 (..., about n * to_rate / from_rate)."""
    if from_rate == to_rate:
        return audio
    g = math.gcd(from_rate, to_rate)
    return resample_poly(audio, to_rate // g, from_rate // g, axis=-1).astype(np.float32)


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    if audio.shape[-1] >= n:
        return audio[..., :n]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, n - audio.shape[-1])])


class MixtureFractionMethod:
    name = "mixture/4"
    description = "every stem estimated as mixture / 4 (the trivial floor)"
    params: dict = {}

    def separate(self, song: Song) -> np.ndarray:
        return mixture_fraction(song.mixture, len(STEMS))


class ClassicalMethod:
    name = "classical"

    def __init__(self) -> None:
        self.separator = ClassicalSeparator()
        self.description = self.separator.description
        self.params = self.separator.params

    def separate(self, song: Song) -> np.ndarray:
        return self.separator.separate(song.mixture, song.sample_rate)


class IdealRatioMaskMethod:
    """The oracle with a model's STFT, run at the model's sample rate (songs are resampled to it and back)."""

    name = "irm"

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_size: int,
        power: float = 2.0,
        source: str = "",
        window_name: str = "hann",
    ) -> None:
        self.sample_rate, self.n_fft, self.hop_size, self.power = sample_rate, n_fft, hop_size, power
        self.window_name = window_name
        self.description = (
            f"ideal ratio mask |S_j|^{power:g} / sum |S_k|^{power:g} (oracle, non-causal) with "
            f"{source or 'the'} STFT: n_fft {n_fft}, hop {hop_size}, {window_name} window, {sample_rate} Hz"
        )
        self.params = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "hop_size": hop_size,
            "window": window_name,
            "power": power,
        }

    def separate(self, song: Song) -> np.ndarray:
        mixture = _resample(song.mixture, song.sample_rate, self.sample_rate)
        references = _resample(song.references, song.sample_rate, self.sample_rate)
        estimates = ideal_ratio_mask(
            mixture, references, self.n_fft, self.hop_size, self.power, window_name=self.window_name
        )
        return _fit(_resample(estimates, self.sample_rate, song.sample_rate), song.mixture.shape[1])


class ModelMethod:
    """A model-contract ONNX model run through the live streaming path (StreamingSeparator + BlockAdapter)."""

    name = "model"

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "auto",
        block_size: int = 4096,
        threads: int = 1,
        spatial_filter: bool | dict[str, float] | None = None,
    ) -> None:
        from stembridge.engine.separator import StreamingSeparator
        from stembridge.engine.stream import BlockAdapter

        separator = StreamingSeparator(
            model_path,
            device=device,
            intra_op_threads=threads,
            max_hops=max(1, block_size // 64 + 2),
            spatial_filter=spatial_filter,
        )
        card = separator.card
        missing = [s for s in STEMS if s not in card.stems]
        if missing:
            raise EvaluationError(f"{card.path}: the model has no stem(s) {', '.join(missing)} (it has {card.stems})")
        self.card = card
        self.block_size = block_size
        self.adapter = BlockAdapter(separator, max_block_size=block_size, block_size=block_size)
        self.order = [card.stems.index(s) for s in STEMS]
        self.description = (
            f"model '{card.name}' through the streaming path (block {block_size}, latency "
            f"{self.adapter.latency_samples} samples removed{', spatial filter' if separator.spatial else ''}) "
            f"on {separator.active_provider}"
        )
        self.params = {
            "name": card.name,
            "path": str(card.path),
            "sample_rate": card.sample_rate,
            "n_fft": card.n_fft,
            "hop_size": card.hop_size,
            "latency_ms": round(card.latency_ms, 2),
            "block_size": block_size,
            "provider": separator.active_provider,
            "spatial_filter": separator.spatial.settings if separator.spatial else None,
            "trained_steps": card.provenance.get("trained_steps"),
        }

    def separate(self, song: Song) -> np.ndarray:
        from stembridge.engine.separate import separate_audio

        rate = self.card.sample_rate
        mixture = _resample(song.mixture, song.sample_rate, rate)
        stems = separate_audio(self.adapter, mixture, self.block_size)[self.order]
        return _fit(_resample(stems, rate, song.sample_rate), song.mixture.shape[1])


class HighQualityMethod:
    """The high-quality path for audio known in advance (engine/hq.py): look-ahead vocals, look-ahead drums and bass,
    the causal model's vocals above 11 kHz."""

    name = "hq"

    def __init__(
        self,
        lookahead_path: str | Path | None = None,
        causal_path: str | Path | None = None,
        device: str = "auto",
        threads: int = 1,
    ) -> None:
        from stembridge.engine.hq import HighQualitySeparator

        self.separator = HighQualitySeparator(lookahead_path, causal_path, device=device, threads=threads)
        la = self.separator.vocal_model.card
        rate = la.sample_rate
        self.description = self.separator.description
        self.params = {
            "lookahead_model": la.name,
            "lookahead_path": str(la.path),
            "stems_model": self.separator.stem_model.card.name,
            "stems_context_s": round(
                self.separator.stem_model.card.context_frames * self.separator.stem_model.card.hop_size / rate, 3
            ),
            "causal_model": self.separator.mix_causal.card.name,
            "context_s": round(la.context_frames * la.hop_size / la.sample_rate, 3),
            "lookahead_samples": la.lookahead_samples,
            "provider": self.separator.vocal_model.active_provider,
        }

    def separate(self, song: Song) -> np.ndarray:
        rate = self.separator.sample_rate
        mixture = _resample(song.mixture, song.sample_rate, rate)
        stems = self.separator.separate(mixture)
        return _fit(_resample(stems, rate, song.sample_rate), song.mixture.shape[1])


def loud_master(song: Song, drive_db: float = 10.0, ceiling_db: float = -1.0, release_ms: float = 80.0) -> Song:
    """``song`` as a loud master: the mix driven ``drive_db`` into a broadband peak limiter (5 ms look-ahead,
    instant attack, ``release_ms`` release, ceiling ``ceiling_db`` dBFS). The limiter's gain, computed on the mix,
    is applied to every stem alike, so the references still sum to the limited mix exactly (as when a mastering
    limiter rides the whole mix); what changes is the level and the dynamics the separator hears."""
    from scipy.ndimage import maximum_filter1d
    from scipy.signal import lfilter

    drive = 10.0 ** (drive_db / 20.0)
    ceiling = 10.0 ** (ceiling_db / 20.0)
    peak = np.abs(song.mixture * drive).max(axis=0)
    lookahead = max(1, int(0.005 * song.sample_rate))
    held = maximum_filter1d(peak, size=2 * lookahead + 1)  # the peak within 5 ms either side
    want = np.minimum(1.0, ceiling / np.maximum(held, 1e-9))
    # instant attack, exponential release: the gain follows drops at once and recovers slowly
    alpha = np.exp(-1.0 / (release_ms * 1e-3 * song.sample_rate))
    smooth = lfilter([1.0 - alpha], [1.0, -alpha], want)
    gain = np.minimum(want, smooth).astype(np.float32) * np.float32(drive)
    refs = (song.references * gain).astype(np.float32)
    return Song(song.name, song.sample_rate, refs.sum(axis=0), refs)


def irm_for(model: ModelMethod | None) -> IdealRatioMaskMethod:
    """The oracle with the model's own STFT, or the fallback STFT (44.1 kHz) when no model is evaluated."""
    if model is not None:
        c = model.card
        return IdealRatioMaskMethod(
            c.sample_rate, c.n_fft, c.hop_size, source=f"the model's ({c.name})", window_name=c.window
        )
    return IdealRatioMaskMethod(44100, *IRM_FALLBACK_STFT, source="a fallback (no model given)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that score a model and its baselines on other material: --model, --candidate
    (repeatable) and --spatial-filter/--no-spatial-filter; ``share_methods(args)`` builds the methods from them."""
    parser.add_argument("--model", type=Path, help="model .onnx (default: the shipped default model)")
    parser.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="another model .onnx scored beside it on the same excerpts (repeatable; named by its card)",
    )
    parser.add_argument(
        "--spatial-filter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the spatial filter on or off (default: as the model's card says)",
    )


def share_methods(args: argparse.Namespace, default_model: Path) -> tuple[ModelMethod, list[ModelMethod], list]:
    """(model, candidates, all methods) from ``add_model_options``' options: the model (``default_model`` unless
    --model), each candidate named "candidate <card name>", then mixture/4 and the classical separator."""
    model = ModelMethod(args.model or default_model, spatial_filter=args.spatial_filter)
    candidates = [ModelMethod(path, spatial_filter=args.spatial_filter) for path in args.candidate]
    for candidate in candidates:
        candidate.name = f"candidate {candidate.card.name}"
    return model, candidates, [model, *candidates, MixtureFractionMethod(), ClassicalMethod()]


def median_shares(entries: Sequence[dict], methods: Sequence[str], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """{method: {key: median over entries}}, each entry holding ``source_shares`` figures in entry["methods"]."""
    return {m: {k: round(float(np.median([e["methods"][m][k] for e in entries])), 2) for k in keys} for m in methods}


def shares_table(summary: dict[str, dict[str, float]], keys: Sequence[str]) -> list[str]:
    """Markdown lines of a ``median_shares`` summary: a row per method, a column per key."""
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    return lines + [f"| {m} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |" for m, row in summary.items()]


# ---------------------------------------------------------------------------------------------------- runner


@dataclass
class Evaluation:
    """Everything one run measured: per song and method the metrics, plus the timing of each method."""

    source: str
    max_seconds: float | None
    methods: Sequence[Method]
    songs: dict[str, dict[str, dict]] = field(default_factory=dict)
    song_info: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate(
    song_dirs: Sequence[Path],
    methods: Sequence[Method],
    *,
    max_seconds: float | None = None,
    source: str = "",
    progress: Callable[[str, str], None] | None = None,
    loud_db: float | None = None,
) -> dict[str, Any]:
    """Run every method on every song and score it; returns the report (see ``build_report``).

    ``progress(song, method)`` is called before each separation.
    """
    run = Evaluation(source or str(Path(song_dirs[0]).parent), max_seconds, methods)
    if loud_db is not None:
        run.source += f" (loud masters: each mix +{loud_db:g} dB into a peak limiter, stems with the same gain)"
    for path in song_dirs:
        song = load_song(path, max_seconds)
        if loud_db is not None:
            song = loud_master(song, loud_db)
        run.song_info[song.name] = {"sample_rate": song.sample_rate, "seconds": round(song.duration_s, 3)}
        timbres = song_timbres(Path(path))
        if timbres is not None:
            run.song_info[song.name]["timbres"] = timbres
        per_method = run.songs.setdefault(song.name, {})
        for method in methods:
            if progress is not None:
                progress(song.name, method.name)
            start = time.perf_counter()
            estimates = method.separate(song)
            run.seconds[method.name] = run.seconds.get(method.name, 0.0) + time.perf_counter() - start
            if estimates.shape != song.references.shape:
                raise EvaluationError(
                    f"{method.name} returned shape {estimates.shape}, expected {song.references.shape}"
                )
            per_method[method.name] = score(song, estimates)
    return build_report(run)


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(songs: dict[str, dict[str, dict]], method: str) -> dict[str, Any]:
    """Median over songs per stem (NaN songs left out) and the mean of the four stem medians, per metric."""
    rows = [per_method[method] for per_method in songs.values() if method in per_method]
    out: dict[str, Any] = {}
    for metric in ("sdr", "sdr_full", "si_sdr"):
        medians = {stem: _nanmedian([r[metric][stem] for r in rows]) for stem in STEMS}
        medians["mean"] = float(np.mean([medians[s] for s in STEMS]))
        out[metric] = medians
    means = {stem: _nanmean([r["sdr"][stem] for r in rows]) for stem in STEMS}
    means["mean"] = float(np.mean([means[s] for s in STEMS]))
    out["sdr_song_mean"] = means
    out["vocal_leakage_db"] = _nanmedian([r["vocal_leakage_db"] for r in rows])
    out["vocal_leakage_db_song_mean"] = _nanmean([r["vocal_leakage_db"] for r in rows])
    out["vocal_leakage_db_11_16k"] = _nanmedian([r.get("vocal_leakage_db_11_16k", math.nan) for r in rows])
    out["num_songs"] = {stem: sum(not math.isnan(r["sdr"][stem]) for r in rows) for stem in STEMS}
    return out


def quality_targets(summary: dict[str, Any], method: str = "model") -> dict[str, Any] | None:
    """The quality targets checked for ``method`` on this run; None unless it, classical and irm were all run.

    Every stem at least ``TARGET_OVER_CLASSICAL_DB`` above the classical separator, and the mean at most
    ``TARGET_BELOW_IRM_DB`` below the ideal ratio mask with the model's own STFT. Each row gives what is required,
    what the model reached, the margin (negative: short by) and the oracle's figure: a stem target above the oracle
    is out of reach of any mask model with that STFT.
    """
    if not {method, "classical", "irm"} <= set(summary):
        return None
    got, classical, irm = (summary[m]["sdr"] for m in (method, "classical", "irm"))
    rows = {
        stem: {"required": classical[stem] + TARGET_OVER_CLASSICAL_DB, "achieved": got[stem], "oracle": irm[stem]}
        for stem in STEMS
    }
    rows["mean"] = {"required": irm["mean"] - TARGET_BELOW_IRM_DB, "achieved": got["mean"], "oracle": irm["mean"]}
    for row in rows.values():
        row["margin"] = row["achieved"] - row["required"]
        row["met"] = bool(row["margin"] >= 0)
    return {
        "rules": f"every stem >= classical + {TARGET_OVER_CLASSICAL_DB:g} dB; mean >= irm - {TARGET_BELOW_IRM_DB:g} dB",
        "rows": rows,
        "all_met": all(row["met"] for row in rows.values()),
    }


def build_report(run: Evaluation) -> dict[str, Any]:
    """The JSON-ready report: dataset, metric definitions, methods, per-song results, summary, timing."""
    audio_s = sum(info["seconds"] for info in run.song_info.values())
    summary = {m.name: summarize(run.songs, m.name) for m in run.methods}
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dataset": {
            "source": run.source,
            "num_songs": len(run.songs),
            "max_seconds": run.max_seconds,
            "audio_seconds": round(audio_s, 2),
            "songs": run.song_info,
            "timbres": sorted({info["timbres"] for info in run.song_info.values() if "timbres" in info}),
        },
        "metrics": {
            "sdr": "BSS Eval v4 SDR (museval protocol: 1 s windows, 1 s hop, median over windows ignoring NaN; "
            "each stem on its own windows), dB",
            "sdr_full": "whole-track SDR 10 log10(|s|^2 / |s_hat - s|^2), dB",
            "si_sdr": "whole-track scale-invariant SDR, dB",
            "vocal_leakage_db": "energy of the true vocal left in the instrumental estimate (sum of the non-vocal "
            "stems), per-bin least-squares projection on true vocal and accompaniment, relative to the vocal "
            "energy; lower is better; mixture/4 = -2.5 dB",
            "summary": "per stem the median over songs (songs with a silent stem left out); mean = mean of the "
            "four stem medians; sdr_song_mean: the same with the mean over songs",
        },
        "methods": {
            m.name: {
                "description": m.description,
                "params": m.params,
                "seconds": round(run.seconds.get(m.name, 0.0), 2),
                "x_real_time": round(audio_s / run.seconds[m.name], 1) if run.seconds.get(m.name) else None,
            }
            for m in run.methods
        },
        "summary": summary,
        "targets": quality_targets(summary),
        "songs": run.songs,
    }


def paired_comparison(report: dict[str, Any], baseline: dict[str, Any], method: str = "model") -> dict[str, Any]:
    """``method`` in ``report`` against ``method`` in ``baseline`` (an earlier report), song by song.

    Medians over songs hide which model wins where; pairing the same songs does not. Only songs and stems scored in
    both reports count. Per stem and for the per-song mean over stems: the mean and median difference (report minus
    baseline, dB), how many songs are better and the number of songs compared.
    """
    pairs: dict[str, list[float]] = {stem: [] for stem in (*STEMS, "mean")}
    for song, per_method in report["songs"].items():
        ours, theirs = per_method.get(method), baseline["songs"].get(song, {}).get(method)
        if ours is None or theirs is None:
            continue
        diffs = {}
        for stem in STEMS:
            a, b = ours["sdr"][stem], theirs["sdr"][stem]
            if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)):
                diffs[stem] = a - b
                pairs[stem].append(a - b)
        if len(diffs) == len(STEMS):
            pairs["mean"].append(float(np.mean(list(diffs.values()))))
    if not pairs["mean"]:
        raise EvaluationError(f"no song has all four stems scored by '{method}' in both reports")
    return {
        key: {
            "mean_db": float(np.mean(d)),
            "median_db": float(np.median(d)),
            "songs_better": int(sum(x > 0 for x in d)),
            "num_songs": len(d),
        }
        for key, d in pairs.items()
        if d
    }


def read_report(path: Path) -> dict[str, Any]:
    """An earlier report (``quality.json``) to compare with; EvaluationError if it is unreadable or not a report."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{path} is not a readable quality report: {exc}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("songs"), dict):
        raise EvaluationError(f"{path} has no per-song results (not a quality.json)")
    return report


def add_comparison(report: dict[str, Any], baseline: dict[str, Any], label: str) -> None:
    """Append the paired comparison of the model in ``report`` against the one in ``baseline`` (an earlier report,
    called ``label`` in the markdown) to ``report["comparisons"]``."""
    report.setdefault("comparisons", []).append({"baseline": label, "model": paired_comparison(report, baseline)})


def comparison_markdown(comparison: dict[str, Any], label: str) -> str:
    lines = [
        f"Paired per song against {label} (this run minus it, SDR dB):",
        "",
        "| stem | mean difference | median difference | songs better |",
        "|---|---|---|---|",
    ]
    for key, c in comparison.items():
        lines.append(
            f"| {key} | {c['mean_db']:+.2f} | {c['median_db']:+.2f} | {c['songs_better']} of {c['num_songs']} |"
        )
    return "\n".join(lines) + "\n"


def comparisons_markdown(report: dict[str, Any]) -> str:
    """The paired comparisons ``add_comparison`` added to ``report``, one table each ("" when there are none)."""
    return "".join("\n" + comparison_markdown(c["model"], c["baseline"]) for c in report.get("comparisons", []))


# --------------------------------------------------------------------------------------------------- outputs


def write_json_and_markdown(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
    """Write ``report`` as ``out/name.json`` (``json_safe``) and ``markdown`` as ``out/name.md``, making ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)


def json_safe(value: Any) -> Any:
    """``value`` with floats rounded to 3 decimals, NaN as None and infinities as strings, so JSON stays standard."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 3)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """A markdown summary of ``report``: the SDR table with the karaoke figure, secondary figures, per-song means."""
    ds = report["dataset"]
    crop = f", first {ds['max_seconds']:g} s of each" if ds["max_seconds"] else ""
    lines = [
        "# Separation quality",
        "",
        f"{ds['num_songs']} song(s) from `{ds['source']}`{crop} ({ds['audio_seconds']:.0f} s of audio); "
        f"evaluated {report['created']}.",
        "",
        "BSS Eval v4 SDR in dB (museval protocol: median over 1 s windows, then median over songs; higher is "
        "better). Vocal leakage: dB of the true vocal left when the vocal stem is muted (lower is better).",
        "",
        "| method | vocals | drums | bass | other | mean | vocal leakage dB | x real time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in report["summary"].items():
        sdr = summary["sdr"]
        speed = report["methods"][name]["x_real_time"]
        cells = [_fmt(sdr[s]) for s in (*STEMS, "mean")]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {_fmt(summary['vocal_leakage_db'])} | {speed if speed else 'n/a'} |"
        )
    if all("sdr_song_mean" in summary for summary in report["summary"].values()):
        lines += ["", "The same SDR with the mean over songs instead of the median (the figure papers quote), dB:", ""]
        lines += [
            "| method | vocals | drums | bass | other | mean | vocal leakage dB | leakage 11-16 kHz (median) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, summary in report["summary"].items():
            cells = [_fmt(summary["sdr_song_mean"][s]) for s in (*STEMS, "mean")]
            high = _fmt(summary.get("vocal_leakage_db_11_16k", math.nan))
            lines.append(f"| {name} | {' | '.join(cells)} | {_fmt(summary['vocal_leakage_db_song_mean'])} | {high} |")
    lines += ["", "Whole-track SDR / SI-SDR (secondary), dB:", "", "| method | " + " | ".join(STEMS) + " | mean |"]
    lines.append("|---|" + "---|" * (len(STEMS) + 1))
    for name, summary in report["summary"].items():
        cells = [f"{_fmt(summary['sdr_full'][s])} / {_fmt(summary['si_sdr'][s])}" for s in (*STEMS, "mean")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    targets = report.get("targets")
    if targets:
        lines += ["", f"Quality targets ({targets['rules']}), median SDR dB:", ""]
        lines += ["| target | required | model | margin | met | oracle (irm) |", "|---|---|---|---|---|---|"]
        for name, row in targets["rows"].items():
            oracle = _fmt(row["oracle"]) + (" (below the target)" if row["oracle"] < row["required"] else "")
            cells = [_fmt(row[k]) for k in ("required", "achieved", "margin")]
            lines.append(f"| {name} | {' | '.join(cells)} | {'yes' if row['met'] else 'no'} | {oracle} |")
    names = list(report["summary"])
    lines += ["", "Mean SDR over the four stems per song (n/a: a stem is silent in that song), dB:", ""]
    lines += ["| song | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for song, per_method in report["songs"].items():
        cells = []
        for name in names:
            values = [per_method[name]["sdr"][s] for s in STEMS] if name in per_method else [math.nan]
            # None: NaN as a report read back from JSON has it
            cells.append(_fmt(float(np.mean([math.nan if v is None else v for v in values]))))
        lines.append(f"| {song} | {' | '.join(cells)} |")
    lines += ["", "Methods:", ""]
    lines += [f"- **{name}**: {m['description']}" for name, m in report["methods"].items()]
    return "\n".join(lines) + "\n" + comparisons_markdown(report)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Grouped bar plot of the median SDR per stem and the mean, one bar per method. False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = (*STEMS, "mean")
    names = list(report["summary"])
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, name in enumerate(names):
        values = [report["summary"][name]["sdr"][g] for g in groups]
        xs = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, [0 if v is None or math.isnan(v) else v for v in values], width, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("median SDR (dB), BSS Eval v4")
    ax.axhline(0, color="black", linewidth=0.6)
    ds = report["dataset"]
    ax.set_title(f"Separation quality on {ds['num_songs']} song(s) from {ds['source']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "quality") -> dict[str, Path | None]:
    """Write ``out_dir/<stem>.json``, ``.md`` and ``.png`` (the plot only when matplotlib is installed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(json_safe(report), indent=1) + "\n")
    paths["md"].write_text(markdown(report))
    png = out_dir / f"{stem}.png"
    paths["png"] = png if plot(report, png) else None
    return paths


def song_timbres(song_dir: Path) -> str | None:
    """The timbre set of a synthesized song ("train" or "heldout", from its meta.json; songs synthesized before the
    held-out set are "train"), or None for a song that is not from the synthesizer (no readable meta.json)."""
    try:
        meta = json.loads((song_dir / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or "generator_version" not in meta:
        return None
    return str(meta.get("timbres", "train"))


def card_key(report: dict[str, Any]) -> str:
    """Where in the card's provenance a report's figures go: "quality_heldout_timbres" for songs that all have the
    synthesizer's held-out timbres (how the model fares on instruments and voices it never heard), else "quality"."""
    return CARD_QUALITY_KEYS[1] if report["dataset"].get("timbres") == ["heldout"] else CARD_QUALITY_KEYS[0]


def card_quality(report: dict[str, Any], method: str = "model") -> dict[str, Any]:
    """The compact figures a model card records in ``provenance.quality`` (or ``card_key(report)``)."""
    summary = report["summary"]
    ds = report["dataset"]
    quality = {
        "evaluated": report["created"],
        "dataset": f"{ds['source']} ({ds['num_songs']} songs, {ds['audio_seconds']:.0f} s)",
        "metric": "BSS Eval v4 SDR dB, median over 1 s windows then over songs",
        "spatial_filter": report["methods"].get(method, {}).get("params", {}).get("spatial_filter"),
        "sdr_db": summary[method]["sdr"],
        "sdr_db_song_mean": summary[method].get("sdr_song_mean"),
        "vocal_leakage_db_11_16k": summary[method].get("vocal_leakage_db_11_16k"),
        "vocal_leakage_db": summary[method]["vocal_leakage_db"],
        "baselines_sdr_db": {name: s["sdr"] for name, s in summary.items() if name not in (method, "hq")},
    }
    return json_safe(quality)


def update_card(card_path: Path, quality: dict[str, Any], key: str = "quality") -> None:
    """Set ``provenance[key]`` in the card JSON at ``card_path``, written atomically; other keys kept as they are."""
    card = json.loads(card_path.read_text())
    card.setdefault("provenance", {})[key] = quality
    temp = card_path.with_name(f".{card_path.name}.{os.getpid()}.partial")
    temp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(temp, card_path)
