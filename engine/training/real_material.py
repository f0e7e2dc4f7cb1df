"""Real recordings of single stems, mixed into training examples against the gap between synthesized and real sound.

The synthesizer's stems are soundfont instruments and a vocoded voice; real mixes hold amp-distorted guitars and real
voices, and on them the default model keeps only a third of a real singer in its vocal stem
(benchmarks/results/real_stems/). A *real pool* is a folder of recordings of one stem each::

    <root>/<stem>/<source>/*.{wav,flac,ogg,opus}   (<stem>: vocals, drums, bass or other; <source>: a voice, a song)

Recordings of 4 s and more (a lead guitar track) are sampled at random offsets, skipping silence; shorter clips
(spoken syllables) are strung into phrases from one source with short random pauses. With probability
``Augment.p_real`` a stem of a training example that has a pool gets a real segment (``RealPool.mixed_into``): added
to the synthesized stem, or half of the time in its place, at a random level relative to it. The mixture stays the
sum of the stems.

``python3 -m stembridge.engine.training.real_material gather --out data/real`` builds pools from recordings that
Debian ships
(nothing is downloaded at run time; ``apt-get install fretsonfire-songs-muldjord fretsonfire-songs-sectoid
klettres-data``), split by song and by speaker so that the benchmarks measure material training never heard:

* other: the lead guitar tracks (``guitar.ogg``) of four of the eight Frets on Fire songs (``GUITAR_TRAIN``); the
  other four are held out for benchmarks/research/real_guitar.py.
* vocals: KLettres' letters and syllables spoken by native speakers of 20 languages, one speaker per language
  folder. Recordings with hiss (under 30 dB between their loud and quiet frames) or clipping are left out. Five
  languages (``VOICE_TEST``) are held out for benchmarks/research/real_voice.py.
* vocals, more speakers (optional: ``apt-get install ktuberling-data`` and ``gather --ktuberling``): KTuberling's
  words spoken in 25 languages, one source per language folder, with the same checks, and only recordings made at
  32 kHz or more (the 8 and 22 kHz ones lack a voice's upper band): 14 more sources, 25.6 min of speech in all
  instead of 10. Languages of the held-out KLettres speakers are left out entirely, in case one person recorded
  for both projects. Not in the default pool: trained side by side with it, they did not help the held-out voices
  (benchmarks/results/candidates/real_speakers/).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from stembridge.engine.baselines import STEMS

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus")
CLIP_SECONDS = 4.0  # recordings shorter than this are clips, strung into phrases
GAP_SECONDS = (0.03, 0.3)  # pause between clips in a phrase
LEVEL_DB = (-6.0, 6.0)  # a real segment's RMS relative to the synthesized stem's
P_REPLACE = 0.5  # share of real segments that replace the synthesized stem instead of joining it
NOMINAL_RMS = 0.05  # level given to a real segment whose synthesized stem is silent

FRETSONFIRE = Path("/usr/share/games/fretsonfire/data/songs")
KLETTRES = Path("/usr/share/klettres")
KTUBERLING = Path("/usr/share/ktuberling/sounds")
FRETSONFIRE_PACKAGES = "fretsonfire-songs-muldjord fretsonfire-songs-sectoid"
GUITAR_TRAIN = ("muldjord/chaos_god", "muldjord/armygeddon", "sectoid/Metal madness", "sectoid/Feelings")
VOICE_TEST = ("en", "en_GB", "nl", "it", "he")  # held-out speakers (en and en_GB may be one person: both held out)
MIN_SNR_DB = 30.0
MIN_VOICE_RATE = 32000  # Hz a voice recording was made at: lower rates lack a voice's upper band
MAX_CLIPPED = 1e-3  # share of samples at full scale


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """float32 (channels, n) of an audio file at ``sample_rate`` (resampled when needed)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    data = data.T
    if rate != sample_rate:
        ratio = Fraction(sample_rate, rate).limit_denominator(1000)
        data = resample_poly(data, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)
    return np.ascontiguousarray(data)


