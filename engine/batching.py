"""Several files through one worker's model sessions at once: dynamic batching of concurrent model calls.

A worker that separates K files at once (``separate --batch-files K``) runs them on K threads (``FileThreads``),
each with its own separator objects (recurrent state, STFT buffers, spatial filter) but one ONNX Runtime session per
model, a ``BatchingSession`` (handed out by ``SharedSessions``, keyed by model file). The separation pipelines are
unchanged: they call ``session.run`` as before, and calls that meet in the session go to ONNX Runtime as one.

How a batch forms (leader/follower): the first caller to find the session idle leads. It takes the calls already
waiting whose feeds agree with its own in every dimension but the batch axis (the graph's symbolic dimension named
"batch": axis 0 of the models' inputs and masks, axis 1 of the causal model's recurrent state), at most
``max_batch`` callers, concatenates their feeds along that axis, runs the session once and splits the outputs back.
Calls that arrive meanwhile wait for the next batch, which so forms while this one runs. A leader waits for company
(at most ``max_wait_ms``) only when more threads than are waiting now made the recent calls of its kind (the last
``2 * max_batch``); a wait that runs out forgets the threads that did not come (a file that ended). So K files fall
into step and stay there, and a caller alone runs at once. An exception of the session is raised in every caller of
that batch. Nothing polls: callers sleep on condition variables.

Batched results equal unbatched ones to float rounding (ONNX Runtime may sum a batched matrix product in another
order: within 1e-5, not bit for bit); a call that runs alone runs exactly as it would on the bare session.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_WAIT_MS = 2.0  # how long a leader waits for the callers of the last batch to come back


def batch_axis(shape: Sequence[Any]) -> int | None:
    """The axis of a graph tensor's symbolic dimension "batch", or None when it has none."""
    return list(shape).index("batch") if "batch" in shape else None


@dataclass(eq=False)
class _Call:
    """One caller's ``run``: what it asked, and (when ``done``) its outputs or the session's exception."""

    output_names: tuple[str, ...]
    feeds: dict[str, np.ndarray]
    key: tuple  # calls with equal keys can go in one batch
    rows: int  # the call's size along the batch axis
    thread: int = field(default_factory=threading.get_ident)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False

    def result(self) -> list[np.ndarray]:
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class BatchingSession:
    """An ONNX Runtime session that several threads call at once; concurrent calls go to it as one batched call.

    ``run(output_names, feeds)`` as on ``onnxruntime.InferenceSession``; ``get_inputs``, ``get_outputs``,
    ``get_providers`` and ``get_session_options`` pass through. ``num_calls`` counts the callers' calls,
    ``num_runs`` the session's runs (their ratio is the mean batch size). A graph with a tensor that has no "batch"
    dimension is passed through call by call.
    """

    def __init__(self, session, *, max_batch: int = 8, max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:
        self.session = session
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self._input_axes = {i.name: batch_axis(i.shape) for i in session.get_inputs()}
        self._output_axes = {o.name: batch_axis(o.shape) for o in session.get_outputs()}
        self._all_outputs = tuple(self._output_axes)
        self.batchable = None not in self._input_axes.values() and None not in self._output_axes.values()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # the leader waits here for company
        self._turn = threading.Condition(self._lock)  # followers wait here for the running batch to end
        self._waiting: list[_Call] = []
        self._busy = False
        self._recent: dict[tuple, deque[int]] = {}  # the threads of the recent calls of each key
        self.num_calls = 0
        self.num_runs = 0

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def get_providers(self) -> list[str]:
        return self.session.get_providers()

    def get_session_options(self):
        return self.session.get_session_options()

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray], run_options=None) -> list:
        """The outputs ``output_names`` (None: all) for ``feeds``, as ``InferenceSession.run`` returns them; blocks
        while the session runs another batch, and at most ``max_wait_ms`` longer for company."""
        names = tuple(output_names) if output_names else self._all_outputs
        call = self._call(names, feeds) if run_options is None and self.batchable else None
        if call is None:  # nothing to batch it with: straight through
            with self._lock:
                self.num_calls += 1
                self.num_runs += 1
            return self.session.run(list(names), feeds, run_options)
        with self._lock:
            self.num_calls += 1
            self._waiting.append(call)
            self._recent.setdefault(call.key, deque(maxlen=2 * self.max_batch)).append(call.thread)
            self._arrived.notify()
            leading = False
            try:
                while self._busy and not call.done:
                    self._turn.wait()
                if call.done:  # another caller led the batch this call went in
                    return call.result()
                self._busy = leading = True
                batch = self._gather(call)
            except BaseException:  # interrupted while waiting: leave the queue, and free the session if leading
                if call in self._waiting:
                    self._waiting.remove(call)
                if leading:
                    self._busy = False
                    self._turn.notify_all()
                raise
        try:
            outputs = self._execute(batch)
        except BaseException as exc:  # every caller of the batch gets it
            for c in batch:
                c.error = exc
        else:
            for c, out in zip(batch, outputs, strict=True):
                c.outputs = out
        finally:
            with self._lock:
                for c in batch:
                    c.done = True
                self._busy = False
                self.num_runs += 1
                self._turn.notify_all()
        return call.result()

    def _call(self, names: tuple[str, ...], feeds: dict[str, np.ndarray]) -> _Call | None:
        """The call as a batch member, or None when it cannot be one (an unknown feed, unequal batch sizes: the
        session then raises its own error)."""
        if not all(n in self._output_axes for n in names) or not all(n in self._input_axes for n in feeds):
            return None
        arrays = {n: np.asarray(v) for n, v in feeds.items()}
        parts, rows = [], set()
        for name in sorted(arrays):
            a, axis = arrays[name], self._input_axes[name]
            if a.ndim <= axis:
                return None
            rows.add(a.shape[axis])
            parts.append((name, a.dtype.str, a.shape[:axis] + a.shape[axis + 1 :]))
        if len(rows) != 1:
            return None
        return _Call(names, arrays, (names, tuple(parts)), rows.pop())

    def _gather(self, leader: _Call) -> list[_Call]:
        """(Lock held.) The leader and up to ``max_batch - 1`` waiting calls like it, oldest first, after waiting
        for the threads that made the recent calls of its kind; they leave the waiting list."""

        def company() -> list[_Call]:
            return [c for c in self._waiting if c is not leader and c.key == leader.key][: self.max_batch - 1]

        others = company()
        recent = self._recent[leader.key]
        expected = min(self.max_batch, len(set(recent)))
        if len(others) + 1 < expected and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            while len(others) + 1 < expected:
                left = deadline - time.monotonic()
                if left <= 0:  # the others are not coming (their file ended, or they are slow): forget them
                    recent.clear()
                    recent.extend(c.thread for c in (leader, *others))
                    break
                self._arrived.wait(left)
                others = company()
        batch = [leader, *others]
        for c in batch:
            self._waiting.remove(c)
        return batch

    def _execute(self, batch: list[_Call]) -> list[list[np.ndarray]]:
        """Run ``batch`` as one session call: each member's outputs."""
        first = batch[0]
        if len(batch) == 1:
            return [self.session.run(list(first.output_names), first.feeds)]
        feeds = {
            name: np.concatenate([c.feeds[name] for c in batch], axis=self._input_axes[name]) for name in first.feeds
        }
        outputs = self.session.run(list(first.output_names), feeds)
        total = sum(c.rows for c in batch)
        bounds = np.cumsum([c.rows for c in batch])[:-1]
        split = []
        for name, out in zip(first.output_names, outputs, strict=True):
            axis = self._output_axes[name]
            if out.shape[axis] != total:
                raise RuntimeError(f"output {name!r} has {out.shape[axis]} rows on its batch axis, not {total}")
            split.append(np.split(out, bounds, axis=axis))
        return [[np.ascontiguousarray(parts[i]) for parts in split] for i in range(len(batch))]


