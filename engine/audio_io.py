"""Reading input audio and writing stem files safely.

``read_audio`` turns every way a file can be bad (missing, unreadable, empty, corrupt, too many channels) into an
``AudioFileError`` that names the file and the problem. ``AtomicStemWriter`` writes each stem to a hidden temporary
file beside its target and moves them all into place only when every stem is complete, so a failure never leaves a
partly written file, and an existing output is never replaced unless asked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24")}


class AudioFileError(Exception):
    """An input or output file problem; the message names the file."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a whole audio file: returns (float32 (num_channels, num_frames), sample_rate)."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: file not found")
    if p.is_dir():
        raise AudioFileError(f"{p}: is a folder, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioFileError(f"{p}: permission denied (cannot read)")
    if p.stat().st_size == 0:
        raise AudioFileError(f"{p}: file is empty (0 bytes)")
    try:
        data, sample_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioFileError(f"{p}: cannot decode audio (corrupt or unsupported format): {exc}") from exc
    if data.shape[0] == 0:
        raise AudioFileError(f"{p}: contains no audio frames")
    if data.shape[1] > 2:
        raise AudioFileError(f"{p}: has {data.shape[1]} channels; only mono and stereo inputs are supported")
    if not np.all(np.isfinite(data)):
        raise AudioFileError(f"{p}: contains NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(sample_rate)


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
