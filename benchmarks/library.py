"""Library throughput: audio hours separated per wall-clock hour by the batch paths of `stembridge separate`.

In one run, on one synthetic library (``--files`` stereo files of ``--seconds`` each, 44.1 kHz, written here; no
MUSDB audio), through `separate`'s default path (``--mode hq``: the look-ahead vocal model with the causal model;
``--mode live`` to measure the causal path) with the shipped models (block 4096, one ONNX Runtime thread per worker,
FLAC out):

- ``plain``: the single-process loop `separate` ran before the library work (one separator, ``separate_file`` per
  file, no manifest): the baseline;
- ``inline``: the library path in this process (manifest, largest first), ``--jobs 1``;
- ``local_2``: two local worker processes, ``--jobs 2``;
- ``ray_2``: two Ray actors on a local Ray instance started here (``ray.init(num_cpus=2)``).

Each row gives the pool's start-up (worker processes or actors with their model) and the batch's wall time; the
throughput counts both. Then Ray's overhead per file: ``--overhead-files`` very short files through one Ray actor
against the inline path, as (batch wall - the time the workers spent in ``separate_file``) / files. Also the share
of the per-file time spent in the model call (what a GPU could take away), and the FLAC stems' size per audio hour.

The machine may be shared (its busy share during each configuration is reported): figures are as measured, the ratios
in one run are what to compare. A paper projection for a 20,000-track library follows from them in the markdown.

    python benchmarks/library.py [--files 6] [--seconds 15] [--rounds 2] [--overhead-files 20] [--mode hq|live]

Writes benchmarks/results/library/library.json and library.md (``--mode live``: library_live.json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from soak import machine_cpu, machine_usage  # noqa: E402
from stembridge.engine.batch import InlinePool, LocalPool, SeparationSettings, identity, run_batch  # noqa: E402
from stembridge.engine.library import collect_jobs, largest_first, probe_jobs  # noqa: E402
from stembridge.engine.manifest import MANIFEST_NAME, Manifest  # noqa: E402
from stembridge.engine.separate import separate_file  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "library"
TRACKS = 20_000
TRACK_S = 240.0


def make_library(folder: Path, num_files: int, seconds: float, seed: int = 0) -> float:
    """Music-like synthetic files (chord partials, a decaying pulse, noise): returns the total audio seconds."""
    rng = np.random.default_rng(seed)
    rate = 44100
    total = 0.0
    for i in range(num_files):
        n = int(seconds * rate * (0.6 + 0.8 * rng.random()))  # lengths vary, so largest-first ordering matters
        t = np.arange(n) / rate
        tone = sum(
            0.08 * np.sin(2 * np.pi * f0 * (k + 1) * t) / (k + 1) for f0 in (110, 138.6, 164.8) for k in range(4)
        )
        pulse = 0.4 * np.exp(-((t * 2) % 1) * 30) * np.sin(2 * np.pi * 55 * t)
        x = tone[:, None] + pulse[:, None] + 0.03 * rng.standard_normal((n, 2))
        path = folder / f"set{i % 3}" / f"track{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.5 * x).astype(np.float32), rate, subtype="PCM_24")
        total += n / rate
    return total


class Quiet:
    def finished(self, job, outcome) -> None:
        if not outcome.ok:
            raise SystemExit(f"benchmark file failed: {outcome.error}")

    def retrying(self, job, reason) -> None:
        pass

    def elsewhere(self, job) -> None:
        pass


_SEPARATORS: dict = {}


def _separator(settings: SeparationSettings):
    """One separator per settings, for fingerprints (building one loads its models)."""
    if settings not in _SEPARATORS:
        _SEPARATORS[settings] = settings.make_separator()
    return _SEPARATORS[settings]


def run_pool(name: str, library: Path, out: Path, settings: SeparationSettings, make_pool) -> dict:
    """Start a pool (timed), run the library through ``run_batch`` (timed); the manifest gives the worker time."""
    collected = collect_jobs([library], out)
    probe_jobs(collected.jobs)
    jobs = largest_first(collected.jobs)
    before = machine_cpu()
    t0 = time.perf_counter()
    pool = make_pool()
    t1 = time.perf_counter()
    with Manifest(out / MANIFEST_NAME) as manifest:
        run_id = manifest.start_run(name)
        fp = settings.fingerprint(_separator(settings))
        manifest.plan([identity(j, settings) for j in jobs], fp, run_id)
        summary = run_batch(jobs, pool, manifest, run_id, fp, settings, Quiet())
        worker_s = sum(r["elapsed_s"] for r in manifest.rows())
    t2 = time.perf_counter()
    audio_s = sum(o.duration_s for _, o in summary.done)
    return {
        "config": name,
        "files": len(summary.done),
        "audio_s": round(audio_s, 2),
        "start_s": round(t1 - t0, 3),
        "batch_s": round(t2 - t1, 3),
        "worker_s": round(worker_s, 3),
        "x_real_time": round(audio_s / (t2 - t0), 2),
        "x_real_time_steady": round(audio_s / (t2 - t1), 2),
        "machine": machine_usage(before, machine_cpu()),
    }


def _time_model_calls(separator) -> list[float]:
    """Wrap every model call ``separator`` makes (the causal model's ``infer``; the look-ahead models' sessions) to
    add its time to the returned one-element list."""
    total = [0.0]

    def timed(call):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - start

        return wrapper

    causal = separator.mix_causal if hasattr(separator, "mix_causal") else separator.adapter.separator
    causal.infer = timed(causal.infer)
    if hasattr(separator, "vocal_model"):
        for model in (separator.vocal_model, separator.stem_model):
            model.session.run = timed(model.session.run)
    return total


def run_plain(library: Path, out: Path, settings: SeparationSettings) -> dict:
    """The pre-library `separate`: one separator, a loop of ``separate_file``; also the model calls' share."""
    files = sorted(library.rglob("*.wav"))
    before = machine_cpu()
    t0 = time.perf_counter()
    separator = settings.make_separator()
    model_s = _time_model_calls(separator)
    t1 = time.perf_counter()
    audio_s = worker_s = 0.0
    for f in files:
        r = separate_file(separator, f, out / f.parent.name / f.stem, stems=list(settings.stems), fmt=settings.fmt)
        audio_s += r.duration_s
        worker_s += r.elapsed_s
    t2 = time.perf_counter()
    # the model calls' share of one file's time, measured without the overlap (model and host work in sequence)
    import stembridge.engine.separate as separate_module

    overlapped = separate_module.separate_audio
    separate_module.separate_audio = lambda *a, **k: overlapped(*a, **{**k, "overlap": False})
    try:
        model_s[0] = 0.0
        seq = separate_file(separator, files[0], out / "sequential", stems=list(settings.stems), fmt=settings.fmt)
    finally:
        separate_module.separate_audio = overlapped
    return {
        "config": "plain",
        "files": len(files),
        "audio_s": round(audio_s, 2),
        "start_s": round(t1 - t0, 3),
        "batch_s": round(t2 - t1, 3),
        "worker_s": round(worker_s, 3),
        "x_real_time": round(audio_s / (t2 - t0), 2),
        "x_real_time_steady": round(audio_s / (t2 - t1), 2),
        "sequential_file_s": round(seq.elapsed_s, 3),
        "model_call_s": round(model_s[0], 3),
        "model_call_share": round(model_s[0] / seq.elapsed_s, 3),
        "machine": machine_usage(before, machine_cpu()),
    }


