"""Training data: multitrack songs on disk, random segments, and the augmentations that make separators generalise.

Songs live in ``<root>/<split>/<song_id>/{vocals,drums,bass,other}.wav`` (engine/training/synth.py writes them; any
folder of that shape works). Stems are memory-mapped (16-bit PCM WAV; other formats are read into memory as int16),
so hundreds of songs cost page cache, not process memory, and new songs join whenever ``SongBank.rescan`` runs while
synthesis is still writing more (a song folder only appears once it is complete).

A training example is built from stems, never from the stored mixture: each stem segment is drawn (from one song, or
with probability ``p_remix`` each stem from a different random song and offset), then augmented per stem:
resampling by a small random factor (pitch and tempo together, band-limited in the FFT domain), a random EQ curve
(tilt, shelves and a bell), tanh saturation, gain, channel swap, polarity, mono collapse and occasional silence. With
a pool of real recordings (``real_material.RealPool``) a stem may also get a real segment, added or in its place,
before saturation. The mixture is the sum of the augmented stems, so "stems sum to the mix" always holds.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf
from stembridge.engine.training.real_material import RealPool

STEMS = ("vocals", "drums", "bass", "other")


def _wav_pcm16_layout(path: Path) -> tuple[int, int, int, int] | None:
    """(data offset, num_frames, num_channels, sample_rate) of a 16-bit PCM WAV file, or None for anything else."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        channels = rate = bits = fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(size + (size & 1))
                fmt, channels, rate = struct.unpack("<HHI", body[:8])
                bits = struct.unpack("<H", body[14:16])[0]
                if fmt == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first 2 bytes
                    fmt = struct.unpack("<H", body[24:26])[0]
            elif cid == b"data":
                if fmt != 1 or bits != 16 or channels is None:
                    return None
                return f.tell(), size // (2 * channels), channels, rate
            else:
                f.seek(size + (size & 1), 1)


def load_pcm16(path: Path) -> tuple[np.ndarray, int]:
    """int16 array (num_frames, num_channels) of a WAV file (memory-mapped when it is 16-bit PCM), sample rate."""
    layout = _wav_pcm16_layout(path)
    if layout is not None:
        offset, frames, channels, rate = layout
        return np.memmap(path, dtype="<i2", mode="r", offset=offset, shape=(frames, channels)), rate
    data, rate = sf.read(path, dtype="int16", always_2d=True)
    return data, rate


@dataclass
class Song:
    """One multitrack song: ``stems[name]`` int16 (num_frames, num_channels), all the same length."""

    name: str
    stems: dict[str, np.ndarray]
    num_frames: int

    def segment(self, stem: str, start: int, length: int, num_channels: int = 2) -> np.ndarray:
        """float32 (num_channels, length) from ``start``; zero-padded past the end; mono stems are duplicated."""
        data = self.stems[stem][max(start, 0) : max(start + length, 0)]
        out = np.zeros((num_channels, length), dtype=np.float32)
        part = np.asarray(data, dtype=np.float32).T * (1.0 / 32768.0)
        if part.shape[0] == 1:
            part = np.repeat(part, num_channels, axis=0)
        offset = max(-start, 0)
        out[:, offset : offset + part.shape[1]] = part[:num_channels]
        return out


class SongBank:
    """The complete songs of one split under ``root``; ``rescan()`` picks up songs that appeared since."""

    def __init__(self, root: str | Path, split: str, stems: tuple[str, ...] = STEMS, sample_rate: int = 44100):
        self.root = Path(root)
        self.split = split
        self.stem_names = stems
        self.sample_rate = sample_rate
        self.songs: list[Song] = []
        self._known: set[str] = set()
        self._bad: set[str] = set()
        self.rescan()

    def __len__(self) -> int:
        return len(self.songs)

    def rescan(self) -> int:
        """Add complete songs not seen yet (sorted by name); returns how many were added."""
        folder = self.root / self.split
        if not folder.is_dir():
            return 0
        added = 0
        for song_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if song_dir.name in self._known or song_dir.name in self._bad:
                continue
            if not all((song_dir / f"{s}.wav").exists() for s in self.stem_names):
                continue
            try:
                stems = {}
                for s in self.stem_names:
                    data, rate = load_pcm16(song_dir / f"{s}.wav")
                    if rate != self.sample_rate:
                        raise ValueError(f"sample rate {rate}, expected {self.sample_rate}")
                    stems[s] = data
                frames = min(d.shape[0] for d in stems.values())
            except (OSError, ValueError, RuntimeError) as exc:
                print(f"skipping {song_dir}: {exc}", flush=True)
                self._bad.add(song_dir.name)
                continue
            self.songs.append(Song(song_dir.name, stems, frames))
            self._known.add(song_dir.name)
            added += 1
        return added


