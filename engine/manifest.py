"""The library manifest: one SQLite database (WAL mode) beside the outputs that says what became of every track.

A row per input track holds what identifies the work (input size and mtime, the model's name and the SHA-256 of its
graph and card, the output format, stems and settings), where its stems went, its status (``pending``, ``running``,
``done``, ``failed``, ``interrupted``), the error of a failure, attempts and timings. A second run over the same
library skips a track whose row is ``done`` for the same input and settings and whose outputs are all there, and
redoes everything else.

Several processes may write at once (two ``separate`` runs on one output folder): every change is one short
``BEGIN IMMEDIATE`` transaction, so SQLite serialises them, and WAL lets readers go on meanwhile. A track is
*claimed* before it is separated; a claim held by another live run (its heartbeat is recent and, on this host, its
process exists) is respected, so two runs share a library instead of doing it twice. A run that died leaves claims
that the next run takes over.

SQLite's WAL needs every process that opens the database on one host: on a cluster only the driver (the process that
runs ``stembridge separate``) opens it; the workers never do.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "stembridge-manifest.sqlite"
SCHEMA_VERSION = 1
LEASE_S = 120.0  # a run whose heartbeat is older than this is taken for dead
PLAN_CHUNK = 500  # tracks per transaction when a run marks its work
STATUSES = ("pending", "running", "done", "failed", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, command TEXT,
    started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, finished_at REAL
);
CREATE TABLE IF NOT EXISTS tracks (
    input TEXT PRIMARY KEY,
    size_bytes INTEGER, mtime_ns INTEGER, duration_s REAL,
    model_name TEXT, model_sha256 TEXT, card_schema_version INTEGER, card_sha256 TEXT,
    output_format TEXT, settings TEXT,
    out_dir TEXT, outputs TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'interrupted')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    ours INTEGER NOT NULL DEFAULT 0,
    run_id TEXT, worker TEXT,
    started_at REAL, finished_at REAL, elapsed_s REAL, num_clipped INTEGER
);
CREATE INDEX IF NOT EXISTS tracks_status ON tracks (status);
"""


@dataclass(frozen=True)
class Fingerprint:
    """What a track's outputs depend on besides the input: the model and the output settings."""

    model_name: str
    model_sha256: str
    card_schema_version: int
    card_sha256: str
    output_format: str
    settings: str  # JSON of the rest (stems, spatial filter, ...), sorted keys


@dataclass(frozen=True)
class TrackIdentity:
    """What a manifest row is checked against: the input file as it is now, and where its outputs go."""

    key: str
    size_bytes: int | None
    mtime_ns: int | None
    out_dir: str
    outputs: tuple[str, ...]


OPEN_RETRY_S = 30.0  # how long opening retries a manifest another process is setting up


class ManifestError(RuntimeError):
    """The manifest cannot be opened or is not a stembridge manifest."""


