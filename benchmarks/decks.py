"""Decks for a set: loading while running, callback times while another deck loads, and host rates.

Each figure is measured beside its baseline in the same run (timings on shared machines drift between runs):

1. load to first block: from ``TrackLoader.load`` to the deck holding the track (it plays from the next block), for
   a 5-minute MP3 and WAV (synthetic: tones and noise, made here with ffmpeg), against decoding the whole file first
   (``load_deck_audio``, the only way before run-time loading);
2. audio callback p50/p99/max with deck 1 playing, while deck 2 loads the 5-minute MP3 over and over, against the
   same run with no load (the engine on the dummy backend's real-time clock, the worker in its own process, as
   ``stembridge live`` runs it);
3. CPU (this process and the worker) and latency with one file deck at a 48 kHz host rate (the worker resampling
   with soxr) against 44.1 kHz (the model's own rate);
4. the audio thread's cost per deck of tempo 0.92 (keylock on and off, Rubber Band) against tempo 1 (the engine
   driven block by block, the worker stepped outside the timing).

    python benchmarks/decks.py [--model PATH] [--seconds 10]

Writes benchmarks/results/decks/decks.json and decks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stembridge.engine.live.backends import DummyBackend  # noqa: E402
from stembridge.engine.live.deck import FileDeck, load_deck_audio  # noqa: E402
from stembridge.engine.live.engine import LiveEngine, hist_percentile_ms  # noqa: E402
from stembridge.engine.live.loader import TrackLoader  # noqa: E402
from stembridge.engine.live.monitor import engine_cpu_s  # noqa: E402
from stembridge.engine.live.resample import ResampledSeparator  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL, StreamingSeparator  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "decks"
PERIOD = 256


def make_tracks(folder: Path, seconds: float = 300.0) -> dict[str, Path]:
    """A 5-minute synthetic track as MP3 (192 kbit/s) and 16-bit WAV, 44.1 kHz stereo."""
    mp3, wav = folder / "five.mp3", folder / "five.wav"
    source = (f"sine=frequency=220:duration={seconds}", f"anoisesrc=d={seconds}:a=0.05")
    mix = "[0][1]amix=inputs=2,aformat=channel_layouts=stereo"
    for path, codec in ((mp3, ["-b:a", "192k"]), (wav, ["-c:a", "pcm_s16le"])):
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source[0], "-f", "lavfi", "-i", source[1],
             "-filter_complex", mix, "-ar", "44100", *codec, str(path)],
            check=True,
        )  # fmt: skip
    return {"mp3": mp3, "wav": wav}


def engine_for(model: Path, decks: list, rate: int, mode: str = "process") -> LiveEngine:
    sep = StreamingSeparator(model, num_streams=len(decks), max_hops=64)
    if rate != sep.sample_rate:
        sep = ResampledSeparator(sep, rate, PERIOD)
    return LiveEngine(sep, decks, PERIOD, worker_mode=mode)


def run_backend(engine: LiveEngine, rate: int):
    backend = DummyBackend()
    backend.open(rate, PERIOD)
    engine.start()
    backend.start(engine.process_block, engine.input_names(), engine.output_names())
    return backend


def callback_stats(engine: LiveEngine, since_hist: np.ndarray) -> dict:
    hist = engine.cb_hist - since_hist
    return {
        "blocks": int(hist.sum()),
        "callback_ms_p50": hist_percentile_ms(hist, 50),
        "callback_ms_p99": hist_percentile_ms(hist, 99),
        "callback_ms_p999": hist_percentile_ms(hist, 99.9),
    }


def load_to_first_block(model: Path, tracks: dict[str, Path], repeats: int = 3) -> list[dict]:
    rows = []
    rate = 44100
    for kind, path in tracks.items():
        deck = FileDeck(None, "deck 1")
        engine = engine_for(model, [deck], rate, mode="thread")
        loader = TrackLoader(engine.decks, engine.queues, rate).start()
        backend = run_backend(engine, rate)
        try:
            firsts, wholes = [], []
            for _ in range(repeats):
                previous = deck.track
                t0 = time.perf_counter()
                loader.load(1, path)
                while deck.track is previous:  # swapped in at a block boundary by the audio thread
                    time.sleep(0.0005)
                firsts.append(1000 * (time.perf_counter() - t0))
                loader.wait_idle(60)
                wholes.append(1000 * (time.perf_counter() - t0))
            baseline = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                load_deck_audio(path, rate)
                baseline.append(1000 * (time.perf_counter() - t0))
        finally:
            backend.close()
            engine.close()
            loader.close()
        rows.append({
            "file": f"5-minute {kind.upper()}",
            "first_block_ms": float(np.median(firsts)),
            "fully_decoded_ms": float(np.median(wholes)),
            "baseline_decode_whole_first_ms": float(np.median(baseline)),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def callback_while_loading(model: Path, mp3: Path, seconds: float) -> dict:
    rate = 44100
    t = np.arange(int(20 * rate)) / rate
    a = np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2).astype(np.float32)
    decks = [FileDeck(a, "a", loop=True), FileDeck(None, "deck 2")]
    engine = engine_for(model, decks, rate)
    loader = TrackLoader(engine.decks, engine.queues, rate).start()
    backend = run_backend(engine, rate)
    try:
        time.sleep(2.0)  # warm: separation on, ramps done
        mark, xruns0 = engine.cb_hist.copy(), backend.num_xruns
        time.sleep(seconds)
        idle = callback_stats(engine, mark) | {"xruns": backend.num_xruns - xruns0}
        mark, xruns0, loads = engine.cb_hist.copy(), backend.num_xruns, 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            loader.load(2, mp3)
            loader.wait_idle(60)
            loads += 1
        loading = callback_stats(engine, mark) | {"xruns": backend.num_xruns - xruns0, "loads": loads}
    finally:
        backend.close()
        engine.close()
        loader.close()
    result = {"no_load": idle, "deck_2_loading": loading}
    print(json.dumps(result), flush=True)
    return result


def host_rates(model: Path, seconds: float) -> list[dict]:
    rows = []
    for rate in (44100, 48000):
        t = np.arange(int(20 * rate)) / rate
        a = np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2).astype(np.float32)
        engine = engine_for(model, [FileDeck(a, "a", loop=True)], rate)
        backend = run_backend(engine, rate)
        try:
            time.sleep(2.0)
            mark, cpu0, t0 = engine.cb_hist.copy(), engine_cpu_s(engine), time.monotonic()
            time.sleep(seconds)
            cpu = 100.0 * (engine_cpu_s(engine) - cpu0) / (time.monotonic() - t0)
            stats = engine.stats()
            row = {
                "host_rate": rate,
                "cpu_pct": cpu,
                "latency_ms": stats["latency_ms"],
                "resample_latency_ms": stats["resample_latency_ms"],
                "deadline_misses": stats["deadline_misses"],
                "xruns": backend.num_xruns,
            } | callback_stats(engine, mark)
        finally:
            backend.close()
            engine.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def tempo_cost(model: Path, blocks: int = 1500) -> list[dict]:
    rate = 44100
    t = np.arange(int(30 * rate)) / rate
    a = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1760 * t)] * 2).astype(np.float32)
    rows = []
    for label, tempo, keylock in (("tempo 1 (baseline)", 1.0, True), ("tempo 0.92, keylock", 0.92, True),
                                  ("tempo 0.92, no keylock", 0.92, False)):  # fmt: skip
        deck = FileDeck(a, "a")
        engine = engine_for(model, [deck], rate, mode="thread")
        deck.ensure_stretcher()
        from stembridge.engine.commands import SetParam

        engine.push(1, SetParam("transport/tempo", tempo))
        engine.push(1, SetParam("transport/keylock", float(keylock)))
        inp = np.zeros((0, PERIOD), np.float32)
        out = np.zeros((engine.num_outputs, PERIOD), np.float32)
        for _ in range(50):  # warm up (the stretcher starts with a burst)
            engine.process_block(inp, out)
            engine.worker.step()
        mark = engine.cb_hist.copy()
        for _ in range(blocks):
            engine.process_block(inp, out)
            engine.worker.step()
        hist = engine.cb_hist - mark
        mean_ms = float((np.arange(hist.size) + 0.5) @ hist / hist.sum()) * 0.01
        rows.append({
            "deck": label,
            "callback_ms_mean": mean_ms,
            "callback_ms_p99": hist_percentile_ms(hist, 99),
            "core_pct": 100.0 * mean_ms / (1000.0 * PERIOD / rate),
        })  # fmt: skip
        deck.release_stretcher()
        engine.close()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Decks for a set",
        "",
        f"{result['machine']}, model {result['model']}, period {PERIOD}, {result['date']}. "
        "Synthetic 5-minute tracks (tones and noise), made by the benchmark.",
        "",
        "## Load to first block (median of 3)",
        "",
        "| file | first block heard after | fully decoded after | baseline: decode all, then play |",
        "|---|---|---|---|",
    ]
    for r in result["load"]:
        lines.append(
            f"| {r['file']} | {r['first_block_ms']:.1f} ms | {r['fully_decoded_ms']:.0f} ms | "
            f"{r['baseline_decode_whole_first_ms']:.0f} ms |"
        )
    c = result["callback"]
    lines += [
        "",
        "## Audio callback while another deck loads (deck 1 playing, worker process)",
        "",
        "| | blocks | p50 | p99 | p99.9 | xruns |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("no load (baseline)", "no_load"), (f"deck 2 loading ({c['deck_2_loading']['loads']} loads)",
                                                            "deck_2_loading")):  # fmt: skip
        r = c[key]
        lines.append(
            f"| {name} | {r['blocks']} | {r['callback_ms_p50']:.2f} ms | {r['callback_ms_p99']:.2f} ms | "
            f"{r['callback_ms_p999']:.2f} ms | {r['xruns']} |"
        )
    lines += [
        "",
        "## Host rate (one file deck, worker process)",
        "",
        "| host rate | CPU | latency (live input) | of which resampling | callback p99 | misses | xruns |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rates"]:
        lines.append(
            f"| {r['host_rate']} Hz{' (baseline)' if r['host_rate'] == 44100 else ''} | {r['cpu_pct']:.0f} % | "
            f"{r['latency_ms']:.1f} ms | {r['resample_latency_ms']:.1f} ms | {r['callback_ms_p99']:.2f} ms | "
            f"{r['deadline_misses']} | {r['xruns']} |"
        )
    lines += [
        "",
        "## Tempo per deck (audio thread, one file deck, Rubber Band R2 engine)",
        "",
        "| deck | callback mean | callback p99 | share of a core |",
        "|---|---|---|---|",
    ]
    for r in result["tempo"]:
        lines.append(
            f"| {r['deck']} | {r['callback_ms_mean']:.2f} ms | {r['callback_ms_p99']:.2f} ms | {r['core_pct']:.1f} % |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per callback and CPU phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tracks = make_tracks(Path(tmp))
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores shared with other jobs",
            "model": Path(args.model).name,
            "load": load_to_first_block(args.model, tracks),
            "callback": callback_while_loading(args.model, tracks["mp3"], args.seconds),
            "rates": host_rates(args.model, args.seconds),
            "tempo": tempo_cost(args.model),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decks.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "decks.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
