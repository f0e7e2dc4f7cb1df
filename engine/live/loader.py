"""Loading tracks into file decks while the engine runs: decoded off the audio thread, swapped in by reference.

``TrackLoader`` owns one thread and one decoder process (``DecoderProcess``: its own interpreter, so decoding never
holds the audio process's GIL or steals its time slices; decoding in the audio process quadrupled a playing deck's
xruns here; in a child, paced to half a core after the first chunk, it leaves the audio its CPU).
``load(deck, path)`` queues a job; the child opens the file, tells the expected length, and decodes into shared
memory (a memfd the loader maps), publishing how far it got.
Once the first quarter-second is there the deck gets a ``Track`` through its command queue (``LoadTrack``, applied
at a block boundary); the loader keeps copying the child's progress into ``Track.num_frames`` while the rest
decodes. The deck plays whatever is decoded; decoding runs far faster than real time, so the playhead never catches
up with it. A file that cannot be opened or decoded is reported (``on_warning(deck, path, reason)``) and the deck
keeps what it had.

Memory: the audio thread never frees a track. The loader keeps a reference to each deck's current and previous
tracks, so the last reference to a replaced track (and its shared memory) is dropped here, on the loader thread,
when that deck's next track arrives.

Decoding is behind one function, ``iter_decoded``: soundfile blocks (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1),
resampled to the engine's rate by soxr's streaming resampler when the file's rate differs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from stembridge.engine.audio_io import AudioFileError

log = logging.getLogger(__name__)

FIRST_CHUNK_S = 0.25  # decoded before the deck gets the track
CHUNK_S = 2.0  # decoded per step afterwards


class Track:
    """A decoded (or decoding) track: ``audio`` float32 (num_channels, capacity), of which ``num_frames`` are
    valid. ``complete`` once decoding ended; ``total_frames`` is the expected length (the final one when complete).
    ``hq`` tells deck feedback whether high-quality stems for the track are ready (nothing computes them yet: 0).

    Written by the loader thread only (frames first, then the count), read by the audio thread."""

    __slots__ = ("audio", "num_frames", "total_frames", "complete", "name", "path", "error", "hq")

    def __init__(self, audio: np.ndarray, name: str, *, path: str = "", num_frames: int | None = None) -> None:
        self.audio = audio
        self.num_frames = audio.shape[1] if num_frames is None else num_frames
        self.total_frames = audio.shape[1] if num_frames is None else audio.shape[1]
        self.complete = num_frames is None
        self.name = name
        self.path = path
        self.error = ""
        self.hq = False  # True once high-quality stems for this track are ready (set by whoever computes them)

    @classmethod
    def empty(cls, num_channels: int = 2) -> Track:
        return cls(np.zeros((num_channels, 0), dtype=np.float32), "")

    @property
    def progress(self) -> float:
        """0..1: how much of the track is decoded (0 for no track)."""
        if self.complete and self.total_frames:
            return 1.0
        return self.num_frames / self.total_frames if self.total_frames else 0.0


def iter_decoded(
    path: str | Path, sample_rate: int, num_channels: int, block_frames: int, first_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Decode ``path`` in blocks: float32 (num_channels, k) at ``sample_rate`` (mono is doubled; other rates are
    resampled with soxr), the first of about ``first_frames`` (default ``block_frames``), then ``block_frames``.
    The first item yielded is the expected total length (an int) at ``sample_rate``. Raises AudioFileError naming
    the file and the reason."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: file not found")
    if p.is_dir():
        raise AudioFileError(f"{p}: is a folder, not an audio file")
    try:
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioFileError(f"{p}: cannot decode audio (corrupt or unsupported format): {exc}") from exc
    with f:
        if f.channels > 2:
            raise AudioFileError(f"{p}: has {f.channels} channels; only mono and stereo inputs are supported")
        rate = int(f.samplerate)
        resampler = None
        if rate != sample_rate:
            import soxr

            resampler = soxr.ResampleStream(rate, sample_rate, f.channels, dtype="float32", quality="HQ")
        total = int(round(f.frames * sample_rate / rate)) if f.frames > 0 else 0
        yield total
        step = max(1, int(round((first_frames or block_frames) * rate / sample_rate)))
        got_any = False
        while True:
            if got_any:
                step = max(1, int(round(block_frames * rate / sample_rate)))
            try:
                data = f.read(step, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
                raise AudioFileError(f"{p}: decoding failed part-way: {exc}") from exc
            last = data.shape[0] < step
            if resampler is not None:
                data = resampler.resample_chunk(data, last=last)
            if data.shape[0]:
                if not np.all(np.isfinite(data)):
                    raise AudioFileError(f"{p}: contains NaN or infinite samples")
                got_any = True
                block = data.T
                if block.shape[0] == 1 and num_channels == 2:
                    block = np.repeat(block, 2, axis=0)
                yield np.ascontiguousarray(block, dtype=np.float32)
            if last:
                break
        if not got_any:
            raise AudioFileError(f"{p}: contains no audio frames")


HEADER_BYTES = 64  # int64 frames written, int64 cancel flag, then padding; the planar audio follows
_CHILD_CODE = "import sys; from stembridge.engine.live.loader import _decoder_main; sys.exit(_decoder_main())"


def _decoder_main() -> int:
    """The decoder process (``DecoderProcess``): one JSON job per stdin line; for each, a JSON reply with a memfd
    holding (num_channels, capacity) float32 planar audio after a 64-byte header, then the audio decoded into it,
    the header's frame count advanced after each block, and a final JSON line (``done`` or ``error``)."""
    import json
    import mmap
    import sys
    import time

    out = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        rate, channels = int(job["rate"]), int(job["channels"])
        try:
            blocks = iter_decoded(job["path"], rate, channels, int(job["chunk"]), int(job["first"]))
            total = next(blocks)
        except (AudioFileError, OSError) as exc:
            out.write(json.dumps({"error": str(exc)}) + "\n")
            out.flush()
            continue
        capacity = total + rate  # a margin: MP3 lengths are estimates
        fd = os.memfd_create("stembridge-track")
        os.ftruncate(fd, HEADER_BYTES + channels * capacity * 4)
        mem = mmap.mmap(fd, HEADER_BYTES + channels * capacity * 4)
        header = np.ndarray((2,), np.int64, mem, 0)
        audio = np.ndarray((channels, capacity), np.float32, mem, HEADER_BYTES)
        out.write(json.dumps({"fd": fd, "pid": os.getpid(), "total": total, "capacity": capacity}) + "\n")
        out.flush()
        sys.stdin.readline()  # the parent has mapped it
        os.close(fd)
        written, error = 0, ""
        share = float(job.get("cpu_share", 1.0))
        try:
            started = time.perf_counter()
            for block in blocks:
                if header[1]:
                    break
                k = min(block.shape[1], capacity - written)
                audio[:, written : written + k] = block[:, :k]
                if written:  # after the first chunk, at most ``share`` of a core: the set's audio comes first
                    time.sleep((time.perf_counter() - started) * (1.0 / share - 1.0))
                written += k
                header[0] = written
                if k < block.shape[1]:
                    break  # longer than its header said: keep what fits
                started = time.perf_counter()
        except AudioFileError as exc:
            error = str(exc)
        if not written and not error:
            error = f"{job['path']}: contains no audio frames"
        del header, audio
        mem.close()
        out.write(json.dumps({"done": written, "error": error}) + "\n")
        out.flush()
    return 0


