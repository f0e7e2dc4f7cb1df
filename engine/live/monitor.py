"""Off the audio thread: counters, logs, meters and recording for a running LiveEngine.

``Monitor`` polls the engine's and the backend's counters a few times a second, logs new deadline misses, xruns and
errors (at most one line per kind per ``log_interval_s``), and hands snapshots to listeners: ``on_stats(dict)``
(e.g. the control bridge pushing them over OSC) and ``on_meters(deck, {stem: (peak, rms)})`` at up to 30 Hz.

``Recorder`` is an engine tap: the audio thread copies each output block into a ring (``push``, real-time safe) and
a writer thread appends them to a multichannel WAV file.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger("stembridge.live")

StatsListener = Callable[[dict], None]
MeterListener = Callable[[int, dict], None]
WATCHED = ("deadline_misses", "xruns", "skipped_blocks", "backend_errors", "bad_blocks", "commands_dropped")


def process_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (all threads), or of process ``pid`` (from /proc; 0 if gone)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_cpu_s(engine) -> float:
    """CPU seconds of this process plus the separation worker's process, if it has one."""
    pid = getattr(engine.worker, "pid", None)
    return process_cpu_s() + (process_cpu_s(pid) if pid else 0.0)


class Monitor:
    """Watches ``engine`` (a LiveEngine) and ``backend`` from its own thread."""

    def __init__(
        self,
        engine,
        backend=None,
        *,
        interval_s: float = 0.25,
        meter_hz: float = 30.0,
        log_interval_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.backend = backend
        self.interval_s = interval_s
        self.meter_period_s = 1.0 / meter_hz if meter_hz > 0 else 0.0
        self.log_interval_s = log_interval_s
        self.stats_listeners: list[StatsListener] = []
        self.meter_listeners: list[MeterListener] = []
        self.latest: dict = {}
        self._logged: dict[str, tuple[float, int]] = {}
        self._period_warned = False
        self._cpu = (time.monotonic(), engine_cpu_s(engine))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> dict:
        """Engine stats + backend stats + CPU use of this process since the previous snapshot."""
        stats = self.engine.stats()
        stats["worker_mode"] = self.engine.worker.mode
        if self.backend is not None:
            stats |= self.backend.stats()
        now, cpu = time.monotonic(), engine_cpu_s(self.engine)
        then, cpu_then = self._cpu
        if now > then:
            stats["cpu_pct"] = 100.0 * (cpu - cpu_then) / (now - then)
        self._cpu = (now, cpu)
        return stats

    def check(self) -> dict:
        """One poll: snapshot, log what is new, tell the stats listeners. Returns the snapshot."""
        stats = self.snapshot()
        previous = self.latest
        now = time.monotonic()
        for key in WATCHED:
            value = stats.get(key, 0)
            if value > previous.get(key, 0):
                last_time, last_value = self._logged.get(key, (-1e9, 0))
                if now - last_time >= self.log_interval_s:
                    log.warning("%s: %d (+%d)", key.replace("_", " "), value, value - last_value)
                    self._logged[key] = (now, value)
        backend = self.backend
        if backend is not None:
            if backend.last_error is not None:
                error, backend.last_error = backend.last_error, None
                log.error("audio callback failed (the block was answered with silence): %r", error)
            if backend.period_changed_to is not None and not self._period_warned:
                log.error(
                    "the audio period changed from %d to %d frames; restart stembridge live to follow it "
                    "(until then the outputs are silent)",
                    self.engine.block_size,
                    backend.period_changed_to,
                )
                self._period_warned = True
        self.latest = stats
        for listener in self.stats_listeners:
            try:
                listener(stats)
            except Exception:
                log.exception("stats listener failed")
        return stats

    def send_meters(self) -> None:
        for deck, levels in enumerate(self.engine.meter_levels(), start=1):
            for listener in self.meter_listeners:
                try:
                    listener(deck, levels)
                except Exception:
                    log.exception("meter listener failed")

    def start(self) -> Monitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stembridge-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        next_stats = 0.0
        tick = self.meter_period_s if self.meter_listeners and self.meter_period_s else self.interval_s
        while not self._stop.wait(tick):
            now = time.monotonic()
            if self.meter_listeners:
                self.send_meters()
            if now >= next_stats:
                self.check()
                next_stats = now + self.interval_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class Recorder:
    """Records the engine's output channels to a WAV file (float32 or 24-bit) from a writer thread.

    Add it to ``engine.taps``; ``push`` copies a block into a ring (real-time safe); blocks the writer could not
    keep up with are dropped and counted in ``num_dropped``.
    """

    def __init__(
        self,
        path: str | Path,
        num_channels: int,
        sample_rate: int,
        block_size: int,
        *,
        num_slots: int = 512,
        rows: list[int] | None = None,
        channel_names: list[str] | None = None,
    ) -> None:
        """num_channels: the engine's output channels; rows: which of them to record (default all, in order);
        channel_names: names of the recorded channels, written beside the file as ``<file>.channels.txt``."""
        import soundfile as sf

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = list(range(num_channels)) if rows is None else list(rows)
        if not self.rows or not all(0 <= r < num_channels for r in self.rows):
            raise ValueError(f"recorder rows must be within the {num_channels} output channels")
        self._all_rows = self.rows == list(range(num_channels))
        width = len(self.rows)
        self._file = sf.SoundFile(str(self.path), "w", int(sample_rate), width, subtype="FLOAT", format="WAV")
        if channel_names is not None:
            self.path.with_name(self.path.name + ".channels.txt").write_text("\n".join(channel_names) + "\n")
        self._ring = np.zeros((num_slots, width, block_size), dtype=np.float32)
        self.written = 0  # blocks pushed (audio thread)
        self.saved = 0  # blocks written to the file (writer thread)
        self.num_dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stembridge-recorder", daemon=True)
        self._thread.start()

    def push(self, out: np.ndarray) -> None:
        """out: float32 (num_channels, block_size). Real-time safe."""
        if self.written - self.saved >= len(self._ring):
            self.num_dropped += 1
            return
        slot = self._ring[self.written % len(self._ring)]
        if self._all_rows:
            slot[:] = out
        else:
            for k, r in enumerate(self.rows):
                slot[k] = out[r]
        self.written += 1

    def _drain(self) -> None:
        while self.saved < self.written:
            self._file.write(self._ring[self.saved % len(self._ring)].T)
            self.saved += 1

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._drain()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._drain()
        self._file.close()