@dataclass
class Augment:
    """Probabilities and ranges of the training augmentations (per stem unless said otherwise)."""

    p_remix: float = 0.6  # per example: every stem from its own random song and offset
    gain_db: tuple[float, float] = (-10.0, 4.0)
    p_channel_swap: float = 0.5
    p_polarity: float = 0.5
    p_mono: float = 0.1
    p_silence: float = 0.08
    p_eq: float = 0.6
    eq_db: float = 7.0
    p_saturate: float = 0.3
    p_resample: float = 0.5
    resample_range: float = 0.06  # factor in [1 - r, 1 + r]: about +-1 semitone of pitch and 6% of tempo
    mix_level_db: tuple[float, float] = (-36.0, -8.0)  # RMS of the mixture fed to the model
    p_real: float = 0.0  # per stem with real recordings (real_material.RealPool): a real segment joins or replaces it
    # extra gain of the vocal stem on top of gain_db, uniform in this range (dB); (0, 0) draws nothing, so the
    # sampler's random stream is that of a run without it
    vocal_offset_db: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def none(cls) -> Augment:
        return cls(0.0, (0.0, 0.0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (-20.0, -20.0), 0.0)

    @classmethod
    def preset(cls, name: str) -> Augment:
        """A named set (``AUGMENT_PRESETS``): "default"; "timbre", which changes each stem's sound more (EQ up to
        12 dB on 80 % of stems, resampling by up to 12 % (two semitones, formants with them) on 70 %, saturation on
        45 %), so that instruments and voices unlike the synthesizer's are less of a surprise; or "quiet_vocals",
        which turns the vocal stem down by a further 0 to 6 dB, so that vocals sit below their band as often as in
        produced rock and pop (the synthesizer's sit a median 2.8 dB below it, active frames 0.7 dB); "rest", which
        turns it down by 0 to 24 dB, as what the high-quality path's stems model hears (the mix less the look-ahead
        vocals) keeps some of the voice; "coherent"
        and "whole_songs", which remix 20 % and none of the examples instead of 60 %, so that more of them are whole
        songs whose stems share key, tempo and arrangement, as the songs a model is asked to separate do."""
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; choose from {', '.join(AUGMENT_PRESETS)}")
        return cls(**AUGMENT_PRESETS[name])


AUGMENT_PRESETS: dict[str, dict] = {
    "default": {},
    "timbre": {"p_eq": 0.8, "eq_db": 12.0, "p_saturate": 0.45, "p_resample": 0.7, "resample_range": 0.12},
    "quiet_vocals": {"vocal_offset_db": (-6.0, 0.0)},
    "rest": {"vocal_offset_db": (-24.0, 0.0)},
    "coherent": {"p_remix": 0.2},
    "whole_songs": {"p_remix": 0.0},
}


def random_eq_db(freqs_hz: np.ndarray, rng: np.random.Generator, max_db: float) -> np.ndarray:
    """A smooth random EQ curve in dB at ``freqs_hz``: tilt, low and high shelves, one bell."""
    f = np.maximum(freqs_hz, 20.0)
    octaves = np.log2(f / 1000.0)
    curve = rng.uniform(-0.5, 0.5) * max_db * octaves / 5.0  # tilt: +-max/2 dB at 32 Hz / 32 kHz
    low = rng.uniform(60.0, 400.0)
    curve += rng.uniform(-max_db, max_db) / (1.0 + (f / low) ** 2)
    high = rng.uniform(2000.0, 12000.0)
    curve += rng.uniform(-max_db, max_db) / (1.0 + (high / f) ** 2)
    centre, width = rng.uniform(np.log2(0.1), np.log2(8.0)), rng.uniform(0.3, 1.5)
    curve += rng.uniform(-max_db, max_db) * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
    return curve


def saturate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """tanh drive with a little asymmetry, level-matched at the peak: x float32 (channels, frames)."""
    peak = float(np.abs(x).max())
    if peak < 1e-6:
        return x
    drive = rng.uniform(1.5, 10.0)
    bias = rng.uniform(-0.3, 0.3)
    y = np.tanh(drive * x / peak + bias) - math.tanh(bias)
    return (y * (peak / max(float(np.abs(y).max()), 1e-9))).astype(np.float32)


class SegmentSampler:
    """Draws augmented training batches: (mixture (batch, 2, n), stems (batch, num_stems, 2, n)) float32."""

    def __init__(
        self,
        bank: SongBank,
        segment_frames: int,
        augment: Augment | None = None,
        seed: int = 0,
        num_channels: int = 2,
        real: RealPool | None = None,
    ) -> None:
        self.bank = bank
        self.real = real
        self.segment_frames = segment_frames
        self.augment = augment or Augment()
        self.rng = np.random.default_rng(seed)
        self.num_channels = num_channels
        self.margin = 2048  # extra samples each side for resampling, cut off afterwards

    def _draw(self, song: Song, stem: str, start: int, factor: float) -> np.ndarray:
        """A stem segment, resampled by ``factor`` and EQ'd when asked: float32 (channels, segment_frames)."""
        n, m = self.segment_frames, self.margin
        aug = self.augment
        do_eq = self.rng.random() < aug.p_eq
        if factor == 1.0 and not do_eq:
            return song.segment(stem, start, n, self.num_channels)
        n_out = scipy.fft.next_fast_len(n + 2 * m, real=True)
        n_in = scipy.fft.next_fast_len(int(round(n_out * factor)), real=True)  # factor becomes n_in / n_out
        factor = n_in / n_out
        x = song.segment(stem, start - m, n_in, self.num_channels)
        spec = scipy.fft.rfft(x, axis=-1)
        if do_eq:
            freqs = np.fft.rfftfreq(n_in, 1.0 / (self.bank.sample_rate * factor))  # frequencies after resampling
            # the curve is smooth: evaluate it on a log grid and interpolate (the bins are ~70k; exp per bin is slow)
            grid = np.geomspace(20.0, max(freqs[-1], 40.0), 512)
            gain = 10.0 ** (random_eq_db(grid, self.rng, aug.eq_db) / 20.0)
            spec *= np.interp(np.log(np.maximum(freqs, 20.0)), np.log(grid), gain).astype(np.float32)
        bins = n_out // 2 + 1
        if spec.shape[-1] >= bins:
            spec = spec[:, :bins]
        else:
            spec = np.concatenate([spec, np.zeros((spec.shape[0], bins - spec.shape[-1]), spec.dtype)], axis=-1)
        y = scipy.fft.irfft(spec, n=n_out, axis=-1) * (n_out / n_in)
        return y[:, m : m + n].astype(np.float32)

    def example(self) -> np.ndarray:
        """One augmented example: stems float32 (num_stems, channels, segment_frames), before the level change."""
        aug, rng, n = self.augment, self.rng, self.segment_frames
        songs = self.bank.songs
        stem_names = self.bank.stem_names
        remix = rng.random() < aug.p_remix
        base = songs[rng.integers(len(songs))]
        base_start = int(rng.integers(0, max(base.num_frames - n, 1)))
        base_factor = (
            1.0 + rng.uniform(-aug.resample_range, aug.resample_range) if rng.random() < aug.p_resample else 1.0
        )
        out = np.zeros((len(stem_names), self.num_channels, n), dtype=np.float32)
        for i, stem in enumerate(stem_names):
            song, start, factor = base, base_start, base_factor
            if remix:
                song = songs[rng.integers(len(songs))]
                start = int(rng.integers(0, max(song.num_frames - n, 1)))
                if rng.random() < aug.p_resample:
                    factor = 1.0 + rng.uniform(-aug.resample_range, aug.resample_range)
                else:
                    factor = 1.0
            x = self._draw(song, stem, start, factor)
            if aug.p_real > 0 and self.real is not None and stem in self.real.sources and rng.random() < aug.p_real:
                x = self.real.mixed_into(x, stem, rng)
            if rng.random() < aug.p_saturate:
                x = saturate(x, rng)
            if rng.random() < aug.p_mono:
                x[:] = x.mean(axis=0, keepdims=True)
            if rng.random() < aug.p_channel_swap:
                x = x[::-1]
            gain_db = rng.uniform(*aug.gain_db)
            if stem == "vocals" and aug.vocal_offset_db != (0.0, 0.0):
                gain_db += rng.uniform(*aug.vocal_offset_db)
            gain = 10.0 ** (gain_db / 20.0)
            if rng.random() < aug.p_polarity:
                gain = -gain
            out[i] = x * gain
        silent = rng.random(len(stem_names)) < aug.p_silence
        if silent.all():
            silent[rng.integers(len(stem_names))] = False
        out[silent] = 0.0
        return out

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(mixture float32 (batch, channels, n), stems float32 (batch, num_stems, channels, n)).

        Each example is scaled so the mixture RMS is a random level in ``mix_level_db``; mixture = sum of stems.
        """
        stems = np.stack([self.example() for _ in range(batch_size)])
        mix = stems.sum(axis=1)
        rms = np.sqrt((mix**2).mean(axis=(1, 2)) + 1e-12)
        level = 10.0 ** (self.rng.uniform(*self.augment.mix_level_db, size=batch_size) / 20.0)
        scale = np.where(rms > 1e-5, level / rms, 1.0).astype(np.float32)
        stems *= scale[:, None, None, None]
        return stems.sum(axis=1), stems


def validation_excerpts(bank: SongBank, max_songs: int, seconds: float) -> list[tuple[str, np.ndarray]]:
    """The first ``seconds`` of up to ``max_songs`` songs: (name, stems float32 (num_stems, channels, n))."""
    out = []
    for song in bank.songs[:max_songs]:
        n = min(song.num_frames, int(seconds * bank.sample_rate))
        out.append((song.name, np.stack([song.segment(s, 0, n) for s in bank.stem_names])))
    return out


def _slot_views(raw, batch_size: int, num_stems: int, num_channels: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, stems) float32 views of one shared batch slot."""
    flat = np.frombuffer(raw, dtype=np.float32)
    mix_size = batch_size * num_channels * n
    mix = flat[:mix_size].reshape(batch_size, num_channels, n)
    return mix, flat[mix_size:].reshape(batch_size, num_stems, num_channels, n)


def _prefetch_worker(spec: dict, slots: list, free, ready) -> None:
    """Fill free slots with batches forever. ``spec``: BatchPrefetcher's arguments (root, split, ..., rescan_every)."""
    import time

    root, split, stems, sample_rate = spec["root"], spec["split"], spec["stems"], spec["sample_rate"]
    segment_frames, batch_size, num_channels = spec["segment_frames"], spec["batch_size"], spec["num_channels"]
    rescan_every = spec["rescan_every"]
    bank = SongBank(root, split, stems, sample_rate)
    real = RealPool(spec["real"], sample_rate, stems) if spec["real"] else None
    sampler = SegmentSampler(bank, segment_frames, spec["augment"], spec["seed"], num_channels, real)
    views = [_slot_views(raw, batch_size, len(stems), num_channels, segment_frames) for raw in slots]
    made = 0
    while True:
        if made % rescan_every == 0:
            bank.rescan()
        if not len(bank):
            time.sleep(5)
            made = 0
            continue
        mix, stem_audio = sampler.batch(batch_size)
        slot = free.get()
        views[slot][0][...] = mix
        views[slot][1][...] = stem_audio
        ready.put(slot)
        made += 1


class BatchPrefetcher:
    """``SegmentSampler.batch`` in a separate process, ``depth`` batches ahead; ``get()`` returns the next batch.

    Batches travel through ``depth`` slots of shared memory; only slot numbers go through the queues. (Pickling a
    batch of 16 x 3 s through a pipe took 0.29 s of the training process per step.) The worker keeps its own
    ``SongBank`` and rescans it every ``rescan_every`` batches.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        segment_frames: int,
        batch_size: int,
        augment: Augment | None = None,
        seed: int = 0,
        stems: tuple[str, ...] = STEMS,
        sample_rate: int = 44100,
        depth: int = 3,
        rescan_every: int = 100,
        num_channels: int = 2,
        real: str | Path | None = None,
    ) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        floats = batch_size * num_channels * segment_frames * (1 + len(stems))
        self.slots = [ctx.RawArray("f", floats) for _ in range(depth)]
        self.views = [_slot_views(raw, batch_size, len(stems), num_channels, segment_frames) for raw in self.slots]
        self.free = ctx.Queue()
        self.ready = ctx.Queue()
        for slot in range(depth):
            self.free.put(slot)
        spec = {
            "root": str(root),
            "split": split,
            "stems": stems,
            "sample_rate": sample_rate,
            "segment_frames": segment_frames,
            "augment": augment or Augment(),
            "seed": seed,
            "batch_size": batch_size,
            "num_channels": num_channels,
            "rescan_every": rescan_every,
            "real": str(real) if real else None,
        }
        self.process = ctx.Process(target=_prefetch_worker, args=(spec, self.slots, self.free, self.ready), daemon=True)
        self.process.start()

    def get(self, timeout: float = 600.0) -> tuple[np.ndarray, np.ndarray]:
        """The next (mixture, stems) batch, copied out of its slot (the slot goes back to the worker at once)."""
        if not self.process.is_alive():
            raise RuntimeError(f"the batch prefetch process died (exit code {self.process.exitcode})")
        slot = self.ready.get(timeout=timeout)
        mix, stems = (v.copy() for v in self.views[slot])
        self.free.put(slot)
        return mix, stems

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
