"""The separation worker: runs the model off the audio thread, behind FIFOs of fixed, reported latency.

The audio thread and the worker share two rings of ``num_slots`` host blocks (all decks in one slot, so one batched
model call serves every deck):

    audio thread, block t:  writes every deck's input into ``input_slot(t)``, ``commit()``s it (a semaphore post
                            wakes the worker), and later reads ``output_slot(t - fifo_periods)`` if
                            ``ready(t - fifo_periods)``.
    worker:                 takes every committed block it has not seen (several at once when it is behind: one
                            model call then covers them all, which is how it catches up), separates them, writes the
                            stems into the output ring, and publishes them by advancing ``done``.

Block k's stems are the model's output for the input up to block k, delayed inside the model by
``separator.latency_samples`` plus ``hop_size - gcd(block_size, hop_size)`` (the hop FIFO below; zero when the host
period is a multiple of the hop). The audio thread plays them ``fifo_periods`` blocks later, so the latency from a
live input to the busses is fixed at ``latency_samples = model latency + hop extra + fifo_periods * block_size``.

Nothing here blocks the audio thread: the rings and counters are preallocated arrays, each counter is written by
one side only, and each output slot carries the block number it holds and whether its stems are clean, so a reader
can never mistake a stale or skipped block for the one it wants.

Thread or process. ``mode="process"`` (what ``stembridge live`` uses) keeps the rings in shared memory (an
anonymous memfd both processes map) and runs the model in a child process (a fresh ``python`` running
``_child_main``): Python's GIL is then never held by inference code when the audio callback needs it. A worker
*thread* running numpy/ONNX glue makes the callback wait for the GIL, which on a loaded 2-core machine turns into
xruns (measured on JACK dummy, 10 s, 1 deck: callback p99 1.46 ms and 5 xruns with a thread, 0.49 ms and 0 xruns
with a process). ``mode="thread"`` runs the same loop on a thread; tests drive it synchronously with ``step()``.

Why not ``engine.stream.BlockAdapter``: it answers one host block per call. The worker instead separates every
pending block in one call when it has fallen behind (many hops per ONNX call cost far less than one hop each), so its
hop FIFO keeps the adapter's latency arithmetic but accepts a variable number of whole host blocks.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
_CHILD_CODE = (
    "import json, sys; from stembridge.engine.live.worker import _child_main; "
    "sys.exit(_child_main(json.loads(sys.argv[1])))"
)

HIST_BINS = 5000  # duration histograms: 10 us bins up to 50 ms, the last bin holds everything beyond
HIST_BIN_NS = 10_000

# counters (int64), each written by one side only
WRITTEN, DONE, NEXT, CLEAN_FROM, SKIPPED, CALLS, CALL_MAX_NS, CPU_NS, STOP, STARTED, FAILED = range(11)
NUM_COUNTERS = 16


class HopFifo:
    """Feeds whole host blocks to a separator in whole hops, with the BlockAdapter's fixed extra latency.

    Output stems are delayed by ``separator.latency_samples + extra_latency`` relative to the input;
    ``extra_latency = hop_size - gcd(block_size, hop_size)``.
    """

    def __init__(self, separator, block_size: int, max_blocks: int) -> None:
        self.separator = separator
        self.block_size = block_size
        hop = separator.hop_size
        self.extra_latency = hop - math.gcd(block_size, hop)
        streams, channels, stems = separator.num_streams, separator.num_channels, separator.num_stems
        capacity = max_blocks * block_size + 2 * hop
        self._in = np.zeros((streams, channels, capacity), dtype=np.float32)
        self._out = np.zeros((streams, stems, channels, capacity + hop), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self.separator.reset()
        self._in_len = 0
        self._out[:] = 0.0
        self._out_len = self.extra_latency

    def process(self, audio: np.ndarray, out: np.ndarray) -> None:
        """audio: float32 (num_streams, num_channels, m * block_size) -> writes the stems for those samples into
        out: float32 (num_streams, num_stems, num_channels, m * block_size)."""
        n = audio.shape[-1]
        hop = self.separator.hop_size
        self._in[..., self._in_len : self._in_len + n] = audio
        self._in_len += n
        used = (self._in_len // hop) * hop
        if used:
            stems = self.separator.process(self._in[..., :used])
            self._out[..., self._out_len : self._out_len + used] = stems
            self._out_len += used
            left = self._in_len - used
            self._in[..., :left] = self._in[..., used : self._in_len]
            self._in_len = left
        if self._out_len < n:  # impossible with the priming; a guard against misuse
            raise RuntimeError("hop FIFO ran dry")
        out[:] = self._out[..., :n]
        left = self._out_len - n
        self._out[..., :left] = self._out[..., n : self._out_len]
        self._out_len = left


def _layout(num_slots: int, decks: int, channels: int, stems: int, block_size: int) -> list[tuple[str, tuple, str]]:
    return [
        ("in_ring", (num_slots, decks, channels, block_size), "float32"),
        ("out_ring", (num_slots, decks, stems, channels, block_size), "float32"),
        ("slot_block", (num_slots,), "int64"),
        ("slot_clean", (num_slots,), "bool"),
        ("counters", (NUM_COUNTERS,), "int64"),
        ("call_hist", (HIST_BINS + 1,), "int64"),
        ("call_ns", (4096,), "int64"),
    ]


def _views(buffer, layout: list) -> dict[str, np.ndarray]:
    views, offset = {}, 0
    for name, shape, dtype in layout:
        dt = np.dtype(dtype)
        offset = -(-offset // 64) * 64  # cache-line aligned
        count = int(np.prod(shape))
        views[name] = np.ndarray(shape, dtype=dt, buffer=buffer, offset=offset)
        offset += count * dt.itemsize
    return views


def _layout_size(layout: list) -> int:
    offset = 0
    for _name, shape, dtype in layout:
        offset = -(-offset // 64) * 64 + int(np.prod(shape)) * np.dtype(dtype).itemsize
    return offset + 64


class _Core:
    """The worker's side of the protocol: takes committed blocks, separates, publishes. Thread or child process."""

    def __init__(self, views: dict, separator, block_size: int, settle_blocks: int) -> None:
        self.v = views
        self.c = views["counters"]
        self.block_size = block_size
        self.num_slots = views["in_ring"].shape[0]
        self.max_backlog = self.num_slots // 2
        self.settle_blocks = settle_blocks
        self.hops = HopFifo(separator, block_size, self.max_backlog + 1)
        decks, channels = views["in_ring"].shape[1:3]
        stems = views["out_ring"].shape[2]
        frames = (self.max_backlog + 1) * block_size
        self._chunk_in = np.zeros((decks, channels, frames), np.float32)
        self._chunk_out = np.zeros((decks, stems, channels, frames), np.float32)

    def step(self) -> int:
        """Separate every committed block not yet taken (up to ``max_backlog``); returns how many."""
        c, n, slots = self.c, self.block_size, self.num_slots
        written = int(c[WRITTEN])
        first = int(c[NEXT])
        if written - first > self.max_backlog:  # too far behind: drop the oldest, stems restart after a settle
            skip_to = written - 1
            c[SKIPPED] += skip_to - first
            first = skip_to
            c[CLEAN_FROM] = first + self.settle_blocks
        count = written - first
        if count <= 0:
            return 0
        chunk = self._chunk_in[..., : count * n]
        in_ring = self.v["in_ring"]
        for i in range(count):
            chunk[..., i * n : (i + 1) * n] = in_ring[(first + i) % slots]
        if int(c[WRITTEN]) - first > slots - 1:  # the audio thread lapped us while we copied: torn input
            now = int(c[WRITTEN])
            c[SKIPPED] += now - first
            c[NEXT] = now
            c[CLEAN_FROM] = now + self.settle_blocks
            return 0
        t0 = time.perf_counter_ns()
        cpu0 = time.thread_time_ns()
        out = self._chunk_out[..., : count * n]
        self.hops.process(chunk, out)
        out_ring, slot_block, slot_clean = self.v["out_ring"], self.v["slot_block"], self.v["slot_clean"]
        clean_from = int(c[CLEAN_FROM])
        for i in range(count):
            block = first + i
            slot = block % slots
            slot_block[slot] = -1  # invalidate while rewriting (the reader checks the block number)
            out_ring[slot] = out[..., i * n : (i + 1) * n]
            slot_clean[slot] = block >= clean_from
            slot_block[slot] = block
        c[DONE] = first + count
        c[NEXT] = first + count
        dt = time.perf_counter_ns() - t0
        calls = int(c[CALLS])
        self.v["call_ns"][calls % 4096] = dt
        self.v["call_hist"][min(dt // HIST_BIN_NS, HIST_BINS)] += 1
        if dt > c[CALL_MAX_NS]:
            c[CALL_MAX_NS] = dt
        c[CPU_NS] += time.thread_time_ns() - cpu0
        c[CALLS] = calls + 1
        return count

    def recover(self) -> None:
        """After an exception: start over from the newest block; the dry mix covers the gap."""
        self.hops.reset()
        now = int(self.c[WRITTEN])
        self.c[NEXT] = now
        self.c[CLEAN_FROM] = now + self.settle_blocks

    def loop(self, wait, parent_alive=None) -> None:
        """Run until the STOP counter is set: ``wait()`` blocks until woken (or a timeout)."""
        c = self.c
        while not c[STOP]:
            wait()
            if parent_alive is not None and not parent_alive():
                return
            try:
                while int(c[NEXT]) < int(c[WRITTEN]) and not c[STOP]:
                    self.step()
            except Exception:  # never let the worker die silently: the audio thread would stay dry for good
                log.exception("separation worker failed; the engine plays the dry mix until it recovers")
                c[FAILED] += 1
                time.sleep(0.1)
                self.recover()


def _child_main(config: dict) -> int:
    """Entry point of the worker process (``python -c _CHILD_CODE CONFIG_JSON``, started by
    ``SeparationWorker.start``): maps the shared rings from an inherited file descriptor, loads the model, and
    separates whatever the audio thread commits until told to stop or its parent goes away."""
    import mmap
    import select

    from stembridge.engine.rt import freeze_heap
    from stembridge.engine.separator import StreamingSeparator

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s worker: %(message)s")
    layout = [(name, tuple(shape), dtype) for name, shape, dtype in config["layout"]]
    mem = mmap.mmap(config["mem_fd"], _layout_size(layout))
    views = _views(mem, layout)
    c = views["counters"]
    wake_fd, ppid = config["wake_fd"], config["ppid"]
    try:
        separator = StreamingSeparator(
            config["model"], device=config["device"], num_streams=config["num_streams"],
            intra_op_threads=config["threads"], max_hops=config["max_hops"], spatial_filter=config["spatial_filter"],
        )  # fmt: skip
        if config.get("host_rate"):
            from stembridge.engine.live.resample import ResampledSeparator

            separator = ResampledSeparator(
                separator, config["host_rate"], config["block_size"], quality=config["resample_quality"]
            )
        core = _Core(views, separator, config["block_size"], config["settle_blocks"])
        _warm_up(separator)
        core.hops.reset()
    except Exception:
        log.exception("the separation worker process could not start")
        c[FAILED] += 1
        c[STARTED] = -1
        return 1
    if config.get("rt_priority"):
        set_realtime_priority(config["rt_priority"])
    freeze_heap()
    c[STARTED] = 1

    def wait() -> None:
        ready, _, _ = select.select([wake_fd], [], [], 0.5)
        if ready:
            os.read(wake_fd, 65536)

    core.loop(wait, lambda: os.getppid() == ppid)
    return 0


def set_realtime_priority(priority: int) -> bool:
    """Put the calling thread in SCHED_FIFO at ``priority`` (below JACK's audio threads, above ordinary processes)
    when the system allows it (root, or an rtprio limit as JACK's audio group has); otherwise leave it as it is."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        c = True
    except (AttributeError, PermissionError, OSError):
        c = False
    log.debug("worker real-time priority %d: %s", priority, "set" if c else "not permitted")
    return c


def promote_threads(priority: int) -> list[int]:
    """Move every ordinary (SCHED_OTHER) thread of this process to SCHED_FIFO at ``priority``; returns their ids
    (give them to ``demote_threads`` to undo it).

    Why: the audio callback needs Python's GIL. If the thread holding it is an ordinary thread that the kernel
    preempts for other load, the real-time callback waits as long as that thread waits for a CPU (priority
    inversion through the GIL). Threads that only hold the GIL briefly (control, OSC, MIDI, monitor) lose nothing
    by running at a low real-time priority, below the audio callback's; threads started later by them inherit it.
    Needs permission (root, or an rtprio limit as JACK's audio group has); without it nothing changes. Linux only.
    """
    promoted = []
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return promoted
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
                promoted.append(tid)
        except (AttributeError, PermissionError, OSError):
            continue
    return promoted


def demote_threads(tids: list[int]) -> None:
    """Return threads (those still alive) to SCHED_OTHER."""
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except (AttributeError, PermissionError, OSError):
            continue


def _warm_up(separator) -> None:
    zeros = np.zeros((separator.num_streams, separator.num_channels, separator.hop_size * 4), dtype=np.float32)
    for _ in range(3):
        separator.process(zeros)


class SeparationWorker:
    """Separates all decks' blocks off the audio thread. See the module docstring for the protocol.

    separator: an ``engine.separator.StreamingSeparator`` with ``num_streams`` = number of decks (in process mode
    the child builds its own from the same model, provider and thread count). block_size: the host period in frames
    (constant). fifo_periods: how many periods the audio thread waits for a block's stems (>= 2: one period of the
    wait is the look-ahead that lets a late block fade out cleanly). rt_priority: process mode: run the worker
    process in SCHED_FIFO at this priority when permitted (0: an ordinary process).
    """

    def __init__(
        self,
        separator,
        block_size: int,
        fifo_periods: int = 2,
        num_slots: int = 64,
        mode: str = "thread",
        rt_priority: int = 0,
    ) -> None:
        if fifo_periods < 2:
            raise ValueError("fifo_periods must be at least 2 (one period is the look-ahead for a clean fade)")
        if num_slots < 4 * fifo_periods:
            raise ValueError(f"num_slots {num_slots} is too small for fifo_periods {fifo_periods}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        self.separator = separator
        self.mode = mode
        self.rt_priority = rt_priority
        self.block_size = block_size
        self.fifo_periods = fifo_periods
        self.num_slots = num_slots
        self.num_decks = separator.num_streams
        self.num_channels = separator.num_channels
        self.num_stems = separator.num_stems
        self.extra_latency = separator.hop_size - math.gcd(block_size, separator.hop_size)
        self.separation_latency = separator.latency_samples + self.extra_latency
        self.latency_samples = self.separation_latency + fifo_periods * block_size
        # blocks of audio after a discontinuity (a skip) before the stems are clean again: the whole analysis window
        self.settle_blocks = math.ceil((self.separation_latency + separator.card.n_fft) / block_size)
        self._layout = _layout(num_slots, self.num_decks, self.num_channels, self.num_stems, block_size)
        size = _layout_size(self._layout)
        self._mem_fd: int | None = None
        if mode == "process":  # an anonymous shared file the child maps too (no name to clean up)
            import mmap

            self._mem_fd = os.memfd_create("stembridge-rings")
            os.ftruncate(self._mem_fd, size)
            buffer = mmap.mmap(self._mem_fd, size)
        else:
            buffer = bytearray(size)
        self._buffer = buffer
        v = _views(buffer, self._layout)
        self._v = v
        self._in_ring, self._out_ring = v["in_ring"], v["out_ring"]
        self._slot_block, self._slot_clean, self._c = v["slot_block"], v["slot_clean"], v["counters"]
        self._in_ring[:] = 0.0
        self._out_ring[:] = 0.0
        self._slot_block[:] = -1
        self._slot_clean[:] = False
        self._c[:] = 0
        self.call_hist = v["call_hist"]
        self.call_hist[:] = 0
        self._written = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._core = _Core(v, separator, block_size, self.settle_blocks) if mode == "thread" else None
        self._thread: threading.Thread | None = None
        self._process = None

    # -- audio thread --
    def input_slot(self, block: int) -> np.ndarray:
        """Where the audio thread writes block ``block``'s input: float32 (num_decks, num_channels, block_size).
        Real-time safe."""
        return self._in_ring[block % self.num_slots]

    def commit(self) -> None:
        """Publish the block just written to ``input_slot(written)`` and wake the worker. Real-time safe
        (a non-blocking write of one byte to a pipe)."""
        self._written += 1
        self._c[WRITTEN] = self._written
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: the worker is awake and behind, and reads the counter anyway

    def ready(self, block: int) -> bool:
        """Whether block ``block``'s stems are in the output ring and clean. Real-time safe."""
        slot = block % self.num_slots
        return self._c[DONE] > block and self._slot_block[slot] == block and bool(self._slot_clean[slot])

    def output_slot(self, block: int) -> np.ndarray:
        """Block ``block``'s stems: float32 (num_decks, num_stems, num_channels, block_size). Valid only when
        ``ready(block)``; read it before the next block. Real-time safe."""
        return self._out_ring[block % self.num_slots]

    # -- counters --
    @property
    def written(self) -> int:
        return self._written

    @property
    def done(self) -> int:
        return int(self._c[DONE])

    @property
    def num_skipped(self) -> int:
        return int(self._c[SKIPPED])

    @property
    def num_calls(self) -> int:
        return int(self._c[CALLS])

    @property
    def num_failures(self) -> int:
        return int(self._c[FAILED])

    @property
    def call_max_ns(self) -> int:
        return int(self._c[CALL_MAX_NS])

    @property
    def cpu_s(self) -> float:
        """CPU seconds the worker spent separating (its thread or process)."""
        return int(self._c[CPU_NS]) / 1e9

    @property
    def hops(self) -> HopFifo:
        if self._core is None:
            raise AttributeError("in process mode the hop FIFO lives in the worker process")
        return self._core.hops

    def call_times_ms(self) -> np.ndarray:
        """Recent per-call separation times in ms (up to the last 4096 calls)."""
        n = min(self.num_calls, 4096)
        return self._v["call_ns"][:n] / 1e6

    def step(self) -> int:
        """Thread mode: separate what is pending, on the calling thread (tests drive the worker with this)."""
        if self._core is None:
            raise RuntimeError("step() runs the worker in-process; this worker runs in its own process")
        return self._core.step()

    # -- life cycle --
    def start(self, timeout_s: float = 60.0) -> SeparationWorker:
        """Start the worker thread or process (the process warms its model up before it reports ready)."""
        if self.mode == "thread":
            if self._thread is None:
                self._c[STOP] = 0
                _warm_up(self.separator)
                self._core.hops.reset()
                self._thread = threading.Thread(
                    target=self._core.loop, args=(self._wait,), daemon=True, name="stembridge-separation"
                )
                self._thread.start()
            return self
        if self._process is None:
            import json
            import subprocess
            import sys

            sep = self.separator
            gpu = sep.active_provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
            config = {
                "layout": self._layout,
                "mem_fd": self._mem_fd,
                "wake_fd": self._wake_r,
                "ppid": os.getpid(),
                "model": str(Path(sep.card.path).resolve()),
                "device": "cuda" if gpu else "cpu",
                "threads": sep.session.get_session_options().intra_op_num_threads or 1,
                "num_streams": sep.num_streams,
                "spatial_filter": sep.spatial is not None,
                "max_hops": max(64, (self.num_slots // 2 + 2) * self.block_size // sep.hop_size),
                "block_size": self.block_size,
                "settle_blocks": self.settle_blocks,
                "rt_priority": self.rt_priority,
                "host_rate": sep.sample_rate if getattr(sep, "inner", None) is not None else None,
                "resample_quality": getattr(sep, "quality", None),
            }
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the worker imports what we import
            self._c[STOP] = 0
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, json.dumps(config)],
                pass_fds=(self._mem_fd, self._wake_r),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            deadline = time.monotonic() + timeout_s
            while self._c[STARTED] == 0:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the separation worker process did not start (see the log above)")
                time.sleep(0.01)
            if self._c[STARTED] < 0:
                self.stop()
                raise RuntimeError("the separation worker process could not load the model (see the log above)")
        return self

    def _wait(self) -> None:
        import select

        ready, _, _ = select.select([self._wake_r], [], [], 0.5)
        if ready:
            os.read(self._wake_r, 65536)

    @property
    def pid(self) -> int | None:
        """The worker process id (process mode, once started)."""
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        if self._c is None:
            return
        self._c[STOP] = 1
        try:
            os.write(self._wake_w, b"\1")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5.0)
            except Exception:
                self._process.kill()
                self._process.wait(timeout=2.0)
            self._process = None

    def close(self) -> None:
        """Stop the worker and release the pipe and shared memory."""
        self.stop()
        for fd in (self._wake_r, self._wake_w, self._mem_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = self._mem_fd = None
