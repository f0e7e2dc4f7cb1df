"""Engine speed: per-block time of the streaming separator and the throughput of `stembridge separate`.

Measures, for each model: per-hop block time (STFT + model + spatial filter where on + inverse STFT, one hop per
call as in live use) median / p99 / max and the realtime factor, at batch (decks) 1 and 4 and ONNX Runtime threads 1
and 2; the offline throughput of the separate path (block size 4096) in multiples of real time, with and without the
overlapped model call (``engine.separate``); and the spatial filter's cost, paired (``spatial_filter_cost``).

Models: the shipped default model when present (as its card says, with the spatial filter, and as
``default_plain`` without it: the filter's cost in the same run), plus two architecture stand-ins built by
tests/fixtures/make_fixture_model.py at realistic sizes (hop 256: n_fft 1024; hop 512: n_fft 2048; GRU hidden 256)
so hop 256 and 512 can be compared in the same run. Stand-ins have random weights: they time, they do not separate.

    python3 benchmarks/engine_speed.py [--blocks 2000] [--seconds 60] [--model NAME=PATH ...]

``--model`` adds any model-contract model to the same run (e.g. an earlier default, as a baseline).

Writes benchmarks/results/engine_speed.json and engine_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from soak import machine_cpu, machine_usage  # noqa: E402
from stembridge.engine.model_card import load_card  # noqa: E402
from stembridge.engine.separate import separate_audio  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL, StreamingSeparator  # noqa: E402
from stembridge.engine.stream import BlockAdapter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def models(tmp: Path, extra: list[str]) -> dict[str, tuple[Path, bool | None]]:
    """name -> (model path, spatial_filter: None = as the card says, False = off)."""
    import make_fixture_model

    found: dict[str, tuple[Path, bool | None]] = {}
    if DEFAULT_MODEL.exists():
        found["default"] = (DEFAULT_MODEL, None)
        if load_card(DEFAULT_MODEL).spatial_filter:
            found["default_plain"] = (DEFAULT_MODEL, False)
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).exists():
            raise SystemExit(f"--model wants NAME=PATH to an existing .onnx, got {item!r}")
        found[name] = (Path(path), None)
    for name, n_fft, hop in (("standin_hop256", 1024, 256), ("standin_hop512", 2048, 512)):
        found[name] = (make_fixture_model.write(tmp, name, n_fft=n_fft, hop=hop, hidden=256), None)
    return found


def time_blocks(
    path: Path, batch: int, threads: int, num_blocks: int, device: str = "auto", spatial_filter: bool | None = None
) -> dict:
    sep = StreamingSeparator(
        path, device=device, num_streams=batch, intra_op_threads=threads, max_hops=1, spatial_filter=spatial_filter
    )
    hop = sep.hop_size
    audio = (np.random.default_rng(0).standard_normal((batch, sep.num_channels, hop * 64)) * 0.1).astype(np.float32)
    for i in range(50):
        sep.process(audio[..., (i % 64) * hop : (i % 64 + 1) * hop])
    times = np.empty(num_blocks)
    before = machine_cpu()
    for i in range(num_blocks):
        block = audio[..., (i % 64) * hop : (i % 64 + 1) * hop]
        t0 = time.perf_counter()
        sep.process(block)
        times[i] = time.perf_counter() - t0
    steal = machine_usage(before, machine_cpu())["steal_pct"]
    block_ms = 1000.0 * hop / sep.sample_rate
    ms = times * 1000.0
    return {
        "hop_size": hop,
        "batch": batch,
        "threads": threads,
        "provider": sep.active_provider,
        "spatial_filter": sep.spatial is not None,
        "block_ms": round(block_ms, 3),
        "median_ms": round(float(np.median(ms)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 4),
        "p99_percent_of_block": round(100.0 * float(np.percentile(ms, 99)) / block_ms, 2),
        "realtime_factor": round(block_ms / float(np.median(ms)), 1),
        "machine_steal_pct": steal,
    }


def spatial_filter_cost(path: Path, batch: int, num_blocks: int) -> dict:
    """The spatial filter's cost per hop, paired: two separators of the same model, with and without the filter, take
    the same blocks alternately, so both see the same machine (its noise moves both alike). 1 thread."""
    seps = [
        StreamingSeparator(path, num_streams=batch, intra_op_threads=1, max_hops=1, spatial_filter=on)
        for on in (True, False)
    ]
    hop = seps[0].hop_size
    audio = (np.random.default_rng(0).standard_normal((batch, 2, hop * 64)) * 0.1).astype(np.float32)
    times = np.empty((2, num_blocks))
    for i in range(50 + num_blocks):
        block = audio[..., (i % 64) * hop : (i % 64 + 1) * hop]
        for j in (0, 1) if i % 2 else (1, 0):  # alternate which goes first
            t0 = time.perf_counter()
            seps[j].process(block)
            if i >= 50:
                times[j, i - 50] = time.perf_counter() - t0
    ms = times * 1000.0
    block_ms = 1000.0 * hop / seps[0].sample_rate
    return {
        "batch": batch,
        "block_ms": round(block_ms, 3),
        "with_filter_median_ms": round(float(np.median(ms[0])), 4),
        "with_filter_p99_ms": round(float(np.percentile(ms[0], 99)), 4),
        "without_median_ms": round(float(np.median(ms[1])), 4),
        "without_p99_ms": round(float(np.percentile(ms[1], 99)), 4),
        "median_difference_ms": round(float(np.median(ms[0] - ms[1])), 4),
        "median_ratio": round(float(np.median(ms[0]) / np.median(ms[1])), 3),
    }


def separate_throughput(
    path: Path, seconds: float, threads: int, overlap: bool, block_size: int = 4096, spatial_filter: bool | None = None
) -> dict:
    sep = StreamingSeparator(
        path, intra_op_threads=threads, max_hops=block_size // 64 + 2, spatial_filter=spatial_filter
    )
    adapter = BlockAdapter(sep, max_block_size=block_size, block_size=block_size)
    n = int(seconds * sep.sample_rate)
    audio = (np.random.default_rng(1).standard_normal((2, n)) * 0.1).astype(np.float32)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        separate_audio(adapter, audio, block_size, overlap=overlap)
        runs.append(time.perf_counter() - t0)
    elapsed = float(np.median(runs))
    return {
        "threads": threads,
        "overlap": overlap,
        "block_size": block_size,
        "audio_s": seconds,
        "median_elapsed_s": round(elapsed, 3),
        "x_realtime": round(seconds / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2000, help="timed blocks per configuration")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio seconds for the separate throughput")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH: another model to time (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"machine": platform.processor() or platform.machine(), "per_block": {}, "separate": {}}
        for name, (path, spatial) in models(Path(tmp), args.model).items():
            results["per_block"][name] = [
                time_blocks(path, batch, threads, args.blocks, spatial_filter=spatial)
                for batch in (1, 4)
                for threads in (1, 2)
            ]
            results["separate"][name] = [
                separate_throughput(path, args.seconds, t, overlap, spatial_filter=spatial)
                for overlap in (False, True)
                for t in (1, 2)
            ]
            print(name, json.dumps(results["per_block"][name][0]), json.dumps(results["separate"][name][0]))
        if DEFAULT_MODEL.exists():
            results["spatial_filter_cost"] = [spatial_filter_cost(DEFAULT_MODEL, b, args.blocks) for b in (1, 4)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Engine speed",
        "",
        "Per-block time of one hop (STFT + model + spatial filter where on + iSTFT), 2-core CPU; `p99 %` is p99 as "
        "a share of the block; `default_plain` is the default model without its spatial filter; `machine steal %`: "
        "CPU time the hypervisor took from this VM while the row was measured (tails grow with it).",
        "",
        "| model | hop | decks | threads | median ms | p99 ms | max ms | p99 % | x real time | machine steal % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results["per_block"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['hop_size']} | {r['batch']} | {r['threads']} | {r['median_ms']} | {r['p99_ms']} | "
                f"{r['max_ms']} | {r['p99_percent_of_block']} | {r['realtime_factor']} | {r['machine_steal_pct']} |"
            )
    lines += [
        "",
        "`separate` throughput (block 4096, median of 3 runs). `threads`: ONNX Runtime intra-op threads; `overlap`: "
        "the model call runs on a helper thread while the main thread does the STFT work of the blocks around it "
        "(the default; bit-identical stems).",
        "",
        "| model | threads | overlap | x real time |",
        "|---|---|---|---|",
    ]
    for name, rows in results["separate"].items():
        for r in rows:
            lines.append(f"| {name} | {r['threads']} | {'yes' if r['overlap'] else 'no'} | {r['x_realtime']} |")
    if results.get("spatial_filter_cost"):
        lines += [
            "",
            "The spatial filter's cost, paired: the default model with and without it, taking the same blocks "
            "alternately (1 thread; per-hop ms).",
            "",
            "| decks | with filter median | p99 | without median | p99 | median difference | ratio of medians |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in results["spatial_filter_cost"]:
            lines.append(
                f"| {r['batch']} | {r['with_filter_median_ms']} | {r['with_filter_p99_ms']} | {r['without_median_ms']} "
                f"| {r['without_p99_ms']} | {r['median_difference_ms']} | {r['median_ratio']} |"
            )
    (RESULTS / "engine_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