class Manifest:
    """A connection to ``<out_dir>/stembridge-manifest.sqlite``; one per process, used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = socket.gethostname()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Switching a new database to WAL while another process does the same can answer "database is locked" at
        # once, without waiting on the busy timeout (SQLite takes no busy handler there): retry the opening for a
        # while, as a second run starting beside the first must.
        deadline = time.monotonic() + OPEN_RETRY_S
        while True:
            try:
                mode = self._open(path)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise ManifestError(f"{path}: cannot open the manifest ({exc})") from exc
                if getattr(self, "_db", None) is not None:
                    self._db.close()
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                raise ManifestError(f"{path}: cannot open the manifest ({exc})") from exc
        if mode.lower() != "wal":
            raise ManifestError(
                f"{path}: SQLite refused WAL mode here (got {mode!r}); is the folder on a network filesystem?"
            )

    def _open(self, path: Path) -> str:
        """Connect, set WAL mode and make sure of the schema; returns the journal mode SQLite gave."""
        self._db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 60000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise ManifestError(
                    f"{path}: manifest schema version {row[0]}, this stembridge writes {SCHEMA_VERSION}"
                )
        return mode

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``): concurrent writers queue on the lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # runs ---------------------------------------------------------------------------------------------------------

    def start_run(self, command: str = "") -> str:
        run_id = uuid.uuid4().hex
        now = time.time()
        with self._transaction():
            self._db.execute(
                "INSERT INTO runs (run_id, host, pid, command, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, self.host, os.getpid(), command, now, now),
            )
        return run_id

    def heartbeat(self, run_id: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", (time.time(), run_id))

    def finish_run(self, run_id: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET finished_at = ?, heartbeat_at = ? WHERE run_id = ?", (time.time(),) * 2 + (run_id,)
            )

    def _run_alive(self, run_id: str | None, me: str) -> bool:
        if run_id is None:
            return False
        if run_id == me:
            return True
        row = self._db.execute(
            "SELECT host, pid, heartbeat_at, finished_at FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None or row[3] is not None or time.time() - row[2] > LEASE_S:
            return False
        host, pid = row[0], row[1]
        if host == self.host:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    # tracks -------------------------------------------------------------------------------------------------------

    def _is_current(self, row: sqlite3.Row | tuple, track: TrackIdentity, fp: Fingerprint) -> bool:
        """A done row for this very input, model and settings, whose outputs all exist."""
        status, size, mtime, model_sha, card_sha, fmt, settings, out_dir, outputs = row
        return (
            status == "done"
            and (size, mtime) == (track.size_bytes, track.mtime_ns)
            and (model_sha, card_sha, fmt, settings) == (fp.model_sha256, fp.card_sha256, fp.output_format, fp.settings)
            and out_dir == track.out_dir
            and outputs is not None
            and all(Path(p).exists() for p in json.loads(outputs))
        )

    _CURRENT_COLUMNS = (
        "status, size_bytes, mtime_ns, model_sha256, card_sha256, output_format, settings, out_dir, outputs"
    )

    def plan(self, tracks: Iterable[TrackIdentity], fp: Fingerprint, run_id: str, redo: bool = False) -> set[str]:
        """Mark every track that needs work ``pending`` (``redo``: all of them) and return the keys of those that
        are done already. Tracks a live run is working on are left alone (and not returned). Written in chunks of
        ``PLAN_CHUNK`` tracks per transaction, so another run is never kept waiting for a whole library."""
        done: set[str] = set()
        tracks = list(tracks)
        for start in range(0, len(tracks), PLAN_CHUNK):
            with self._transaction():
                for track in tracks[start : start + PLAN_CHUNK]:
                    if self._plan_one(track, fp, run_id, redo):
                        done.add(track.key)
        return done

    def _plan_one(self, track: TrackIdentity, fp: Fingerprint, run_id: str, redo: bool) -> bool:
        row = self._db.execute(
            f"SELECT {self._CURRENT_COLUMNS}, run_id FROM tracks WHERE input = ?", (track.key,)
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO tracks (input, size_bytes, mtime_ns, out_dir, status) VALUES (?, ?, ?, ?, 'pending')",
                (track.key, track.size_bytes, track.mtime_ns, track.out_dir),
            )
            return False
        if row[0] == "running" and self._run_alive(row[9], run_id):
            return False
        if not redo and self._is_current(row[:9], track, fp):
            return True
        self._db.execute("UPDATE tracks SET status = 'pending' WHERE input = ?", (track.key,))
        return False

    def claim(self, track: TrackIdentity, fp: Fingerprint, run_id: str, worker: str, redo: bool = False) -> str | None:
        """Take ``track`` for this run. Returns None and changes nothing when it is done already (for these settings)
        or another live run holds it; else ``"ours"`` when any existing outputs were written by stembridge for this
        track (they may be replaced), ``"clean"`` otherwise."""
        now = time.time()
        with self._transaction():
            row = self._db.execute(
                f"SELECT {self._CURRENT_COLUMNS}, run_id, ours FROM tracks WHERE input = ?", (track.key,)
            ).fetchone()
            if row is not None:
                if row[0] == "running" and row[9] != run_id and self._run_alive(row[9], run_id):
                    return None
                if not redo and self._is_current(row[:9], track, fp):
                    return None
            existing = any(Path(p).exists() for p in track.outputs)
            ours = (row is not None and (bool(row[10]) or row[0] == "done")) or not existing
            self._db.execute(
                """INSERT INTO tracks (input, status) VALUES (?, 'running')
                   ON CONFLICT (input) DO UPDATE SET status = 'running'""",
                (track.key,),
            )
            self._db.execute(
                """UPDATE tracks SET size_bytes = ?, mtime_ns = ?, model_name = ?, model_sha256 = ?,
                       card_schema_version = ?, card_sha256 = ?, output_format = ?, settings = ?, out_dir = ?,
                       outputs = NULL, error = NULL, attempts = attempts + 1, ours = ?, run_id = ?, worker = ?,
                       started_at = ?, finished_at = NULL, elapsed_s = NULL, num_clipped = NULL
                   WHERE input = ?""",
                (
                    track.size_bytes,
                    track.mtime_ns,
                    fp.model_name,
                    fp.model_sha256,
                    fp.card_schema_version,
                    fp.card_sha256,
                    fp.output_format,
                    fp.settings,
                    track.out_dir,
                    int(ours),
                    run_id,
                    worker,
                    now,
                    track.key,
                ),
            )
        return "ours" if ours and existing else "clean"

    def set_worker(self, key: str, worker: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE tracks SET worker = ? WHERE input = ?", (worker, key))

    def record_done(
        self, key: str, outputs: list[str], duration_s: float, elapsed_s: float, num_clipped: int, worker: str
    ) -> None:
        with self._transaction():
            self._db.execute(
                """UPDATE tracks SET status = 'done', outputs = ?, duration_s = ?, elapsed_s = ?, num_clipped = ?,
                       error = NULL, ours = 1, worker = ?, finished_at = ? WHERE input = ?""",
                (json.dumps(outputs), duration_s, elapsed_s, num_clipped, worker, time.time(), key),
            )

    def record_failed(self, key: str, error: str, elapsed_s: float | None = None, worker: str | None = None) -> None:
        """A failure of ``key``'s track (also one that never got as far as a claim, such as a name collision)."""
        with self._transaction():
            self._db.execute(
                """INSERT INTO tracks (input, status, error) VALUES (?, 'failed', ?)
                   ON CONFLICT (input) DO UPDATE SET status = 'failed', error = excluded.error""",
                (key, error),
            )
            self._db.execute(
                "UPDATE tracks SET elapsed_s = ?, worker = COALESCE(?, worker), finished_at = ? WHERE input = ?",
                (elapsed_s, worker, time.time(), key),
            )

    def record_left(self, keys: Iterable[str], status: str, reason: str) -> None:
        """Tracks this run did not finish: ``interrupted`` (it was working on them) or ``pending`` (never started)."""
        if status not in ("pending", "interrupted"):
            raise ValueError(f"status {status!r} is not one a run leaves behind")
        with self._transaction():
            self._db.executemany(
                "UPDATE tracks SET status = ?, error = ?, finished_at = ? WHERE input = ?",
                [(status, reason, time.time(), k) for k in keys],
            )

    def rows(self) -> list[dict]:
        """Every track row as a dict (for reports and tests)."""
        cursor = self._db.execute("SELECT * FROM tracks ORDER BY input")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM tracks GROUP BY status"):
            counts[status] = n
        return counts
