"""Check that `pip install stembridge` resolves to binary wheels on the platforms DJs use.

pip evaluates environment markers against the machine it runs on, even with --platform, so this script evaluates
each dependency's marker itself for every target (Linux x86-64, macOS arm64 and x86-64, Windows x86-64) and then
asks pip's resolver, in a dry run, for a wheel of each requirement that applies there (--no-deps: the direct
dependencies; their own wheels are their maintainers' matrix). A dry run reads wheel metadata only, so it is quick.

    python3 .ci/check_platforms.py [--python-version 3.11 ...]

Exit status 1 when a requirement has no wheel for a target. Needs `packaging` (pytest brings it) and network access
to the package index.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# name: (pip --platform tags, the marker environment of that platform)
TARGETS = {
    "linux x86_64": (
        ["manylinux_2_28_x86_64", "manylinux2014_x86_64"],
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
    ),
    "macOS arm64": (
        ["macosx_14_0_arm64"],
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"},
    ),
    "macOS x86_64": (
        ["macosx_14_0_x86_64"],
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64", "os_name": "posix"},
    ),
    "windows amd64": (
        ["win_amd64"],
        {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
    ),
}


def requirements_for(deps: list[str], env: dict[str, str]) -> list[str]:
    """The dependencies whose markers hold in ``env``, without their markers."""
    chosen = []
    for dep in deps:
        req = Requirement(dep)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            chosen.append(str(req))
    return chosen


def resolve(requirements: list[str], platforms: list[str], python_version: str) -> tuple[list[str], str]:
    """pip's dry run for these requirements on these platform tags -> (["name==version (wheel)"], error text)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--only-binary", ":all:", "--python-version", python_version,
               "--implementation", "cp", "--target", str(Path(tmp) / "target"), "--report", str(report)]  # fmt: skip
        for platform in platforms:
            cmd += ["--platform", platform]
        proc = subprocess.run(cmd + requirements, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-3:]
            return [], "\n".join(lines)
        found = []
        for item in json.loads(report.read_text())["install"]:
            wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
            found.append(f"{item['metadata']['name']}=={item['metadata']['version']} ({wheel})")
        return found, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", nargs="+", default=["3.11"], help="Python versions to check (3.11 ...)")
    args = parser.parse_args(argv)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    jobs = []
    for version in args.python_version:
        for name, (platforms, overrides) in TARGETS.items():
            env = {**default_environment(), **overrides, "python_version": version}
            env.update(python_full_version=version + ".0", implementation_name="cpython")
            env.update(platform_python_implementation="CPython")
            jobs.append((name, version, requirements_for(deps, env), platforms))
    with ThreadPoolExecutor(max_workers=4) as pool:  # one pip process per target, side by side
        results = list(pool.map(lambda job: resolve(job[2], job[3], job[1]), jobs))
    failed = []
    for (name, version, _requirements, _platforms), (found, error) in zip(jobs, results, strict=True):
        if error:
            failed.append(f"{name} (Python {version})")
            print(f"FAIL {name}, Python {version}: {error}")
        else:
            runtime = [f for f in found if f.startswith("onnxruntime")]
            print(f"ok   {name}, Python {version}: {len(found)} wheels, {', '.join(runtime)}")
    if failed:
        print(f"no wheel for: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