class SharedSessions:
    """One ``BatchingSession`` per model file, built on the first ask: what the separators of one worker's threads
    get their sessions from (the ``sessions`` argument of ``StreamingSeparator``, ``LookaheadModel`` and
    ``HighQualitySeparator``)."""

    def __init__(self, *, max_batch: int = 8, max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self._lock = threading.Lock()
        self.sessions: dict[Path, BatchingSession] = {}

    def get(self, model_path: str | Path, build: Callable[[], Any]) -> BatchingSession:
        """The shared session of ``model_path``; ``build()`` makes its ONNX Runtime session the first time."""
        key = Path(model_path).resolve()
        with self._lock:
            if key not in self.sessions:
                self.sessions[key] = BatchingSession(build(), max_batch=self.max_batch, max_wait_ms=self.max_wait_ms)
            return self.sessions[key]


class FileThreads:
    """K threads of one worker, each separating one file at a time with a separator of its own.

    ``work(separator, job, overwrite, check)`` does one file and returns its outcome; it must turn the file's own
    failures into an outcome (``engine.batch.run_job`` does) and call ``check(frames)`` as it goes (it is the
    progress callback): after ``stop(abort=True)``, ``check`` raises ``KeyboardInterrupt``, which unwinds the file
    (its stem writer discards its temporaries) and reports nothing. ``submit`` at most K jobs at a time. Outcomes go
    to ``on_done(tag, outcome)`` on the file's thread when given, else to ``finished``.
    """

    def __init__(
        self,
        separators: list,
        work: Callable[[Any, Any, bool, Callable[[int], None]], Any],
        on_done: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.num_threads = len(separators)
        self._work = work
        self._on_done = on_done
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for s in separators:
            self._free.put(s)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="stembridge-file")

    def submit(self, tag: Any, job: Any, overwrite: bool) -> None:
        self._executor.submit(self._run, tag, job, overwrite)

    def _check(self, frames: int) -> None:
        if self._stopping.is_set():
            raise KeyboardInterrupt

    def _run(self, tag: Any, job: Any, overwrite: bool) -> None:
        separator = self._free.get()
        try:
            outcome = self._work(separator, job, overwrite, self._check)
        except KeyboardInterrupt:  # stopped: nothing to report
            return
        except Exception as exc:  # ``work`` broke its promise: ``finished`` raises it, so the batch stops loudly
            outcome = exc
        finally:
            self._free.put(separator)
        if self._on_done is not None:
            self._on_done(tag, outcome)
        else:
            self._done.put((tag, outcome))

    def finished(self, timeout: float) -> list[tuple[Any, Any]]:
        """(tag, outcome) of the files finished since the last call, waiting up to ``timeout`` s for the first."""
        try:
            events = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._done.get_nowait())
            except queue.Empty:
                break
        for _, outcome in events:
            if isinstance(outcome, Exception):
                raise outcome
        return events

    def stop(self, abort: bool) -> None:
        """Wait for the threads to end: after their files, or (``abort``) at their files' next ``check``."""
        if abort:
            self._stopping.set()
        self._executor.shutdown(wait=True)
