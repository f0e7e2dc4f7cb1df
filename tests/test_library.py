"""`stembridge separate` over a library: the folder walk and mirrored tree, the manifest (skip, retry, redo, two
writers at once), the disk-space check, `--jobs 2` and `--ray` (a local Ray instance of 2 workers, skipped where Ray,
the `cluster` extra, is absent) each with a worker killed mid-file and stems bit-identical to the single-process
ones, and Ctrl-C then resume."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_MODEL
from library_tree import (
    CORRUPT,
    GOOD,
    LONG,
    cli_process,
    interrupt,
    leftovers,
    make_library,
    output_bytes,
    row_for,
    rows,
    separate,
    stem_dirs,
    wait_model_loaded,
    wait_running,
)
from stembridge.engine.manifest import Fingerprint, Manifest, TrackIdentity

STEMS = ("vocals", "drums", "bass", "other")
LIVE = ("--mode", "live", "--model", TINY_MODEL)  # the fixture model through the causal path: fast


def expected_dirs(out):
    return sorted(out / os.path.splitext(rel)[0] for rel in GOOD + LONG)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="module")
def reference(library, tmp_path_factory):
    """The library separated by the plain single-process path: (CLI result, out folder, stem bytes)."""
    out = tmp_path_factory.mktemp("reference")
    result = separate(library, "-o", out, *LIVE)
    return result, out, output_bytes(out)


def test_a_folder_is_walked_mirrored_and_recorded(library, reference):
    result, out, stems = reference
    assert result.exit_code == 1, result.output  # the corrupt file fails alone
    assert "writing 24-bit FLAC" in result.output and "groove.mid" not in result.output
    assert "1 .mid file(s) left out" in result.output
    assert stem_dirs(out) == expected_dirs(out)
    assert len(stems) == 4 * len(GOOD + LONG)
    mono = sf.info(out / "a/b/mono/vocals.flac")
    assert (mono.channels, mono.samplerate, mono.format) == (1, 44100, "FLAC")
    assert sf.info(out / "c/rate48k/bass.flac").samplerate == 48000
    recorded = rows(out)
    bad = recorded[str((library / CORRUPT).resolve())]
    assert bad["status"] == "failed" and "cannot decode audio" in bad["error"]
    for rel in GOOD + LONG:
        row = recorded[str((library / rel).resolve())]
        assert row["status"] == "done" and row["attempts"] == 1 and row["error"] is None
        assert row["size_bytes"] == (library / rel).stat().st_size
        assert row["model_name"] == "tiny" and len(row["model_sha256"]) == 64 and row["output_format"] == "flac"
        assert row["duration_s"] > 1.0 and row["elapsed_s"] > 0
    assert "failed: 1 of 15 input(s)" in result.output and "corrupt.wav: cannot decode audio" in result.output


def test_a_second_run_skips_done_tracks_retries_failed_ones_and_redoes_changed_ones(tmp_path):
    lib = tmp_path / "lib"
    (lib / "x").mkdir(parents=True)
    noise = np.random.default_rng(0).standard_normal((22050, 2)).astype(np.float32) * 0.1
    for name in ("a.wav", "x/b.wav", "x/c.wav"):
        sf.write(lib / name, noise, 44100)
    (lib / "x" / "bad.wav").write_bytes(b"RIFF junk")
    sf.write(lib / "x" / "c.flac", noise, 44100)  # same output folder as x/c.wav
    out = tmp_path / "out"
    first = separate(lib, "-o", out, *LIVE, "--format", "wav")
    assert first.exit_code == 1
    assert "bad.wav: cannot decode audio" in first.output and "same name; outputs would collide" in first.output
    assert "writing 24-bit FLAC" not in first.output and (out / "x" / "b" / "vocals.wav").exists()

    sf.write(lib / "x" / "bad.wav", noise, 44100)  # the failed file is mended
    (lib / "x" / "c.wav").unlink()
    second = separate(lib, "-o", out, *LIVE, "--format", "wav")
    assert second.exit_code == 0, second.output
    assert "skipped: 3 file(s) done already" in second.output and "done: 1 file," in second.output
    recorded = rows(out)
    assert recorded[str((lib / "x" / "bad.wav").resolve())]["attempts"] == 2
    assert "outputs would collide" in recorded[str((lib / "x" / "c.wav").resolve())]["error"]

    before = (out / "a" / "drums.wav").read_bytes()
    sf.write(lib / "a.wav", -noise, 44100)  # a changed input is separated again, replacing its own stems
    third = separate(lib, "-o", out, *LIVE, "--format", "wav")
    assert third.exit_code == 0, third.output
    assert "done: 1 file," in third.output and "skipped: 3 file(s)" in third.output
    assert (out / "a" / "drums.wav").read_bytes() != before
    fourth = separate(lib, "-o", out, *LIVE, "--format", "wav", "--stems", "vocals,other")
    assert "done: 4 files," in fourth.output  # other settings: every track again


def test_a_library_too_big_for_the_disk_is_refused_with_the_figure(tmp_path, monkeypatch):
    from stembridge.bridge import cli_batch

    sf.write(tmp_path / "song.wav", np.zeros((441000, 2), np.float32), 44100)
    monkeypatch.setattr(cli_batch, "free_bytes", lambda out: 1_000_000)
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", *LIVE)
    assert result.exit_code == 1
    # 10 s, stereo, 4 stems, 24-bit WAV: 10.6 MB
    assert "not enough disk space" in result.output and "need about 10.6 MB" in result.output
    assert "has 1.0 MB free" in result.output
    assert not (tmp_path / "out" / "song").exists()


def test_jobs_2_loses_only_the_file_of_a_killed_worker(library, reference, tmp_path):
    _, _, want = reference
    out = tmp_path / "out"
    proc = cli_process("separate", library, "-o", out, *LIVE, "--jobs", "2")
    target = library / LONG[0]
    pid = wait_running(out, target, not_pid=proc.pid)
    wait_model_loaded(pid)
    assert row_for(out, target)["status"] == "running"
    os.kill(pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, log  # the corrupt file
    assert f"retrying {target.resolve()}: worker process {pid} died (killed by signal 9)" in log
    recorded = rows(out)
    assert recorded[str(target.resolve())]["attempts"] == 2
    for rel in GOOD + LONG:  # each done exactly once
        assert recorded[str((library / rel).resolve())]["status"] == "done"
        assert log.count(f"{(library / rel).resolve()}: 4 stems ->") == 1
    assert "retried after a lost worker" in log and "failed: 1 of 15" in log
    assert output_bytes(out) == want  # bit for bit the single-process stems
    assert leftovers(out) == []


def test_ctrl_c_stops_cleanly_and_the_next_run_finishes(tmp_path):
    # long tracks of their own (seconds each with the fixture model), so that the interrupt lands mid-file even
    # when a busy machine is slow to show the test that both workers are on them
    library = make_library(tmp_path / "library", long_s=90.0)
    assert separate(library, "-o", tmp_path / "reference", *LIVE).exit_code == 1  # the corrupt file
    want = output_bytes(tmp_path / "reference")
    out = tmp_path / "out"
    proc = cli_process("separate", library, "-o", out, *LIVE, "--jobs", "2")
    for rel in LONG:  # both workers on the two long tracks, past loading ONNX Runtime
        wait_model_loaded(wait_running(out, library / rel, not_pid=proc.pid))
    time.sleep(0.05)
    interrupt(proc)
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, log
    recorded = rows(out)
    statuses = {rel: recorded[str((library / rel).resolve())]["status"] for rel in GOOD + LONG}
    num_interrupted = list(statuses.values()).count("interrupted")
    assert num_interrupted >= 1 and {statuses[r] for r in LONG} <= {"interrupted", "done"}
    assert f"interrupted: {num_interrupted} file(s) stopped mid-way" in log and "run the same command again" in log
    assert set(statuses.values()) <= {"interrupted", "pending", "done"} and "pending" in statuses.values()
    assert leftovers(out) == []
    for d in out.rglob("*"):  # a track's folder has all of its stems or none
        if d.is_dir():
            present = {p.stem for p in d.glob("*.flac")}
            assert present in (set(), set(STEMS)), d
    num_done = list(statuses.values()).count("done")

    resumed = separate(library, "-o", out, *LIVE)
    assert resumed.exit_code == 1  # the corrupt file, again
    assert f"done: {len(GOOD + LONG) - num_done} files," in resumed.output
    if num_done:
        assert f"skipped: {num_done} file(s) done already" in resumed.output
    assert output_bytes(out) == want


def test_two_runs_at_once_share_the_library(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    noise = np.random.default_rng(1).standard_normal((44100, 2)).astype(np.float32) * 0.1
    names = [f"t{i}.wav" for i in range(8)]
    for name in names:
        sf.write(lib / name, noise, 44100)
    out = tmp_path / "out"
    procs = [cli_process("separate", lib, "-o", out, *LIVE) for _ in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    for name in names:  # each track separated by exactly one of the two runs
        assert sum(log.count(f"{(lib / name).resolve()}: 4 stems ->") for log in logs) == 1, logs
    db = sqlite3.connect(out / "stembridge-manifest.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT status, COUNT(*), SUM(attempts) FROM tracks GROUP BY status").fetchall() == [
        ("done", 8, 8)
    ]
    db.close()


def test_the_high_quality_path_runs_the_same_in_workers(tmp_path):
    """`separate`'s default (--mode hq) through two local workers: the stems equal the single-process ones, and
    the manifest names both models."""
    lib = tmp_path / "lib"
    (lib / "x").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ("a.wav", "x/b.wav"):
        sf.write(lib / name, (0.1 * rng.standard_normal((66150, 2))).astype(np.float32), 44100)
    one = separate(lib, "-o", tmp_path / "one", "--model", TINY_MODEL)
    two = separate(lib, "-o", tmp_path / "two", "--model", TINY_MODEL, "--jobs", "2")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert "look-ahead model hq_vocals" in two.output and "(hq mode)" in two.output
    assert output_bytes(tmp_path / "two") == output_bytes(tmp_path / "one") != {}
    recorded = rows(tmp_path / "two")
    assert {r["model_name"] for r in recorded.values()} == {"hq_vocals+hq_stems+tiny"}
    assert {r["worker"] for r in recorded.values()} != {f"{os.uname().nodename}:{os.getpid()}"}


def _hammer(path, name, count):
    fp = Fingerprint("m", "0" * 64, 1, "1" * 64, "flac", "{}")
    with Manifest(path) as manifest:
        run_id = manifest.start_run(name)
        for i in range(count):
            track = TrackIdentity(f"/{name}/{i}.wav", i, i, f"/out/{name}/{i}", ())
            manifest.plan([track], fp, run_id)
            assert manifest.claim(track, fp, run_id, name) == "clean"
            manifest.record_done(track.key, [], 1.0, 0.1, 0, name)
            manifest.heartbeat(run_id)
        manifest.finish_run(run_id)


def test_concurrent_manifest_writers_never_corrupt_it(tmp_path):
    path = tmp_path / "stembridge-manifest.sqlite"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_hammer, args=(path, name, 150)) for name in ("p1", "p2")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT status, COUNT(*), SUM(attempts) FROM tracks GROUP BY status").fetchall() == [
        ("done", 300, 300)
    ]
    assert db.execute("SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()[0] == 2
    db.close()


def test_a_track_held_by_a_live_run_is_left_to_it(tmp_path):
    fp = Fingerprint("m", "0" * 64, 1, "1" * 64, "flac", "{}")
    track = TrackIdentity("/lib/a.wav", 1, 1, str(tmp_path / "a"), (str(tmp_path / "a" / "vocals.flac"),))
    with Manifest(tmp_path / "m.sqlite") as first, Manifest(tmp_path / "m.sqlite") as second:
        run1, run2 = first.start_run(), second.start_run()
        assert first.claim(track, fp, run1, "w1") == "clean"
        assert second.claim(track, fp, run2, "w2") is None  # run1 is alive: not taken twice
        first.finish_run(run1)  # run1 ended (or died) without finishing it: the next run takes it over
        assert second.claim(track, fp, run2, "w2") == "clean"


def test_nothing_but_the_ray_pool_imports_ray():
    import subprocess
    import sys

    code = (
        "import sys, stembridge.bridge.cli, stembridge.bridge.cli_batch, stembridge.engine.live.engine, "
        "stembridge.engine.batch, stembridge.engine.library, stembridge.engine.manifest, stembridge.engine.separate; "
        "print('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance of 2 workers for the module (starting Ray takes seconds)."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra stembridge[cluster]")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_loses_only_the_file_of_a_killed_worker(ray_session, library, reference, tmp_path):
    _, _, want = reference
    out = tmp_path / "out"
    target = library / LONG[0]
    killed: list[int] = []

    def kill_one_worker() -> None:
        pid = wait_running(out, target, not_pid=os.getpid())
        time.sleep(0.05)
        if row_for(out, target)["status"] == "running":
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    result = separate(library, "-o", out, *LIVE, "--ray")  # joins the session above
    killer.join()
    assert result.exit_code == 1, result.output  # the corrupt file
    assert killed, "the long file finished before the worker could be killed"
    assert f"retrying {target.resolve()}: Ray worker" in result.output and f":{killed[0]} died" in result.output
    recorded = rows(out)
    assert recorded[str(target.resolve())]["attempts"] == 2, result.output
    for rel in GOOD + LONG:  # each done exactly once
        assert recorded[str((library / rel).resolve())]["status"] == "done"
        assert result.output.count(f"{(library / rel).resolve()}: 4 stems ->") == 1
    bad = recorded[str((library / CORRUPT).resolve())]
    assert bad["status"] == "failed" and "cannot decode audio" in bad["error"]
    assert output_bytes(out) == want  # bit for bit the single-process stems
    assert leftovers(out) == []


def test_a_ray_address_that_is_a_path_gets_a_clear_error(tmp_path):
    (tmp_path / "lib").mkdir()
    result = separate("-o", tmp_path / "out", *LIVE, "--ray", tmp_path / "lib")
    assert result.exit_code == 2 and "write --ray=ADDRESS" in result.output
