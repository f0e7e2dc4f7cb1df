"""Separation quality on real recordings: multitrack stem files (Native Instruments ``.stem.mp4``, MUSDB18's format).

Every other quality figure of this project comes from synthesized songs. The only real multitrack audio reachable
from this project's machines is the 6-second MUSDB18 excerpt that the ``stempeg`` package ships as its example
("The Easton Ellises - Falcon 69", CC BY-NC-SA 3.0; stempeg is installed with museval, a test dependency): one
song and six 1 s windows per stem, so its figures are an anecdote, not a measurement. Anyone with MUSDB18 (or other
``.stem.mp4`` files) on disk passes them instead::

    python3 benchmarks/real_stems.py                              # stempeg's example excerpt
    python3 benchmarks/real_stems.py ~/musdb18/test/*.stem.mp4 --out /tmp/musdb_test

Each file's audio streams are decoded with ffmpeg in MUSDB18's order (mixture, drums, bass, other, vocals). The
mixture scored against is the sum of the decoded stems, not the file's own mixture stream: in MUSDB18 each stream is
AAC-coded on its own, so the coded mixture differs from the stems' sum (by about 15 dB SNR in the example), which
would count against every method alike. A cut excerpt also starts and ends with a coding transient (a click at full
scale in every stream of the example, after 2048 samples of encoder priming), so the digital silence at both ends
and ``--trim-seconds`` more are left out. The evaluation is ``stembridge evaluate``'s (engine/evaluate.py), with the
same baselines in the same run. Writes ``--out``/quality.{json,md,png} (default benchmarks/results/real_stems/).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "real_stems"
STREAM_ORDER = ("mixture", "drums", "bass", "other", "vocals")  # MUSDB18's .stem.mp4 layout


def example_stem_file() -> Path:
    """stempeg's bundled MUSDB18 excerpt, or a clear error naming how to get it."""
    try:
        import stempeg
    except ImportError as exc:
        raise SystemExit("stempeg is not installed: pip install stempeg (or pass .stem.mp4 files)") from exc
    return Path(stempeg.example_stem_path())


def decode_song(stem_file: Path, out_root: Path, trim_s: float) -> Path:
    """Decode ``stem_file`` into ``out_root/<name>/{mixture,vocals,drums,bass,other}.wav`` (float WAV at the file's
    rate; the mixture is the sum of the decoded stems), without the digital silence at either end and ``trim_s``
    seconds more. Returns the song folder."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed (apt-get install ffmpeg)")
    name = stem_file.name.removesuffix(".stem.mp4").removesuffix(".mp4")
    song = out_root / name
    song.mkdir(parents=True)
    stems, rate = {}, None
    for index, stem in enumerate(STREAM_ORDER[1:], start=1):
        wav = song / f"{stem}.wav"
        cmd = ["ffmpeg", "-v", "error", "-i", str(stem_file), "-map", f"0:a:{index}", "-c:a", "pcm_f32le", str(wav)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{stem_file}: cannot decode audio stream {index} ({stem}): {result.stderr.strip()}")
        stems[stem], rate = sf.read(wav, dtype="float32", always_2d=True)
    n = min(a.shape[0] for a in stems.values())
    sounding = np.flatnonzero(np.any([np.abs(a[:n]).max(axis=1) > 0 for a in stems.values()], axis=0))
    trim = int(round(trim_s * rate))
    start, stop = (sounding[0] + trim, sounding[-1] + 1 - trim) if len(sounding) else (0, 0)
    if stop - start < rate:
        raise SystemExit(f"{stem_file}: less than 1 s of audio after trimming {trim_s} s at each end")
    for stem, audio in stems.items():
        sf.write(song / f"{stem}.wav", audio[start:stop], rate, subtype="FLOAT")
    sf.write(song / "mixture.wav", np.sum([a[start:stop] for a in stems.values()], axis=0), rate, subtype="FLOAT")
    return song


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help=".stem.mp4 files (default: stempeg's example excerpt)")
    parser.add_argument("--model", type=Path, help="model .onnx (default: the shipped default model)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trim-seconds", type=float, default=0.1, help="left out at each end (coding transients)")
    parser.add_argument(
        "--spatial-filter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the spatial filter on or off (default: as the model's card says)",
    )
    parser.add_argument("--compare-to", type=Path, action="append", default=[], help="an earlier report to pair with")
    args = parser.parse_args()

    files = args.files or [example_stem_file()]
    for f in files:
        if not f.is_file():
            raise SystemExit(f"{f}: no such file")
    baselines = [(f"`{f}`", quality.read_report(f)) for f in args.compare_to]
    model = quality.ModelMethod(args.model or DEFAULT_MODEL, spatial_filter=args.spatial_filter)
    methods = [model, quality.MixtureFractionMethod(), quality.ClassicalMethod(), quality.irm_for(model)]
    with tempfile.TemporaryDirectory(prefix="stembridge_real_") as tmp:
        songs = [decode_song(f, Path(tmp), args.trim_seconds) for f in files]
        source = "stempeg's example (MUSDB18 excerpt)" if not args.files else ", ".join(f.name for f in files)
        report = quality.evaluate(songs, methods, source=source)
    for label, baseline in baselines:
        quality.add_comparison(report, baseline, label)
    paths = quality.write_report(report, args.out)
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
