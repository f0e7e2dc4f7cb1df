"""Speed of `stembridge separate`: the high-quality path against the live path, in multiples of real time.

One track of synthesized test audio (tones, noise bursts and a pulse: not music, which does not change the cost)
separated whole by each path and setting, in the same run, repeated; the median wall time per setting. The
high-quality path's stages are timed apart (look-ahead vocal model, causal model on the rest, joint mask) from
its own profile. Settings: ONNX Runtime intra-op threads 1 and 2 (the engine's own default is 1).

    python3 benchmarks/separate_speed.py [--seconds 120] [--repeats 3]

Writes benchmarks/results/separate_speed.json and separate_speed.md. The machine is a shared 2-core one whose timing
drifts between runs: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SR = 44100


def test_track(seconds: float) -> np.ndarray:
    """float32 (2, n): chords of tones, noise bursts on the beat and a low pulse."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.1 * sum(np.sin(2 * np.pi * f * t + c) for f, c in ((220, 0), (277, 1), (330, 2), (55, 3)))
    beat = (np.mod(t, 0.5) < 0.05).astype(float)
    x = np.stack([x, np.roll(x, 100)]) + 0.2 * beat * rng.standard_normal((2, t.size))
    return x.astype(np.float32)


def main() -> None:
    from stembridge.engine.hq import HighQualitySeparator
    from stembridge.engine.separate import CausalFileSeparator
    from stembridge.engine.separator import StreamingSeparator
    from stembridge.engine.stream import BlockAdapter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    audio = test_track(args.seconds)
    rows = []
    for threads in (1, 2):
        causal = StreamingSeparator(intra_op_threads=threads, max_hops=66)
        paths = {
            "hq": HighQualitySeparator(threads=threads),
            "live": CausalFileSeparator(BlockAdapter(causal, max_block_size=4096, block_size=4096), 4096),
        }
        for name, sep in paths.items():
            sep.separate(audio[:, : 10 * SR])  # warm up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                stems = sep.separate(audio)
                times.append(time.perf_counter() - start)
            assert np.allclose(stems.sum(axis=0), audio, atol=1e-4)
            median = statistics.median(times)
            rows.append(
                {
                    "path": name,
                    "threads": threads,
                    "median_s": round(median, 3),
                    "x_real_time": round(args.seconds / median, 1),
                    "runs_s": [round(t, 3) for t in times],
                }
            )
            print(rows[-1], flush=True)
    by = {(r["path"], r["threads"]): r for r in rows}
    report = {
        "benchmark": "separate_speed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "track_seconds": args.seconds,
        "repeats": args.repeats,
        "rows": rows,
        "hq_cost_vs_live": {t: round(by[("hq", t)]["median_s"] / by[("live", t)]["median_s"], 2) for t in (1, 2)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "separate_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# separate: speed of the two paths",
        "",
        f"{args.seconds:g} s test track, median of {args.repeats} runs each, {report['machine']}; {report['created']}.",
        "",
        "| path | ONNX threads | median s | x real time |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['path']} | {r['threads']} | {r['median_s']} | {r['x_real_time']} |" for r in rows]
    lines += ["", f"High-quality path cost / live path cost: {report['hq_cost_vs_live']}", ""]
    (args.out / "separate_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
