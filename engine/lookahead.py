"""Look-ahead models: a second model contract, for audio known in advance (files, file decks), never live input.

A look-ahead model is ``<name>.onnx`` with a card ``<name>.json`` whose ``"kind"`` is ``"lookahead"``. Unlike the
causal contract (engine/model_card.py: one hop in, one hop out, recurrent state), the graph sees a whole segment of
STFT frames at once, the past and the future of every frame it masks:

- ``n_fft``, ``hop_size``, ``window`` (one of engine/stft.py's ``WINDOWS``: "hann" (periodic), "vorbis"),
  ``sample_rate``, ``num_channels``: the STFT, centred
  (frame t is centred on sample t * hop_size; the signal is zero-padded by n_fft / 2 at both ends).
- ``num_bins``: the magnitudes of bins 0 .. num_bins - 1 are the model's input; the bins above get no mask from the
  model (their share is decided by the pipeline: see engine/hq.py).
- ``stems``: what the output holds, in order. ``mask``: how the output becomes masks. ``"direct"``: the output is
  the masks, clipped to [0, 1]; what they leave is the rest of the mix. ``"ratio_power"`` (Spleeter's two nets):
  the output is estimated magnitudes E_i, m_i = (E_i^2 + eps / 2) / (sum_j E_j^2 + eps), eps = 1e-10.
- ``framing``: ``segment_frames`` per call, a multiple of ``frame_multiple``; ``context_frames`` either side. Frames
  are tiled globally: the window of tile k holds frames [k*c - context, k*c + segment - context) and its middle
  ``c = segment_frames - 2 * context_frames`` frames are kept. Every frame's mask therefore depends only on the audio,
  never on which range was asked for, so ranges computed apart join into exactly the whole-track result (file
  decks compute ahead of the playhead from wherever it is). ``edges`` (optional): what a window reaching past
  either end of the signal holds there. ``"silence"`` (the default): zero frames. ``"crop"``: the model runs on the
  window's frames inside the signal only, as a segment that starts (or ends) with the track; for recurrent models,
  whose state after a stretch of digital silence is not the state they start a segment from (measured: a
  bidirectional band-GRU model's masks moved 0.05 on average after 1.5 s of leading zeros). ``"crop"`` needs
  ``frame_multiple`` 1.
- The look-ahead this implies (``lookahead_samples``: context plus half a frame) is reported by the card object.
- ``tensors``: ``input`` (batch, num_channels, frames, num_bins) magnitudes, ``output`` (batch, num_stems,
  num_channels, frames, num_bins) masks or estimated magnitudes, as ``mask`` says.

``load_lookahead_card`` validates the card and ``LookaheadModel`` checks it against the graph on load, as the causal
contract does; every mismatch raises ``ModelError`` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
from stembridge.engine.model_card import ModelError
from stembridge.engine.stft import WINDOWS
from stembridge.engine.stft import window as named_window

if TYPE_CHECKING:
    from stembridge.engine.batching import SharedSessions

KIND = "lookahead"
MASKS = ("ratio_power", "direct")
EDGES = ("silence", "crop")
EPS = 1e-10
REQUIRED = (
    "schema_version",
    "kind",
    "name",
    "sample_rate",
    "n_fft",
    "hop_size",
    "window",
    "num_channels",
    "num_bins",
    "stems",
    "mask",
    "framing",
    "tensors",
)
OPTIONAL = ("description", "provenance", "quality")


@dataclass(frozen=True)
class LookaheadCard:
    path: Path
    name: str
    sample_rate: int
    n_fft: int
    hop_size: int
    window: str
    num_channels: int
    num_bins: int
    stems: tuple[str, ...]
    mask: str
    segment_frames: int
    frame_multiple: int
    context_frames: int
    edges: str
    input_name: str
    output_name: str
    provenance: dict[str, Any]

    @property
    def kept_frames(self) -> int:
        """Frames each model call contributes (the middle of its segment)."""
        return self.segment_frames - 2 * self.context_frames

    @property
    def lookahead_samples(self) -> int:
        """How far past a sample the model reads before that sample's stems are final."""
        return self.context_frames * self.hop_size + self.n_fft // 2


