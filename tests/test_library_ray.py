"""`stembridge separate --ray` on a local Ray instance of 2 workers: a worker killed mid-file costs only that file,
every file is done exactly once, and the stems equal the single-process stems bit for bit. One Ray session for the
module (starting Ray takes seconds). Skipped where Ray (the `cluster` extra) is not installed."""

from __future__ import annotations

import os
import signal
import time

import pytest
from click.testing import CliRunner
from library_tree import CORRUPT, GOOD, LONG, leftovers, make_library, output_bytes, row_for, rows, wait_running
from stembridge.bridge.cli import main

ray = pytest.importorskip(
    "ray", reason="Ray is the optional extra stembridge[cluster]; pip install 'stembridge[cluster]'"
)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def separate(*args):
    return CliRunner().invoke(main, ["separate", *map(str, args)])


def test_ray_loses_only_the_file_of_a_killed_worker(ray_session, tmp_path, tiny_model):
    import threading

    library = make_library(tmp_path / "lib")
    ref = separate(library, "-o", tmp_path / "ref", "--model", tiny_model)
    assert ref.exit_code == 1, ref.output  # the corrupt file
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
    result = separate(library, "-o", out, "--model", tiny_model, "--ray")
    killer.join()
    assert result.exit_code == 1, result.output
    assert killed, "the long file finished before the worker could be killed"
    assert f"retrying {target.resolve()}: Ray worker" in result.output and f":{killed[0]} died" in result.output
    recorded = rows(out)
    assert recorded[str(target.resolve())]["attempts"] == 2, result.output
    for rel in GOOD + LONG:  # each done exactly once
        assert recorded[str((library / rel).resolve())]["status"] == "done"
        assert result.output.count(f"{(library / rel).resolve()}: 4 stems ->") == 1
    bad = recorded[str((library / CORRUPT).resolve())]
    assert bad["status"] == "failed" and "cannot decode audio" in bad["error"]
    assert output_bytes(out) == output_bytes(tmp_path / "ref")
    assert leftovers(out) == []

    again = separate(library, "-o", out, "--model", tiny_model, "--ray")  # a second run: nothing left but the bad file
    assert f"skipped: {len(GOOD + LONG)} file(s) done already" in again.output


def test_ray_address_that_is_a_path_gets_a_clear_error(tmp_path, tiny_model):
    (tmp_path / "lib").mkdir()
    result = separate("-o", tmp_path / "out", "--model", tiny_model, "--ray", tmp_path / "lib")
    assert result.exit_code == 2 and "write --ray=ADDRESS" in result.output
