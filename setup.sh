#!/usr/bin/env bash
# Installs stembridge on Debian 12 (other apt-based systems likely work) into a virtual environment .venv here.
#
#   ./setup.sh            the Debian packages the engine needs, then .venv with stembridge (not editable)
#   ./setup.sh --test     the same plus the test extra and the tools the tests talk to (jackd2, liblo-tools,
#                         chromium)
#   ./setup.sh --jack     the engine plus JACK (jackd2), for stem busses as separate ports
#   ./setup.sh --editable an editable install (for working on stembridge itself); combines with --test
#
# Runs as root, or as a user with sudo (asked only for apt-get). Python packages go into .venv only, never into
# Debian's own Python (PEP 668). Run it again at any time: it installs what is missing and reinstalls stembridge.
set -euo pipefail
cd "$(dirname "$0")"

test_extra=0 jack=0 editable=0
for arg in "$@"; do
    case "$arg" in
        --test) test_extra=1 jack=1 ;;
        --jack) jack=1 ;;
        --editable) editable=1 ;;
        -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (see ./setup.sh --help)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "setup.sh: apt-get needs root: run this as root, or install sudo and add yourself to the sudo group" >&2
    exit 1
fi

# What the engine needs from Debian, one package a line:
packages=(
    python3 python3-venv # the interpreter, and venv with pip for .venv (PEP 668 keeps pip out of Debian's Python)
    libsndfile1          # soundfile: WAV/FLAC/OGG (its x86-64 wheel carries a copy; other machines use this one)
    libportaudio2        # sounddevice: the PortAudio backend (a sound card without JACK)
    ffmpeg               # what libsndfile cannot decode: AAC/M4A, .stem.mp4 (and museval's stempeg in the tests)
)
if [ "$jack" -eq 1 ]; then
    packages+=(jackd2 libjack-jackd2-0) # the JACK backend (stem busses as ports; tests run it on its dummy driver)
fi
if [ "$test_extra" -eq 1 ]; then
    packages+=(liblo-tools) # oscsend/oscdump: a third-party OSC peer in the tests
    packages+=(chromium)    # a real browser for the web surface tests (driven by playwright; nothing downloaded)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # jackd2 asks whether to enable real-time limits: answer no here (`sudo dpkg-reconfigure jackd2` turns them on)
    echo "jackd2 jackd/tweak_rt_limits boolean false" | $SUDO debconf-set-selections
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's own interpreter, not whichever python3 comes first on PATH
python=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import sys; sys.exit(sys.base_prefix != '/usr')" 2>/dev/null; then
    rm -rf .venv
    echo "setup.sh: $python -m venv .venv"
    "$python" -m venv .venv
fi

spec="."
[ "$test_extra" -eq 1 ] && spec=".[test]"
flags=(--quiet --disable-pip-version-check)
[ "$editable" -eq 1 ] && flags+=(--editable)
echo "setup.sh: .venv/bin/pip install ${flags[*]} $spec"
.venv/bin/pip install "${flags[@]}" "$spec" # a local folder is always rebuilt and reinstalled
echo "setup.sh: done: $(.venv/bin/stembridge --version) in .venv (run .venv/bin/stembridge, or: source .venv/bin/activate)"
