"""Packaging checks that need no network: the dependency markers per platform (what .ci/check_platforms.py then
resolves), and .ci/check_wheel.py's verdicts on wheels with a file missing or a stray top-level package."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runtime_for(env_overrides: dict[str, str], python_version: str = "3.11") -> list[str]:
    platforms = load("check_platforms")
    pyproject = (REPO / "pyproject.toml").read_text()
    deps = platforms.tomllib.loads(pyproject)["project"]["dependencies"]
    env = {**platforms.default_environment(), **env_overrides, "python_version": python_version}
    return [r for r in platforms.requirements_for(deps, env) if r.startswith(("onnxruntime", "tomli"))]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("linux x86_64", ["onnxruntime-gpu>=1.17"]),
        ("windows amd64", ["onnxruntime-gpu>=1.17"]),
        ("macOS arm64", ["onnxruntime>=1.17"]),
        ("macOS x86_64", ["onnxruntime>=1.17"]),
    ],
)
def test_each_platform_gets_exactly_one_onnx_runtime(target, expected):
    assert runtime_for(load("check_platforms").TARGETS[target][1]) == expected


def test_arm_linux_gets_the_cpu_runtime_and_python_3_10_gets_tomli():
    arm = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"}
    assert runtime_for(arm) == ["onnxruntime>=1.17"]
    assert runtime_for(arm, "3.10") == ["onnxruntime>=1.17", "tomli>=2"]


@pytest.fixture
def good_wheel(tmp_path):
    """A wheel-shaped zip holding every committed package file, as `pip wheel .` makes it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (check_wheel lists committed files with git ls-files)")
    files = subprocess.run(["git", "ls-files", "engine", "bridge", "presets"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    path = tmp_path / "stembridge-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.writestr(f"stembridge/{f}", b"")
        z.writestr("stembridge-0.1.0.dist-info/METADATA", b"")
        z.writestr("stembridge-0.1.0.dist-info/licenses/NOTICE", b"")
    return path, files


def rewrite(path: Path, drop: str = "", add: str = "") -> Path:
    out = path.with_name("x-" + path.name)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name != drop:
                dst.writestr(name, b"")
        if add:
            dst.writestr(add, b"")
    return out


def test_check_wheel_passes_a_whole_wheel_and_names_what_is_missing_or_stray(good_wheel, capsys):
    check = load("check_wheel")
    path, files = good_wheel
    assert check.main(str(path)) == 0
    preset = next(f for f in files if f.startswith("presets/scenes/"))
    assert check.main(str(rewrite(path, drop=f"stembridge/{preset}"))) == 1
    assert f"{preset} is committed but not in the wheel" in capsys.readouterr().out
    assert check.main(str(rewrite(path, add="engine/__init__.py"))) == 1
    assert "top-level entries besides stembridge: engine" in capsys.readouterr().out
    if (REPO / "NOTICE").exists():
        assert check.main(str(rewrite(path, drop="stembridge-0.1.0.dist-info/licenses/NOTICE"))) == 1
        assert "NOTICE" in capsys.readouterr().out


def test_check_platforms_runs_as_a_script_with_its_help():
    proc = subprocess.run([sys.executable, str(REPO / ".ci" / "check_platforms.py"), "--help"], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0 and "--python-version" in proc.stdout