class DecoderProcess:
    """Decodes tracks in a child process (its own GIL and CPU time; measured here: decoding in the audio process
    quadrupled the xruns of a playing deck, in a child it changed nothing) into shared memory the parent maps."""

    def __init__(self, cpu_share: float = 0.5) -> None:
        self._proc = None
        self.cpu_share = cpu_share  # of a core, at most, for decoding after a track's first chunk

    def _ensure(self):
        import subprocess
        import sys

        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=env, bufsize=1,
            )  # fmt: skip
        return self._proc

    def start(self) -> None:
        self._ensure()

    def open(self, path: str, rate: int, channels: int, first: int, chunk: int):
        """Start decoding ``path``: returns (header int64 (2,), audio float32 (channels, capacity), total) mapped
        from the child's memory, or raises AudioFileError with the child's reason."""
        import json
        import mmap

        proc = self._ensure()
        job = {"path": path, "rate": rate, "channels": channels, "first": first, "chunk": chunk,
               "cpu_share": self.cpu_share}  # fmt: skip
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline() or "{}")
        except (OSError, ValueError) as exc:
            self.close()
            raise AudioFileError(f"{path}: the decoder process failed ({exc})") from exc
        if "error" in reply:
            raise AudioFileError(reply["error"])
        if "fd" not in reply:
            self.close()
            raise AudioFileError(f"{path}: the decoder process stopped")
        size = HEADER_BYTES + channels * reply["capacity"] * 4
        fd = os.open(f"/proc/{reply['pid']}/fd/{reply['fd']}", os.O_RDWR)
        try:
            mem = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        proc.stdin.write("mapped\n")
        proc.stdin.flush()
        header = np.ndarray((2,), np.int64, mem, 0)
        audio = np.ndarray((channels, reply["capacity"]), np.float32, mem, HEADER_BYTES)
        return header, audio, int(reply["total"])

    def finish(self) -> dict:
        """The child's final line for the current track: {"done": frames, "error": text}."""
        import json

        try:
            return json.loads(self._proc.stdout.readline() or "{}")
        except (OSError, ValueError, AttributeError):
            return {}

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=5.0)
            except Exception:
                self._proc.kill()
            self._proc = None


