"""Separating many files: the per-file work, the worker pools that run it, and the coordinator that feeds them.

Every path runs the same per-file function, ``run_job``, which calls ``engine.separate.separate_file`` with the file
separator that ``SeparationSettings.make_separator`` built (the high-quality path or the causal live model, as
``separate --mode`` says): in this process (``InlinePool``, one job at a time, with live
progress), in local worker processes (``LocalPool``: ``--jobs N``, each its own ONNX Runtime session with one
intra-op thread) or on Ray (``engine.ray_batch.RayPool``). A pool has slots, each holding at most one job; it reports
each job's ``Outcome`` or, when the worker died under it (killed, out of memory), a ``WorkerLost``; the coordinator
``run_batch`` then gives that one file to a fresh worker, up to ``MAX_ATTEMPTS`` tries.

A worker can hold several files at once (``separate --batch-files K``, ``SeparationSettings.batch_files``): it runs
them on K threads (``engine.batching.FileThreads``), each with its own separator, all sharing one
``engine.batching.BatchingSession`` per model, so that their model calls go to ONNX Runtime as one batched call (for
a GPU). Each of its K slots is a slot of the pool; a worker that dies loses every file it held, and each goes back
to the coordinator. Their stems equal one-file-at-a-time's to float rounding (within 1e-5), not bit for bit.

Ctrl-C: the coordinator stops the pool; workers that were mid-file raise ``KeyboardInterrupt`` inside
``separate_file``, whose ``AtomicStemWriter`` deletes its temporaries, so no partial output is left; any temporary a
killed worker could not delete is swept by its pid. The manifest records the tracks in progress as ``interrupted``
and the rest as ``pending``; the next run does them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Protocol

from stembridge.engine.library import Job, planned_outputs
from stembridge.engine.manifest import Fingerprint, Manifest, TrackIdentity

MAX_ATTEMPTS = 3  # tries of one file whose worker keeps dying under it
HEARTBEAT_S = 5.0
AUTO_GPU_BATCH_FILES = 8  # files per worker that --batch-files auto gives a worker whose model runs on a GPU
STREAMS_PER_FILE = 2  # model calls one file may have in flight on one model (one today in either path; room for two)


@dataclass(frozen=True)
class SeparationSettings:
    """Everything a worker needs to build the file separator and write a file's stems; picklable, sent to workers."""

    model_path: Path | None  # the causal model, absolute, or None for the shipped default
    mode: str = "hq"  # "hq": the high-quality path (engine.hq); "live": the causal live model alone
    hq_model_path: Path | None = None  # the look-ahead model of --mode hq, None for the shipped one
    device: str = "auto"
    spatial_filter: bool | None = None  # --mode live only
    block_size: int = 4096
    threads: int = 1
    stems: tuple[str, ...] = ()  # empty until the models are known: all their stems
    fmt: str | None = "wav"  # None: chosen by the CLI (flac for a folder, else wav); "stem": one NI stem file
    codec: str = "aac"  # of an NI stem file: "aac" or "alac"
    reseparate: bool = False  # separate the mixture of an input that is already an NI stem file
    batch_files: int | None = None  # files a worker separates at once, batching their model calls; None: auto

    def make_separator(self, sessions=None):
        """The ``engine.separate.FileSeparator`` that ``separate`` runs every file through (raises ModelError).
        ``sessions``: an ``engine.batching.SharedSessions`` to take the model sessions from."""
        if self.mode == "hq":
            from stembridge.engine.hq import HighQualitySeparator

            return HighQualitySeparator(
                self.hq_model_path,
                self.model_path,
                device=self.device,
                threads=self.threads,
                block_size=self.block_size,
                sessions=sessions,
            )
        if self.mode != "live":
            raise ValueError(f"unknown separation mode {self.mode!r} (hq or live)")
        from stembridge.engine.separate import CausalFileSeparator
        from stembridge.engine.separator import StreamingSeparator
        from stembridge.engine.stream import BlockAdapter

        causal = StreamingSeparator(
            self.model_path,
            device=self.device,
            intra_op_threads=self.threads,
            max_hops=max(1, self.block_size // 64 + 2),
            spatial_filter=self.spatial_filter,
            sessions=sessions,
        )
        adapter = BlockAdapter(causal, max_block_size=self.block_size, block_size=self.block_size)
        return CausalFileSeparator(adapter, self.block_size)

    def make_separators(self, count: int) -> list:
        """``count`` file separators for the threads of one worker: each with its own state and buffers, and when
        ``count`` > 1 all sharing one ``engine.batching.BatchingSession`` per model file."""
        if count <= 1:
            return [self.make_separator()]
        from stembridge.engine.batching import SharedSessions

        sessions = SharedSessions(max_batch=STREAMS_PER_FILE * count)
        return [self.make_separator(sessions) for _ in range(count)]

    def fingerprint(self, separator) -> Fingerprint:
        """What outputs made with these settings and ``separator``'s models depend on (the manifest's skip test):
        the name and the SHA-256 of every model graph and card it runs."""
        cards = model_cards(separator)
        graphs = [_file_sha256(Path(c.path)) for c in cards]
        card_files = [Path(c.path).with_suffix(".json") for c in cards]
        rest = {"mode": self.mode, "stems": list(self.stems), "spatial_filter": self.spatial_filter}
        if self.fmt == "stem":
            rest.update(codec=self.codec, reseparate=self.reseparate)
        return Fingerprint(
            model_name="+".join(c.name for c in cards),
            model_sha256=_combined(graphs),
            card_schema_version=max(int(json.loads(f.read_text()).get("schema_version", 0)) for f in card_files),
            card_sha256=_combined([_file_sha256(f) for f in card_files]),
            output_format=self.fmt or "",
            settings=json.dumps(rest, sort_keys=True),
        )


def model_cards(separator) -> list:
    """The cards of the models a file separator runs: the two look-ahead models and the causal model of the
    high-quality path, or the causal model alone."""
    if hasattr(separator, "vocal_model"):
        return [separator.vocal_model.card, separator.stem_model.card, separator.mix_causal.card]
    return [separator.adapter.separator.card]


def active_provider(separator) -> str:
    """The ONNX Runtime execution provider a file separator's (first) model runs on."""
    if hasattr(separator, "vocal_model"):
        return separator.vocal_model.active_provider
    return separator.adapter.separator.active_provider


def files_per_worker(settings: SeparationSettings, separator, on_ray: bool = False) -> int:
    """What ``settings.batch_files`` comes to: as given, or (auto) ``AUTO_GPU_BATCH_FILES`` when the model runs on
    a GPU (``separator``, built here, runs on CUDA or TensorRT; on Ray: ``--device cuda``, the only way its actors
    get a GPU), else 1."""
    if settings.batch_files:
        return settings.batch_files
    from stembridge.engine.separator import GPU_PROVIDERS

    on_gpu = settings.device == "cuda" if on_ray else active_provider(separator) in GPU_PROVIDERS
    return AUTO_GPU_BATCH_FILES if on_gpu else 1


def _combined(digests: list[str]) -> str:
    return digests[0] if len(digests) == 1 else sha256("".join(digests).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def worker_name() -> str:
    """``host:pid`` of this process: how the manifest names the worker that held a track."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Outcome:
    """What became of one job in a worker."""

    key: str
    ok: bool
    outputs: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    elapsed_s: float = 0.0
    num_clipped: int = 0
    error: str = ""
    worker: str = ""
    skipped: str = ""  # why there was nothing to do (an NI stem file without --reseparate); ok is True then


@dataclass
class WorkerLost:
    """The worker holding a job died before answering (killed, out of memory, its node lost)."""

    reason: str


def run_job(
    separator, settings: SeparationSettings, job: Job, overwrite: bool, progress: Callable[[int], None] | None = None
) -> Outcome:
    """Separate one job's file with ``separator`` (from ``settings.make_separator()``); every failure of that file is
    turned into a failed ``Outcome`` carrying the reason, so one bad file never stops a batch."""
    from stembridge.engine.audio_io import AudioFileError
    from stembridge.engine.separate import separate_file
    from stembridge.engine.stem_output import NothingToSeparate

    start = time.perf_counter()
    try:
        result = separate_file(
            separator,
            job.input,
            job.out_dir.parent if settings.fmt == "stem" else job.out_dir,
            stems=list(settings.stems),
            fmt=settings.fmt,
            overwrite=overwrite,
            progress=progress,
            codec=settings.codec,
            reseparate=settings.reseparate,
        )
    except NothingToSeparate as exc:
        return Outcome(job.key, True, skipped=str(exc), elapsed_s=time.perf_counter() - start, worker=worker_name())
    except (AudioFileError, OSError) as exc:
        return Outcome(job.key, False, error=str(exc), elapsed_s=time.perf_counter() - start, worker=worker_name())
    except Exception as exc:  # a bug or a library error on this one input: report it with the file, go on
        error = f"{job.input}: separation failed: {type(exc).__name__}: {exc}"
        return Outcome(job.key, False, error=error, elapsed_s=time.perf_counter() - start, worker=worker_name())
    return Outcome(
        job.key,
        True,
        outputs=[str(p) for p in result.outputs],
        duration_s=result.duration_s,
        elapsed_s=result.elapsed_s,
        num_clipped=result.num_clipped,
        worker=worker_name(),
    )


def sweep_partials(job: Job, pid: int) -> None:
    """Delete the temporaries a worker with ``pid`` was writing for ``job`` when it died (a kill -9 runs no
    cleanup). They are ``AtomicStemWriter``'s hidden ``.<name>.<pid>.partial`` files."""
    if job.out_dir.is_dir():
        for temp in job.out_dir.glob(f".*.{pid}.partial"):
            temp.unlink(missing_ok=True)


class Pool(Protocol):
    """Slots that each run one job at a time (see the module docstring)."""

    num_slots: int

    def worker(self, slot: int) -> str: ...

    def submit(self, slot: int, job: Job, overwrite: bool) -> None: ...

    def wait(self, timeout: float) -> list[tuple[int, Outcome | WorkerLost]]: ...

    def stop(self, abort: bool) -> None: ...


class InlinePool:
    """One slot, run in this process when waited on: the model loaded once, live progress per file."""

    num_slots = 1

    def __init__(self, separator, settings: SeparationSettings, progress: Callable[[int], None] | None = None) -> None:
        self.separator = separator
        self.settings = settings
        self.progress = progress
        self._job: tuple[Job, bool] | None = None

    def worker(self, slot: int) -> str:
        return worker_name()

    def submit(self, slot: int, job: Job, overwrite: bool) -> None:
        self._job = (job, overwrite)

    def wait(self, timeout: float) -> list[tuple[int, Outcome | WorkerLost]]:
        if self._job is None:
            return []
        job, overwrite = self._job
        outcome = run_job(self.separator, self.settings, job, overwrite, self.progress)
        self._job = None
        return [(0, outcome)]

    def stop(self, abort: bool) -> None:
        self._job = None


class ThreadsPool:
    """K slots run on K threads of this process (``--batch-files K`` without ``--jobs``), one separator each,
    sharing their model sessions: see ``engine.batching``."""

    def __init__(self, separators: list, settings: SeparationSettings) -> None:
        from stembridge.engine.batching import FileThreads

        self.settings = settings
        self.num_slots = len(separators)
        self._threads = FileThreads(separators, self._work)

    def _work(self, separator, job: Job, overwrite: bool, check: Callable[[int], None]) -> Outcome:
        return run_job(separator, self.settings, job, overwrite, check)

    def worker(self, slot: int) -> str:
        return worker_name()

    def submit(self, slot: int, job: Job, overwrite: bool) -> None:
        self._threads.submit(slot, job, overwrite)

    def wait(self, timeout: float) -> list[tuple[int, Outcome | WorkerLost]]:
        return self._threads.finished(timeout)

    def stop(self, abort: bool) -> None:
        self._threads.stop(abort)


_READY = "ready"  # a worker's first message: its model is loaded


_stopping = False  # set in a worker process by SIGTERM


def _raise_interrupt(signum, frame) -> None:
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _local_worker_main(conn: Connection, settings: SeparationSettings) -> None:
    """A local worker process: build the separator once (``settings.batch_files`` of them, on as many threads,
    sharing their model sessions), then separate each job it is sent until told to stop.

    Ctrl-C reaches the whole process group; workers ignore it and leave the stopping to the coordinator, which
    sends SIGTERM, turned here into ``KeyboardInterrupt`` so that the stem writer discards its temporaries (with
    several files on threads, each file's thread raises it at its next progress report)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    threads = None
    try:
        try:
            separators, load_error = settings.make_separators(settings.batch_files or 1), ""
        except Exception as exc:  # the coordinator loaded the same model; report it per job rather than die in a loop
            separators, load_error = [], f"worker cannot load the model: {exc}"
        if len(separators) > 1:
            from stembridge.engine.batching import FileThreads

            send_lock = threading.Lock()

            def send(tag, outcome: Outcome) -> None:
                with send_lock:
                    conn.send(outcome)

            def work(separator, job: Job, overwrite: bool, check) -> Outcome:
                return run_job(separator, settings, job, overwrite, check)

            threads = FileThreads(separators, work, on_done=send)
        # ONNX Runtime can turn a KeyboardInterrupt raised inside its calls into an error of its own: the flag,
        # checked after loading and between files, is what makes a SIGTERM always end the worker. Polling rather
        # than a blocking read keeps the main thread coming back to Python, where signal handlers run.
        if _stopping:
            return
        conn.send(_READY)
        while not _stopping:
            if not conn.poll(0.2):
                continue
            message = conn.recv()
            if message is None:
                return
            job, overwrite = message
            if not separators:
                conn.send(Outcome(job.key, False, error=f"{job.input}: {load_error}", worker=worker_name()))
            elif threads is not None:
                threads.submit(None, job, overwrite)
            else:
                conn.send(run_job(separators[0], settings, job, overwrite))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return
    finally:
        if threads is not None:
            try:
                threads.stop(abort=True)
            except KeyboardInterrupt:  # a second SIGTERM: leave the rest to the coordinator's sweep
                pass


def _worker_context():
    """Where it exists, a fork server that has imported the engine once: a worker (and the replacement of a killed
    one) starts in milliseconds instead of a fresh interpreter's seconds, and never inherits the coordinator's
    threads or model session. Else (Windows) spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["stembridge.engine.batch", "stembridge.engine.separate", "stembridge.engine.hq", "onnxruntime"]
    )
    return context


@dataclass
class _LocalWorker:
    process: multiprocessing.Process
    conn: Connection
    jobs: dict[int, Job] = field(default_factory=dict)  # by slot
    ready: bool = False


class LocalPool:
    """``num_workers`` worker processes on this machine, each with its own ONNX Runtime sessions and
    ``settings.batch_files`` slots (files at once); slot ``s`` is held by worker ``s % num_workers``, so the
    first files go to different workers."""

    def __init__(self, settings: SeparationSettings, num_workers: int) -> None:
        self.settings = settings
        self.num_workers = num_workers
        self.num_slots = num_workers * (settings.batch_files or 1)
        self._context = _worker_context()
        self._workers = [self._start() for _ in range(num_workers)]

    def _start(self) -> _LocalWorker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_local_worker_main, args=(theirs, self.settings), name="stembridge-worker", daemon=True
        )
        process.start()
        theirs.close()
        return _LocalWorker(process, ours)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every worker has loaded its model (the pool works without this; it times start-up)."""
        for w in self._workers:
            if not w.ready and not w.jobs and w.conn.poll(timeout_s):
                w.ready = w.conn.recv() == _READY

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def worker(self, slot: int) -> str:
        return f"{socket.gethostname()}:{self._workers[slot % self.num_workers].process.pid}"

    def submit(self, slot: int, job: Job, overwrite: bool) -> None:
        w = self._workers[slot % self.num_workers]
        w.jobs[slot] = job
        try:
            w.conn.send((job, overwrite))
        except (BrokenPipeError, OSError):
            pass  # it died since; wait() reports it through its sentinel

    def wait(self, timeout: float) -> list[tuple[int, Outcome | WorkerLost]]:
        busy = {w.conn: i for i, w in enumerate(self._workers) if w.jobs}
        sentinels = {w.process.sentinel: i for i, w in enumerate(self._workers)}
        ready = wait([*busy, *sentinels], timeout)
        events: list[tuple[int, Outcome | WorkerLost]] = []
        lost: set[int] = set()
        for r in ready:
            if r in busy:
                w = self._workers[busy[r]]
                try:
                    while True:  # every answer already there: a worker of several files can send several
                        outcome = r.recv()
                        if outcome == _READY:
                            w.ready = True
                        else:
                            slot = next(s for s, job in w.jobs.items() if job.key == outcome.key)
                            del w.jobs[slot]
                            events.append((slot, outcome))
                        if not r.poll(0):
                            break
                except (EOFError, OSError):
                    lost.add(busy[r])
        for r in ready:
            if r in sentinels:
                lost.add(sentinels[r])
        for index in sorted(lost):
            w = self._workers[index]
            w.process.join(1.0)
            code = w.process.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            for slot, job in sorted(w.jobs.items()):  # every file it held goes back
                sweep_partials(job, w.process.pid)
                events.append((slot, WorkerLost(f"worker process {w.process.pid} died ({how})")))
            w.conn.close()
            self._workers[index] = self._start()
        return events

    def stop(self, abort: bool) -> None:
        for w in self._workers:
            if abort and w.jobs:
                w.process.terminate()  # SIGTERM: the worker unwinds and its stem writer discards its temporaries
            else:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 5.0  # then SIGKILL (its temporaries are swept below)
        for w in self._workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1.0)
            for job in w.jobs.values():
                sweep_partials(job, w.process.pid)
            w.conn.close()


class Reporter(Protocol):
    """What the coordinator tells the user interface (the CLI's progress bar or log)."""

    def finished(self, job: Job, outcome: Outcome) -> None: ...

    def retrying(self, job: Job, reason: str) -> None: ...

    def elsewhere(self, job: Job) -> None: ...


@dataclass
class BatchSummary:
    """What a batch did: outcomes of done and failed jobs, jobs another run held, what an interrupt left."""

    done: list[tuple[Job, Outcome]] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    elsewhere: list[Job] = field(default_factory=list)  # held (or finished meanwhile) by another run
    retries: int = 0
    interrupted: bool = False
    left_running: list[Job] = field(default_factory=list)
    left_pending: list[Job] = field(default_factory=list)
    wall_s: float = 0.0


def identity(job: Job, settings: SeparationSettings) -> TrackIdentity:
    outputs = tuple(str(p) for p in planned_outputs(job, list(settings.stems), settings.fmt))
    return TrackIdentity(job.key, job.size_bytes, job.mtime_ns, str(job.out_dir), outputs)


def run_batch(
    jobs: list[Job],
    pool: Pool,
    manifest: Manifest,
    run_id: str,
    fingerprint: Fingerprint,
    settings: SeparationSettings,
    reporter: Reporter,
    overwrite: bool = False,
) -> BatchSummary:
    """Feed ``jobs`` (in order) to ``pool``'s slots, record every outcome in ``manifest``, retry files whose worker
    was lost, and stop cleanly on ``KeyboardInterrupt`` (the summary then lists what was left)."""
    summary = BatchSummary()
    queue = deque(jobs)
    free = deque(range(pool.num_slots))
    busy: dict[int, Job] = {}
    start = last_beat = time.monotonic()
    try:
        while queue or busy:
            while free and queue:
                job = queue.popleft()
                slot = free[0]
                claim = manifest.claim(identity(job, settings), fingerprint, run_id, pool.worker(slot), redo=overwrite)
                if claim is None:
                    summary.elsewhere.append(job)
                    reporter.elsewhere(job)
                    continue
                free.popleft()
                busy[slot] = job
                job.attempts += 1
                pool.submit(slot, job, overwrite=overwrite or claim == "ours")
            for slot, result in pool.wait(HEARTBEAT_S):
                job = busy.pop(slot)
                free.append(slot)
                if isinstance(result, WorkerLost):
                    if job.attempts < MAX_ATTEMPTS:
                        summary.retries += 1
                        reporter.retrying(job, result.reason)
                        queue.appendleft(job)
                        continue
                    result = Outcome(job.key, False, error=f"{job.input}: {result.reason}, {job.attempts} times")
                if result.ok:
                    manifest.record_done(
                        job.key, result.outputs, result.duration_s, result.elapsed_s, result.num_clipped, result.worker
                    )
                    summary.done.append((job, result))
                else:
                    manifest.record_failed(job.key, result.error, result.elapsed_s, result.worker or None)
                    summary.failed.append((job, result.error))
                reporter.finished(job, result)
            if time.monotonic() - last_beat > HEARTBEAT_S:
                manifest.heartbeat(run_id)
                last_beat = time.monotonic()
    except KeyboardInterrupt:
        summary.interrupted = True
        pool.stop(abort=True)
        summary.left_running = list(busy.values())
        summary.left_pending = list(queue)
        manifest.record_left([j.key for j in busy.values()], "interrupted", "interrupted (Ctrl-C) mid-file")
        manifest.record_left([j.key for j in queue], "pending", "not started: the run was interrupted")
    except Exception as exc:  # the pool itself failed (a Ray worker that never came back): record, stop, re-raise
        pool.stop(abort=True)
        manifest.record_left([j.key for j in busy.values()], "interrupted", f"the run stopped: {exc}")
        manifest.record_left([j.key for j in queue], "pending", f"not started: the run stopped: {exc}")
        raise
    else:
        pool.stop(abort=False)
    finally:
        manifest.finish_run(run_id)
        summary.wall_s = time.monotonic() - start
    return summary
