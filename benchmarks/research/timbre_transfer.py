"""Do the models' gains carry over to instruments and voices they never heard? Reads quality reports, runs nothing.

Each model has two reports on the same 60 test songs: one with the training timbres (``benchmarks/quality.py
--data data/eval_synth``) and one with the synthesizer's held-out timbres (``--data data/heldout_synth``: a soundfont
and singers no training song uses, every other draw the same). From them:

* per model, the median SDR on each set and the paired gap (held-out minus training timbres, song by song);
* per pair of models (a later one against an earlier one), the paired gain on the training timbres beside the paired
  gain on the held-out timbres: a gain that appears only on the first set was learnt from the training sounds.

    python3 benchmarks/research/timbre_transfer.py [--model NAME TRAIN.json HELDOUT.json ...] [--pair LATER EARLIER ...]

Without options it reads the committed reports of the shipped default and the candidates before it. Writes
benchmarks/results/heldout_timbres/transfer.json and transfer.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HELDOUT = RESULTS / "heldout_timbres"

# (name, report on the training timbres, report on the held-out timbres), oldest first; the reports are of the plain
# masks unless the name says "spatial filter" (the filter came after step 18721). All are of the test songs of
# generator version 3: a pair is only comparable on the same songs, and version 4 changed song 60 (backing vocals),
# so the shipped model's version-3 reports are kept in candidates/default_step22034
DEFAULT_MODELS = [
    ("step11490 (l1)", "candidates/default_step11490", "heldout_timbres/candidates/default_step11490"),
    ("l1 control", "candidates/l1_control", "heldout_timbres/candidates/l1_control"),
    ("sdr loss", "candidates/sdr_loss", "heldout_timbres/candidates/sdr_loss"),
    ("step14438", "candidates/default_step14438", "heldout_timbres/candidates/default_step14438"),
    (
        "step18721",
        "candidates/default_step18721/plain_masks",
        "heldout_timbres/candidates/default_step18721/plain_masks",
    ),
    ("step18721 + spatial filter", "candidates/default_step18721", "heldout_timbres/candidates/default_step18721"),
    (
        "step19521 (real recordings)",
        "candidates/default_step19521/plain_masks",
        "heldout_timbres/candidates/default_step19521/plain_masks",
    ),
    (
        "step19521 (real recordings) + spatial filter",
        "candidates/default_step19521",
        "heldout_timbres/candidates/default_step19521",
    ),
    (
        "step22034 (real recordings, longer)",
        "candidates/default_step22034/plain_masks",
        "heldout_timbres/candidates/default_step22034/plain_masks",
    ),
    (
        "step22034 (real recordings, longer) + spatial filter (shipped)",
        "candidates/default_step22034",
        "heldout_timbres/candidates/default_step22034",
    ),
    ("nfft2048", "candidates/nfft2048", "heldout_timbres/candidates/nfft2048"),
    ("timbre augmentation", "candidates/aug_timbre", "heldout_timbres/candidates/aug_timbre"),
    ("augmentation control", "candidates/aug_control", "heldout_timbres/candidates/aug_control"),
]
DEFAULT_PAIRS = [
    ("l1 control", "step11490 (l1)"),
    ("sdr loss", "step11490 (l1)"),
    ("sdr loss", "l1 control"),
    ("step14438", "step11490 (l1)"),
    ("step18721", "step14438"),
    ("step18721", "step11490 (l1)"),
    ("nfft2048", "step11490 (l1)"),
    ("augmentation control", "step18721"),
    ("timbre augmentation", "step18721"),
    ("timbre augmentation", "augmentation control"),
    ("step18721 + spatial filter", "step18721"),
    ("step19521 (real recordings)", "step18721"),
    ("step19521 (real recordings) + spatial filter", "step18721 + spatial filter"),
    ("step19521 (real recordings) + spatial filter", "step19521 (real recordings)"),
    ("step22034 (real recordings, longer)", "step19521 (real recordings)"),
    ("step22034 (real recordings, longer) + spatial filter (shipped)", "step19521 (real recordings) + spatial filter"),
    ("step22034 (real recordings, longer) + spatial filter (shipped)", "step22034 (real recordings, longer)"),
]


def transfer(models: dict[str, tuple[dict, dict]], pairs: list[tuple[str, str]]) -> dict:
    """The figures described in the module docstring, from {name: (train report, held-out report)}."""
    out: dict = {"models": {}, "pairs": []}
    for name, (train, held) in models.items():
        out["models"][name] = {
            "train_timbres_sdr_db": train["summary"]["model"]["sdr"],
            "heldout_timbres_sdr_db": held["summary"]["model"]["sdr"],
            "paired_gap": quality.paired_comparison(held, train),
        }
    for later, earlier in pairs:
        for name in (later, earlier):
            if name not in models:
                raise SystemExit(f"--pair names {name!r}, which no --model defines")
        out["pairs"].append(
            {
                "later": later,
                "earlier": earlier,
                "train_timbres": quality.paired_comparison(models[later][0], models[earlier][0]),
                "heldout_timbres": quality.paired_comparison(models[later][1], models[earlier][1]),
            }
        )
    return out


def _cell(c: dict) -> str:
    return f"{c['mean_db']:+.2f} ({c['songs_better']}/{c['num_songs']})"


def markdown(result: dict) -> str:
    def fig(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = [
        "# Timbre transfer: training timbres against held-out timbres",
        "",
        "The same 60 test songs rendered twice: with the training soundfonts and voices, and with a soundfont and "
        "singers no training song uses. BSS Eval v4 SDR, dB.",
        "",
        "Median SDR over songs (training timbres / held-out timbres), and the paired gap: mean of the per-song "
        "differences of the four-stem mean, held-out minus training (songs where held-out is better / songs).",
        "",
        "| model | " + " | ".join(STEMS) + " | mean | paired gap |",
        "|---|" + "---|" * (len(STEMS) + 2),
    ]
    for name, m in result["models"].items():
        a, b = m["train_timbres_sdr_db"], m["heldout_timbres_sdr_db"]
        cells = [f"{fig(a[k])} / {fig(b[k])}" for k in (*STEMS, "mean")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(m['paired_gap']['mean'])} |")
    lines += [
        "",
        "Gains between models, paired song by song (mean of per-song differences of the four-stem mean, dB; songs "
        "better / songs), on each timbre set:",
        "",
        "| later | earlier | training timbres | held-out timbres | held-out per stem (" + ", ".join(STEMS) + ") |",
        "|---|---|---|---|---|",
    ]
    for p in result["pairs"]:
        held = p["heldout_timbres"]
        stems = ", ".join(f"{held[k]['mean_db']:+.2f}" if k in held else "n/a" for k in STEMS)
        lines.append(
            f"| {p['later']} | {p['earlier']} | {_cell(p['train_timbres']['mean'])} | {_cell(held['mean'])} | {stems} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs=3, action="append", metavar=("NAME", "TRAIN_JSON", "HELDOUT_JSON"))
    parser.add_argument("--pair", nargs=2, action="append", metavar=("LATER", "EARLIER"))
    parser.add_argument("--out", type=Path, default=HELDOUT)
    args = parser.parse_args()
    if args.model:
        specs = [(n, Path(a), Path(b)) for n, a, b in args.model]
    else:
        specs = [(n, RESULTS / a / "quality.json", RESULTS / b / "quality.json") for n, a, b in DEFAULT_MODELS]
    pairs = [tuple(p) for p in args.pair] if args.pair else (DEFAULT_PAIRS if not args.model else [])
    try:
        models = {name: (quality.read_report(a), quality.read_report(b)) for name, a, b in specs}
        result = transfer(models, pairs)
    except quality.EvaluationError as exc:
        raise SystemExit(str(exc)) from exc
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer.json").write_text(json.dumps(quality.json_safe(result), indent=1) + "\n")
    text = markdown(result)
    (args.out / "transfer.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
