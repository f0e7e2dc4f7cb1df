"""High-quality stems of a file deck's track, computed ahead of its playhead off the audio thread.

``HqTrackStems`` is made per loaded track (``engine.hq.HighQualitySeparator`` is made once per deck and reused). It
holds a preallocated stems buffer float32 (4, num_channels, n) and a ready map of fixed chunks (``chunk_samples``,
default 32768 samples, 0.74 s at 44.1 kHz). One worker thread fills it:

1. from the disk cache (``engine.stem_cache``) when this audio was analysed before by the same models, else
2. with ``HighQualitySeparator`` ranges, in this order: from the position the deck last asked for (``request``:
   0 or the cue point on load, the new position on a seek, cue or loop jump) forward, skipping ready chunks, then
   wrapping round to the start until the whole track is ready; then the cache file is written.

The audio thread asks ``read(pos, dst)`` per block: it fills dst with the stems of [pos, pos + n) and returns True
when they are all ready, else returns False and leaves dst alone; the engine then plays the causal worker's stems.
``StemCrossfade`` switches between the two sample-aligned over one block, either way, keeping the stems' sum equal
to the mix during the fade.

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

Priority: the worker runs at ``nice`` (default 10) under SCHED_BATCH on Linux, below the live separation worker
(an ordinary or SCHED_FIFO process) and out of ``worker.promote_threads``' reach (it promotes SCHED_OTHER threads
only). On macOS and Windows a thread's priority cannot be lowered through ``os`` alone: it runs at normal priority.
Numpy and ONNX Runtime release the GIL for their work; the Python glue between them holds it in short bursts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import numpy as np
from stembridge.engine.hq import PIPELINE_VERSION, HighQualitySeparator, RangeStems, TrackVocalMasks
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


class HqTrackStems:
    """The high-quality stems of one loaded track, computed ahead of the playhead by a worker thread.

    audio: float32 (num_channels, n) at ``separator.sample_rate``, the deck's own array (not copied; it must not
    change while this object lives). separator: a ``HighQualitySeparator`` used by this object alone until ``stop``
    (its causal model carries one stream). start: the first position to analyse (0 or the cue point). cache: a
    ``StemCache``, or None for none. The thread starts at once unless ``autostart`` is False (then ``start()``).
    """

    stems_names = ("vocals", "drums", "bass", "other")

    def __init__(
        self,
        audio: np.ndarray,
        separator: HighQualitySeparator,
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
        if audio.ndim != 2 or audio.shape[0] != separator.num_channels or audio.dtype != np.float32:
            raise ValueError(
                f"audio must be float32 ({separator.num_channels}, frames), got {audio.dtype} {audio.shape}"
            )
        if audio.shape[1] < 1:
            raise ValueError("audio holds no samples")
        if join_samples < 1 or chunk_samples < 4 * join_samples:
            raise ValueError(f"chunk_samples {chunk_samples} must be at least 4 x join_samples {join_samples}")
        self.audio = audio
        self.separator = separator
        self.cache = cache
        self.chunk_samples = int(chunk_samples)
        self.join_samples = int(join_samples)
        self.warmup_samples = warmup_samples
        self.nice = nice
        self.name = name
        self.num_channels, self.num_samples = audio.shape
        self.num_chunks = -(-self.num_samples // self.chunk_samples)
        self.stems = np.zeros((4, self.num_channels, self.num_samples), dtype=np.float32)
        self._ready = bytearray(self.num_chunks)  # 1 once a chunk's stems are written; never back to 0
        self._ramp = join_ramp(self.join_samples)
        self._heads: dict[int, np.ndarray] = {}
        self._tails: dict[int, np.ndarray] = {}
        self._request_pos = min(max(int(start), 0), self.num_samples - 1)
        self._request_count = 1
        self._stopping = False
        self._seen = -1  # the request count the worker last acted on
        self._run: RangeStems | None = None  # the run in hand and the chunk it computes next
        self._next = 0
        self._mix: np.ndarray | None = None
        self._masks: TrackVocalMasks | None = None
        self.source: str | None = None  # "cache" or "analysis" once known
        self.cache_path: str | None = None
        self.error: str | None = None
        self.priority = ""
        self.num_runs = 0
        self.started_at = 0.0
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._work, name=f"stembridge-hq-{name}", daemon=True)
        if autostart:
            self.start()

    # ---------------------------------------------------------------------------------------- control side

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self._thread.start()

    def request(self, position: int) -> None:
        """Analyse from ``position`` (samples) forward next: call on load, seek, cue and loop jumps. Non-blocking,
        from any thread: two attribute writes the worker polls between chunks. Real-time safe."""
        self._request_pos = position
        self._request_count += 1

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the worker (on eject): it finishes the chunk in hand (a fraction of a second) and exits; nothing is
        cached unless the whole track was ready. Not real-time: call from the control thread."""
        self._stopping = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker to finish (everything ready, or stopped, or failed); returns ``complete``. Not
        real-time."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return self.complete

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def progress(self) -> float:
        """Fraction of the track whose stems are ready, 0..1."""
        return self._ready.count(1) / self.num_chunks

    @property
    def complete(self) -> bool:
        return self._ready.count(1) == self.num_chunks

    def status(self) -> dict:
        """A snapshot for the control side (not real-time)."""
        return {
            "progress": self.progress,
            "source": self.source,
            "running": self.running,
            "error": self.error,
            "runs": self.num_runs,
            "seconds": (self.finished_at or time.perf_counter()) - self.started_at if self.started_at else 0.0,
        }

    # ------------------------------------------------------------------------------------------ audio side

    def ready_at(self, pos: int, n: int) -> bool:
        """Whether the stems of samples [pos, pos + n) are ready (False outside the track). Real-time safe."""
        if pos < 0 or n < 1 or pos + n > self.num_samples:
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

    # ------------------------------------------------------------------------------------------ the worker

    def _work(self) -> None:
        try:
            self.priority = lower_thread_priority(self.nice)
            sep = self.separator
            key = version = None
            if self.cache is not None:
                key = audio_hash(self.audio)
                version = model_version(sep.model_files, PIPELINE_VERSION)
                if self._fill_from_cache(key, version):
                    self.source = "cache"
                    return
            self.source = "analysis"
            while self.step():
                pass
            if self.cache is not None and self.complete and not self._stopping:
                self.cache_path = str(self.cache.store(key, version, self.stems, sep.sample_rate))
        except Exception as exc:  # the deck keeps playing the causal stems; say why the HQ ones never came
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("high-quality stems of %s failed; the deck plays the live model's stems", self.name)
        finally:
            self.finished_at = time.perf_counter()

    def _order(self, first: int):
        """Chunk indices from ``first`` forward, wrapping round, that are not ready yet."""
        for i in range(self.num_chunks):
            c = (first + i) % self.num_chunks
            if not self._ready[c]:
                yield c

    def _fill_from_cache(self, key: str, version: str) -> bool:
        cached = self.cache.open(key, version, self.num_channels, self.num_samples)
        if cached is None:
            return False
        self.cache_path = str(cached.path)
        seen = -1
        try:
            while not self._stopping:
                if self._request_count != seen:
                    seen = self._request_count
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
        return min(max(int(self._request_pos), 0), self.num_samples - 1) // self.chunk_samples

    def _bounds(self, c: int) -> tuple[int, int]:
        s = c * self.chunk_samples
        return s, min(self.num_samples, s + self.chunk_samples)

    def step(self) -> bool:
        """Compute one chunk (the worker thread loops on this); returns False once every chunk is ready or the
        object is stopping. With ``autostart=False`` a caller may drive it instead (tests do). Not real-time."""
        if self._stopping:
            return False
        if self._mix is None:
            self._mix, self._masks = self.separator.prepare(self.audio)
        run, c = self._run, self._next
        asked = self._request_count != self._seen
        if asked:
            self._seen = self._request_count
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

    def _start_run(self, mix: np.ndarray, masks: TrackVocalMasks, c: int) -> RangeStems:
        s = c * self.chunk_samples
        need_head = c > 0 and not self._ready[c - 1]
        begin = s - self.join_samples if need_head else s
        run = self.separator.open_range(mix, masks, begin, self.warmup_samples, warmup_tiles=False)
        if need_head:
            self._heads[c] = run.next(s)[:3]
        self.num_runs += 1
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
