"""File-deck high-quality stems: seek to HQ stems, full analysis with and without a live worker beside it, the cache.

    python benchmarks/hq_stems.py [--seconds 300] [--out benchmarks/results/hq_stems]
    python benchmarks/hq_stems.py --two-decks    # two decks analysing beside the stand-ins (two_decks.md)

On a synthesized track (noise plus tones shaped like a song: kick, hats, bass line, chords, a vibrato lead; no
MUSDB audio), with the shipped models on the CPU, one thread each:

- ``warmup``: how close a range's stems get to the whole-track pass's after 0 to 8 s of causal warm-up (relative
  error energy in dB per stem; only the high-band vocals, and so other, depend on it: drums and bass come from the
  globally tiled stems model), which is what ``engine.hq.WARMUP_S`` rests on;
- ``separate``: ``HighQualitySeparator.separate`` of the whole track, the reference for every ratio below;
- ``callback_standin``: a SCHED_FIFO thread woken every 5.8 ms for a mixer's worth of numpy (the audio callback's
  shape), its lateness alone, beside a thread analyser and beside the child-process analyser (60 s excerpt);
- ``full``: ``HqTrackStems`` on an ``HqAnalysisProcess`` analysing the whole track from 0, alone and with a
  live-worker stand-in beside it (a
  thread running the default causal model on 2 streams, one 512-sample block per 11.6 ms as a playing deck does;
  its per-block time and late blocks are reported too);
- ``seek``: while the analysis runs, jumps to positions not analysed yet; the time from ``request`` to the block at
  the new playhead being ready (median over the seeks), and the same from a load (construction) at a cue point;
- ``cache``: writing the stems (16- and 24-bit FLAC), their size, and a load from the cache to all stems ready.

The machine is shared: compare the ratios measured in one run (field-notes.md), not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from stembridge.engine.hq import PIPELINE_VERSION, HighQualitySeparator
from stembridge.engine.live.hq_stems import HqAnalysisProcess, HqTrackStems
from stembridge.engine.separator import StreamingSeparator
from stembridge.engine.stem_cache import StemCache, audio_hash, model_version

SR = 44100
BLOCK = 512


def synth_track(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise plus tones shaped like a song, float32 (2, n) at 44.1 kHz: kick, hats, bass line, chords, a vibrato
    lead with gaps, a little broadband noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = 0.5
    phase = (t % beat) / beat
    kick = np.sin(2 * np.pi * 55 * t * (1 + 2 * np.exp(-phase * 20))) * np.exp(-phase * 8)
    hats = np.diff(rng.standard_normal(n) * np.exp(-((t + beat / 2) % (beat / 2)) * 60), prepend=0.0)
    f_bass = np.array([55.0, 55.0, 65.4, 49.0])[(t // (4 * beat)).astype(int) % 4]
    bass = np.sign(np.sin(2 * np.pi * np.cumsum(f_bass) / SR)) * 0.5
    chord = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate((220.0, 277.2, 329.6)))
    vib = 440 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    lead = sum(np.sin(2 * np.pi * k * np.cumsum(vib) / SR) / k for k in range(1, 8))
    lead *= np.sin(2 * np.pi * t / 7.0) > -0.2
    noise = rng.standard_normal(n) * 0.02
    left = 0.35 * kick + 0.08 * hats + 0.2 * bass + 0.06 * chord + 0.12 * lead + noise
    right = 0.35 * kick + 0.05 * hats + 0.2 * bass + 0.09 * chord + 0.10 * lead + noise
    return np.stack([left, right]).astype(np.float32)


class LiveStandIn:
    """A thread running the causal default model like the live worker does for 2 decks: one block per period, in
    SCHED_FIFO at priority 1 where permitted, as ``stembridge live`` runs its worker (``--worker-rt-priority``)."""

    def __init__(self) -> None:
        self.sep = StreamingSeparator(device="cpu", num_streams=2, max_hops=4)
        self.block = np.random.default_rng(1).standard_normal((2, 2, BLOCK)).astype(np.float32) * 0.1
        self.times: list[float] = []
        self.late = 0
        self.rt = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            self.rt = True
        except (AttributeError, PermissionError, OSError):
            pass
        period = BLOCK / SR
        deadline = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.sep.process(self.block)
            t1 = time.perf_counter()
            self.times.append(t1 - t0)
            deadline += period
            if t1 > deadline:
                self.late += 1
                deadline = t1
            else:
                time.sleep(deadline - t1)

    def __enter__(self) -> LiveStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        ms = np.array(self.times) * 1000
        return {
            "sched_fifo": self.rt,
            "blocks": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "late_blocks": self.late,
            "period_ms": round(1000 * BLOCK / SR, 2),
        }


class CallbackStandIn:
    """A thread woken every 256 samples (5.8 ms) to do a mixer's worth of numpy work, as the audio callback does, in
    SCHED_FIFO where permitted: its lateness (wake-up to work done, past its deadline) shows what an analysis thread
    in the same process costs the callback, the GIL included."""

    def __init__(self, period: int = 256) -> None:
        self.period = period
        self.late_ms: list[float] = []
        self.rt = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            self.rt = True
        except (AttributeError, PermissionError, OSError):
            pass
        buf = np.zeros((4, 2, self.period), dtype=np.float32)
        out = np.zeros((2, self.period), dtype=np.float32)
        step = self.period / SR
        deadline = time.perf_counter() + step
        while not self._stop.is_set():
            time.sleep(max(0.0, deadline - time.perf_counter()))
            buf *= 0.5
            np.sum(buf, axis=0, out=out)
            self.late_ms.append(1000 * (time.perf_counter() - deadline))
            deadline += step

    def __enter__(self) -> CallbackStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        ms = np.array(self.late_ms)
        return {
            "sched_fifo": self.rt,
            "wakes": len(ms),
            "lateness_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "lateness_p99_ms": round(float(np.percentile(ms, 99)), 3),
            "lateness_max_ms": round(float(ms.max()), 3),
            "over_period": int((ms > 1000 * self.period / SR).sum()),
        }


def wait_ready(a: HqTrackStems, pos: int, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not a.ready_at(pos, BLOCK):
        if time.perf_counter() - t0 > timeout or not a.running and not a.ready_at(pos, BLOCK):
            return float("nan")
        time.sleep(0.002)
    return time.perf_counter() - t0


def measure_warmup(hq: HighQualitySeparator, seconds: float = 30.0) -> list[dict]:
    audio = synth_track(seconds, seed=2)
    whole = hq.separate(audio)
    mix, masks = hq.prepare(audio)
    start, length = int(18.3 * SR), SR
    rows = []
    for warm_s in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0):
        out = hq.separate_range(audio, start, start + length, warmup_samples=int(warm_s * SR), masks=masks)
        ref = whole[..., start : start + length]
        err = ((out - ref) ** 2).sum(axis=(1, 2)) / np.maximum((ref**2).sum(axis=(1, 2)), 1e-20)
        rows.append(
            {"warmup_s": warm_s}
            | {s: round(float(10 * np.log10(e + 1e-30)), 1) for s, e in zip(hq.stems, err, strict=True)}
        )
    return rows


def two_decks(out: Path, seconds: float = 60.0) -> None:
    """The callback and live-worker stand-ins alone, then while two decks' child processes analyse a track each."""
    procs = [HqAnalysisProcess(device="cpu") for _ in range(2)]
    tracks = [synth_track(seconds, seed=10 + i) for i in range(2)]
    for p in procs:  # the children's imports and model loads, before any timing
        w = HqTrackStems(tracks[0][:, : 5 * SR].copy(), p)
        w.wait()
        w.close()
    with CallbackStandIn() as cb_idle, LiveStandIn() as live_idle:
        time.sleep(15.0)
    with CallbackStandIn() as cb_busy, LiveStandIn() as live_busy:
        t0 = time.perf_counter()
        jobs = [HqTrackStems(t, p) for t, p in zip(tracks, procs, strict=True)]
        for j in jobs:
            j.wait()
        both_s = time.perf_counter() - t0
        for j in jobs:
            j.close()
    for p in procs:
        p.close()
    result = {
        "track_s": seconds,
        "both_analysed_s": round(both_s, 2),
        "callback_standin": {"idle": cb_idle.summary(), "two_decks_analysing": cb_busy.summary()},
        "live_standin": {"idle": live_idle.summary(), "two_decks_analysing": live_busy.summary()},
    }
    (out / "two_decks.json").write_text(json.dumps(result, indent=2) + "\n")
    cb, lv = result["callback_standin"], result["live_standin"]
    lines = [
        f"# Two decks analysing at once ({seconds:.0f} s track each, one child process per deck)",
        "",
        "| | idle (15 s) | two decks analysing |",
        "|---|---|---|",
        f"| both tracks analysed in | | {both_s:.1f} s |",
        f"| callback stand-in lateness p50 / p99 / max (ms) | {cb['idle']['lateness_p50_ms']} / "
        f"{cb['idle']['lateness_p99_ms']} / {cb['idle']['lateness_max_ms']} | "
        f"{cb['two_decks_analysing']['lateness_p50_ms']} / {cb['two_decks_analysing']['lateness_p99_ms']} / "
        f"{cb['two_decks_analysing']['lateness_max_ms']} |",
        f"| callback wakes later than a period | {cb['idle']['over_period']} of {cb['idle']['wakes']} | "
        f"{cb['two_decks_analysing']['over_period']} of {cb['two_decks_analysing']['wakes']} |",
        f"| live stand-in block time p50 / p99 (ms), late blocks | {lv['idle']['p50_ms']} / {lv['idle']['p99_ms']}, "
        f"{lv['idle']['late_blocks']} of {lv['idle']['blocks']} | {lv['two_decks_analysing']['p50_ms']} / "
        f"{lv['two_decks_analysing']['p99_ms']}, {lv['two_decks_analysing']['late_blocks']} of "
        f"{lv['two_decks_analysing']['blocks']} |",
    ]
    (out / "two_decks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of the synthesized track (s)")
    parser.add_argument("--seeks", type=int, default=7, help="seeks to time")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hq_stems")
    parser.add_argument("--two-decks", action="store_true", help="only the two-decks-analysing measurement")
    args = parser.parse_args()
    if args.two_decks:
        args.out.mkdir(parents=True, exist_ok=True)
        two_decks(args.out)
        return
    hq = HighQualitySeparator(device="cpu")
    results: dict = {"track_s": args.seconds, "chunk_samples": None, "warmup_s": None}

    print("one tile of each look-ahead model ...", flush=True)
    mix, masks = hq.prepare(synth_track(40.0, seed=4))
    rest = masks.rest.get(0, mix.shape[1])
    tile_s, stems_tile_s = [], []
    for k in range(1, 4):  # whole windows, inside the track
        t0 = time.perf_counter()
        hq.vocal_model.tile_masks(mix, k, k + 1, masks.vocals.gain)
        tile_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hq.stem_model.tile_masks(rest, k, k + 1)
        stems_tile_s.append(time.perf_counter() - t0)
    results["tile_call_median_s"] = round(statistics.median(tile_s), 3)
    results["stems_tile_call_median_s"] = round(statistics.median(stems_tile_s), 3)
    del mix, masks, rest
    print("warm-up convergence ...", flush=True)
    results["warmup"] = measure_warmup(hq)

    audio = synth_track(args.seconds)
    n = audio.shape[1]
    print("separate ...", flush=True)
    t0 = time.perf_counter()
    reference = hq.separate(audio)
    sep_s = time.perf_counter() - t0
    results["separate_s"] = round(sep_s, 2)

    print("callback stand-in: idle, beside a thread analyser, beside a process analyser ...", flush=True)
    proc = HqAnalysisProcess(device="cpu")
    excerpt = np.ascontiguousarray(audio[:, : 60 * SR])
    warm = HqTrackStems(excerpt[:, : 5 * SR], proc)  # the child's imports and model load, before any timing
    warm.wait()
    warm.close()
    with CallbackStandIn() as cb_idle:
        time.sleep(5.0)
    with CallbackStandIn() as cb_thread:
        HqTrackStems(excerpt, hq).wait()
    with CallbackStandIn() as cb_process:
        t = HqTrackStems(excerpt, proc)
        t.wait()
        t.close()
    results["callback_standin"] = {
        "without_analysis": cb_idle.summary(),
        "beside_thread_analyser": cb_thread.summary(),
        "beside_process_analyser": cb_process.summary(),
    }
    print("full analysis alone (process) ...", flush=True)
    a = HqTrackStems(audio, proc)
    a.wait()
    alone_s = a.finished_at - a.started_at
    results["chunk_samples"] = a.chunk_samples
    results["max_abs_diff_vs_separate"] = float(np.abs(a.stems - reference).max())
    del reference
    print("full analysis beside the live stand-in ...", flush=True)
    with LiveStandIn() as live:
        time.sleep(10.0)
        idle = live.summary()
        live.times.clear()
        live.late = 0
        b = HqTrackStems(audio, proc)
        b.wait()
        beside_s = b.finished_at - b.started_at
    results["full"] = {
        "alone_s": round(alone_s, 2),
        "beside_live_s": round(beside_s, 2),
        "alone_x_realtime": round(args.seconds / alone_s, 1),
        "beside_live_x_realtime": round(args.seconds / beside_s, 1),
        "ratio_alone_to_separate": round(alone_s / sep_s, 2),
        "ratio_beside_to_separate": round(beside_s / sep_s, 2),
        "live_standin_without_analysis": idle,
        "live_standin_with_analysis": live.summary(),
        "stems_buffer_mb": round(b.stems.nbytes / 1e6, 1),
    }
    stems = b.stems.copy()
    a.close()
    b.close()

    print("seeks ...", flush=True)
    rng = np.random.default_rng(3)
    loads, seeks = [], []
    with LiveStandIn():
        for i in range(3):
            cue = int(rng.uniform(0.1, 0.9) * n)
            c = HqTrackStems(audio, proc, start=cue)
            loads.append(wait_ready(c, cue))
            for _ in range(max(1, args.seeks // 3 + (i < args.seeks % 3))):
                time.sleep(0.5)
                for _ in range(100):  # a position not analysed yet
                    pos = int(rng.uniform(0.0, 0.98) * n)
                    if not c.ready_at(pos, BLOCK) and not c.ready_at(max(0, pos - 4 * SR), BLOCK):
                        break
                c.request(pos)
                seeks.append(wait_ready(c, pos))
            c.close()
    results["seek"] = {
        "seek_to_hq_median_s": round(statistics.median(seeks), 3),
        "seek_to_hq_max_s": round(max(seeks), 3),
        "seek_to_hq_all_s": [round(s, 3) for s in seeks],
        "load_to_hq_median_s": round(statistics.median(loads), 3),
        "load_to_hq_all_s": [round(s, 3) for s in loads],
        "note": "with the live stand-in running; the analysis was busy elsewhere in the track at each seek",
    }

    print("cache ...", flush=True)
    t0 = time.perf_counter()
    key = audio_hash(audio)
    hash_s = time.perf_counter() - t0
    version = model_version(hq.model_files, PIPELINE_VERSION)
    with tempfile.TemporaryDirectory() as tmp:
        cache = {"audio_hash_s": round(hash_s, 3)}
        for subtype in ("PCM_16", "PCM_24"):
            sc = StemCache(Path(tmp) / subtype, subtype=subtype)
            t0 = time.perf_counter()
            path = sc.store(key, version, stems, SR)
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            e = HqTrackStems(audio, proc, cache=sc)
            first = wait_ready(e, 0)
            e.wait()
            read_s = time.perf_counter() - t0
            assert e.source == "cache" and e.complete, (e.source, e.error)
            cache[subtype] = {
                "write_s": round(write_s, 2),
                "load_all_ready_s": round(read_s, 2),
                "load_first_block_s": round(first, 3),
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "mb_per_minute": round(path.stat().st_size / 1e6 / (args.seconds / 60), 1),
                "max_abs_diff": float(np.abs(e.stems - stems).max()),
            }
            e.close()
        results["cache"] = cache
    proc.close()
    results["warmup_s"] = 3.0

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    f, s, cb = results["full"], results["seek"], results["callback_standin"]
    lines = [
        f"# HQ stems of a file deck ({args.seconds:.0f} s synthesized track, CPU, 1 thread per model)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| `separate` of the track (reference) | {results['separate_s']} s |",
        f"| full analysis alone (child process) | {f['alone_s']} s ({f['alone_x_realtime']}x real time, "
        f"{f['ratio_alone_to_separate']} x separate) |",
        f"| full analysis beside a live worker stand-in | {f['beside_live_s']} s ({f['beside_live_x_realtime']}x real "
        f"time, {f['ratio_beside_to_separate']} x separate) |",
        f"| seek to HQ stems at the new playhead, median (max) | {s['seek_to_hq_median_s']} s "
        f"({s['seek_to_hq_max_s']} s) |",
        f"| load at a cue point to HQ stems there, median | {s['load_to_hq_median_s']} s |",
        f"| one vocal-model tile (8.9 s of audio kept, one model call), median | {results['tile_call_median_s']} s |",
        f"| one stems-model tile (4.5 s of audio kept, one model call), median | "
        f"{results['stems_tile_call_median_s']} s |",
        f"| live stand-in block time p99 without / with analysis | "
        f"{f['live_standin_without_analysis']['p99_ms']} / {f['live_standin_with_analysis']['p99_ms']} ms "
        f"(late blocks {f['live_standin_without_analysis']['late_blocks']} / "
        f"{f['live_standin_with_analysis']['late_blocks']}) |",
        *(
            f"| callback stand-in (5.8 ms period, SCHED_FIFO) {label}: lateness p99 / max, wakes later than a "
            f"period | {cb[key]['lateness_p99_ms']} / {cb[key]['lateness_max_ms']} ms, {cb[key]['over_period']} of "
            f"{cb[key]['wakes']} |"
            for key, label in (
                ("without_analysis", "alone"),
                ("beside_thread_analyser", "beside a thread analysing (60 s)"),
                ("beside_process_analyser", "beside the child process analysing (60 s)"),
            )
        ),
        f"| stems buffer in memory | {f['stems_buffer_mb']} MB |",
    ]
    lines.append(f"| audio hash (sha256) of the track | {results['cache']['audio_hash_s']} s |")
    for subtype in ("PCM_16", "PCM_24"):
        c = results["cache"][subtype]
        lines.append(
            f"| cache {subtype}: size, write, load to all ready | {c['size_mb']} MB ({c['mb_per_minute']} MB/min), "
            f"{c['write_s']} s, {c['load_all_ready_s']} s |"
        )
    lines += ["", "Warm-up of a range's causal pass: error against the whole-track pass (dB, relative energy):", ""]
    lines += ["| warm-up (s) | " + " | ".join(hq.stems) + " |", "|---" * (len(hq.stems) + 1) + "|"]
    for row in results["warmup"]:
        lines.append(f"| {row['warmup_s']} | " + " | ".join(str(row[s]) for s in hq.stems) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