Warning = Callable[[int, str, str], None]


class TrackLoader:
    """Loads tracks into decks from its own thread. ``decks``: the engine's decks (1-based numbers in the calls);
    ``queues``: their command queues; ``on_warning(deck, path, reason)`` and ``on_loaded(deck, track)`` are
    called from the loader thread."""

    def __init__(
        self,
        decks: list,
        queues: list,
        sample_rate: int,
        num_channels: int = 2,
        *,
        on_warning: Warning | None = None,
        on_loaded: Callable[[int, Track], None] | None = None,
    ) -> None:
        self.decks = decks
        self.queues = queues
        self.sample_rate = int(sample_rate)
        self.num_channels = num_channels
        self.on_warning = on_warning
        self.on_loaded = on_loaded
        self.num_loaded = 0
        self.num_failed = 0
        self._jobs: queue.Queue = queue.Queue()
        self._keep: dict[int, list[Track]] = {}  # per deck: the tracks the audio thread may still hold
        self._generation = [0] * len(decks)
        self._thread: threading.Thread | None = None
        self._decoder = DecoderProcess()
        self._idle = threading.Event()
        self._idle.set()
        self._num_jobs = 0
        self._jobs_lock = threading.Lock()

    def start(self) -> TrackLoader:
        if self._thread is None:
            self._decoder.start()  # the child imports while nothing is asked of it yet
            self._thread = threading.Thread(target=self._run, name="stembridge-loader", daemon=True)
            self._thread.start()
        return self

    def load(self, deck: int, path: str | Path) -> None:
        """Queue loading ``path`` into deck ``deck`` (1-based). A newer load into the same deck cancels the older."""
        self._check(deck)
        self._generation[deck - 1] += 1
        self._put((deck, str(path), self._generation[deck - 1]))

    def eject(self, deck: int) -> None:
        """Empty deck ``deck`` (it fades out first if playing)."""
        self._check(deck)
        self._generation[deck - 1] += 1
        self._put((deck, None, self._generation[deck - 1]))

    def _put(self, job: tuple) -> None:
        with self._jobs_lock:
            self._num_jobs += 1
            self._idle.clear()
        self._jobs.put(job)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued job has finished decoding (for tests and benchmarks)."""
        return self._idle.wait(timeout_s)

    def _check(self, deck: int) -> None:
        if not 1 <= deck <= len(self.decks):
            raise KeyError(f"no deck {deck} (decks 1..{len(self.decks)})")
        if not getattr(self.decks[deck - 1], "loadable", False):
            raise KeyError(f"deck {deck} is a live input; only file decks load tracks")

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None
        self._decoder.close()

    def _run(self) -> None:
        # decoding is bulk work: SCHED_BATCH keeps this thread an ordinary one below the separation worker (live
        # promotes ordinary threads to real time; batch threads are left alone) and tells the kernel so
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, OSError):
            pass
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._do(*job)
            except Exception:  # never let the loader die: the next load must still work
                log.exception("track loader failed")
            finally:
                with self._jobs_lock:
                    self._num_jobs -= 1
                    if self._num_jobs == 0:
                        self._idle.set()

    def _cancelled(self, deck: int, generation: int) -> bool:
        return self._generation[deck - 1] != generation

    def _do(self, deck: int, path: str | None, generation: int) -> None:
        from stembridge.engine.commands import LoadTrack

        if self._cancelled(deck, generation):
            return
        if path is None:
            self._hand_over(deck, Track.empty(self.num_channels), LoadTrack)
            return
        rate = self.sample_rate
        first, chunk = int(FIRST_CHUNK_S * rate), int(CHUNK_S * rate)
        try:
            header, audio, total = self._decoder.open(path, rate, self.num_channels, first, chunk)
        except AudioFileError as exc:
            self._warn(deck, path, str(exc))
            return
        track = Track(audio, Path(path).name, path=path, num_frames=0)
        track.total_frames = total
        handed = False
        while True:  # publish the child's progress; hand the track over once its first chunk is there
            done = self._decoder_done()
            written = int(header[0])  # read after ``done``: once the child is done, this count is final
            if written > track.num_frames:
                track.num_frames = written
            if not handed and (written >= min(first, total) or done):
                if written == 0:
                    break
                if not self._hand_over(deck, track, LoadTrack):
                    header[1] = 1
                    break
                handed = True
            if self._cancelled(deck, generation):
                header[1] = 1  # the child stops at its next block
                track.error = "cancelled by a newer load"
                break
            if done:
                break
            time.sleep(0.002 if not handed else 0.02)
        final = self._decoder.finish()
        track.num_frames = max(track.num_frames, int(final.get("done", 0) or 0), int(header[0]))
        error = final.get("error") or ""
        if error:
            track.error = error
            if handed:
                self._warn(deck, path, f"{error} (the deck plays the {track.num_frames / rate:.1f} s decoded so far)")
            else:
                self._warn(deck, path, error)
        if not handed:
            return
        track.total_frames = track.num_frames
        track.complete = True
        if self.on_loaded is not None:
            self.on_loaded(deck, track)

    def _decoder_done(self) -> bool:
        """Whether the child has finished this track (its final line is waiting), without blocking."""
        import select

        proc = self._decoder._proc
        if proc is None or proc.poll() is not None:
            return True
        ready, _, _ = select.select([proc.stdout], [], [], 0)
        return bool(ready)

    def _hand_over(self, deck: int, track: Track, command_type) -> bool:
        d = self.decks[deck - 1]
        keep = self._keep.setdefault(deck, [])
        keep.append(d.track)  # the audio thread may still be playing it: it is freed here, later
        keep.append(track)
        del keep[:-3]
        if not self.queues[deck - 1].push(command_type(track)):
            self._warn(deck, track.path or "eject", "the deck's command queue is full; try again")
            return False
        if track.num_frames or track.path:
            self.num_loaded += 1
        return True

    def _warn(self, deck: int, path: str, reason: str) -> None:
        self.num_failed += 1
        log.warning("deck %d: %s", deck, reason)
        if self.on_warning is not None:
            self.on_warning(deck, path, reason)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".opus")


class Crate:
    """A folder of tracks for ``load_next``/``load_prev``: its audio files (by suffix), sorted by name, with one
    position per deck (before the first entry until that deck loads from the crate)."""

    def __init__(self, folder: str | Path, num_decks: int) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise AudioFileError(f"{self.folder}: crate folder not found")
        self.positions = [-1] * num_decks
        self.entries: list[Path] = []
        self.rescan()

    def rescan(self) -> list[Path]:
        """Read the folder again (files added during the set appear)."""
        self.entries = sorted(
            (p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES),
            key=lambda p: p.name.lower(),
        )
        return self.entries

    def step(self, deck: int, delta: int) -> Path:
        """The entry ``delta`` places after deck ``deck``'s current one (clamped to the crate); moves there.
        Raises IndexError when the crate is empty."""
        self.rescan()
        if not self.entries:
            raise IndexError(f"the crate {self.folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        k = self.positions[deck - 1] + delta
        k = min(max(k, 0), len(self.entries) - 1)
        self.positions[deck - 1] = k
        return self.entries[k]

    def resolve(self, path: str) -> Path:
        """A path from a load request: as given if it exists, else an entry of the crate by name."""
        p = Path(path).expanduser()
        if not p.is_absolute() and not p.exists() and (self.folder / p).exists():
            return self.folder / p
        return p
