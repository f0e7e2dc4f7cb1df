"""High-quality stems of a file deck's track, computed ahead of its playhead off the audio thread.

``HqTrackStems`` is made per loaded track. It holds a preallocated stems buffer float32 (4, num_channels, n) and a
ready map of fixed chunks (``chunk_samples``, default 32768 samples, 0.74 s at 44.1 kHz). Its analyser fills them:

1. from the disk cache (``engine.stem_cache``) when this audio was analysed before by the same models, else
2. with ``HighQualitySeparator`` ranges, in this order: from the position the deck last asked for (``request``:
   0 or the cue point on load, the new position on a seek, cue or loop jump) forward, skipping ready chunks, then
   wrapping round to the start until the whole track is ready; then the cache file is written.

The analyser is an ``HqAnalysisProcess`` (a child process per deck, made once, on shared memory: what a live engine
uses, since the audio callback needs this process's GIL) or a ``HighQualitySeparator`` (a thread of this process:
tests and tools). The audio thread asks ``read(pos, dst)`` per block: it fills dst with the stems of [pos, pos + n)
and returns True when they are all ready, else returns False and leaves dst alone; the engine then plays the
causal worker's stems. ``StemCrossfade`` switches between the two sample-aligned over one block, either way,
keeping the stems' sum equal to the mix during the fade.

**Joins.** Consecutive chunks of one run share the causal model's stream and join exactly. Where a run starts next
to a ready chunk, or ends at one, two runs' estimates of the same audio meet; their causal warm-ups differ, so they
differ slightly (measured -25 dB relative after 3 s of warm-up: docs/hq-stems.md) and would click if butted. So
each join is crossfaded over ``JOIN_SAMPLES`` (1024) with a raised-cosine that sums to one (the sum of stems stays the
mix), always inside the chunk being written, never inside a ready one the audio thread may be reading:

- a run that stops at the end ``e`` of a chunk whose successor is not ready also computes its estimate of
  [e, e + JOIN) (the *tail*); the run that later starts at ``e`` fades from that tail into its own estimate over its
  first JOIN samples;
- a run that starts at ``s`` whose predecessor chunk is not ready also computes its estimate of [s - JOIN, s) (the
  *head*); the run that later reaches ``s`` from the left fades from its own estimate into that head over the last
  JOIN samples before ``s``.

Priority: the analyser (the child process, or the thread) runs at ``nice`` (default 10) under SCHED_BATCH on Linux,
below the live separation worker (an ordinary or SCHED_FIFO process) and out of ``worker.promote_threads``' reach
(it promotes SCHED_OTHER threads only). On macOS and Windows it runs at normal priority (``os`` offers no per-thread
priority there; the process's own could be lowered with psutil, which the project does not depend on).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from stembridge.engine.hq import PIPELINE_VERSION, HighQualitySeparator, RangeStems, TrackMasks
from stembridge.engine.stem_cache import StemCache, audio_hash, model_version

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 32768
JOIN_SAMPLES = 1024
NICE = 10


def lower_thread_priority(nice: int = NICE) -> str:
    """Lower the calling thread below the live worker: Linux SCHED_BATCH at ``nice`` (a thread's own nice value:
    setpriority on its native id). Elsewhere nothing changes. Returns what was done, for the log."""
    if not sys.platform.startswith("linux"):
        return "normal priority (thread priorities are not lowered on this platform)"
    done = []
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # also leaves an inherited SCHED_FIFO
        done.append("SCHED_BATCH")
    except (AttributeError, PermissionError, OSError):
        pass
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        done.append(f"nice {os.getpriority(os.PRIO_PROCESS, tid)}")
    except (AttributeError, PermissionError, OSError):
        pass
    return ", ".join(done) or "normal priority (not permitted)"


def join_ramp(num_samples: int) -> np.ndarray:
    """Raised-cosine fade-in float32 (num_samples,), strictly inside (0, 1); 1 - ramp is its fade-out."""
    return (np.sin(0.5 * np.pi * (np.arange(num_samples) + 0.5) / num_samples) ** 2).astype(np.float32)


# the control words shared by a track's front (audio and control threads) and its analyser (thread or process)
POS, COUNT, STOP, DONE, RUNS, SOURCE = range(6)
SOURCES = (None, "cache", "analysis")


class HqTrackStems:
    """The high-quality stems of one loaded track, computed ahead of the playhead off the audio thread.

    audio: float32 (num_channels, n) at the models' sample rate. analyser: where the work runs, either
    - an ``HqAnalysisProcess`` (one per deck, made once; what a live engine should use): the analysis runs in that
      child process and shares the stems with this one through shared memory, so it never holds this process's
      GIL (a thread doing it here made an audio-callback stand-in late by up to 9 ms p99:
      benchmarks/results/hq_stems/); the audio is copied into shared memory once; or
    - a ``HighQualitySeparator`` (one per deck): a thread of this process (tests, tools).
    Either serves one track at a time: a new ``HqTrackStems`` on the same process stops the previous one's job.
    start: the first position to analyse (0 or the cue point). cache: a ``StemCache`` or None. The work starts at
    once unless ``autostart`` is False (then ``start()``, or ``step()`` to drive a thread analyser by hand).
    """

    stem_names = ("vocals", "drums", "bass", "other")

    def __init__(
        self,
        audio: np.ndarray,
        analyser: HighQualitySeparator | HqAnalysisProcess,
        *,
        start: int = 0,
        cache: StemCache | None = None,
        chunk_samples: int = CHUNK_SAMPLES,
        join_samples: int = JOIN_SAMPLES,
        warmup_samples: int | None = None,
        nice: int = NICE,
        name: str = "deck",
        autostart: bool = True,
    ) -> None:
        num_channels = analyser.num_channels
        if audio.ndim != 2 or audio.shape[0] != num_channels or audio.dtype != np.float32:
            raise ValueError(f"audio must be float32 ({num_channels}, frames), got {audio.dtype} {audio.shape}")
        if audio.shape[1] < 1:
            raise ValueError("audio holds no samples")
        if join_samples < 1 or chunk_samples < 4 * join_samples:
            raise ValueError(f"chunk_samples {chunk_samples} must be at least 4 x join_samples {join_samples}")
        self.name = name
        self.cache = cache
        self.chunk_samples = int(chunk_samples)
        self.join_samples = int(join_samples)
        self.num_channels, self.num_samples = audio.shape
        self.num_chunks = -(-self.num_samples // self.chunk_samples)
        self.process = analyser if isinstance(analyser, HqAnalysisProcess) else None
        self._shm: list = []
        if self.process is None:
            self.audio = audio
            self.stems = np.zeros((4, self.num_channels, self.num_samples), dtype=np.float32)
            self._ready_buf = bytearray(self.num_chunks)
            self.control = np.zeros(8, dtype=np.int64)
        else:
            _check_shared_memory_room((5 * self.num_channels * self.num_samples) * 4 + self.num_chunks)
            self.audio = self._shared(audio.shape, np.float32)
            self.audio[:] = audio
            self.stems = self._shared((4, self.num_channels, self.num_samples), np.float32)
            self._ready_buf = self._shared((self.num_chunks,), np.uint8)
            self.control = self._shared((8,), np.int64)
        self._ready = memoryview(self._ready_buf).cast("B")  # 1 once a chunk is written, never back to 0
        self.control[POS] = min(max(int(start), 0), self.num_samples - 1)
        self.control[COUNT] = 1
        self._spec = {"chunk_samples": self.chunk_samples, "join_samples": self.join_samples}
        self._spec |= {"warmup_samples": warmup_samples, "nice": nice, "name": name}
        self.result: dict = {}
        self.started_at = 0.0
        self.finished_at: float | None = None
        self._finished = threading.Event()
        self._closing = False
        self._release_lock = threading.Lock()
        self._final_ready: bytes | None = None
        self._analyser: _Analyser | None = None
        self._thread: threading.Thread | None = None
        if self.process is None:
            self._analyser = _Analyser(
                self.audio, analyser, self.stems, self._ready, self.control, cache=cache, **self._spec
            )
            self._thread = threading.Thread(target=self._thread_work, name=f"stembridge-hq-{name}", daemon=True)
        if autostart:
            self.start()

    def _shared(self, shape: tuple, dtype) -> np.ndarray:
        from multiprocessing import shared_memory

        size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        shm = shared_memory.SharedMemory(create=True, size=size)
        self._shm.append(shm)
        array = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
        array.fill(0)
        return array

    # ---------------------------------------------------------------------------------------- control side

    def start(self) -> None:
        """Start the work (once). Not real-time."""
        self.started_at = time.perf_counter()
        if self.process is None:
            self._thread.start()
        else:
            cache = self.cache
            spec = None if cache is None else (str(cache.directory), cache.max_bytes, cache.subtype)
            self.process.submit(self, [shm.name for shm in self._shm], spec)

    def _thread_work(self) -> None:
        self._finish(self._analyser.work())

    def _finish(self, result: dict) -> None:
        """The analyser is done (called on its thread, or by the process's listener). Not real-time."""
        self.result = result
        self.finished_at = time.perf_counter()
        self._finished.set()
        if self._closing:
            self._release()

    def step(self) -> bool:
        """Compute one chunk by hand (``autostart=False``, thread analysers only): False once nothing is left."""
        if self._analyser is None:
            raise RuntimeError("step() drives an analyser in this process; this one runs in a child process")
        return self._analyser.step()

    def request(self, position: int) -> None:
        """Analyse from ``position`` (samples) forward next: call on load, seek, cue and loop jumps. Non-blocking,
        from any thread: two integer writes the analyser polls between chunks. Real-time safe."""
        control = self.control
        control[POS] = position
        control[COUNT] += 1

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the work (on eject): the chunk in hand is finished (a fraction of a second), nothing is cached
        unless the whole track was ready. Not real-time: call from the control thread."""
        if self.control is not None:
            self.control[STOP] = 1
        if self.started_at:
            self._finished.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work to end (all ready, stopped or failed); returns ``complete``. Not real-time."""
        if self.started_at:
            self._finished.wait(timeout)
        return self.complete

    def close(self) -> None:
        """Stop the work (on eject) and free the shared memory as soon as the analyser lets go of it: at once, or
        when its chunk in hand and a cache write under way are done. Does not wait. The audio thread must no
        longer call ``read``. Not real-time."""
        if self.control is not None:
            self.control[STOP] = 1
        self._closing = True
        if not self.running:
            self._release()

    def _release(self) -> None:
        with self._release_lock:
            shms, self._shm = self._shm, []
            if not shms:
                return
            self._final_ready = bytes(self._ready)
            self._ready.release()
            self.stems = self.audio = self.control = self._ready_buf = None
            for shm in shms:
                try:
                    shm.close()
                except BufferError:  # a caller still holds a view: the memory goes with it
                    pass
                shm.unlink()

    def _ready_bytes(self) -> bytes:
        final = self._final_ready
        return final if final is not None else bytes(self._ready)

    @property
    def running(self) -> bool:
        return bool(self.started_at) and not self._finished.is_set()

    @property
    def progress(self) -> float:
        """Fraction of the track whose stems are ready, 0..1."""
        return self._ready_bytes().count(1) / self.num_chunks

    @property
    def complete(self) -> bool:
        return self._ready_bytes().count(1) == self.num_chunks

    @property
    def source(self) -> str | None:
        """``"cache"`` or ``"analysis"`` once known."""
        control = self.control
        return SOURCES[int(control[SOURCE])] if control is not None else self.result.get("source")

    @property
    def num_runs(self) -> int:
        """How many runs the analysis started (1 for one pass; 0 when the cache had it all)."""
        control = self.control
        return int(control[RUNS]) if control is not None else self.result.get("runs", 0)

    @property
    def error(self) -> str | None:
        return self.result.get("error")

    @property
    def cache_path(self) -> str | None:
        return self.result.get("cache_path")

    def status(self) -> dict:
        """A snapshot for the control side (not real-time)."""
        end = self.finished_at or time.perf_counter()
        return {
            "progress": self.progress,
            "source": self.source,
            "running": self.running,
            "error": self.error,
            "runs": self.num_runs,
            "seconds": end - self.started_at if self.started_at else 0.0,
        }

    # ------------------------------------------------------------------------------------------ audio side

    def ready_at(self, pos: int, n: int) -> bool:
        """Whether the stems of samples [pos, pos + n) are ready (False outside the track). Real-time safe."""
        if pos < 0 or n < 1 or pos + n > self.num_samples or self.stems is None:
            return False
        ready, size = self._ready, self.chunk_samples
        c, last = pos // size, (pos + n - 1) // size
        while c <= last:
            if not ready[c]:
                return False
            c += 1
        return True

    def read(self, pos: int, dst: np.ndarray) -> bool:
        """dst: float32 (4, num_channels, n) <- the stems of samples [pos, pos + n) when all are ready; returns
        whether it did (dst is left alone otherwise). Ready stems never change afterwards. Real-time safe."""
        n = dst.shape[-1]
        if not self.ready_at(pos, n):
            return False
        np.copyto(dst, self.stems[:, :, pos : pos + n])
        return True


def _check_shared_memory_room(num_bytes: int) -> None:
    """Raise MemoryError naming /dev/shm when it cannot hold ``num_bytes`` more (a full tmpfs kills the process
    with SIGBUS on first touch, not with an error: containers often give it 64 MB)."""
    if not os.path.isdir("/dev/shm"):
        return
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    if free < num_bytes:
        raise MemoryError(
            f"/dev/shm has {free / 1e6:.0f} MB free, the HQ stems of this track need {num_bytes / 1e6:.0f} MB: "
            "enlarge it (docker run --shm-size=2g) or analyse in a thread (pass a HighQualitySeparator)"
        )


class _Analyser:
    """The work on one track: fills ``stems`` (4, C, n) and the ``ready`` map, polling ``control`` between chunks.
    Runs on a thread of the front's process or in an ``HqAnalysisProcess`` on shared memory."""

    def __init__(
        self,
        audio: np.ndarray,
        separator: HighQualitySeparator,
        stems: np.ndarray,
        ready,
        control: np.ndarray,
        *,
        cache: StemCache | None,
        chunk_samples: int,
        join_samples: int,
        warmup_samples: int | None,
        nice: int,
        name: str,
        interrupt=None,
    ) -> None:
        self.audio, self.separator, self.stems, self._ready, self.control = audio, separator, stems, ready, control
        self.interrupt = interrupt  # callable: True when the cache write should yield (a new track is waiting)
        self.cache = cache
        self.chunk_samples, self.join_samples, self.warmup_samples = chunk_samples, join_samples, warmup_samples
        self.nice, self.name = nice, name
        self.num_channels, self.num_samples = audio.shape
        self.num_chunks = len(ready)
        self._ramp = join_ramp(join_samples)
        self._heads: dict[int, np.ndarray] = {}
        self._tails: dict[int, np.ndarray] = {}
        self._seen = -1  # the request count last acted on
        self._run: RangeStems | None = None  # the run in hand and the chunk it computes next
        self._next = 0
        self._mix: np.ndarray | None = None
        self._masks: TrackMasks | None = None

    @property
    def _stopping(self) -> bool:
        return bool(self.control[STOP])

    @property
    def complete(self) -> bool:
        return bytes(self._ready).count(1) == self.num_chunks

    def work(self, lower_priority: bool = True) -> dict:
        """All of it: the cache, else the analysis, then the cache write. Returns what the front reports."""
        result: dict = {"error": None, "cache_path": None, "priority": ""}
        try:
            if lower_priority:
                result["priority"] = lower_thread_priority(self.nice)
            sep = self.separator
            key = version = None
            if self.cache is not None:
                key = audio_hash(self.audio)
                version = model_version(sep.model_files, PIPELINE_VERSION)
                if self._fill_from_cache(key, version, result):
                    self.control[SOURCE] = SOURCES.index("cache")
                    return result
            self.control[SOURCE] = SOURCES.index("analysis")
            while self.step():
                pass
            if self.cache is not None and self.complete and not self._stopping:
                path = self.cache.store(key, version, self.stems, sep.sample_rate, should_stop=self.interrupt)
                if path is None:
                    log.info("the cache write of %s gave way to the next track", self.name)
                result["cache_path"] = str(path) if path is not None else None
        except Exception as exc:  # the deck keeps playing the causal stems; say why the HQ ones never came
            result["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("high-quality stems of %s failed; the deck plays the live model's stems", self.name)
        finally:
            self.control[DONE] = 1
            result["source"] = SOURCES[int(self.control[SOURCE])]
            result["runs"] = int(self.control[RUNS])
        return result

    def _order(self, first: int):
        """Chunk indices from ``first`` forward, wrapping round, that are not ready yet."""
        for i in range(self.num_chunks):
            c = (first + i) % self.num_chunks
            if not self._ready[c]:
                yield c

    def _fill_from_cache(self, key: str, version: str, result: dict) -> bool:
        cached = self.cache.open(key, version, self.num_channels, self.num_samples)
        if cached is None:
            return False
        result["cache_path"] = str(cached.path)
        seen = -1
        try:
            while not self._stopping:
                if self.control[COUNT] != seen:
                    seen = int(self.control[COUNT])
                    order = self._order(self._requested_chunk())
                c = next(order, None)
                if c is None:
                    return True
                s, e = self._bounds(c)
                cached.read(s, e, self.stems[:3, :, s:e])
                np.subtract(self.audio[:, s:e], self.stems[:3, :, s:e].sum(axis=0), out=self.stems[3, :, s:e])
                self._ready[c] = 1
            return False
        except Exception as exc:  # a file that breaks half way: compute what is left
            log.warning("stem cache file %s broke while reading (%s); analysing the rest", cached.path, exc)
            return False
        finally:
            cached.close()

    def _requested_chunk(self) -> int:
        return min(max(int(self.control[POS]), 0), self.num_samples - 1) // self.chunk_samples

    def _bounds(self, c: int) -> tuple[int, int]:
        s = c * self.chunk_samples
        return s, min(self.num_samples, s + self.chunk_samples)

    def step(self) -> bool:
        """Compute one chunk; returns False once every chunk is ready or the work is stopping. Not real-time."""
        if self._stopping:
            return False
        if self._mix is None:
            self._mix, self._masks = self.separator.prepare(self.audio)
        run, c = self._run, self._next
        count = int(self.control[COUNT])
        asked = count != self._seen
        if asked:
            self._seen = count
        if run is None or asked or c >= self.num_chunks or self._ready[c]:
            first = self._requested_chunk() if asked else c % self.num_chunks
            nxt = next(self._order(first), None)
            if run is None or nxt != c:  # (asked for where the run goes next anyway: it goes on)
                if run is not None:
                    self._end_run(run, c)
                    self._run = None
                if nxt is None:
                    return False
                c = nxt
                run = self._run = self._start_run(self._mix, self._masks, c)
        self._compute(run, c, self._mix)
        self._next = c + 1
        return True

    def _start_run(self, mix: np.ndarray, masks: TrackMasks, c: int) -> RangeStems:
        s = c * self.chunk_samples
        need_head = c > 0 and not self._ready[c - 1]
        begin = s - self.join_samples if need_head else s
        run = self.separator.open_range(mix, masks, begin, self.warmup_samples, warmup_tiles=False)
        if need_head:
            self._heads[c] = run.next(s)[:3]
        self.control[RUNS] += 1
        return run

    def _end_run(self, run: RangeStems, c: int) -> None:
        """The run stopped before chunk ``c`` (its last chunk was c - 1): leave its tail for whoever starts at c."""
        if c < self.num_chunks and not self._ready[c]:
            s = c * self.chunk_samples
            self._tails[c] = run.next(min(self.num_samples, s + self.join_samples))[:3]

    def _compute(self, run: RangeStems, c: int, mix: np.ndarray) -> None:
        s, e = self._bounds(c)
        out = run.next(e)
        ramp = self._ramp
        tail = self._tails.pop(c, None) if c > 0 and self._ready[c - 1] else None
        if tail is not None:  # only a run that started at c, next to a ready chunk, finds a tail here
            k = min(tail.shape[-1], e - s)
            out[:3, :, :k] = tail[..., :k] + (out[:3, :, :k] - tail[..., :k]) * ramp[:k]
        if c + 1 < self.num_chunks and self._ready[c + 1]:
            head = self._heads.pop(c + 1, None)
            if head is not None:
                k = head.shape[-1]
                out[:3, :, -k:] = out[:3, :, -k:] + (head - out[:3, :, -k:]) * ramp
        out[3] = mix[:, s:e] - out[0] - out[1] - out[2]
        self.stems[:, :, s:e] = out
        self._ready[c] = 1


class HqAnalysisProcess:
    """A child process that analyses one deck's tracks, one at a time, on shared memory (see ``HqTrackStems``).

    Made once per deck (off the audio thread; the child imports and loads the models in a second or two, while the
    deck already plays the causal stems). The child runs at ``nice`` under SCHED_BATCH on Linux (the whole process),
    below the live worker. ``close()`` ends it. Not real-time.
    """

    def __init__(
        self,
        lookahead_path: str | Path | None = None,
        causal_path: str | Path | None = None,
        *,
        device: str = "auto",
        threads: int = 1,
        nice: int = NICE,
    ) -> None:
        import multiprocessing

        from stembridge.engine.hq import DEFAULT_HQ_MODEL
        from stembridge.engine.lookahead import load_lookahead_card

        card = load_lookahead_card(lookahead_path if lookahead_path is not None else DEFAULT_HQ_MODEL)
        self.sample_rate = card.sample_rate
        self.num_channels = card.num_channels
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs audio threads
        self._conn, child = ctx.Pipe()
        args = (child, lookahead_path, causal_path, device, threads, nice)
        self._proc = ctx.Process(target=_child_main, args=args, name="stembridge-hq", daemon=True)
        self._proc.start()
        child.close()
        self._jobs: dict[int, HqTrackStems] = {}
        self._next_id = 0
        self._current: HqTrackStems | None = None
        self._lock = threading.Lock()
        self.error: str | None = None
        self._listener = threading.Thread(target=self._listen, name="stembridge-hq-listen", daemon=True)
        self._listener.start()

    def submit(self, front: HqTrackStems, shm_names: list[str], cache: tuple | None) -> None:
        """Queue a track's job (``HqTrackStems.start`` does this); the previous track's job is stopped first."""
        with self._lock:
            previous, self._current = self._current, front
            job = self._next_id
            self._next_id += 1
            self._jobs[job] = front
        if previous is not None and previous.control is not None:
            previous.control[STOP] = 1
        shape = (front.num_channels, front.num_samples)
        try:
            self._conn.send((job, shm_names, shape, front.num_chunks, cache, front._spec))
        except (OSError, ValueError) as exc:  # the child is gone: this deck plays the causal stems
            with self._lock:
                self._jobs.pop(job, None)
            log.error("the HQ stems process is not running (%s); %s plays the live model's stems", exc, front.name)
            front._finish({"error": f"the HQ stems process is not running ({exc})", "cache_path": None})

    def _listen(self) -> None:
        while True:
            try:
                job, result = self._conn.recv()
            except (EOFError, OSError):
                break
            if job == -1:  # the child could not start
                self.error = result.get("error")
                log.error("the HQ stems process could not start: %s", self.error)
                continue
            with self._lock:
                front = self._jobs.pop(job, None)
            if front is not None:
                front._finish(result)
        with self._lock:  # the child is gone: no job will finish by itself
            fronts, self._jobs = list(self._jobs.values()), {}
        for front in fronts:
            front._finish({"error": self.error or "the HQ stems process ended", "cache_path": None})

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the current job and end the child."""
        with self._lock:
            current = self._current
        if current is not None and current.control is not None:
            current.control[STOP] = 1
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout)
        self._listener.join(timeout)
        self._conn.close()


def _attach(name: str):
    """Open the parent's shared memory. (A spawned child shares its parent's resource tracker, so the segment stays
    registered once, to the parent, which unlinks it in ``HqTrackStems.close``.)"""
    from multiprocessing import shared_memory

    return shared_memory.SharedMemory(name=name)


def _child_main(conn, lookahead_path, causal_path, device: str, threads: int, nice: int) -> None:
    """The HQ stems process: builds the separator, then runs jobs as they come until told to end."""
    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, PermissionError, OSError):
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
        except (AttributeError, PermissionError, OSError):
            pass
    try:
        separator = HighQualitySeparator(lookahead_path, causal_path, device=device, threads=threads)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, whose decks keep the causal stems
        conn.send((-1, {"error": f"{type(exc).__name__}: {exc}"}))
        separator = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job, names, shape, num_chunks, cache_spec, spec = message
        shms = [_attach(name) for name in names]
        try:
            audio = np.ndarray(shape, dtype=np.float32, buffer=shms[0].buf)
            stems = np.ndarray((4, *shape), dtype=np.float32, buffer=shms[1].buf)
            ready = np.ndarray((num_chunks,), dtype=np.uint8, buffer=shms[2].buf)
            control = np.ndarray((8,), dtype=np.int64, buffer=shms[3].buf)
            if separator is None:
                result = {"error": "the HQ stems process has no separator", "cache_path": None}
                control[DONE] = 1
            else:
                cache = None
                if cache_spec is not None:
                    cache = StemCache(cache_spec[0], max_bytes=cache_spec[1], subtype=cache_spec[2])
                analyser = _Analyser(audio, separator, stems, ready, control, cache=cache, interrupt=conn.poll, **spec)
                result = analyser.work(lower_priority=False)
                del analyser
            del audio, stems, ready, control
        finally:
            for shm in shms:
                try:
                    shm.close()
                except BufferError:
                    pass
        conn.send((job, result))


class StemCrossfade:
    """Chooses, block by block, between a file deck's causal stems and its high-quality stems, with a sample-aligned
    crossfade over one block whenever it switches, either way.

    Both inputs are the stems of the same samples (the engine's causal stems are latency-aligned with the playhead)
    and each sums to the mix, so every faded sample ``causal + (hq - causal) * ramp`` sums to the mix as well. To fade
    out in time, ``process`` is told whether the next block's HQ stems are ready too (``ready_at``): the fade back to
    the causal stems then happens in this block, while the HQ stems are still there.
    """

    def __init__(self, block_size: int, num_channels: int = 2, num_stems: int = 4) -> None:
        self.block_size = block_size
        self._up = (np.arange(1, block_size + 1, dtype=np.float64) / block_size).astype(np.float32)
        self._down = (1.0 - self._up).astype(np.float32)
        self._diff = np.zeros((num_stems, num_channels, block_size), dtype=np.float32)
        self.on_hq = False

    def process(self, causal: np.ndarray, hq: np.ndarray, hq_ready: bool, hq_ready_next: bool, dst: np.ndarray) -> None:
        """causal, hq, dst: float32 (num_stems, num_channels, block_size); dst may be ``causal`` itself.
        hq_ready: ``hq`` holds this block's HQ stems (``HqTrackStems.read`` returned True); hq_ready_next: the next
        block's are ready as well. Real-time safe."""
        if not hq_ready:
            # HQ stems are gone without warning only after a jump (the deck crossfades the jump itself)
            if dst is not causal:
                np.copyto(dst, causal)
            self.on_hq = False
        elif self.on_hq and hq_ready_next:
            np.copyto(dst, hq)
        elif self.on_hq or hq_ready_next:
            ramp = self._down if self.on_hq else self._up  # how much HQ at each sample of this block
            np.subtract(hq, causal, out=self._diff)
            np.multiply(self._diff, ramp, out=self._diff)
            np.add(causal, self._diff, out=dst)
            self.on_hq = not self.on_hq
        elif dst is not causal:
            np.copyto(dst, causal)

    def reset(self) -> None:
        """Back to the causal stems without a fade (a new track). Real-time safe."""
        self.on_hq = False


class HqPlayback:
    """A file deck's side of it on the audio thread: its current ``HqTrackStems`` (or None), one block buffer and
    the ``StemCrossfade``. ``process`` is the plain per-block wiring; the live engine's (``LiveEngine._apply_hq``)
    adds what it knows of the deck: the track the stems belong to, a jump's crossfade, stretching. Real-time safe
    apart from the constructor."""

    def __init__(self, block_size: int, num_channels: int = 2) -> None:
        self.block_size = block_size
        self.track: HqTrackStems | None = None
        self.crossfade = StemCrossfade(block_size, num_channels)
        self.block = np.zeros((4, num_channels, block_size), dtype=np.float32)

    def set_track(self, track: HqTrackStems | None) -> None:
        """Swap in a loaded track's HQ stems (or None on eject), by reference; starts on the causal stems. The old
        one is the control thread's to ``close()`` once this has run. Real-time safe."""
        self.track = track
        self.crossfade.reset()

    def process(self, pos: int, next_pos: int, stems: np.ndarray) -> bool:
        """stems: float32 (4, num_channels, block_size), the causal stems of the samples the deck plays this block
        from ``pos`` (its playhead at the block's start), replaced in place by the HQ ones, or a crossfade, where
        they are ready. next_pos: where the next block starts (``pos + block_size``, or the loop start after a
        splice). A block that crosses a loop splice plays causal. Returns whether HQ stems were heard. Real-time
        safe."""
        track = self.track
        if track is None:
            return False
        ready = track.read(pos, self.block)
        ready_next = ready and track.ready_at(next_pos, self.block_size)
        self.crossfade.process(stems, self.block, ready, ready_next, stems)
        return ready
