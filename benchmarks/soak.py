"""Soak: `stembridge live` on JACK's dummy backend for minutes at a time, with 1 and with 4 file decks.

For each deck count it runs the real command (worker process, OSC server, light OSC traffic: one mute toggle a
second) and collects its final counters (--stats-json): xruns (JACK's xrun callback), deadline misses (blocks whose
stems were late, played dry), callback time p50/p99/max over the whole run, worker call time, and CPU use of
stembridge (audio process + worker process) and of jackd, and the machine's steal time (CPU the hypervisor gave to
other guests). Two reference runs of an idle JACK client (its callback writes zeros, nothing else), alone and beside
a process that keeps as much CPU busy as stembridge did, measure the xruns the machine itself causes.

    python3 benchmarks/soak.py [--minutes 10] [--decks 1 4] [--period 256] [--model PATH] [--baseline-minutes 2]

Model: the shipped default model when present; otherwise a stand-in of realistic size built by
tests/fixtures/make_fixture_model.py (n_fft 1024, hop 256, GRU 256, random weights: it times, it does not separate).
Uses the running JACK server (it must run at 44100 Hz with the requested period) or starts `jackd -d dummy`.
Writes benchmarks/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SR = 44100


def cpu_ticks(pid: int) -> float:
    """CPU seconds (user + system) of a process from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict:
    """Whole-machine jiffies (user, nice, system, idle, iowait, steal) from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return {"user": user, "nice": nice, "system": system, "idle": idle, "iowait": iowait, "steal": steal}


def machine_usage(before: dict, after: dict) -> dict:
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values()) or 1
    return {f"{k}_pct": round(100.0 * v / total, 1) for k, v in delta.items()}


def busy_processes(exclude: set[int], interval_s: float = 2.0) -> list[str]:
    """The other processes that used at least 5 % of a core over the last ``interval_s`` (measured, not ps's
    lifetime average, so a stopped process does not count)."""

    def ticks() -> dict[int, float]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in exclude:
                out[int(entry.name)] = cpu_ticks(int(entry.name))
        return out

    before = ticks()
    time.sleep(interval_s)
    used = {pid: 100.0 * (t - before.get(pid, t)) / interval_s for pid, t in ticks().items()}
    rows = []
    for pid, pct in sorted(used.items(), key=lambda kv: -kv[1]):
        if pct < 5.0:
            break
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rows.append(f"{pct:.0f}%: {' '.join(args.split())[:110]}")
    return rows[:6]


def jack_server(period: int):
    """(jackd pid, Popen or None if it was already running)."""
    import jack

    jack.set_error_function(lambda m: None)
    jack.set_info_function(lambda m: None)
    try:
        c = jack.Client("soak-probe", no_start_server=True)
        rate, block = c.samplerate, c.blocksize
        c.close()
        if rate != SR or block != period:
            sys.exit(f"a JACK server runs at {rate} Hz / {block} frames; the soak needs {SR} Hz / {period}")
        pid = int(subprocess.run(["pgrep", "-o", "-x", "jackd"], capture_output=True, text=True).stdout.split()[0])
        return pid, None
    except jack.JackOpenError:
        pass
    proc = subprocess.Popen(["jackd", "-d", "dummy", "-r", str(SR), "-p", str(period)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.0)
    return proc.pid, proc


def make_songs(folder: Path, count: int) -> list[Path]:
    """Distinct 30 s stereo test songs (tones, a beat of noise bursts, a bass line), looped by the decks."""
    paths = []
    t = np.arange(30 * SR) / SR
    for k in range(count):
        rng = np.random.default_rng(k)
        tone = 0.2 * np.sin(2 * np.pi * (220 + 37 * k) * t * (1 + 0.01 * np.sin(2 * np.pi * 0.3 * t)))
        beat = (np.sin(2 * np.pi * 2 * t) > 0.95) * rng.standard_normal(t.size) * 0.3
        bass = 0.25 * np.sin(2 * np.pi * (55 + 5 * k) * t)
        x = (tone + beat + bass).astype(np.float32)
        path = folder / f"song{k + 1}.wav"
        sf.write(path, np.stack([x, np.roll(x, 100)], axis=1), SR)
        paths.append(path)
    return paths


def osc_traffic(port: int, stop: threading.Event, num_decks: int) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    client = SimpleUDPClient("127.0.0.1", port)
    k = 0
    while not stop.wait(1.0):
        deck = k % num_decks + 1
        client.send_message(f"/stembridge/deck/{deck}/stem/vocals/mute", (k // num_decks) % 2)
        k += 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak_live(
    model: Path, songs: list[Path], minutes: float, jackd_pid: int, workdir: Path, extra: list[str] = ()
) -> dict:
    stats_path = workdir / f"stats_{len(songs)}.json"
    port = free_port()
    cmd = [sys.executable, "-m", "stembridge.bridge.cli", "live", "--backend", "jack", "--model", str(model), "--loop",
           "--duration", str(minutes * 60), "--osc-port", str(port), "--osc-tcp-port", "-1", "--status-every", "60",
           "--stats-json", str(stats_path), "--client-name", "stembridge-soak"]  # fmt: skip
    for song in songs:
        cmd += ["--deck", str(song)]
    cmd += list(extra)
    jack0, m0 = cpu_ticks(jackd_pid), machine_cpu()
    busy = busy_processes({os.getpid(), jackd_pid})
    log = (workdir / f"live_{len(songs)}.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()
    traffic = threading.Thread(target=osc_traffic, args=(port, stop, len(songs)), daemon=True)
    time.sleep(5.0)
    traffic.start()
    rc = proc.wait()
    stop.set()
    wall = time.monotonic() - t0
    log.close()
    if rc != 0 or not stats_path.exists():
        sys.exit(f"stembridge live failed (rc {rc}); see {log.name}:\n{Path(log.name).read_text()[-3000:]}")
    stats = json.loads(stats_path.read_text())
    stats["jackd_cpu_pct"] = 100.0 * (cpu_ticks(jackd_pid) - jack0) / wall
    stats["machine"] = machine_usage(m0, machine_cpu())
    stats["other_busy_processes_at_start"] = busy
    stats["log_tail"] = Path(log.name).read_text().splitlines()[-8:]
    return stats


BURNER = """
import sys, time
duty, cycle = float(sys.argv[1]), 0.0116
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < duty * cycle:
        pass
    time.sleep(max(0.0, cycle - (time.perf_counter() - start)))
