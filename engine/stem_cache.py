"""The disk cache of analysed high-quality stems: a track loaded again needs no analysis.

One FLAC file per track and model version in ``$STEMBRIDGE_CACHE`` or ``~/.cache/stembridge/stems/``, named
``<audio hash>-<model version>.flac``:

- the **audio hash** is the sha256 of the decoded float32 audio at the model rate (its shape first), so the same
  audio in another file format or under another name hits the cache, and an edited file misses it;
- the **model version** is the sha256 of the high-quality path's models' files (graphs and cards) and
  ``hq.PIPELINE_VERSION``, so a new model or pipeline never plays stems the old one made.

A file holds 6 channels, vocals, drums and bass (left, right each), as 16-bit FLAC by default (24-bit on request),
scaled by the stems' peak when it exceeds full scale; ``other`` is not stored, it is the mix minus the three, so the
stems still sum to the mix exactly. Its FLAC comment holds a JSON header (audio hash, model version, frames, scale)
that is checked on open: a corrupt or mismatched file is ignored with a log message, and the stems are recomputed
(and the file rewritten). Files are written to a temporary name beside the target and renamed, only once the whole
track is analysed, so a reader never sees half a file. The cache keeps under ``max_bytes`` (default 20 GB,
``$STEMBRIDGE_CACHE_MAX_GB``): after each write the least recently used files go (a hit counts as a use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

DEFAULT_MAX_GB = 20.0
STORED_STEMS = ("vocals", "drums", "bass")
SUBTYPES = ("PCM_16", "PCM_24")
_FULL_SCALE = {"PCM_16": 32767 / 32768, "PCM_24": 8388607 / 8388608}
_versions: dict[tuple, str] = {}
_versions_lock = threading.Lock()


def default_cache_dir() -> Path:
    """``$STEMBRIDGE_CACHE`` when set, else ``~/.cache/stembridge/stems``."""
    env = os.environ.get("STEMBRIDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stembridge" / "stems"


def default_max_bytes() -> int:
    """``$STEMBRIDGE_CACHE_MAX_GB`` (a number of gigabytes) when set, else 20 GB."""
    env = os.environ.get("STEMBRIDGE_CACHE_MAX_GB")
    try:
        gb = float(env) if env else DEFAULT_MAX_GB
    except ValueError as exc:
        raise ValueError(f"STEMBRIDGE_CACHE_MAX_GB must be a number of gigabytes, got {env!r}") from exc
    return int(gb * 1e9)


def audio_hash(audio: np.ndarray) -> str:
    """sha256 of audio float32 (num_channels, n) as the models take it: its shape, then its samples."""
    data = np.ascontiguousarray(audio, dtype=np.float32)
    h = hashlib.sha256(f"float32 {data.shape[0]}x{data.shape[1]};".encode())
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def model_version(files: list[Path], pipeline_version: int) -> str:
    """sha256 of ``files`` (each model's graph and card) and the pipeline version; memoised per file state."""
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (stats, pipeline_version)
    with _versions_lock:
        if key in _versions:
            return _versions[key]
    h = hashlib.sha256(f"stembridge hq pipeline {pipeline_version};".encode())
    for p in files:
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    version = h.hexdigest()
    with _versions_lock:
        _versions[key] = version
    return version


class CachedStems:
    """An open, validated cache file: ``read(start, stop, dst)`` fills stems (vocals, drums, bass) of a range."""

    def __init__(self, path: Path, handle: sf.SoundFile, scale: float, num_channels: int) -> None:
        self.path = path
        self._file = handle
        self._scale = np.float32(scale)
        self._num_channels = num_channels

    def read(self, start: int, stop: int, dst: np.ndarray) -> None:
        """dst: float32 (3, num_channels, stop - start) <- the stored stems of samples [start, stop)."""
        self._file.seek(start)
        frames = self._file.read(stop - start, dtype="float32", always_2d=True)
        if frames.shape[0] != stop - start:
            raise sf.LibsndfileError(0, f"{self.path}: ends at frame {start + frames.shape[0]}, before {stop}")
        dst[:] = frames.T.reshape(len(STORED_STEMS), self._num_channels, stop - start)
        if self._scale != 1.0:
            dst *= self._scale

    def close(self) -> None:
        self._file.close()


class StemCache:
    """The cache directory. Thread-safe enough for one writer per track: files are renamed into place whole."""

    def __init__(
        self, directory: str | Path | None = None, *, max_bytes: int | None = None, subtype: str = "PCM_16"
    ) -> None:
        if subtype not in SUBTYPES:
            raise ValueError(f"cache sample format {subtype!r} is not one of {', '.join(SUBTYPES)}")
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes <= 0:
            raise ValueError(f"the cache size limit must be positive, got {self.max_bytes} bytes")
        self.subtype = subtype

    def path_for(self, audio_key: str, version: str) -> Path:
        return self.directory / f"{audio_key[:40]}-{version[:16]}.flac"

    def open(self, audio_key: str, version: str, num_channels: int, num_samples: int) -> CachedStems | None:
        """The cached stems of this audio and model version, or None (absent, corrupt or mismatched: logged)."""
        path = self.path_for(audio_key, version)
        if not path.is_file():
            return None
        try:
            handle = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            log.warning("ignoring unreadable stem cache file %s (%s); the stems are recomputed", path, exc)
            return None
        try:
            header = json.loads(handle.comment or "{}")
            problem = None
            if not isinstance(header, dict):
                problem = "no header"
            elif header.get("audio") != audio_key or header.get("model") != version:
                problem = "made for other audio or another model version"
            elif handle.channels != len(STORED_STEMS) * num_channels or handle.frames != num_samples:
                problem = f"{handle.channels} channels x {handle.frames} frames, not {num_channels * 3} x {num_samples}"
            elif header.get("frames") != num_samples or not np.isfinite(float(header.get("scale", "nan"))):
                problem = "a header that does not match the file"
        except (ValueError, TypeError) as exc:
            problem = f"an unreadable header ({exc})"
        if problem:
            handle.close()
            log.warning("ignoring stem cache file %s: %s; the stems are recomputed", path, problem)
            return None
        try:
            os.utime(path)  # a use, for the least-recently-used eviction
        except OSError:
            pass
        return CachedStems(path, handle, float(header["scale"]), num_channels)

    def store(
        self,
        audio_key: str,
        version: str,
        stems: np.ndarray,
        sample_rate: int,
        *,
        block: int = 1 << 18,
        should_stop: Callable[[], bool] | None = None,
    ) -> Path | None:
        """Write stems float32 (3 or 4, num_channels, n) (vocals, drums, bass first) atomically; evict old files.
        Returns the file's path, or None when ``should_stop()`` turned True part way (nothing is left behind)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(audio_key, version)
        three = stems[: len(STORED_STEMS)]
        num_channels, n = three.shape[1], three.shape[2]
        peak = float(np.abs(three).max()) if n else 0.0
        scale = max(1.0, peak / _FULL_SCALE[self.subtype])
        header = {"audio": audio_key, "model": version, "frames": n, "scale": scale, "stems": list(STORED_STEMS)}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
        try:
            with sf.SoundFile(
                tmp, "w", sample_rate, len(STORED_STEMS) * num_channels, format="FLAC", subtype=self.subtype
            ) as f:
                f.comment = json.dumps(header)
                for a in range(0, n, block):
                    if should_stop is not None and should_stop():
                        return None
                    part = three[:, :, a : a + block].reshape(-1, min(block, n - a)).T
                    f.write(part / scale if scale != 1.0 else part)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete the least recently used files until the cache is under ``max_bytes``; returns what went."""
        entries = []
        for p in self.directory.glob("*.flac"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if keep is not None and p == keep:
                continue
            try:
                p.unlink()
            except OSError:
                continue
            total -= size
            removed.append(p)
        if removed:
            log.info(
                "stem cache over %.1f GB: removed %d least recently used file(s)", self.max_bytes / 1e9, len(removed)
            )
        return removed

    def clear(self) -> int:
        """Delete every cached stem file; returns how many."""
        count = 0
        for p in self.directory.glob("*.flac"):
            p.unlink(missing_ok=True)
            count += 1
        return count
