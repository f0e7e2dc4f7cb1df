"""Check a built stembridge wheel: one top-level package, every committed data file inside it, within the budget.

    python3 .ci/check_wheel.py dist/stembridge-*.whl

Fails (exit 1) when the wheel puts anything but ``stembridge`` into site-packages, when a committed model, card,
checkpoint or preset (git ls-files) is missing from it, or when it is larger than BUDGET_MB (see the README's
"Wheel size": the causal default model 3 MB, its training checkpoint 3 MB, the high-quality vocal model 20 MB).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 60.0
# committed files that must ship: repository path pattern -> path inside the package
SHIPPED = {
    "engine/models/**/*.onnx": ("engine/", "stembridge/engine/"),
    "engine/models/**/*.json": ("engine/", "stembridge/engine/"),
    "engine/models/checkpoint/*.pt": ("engine/", "stembridge/engine/"),
    "presets/**/*.toml": ("presets/", "stembridge/presets/"),
}


def committed(pattern: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", f":(glob){pattern}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def main(wheel: str) -> int:
    names = set(zipfile.ZipFile(wheel).namelist())
    problems = []
    tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))})
    if tops != ["stembridge"]:
        problems.append(f"top-level entries besides stembridge: {', '.join(t for t in tops if t != 'stembridge')}")
    num_files = 0
    for pattern, (prefix, inside) in SHIPPED.items():
        for path in committed(pattern):
            num_files += 1
            if inside + path.removeprefix(prefix) not in names:
                problems.append(f"{path} is committed but not in the wheel (package-data in pyproject.toml)")
    for package in ("engine", "bridge"):
        for path in committed(f"{package}/**/*.py"):
            if f"stembridge/{path}" not in names:
                problems.append(f"{path} is not in the wheel (a subpackage missing from [tool.setuptools] packages?)")
    if (ROOT / "NOTICE").exists() and not any(n.endswith(".dist-info/licenses/NOTICE") for n in names):
        problems.append("NOTICE (the third-party licences of the shipped weights) is not in the wheel's dist-info")
    size_mb = Path(wheel).stat().st_size / 1e6
    print(f"{Path(wheel).name}: {size_mb:.1f} MB (budget {BUDGET_MB:.0f} MB), {len(names)} files; "
          f"{num_files} committed models, cards, checkpoints and presets checked")  # fmt: skip
    if size_mb > BUDGET_MB:
        problems.append(f"the wheel is {size_mb:.1f} MB, over the {BUDGET_MB:.0f} MB budget (see the README)")
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
