"""Separating files through the live streaming path (``stembridge separate``).

A file is fed block by block through the same ``BlockAdapter`` + ``StreamingSeparator`` that live use runs; the
reported latency is removed by feeding that many samples of silence after the end and dropping the first samples,
so every stem lines up with the input and has its length. Inputs at another sample rate are resampled to the
model's rate and the stems back to the input's rate, the residual stem taking what the others leave at the input's
rate (so the stems sum to the input exactly at any rate); mono inputs are separated as centred stereo and folded
back.

When the block size is a whole number of hops (the adapter then only passes blocks through), the separator's three
stages are overlapped: the model call for block ``b`` runs on a helper thread (ONNX Runtime releases the GIL) while
this thread inverse-transforms block ``b - 1`` and transforms block ``b + 1``. Every stage still runs in stream
order on the same objects, so the stems are bit-identical to the plain block loop; only the wall time changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly
from stembridge.engine.audio_io import AtomicStemWriter, read_audio
from stembridge.engine.separator import StreamingSeparator
from stembridge.engine.stream import BlockAdapter


@dataclass
class SeparationResult:
    """What one file's separation did: outputs, audio duration, wall time, clipping."""

    input: Path
    outputs: list[Path]
    duration_s: float
    elapsed_s: float
    num_clipped: int

    @property
    def realtime_factor(self) -> float:
        return self.duration_s / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def _resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """audio: float32 (num_channels, n) -> float32 (num_channels, round(n * to_rate / from_rate))."""
    if from_rate == to_rate:
        return audio
    g = gcd(from_rate, to_rate)
    return resample_poly(audio, to_rate // g, from_rate // g, axis=-1).astype(np.float32)


def separate_audio(
    adapter: BlockAdapter,
    audio: np.ndarray,
    block_size: int,
    progress: Callable[[int], None] | None = None,
    overlap: bool = True,
) -> np.ndarray:
    """Run audio (num_channels, n) at the model rate through ``adapter`` in blocks of ``block_size``.

    Returns float32 stems (num_stems, num_channels, n), aligned to the input (latency removed). The model's
    channel count is met by duplicating a mono input and averaging the stems back to mono. ``overlap``: overlap
    the model call with the host STFT work where the block size allows (same result, less wall time).
    """
    sep = adapter.separator
    num_in_channels, n = audio.shape
    model_in = np.repeat(audio, sep.num_channels, axis=0) if num_in_channels == 1 else audio
    latency = adapter.latency_samples
    total = n + latency
    total_blocks = -(-total // block_size)
    padded = np.zeros((sep.num_channels, total_blocks * block_size), dtype=np.float32)
    padded[:, :n] = model_in
    stems = np.zeros((sep.num_stems, sep.num_channels, total_blocks * block_size), dtype=np.float32)
    adapter.reset()

    def done(a: int) -> None:  # the block starting at model-rate sample a is written
        if progress is not None:
            progress(min(block_size, max(0, n - a)))

    hops, rest = divmod(block_size, sep.hop_size)
    if overlap and not rest and adapter.extra_latency == 0 and sep.num_streams == 1 and hops <= sep.max_hops:
        _run_overlapped(sep, padded, stems, hops, done)
    else:
        for b in range(total_blocks):
            a = b * block_size
            stems[:, :, a : a + block_size] = adapter.process(padded[None, :, a : a + block_size])[0]
            done(a)
    aligned = stems[:, :, latency : latency + n]
    if num_in_channels == 1 and sep.num_channels != 1:
        aligned = aligned.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(aligned)


def _run_overlapped(
    sep: StreamingSeparator, padded: np.ndarray, stems: np.ndarray, hops: int, done: Callable[[int], None]
) -> None:
    """Blocks of ``hops`` hops of ``padded`` (channels, total) into ``stems`` (stems, channels, total), with block
    ``b``'s model call overlapping block ``b - 1``'s stem spectra and synthesis and block ``b + 1``'s analysis (the
    spatial filter, when on, is as much work as the model call: it runs beside it, not after it). ``done(a)`` is
    called when the block starting at sample ``a`` is written."""
    size = hops * sep.hop_size
    num_blocks = padded.shape[1] // size
    with ThreadPoolExecutor(1, thread_name_prefix="stembridge-model") as pool:
        pending: tuple[int, np.ndarray, np.ndarray, Future] | None = None
        for b in range(num_blocks + 1):
            if b < num_blocks:
                audio = padded[None, :, b * size : (b + 1) * size]
                spectra, mag = sep.analyse(audio, hops, slot=b % 2)  # the model may still read the other slot
            if pending is not None:
                a, prev_audio, prev_spectra, future = pending
                masks = future.result()  # the state for block b is ready: start its model call, then synthesise
            pending = (b * size, audio, spectra, pool.submit(sep.infer, mag)) if b < num_blocks else None
            if b > 0:
                stem_spectra = sep.stem_spectra(prev_spectra, masks)
                stems[:, :, a : a + size] = sep.synthesise(prev_audio, stem_spectra, hops)[0]
                done(a)


class CausalFileSeparator:
    """The causal live model on a whole file: ``BlockAdapter`` + ``StreamingSeparator`` in blocks of
    ``block_size`` (``separate --mode live``), its latency removed."""

    def __init__(self, adapter: BlockAdapter, block_size: int) -> None:
        self.adapter = adapter
        self.block_size = block_size
        sep = adapter.separator
        self.sample_rate = sep.sample_rate
        self.stems = sep.stems
        self.residual_stem = sep.card.residual_stem
        latency_ms = 1000.0 * adapter.latency_samples / sep.sample_rate
        self.description = (
            f"live model {sep.card.name} ({sep.card.path}){' + spatial filter' if sep.spatial else ''} on "
            f"{sep.active_provider}; latency {adapter.latency_samples} samples ({latency_ms:.1f} ms) at "
            f"{sep.sample_rate} Hz, removed from the outputs"
        )

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """audio float32 (num_channels, n) at the model rate -> stems float32 (num_stems, num_channels, n)."""
        return separate_audio(self.adapter, audio, self.block_size, progress)


class FileSeparator(Protocol):
    """What ``separate_file`` runs: the causal path (``CausalFileSeparator``) or the high-quality path
    (``engine.hq.HighQualitySeparator``). ``separate(audio, progress)``: float32 (num_channels, n) at
    ``sample_rate`` -> float32 (len(stems), num_channels, n), aligned with the input."""

    sample_rate: int
    stems: tuple[str, ...]
    residual_stem: str | None  # the stem that takes what the others leave (the stems sum to the input)
    description: str

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray: ...


def separate_file(
    separator: FileSeparator,
    path: Path,
    out_dir: Path,
    *,
    stems: list[str],
    fmt: str = "wav",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_loaded: Callable[[int], None] | None = None,
    codec: str = "aac",
    reseparate: bool = False,
) -> SeparationResult:
    """Separate one file into ``out_dir/<stem>.<fmt>`` (24-bit, the input's rate and channels), or with
    ``fmt="stem"`` into one NI stem file ``out_dir/<name>.stem.mp4`` (``codec`` "aac" or "alac"; see
    ``engine.stem_output``).

    ``on_loaded(num_frames)`` is called once the input is decoded (for a progress bar); ``progress(frames)`` as
    model-rate frames are done. Raises ``AudioFileError`` for bad input or existing outputs; writes nothing then.
    An input that is already an NI stem file raises ``NothingToSeparate`` unless ``reseparate`` (its mixture is then
    separated).
    """
    from stembridge.engine.stem_output import StemFileOutput, check_not_stem_file

    if not reseparate:
        check_not_stem_file(path)
    audio, rate = read_audio(path)
    if fmt == "stem":
        writer = StemFileOutput(
            out_dir, path, separator.stems, separator.residual_stem, codec=codec, overwrite=overwrite
        )
    else:
        writer = AtomicStemWriter(out_dir, stems, rate, audio.shape[0], fmt=fmt, overwrite=overwrite)
    start = time.perf_counter()
    model_audio = _resample(audio, rate, separator.sample_rate)
    if on_loaded is not None:
        on_loaded(model_audio.shape[1])
    separated = separator.separate(model_audio, progress)
    outputs = {
        stem: _fit_length(_resample(separated[k], separator.sample_rate, rate), audio.shape[1])
        for k, stem in enumerate(separator.stems)
    }
    residual = separator.residual_stem
    if rate != separator.sample_rate and residual in outputs:
        # the residual takes what the other stems leave at the input's own rate (the band above the model's
        # Nyquist frequency of a 48/96 kHz file included), so the stems still sum to the input exactly
        others = sum(out for stem, out in outputs.items() if stem != residual)
        outputs[residual] = (audio - others).astype(np.float32)
    if fmt == "stem":
        writer.write(audio, rate, outputs)
    else:
        with writer:
            for stem in stems:
                writer.write(stem, outputs[stem])
    return SeparationResult(
        input=path,
        outputs=list(writer.targets.values()),
        duration_s=audio.shape[1] / rate,
        elapsed_s=time.perf_counter() - start,
        num_clipped=writer.num_clipped,
    )


def _fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad audio (num_channels, m) to n frames (resampling round trips can be off by one)."""
    if audio.shape[1] >= n:
        return audio[:, :n]
    return np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