def stem_bytes_per_audio_hour(out: Path, audio_s: float) -> float:
    return sum(p.stat().st_size for p in out.rglob("*.flac")) / (audio_s / 3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="every config this many times, interleaved")
    parser.add_argument("--seconds", type=float, default=15.0, help="mean file length (lengths vary 0.6-1.4x)")
    parser.add_argument("--overhead-files", type=int, default=20)
    parser.add_argument("--mode", choices=["hq", "live"], default="hq", help="separate's path (default: hq)")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray out (also when it is not installed)")
    args = parser.parse_args()
    os.nice(0)
    settings = SeparationSettings(model_path=None, mode=args.mode, fmt="flac", threads=1, block_size=4096)
    separator = _separator(settings)
    stems = tuple(separator.stems)
    settings = replace(settings, stems=stems)
    model_name = settings.fingerprint(separator).model_name
    try:
        import ray
    except ImportError:
        ray = None
    use_ray = ray is not None and not args.no_ray

    rows = []
    ray_init_s = None
    overhead = None
    with tempfile.TemporaryDirectory(prefix="bench_library_") as tmp_name:
        tmp = Path(tmp_name)
        library = tmp / "library"
        total_audio = make_library(library, args.files, args.seconds)

        def inline_pool():
            return InlinePool(settings.make_separator(), settings)

        def local_pool():
            pool = LocalPool(settings, 2)
            pool.wait_ready()
            return pool

        configs = [("inline", inline_pool), ("local_2", local_pool)]
        if use_ray:
            from stembridge.engine.ray_batch import RayPool

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
            ray_init_s = round(time.perf_counter() - t0, 2)
            configs.append(("ray_2", lambda: RayPool(settings, None, 2)))
        flac_per_hour = None
        for round_index in range(args.rounds):  # interleaved, so a change in the machine's load hits every config
            plain = run_plain(library, tmp / "plain", settings) | {"round": round_index}
            rows.append(plain)
            print(plain, flush=True)
            flac_per_hour = flac_per_hour or stem_bytes_per_audio_hour(tmp / "plain", plain["audio_s"])
            shutil.rmtree(tmp / "plain")
            for name, make in configs:
                rows.append(run_pool(name, library, tmp / name, settings, make) | {"round": round_index})
                print(rows[-1], flush=True)
                shutil.rmtree(tmp / name)
        if use_ray:
            short = tmp / "short"
            short_audio = make_library(short, args.overhead_files, 0.5, seed=1)
            inline_short = run_pool("inline_short", short, tmp / "inline_short", settings, inline_pool)
            ray_short = run_pool(
                "ray_1_short", short, tmp / "ray_1_short", settings, lambda: RayPool(settings, None, 1)
            )
            n = args.overhead_files
            inline_per_file = (inline_short["batch_s"] - inline_short["worker_s"]) / n
            ray_per_file = (ray_short["batch_s"] - ray_short["worker_s"]) / n
            overhead = {
                "files": n,
                "audio_s": round(short_audio, 2),
                "inline_overhead_ms_per_file": round(1000 * inline_per_file, 2),
                "ray_overhead_ms_per_file": round(1000 * ray_per_file, 2),
                "ray_extra_ms_per_file": round(1000 * (ray_per_file - inline_per_file), 2),
                "inline": inline_short,
                "ray_1": ray_short,
            }
            print(overhead, flush=True)
            ray.shutdown()

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "files": args.files,
        "rounds": args.rounds,
        "audio_s": round(total_audio, 2),
        "mode": args.mode,
        "model": model_name,
        "ray_version": getattr(ray, "__version__", None),
        "ray_init_s": ray_init_s,
        "rows": rows,
        "ray_overhead": overhead,
        "flac_bytes_per_audio_hour": round(flac_per_hour),
        "wav_bytes_per_audio_hour": 3600 * 44100 * 2 * 3 * len(stems),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "library" if args.mode == "hq" else f"library_{args.mode}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    print((RESULTS / f"{stem}.md").read_text())


