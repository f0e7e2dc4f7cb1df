"""Spatial filter settings: what the causal multichannel Wiener filter adds to the model's masks, on validation songs.

Every setting is compared with the masks alone on the same songs, in the same run (paired, song by song, BSS Eval v4
SDR as ``engine.evaluate`` computes it):

* whole songs, for time constants 1, 3, 10 and 30 s (regularization 1e-3) and regularizations 1e-4 and 1e-2 (10 s);
* a track change, the case a live input meets in a DJ set: the first 10 s of each song heard right after 10 s of
  another song (the model's state and the filter's covariances still hold the other song), against the same 10 s
  from a fresh start.

The settings are chosen on these validation songs (seed % 20 == 1), never on the test songs.

    python benchmarks/spatial_filter.py [--data data/synth/validation] [--model PATH]

Writes benchmarks/results/spatial_filter.json and spatial_filter.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import evaluate as quality  # noqa: E402
from engine.baselines import STEMS  # noqa: E402
from engine.separate import separate_audio  # noqa: E402
from engine.separator import StreamingSeparator  # noqa: E402
from engine.spatial import SpatialWiener  # noqa: E402
from engine.stream import BlockAdapter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BLOCK = 4096
SETTINGS = [(1.0, 1e-3), (3.0, 1e-3), (10.0, 1e-3), (30.0, 1e-3), (10.0, 1e-4), (10.0, 1e-2)]
SWITCH_SETTINGS = [(3.0, 1e-3), (10.0, 1e-3)]
SWITCH_S = 10.0


class Separation:
    """The model through the streaming path with the given filter settings (None: the masks alone)."""

    def __init__(self, model: Path | None, setting: tuple[float, float] | None) -> None:
        sep = StreamingSeparator(model, max_hops=BLOCK // 64 + 2, spatial_filter=False)
        if setting is not None:
            tau, reg = setting
            card = sep.card
            sep.spatial = SpatialWiener(1, card.num_stems, card.num_bins, card.hop_size, card.sample_rate, tau, reg)
        self.adapter = BlockAdapter(sep, max_block_size=BLOCK, block_size=BLOCK)
        self.order = [sep.card.stems.index(s) for s in STEMS]

    def __call__(self, mixture: np.ndarray) -> np.ndarray:
        return separate_audio(self.adapter, mixture, BLOCK)[self.order]


def sdr_table(songs: list[quality.Song], separation: Separation, lead_in: list[np.ndarray] | None = None) -> np.ndarray:
    """Median-over-windows SDR, float (songs, stems); ``lead_in[i]`` is played before song i when given."""
    rows = []
    for i, song in enumerate(songs):
        mixture = song.mixture if lead_in is None else np.concatenate([lead_in[i], song.mixture], axis=1)
        estimates = np.ascontiguousarray(separation(mixture)[..., -song.mixture.shape[1] :])
        rows.append([quality.median_sdr(quality.window_sdr(song.references[k], estimates[k], song.sample_rate))
                     for k in range(len(STEMS))])  # fmt: skip
    return np.asarray(rows)


def paired(table: np.ndarray, base: np.ndarray) -> dict:
    diff = table - base
    per_stem = {s: float(np.nanmean(diff[:, k])) for k, s in enumerate(STEMS)}
    song_means = np.nanmean(diff, axis=1)
    return {
        "median_sdr": {s: float(np.nanmedian(table[:, k])) for k, s in enumerate(STEMS)},
        "paired_mean_difference": per_stem | {"mean": float(np.mean(list(per_stem.values())))},
        "songs_better": int(np.sum(song_means > 0)),
        "songs": int(np.sum(np.isfinite(song_means))),
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

    base = sdr_table(songs, Separation(args.model, None))
    result["whole_songs"]["masks only"] = paired(base, base)
    for setting in SETTINGS:
        result["whole_songs"][label(setting)] = paired(sdr_table(songs, Separation(args.model, setting)), base)
        print(label(setting), json.dumps(result["whole_songs"][label(setting)]["paired_mean_difference"]), flush=True)

    heads = [quality.load_song(p, max_seconds=SWITCH_S) for p in paths]
    lead_in = [heads[(i + len(heads) // 2) % len(heads)].mixture for i in range(len(heads))]  # another song
    for setting in [None, *SWITCH_SETTINGS]:
        fresh = sdr_table(heads, Separation(args.model, setting))
        after = sdr_table(heads, Separation(args.model, setting), lead_in)
        if setting is None:
            fresh_base, after_base = fresh, after
        name = "masks only" if setting is None else label(setting)
        result["track_change"][name] = {"fresh": paired(fresh, fresh_base), "after_change": paired(after, after_base)}
        print(name, "track change", json.dumps(result["track_change"][name]["after_change"]), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spatial_filter.json").write_text(json.dumps(quality.json_safe(result), indent=2) + "\n")
    (RESULTS / "spatial_filter.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    def row(name: str, r: dict) -> str:
        d = r["paired_mean_difference"]
        cells = " | ".join(f"{d[s]:+.2f}" for s in (*STEMS, "mean"))
        return f"| {name} | {cells} | {r['songs_better']} of {r['songs']} |"

    lines = [
        "# Spatial filter settings",
        "",
        f"{result['songs']} validation songs from `{result['data']}`. "
        "SDR gain over the masks alone, dB: the mean of per-song differences (BSS Eval v4 SDR, median over 1 s "
        "windows), and the songs whose mean over stems improved.",
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
