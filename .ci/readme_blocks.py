"""Print the commands of the README's code blocks marked for CI, one command a line.

    python3 .ci/readme_blocks.py install      # the block after <!-- ci: install --> (the two set-up commands)
    python3 .ci/readme_blocks.py run          # every block after <!-- ci: run --> (examples CI runs)

A marker is an HTML comment on the line before a fenced block. Comment lines are dropped, a line ending in a
backslash continues on the next, and a trailing "# ..." comment is kept (bash ignores it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^<!-- ci: (?P<kind>[a-z-]+) -->\n```(?:sh|bash|console)?\n(?P<body>.*?)^```", re.M | re.S)


def blocks(kind: str, text: str | None = None) -> list[list[str]]:
    """The marked blocks of ``kind``, each as its list of commands."""
    text = README.read_text() if text is None else text
    found = []
    for match in BLOCK.finditer(text):
        if match["kind"] != kind:
            continue
        commands, pending = [], ""
        for line in match["body"].splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            commands.append(pending + line)
            pending = ""
        found.append(commands)
    return found


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for block in blocks(sys.argv[1]):
        print("\n".join(block))