def _mean_rows(rows: list[dict]) -> dict[str, dict]:
    """Per config: the mean of each figure over the rounds, and the rounds' x real time."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["config"], []).append(row)
    out = {}
    for name, group in by.items():
        mean = {k: sum(g[k] for g in group) / len(group) for k in ("start_s", "batch_s", "x_real_time_steady")}
        mean["x_real_time"] = sum(g["audio_s"] for g in group) / sum(g["start_s"] + g["batch_s"] for g in group)
        mean["rounds"] = [g["x_real_time"] for g in group]
        mean["busy_pct"] = sum(g["machine"]["user_pct"] + g["machine"]["nice_pct"] for g in group) / len(group)
        mean |= {k: group[0][k] for k in ("model_call_share",) if k in group[0]}
        out[name] = mean
    return out


def markdown(r: dict) -> str:
    by = _mean_rows(r["rows"])
    plain = by["plain"]
    lines = [
        "# Library throughput",
        "",
        f"{r['files']} synthetic stereo files, {r['audio_s']:.0f} s of audio, `separate --mode {r['mode']}` with the "
        f"shipped models (`{r['model']}`), block 4096, FLAC stems, one ONNX Runtime thread per worker; every config "
        f"{r['rounds']} times, interleaved. 2-core "
        "VM (how busy it was: the last column; a training job was paused for this run): figures as measured in one "
        "run; the rounds show how far they move. `x real time` = audio hours per wall-clock hour, start-up included "
        "(over the rounds); `steady` leaves the pool's start-up out; `machine busy`: whole-VM user+nice CPU while the "
        "config ran.",
        "",
        "| config | start-up s | batch s | x real time | per round | steady | vs plain | machine busy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in by.items():
        rounds = ", ".join(f"{x:.1f}" for x in m["rounds"])
        lines.append(
            f"| {name} | {m['start_s']:.2f} | {m['batch_s']:.2f} | {m['x_real_time']:.1f} | {rounds} | "
            f"{m['x_real_time_steady']:.1f} | {m['x_real_time'] / plain['x_real_time']:.2f} | {m['busy_pct']:.0f} |"
        )
    lines += [
        "",
        f"Model calls: {100 * plain['model_call_share']:.0f} % of one file's time when the stages run in sequence "
        "(decode, resample, STFTs, model calls, masks, inverse STFTs, FLAC encode; `plain` overlaps the causal "
        "model's calls with the rest on a second thread).",
    ]
    if r["ray_init_s"] is not None:
        o = r["ray_overhead"]
        lines += [
            "",
            f"Ray {r['ray_version']}: `ray.init` of a local instance {r['ray_init_s']:.1f} s (not in the rows). "
            f"Per-file overhead over {o['files']} files of 0.5 s (batch wall minus time inside `separate_file`): "
            f"inline {o['inline_overhead_ms_per_file']:.1f} ms, one Ray actor {o['ray_overhead_ms_per_file']:.1f} ms: "
            f"**Ray adds {o['ray_extra_ms_per_file']:.1f} ms per file**.",
        ]
    best_name = max(by, key=lambda name: by[name]["x_real_time_steady"])
    best = by[best_name] | {"config": best_name}
    audio_h = TRACKS * TRACK_S / 3600
    flac_tb = r["flac_bytes_per_audio_hour"] * audio_h / 1e12
    wav_tb = r["wav_bytes_per_audio_hour"] * audio_h / 1e12
    lines += [
        "",
        "## On paper: 20,000 four-minute tracks",
        "",
        f"{audio_h:.0f} h of audio. Stems: {wav_tb:.1f} TB as 24-bit WAV, about {flac_tb:.1f} TB as FLAC at this "
        f"run's {r['flac_bytes_per_audio_hour'] / r['wav_bytes_per_audio_hour']:.2f} of WAV (synthetic audio; "
        "the size check assumes 0.70).",
        "",
        f"At this run's best steady rate on one 2-core machine ({best['config']}, "
        f"{best['x_real_time_steady']:.1f}x real time):",
        "",
        "| machines | wall-clock hours | days |",
        "|---|---|---|",
    ]
    for n in (1, 4, 16, 64):
        hours = audio_h / best["x_real_time_steady"] / n
        lines.append(f"| {n} | {hours:.1f} | {hours / 24:.2f} |")
    share = plain["model_call_share"]
    lines += [
        "",
        "Ray's per-file overhead against a 4-minute track's separation time at that rate: "
        + (
            f"{r['ray_overhead']['ray_extra_ms_per_file'] / 1000 / (TRACK_S / best['x_real_time_steady']) * 100:.2f} %."
            if r["ray_overhead"]
            else "(Ray not measured)."
        ),
        "",
        f"A GPU worker (not measured: no GPU here): the model calls are {100 * share:.0f} % of a file's "
        "sequential time on one core; the rest (decoding, resampling, STFTs and inverse STFTs, masks, FLAC "
        f"encoding) stays on the CPU, so one core feeding a GPU runs at most {1 / max(1e-6, 1 - share):.1f}x its "
        "CPU rate, and a GPU node's throughput is set by how many CPU cores feed it (one worker per core, each "
        "batching its blocks). See docs/library.md.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
