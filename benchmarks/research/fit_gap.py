"""Does the model separate the songs it was trained on better than songs it never heard? Its fit gap.

A model that has learnt its training songs by heart separates them better than new ones, and more or more varied
songs are then what it needs. A model that separates both about equally well, and both far below what it could, has
not yet learnt what its training songs can teach, and what it needs is capacity or training time. This benchmark
scores the model (and ``--candidate`` models) and the ideal ratio mask with the model's STFT on ``--songs`` training
songs and as many test songs (each spread evenly over its split, by name), with the same evaluation as
``stembridge evaluate``. Training and test songs differ in what the synthesizer drew for them, so the comparison is
each method's distance to the oracle on the same songs: per song, the method's mean SDR over its sounding stems
minus the oracle's, the median over songs, on each split. The fit gap is that distance on the training songs minus
on the test songs (positive: the model does better, relative to what any mask could, on what it trained on), with a
90 % bootstrap interval over songs. Training hears the training songs' stems augmented and mostly remixed across
songs, seldom as these exact mixtures. Writes benchmarks/results/fit_gap/::

    python3 benchmarks/research/fit_gap.py [--train data/synth6/train] [--test data/eval_synth] [--songs 60]
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fit_gap"
SPLITS = ("train", "test")


def shown(path: Path) -> str:
    """The path relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def spread(paths: list[Path], num: int) -> list[Path]:
    """``num`` of ``paths`` (all when there are no more), evenly spaced from the first."""
    if len(paths) <= num:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, num).round().astype(int)]


def to_oracle(report: dict, method: str) -> dict:
    """Per song ``method``'s mean SDR minus the oracle's on the same stems, and the median over songs."""
    per_song = {}
    for name, methods in report["songs"].items():
        own, oracle = methods[method]["sdr"], methods["irm"]["sdr"]
        stems = [s for s in STEMS if not math.isnan(own[s]) and not math.isnan(oracle[s])]
        if stems:
            per_song[name] = float(np.mean([own[s] - oracle[s] for s in stems]))
    return {"median": round(float(np.median(list(per_song.values()))), 2), "songs": per_song}


def bootstrap_gap(train: dict[str, float], test: dict[str, float], draws: int = 2000) -> list[float]:
    """A 90 % bootstrap interval of the fit gap: the songs of each split resampled with replacement."""
    rng = np.random.default_rng(0)
    a, b = np.array(list(train.values())), np.array(list(test.values()))
    gaps = [np.median(rng.choice(a, a.size)) - np.median(rng.choice(b, b.size)) for _ in range(draws)]
    return [round(float(q), 2) for q in np.percentile(gaps, [5, 95])]


def summarize(reports: dict[str, dict], names: list[str]) -> dict:
    """Per method and split: the median SDR per stem and mean, the distance to the oracle, and the fit gap."""
    out = {}
    for name in names:
        row = {}
        for split, report in reports.items():
            sdr = report["summary"][name]["sdr"]
            row[split] = {key: round(sdr[key], 2) for key in (*STEMS, "mean")}
            if name != "irm":
                row[split]["to_oracle"] = to_oracle(report, name)["median"]
        if name != "irm":
            row["fit_gap_db"] = round(row["train"]["to_oracle"] - row["test"]["to_oracle"], 2)
            row["fit_gap_90_db"] = bootstrap_gap(*(to_oracle(reports[split], name)["songs"] for split in SPLITS))
        out[name] = row
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Fit gap: training songs against test songs",
        "",
        f"{report['num_songs']['train']} training songs (`{report['data']['train']}`) and "
        f"{report['num_songs']['test']} test songs (`{report['data']['test']}`); evaluated {report['created']}.",
        "",
        "Median SDR over songs, dB (BSS Eval v4, as `stembridge evaluate`). To oracle: per song the method's mean SDR "
        "minus the ideal ratio mask's on the same stems, median over songs. Fit gap: to oracle on the training songs "
        "minus on the test songs (positive: better on what it trained on), with its 90 % bootstrap interval.",
        "",
        "| method | songs | " + " | ".join(STEMS) + " | mean | to oracle | fit gap |",
        "|---|---|" + "---|" * (len(STEMS) + 3),
    ]
    for name, row in report["summary"].items():
        for split in SPLITS:
            cells = [f"{row[split][k]:.2f}" for k in (*STEMS, "mean")]
            to_oracle_cell = f"{row[split]['to_oracle']:+.2f}" if "to_oracle" in row[split] else ""
            gap = ""
            if "fit_gap_db" in row and split == "train":
                low, high = row["fit_gap_90_db"]
                gap = f"{row['fit_gap_db']:+.2f} ({low:+.2f} to {high:+.2f})"
            lines.append(f"| {name} | {split} | " + " | ".join(cells) + f" | {to_oracle_cell} | {gap} |")
    lines += ["", "Methods:", ""]
    lines += [f"- **{name}**: {description}" for name, description in report["methods"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=ROOT / "data" / "synth6" / "train", help="training songs")
    parser.add_argument("--test", type=Path, default=ROOT / "data" / "eval_synth", help="test songs")
    parser.add_argument("--songs", type=int, default=60, help="N songs of each split, spread evenly over it")
    parser.add_argument("--max-seconds", type=float, default=None, help="crop every song to its first S seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    quality.add_model_options(parser)
    args = parser.parse_args()
    if args.songs < 1:
        parser.error("--songs must be at least 1")

    model, candidates, _ = quality.share_methods(args, DEFAULT_MODEL)
    methods = [model, *candidates, quality.irm_for(model)]
    reports = {}
    for split, root in zip(SPLITS, (args.train, args.test), strict=True):
        paths = spread(quality.find_songs(root), args.songs)
        if not paths:
            raise SystemExit(f"{root}: no songs (a folder of <song>/{{mixture,vocals,drums,bass,other}}.wav)")
        print(f"{split}: {len(paths)} songs from {root}", file=sys.stderr, flush=True)
        reports[split] = quality.evaluate(paths, methods, max_seconds=args.max_seconds, source=shown(root))

    names = [m.name for m in methods]
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {split: shown(root) for split, root in zip(SPLITS, (args.train, args.test), strict=True)},
        "num_songs": {split: r["dataset"]["num_songs"] for split, r in reports.items()},
        "max_seconds": args.max_seconds,
        "methods": {m.name: m.description for m in methods},
        "model": model.params,
        "candidates": {c.name: c.params for c in candidates},
        "summary": summarize(reports, names),
        "to_oracle_per_song": {
            name: {split: to_oracle(r, name)["songs"] for split, r in reports.items()}
            for name in names
            if name != "irm"
        },
    }
    quality.write_json_and_markdown(args.out, "fit_gap", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
