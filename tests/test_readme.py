"""The README cannot go stale: every code block marked ``<!-- ci: run -->`` runs here and must succeed, and the
set-up block (``<!-- ci: install -->``) holds the two commands CI runs as written (.ci/run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _readme_blocks():
    spec = importlib.util.spec_from_file_location("readme_blocks", REPO / ".ci" / "readme_blocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_blocks = _readme_blocks()
RUN_BLOCKS = readme_blocks.blocks("run")


def test_the_readme_starts_with_its_two_set_up_commands_and_marks_examples_to_run():
    install = readme_blocks.blocks("install")
    assert len(install) == 1 and len(install[0]) == 2
    assert README.read_text().index("<!-- ci: install -->") < README.read_text().index(
        "## "
    )  # first, before any section
    assert len(RUN_BLOCKS) >= 4


def test_the_block_parser_joins_continuations_and_drops_comments():
    text = "<!-- ci: run -->\n```sh\n# a comment\nstembridge a \\\n  --b   # keep\n\nstembridge c\n```\n"
    assert readme_blocks.blocks("run", text) == [["stembridge a   --b   # keep", "stembridge c"]]
    assert readme_blocks.blocks("install", text) == []


def _shipped_preset_names() -> set[str]:
    return {p.stem for p in (REPO / "presets").rglob("*.toml")}


# what a user would look for after a block, beyond its exit status (keyed by the block's first command)
EXPECTED = {
    "stembridge separate tests/fixtures/demo_mix.flac": lambda cwd, out: (
        (cwd / "stems" / "demo_mix" / "vocals.wav").exists() and (cwd / "karaoke" / "demo_mix" / "vocals.flac").exists()
    ),
    "stembridge presets list": lambda cwd, out: all(name in out for name in _shipped_preset_names()),
    "stembridge live --backend dummy": lambda cwd, out: (cwd / "rehearsal.wav").stat().st_size > 44100 * 10 * 2,
}


@pytest.mark.parametrize("commands", RUN_BLOCKS, ids=[block[0][:60] for block in RUN_BLOCKS])
def test_readme_example_runs(commands, tmp_path):
    # as a user runs it: from a folder holding the repository's tests/ (the demo mix), with stembridge on PATH
    (tmp_path / "tests").symlink_to(REPO / "tests")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(HOME=str(tmp_path), STEMBRIDGE_PRESETS=str(tmp_path / "presets"), STEMBRIDGE_CACHE=str(tmp_path / "c"))
    output = ""
    for command in commands:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, f"README example failed: {command}\n{proc.stdout}\n{proc.stderr}"
        output += proc.stdout
    for prefix, check in EXPECTED.items():
        if commands[0].startswith(prefix):
            assert check(tmp_path, output), f"README example ran but did not do what the README says: {commands}"
