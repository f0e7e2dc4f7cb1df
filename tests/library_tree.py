"""A small music library for the batch tests: a folder tree of short files (stereo, mono, 48 kHz, FLAC), two longer
tracks that workers are killed or interrupted on, one corrupt file and one the walk must leave out."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

GOOD = [
    "a/one.wav",
    "a/two.flac",
    "a/b/three.wav",
    "a/b/four.wav",
    "a/b/mono.wav",
    "c/rate48k.wav",
    "c/six.wav",
    "c/d/seven.wav",
    "c/d/eight.flac",
    "nine.wav",
    "ten.wav",
    "eleven.wav",
]
LONG = ["long/first.wav", "long/second.wav"]  # largest first: these start first
CORRUPT = "c/corrupt.wav"
MANIFEST = "stembridge-manifest.sqlite"


def make_library(root: Path, long_s: float = 6.0) -> Path:
    """Writes the library under ``root`` and returns it; every file is ~2 s of seeded noise-and-tone audio."""
    rng = np.random.default_rng(31)
    for i, rel in enumerate(GOOD + LONG):
        rate = 48000 if "48k" in rel else 44100
        channels = 1 if "mono" in rel else 2
        seconds = long_s if rel in LONG else 1.5 + 0.1 * i
        t = np.arange(int(seconds * rate)) / rate
        x = 0.2 * np.sin(2 * np.pi * (110 + 20 * i) * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.astype(np.float32), rate, subtype="PCM_24")
    (root / CORRUPT).write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    (root / "c" / "groove.mid").write_bytes(b"MThd\x00\x00\x00\x06")  # music, but no audio to separate
    return root


def stem_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.rglob("vocals.flac"))


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every stem file under ``out`` by its relative path, as bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.flac"))}


def leftovers(out: Path) -> list[Path]:
    """Temporary or partial files anywhere under ``out``."""
    return [p for p in out.rglob("*") if p.name.endswith(".partial")]


def rows(out: Path) -> dict[str, dict]:
    """The manifest's rows by input path relative to the library (read-only, beside a live writer)."""
    db = sqlite3.connect(f"file:{out / MANIFEST}?mode=ro", uri=True, timeout=30)
    try:
        cursor = db.execute("SELECT * FROM tracks")
        names = [d[0] for d in cursor.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}
    finally:
        db.close()


def row_for(out: Path, path: Path) -> dict | None:
    if not (out / MANIFEST).exists():
        return None
    try:
        return rows(out).get(str(path.resolve()))
    except sqlite3.OperationalError:  # the schema is being created
        return None


def wait_running(out: Path, path: Path, not_pid: int | None, timeout_s: float = 60.0) -> int:
    """Wait until ``path`` is being separated; returns the worker's pid (not ``not_pid``, the coordinator)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = row_for(out, path)
        if row and row["status"] == "running" and row["worker"]:
            pid = int(row["worker"].rsplit(":", 1)[1])
            if pid != not_pid:
                return pid
        time.sleep(0.02)
    raise AssertionError(f"{path} never started")


def wait_model_loaded(pid: int, timeout_s: float = 60.0) -> None:
    """Wait until worker ``pid`` has ONNX Runtime loaded (it is building its session or separating): Linux /proc."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if "onnxruntime" in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} never loaded ONNX Runtime")


def cli_process(*args: str | Path) -> subprocess.Popen:
    """``stembridge`` in its own process group (as a terminal runs it), output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "stembridge.bridge.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
    os.killpg(proc.pid, signal.SIGINT)


def separate(*args: str | Path):
    """``stembridge separate`` in this process (click's test runner): its result, output and exit code."""
    from click.testing import CliRunner
    from stembridge.bridge.cli import main

    return CliRunner().invoke(main, ["separate", *map(str, args)])
