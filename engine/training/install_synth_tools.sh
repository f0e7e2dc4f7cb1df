#!/bin/sh
# Tools for engine/training/synth.py (synthetic training songs). Debian 12 (bookworm), Python 3.11, as root.
# Exact steps that worked on this project's machines (from the stemgen prototype's install.sh, plus three voices).
set -e
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    mma fluidsynth musescore-general-soundfont fluid-soundfont-gm timgm6mb-soundfont avldrums.lv2-soundfont \
    festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k festvox-itapc16k sox \
    csound-soundfont festvox-ca-ona-hts festvox-ru festvox-czech-machac festvox-czech-dita
# (the last line: the held-out timbres, a soundfont and four voices that no training song uses; --timbres heldout)
# The Python side (pyworld, torch, ...) is the train extra, installed into a virtual environment, never into
# Debian's Python (PEP 668): .venv/bin/pip install ".[train]" torch==2.13.0. pyworld 0.3.5 has no cp311 wheel:
# pip builds it from the sdist (~30 s) with a compiler and Python's headers:
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential python3-dev
mkdir -p /usr/share/mma/plugins   # silences MMA's "PLUGIN ... does not exist" warning
# Optional one-off (~30 s, 490 MB in ~/.cache/stembridge): decompressed MuseScore soundfont, 3x faster to load.
# `batch` does this itself on first use.
#   python3 -m stembridge.engine.training.synth sf3to2
