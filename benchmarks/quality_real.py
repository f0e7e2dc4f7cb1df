"""Separation quality on real songs: both paths on the real validation split, beside the baselines, in one run.

The songs are the 12 validation excerpts of MUSDB18-7 (engine/training/musdb.py ``VALIDATION``: never trained on by
the shipped models), decoded into data/musdb/validation (``python3 -m stembridge.engine.training.musdb``; this
script does it when the folder is missing). Methods, all scored as ``stembridge evaluate`` scores (BSS Eval v4 SDR,
median over 1 s windows; per stem the median and the mean over songs; karaoke figure = vocal left in the other
three stems):

- ``hq``: the high-quality path ``separate`` uses by default (engine/hq.py);
- ``model``: the causal live model, through the live streaming path;
- ``previous`` (with ``--baseline-model``): an earlier causal model, e.g. the one this release replaces;
- ``mixture/4`` and ``irm`` (the ideal ratio mask with the live model's STFT): floor and ceiling.

Run twice: as the songs are, and as loud masters (``--loud 10``: each mix driven 10 dB into a peak limiter, the same
gain on every stem), since DJs play loud, limited masters. Writes benchmarks/results/quality_real/{quality,loud}.*
(JSON, markdown, plot).

    python3 benchmarks/quality_real.py [--data data/musdb/validation] [--model PATH] [--hq-model PATH]
        [--baseline-model PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality_real"


def main() -> None:
    from stembridge.engine import evaluate as quality
    from stembridge.engine.training import musdb

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "musdb" / "validation")
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "musdb18-7-train")
    p.add_argument("--model", type=Path, default=None, help="causal model (default: the built-in one)")
    p.add_argument("--hq-model", type=Path, default=None, help="look-ahead model (default: the built-in one)")
    p.add_argument(
        "--baseline-model", type=Path, default=None, help="an earlier causal model, scored beside as 'previous'"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--update-cards",
        action="store_true",
        help="write each path's figures into its models' cards (provenance.quality_real / quality_real_loud)",
    )
    p.add_argument("--loud-db", type=float, default=10.0)
    args = p.parse_args()

    if not args.data.is_dir():
        musdb.prepare(args.src, args.data.parent)
    songs = quality.find_songs(args.data)
    model = quality.ModelMethod(args.model)
    methods = [quality.HighQualityMethod(args.hq_model, args.model), model]
    if args.baseline_model is not None:
        previous = quality.ModelMethod(args.baseline_model)
        previous.name = "previous"
        methods.append(previous)
    methods += [quality.MixtureFractionMethod(), quality.irm_for(model)]
    for name, loud in (("quality", None), ("loud", args.loud_db)):
        print(f"{name}: {len(songs)} songs from {args.data}", file=sys.stderr, flush=True)
        source = f"MUSDB18-7 validation split ({len(songs)} real songs, engine/training/musdb.py)"
        report = quality.evaluate(songs, methods, source=source, loud_db=loud)
        paths = quality.write_report(report, args.out, stem=name)
        if args.update_cards:
            key = "quality_real" if loud is None else "quality_real_loud"
            quality.update_card(model.card.path.with_suffix(".json"), quality.card_quality(report, "model"), key)
            hq = methods[0].separator  # the high-quality path's figures go into both look-ahead models' cards
            for look_ahead in (hq.vocal_model, hq.stem_model):
                quality.update_card(look_ahead.card.path.with_suffix(".json"), quality.card_quality(report, "hq"), key)
        print(paths["md"].read_text().split("\n\nWhole-track")[0])


if __name__ == "__main__":
    main()
