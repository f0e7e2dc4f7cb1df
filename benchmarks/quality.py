"""Separation quality of the default model against the baselines on the held-out synthetic test songs.

Runs the same evaluation as ``stembridge evaluate`` (engine/evaluate.py): the model through the streaming path,
mixture/4, the classical DSP separator and the ideal ratio mask with the model's STFT, BSS Eval v4 SDR per stem
(median over 1 s windows, then over songs) and the karaoke figure. It also checks on the first song that the fast
SDR equals museval's own and times both.

    python3 benchmarks/quality.py [--data data/synth] [--model PATH] [--max-songs N] [--max-seconds S] [--update-card]
        [--out DIR] [--compare-to EARLIER_quality.json ...]

Test songs come from the synthesizer; seeds with seed % 20 == 0 are the test split. ``synth batch`` renders them
with the training songs into data/synth/test. The committed results use the test seeds 0-1180 (60 songs of 20 s;
the first 20 are bit-identical to the batch's test songs, the rest lie beyond the training seeds), rendered alone::

    for s in $(seq 0 20 1180); do python3 -m stembridge.engine.training.synth song --seed $s --out data/eval_synth; done
    python3 benchmarks/quality.py --data data/eval_synth

Writes benchmarks/results/quality.json, quality.md and quality.png (the plot needs matplotlib).

The same 60 songs with held-out timbres (a soundfont and singers no training song uses; see engine/training/synth.py)
measure how much of the model's quality depends on having heard the instruments and voices. Their songs are named
like their twins, so ``--compare-to`` pairs each song with itself in the training timbres::

    python3 -m stembridge.engine.training.synth batch --timbres heldout --first-seed 0 --step 20 --num-songs 60 \
        --jobs 2 --out data/heldout_synth
    python3 benchmarks/quality.py --data data/heldout_synth --out benchmarks/results/heldout_timbres \
        --compare-to benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def museval_cross_check(song_dir: Path, max_seconds: float | None) -> dict:
    """On one song: the fast window SDR vs museval.evaluate for the classical and mixture/4 estimates."""
    try:
        import museval  # noqa: F401
    except ImportError:
        return {"skipped": "museval is not installed (pip install museval)"}
    song = quality.load_song(song_dir, max_seconds)
    out = {"song": song.name, "seconds": round(song.duration_s, 2), "max_abs_diff_db": 0.0, "nan_pattern_equal": True}
    fast_s = museval_s = 0.0
    for method in (quality.ClassicalMethod(), quality.MixtureFractionMethod()):
        estimates = method.separate(song)
        for i in range(len(STEMS)):
            t0 = time.perf_counter()
            fast = quality.window_sdr(song.references[i], estimates[i], song.sample_rate)
            t1 = time.perf_counter()
            slow = quality.museval_sdr(song.references[i], estimates[i], song.sample_rate)
            t2 = time.perf_counter()
            fast_s, museval_s = fast_s + t1 - t0, museval_s + t2 - t1
            both = ~np.isnan(fast) & ~np.isnan(slow)
            out["nan_pattern_equal"] &= bool(np.array_equal(np.isnan(fast), np.isnan(slow)))
            if both.any():
                out["max_abs_diff_db"] = max(out["max_abs_diff_db"], float(np.max(np.abs(fast[both] - slow[both]))))
    out["fast_seconds"] = round(fast_s, 4)
    out["museval_seconds"] = round(museval_s, 2)
    return out


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth", help="test songs (or their parent)")
    parser.add_argument("--model", type=Path, help="model .onnx (default: the shipped default model)")
    parser.add_argument("--max-songs", type=int)
    parser.add_argument("--max-seconds", type=float)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update-card", action="store_true", help="write the figures into the model's card")
    parser.add_argument(
        "--spatial-filter",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force the spatial filter on or off (default: as the model's card says)",
    )
    parser.add_argument(
        "--compare-to",
        type=Path,
        action="append",
        default=[],
        help="an earlier quality.json: add a per-song paired comparison of the models (may be repeated)",
    )
    args = parser.parse_args()

    baselines = [(f"`{shown(path)}`", quality.read_report(path)) for path in args.compare_to]  # fail before the run
    songs = quality.find_songs(args.data)[: args.max_songs]
    model_path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.exists() else None)
    model = None
    if model_path:
        model = quality.ModelMethod(model_path, block_size=args.block_size, spatial_filter=args.spatial_filter)
    if model is None:
        print("no default model yet (engine/models/default.onnx): evaluating the baselines only", file=sys.stderr)
    methods = [m for m in (model, quality.MixtureFractionMethod(), quality.ClassicalMethod()) if m is not None]
    methods.append(quality.irm_for(model))

    def progress(song: str, method: str) -> None:
        print(f"{song} {method}", file=sys.stderr, flush=True)

    source = shown(args.data)
    report = quality.evaluate(songs, methods, max_seconds=args.max_seconds, source=source, progress=progress)
    report["museval_cross_check"] = museval_cross_check(songs[0], args.max_seconds)
    for label, baseline in baselines:
        quality.add_comparison(report, baseline, label)
    paths = quality.write_report(report, args.out)
    if args.update_card and model is not None:
        card_path = model.card.path.with_suffix(".json")
        quality.update_card(card_path, quality.card_quality(report), quality.card_key(report))
    check = report["museval_cross_check"]
    note = (
        f"\nmuseval cross-check on {check['song']}: max |fast - museval| = {check['max_abs_diff_db']:.2e} dB, "
        f"NaN windows equal: {check['nan_pattern_equal']}; 8 stem evaluations took {check['fast_seconds']} s "
        f"(fast) vs {check['museval_seconds']} s (museval).\n"
        if "song" in check
        else f"\nmuseval cross-check skipped: {check['skipped']}\n"
    )
    with open(paths["md"], "a") as f:
        f.write(note)
    print(paths["md"].read_text())
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
