"""Spatial filter settings: what the causal multichannel Wiener filter adds to the model's masks, on validation songs.

Every setting is compared with the masks alone on the same songs, in the same run (paired, song by song, BSS Eval v4
SDR as ``engine.evaluate`` computes it):

* whole songs, for time constants 1, 3, 10 and 30 s (regularization 1e-3) and regularizations 1e-4 and 1e-2 (10 s);
* a track change, the case a live input meets in a DJ set: the first 10 s of each song heard right after 10 s of
  another song (the model's state and the filter's covariances still hold the other song), against the same 10 s
  from a fresh start.

The settings are chosen on these validation songs (seed % 20 == 1), never on the test songs.

    python3 benchmarks/research/spatial_filter.py [--data data/synth/validation] [--model PATH]

Writes benchmarks/results/spatial_filter.json and spatial_filter.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separate import separate_audio  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = [(1.0, 1e-3), (3.0, 1e-3), (10.0, 1e-3), (30.0, 1e-3), (10.0, 1e-4), (10.0, 1e-2)]
SWITCH_SETTINGS = [(3.0, 1e-3), (10.0, 1e-3)]
SWITCH_S = 10.0


def separation(model: Path | None, setting: tuple[float, float] | None) -> quality.ModelMethod:
    """The model through the streaming path (as the evaluation runs it) with these filter settings (None: the masks
    alone)."""
    spatial = False if setting is None else {"time_constant_s": setting[0], "regularization": setting[1]}
    return quality.ModelMethod(model, spatial_filter=spatial)


def sdr_report(songs: list[quality.Song], method: quality.ModelMethod, lead_in: list[np.ndarray] | None = None) -> dict:
    """Median-over-windows SDR per song and stem, as a report's ``songs`` section (what
    ``quality.paired_comparison`` reads); ``lead_in[i]`` is played before song i when given."""
    report: dict = {"songs": {}}
    for i, song in enumerate(songs):
        mixture = song.mixture if lead_in is None else np.concatenate([lead_in[i], song.mixture], axis=1)
        estimates = separate_audio(method.adapter, mixture, method.block_size)[
            method.order, :, -song.mixture.shape[1] :
        ]
        sdr = {stem: quality.median_sdr(quality.window_sdr(song.references[k], estimates[k], song.sample_rate))
               for k, stem in enumerate(STEMS)}  # fmt: skip
        report["songs"][song.name] = {"model": {"sdr": sdr}}
    return report


def paired(report: dict, base: dict) -> dict:
    """Median SDR over songs per stem, and the paired comparison against ``base`` (the masks alone)."""
    sdr = [per["model"]["sdr"] for per in report["songs"].values()]
    return {
        "median_sdr": {s: float(np.nanmedian([row[s] for row in sdr])) for s in STEMS},
        "paired": quality.paired_comparison(report, base),
    }


def label(setting: tuple[float, float]) -> str:
    return f"time constant {setting[0]:g} s, regularization {setting[1]:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth" / "validation")
    parser.add_argument("--model", type=Path, help="model .onnx (default: the shipped default model)")
    args = parser.parse_args()
    paths = quality.find_songs(args.data)
    songs = [quality.load_song(p) for p in paths]
    data = args.data.resolve()
    shown = data.relative_to(ROOT) if data.is_relative_to(ROOT) else data
    result: dict = {"data": str(shown), "songs": len(songs), "whole_songs": {}, "track_change": {}}

    base = sdr_report(songs, separation(args.model, None))
    result["whole_songs"]["masks only"] = paired(base, base)
    for setting in SETTINGS:
        result["whole_songs"][label(setting)] = paired(sdr_report(songs, separation(args.model, setting)), base)
        print(label(setting), json.dumps(result["whole_songs"][label(setting)]["paired"]["mean"]), flush=True)

    heads = [quality.load_song(p, max_seconds=SWITCH_S) for p in paths]
    lead_in = [heads[(i + len(heads) // 2) % len(heads)].mixture for i in range(len(heads))]  # another song
    for setting in [None, *SWITCH_SETTINGS]:
        fresh = sdr_report(heads, separation(args.model, setting))
        after = sdr_report(heads, separation(args.model, setting), lead_in)
        if setting is None:
            fresh_base, after_base = fresh, after
        name = "masks only" if setting is None else label(setting)
        result["track_change"][name] = {"fresh": paired(fresh, fresh_base), "after_change": paired(after, after_base)}
        print(
            name, "track change", json.dumps(result["track_change"][name]["after_change"]["paired"]["mean"]), flush=True
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spatial_filter.json").write_text(json.dumps(quality.json_safe(result), indent=2) + "\n")
    (RESULTS / "spatial_filter.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    def row(name: str, r: dict) -> str:
        d = r["paired"]
        cells = " | ".join(f"{d[s]['mean_db']:+.2f}" for s in (*STEMS, "mean"))
        return f"| {name} | {cells} | {d['mean']['songs_better']} of {d['mean']['num_songs']} |"

    lines = [
        "# Spatial filter settings",
        "",
        f"{result['songs']} validation songs from `{result['data']}`. "
        "SDR gain over the masks alone, dB: the mean of per-song differences (BSS Eval v4 SDR, median over 1 s "
        "windows; `quality.paired_comparison`), and the songs whose mean over the four stems improved (songs with a "
        "silent stem count in that stem's column only).",
        "",
        "Whole songs:",
        "",
        "| setting | vocals | drums | bass | other | mean | songs better |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, r) for name, r in result["whole_songs"].items() if name != "masks only"]
    lines += [
        "",
        f"Track change: the first {SWITCH_S:g} s of each song from a fresh start, and right after {SWITCH_S:g} s of "
        "another song (each against the masks alone in the same situation):",
        "",
        "| setting | situation | vocals | drums | bass | other | mean | songs better |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["track_change"].items():
        if name == "masks only":
            continue
        for situation in ("fresh", "after_change"):
            lines.append(row(name, r[situation]).replace(f"| {name} |", f"| {name} | {situation.replace('_', ' ')} |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