def is_lookahead_card(model_path: str | Path) -> bool:
    """True when ``model_path``'s card declares ``"kind": "lookahead"``."""
    card = Path(model_path).with_suffix(".json")
    try:
        return json.loads(card.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_lookahead_card(model_path: str | Path) -> LookaheadCard:
    path = Path(model_path)
    card_path = path.with_suffix(".json")

    def fail(message: str) -> ModelError:
        return ModelError(f"{card_path}: {message}")

    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        raw = json.loads(card_path.read_text())
    except FileNotFoundError as exc:
        raise fail("no model card beside the model") from exc
    except ValueError as exc:
        raise fail(f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise fail("the card must be a JSON object")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise fail(f"missing key(s) {', '.join(missing)}")
    unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}")
    if raw["schema_version"] != 1:
        raise fail(f"schema_version {raw['schema_version']!r} is not supported (1)")
    if raw["kind"] != KIND:
        raise fail(f'kind {raw["kind"]!r} is not "{KIND}"')
    for key in ("sample_rate", "n_fft", "hop_size", "num_channels", "num_bins"):
        if not isinstance(raw[key], int) or raw[key] < 1:
            raise fail(f"{key} must be a positive integer, got {raw[key]!r}")
    if raw["window"] not in WINDOWS:
        raise fail(f"window {raw['window']!r} is not supported ({', '.join(WINDOWS)})")
    if raw["n_fft"] % raw["hop_size"] or raw["n_fft"] // raw["hop_size"] < 2:
        raise fail("hop_size must divide n_fft at least twice")
    if raw["num_bins"] > raw["n_fft"] // 2 + 1:
        raise fail(f"num_bins {raw['num_bins']} exceeds n_fft / 2 + 1")
    stems = raw["stems"]
    if not isinstance(stems, list) or not stems or not all(isinstance(s, str) for s in stems):
        raise fail("stems must be a non-empty list of names")
    if raw["mask"] not in MASKS:
        raise fail(f"mask {raw['mask']!r} is not one of {', '.join(MASKS)}")
    if raw["mask"] == "ratio_power" and len(stems) < 2:
        raise fail("a ratio_power mask needs at least two stems")
    framing = raw["framing"]
    framing_keys = {"segment_frames", "frame_multiple", "context_frames"}
    if not isinstance(framing, dict) or not framing_keys <= set(framing) <= framing_keys | {"edges"}:
        raise fail("framing must hold segment_frames, frame_multiple and context_frames (and optionally edges)")
    seg, mult, ctx = framing["segment_frames"], framing["frame_multiple"], framing["context_frames"]
    edges = framing.get("edges", "silence")
    if edges not in EDGES:
        raise fail(f"framing edges {edges!r} is not one of {', '.join(EDGES)}")
    if edges == "crop" and mult != 1:
        raise fail('framing edges "crop" needs frame_multiple 1 (a cropped window can have any length)')
    if not all(isinstance(v, int) for v in (seg, mult, ctx)) or mult < 1 or seg % mult or ctx < 0 or seg <= 2 * ctx:
        raise fail(f"framing {framing} is inconsistent (segment a multiple of frame_multiple, > 2 x context)")
    tensors = raw["tensors"]
    try:
        input_name = tensors["input"]["name"]
        output_name = tensors["output"]["name"]
    except (KeyError, TypeError) as exc:
        raise fail("tensors must name an input and an output") from exc
    return LookaheadCard(
        path=path,
        name=str(raw["name"]),
        sample_rate=raw["sample_rate"],
        n_fft=raw["n_fft"],
        hop_size=raw["hop_size"],
        window=raw["window"],
        num_channels=raw["num_channels"],
        num_bins=raw["num_bins"],
        stems=tuple(stems),
        mask=raw["mask"],
        segment_frames=seg,
        frame_multiple=mult,
        context_frames=ctx,
        edges=edges,
        input_name=input_name,
        output_name=output_name,
        provenance=dict(raw.get("provenance") or {}),
    )


class LookaheadModel:
    """A look-ahead model and its STFT: ``masks_for(audio, first, last)`` and ``separate_range``.

    Not real-time code: it runs on a worker thread or in ``separate``, never on the audio thread.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 1,
        device: str = "auto",
        batch: int = 4,
        sessions: SharedSessions | None = None,
    ) -> None:
        """``batch``: tiles per model call. ``sessions``: take the session from there (one
        ``engine.batching.BatchingSession`` per model file, shared with other threads) instead of building one."""
        import onnxruntime as ort
        from stembridge.engine.separator import DEVICES, GPU_PROVIDERS, _providers_for

        self.card = load_lookahead_card(model_path)
        c = self.card
        if device not in DEVICES:
            raise ModelError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")

        def build():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3  # a CUDA provider that cannot start is reported by active_provider below
            try:
                return ort.InferenceSession(str(c.path), options, providers=_providers_for(device))
            except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
                raise ModelError(f"{c.path}: ONNX Runtime cannot load the graph: {exc}") from exc

        self.session = build() if sessions is None else sessions.get(c.path, build)
        if device == "cuda" and self.session.get_providers()[0] not in GPU_PROVIDERS:
            raise ModelError(f"--device cuda was asked for, but CUDA could not start here for {c.path}")
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if c.input_name not in inputs:
            raise ModelError(f"{c.path}: the graph has no input {c.input_name!r} (it has {sorted(inputs)})")
        if c.output_name not in outputs:
            raise ModelError(f"{c.path}: the graph has no output {c.output_name!r} (it has {sorted(outputs)})")
        shape = inputs[c.input_name]
        if len(shape) != 4 or shape[1] != c.num_channels or shape[3] != c.num_bins:
            raise ModelError(
                f"{c.path}: input shape {shape} does not match the card (batch, {c.num_channels}, frames, {c.num_bins})"
            )
        oshape = outputs[c.output_name]
        if len(oshape) != 5 or oshape[1] != len(c.stems) or oshape[4] != c.num_bins:
            raise ModelError(f"{c.path}: output shape {oshape} does not match the card's {len(c.stems)} stems")
        self.batch = max(1, batch)
        self.window = named_window(c.window, c.n_fft)
        self.active_provider = self.session.get_providers()[0]

    # ------------------------------------------------------------------------------------------------- STFT

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.card.hop_size

    def stft(self, audio: np.ndarray, first: int, last: int, offset: int = 0) -> np.ndarray:
        """Frames [first, last) of the centred STFT of audio float32 (C, n): complex64 (C, frames, n_fft/2+1).
        ``audio`` holds samples [offset, offset + n) of the signal; samples outside it are zeros."""
        c = self.card
        half = c.n_fft // 2
        n = audio.shape[1]
        start = first * c.hop_size - half
        stop = (last - 1) * c.hop_size + half
        seg = np.zeros((audio.shape[0], max(0, stop - start)), dtype=np.float32)
        lo, hi = max(start, offset), min(stop, offset + n)
        if hi > lo:
            seg[:, lo - start : hi - start] = audio[:, lo - offset : hi - offset]
        frames = np.lib.stride_tricks.sliding_window_view(seg, c.n_fft, axis=1)[:, :: c.hop_size]
        return scipy.fft.rfft(frames * self.window, axis=-1)  # float32 in, complex64 out (numpy's would be 64-bit)

    # ------------------------------------------------------------------------------------------------ masks

    def _estimates(self, mags: np.ndarray) -> np.ndarray:
        """mags float32 (windows, C, segment, bins) -> the graph's output (windows, S, C, segment, bins), batched."""
        out = []
        for i in range(0, mags.shape[0], self.batch):
            out.append(self.session.run([self.card.output_name], {self.card.input_name: mags[i : i + self.batch]})[0])
        return np.concatenate(out, axis=0)

    def tile_span(self, k0: int, k1: int) -> tuple[int, int]:
        """The samples [start, stop) that tiles [k0, k1)'s segments read (may reach outside the signal)."""
        c = self.card
        first = k0 * c.kept_frames - c.context_frames
        last = (k1 - 1) * c.kept_frames - c.context_frames + c.segment_frames
        return first * c.hop_size - c.n_fft // 2, (last - 1) * c.hop_size + c.n_fft // 2

    def _cropped_estimates(self, windows: np.ndarray, first_valid: int, end_valid: int) -> np.ndarray:
        """``_estimates`` of windows (K, C, segment, bins) whose frames [first_valid, end_valid) of the whole
        stretch (window i starts at i * kept) are inside the signal: whole windows batched, each window that
        reaches outside run alone on its frames inside (its other frames get zero masks)."""
        kept, seg = self.card.kept_frames, self.card.segment_frames
        k = len(windows)
        out = np.zeros((k, len(self.card.stems), windows.shape[1], seg, self.card.num_bins), dtype=np.float32)
        inside = [i for i in range(k) if i * kept >= first_valid and i * kept + seg <= end_valid]
        if inside:
            out[inside] = self._estimates(windows[inside])
        for i in sorted(set(range(k)) - set(inside)):
            a, z = max(first_valid - i * kept, 0), min(end_valid - i * kept, seg)
            if z > a:
                out[i, :, :, a:z] = self._estimates(windows[i : i + 1, :, a:z])[0]
        return out

    def tile_masks(
        self,
        audio: np.ndarray,
        k0: int,
        k1: int,
        gain: float = 1.0,
        *,
        offset: int = 0,
        num_samples: int | None = None,
    ) -> np.ndarray:
        """Masks of the frames tiles [k0, k1) keep: float32 (S, C, (k1 - k0) * kept_frames, num_bins), frames
        [k0 * kept, k1 * kept), each tile computed once; ``gain`` scales what the model sees (its input level),
        never the audio masked. Frames outside the signal are silence. ``audio`` holds samples [offset, offset +
        its length) of a signal of ``num_samples`` (default: all of it); it must cover ``tile_span(k0, k1)`` inside
        the signal."""
        c = self.card
        kept = c.kept_frames
        total = offset + audio.shape[1] if num_samples is None else num_samples
        spec_first = k0 * kept - c.context_frames
        spec_last = (k1 - 1) * kept - c.context_frames + c.segment_frames
        mag = np.abs(self.stft(audio, spec_first, spec_last, offset)[:, :, : c.num_bins]).astype(np.float32)
        mag *= np.float32(gain)
        beyond = self.num_frames(total) - spec_first
        if beyond < mag.shape[1]:
            mag[:, max(beyond, 0) :] = 0.0
        windows = np.stack([mag[:, i * kept : i * kept + c.segment_frames] for i in range(k1 - k0)])
        if c.edges == "crop":
            estimates = self._cropped_estimates(windows, -spec_first, beyond)
        else:
            estimates = self._estimates(windows)
        out = estimates[:, :, :, c.context_frames : c.context_frames + kept]  # (K, S, C, kept, bins)
        out = np.concatenate(list(out), axis=2).astype(np.float32)  # (S, C, K * kept, bins)
        if c.mask == "direct":
            return np.clip(out, 0.0, 1.0)
        power = out**2
        return (power + EPS / 2) / (power.sum(axis=0, keepdims=True) + EPS)

    def masks(self, audio: np.ndarray, first: int, last: int, gain: float = 1.0) -> np.ndarray:
        """Masks of frames [first, last) of ``audio`` float32 (C, n): float32 (S, C, last - first, num_bins), from
        the globally tiled windows (the same values whichever range is asked for)."""
        kept = self.card.kept_frames
        k0, k1 = first // kept, (last - 1) // kept + 1
        off = first - k0 * kept
        return self.tile_masks(audio, k0, k1, gain)[:, :, off : off + (last - first)]

    # ------------------------------------------------------------------------------------------------ audio

    def frame_range(self, start: int, stop: int, num_samples: int) -> tuple[int, int]:
        """The frames whose windows touch samples [start, stop) of a signal of ``num_samples``."""
        c = self.card
        half = c.n_fft // 2
        first = max(0, (start - half) // c.hop_size + 1)
        last = min(self.num_frames(num_samples), -(-(stop + half) // c.hop_size))
        return first, max(first + 1, last)

    def istft_range(self, spec: np.ndarray, first: int, start: int, stop: int, num_samples: int) -> np.ndarray:
        """Samples [start, stop) of the overlap-add of frames [first, first + F) of ``spec`` complex (..., F, bins),
        normalised by the window-square envelope of all frames of a signal of ``num_samples``."""
        c = self.card
        half = c.n_fft // 2
        num = spec.shape[-2]
        frames = scipy.fft.irfft(spec, n=c.n_fft, axis=-1) * self.window
        base = first * c.hop_size - half
        length = (num - 1) * c.hop_size + c.n_fft
        out = np.zeros(spec.shape[:-2] + (length,), dtype=np.float32)
        for i in range(num):
            out[..., i * c.hop_size : i * c.hop_size + c.n_fft] += frames[..., i, :]
        env = self.envelope(base, base + length, num_samples)
        lo, hi = start - base, stop - base
        return out[..., lo:hi] / env[lo:hi]

    def envelope(self, start: int, stop: int, num_samples: int) -> np.ndarray:
        """Sum of squared windows of every frame of the signal over samples [start, stop)."""
        c = self.card
        half = c.n_fft // 2
        env = np.zeros(stop - start, dtype=np.float32)
        w2 = self.window**2
        t0 = max(0, (start + half) // c.hop_size - c.n_fft // c.hop_size)
        t1 = min(self.num_frames(num_samples), (stop + half) // c.hop_size + 1)
        for t in range(t0, t1):
            a = t * c.hop_size - half - start
            lo, hi = max(a, 0), min(a + c.n_fft, stop - start)
            if hi > lo:
                env[lo:hi] += w2[lo - a : hi - a]
        return np.maximum(env, 1e-8)

    def level_gain(self, audio: np.ndarray, target_rms_db: float, max_gain_db: float = 18.0) -> float:
        """The gain that brings the whole track's RMS to ``target_rms_db`` dBFS for the model's input (level
        handling: the model is not level-invariant), within +-``max_gain_db``."""
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))
        gain_db = target_rms_db - 20.0 * math.log10(max(rms, 1e-10))
        return 10.0 ** (float(np.clip(gain_db, -max_gain_db, max_gain_db)) / 20.0)