def frame_rms_db(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS in dB of consecutive ``frame``-sample frames of x (channels, n), channels averaged."""
    mono = x.mean(axis=0)
    n = len(mono) // frame * frame
    if n == 0:
        return np.full(1, -120.0)
    return 10.0 * np.log10((mono[:n].reshape(-1, frame) ** 2).mean(axis=1) + 1e-12)


def trimmed(x: np.ndarray, sample_rate: int, floor_db: float = 40.0) -> np.ndarray:
    """x without its leading and trailing frames more than ``floor_db`` below its loudest 10 ms frame."""
    frame = sample_rate // 100
    db = frame_rms_db(x, frame)
    loud = np.nonzero(db > db.max() - floor_db)[0]
    if not len(loud):
        return x[:, :0]
    return x[:, loud[0] * frame : (loud[-1] + 1) * frame]


def recording_ok(x: np.ndarray, sample_rate: int) -> bool:
    """Clean enough to train on: MIN_SNR_DB between the loud (95th percentile) and quiet (5th) 10 ms frames, and
    at most MAX_CLIPPED of the samples at full scale."""
    db = frame_rms_db(x, sample_rate // 100)
    snr = np.percentile(db, 95) - np.percentile(db, 5)
    return bool(snr >= MIN_SNR_DB and (np.abs(x) >= 0.99).mean() <= MAX_CLIPPED)


@dataclass
class Source:
    """One source's recordings: long ``tracks`` sampled at offsets, or short ``clips`` strung into phrases."""

    name: str
    tracks: list[np.ndarray]
    clips: list[np.ndarray]


class RealPool:
    """Real recordings per stem under ``root`` (``<root>/<stem>/<source>/*``); stems without a folder have none."""

    def __init__(self, root: str | Path, sample_rate: int = 44100, stems: tuple[str, ...] = STEMS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.root}: no such folder of real recordings (see engine/training/real_material.py)"
            )
        self.sample_rate = sample_rate
        self.sources: dict[str, list[Source]] = {}
        for stem in stems:
            folder = self.root / stem
            if not folder.is_dir():
                continue
            found = []
            for source_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                tracks, clips = [], []
                for path in sorted(p for p in source_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
                    x = trimmed(load_audio(path, sample_rate), sample_rate)
                    if x.shape[1] < sample_rate // 10:
                        continue
                    (clips if x.shape[1] < CLIP_SECONDS * sample_rate else tracks).append(x)
                if tracks or clips:
                    found.append(Source(source_dir.name, tracks, clips))
            if found:
                self.sources[stem] = found
        if not self.sources:
            raise ValueError(f"{self.root}: no recordings in <stem>/<source>/ folders for any of {', '.join(stems)}")

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def seconds(self, stem: str) -> float:
        total = sum(x.shape[1] for s in self.sources.get(stem, []) for x in (*s.tracks, *s.clips))
        return total / self.sample_rate

    def describe(self) -> str:
        parts = []
        for stem, srcs in self.sources.items():
            sung = sum(s.name.endswith("_sung") for s in srcs)
            of_them = f" ({sung} of them sung speech, engine/training/sung_speech.py)" if sung else ""
            parts.append(f"{stem}: {len(srcs)} sources{of_them}, {self.seconds(stem) / 60:.1f} min")
        return f"real recordings from {self.root} ({'; '.join(parts)})"

    def segment(self, stem: str, n: int, rng: np.random.Generator, channels: int = 2) -> np.ndarray:
        """float32 (channels, n): a random stretch of one source of ``stem``; mono recordings are duplicated."""
        sources = self.sources[stem]
        source = sources[rng.integers(len(sources))]
        out = np.zeros((channels, n), dtype=np.float32)
        use_tracks = source.tracks and (not source.clips or rng.random() < 0.5)
        if use_tracks:
            x = source.tracks[rng.integers(len(source.tracks))]
            for _ in range(4):  # skip silent stretches (a guitar track rests between parts)
                start = int(rng.integers(0, max(x.shape[1] - n, 1)))
                part = x[:, start : start + n]
                if np.sqrt((part**2).mean()) > 1e-3:
                    break
            _place(out, part, 0)
            return out
        return phrase(source.clips, n, rng, self.sample_rate, channels)

    def mixed_into(self, x: np.ndarray, stem: str, rng: np.random.Generator) -> np.ndarray:
        """The synthesized stem x (channels, n) with a real segment added (or, P_REPLACE of the time, instead)."""
        real = self.segment(stem, x.shape[1], rng, x.shape[0])
        real_rms = math.sqrt(float((real**2).mean()))
        if real_rms < 1e-6:
            return x
        synth_rms = math.sqrt(float((x**2).mean()))
        reference = synth_rms if synth_rms > 1e-4 else NOMINAL_RMS
        gain = reference * 10.0 ** (rng.uniform(*LEVEL_DB) / 20.0) / real_rms
        if rng.random() < P_REPLACE:
            return (real * gain).astype(np.float32)
        return (x + real * gain).astype(np.float32)


def phrase(
    clips: list[np.ndarray], n: int, rng: np.random.Generator, sample_rate: int, channels: int = 2
) -> np.ndarray:
    """float32 (channels, n): random ``clips`` one after another with GAP_SECONDS pauses, from a random point."""
    out = np.zeros((channels, n), dtype=np.float32)
    pos = -int(rng.uniform(0.0, GAP_SECONDS[1]) * sample_rate)
    while pos < n:
        clip = clips[rng.integers(len(clips))]
        _place(out, clip, pos)
        pos += clip.shape[1] + int(rng.uniform(*GAP_SECONDS) * sample_rate)
    return out


def _place(out: np.ndarray, x: np.ndarray, pos: int) -> None:
    """Add x (1 or more channels) into out at sample ``pos`` (may start before 0 or run past the end)."""
    a, b = max(pos, 0), min(pos + x.shape[1], out.shape[1])
    if b <= a:
        return
    part = x[:, a - pos : b - pos]
    if part.shape[0] == 1:
        part = np.repeat(part, out.shape[0], axis=0)
    out[:, a:b] += part[: out.shape[0]]


def voice_clips(language: str, root: Path = KLETTRES, sample_rate: int = 44100) -> dict[Path, np.ndarray]:
    """The clean recordings (``recording_ok``, made at MIN_VOICE_RATE or more) of one language folder of KLettres or
    KTuberling, trimmed: {path: (channels, n)}."""
    clips = {}
    for path in sorted(p for p in (root / language).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        if sf.info(path).samplerate < MIN_VOICE_RATE:
            continue
        x = load_audio(path, sample_rate)
        if recording_ok(x, sample_rate):
            clips[path] = trimmed(x, sample_rate)
    return clips


def languages_in(root: Path) -> list[str]:
    """The language folders under ``root`` that hold recordings (none when root is missing)."""
    if not root.is_dir():
        return []
    folders = (p for p in root.iterdir() if p.is_dir())
    return sorted(p.name for p in folders if any(f.suffix.lower() in AUDIO_SUFFIXES for f in p.rglob("*")))


def gather(
    out: Path, fretsonfire: Path = FRETSONFIRE, klettres: Path = KLETTRES, ktuberling: Path | None = None
) -> dict[str, int]:
    """Link the Debian recordings into ``out/train`` and ``out/test`` pools; returns files linked per pool.
    KTuberling's voices join the training pool when ``ktuberling`` names its sounds folder (an optional package)."""
    counts: dict[str, int] = {}

    def link(src: Path, split: str, stem: str, source: str, name: str) -> None:
        dest = out / split / stem / source / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(src.resolve())
        key = f"{split}/{stem}"
        counts[key] = counts.get(key, 0) + 1

    guitars = sorted(p.parent for p in fretsonfire.rglob("guitar.ogg"))
    if not guitars:
        raise SystemExit(
            f"{fretsonfire}: no guitar.ogg (apt-get install fretsonfire-songs-muldjord fretsonfire-songs-sectoid)"
        )
    for song in guitars:
        rel = song.relative_to(fretsonfire).as_posix()
        link(
            song / "guitar.ogg",
            "train" if rel in GUITAR_TRAIN else "test",
            "other",
            rel.replace("/", "_"),
            "guitar.ogg",
        )
    languages = languages_in(klettres)
    if not languages:
        raise SystemExit(f"{klettres}: no recordings (apt-get install klettres-data)")
    for language in languages:
        split = "test" if language in VOICE_TEST else "train"
        for path in voice_clips(language, klettres):
            link(path, split, "vocals", language, f"{path.parent.name}_{path.name}")
    held_out = {language.split("_")[0] for language in VOICE_TEST}
    # sr@latin and the other sr@ variants are copies of sr's recordings: one source each, not four
    for language in languages_in(ktuberling) if ktuberling is not None else []:
        if "@" in language or language.split("_")[0] in held_out:
            continue
        for path in voice_clips(language, ktuberling):
            link(path, "train", "vocals", f"ktuberling_{language}", path.name)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Real single-stem recordings for training (see the module's docstring).")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather", help="link Debian's recordings into train and test pools")
    g.add_argument("--out", type=Path, default=Path("data/real"))
    g.add_argument("--fretsonfire", type=Path, default=FRETSONFIRE)
    g.add_argument("--klettres", type=Path, default=KLETTRES)
    g.add_argument(
        "--ktuberling",
        type=Path,
        nargs="?",
        const=KTUBERLING,
        default=None,
        help=f"add KTuberling's speakers to the vocal pool (default folder: {KTUBERLING})",
    )
    s = sub.add_parser("show", help="load a pool and say what it holds")
    s.add_argument("root", type=Path)
    args = p.parse_args(argv)
    if args.command == "gather":
        if args.ktuberling is not None and not languages_in(args.ktuberling):
            raise SystemExit(f"{args.ktuberling}: no recordings (apt-get install ktuberling-data)")
        for key, count in sorted(gather(args.out, args.fretsonfire, args.klettres, args.ktuberling).items()):
            print(f"{args.out}/{key}: {count} files")
    else:
        print(RealPool(args.root).describe())


if __name__ == "__main__":
    main()
