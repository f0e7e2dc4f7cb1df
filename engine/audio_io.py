"""Reading input audio and writing stem files safely.

``read_audio`` (whole files) and ``iter_audio_blocks`` (progressive decoding) read any format FFmpeg reads and turn
every way a file can be bad (missing, unreadable, empty, truncated, corrupt, too many channels) into an
``AudioFileError`` that names the file and the problem; the decoders live in ``engine.decode``.
``AtomicStemWriter`` writes each stem to a hidden temporary file beside its target and moves them all into place only
when every stem is complete, so a failure never leaves a partly written file, and an existing output is never
replaced unless asked. NI stem files (.stem.mp4) are read and written by ``engine.stem_file``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24")}


class AudioFileError(Exception):
    """An input or output file problem; the message names the file."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a whole audio file: returns (float32 (num_channels, num_frames), sample_rate).

    Any format FFmpeg reads (WAV, AIFF, FLAC and Ogg Vorbis through libsndfile, which is exact and fastest; AAC/M4A,
    ALAC, MP3, Opus and the rest through PyAV), encoder priming and padding removed (see ``engine.decode``). An NI stem
    file (.stem.mp4) gives its first stream, the mixture. Every way a file can be bad raises ``AudioFileError`` naming
    the file: missing, unreadable, empty, not audio, truncated or corrupt (with the time where it breaks), more than
    two channels, NaN or infinite samples.
    """
    from stembridge.engine.decode import open_audio

    source = open_audio(path)
    _check_channels(source.path, source.num_channels)
    chunks = list(source.chunks())
    if not chunks:
        raise AudioFileError(f"{source.path}: contains no audio frames")
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
    if data.shape[1] == 0:
        raise AudioFileError(f"{source.path}: contains no audio frames")
    if not np.all(np.isfinite(data)):
        raise AudioFileError(f"{source.path}: contains NaN or infinite samples")
    return np.ascontiguousarray(data, dtype=np.float32), int(source.sample_rate)


def iter_audio_blocks(path: str | Path, block_frames: int) -> Iterator[np.ndarray]:
    """Decode a file progressively: yields float32 (num_channels, block_frames) blocks, the last one shorter.

    For a deck that should start playing a long MP3 or M4A before it is decoded in full: the first block arrives after
    decoding about ``block_frames`` frames, not the whole file. The rate and channel count are those ``read_audio``
    returns (``audio_info(path)`` gives them without decoding); the concatenated blocks equal ``read_audio``'s array.
    Checks run as decoding reaches them: a damaged or truncated file raises ``AudioFileError`` (naming the file and
    the time where it breaks) when the decode gets there, after the blocks before the damage were yielded; a WAV or
    AIFF whose header declares more audio than it holds raises before the first block.
    Not real-time safe: call it from a loader thread and hand the blocks over.
    """
    from stembridge.engine.decode import open_audio

    if block_frames < 1:
        raise ValueError("block_frames must be >= 1")
    source = open_audio(path)
    _check_channels(source.path, source.num_channels)
    pending: list[np.ndarray] = []
    num_pending = 0
    any_audio = False
    for chunk in source.chunks():
        if not np.all(np.isfinite(chunk)):
            raise AudioFileError(f"{source.path}: contains NaN or infinite samples")
        pending.append(chunk)
        num_pending += chunk.shape[1]
        while num_pending >= block_frames:
            joined = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)
            yield np.ascontiguousarray(joined[:, :block_frames])
            any_audio = True
            rest = joined[:, block_frames:]
            pending = [rest] if rest.shape[1] else []
            num_pending = rest.shape[1]
    if num_pending:
        yield np.ascontiguousarray(np.concatenate(pending, axis=1))
    elif not any_audio:
        raise AudioFileError(f"{source.path}: contains no audio frames")


def audio_info(path: str | Path) -> tuple[int, int, int | None]:
    """(sample_rate, num_channels, num_frames or None when the format declares no length) without decoding."""
    from stembridge.engine.decode import open_audio

    source = open_audio(path)
    source.close()
    return source.sample_rate, source.num_channels, source.num_frames


def _check_channels(p: Path, num_channels: int) -> None:
    if num_channels > 2:
        raise AudioFileError(f"{p}: has {num_channels} channels; only mono and stereo inputs are supported")


class AtomicStemWriter:
    """Writes ``<out_dir>/<stem>.<ext>`` for several stems, all or nothing.

    Use as a context manager: ``write(stem, block)`` appends frames; leaving the block normally commits every file
    (rename into place), leaving it with an exception deletes the temporaries and leaves existing files untouched.
    """

    def __init__(
        self,
        out_dir: Path,
        stems: list[str],
        sample_rate: int,
        num_channels: int,
        fmt: str = "wav",
        overwrite: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise AudioFileError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
        self.out_dir = out_dir
        self.stems = stems
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.fmt = fmt
        self.targets = {s: out_dir / f"{s}.{fmt}" for s in stems}
        existing = [str(t) for t in self.targets.values() if t.exists()]
        if existing and not overwrite:
            raise AudioFileError(f"output exists (use --overwrite to replace): {', '.join(existing)}")
        self.num_clipped = 0
        self._temps: dict[str, Path] = {}
        self._files: dict[str, sf.SoundFile] = {}

    def __enter__(self) -> AtomicStemWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        container, subtype = FORMATS[self.fmt]
        try:
            for stem, target in self.targets.items():
                temp = target.with_name(f".{target.name}.{os.getpid()}.partial")
                self._temps[stem] = temp
                self._files[stem] = sf.SoundFile(
                    str(temp), "w", self.sample_rate, self.num_channels, subtype=subtype, format=container
                )
        except Exception:
            self._discard()
            raise
        return self

    def write(self, stem: str, block: np.ndarray) -> None:
        """block: float32 (num_channels, n). Samples beyond +-1 are clipped (and counted in ``num_clipped``)."""
        over = np.abs(block) > 1.0
        if over.any():
            self.num_clipped += int(over.sum())
            block = np.clip(block, -1.0, 1.0)
        self._files[stem].write(block.T)

    def __exit__(self, exc_type, exc, tb) -> None:
        for f in self._files.values():
            f.close()
        if exc_type is not None:
            self._discard()
            return
        for stem, temp in self._temps.items():
            os.replace(temp, self.targets[stem])

    def _discard(self) -> None:
        for f in self._files.values():
            if not f.closed:
                f.close()
        for temp in self._temps.values():
            temp.unlink(missing_ok=True)
