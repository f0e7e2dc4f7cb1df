"""How much of a vocal the vocal stem keeps, by the vocal's level against its band: synthetic and real vocals alike.

``vocal_contexts.py`` found the MUSDB18 excerpt's real singer, 7.2 dB below her accompaniment, mostly given to
"other", and kept better once resynthesised by WORLD, which turned out to make her louder. This benchmark asks how
much of that is her level: each vocal is set to fixed levels against its own accompaniment (the RMS of the vocal
against the RMS of drums + bass + other over the whole excerpt; nothing else changes), mixed, separated, and its
share in the vocal stem measured (``engine.evaluate.source_shares``, dB relative to the vocal: higher is better;
``outside_vocals`` lower is better). The vocals:

* the synthetic test songs' vocals (``--songs`` of them, spread over ``--data``; songs without a vocal skipped);
* the MUSDB18 excerpt's singer (stempeg's example, see real_stems.py), made mono as in vocal_contexts
  ("centred") so that only her sound and level differ from the synthetic vocals, which are mostly centred too.

The methods are the model (and ``--candidate`` models), the classical separator and the ideal ratio mask with the
model's STFT, whose share says how much of each level any mask could keep. A model that has learnt "the vocal is
the loudest voice in the mix" loses far more of a quiet vocal than the oracle does. Writes
benchmarks/results/vocal_levels/::

    python3 benchmarks/research/vocal_levels.py [--data data/eval_synth] [--songs 14] [--levels -10.2 -7.2 -4.2 -1.2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_stems  # noqa: E402
from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vocal_levels"
LEVELS_DB = (-10.2, -7.2, -4.2, -1.2)  # the real singer sits at -7.2 dB; the synthetic vocals' median is -2.0 dB
SINGER = "MUSDB18 singer (centred)"


def vocal_db(vocal: np.ndarray, accompaniment: np.ndarray) -> float:
    """RMS level of ``vocal`` against ``accompaniment`` (both (channels, n)), dB."""
    return float(10 * np.log10(np.mean(vocal**2) / max(float(np.mean(accompaniment**2)), 1e-20)))


def at_levels(song: quality.Song, vocal: np.ndarray, levels_db: tuple[float, ...]) -> dict[float, quality.Song]:
    """{level: the song remixed with ``vocal`` at that level against the song's drums + bass + other}; the
    references are the scaled vocal and the song's other stems, so the oracle can be run on it."""
    stems = dict(zip(STEMS, song.references, strict=True))
    accompaniment = stems["drums"] + stems["bass"] + stems["other"]
    own = vocal_db(vocal, accompaniment)
    out = {}
    for level in levels_db:
        v = (vocal * 10 ** ((level - own) / 20)).astype(np.float32)
        references = np.stack([v, stems["drums"], stems["bass"], stems["other"]]).astype(np.float32)
        out[level] = quality.Song(f"{song.name} at {level:+.1f} dB", song.sample_rate, v + accompaniment, references)
    return out


def shares(methods: list, song: quality.Song) -> dict[str, dict[str, float]]:
    """{method name: source_shares of the song's vocal (references[0]) against the rest}."""
    vocal, rest = song.references[0], song.references[1:].sum(axis=0)
    return {m.name: quality.source_shares(m.separate(song), vocal, rest, song.sample_rate, "vocals") for m in methods}


def markdown(report: dict) -> str:
    methods = list(report["methods"])
    lines = [
        "# How much of a vocal the vocal stem keeps, by the vocal's level",
        "",
        f"Each vocal set to fixed levels against its own accompaniment (RMS over the excerpt); evaluated "
        f"{report['created']}. The vocal's share in the vocal stem, dB relative to the vocal (higher is better); "
        f"for the synthetic vocals the median over {report['num_songs']} test songs from {report['data']} (their "
        f"own levels: median {report['synthetic_own_db_median']:+.1f} dB). The real singer sits at "
        f"{report['singer_own_db']:+.1f} dB in her excerpt.",
        "",
        "| vocal | level dB | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for who in ("synthetic", SINGER):
        for level, row in report["summary"][who].items():
            lines.append(f"| {who} | {float(level):+.1f} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |")
    lines += ["", "Slope over the levels (dB kept per dB of level; the oracle's is what the task itself costs):", ""]
    lines += ["| vocal | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for who, row in report["slopes"].items():
        lines.append(f"| {who} | " + " | ".join(f"{row[m]:.2f}" for m in methods) + " |")
    lines += ["", "Methods:", ""] + [f"- **{m}**: {d}" for m, d in report["methods"].items()]
    return "\n".join(lines) + "\n"


def slope(levels: list[float], values: list[float]) -> float:
    """Least-squares slope of values over levels."""
    return float(np.polyfit(np.asarray(levels), np.asarray(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "eval_synth", help="synthetic test songs")
    parser.add_argument("--songs", type=int, default=14, help="synthetic songs with a vocal, spread over --data")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS_DB), help="vocal levels, dB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    quality.add_model_options(parser)
    args = parser.parse_args()
    if args.songs < 1:
        parser.error("--songs must be at least 1")

    model, candidates, _ = quality.share_methods(args, DEFAULT_MODEL)
    methods = [model, *candidates, quality.ClassicalMethod(), quality.irm_for(model)]
    levels = tuple(args.levels)
    paths = quality.find_songs(args.data)
    picked = paths[:: max(len(paths) // (2 * args.songs), 1)] if len(paths) > args.songs else paths
    per_level: dict[str, dict[float, list]] = {"synthetic": {lv: [] for lv in levels}, SINGER: {}}
    own_levels = []
    for path in picked:
        if len(own_levels) == args.songs:
            break
        song = quality.load_song(path)
        vocal = song.references[0]
        if np.mean(vocal**2) < 1e-8:
            continue
        own_levels.append(vocal_db(vocal, song.references[1:].sum(axis=0)))
        for level, remixed in at_levels(song, vocal, levels).items():
            per_level["synthetic"][level].append(shares(methods, remixed))
        print(path.name, f"{own_levels[-1]:+.1f} dB", file=sys.stderr, flush=True)
    if not own_levels:
        raise SystemExit(f"{args.data}: no test song with a sounding vocal")
    with tempfile.TemporaryDirectory(prefix="stembridge_levels_") as tmp:
        singer = quality.load_song(real_stems.decode_song(real_stems.example_stem_file(), Path(tmp), 0.1))
    centred = np.broadcast_to(singer.references[0].mean(axis=0), singer.references[0].shape).astype(np.float32)
    singer_own = vocal_db(singer.references[0], singer.references[1:].sum(axis=0))
    for level, remixed in at_levels(singer, centred, levels).items():
        per_level[SINGER][level] = [shares(methods, remixed)]

    names = [m.name for m in methods]
    summary = {
        who: {
            level: {m: round(float(np.median([e[m]["vocals"] for e in entries])), 2) for m in names}
            for level, entries in by_level.items()
        }
        for who, by_level in per_level.items()
    }
    slopes = {
        who: {m: round(slope(levels, [rows[lv][m] for lv in levels]), 2) for m in names}
        for who, rows in summary.items()
    }
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(args.data),
        "num_songs": len(own_levels),
        "synthetic_own_db_median": float(np.median(own_levels)),
        "singer_own_db": singer_own,
        "levels_db": list(levels),
        "methods": {m.name: m.description for m in methods},
        "model": model.params,
        "candidates": {c.name: c.params for c in candidates},
        "summary": summary,
        "slopes": slopes,
        "entries": per_level,
    }
    quality.write_json_and_markdown(args.out, "vocal_levels", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
