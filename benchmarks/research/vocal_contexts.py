"""Where a real sung vocal goes, by what it is mixed with: the one real singer on a track of her own reachable here.

The MUSDB18 excerpt that stempeg ships (see real_stems.py) holds a real sung vocal on its own stream. On the whole
excerpt the default model puts less of it in the vocal stem than in "other". This benchmark asks why, by mixing the
same vocal with less or other company and asking where it goes (``engine.evaluate.source_shares``, dB relative to
the vocal: vocals higher is better, outside vocals lower):

* ``solo``: the vocal alone;
* ``own drums + bass``: with the excerpt's drums and bass;
* ``own other``: with the excerpt's "other" (guitars and keys);
* ``own accompaniment``: the excerpt as it is;
* ``band at the same level``: over a Frets on Fire band track (``song.ogg``, 30 s in) scaled to the accompaniment's
  level, so the company changes and the level does not;
* ``centred, own accompaniment``: the vocal made mono (the mean of its channels in both), over its own
  accompaniment: the control for the next;
* ``centred and WORLD-resynthesised, own accompaniment``: that mono vocal analysed and resynthesised by the WORLD
  vocoder (pyworld, the vocoder that sings the synthetic songs) with nothing changed, then scaled back to the mono
  vocal's RMS (the resynthesis comes out 1.8 dB louder, most of all in the loudest frames); the shares are then of
  the resynthesised vocal. A model that keys on the vocoder's sound keeps more of this one than of the control.
* ``centred with WORLD's frame levels, own accompaniment``: the mono vocal itself, each 46 ms frame brought to the
  level of the same frame of its WORLD resynthesis (``with_frame_levels_of``; the RMS kept): how much of what WORLD
  changes is its level contour alone.
* ``presence -4 dB, own accompaniment`` and ``presence +4 dB, ...``: the vocal with its 1-8 kHz band turned down or
  up by 4 dB (``presence_tilted``; the level kept): a model that takes a bright voice for an instrument keeps more of
  the darker one.
* ``centred + heavy reverb, own accompaniment`` and ``centred and WORLD-resynthesised + heavy reverb, ...``: the
  two mono vocals above through a long, wet pedalboard reverb (``reverberated``; room 0.8, wet 0.35, the level
  kept), the reverb counted as the vocal's: whether what WORLD's resynthesis helps with is the reverb it folds away.

One singer and 5.8 s: a diagnosis of one excerpt, not a measurement of real singing. Writes
benchmarks/results/vocal_contexts/.
"""

from __future__ import annotations

import argparse
import json
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
from stembridge.engine.training import real_material  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vocal_contexts"
KEYS = [*STEMS, "outside_vocals"]


