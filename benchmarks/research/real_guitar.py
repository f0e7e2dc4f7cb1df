"""Where a real lead guitar goes: the model on real band recordings with the lead guitar on a track of its own.

Real multitracks with all four stems are out of reach here (see real_stems.py), but Debian ships eight recorded metal
songs from the game Frets on Fire whose lead guitar is a separate file (``guitar.ogg``) beside the rest of the band
(``song.ogg``): Muldjord's (CC BY-SA 3.0) and Sectoid's (MIT-style licence). Their mixture is the sum of the two.
A lead guitar belongs to "other"; the question a DJ cares about is how much of it the model puts into the vocal (and
drum and bass) stems instead, on real recordings with real amp distortion::

    sudo apt-get install fretsonfire-songs-muldjord fretsonfire-songs-sectoid    # 58 MB, into /usr/share/games
    python3 benchmarks/research/real_guitar.py [--seconds 60] [--start 30]

Per song and method, for each estimated stem: the share of the guitar's energy found in it, in dB relative to the
guitar itself, fitted as the karaoke figure is (engine.evaluate.vocal_leakage_db: per channel and bin, the estimate
is fitted by least squares as a * guitar + b * band, and a * guitar is the guitar in it). For "other" higher is
better (0 dB: all of it); for vocals, drums and bass lower is better; ``outside_other`` is the guitar in the sum of
vocals, drums and bass. mixture/4 puts a quarter everywhere: -12.0 dB in each stem, -2.5 dB outside "other". The
band track may hold vocals, bass and more guitars; they are not scored. Writes benchmarks/results/real_guitar/.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402
from stembridge.engine.training.real_material import GUITAR_TRAIN  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "real_guitar"
SONGS = Path("/usr/share/games/fretsonfire/data/songs")


def find_songs(root: Path) -> list[Path]:
    """Song folders under ``root`` holding both guitar.ogg and song.ogg, sorted."""
    songs = sorted({p.parent for p in root.rglob("guitar.ogg") if (p.parent / "song.ogg").exists()})
    if not songs:
        raise SystemExit(
            f"{root}: no songs with guitar.ogg and song.ogg "
            "(sudo apt-get install fretsonfire-songs-muldjord fretsonfire-songs-sectoid)"
        )
    return songs


def load(song: Path, start_s: float, seconds: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(rate, guitar, band), float32 (channels, n) each, from ``start_s`` for ``seconds`` (0: to the end)."""
    guitar, rate = sf.read(song / "guitar.ogg", dtype="float32", always_2d=True)
    band, band_rate = sf.read(song / "song.ogg", dtype="float32", always_2d=True)
    if band_rate != rate:
        raise SystemExit(f"{song}: guitar.ogg at {rate} Hz, song.ogg at {band_rate} Hz")
    n = min(len(guitar), len(band))
    a = min(int(start_s * rate), n)
    b = n if seconds <= 0 else min(n, a + int(seconds * rate))
    if b - a < rate:
        raise SystemExit(f"{song}: less than 1 s of audio from {start_s} s")
    return rate, np.ascontiguousarray(guitar[a:b].T), np.ascontiguousarray(band[a:b].T)


def markdown(report: dict) -> str:
    keys = [*STEMS, "outside_other"]
    lines = [
        "# Where a real lead guitar goes",
        "",
        f"{len(report['songs'])} Frets on Fire songs, {report['seconds_per_song']} from {report['start_s']} s "
        f"each; evaluated {report['created']}. The guitar's energy found in each estimated stem, dB relative to the "
        "guitar (other: higher is better; vocals, drums, bass, outside other: lower is better). Median over songs:",
        "",
    ]
    lines += quality.shares_table(report["summary"], keys)
    lines += [
        "",
        f"The {len(report['held_out_songs'])} songs whose guitar is held out from training "
        "(engine/training/real_material.py's pool holds the other songs' guitar tracks), median:",
        "",
    ]
    lines += quality.shares_table(report["summary_held_out"], keys)
    lines += ["", "Per song (guitar in vocals / outside other, dB; guitar level against the band):", ""]
    methods = list(report["summary"])
    lines += ["| song | guitar vs band dB | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, song in report["songs"].items():
        cells = [f"{song['methods'][m]['vocals']:.1f} / {song['methods'][m]['outside_other']:.1f}" for m in methods]
        shown = f"{name} (training pool)" if song["in_training"] else name
        lines.append(f"| {shown} | {song['guitar_vs_band_db']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Methods:", ""] + [f"- **{m}**: {d}" for m, d in report["methods"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=SONGS, help="folder searched for guitar.ogg + song.ogg pairs")
    parser.add_argument("--start", type=float, default=30.0, help="seconds into each song")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per song (0: to the end)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    quality.add_model_options(parser)
    args = parser.parse_args()

    model, candidates, methods = quality.share_methods(args, DEFAULT_MODEL)
    songs = {}
    for path in find_songs(args.root):
        rate, guitar, band = load(path, args.start, args.seconds)
        mixture = guitar + band
        song = quality.Song(path.name, rate, mixture, np.zeros((len(STEMS), *mixture.shape), dtype=np.float32))
        level = 10 * np.log10(np.sum(guitar.astype(np.float64) ** 2) / np.sum(band.astype(np.float64) ** 2))
        entry = {"seconds": round(mixture.shape[1] / rate, 2), "guitar_vs_band_db": round(float(level), 2)}
        entry["in_training"] = path.relative_to(args.root).as_posix() in GUITAR_TRAIN
        entry["methods"] = {
            m.name: quality.source_shares(m.separate(song), guitar, band, rate, "other") for m in methods
        }
        songs[path.name] = entry
        print(path.name, json.dumps(entry["methods"]), file=sys.stderr, flush=True)
    keys = [*STEMS, "outside_other"]
    held_out = {name: song for name, song in songs.items() if not song["in_training"]}
    names = [m.name for m in methods]
    summary = quality.median_shares(list(songs.values()), names, keys)
    summary_held_out = quality.median_shares(list((held_out or songs).values()), names, keys)
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": str(args.root),
        "start_s": args.start,
        "seconds_per_song": f"{args.seconds:g} s" if args.seconds > 0 else "the rest of the song",
        "methods": {m.name: m.description for m in methods},
        "model": model.params,
        "candidates": {c.name: c.params for c in candidates},
        "summary": summary,
        "summary_held_out": summary_held_out,
        "held_out_songs": sorted(held_out),
        "songs": songs,
    }
    quality.write_json_and_markdown(args.out, "real_guitar", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
