"""The batch's worker pool on Ray: one actor per slot, each holding the separator (the model is loaded once per
actor), running the same ``engine.batch.run_job`` as every other path.

Only ``stembridge separate --ray`` imports this module; Ray is the optional extra ``stembridge[cluster]``. The
driver (the process running ``separate``) keeps the manifest; actors only read inputs and write stems, by the same
absolute paths, so every node must see the library and the output folder at the same place (shared storage).

An actor whose process dies (kill -9, out of memory, a node lost) is restarted by Ray (``max_restarts=-1``); the calls
it was running fail with a ``RayActorError`` and those files go back to the coordinator for another try.

With ``settings.batch_files`` K > 1 an actor is a threaded actor (``max_concurrency=K``) holding K separators that
share one ``engine.batching.BatchingSession`` per model: K files at once, their model calls batched. It is K slots of
the pool; by default the pool starts one actor per K CPUs of the cluster (each reserves one CPU and one share of the
GPUs).
"""

from __future__ import annotations

import logging
import queue
import time

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from stembridge.engine.batch import Outcome, SeparationSettings, WorkerLost, run_job, sweep_partials, worker_name
from stembridge.engine.library import Job


class SeparationActor:
    """A Ray actor (made remote by ``RayPool``): builds the separator once (``settings.batch_files`` of them, sharing
    their model sessions, for as many concurrent calls), then separates one file per call."""

    def __init__(self, settings: SeparationSettings) -> None:
        self.settings = settings
        separators = settings.make_separators(settings.batch_files or 1)
        self.separator = separators[0]
        self._free: queue.SimpleQueue = queue.SimpleQueue()  # the separators no call is using
        for s in separators:
            self._free.put(s)
        self._threaded = len(separators) > 1

    def where(self) -> str:
        """``host:pid`` of the actor's worker process."""
        return worker_name()

    def model_sha256(self) -> str:
        """SHA-256 of the model graphs this actor loaded (the driver checks every node runs the same models)."""
        return self.settings.fingerprint(self.separator).model_sha256

    def run(self, job: Job, overwrite: bool) -> Outcome:
        if not self._threaded:
            return run_job(self.separator, self.settings, job, overwrite)
        separator = self._free.get()
        try:  # a threaded actor's call is not interrupted by ray.cancel: it checks the flag as it goes
            return run_job(separator, self.settings, job, overwrite, _raise_if_cancelled)
        except KeyboardInterrupt:  # cancelled: the stem writer discarded its temporaries
            return Outcome(job.key, False, error=f"{job.input}: cancelled", worker=worker_name())
        finally:
            self._free.put(separator)


def _raise_if_cancelled(frames: int) -> None:
    """The progress callback of a threaded actor's file: ``KeyboardInterrupt`` once Ray has cancelled the call."""
    if ray.get_runtime_context().is_canceled():
        raise KeyboardInterrupt


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` ("auto", "HOST:PORT", "ray://HOST:10001"), or with None the one this
    machine knows of (``RAY_ADDRESS``, a ``ray start`` here) or else a new local instance. Returns whether this call
    connected (and so should disconnect at the end); an existing connection of this process is reused."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    return True


class RayPool:
    """``num_workers`` actors (default: one per CPU of the cluster, or per ``settings.batch_files`` CPUs), each
    ``settings.batch_files`` jobs at a time (slot ``s`` is actor ``s % num_workers``)."""

    def __init__(
        self,
        settings: SeparationSettings,
        address: str | None,
        num_workers: int | None = None,
        max_workers: int | None = None,
        model_sha256: str | None = None,
    ) -> None:
        """``max_workers``: at most this many actors (the number of files); ``model_sha256``: refuse workers whose
        model file differs (an install of another version on some node)."""
        self._owns_connection = connect(address)
        self.settings = settings
        files_each = settings.batch_files or 1
        if num_workers is None:
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // files_each)
        if max_workers is not None:
            num_workers = max(1, min(num_workers, -(-max_workers // files_each)))
        self.num_workers = num_workers
        self.num_slots = num_workers * files_each
        num_gpus = 0.0
        if settings.device == "cuda":  # share the cluster's GPUs out evenly, at most one per actor
            total_gpus = ray.cluster_resources().get("GPU", 0)
            if not total_gpus:
                raise RuntimeError("--device cuda was asked for, but the Ray cluster has no GPU")
            num_gpus = min(1.0, total_gpus / num_workers)
        actor_class = ray.remote(
            num_cpus=1, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0, max_concurrency=files_each
        )(SeparationActor)
        self.actors = [actor_class.remote(settings) for _ in range(num_workers)]
        self._running: dict[ray.ObjectRef, tuple[int, Job, str]] = {}  # slot, job, its actor's host:pid then
        try:
            self._where = ray.get([a.where.remote() for a in self.actors])
            models = ray.get([a.model_sha256.remote() for a in self.actors]) if model_sha256 else []
        except RayError as exc:  # the model would not load on a worker: say why, once
            self._where = ["?:0"] * num_workers
            self.stop(abort=True)
            raise RuntimeError(f"a Ray worker cannot build the separator: {getattr(exc, 'cause', exc)}") from exc
        wrong = [w for w, m in zip(self._where, models, strict=False) if m != model_sha256]
        if wrong:
            self.stop(abort=True)
            raise RuntimeError(
                f"Ray worker(s) {', '.join(wrong)} load another model file than this machine (sha256 differs): "
                "install the same stembridge on every node"
            )

    def worker(self, slot: int) -> str:
        return self._where[slot % self.num_workers]

    def submit(self, slot: int, job: Job, overwrite: bool) -> None:
        actor = slot % self.num_workers
        self._running[self.actors[actor].run.remote(job, overwrite)] = (slot, job, self._where[actor])

    def wait(self, timeout: float) -> list[tuple[int, Outcome | WorkerLost]]:
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:  # take everything else that is ready too
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        events: list[tuple[int, Outcome | WorkerLost]] = []
        for ref in ready:
            slot, job, dead = self._running.pop(ref)
            try:
                events.append((slot, ray.get(ref)))
            except RayTaskError as exc:  # run_job returns failures; this is Ray failing to run it at all
                events.append((slot, Outcome(job.key, False, error=f"{job.input}: {exc.cause!r}")))
            except RayError as exc:
                actor = slot % self.num_workers
                sweep_partials(job, int(dead.rsplit(":", 1)[1]))
                if self._where[actor] == dead:  # not yet seen back (by another of its files lost with it)
                    self._where[actor] = self._restarted(actor)
                events.append((slot, WorkerLost(f"Ray worker {dead} died ({type(exc).__name__})")))
        return events

    def _restarted(self, actor: int, timeout_s: float = 300.0) -> str:
        """Wait until actor number ``actor`` is back (Ray restarts it in a new process) and return its
        ``host:pid``. Calls made while it restarts can fail as unavailable: ask again until it answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(self.actors[actor].where.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except (RayError, GetTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a Ray worker did not come back within {timeout_s:.0f} s: {exc}") from exc
                time.sleep(0.5)

    def stop(self, abort: bool) -> None:
        if abort:
            for ref in self._running:
                ray.cancel(ref)  # a KeyboardInterrupt in the actor's call: the stem writer discards its temporaries
            if self._running:
                ray.wait(list(self._running), num_returns=len(self._running), timeout=10)
            for _, job, where in self._running.values():
                sweep_partials(job, int(where.rsplit(":", 1)[1]))
            self._running.clear()
        for actor in self.actors:
            ray.kill(actor)
        if self._owns_connection:
            ray.shutdown()
