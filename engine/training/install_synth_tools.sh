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
# pyworld 0.3.5 has no cp311 wheel: pip builds it from the sdist (needs gcc/g++, ~30 s)
python3 -m pip install -q pyworld "setuptools<81" soundfile numpy scipy mido pedalboard click   # pyworld imports pkg_resources (setuptools<81)
mkdir -p /usr/share/mma/plugins   # silences MMA's "PLUGIN ... does not exist" warning
# Optional one-off (~30 s, 490 MB in ~/.cache/stembridge): decompressed MuseScore soundfont, 3x faster to load.
# `batch` does this itself on first use.
#   python -m stembridge.engine.training.synth sf3to2