"""


def idle_client_baseline(minutes: float, load_pct: float = 0.0) -> dict:
    """xruns of a JACK client that does nothing but write zeros: what the machine alone causes. With ``load_pct``
    a second process keeps that share of a core busy meanwhile (bursts every 11.6 ms, like the separation worker),
    because a VM that asks for more CPU also loses more of it to the hypervisor (steal)."""
    import jack

    burner = None
    if load_pct > 0:
        burner = subprocess.Popen([sys.executable, "-c", BURNER, str(load_pct / 100.0)])

    client = jack.Client("soak-idle-reference", no_start_server=True)
    ports = [client.outports.register(f"out_{i}") for i in range(10)]
    xruns = [0]

    @client.set_process_callback
    def process(frames: int) -> None:
        for port in ports:
            port.get_array().fill(0.0)

    @client.set_xrun_callback
    def xrun(delay: float) -> None:
        xruns[0] += 1

    m0 = machine_cpu()
    client.activate()
    time.sleep(minutes * 60)
    client.deactivate()
    client.close()
    usage = machine_usage(m0, machine_cpu())
    if burner is not None:
        burner.kill()
        burner.wait()
    return {"minutes": minutes, "load_pct": load_pct, "xruns": xruns[0], "machine": usage}


def model_path(arg: str | None, workdir: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), f"{arg} (given)"
    from stembridge.engine.separator import DEFAULT_MODEL  # the installed package's, wherever it is

    if DEFAULT_MODEL.exists():
        return DEFAULT_MODEL, "the shipped default model (engine/models/default.onnx)"
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import make_fixture_model

    path = make_fixture_model.write(workdir, "standin_hop256", n_fft=1024, hop=256, hidden=256)
    return path, (
        "no default model yet: a stand-in of realistic size (make_fixture_model: n_fft 1024, hop 256, "
        "GRU hidden 256, dense decoder, random weights), slower per frame than the default model's budget"
    )


def write_markdown(result: dict) -> str:
    lines = [
        "# Soak: `stembridge live` on JACK (dummy backend)",
        "",
        f"{result['date']}, {result['machine']}. Period {result['period']} frames at {SR} Hz "
        f"({1000 * result['period'] / SR:.2f} ms); {result['minutes']} minutes per run; worker process; "
        "light OSC traffic (one vocal mute toggle a second).",
        f"Model: {result['model']}.",
        "",
        (
            "**Shared machine**: other processes were busy at the start of a run (listed below). "
            if any(run["other_busy_processes_at_start"] for run in result["runs"])
            else "**Quiet machine**: no other process used 5 % of a core at the start of either run. "
        )
        + "xruns of an idle JACK client measured on the same server show the machine's own share.",
        "",
        "| decks | blocks | xruns | xruns/min | deadline misses | dry blocks | callback p50 ms | callback p99 ms "
        "| callback max ms | worker p99 ms | stembridge CPU % | jackd CPU % | machine steal % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        per_min = run["xruns"] / (run["duration_s"] / 60)
        lines.append(
            f"| {run['decks']} | {run['blocks']} | {run['xruns']} | {per_min:.0f} | {run['deadline_misses']} "
            f"| {run['dry_blocks']} "
            f"| {run['callback_ms_p50']:.2f} | {run['callback_ms_p99']:.2f} | {run['callback_ms_max']:.2f} "
            f"| {run['worker_ms_p99']:.2f} | {run['cpu_pct']:.0f} | {run['jackd_cpu_pct']:.1f} "
            f"| {run['machine']['steal_pct']} |"
        )
    bases = result.get("baselines") or ([result["baseline"]] if result.get("baseline") else [])
    for base in bases:
        load = f", with another process keeping {base['load_pct']:.0f} % of a core busy" if base.get("load_pct") else ""
        lines += ["", f"Idle JACK client (its callback only writes zeros){load}, {base['minutes']} minutes, same "
                  f"server: **{base['xruns']} xruns, {base['xruns'] / base['minutes']:.0f} per minute** "
                  f"(machine steal {base['machine']['steal_pct']} %)."]  # fmt: skip
    if result.get("notes"):
        lines += ["", result["notes"]]
    lines += ["", "CPU %: of one core (stembridge = audio process + worker process, whole run).", ""]
    for run in result["runs"]:
        lines.append(f"Busy beside the {run['decks']}-deck run: " + ("; ".join(run["other_busy_processes_at_start"])
                                                                      or "nothing else above 5 %"))  # fmt: skip
    lines += ["", "Targets: 1 deck, zero xruns and zero deadline misses over 10 minutes; 4 decks, no xrun (misses, "
              "if any, fall back to the dry mix on the other bus)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--decks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--period", type=int, default=256)
    parser.add_argument("--model")
    parser.add_argument("--baseline-minutes", type=float, default=2.0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--render", help="only rewrite soak.md from this soak.json (e.g. after editing its notes)")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        (Path(args.out) / "soak.md").write_text(write_markdown(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, model_note = model_path(args.model, workdir)
        jackd_pid, started = jack_server(args.period)
        try:
            songs = make_songs(workdir, max(args.decks))
            runs = []
            for decks in args.decks:
                print(f"soak: {decks} deck(s), {args.minutes} min ...", flush=True)
                stats = soak_live(model, songs[:decks], args.minutes, jackd_pid, workdir)
                runs.append(stats)
                summary = f"xruns {stats['xruns']}, misses {stats['deadline_misses']}, "
                summary += f"callback p99 {stats['callback_ms_p99']} ms, cpu {stats['cpu_pct']:.0f}%"
                print("  " + summary, flush=True)
            baselines = []
            if args.baseline_minutes > 0:
                busiest = max(run["cpu_pct"] for run in runs)
                for load in (0.0, busiest):
                    print(f"reference: idle JACK client, other load {load:.0f} %", flush=True)
                    baselines.append(idle_client_baseline(args.baseline_minutes, load))
                    print(f"  xruns {baselines[-1]['xruns']}", flush=True)
        finally:
            if started is not None:
                started.send_signal(signal.SIGINT)
                started.wait(timeout=5)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "period": args.period,
        "minutes": args.minutes,
        "model": model_note,
        "runs": runs,
        "baselines": baselines,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "soak.md").write_text(write_markdown(result))
    print((out / "soak.md").read_text())


if __name__ == "__main__":
    main()
