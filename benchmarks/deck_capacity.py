"""Deck capacity: how many decks one machine separates live, on its CPU or on its GPU.

The live worker separates every deck in one batched call per hop (STFT, model, inverse STFT). This sweeps the number
of decks (1, 2, 4, 8, ...) and times that per-hop call, one hop per call as in live use; a deck count is carried when
the p99 stays within ``--budget`` of the hop's duration (default 50 %: the other half is the margin for the device
callback, the control thread and the scheduler). The sweep stops at the first count over budget.

    python3 benchmarks/deck_capacity.py [--device auto|cpu|cuda] [--threads 1] [--blocks 1000] [--budget 50]

``--device cuda`` needs onnxruntime-gpu and an NVIDIA GPU; asked for without them, it stops with an error instead of
timing the CPU. Writes benchmarks/results/deck_capacity_cpu.* or deck_capacity_gpu.* (JSON and a markdown table).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402

from benchmarks.engine_speed import time_blocks  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def sweep(model: Path, device: str, threads: int, blocks: int, budget: float, max_decks: int) -> list[dict]:
    rows = []
    decks = 1
    while decks <= max_decks:
        row = time_blocks(model, decks, threads, blocks, device=device)
        row["within_budget"] = row["p99_percent_of_block"] <= budget
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not row["within_budget"]:
            break
        decks *= 2
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the .onnx to time (default: built-in)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--blocks", type=int, default=1000, help="timed hops per deck count")
    parser.add_argument("--budget", type=float, default=50.0, help="p99 share of the hop a deck count may use, %%")
    parser.add_argument("--max-decks", type=int, default=256)
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    rows = sweep(args.model, args.device, args.threads, args.blocks, args.budget, args.max_decks)
    carried = max((r["batch"] for r in rows if r["within_budget"]), default=0)
    capped = rows[-1]["within_budget"]  # the sweep hit --max-decks before the budget: a lower bound
    provider = rows[0]["provider"]
    kind = "gpu" if provider != "CPUExecutionProvider" else "cpu"
    result = {
        "date": started,
        "machine": platform.processor() or platform.machine(),
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "provider": provider,
        "threads": args.threads,
        "budget_percent_of_hop": args.budget,
        "decks_carried": carried,
        "decks_carried_is_lower_bound": capped,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"deck_capacity_{kind}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Deck capacity ({provider}, {args.threads} thread(s))",
        "",
        "Per-hop time of one batched separation call (STFT + model + spatial filter as the card says + iSTFT for "
        f"every deck), {args.blocks} hops per row; a deck count is carried when its p99 is within {args.budget:g} % "
        f"of the hop. Measured {started}.",
        "",
        f"**Decks carried: {'at least ' if capped else ''}{carried}**"
        + (f" (the sweep stopped at --max-decks {args.max_decks})." if capped else "."),
        "",
        "| decks | median ms | p99 ms | max ms | p99 % of hop | carried |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['median_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['p99_percent_of_block']} | "
            f"{'yes' if r['within_budget'] else 'no'} |"
        )
    (RESULTS / f"deck_capacity_{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