def world_resynthesis(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono x (n,) analysed and resynthesised by WORLD, unchanged: float32 (n,)."""
    import pyworld as pw

    mono = x.astype(np.float64)
    f0, t = pw.dio(mono, sample_rate, frame_period=5.0, f0_floor=60, f0_ceil=800)
    f0 = pw.stonemask(mono, f0, t, sample_rate)
    sp, ap = pw.cheaptrick(mono, f0, t, sample_rate), pw.d4c(mono, f0, t, sample_rate)
    y = pw.synthesize(f0, sp, ap, sample_rate, 5.0)[: len(x)]
    return np.pad(y, (0, len(x) - len(y))).astype(np.float32)


PRESENCE_HZ = (1000.0, 8000.0)


def at_level_of(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y scaled to x's RMS (a change of sound, not of level): float32, y's shape."""
    return (y * np.sqrt(np.mean(x**2) / max(float(np.mean(y**2)), 1e-20))).astype(np.float32)


def presence_tilted(x: np.ndarray, sample_rate: int, db: float) -> np.ndarray:
    """x (channels, n) with its PRESENCE_HZ band raised by ``db`` dB (half-octave raised-cosine edges), then scaled
    back to x's RMS: float32 (channels, n)."""
    hz = np.fft.rfftfreq(x.shape[1], 1 / sample_rate)
    octaves = np.log2(np.maximum(hz, 1.0))
    lo, hi = np.log2(PRESENCE_HZ[0]), np.log2(PRESENCE_HZ[1])
    inside = np.clip(np.minimum(octaves - (lo - 0.5), (hi + 0.5) - octaves) / 0.5, 0.0, 1.0)
    gain = 10 ** (db * (0.5 - 0.5 * np.cos(np.pi * inside)) / 20)
    y = np.fft.irfft(np.fft.rfft(x, axis=1) * gain, n=x.shape[1], axis=1)
    return at_level_of(y, x)


FRAME = 2048  # samples (46 ms at 44.1 kHz) over which with_frame_levels_of measures a level
FRAME_HOP = 256


def frame_levels(x: np.ndarray) -> np.ndarray:
    """Mean square of mono x (n,) in Hann windows of FRAME samples every FRAME_HOP, the first centred on sample 0:
    float64 (ceil(n / FRAME_HOP) + 1,)."""
    padded = np.pad(x.astype(np.float64), (FRAME // 2, FRAME // 2 + FRAME_HOP))
    window = np.hanning(FRAME) / np.hanning(FRAME).sum()
    starts = np.arange(0, len(x) + 1, FRAME_HOP)
    if len(x) % FRAME_HOP:
        starts = np.append(starts, starts[-1] + FRAME_HOP)
    return np.array([np.dot(padded[i : i + FRAME] ** 2, window) for i in starts])


def with_frame_levels_of(x: np.ndarray, y: np.ndarray, floor_db: float = -60.0) -> np.ndarray:
    """Mono x (n,) with each frame's level moved to that of the same frame of y (n,) (a gain curve interpolated
    between frame centres; frames more than ``floor_db`` below x's loudest are left alone), then scaled back to x's
    RMS: float32 (n,)."""
    lx, ly = frame_levels(x), frame_levels(y)
    floor = lx.max() * 10 ** (floor_db / 10)
    gain = np.where(lx > floor, np.sqrt(np.maximum(ly, floor) / np.maximum(lx, floor)), 1.0)
    centres = np.arange(len(gain)) * FRAME_HOP
    return at_level_of(x * np.interp(np.arange(len(x)), centres, gain), x)


def reverberated(x: np.ndarray, sample_rate: int, room: float = 0.8, wet: float = 0.35) -> np.ndarray:
    """x (channels, n) through pedalboard's Reverb (``room`` size, ``wet`` level, dry at 1 - wet / 2), scaled back to
    x's RMS: float32 (channels, n)."""
    from pedalboard import Pedalboard, Reverb

    board = Pedalboard([Reverb(room_size=room, damping=0.5, wet_level=wet, dry_level=1 - wet / 2)])
    y = board(np.ascontiguousarray(x, dtype=np.float32), sample_rate)
    return at_level_of(y, x)


def contexts(song: quality.Song, band_track: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (vocal, company)}, each float32 (channels, n), as listed in the docstring."""
    stems = dict(zip(STEMS, song.references, strict=True))
    vocal = stems["vocals"]
    accompaniment = stems["drums"] + stems["bass"] + stems["other"]
    n = vocal.shape[1]
    band = real_material.load_audio(band_track, song.sample_rate)[:, 30 * song.sample_rate :][:, :n]
    if band.shape[1] < n:
        raise SystemExit(f"{band_track}: shorter than the excerpt after 30 s")
    band = band[: vocal.shape[0]] * np.sqrt(np.mean(accompaniment**2) / max(float(np.mean(band**2)), 1e-12))
    mid = vocal.mean(axis=0)
    centred = np.broadcast_to(mid, vocal.shape).astype(np.float32)
    world = at_level_of(world_resynthesis(mid, song.sample_rate), mid)
    resynthesised = np.broadcast_to(world, vocal.shape).astype(np.float32)
    world_levels = np.broadcast_to(with_frame_levels_of(mid, world), vocal.shape).astype(np.float32)
    return {
        "solo": (vocal, np.zeros_like(vocal)),
        "own drums + bass": (vocal, stems["drums"] + stems["bass"]),
        "own other": (vocal, stems["other"]),
        "own accompaniment": (vocal, accompaniment),
        "band at the same level": (vocal, band.astype(np.float32)),
        "centred, own accompaniment": (centred, accompaniment),
        "centred and WORLD-resynthesised, own accompaniment": (resynthesised, accompaniment),
        "centred with WORLD's frame levels, own accompaniment": (world_levels, accompaniment),
        "presence -4 dB, own accompaniment": (presence_tilted(vocal, song.sample_rate, -4.0), accompaniment),
        "presence +4 dB, own accompaniment": (presence_tilted(vocal, song.sample_rate, 4.0), accompaniment),
        "centred + heavy reverb, own accompaniment": (reverberated(centred, song.sample_rate), accompaniment),
        "centred and WORLD-resynthesised + heavy reverb, own accompaniment": (
            reverberated(resynthesised, song.sample_rate),
            accompaniment,
        ),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Where a real sung vocal goes, by its company",
        "",
        f"The vocal of {report['source']} ({report['seconds']:.1f} s, {report['vocal_db']:+.1f} dB against its "
        f"accompaniment) in different company; evaluated {report['created']}. The vocal's energy in each estimated "
        "stem, dB relative to the vocal (vocals: higher is better; the others and outside vocals: lower is better).",
        "",
    ]
    for name, entry in report["contexts"].items():
        lines += [f"## {name}", "", *quality.shares_table(entry, KEYS), ""]
    lines += ["Methods:", ""] + [f"- **{m}**: {d}" for m, d in report["methods"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=Path, default=real_material.FRETSONFIRE, help="Frets on Fire songs folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    quality.add_model_options(parser)
    args = parser.parse_args()

    band_track = next(iter(sorted(args.songs.rglob("song.ogg"))), None)
    if band_track is None:
        raise SystemExit(
            f"{args.songs}: no song.ogg band tracks (apt-get install {real_material.FRETSONFIRE_PACKAGES})"
        )
    model, candidates, methods = quality.share_methods(args, DEFAULT_MODEL)
    with tempfile.TemporaryDirectory(prefix="stembridge_contexts_") as tmp:
        song = quality.load_song(real_stems.decode_song(real_stems.example_stem_file(), Path(tmp), 0.1))
    results = {}
    for name, (vocal, company) in contexts(song, band_track).items():
        mixture = vocal + company
        mix_song = quality.Song(name, song.sample_rate, mixture, np.zeros((len(STEMS), *mixture.shape), np.float32))
        results[name] = {
            m.name: quality.source_shares(m.separate(mix_song), vocal, company, song.sample_rate, "vocals")
            for m in methods
        }
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    stems = dict(zip(STEMS, song.references, strict=True))
    accompaniment = stems["drums"] + stems["bass"] + stems["other"]
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": "stempeg's example (MUSDB18 excerpt)",
        "seconds": song.duration_s,
        "vocal_db": 10 * np.log10(np.mean(stems["vocals"] ** 2) / np.mean(accompaniment**2)),
        "band_track": str(band_track),
        "methods": {m.name: m.description for m in methods},
        "model": model.params,
        "candidates": {c.name: c.params for c in candidates},
        "contexts": results,
    }
    quality.write_json_and_markdown(args.out, "vocal_contexts", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
