"""Control latency and OSC throughput: from an OSC message to the change applied at a block boundary.

A simulated audio thread runs a real ``StemMixer`` (4 stems, the shipped default chains) on a block clock of 256
samples at 44.1 kHz (5.8 ms): at each block start it drains the deck's command queue, then processes the block.
OSC messages come from a separate process (like a tablet or another program would), over loopback.

1. Latency: 1,000 messages at random intervals (2-8 ms, so they arrive at every phase of the block); for each,
   the time from ``sendto`` in the client to the block boundary that applied it (one clock: CLOCK_MONOTONIC).
   Also the mixer's ramp: samples from the boundary until the gain reaches its target (engine ramp 10 ms).
2. Sustained rate: 50,000 messages at 5,000, 10,000 and 20,000 msg/s (sent in 2 ms bursts) and unpaced, over UDP
   (and unpaced over TCP), with one feedback subscriber: messages received, applied and drained by the audio
   thread (none may be lost), and whether the audio path was disturbed: block start lateness and processing
   time against an idle baseline, and blocks that finished after their deadline.

    python3 benchmarks/control_latency.py [--quick]

Writes benchmarks/results/control_latency.json and control_latency.md. Timings on shared 2-core machines drift
30-100% between runs: compare numbers from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SR = 44100
BLOCK = 256
BLOCK_S = BLOCK / SR
STEMS = ("vocals", "drums", "bass", "other")
LOAD_ADDRESSES = [
    "/stembridge/deck/1/stem/vocals/gain_db",
    "/stembridge/deck/1/stem/drums/gain_db",
    "/stembridge/deck/1/stem/bass/gain_db",
    "/stembridge/deck/1/stem/other/gain_db",
    "/stembridge/deck/1/master/gain_db",
    "/stembridge/deck/1/stem/bass/fx/comp/threshold_db",
    "/stembridge/deck/1/stem/bass/fx/mud/gain_db",
]


# --------------------------------------------------------------------------------------------------- sender process
def sender_main(argv: list[str]) -> None:
    """Child process: send messages, print the send times (JSON) for the latency run."""
    from stembridge.bridge.osc_codec import encode_message

    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["udp", "tcp"])
    p.add_argument("--port", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--rate", type=float, default=0.0)  # 0: unpaced
    p.add_argument("--pattern", choices=["latency", "load"])
    a = p.parse_args(argv)
    if a.transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

        def send(packet: bytes, _s=sock, _a=("127.0.0.1", a.port)) -> None:
            _s.sendto(packet, _a)
    else:
        import struct

        sock = socket.create_connection(("127.0.0.1", a.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send(packet: bytes, _s=sock) -> None:
            _s.sendall(struct.pack(">I", len(packet)) + packet)

    if a.pattern == "latency":
        rng = random.Random(7)
        times = []
        time.sleep(0.2)
        for i in range(a.count):
            value = -60.0 + i * 0.01  # a unique value identifies each message
            packet = encode_message("/stembridge/deck/1/stem/vocals/gain_db", [value])
            t = time.perf_counter()
            send(packet)
            times.append(t)
            time.sleep(rng.uniform(0.002, 0.008))
        print(json.dumps(times))
        return
    packets = [
        encode_message(LOAD_ADDRESSES[i % len(LOAD_ADDRESSES)], [float(-30.0 + (i % 997) * 0.02)])
        for i in range(a.count)
    ]
    t0 = time.perf_counter()
    if a.rate <= 0:
        for packet in packets:
            send(packet)
    else:
        burst = max(1, int(a.rate * 0.002))
        for start in range(0, len(packets), burst):
            due = t0 + start / a.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            for packet in packets[start : start + burst]:
                send(packet)
    elapsed = time.perf_counter() - t0
    if a.transport == "tcp":
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the server closes once it has handled everything
            pass
    print(json.dumps({"elapsed_s": elapsed}))


def run_sender(transport: str, port: int, count: int, rate: float, pattern: str, timeout: float = 120.0):
    cmd = [sys.executable, __file__, "--sender", "--transport", transport, "--port", str(port)]
    cmd += ["--count", str(count), "--rate", str(rate), "--pattern", pattern]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------- audio thread
class AudioClock:
    """A block clock running a real StemMixer; drains the queue at each block start, recording what it applied."""

    def __init__(self, queue, mixer) -> None:
        self.queue, self.mixer = queue, mixer
        self.applied_at: dict[float, float] = {}  # vocals gain value -> perf_counter at the boundary that applied it
        self.drained = 0
        self.lateness: list[float] = []
        self.proc: list[float] = []
        self.missed = 0
        self._stop = threading.Event()
        rng = np.random.default_rng(0)
        self.stems = (rng.standard_normal((len(STEMS), 2, BLOCK)) * 0.1).astype(np.float32)
        self.thread = threading.Thread(target=self._run, name="audio", daemon=True)

    def _apply(self, cmd) -> None:
        self.mixer.apply(cmd)
        self.drained += 1
        if getattr(cmd, "path", "") == "stem/vocals/gain_db":
            self.applied_at[round(cmd.value, 4)] = self._now

    def _run(self) -> None:
        t0 = time.perf_counter() + 0.05
        k = 0
        while not self._stop.is_set():
            due = t0 + k * BLOCK_S
            delay = due - time.perf_counter()
            if delay > 0.0003:
                time.sleep(delay - 0.0003)
            while time.perf_counter() < due:
                pass
            self._now = start = time.perf_counter()
            self.lateness.append(start - due)
            self.queue.drain(self._apply)
            self.mixer.process(self.stems)
            end = time.perf_counter()
            self.proc.append(end - start)
            if end > due + BLOCK_S:
                self.missed += 1
            k += 1
            if end > t0 + (k + 1) * BLOCK_S:  # fell behind by more than a block: skip ahead, as a device would
                k = int((end - t0) / BLOCK_S) + 1

    def start(self) -> AudioClock:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()

    def reset_stats(self) -> None:
        self.lateness, self.proc, self.missed, self.drained = [], [], 0, 0

    def audio_stats(self) -> dict:
        late = np.array(self.lateness) * 1e3
        proc = np.array(self.proc) * 1e3
        return {
            "blocks": len(late),
            "start_late_ms_median": round(float(np.median(late)), 3),
            "start_late_ms_p99": round(float(np.percentile(late, 99)), 3),
            "start_late_ms_max": round(float(late.max()), 3),
            "process_ms_median": round(float(np.median(proc)), 3),
            "process_ms_p99": round(float(np.percentile(proc, 99)), 3),
            "missed_deadlines": self.missed,
        }


def make_rig():
    from stembridge.bridge.control import Controller
    from stembridge.engine.commands import CommandQueue
    from stembridge.engine.mixer import StemMixer

    queue = CommandQueue(8192)
    control = Controller(STEMS, 1, queues={1: queue})
    control.load_scene("default")
    mixer = StemMixer(STEMS, sample_rate=SR, max_block_size=BLOCK)
    queue.drain(mixer.apply)
    server = control.serve_osc("127.0.0.1", 0)
    control.start()
    return control, server, queue, mixer


def pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def measure_latency(count: int) -> dict:
    control, server, queue, mixer = make_rig()
    pushed: dict[float, float] = {}
    real_push = queue.push

    def push(cmd):  # the OSC thread's side: when the command entered the queue
        if getattr(cmd, "path", "") == "stem/vocals/gain_db":
            pushed[round(cmd.value, 4)] = time.perf_counter()
        return real_push(cmd)

    queue.push = push
    audio = AudioClock(queue, mixer).start()
    try:
        send_times = run_sender("udp", server.address[1], count, 0, "latency")
        time.sleep(0.1)
    finally:
        audio.stop()
        control.close()
    lat, server_lat, blocks = [], [], []
    for i, t_send in enumerate(send_times):
        value = round(-60.0 + i * 0.01, 4)
        t_apply = audio.applied_at.get(value)
        if t_apply is None:
            continue
        lat.append(t_apply - t_send)
        server_lat.append(pushed[value] - t_send)
        blocks.append((t_apply - t_send) / BLOCK_S)
    lat_ms, srv_ms = np.array(lat) * 1e3, np.array(server_lat) * 1e3
    return {
        "messages": count,
        "applied": len(lat),
        "block_ms": round(BLOCK_S * 1e3, 3),
        "send_to_applied_ms": {
            "median": pct(lat_ms, 50),
            "p95": pct(lat_ms, 95),
            "p99": pct(lat_ms, 99),
            "max": round(float(lat_ms.max()), 3),
        },  # fmt: skip
        "send_to_queue_ms": {"median": pct(srv_ms, 50), "p99": pct(srv_ms, 99), "max": round(float(srv_ms.max()), 3)},
        "applied_within_one_block_share": round(float(np.mean(np.array(blocks) <= 1.0)), 4),
        "audio": audio.audio_stats(),
    }


def measure_ramp() -> dict:
    """Samples from the block boundary that applies a gain change until the output sits at the new gain."""
    from stembridge.engine.commands import SetParam
    from stembridge.engine.mixer import StemMixer

    mixer = StemMixer(STEMS, sample_rate=SR, max_block_size=BLOCK, ramp_ms=10.0)
    ones = np.ones((len(STEMS), 2, BLOCK), dtype=np.float32)
    mixer.process(ones)
    out = []
    mixer.apply(SetParam("stem/vocals/gain_db", -12.0))
    for _ in range(8):
        busses, _ = mixer.process(ones)
        out.append(busses[0, 0].copy())
    signal = np.concatenate(out)
    target = 10 ** (-12 / 20)
    settled = int(np.argmax(np.abs(signal - target) < 1e-6))
    mute = StemMixer(STEMS, sample_rate=SR, max_block_size=BLOCK)
    mute.process(ones)
    mute.apply(SetParam("stem/vocals/mute", 1.0))
    silent = np.concatenate([mute.process(ones)[0][0, 0].copy() for _ in range(8)])
    return {
        "gain_change_settled_samples": settled + 1,
        "gain_change_settled_ms": round((settled + 1) / SR * 1e3, 3),
        "mute_silent_after_ms": round((int(np.argmax(silent == 0.0)) + 1) / SR * 1e3, 3),
        "max_step_per_sample": round(float(np.abs(np.diff(signal)).max()), 6),
    }


def engine_in_step(control, mixer) -> bool:
    """After a run: does the mixer hold exactly what the parameter tree says (nothing lost on the way)?"""
    tree = control.tree
    for stem in STEMS:
        state = mixer.state(stem)
        for leaf in ("gain_db", "mute", "solo"):
            if abs(float(state[leaf]) - float(tree.get(f"deck/1/stem/{stem}/{leaf}"))) > 1e-9:
                return False
        for name, plugin in mixer.chain(stem):
            for path in tree.paths(f"deck/1/stem/{stem}/fx/{name}/"):
                leaf = path.rsplit("/", 1)[1]
                if leaf != "bypass" and abs(float(getattr(plugin, leaf)) - float(tree.get(path))) > 1e-4:
                    return False
    return abs(mixer.master_gain_db - tree.get("deck/1/master/gain_db")) < 1e-9


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def measure_rates(
    count: int, rates: list[float], baseline_s: float, switch_interval: float | None = None
) -> tuple[dict, list[dict]]:
    saved_interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    control, server, queue, mixer = make_rig()
    feedback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one subscriber (a control surface) gets feedback
    feedback.bind(("127.0.0.1", 0))
    feedback.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    from stembridge.bridge.osc_codec import encode_message

    feedback.sendto(encode_message("/stembridge/subscribe"), server.address)
    audio = AudioClock(queue, mixer).start()
    rows = []
    try:
        time.sleep(0.3)
        audio.reset_stats()
        time.sleep(baseline_s)
        baseline = audio.audio_stats()
        for transport, rate in [("udp", r) for r in rates] + [("tcp", 0.0)]:
            before = server.stats
            dropped_before = control.tree.num_dropped
            threads = [t for t in server._threads if t.name == f"osc-{transport}"]
            clocks = [time.pthread_getcpuclockid(t.ident) for t in threads if transport == "udp"]
            cpu0 = sum(time.clock_gettime(c) for c in clocks)
            audio.reset_stats()
            port = server.address[1] if transport == "udp" else server.tcp_address[1]
            result = run_sender(transport, port, count, rate, "load")
            wait_until(lambda b=before: server.stats["messages"] - b["messages"] >= count, 10.0)
            wait_until(lambda: len(queue) == 0, 2.0)
            time.sleep(0.05)
            in_step = engine_in_step(control, mixer)
            cpu_us = 1e6 * (sum(time.clock_gettime(c) for c in clocks) - cpu0)
            after = server.stats
            received = after["messages"] - before["messages"]
            applied = after["applied"] - before["applied"]
            rows.append(
                {
                    "transport": transport,
                    "target_rate": rate or "unpaced",
                    "sent": count,
                    "send_rate": round(count / result["elapsed_s"]),
                    "received": received,
                    "applied": applied,
                    "commands_drained": audio.drained,
                    "lost": count - applied,
                    "engine_in_step": in_step,
                    "server_cpu_us_per_msg": round(cpu_us / max(received, 1), 1) if clocks else None,
                    "queue_refused": control.tree.num_dropped - dropped_before,
                    "errors": after["errors"] - before["errors"],
                    "feedback_sent": after["feedback_sent"] - before["feedback_sent"],
                    "audio": audio.audio_stats(),
                }
            )
            print(f"  {transport} {rate or 'unpaced'}: {rows[-1]}", flush=True)
    finally:
        audio.stop()
        control.close()
        feedback.close()
        sys.setswitchinterval(saved_interval)
    return baseline, rows


def write_markdown(res: dict) -> str:
    lat, ramp = res["latency"], res["ramp"]
    s = lat["send_to_applied_ms"]
    lines = [
        "# Control latency and OSC throughput",
        "",
        f"Machine: {res['machine']}. Block clock: {BLOCK} samples at {SR} Hz = {lat['block_ms']} ms; a real "
        "StemMixer with the default chains runs in the simulated audio thread; OSC arrives from another process.",
        "",
        "## Latency: OSC message to the change applied at a block boundary",
        "",
        "| messages | applied | median ms | p95 ms | p99 ms | max ms | within one block | send -> queue median ms |",
        "|---|---|---|---|---|---|---|---|",
        f"| {lat['messages']} | {lat['applied']} | {s['median']} | {s['p95']} | {s['p99']} | {s['max']} | "
        f"{lat['applied_within_one_block_share']:.1%} | {lat['send_to_queue_ms']['median']} |",
        "",
        f"Ramp after the boundary: a gain change settles after {ramp['gain_change_settled_samples']} samples "
        f"({ramp['gain_change_settled_ms']} ms); a mute is silent after {ramp['mute_silent_after_ms']} ms; largest "
        f"per-sample gain step on a full-scale DC signal: {ramp['max_step_per_sample']}.",
        "",
    ]
    for run in res["rate_runs"]:
        lines += [
            f"## Sustained rate ({run['rates'][0]['sent']:,} messages, one feedback subscriber), "
            f"GIL switch interval {run['switch_interval']}",
            "",
            "| transport | target msg/s | sent msg/s | received | applied | lost | engine in step | commands drained | "
            "server CPU us/msg | block start late p99 ms | process p99 ms | missed deadlines |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        b = run["baseline_audio"]
        lines.append(
            f"| (idle baseline) | - | - | - | - | - | - | - | - | {b['start_late_ms_p99']} | {b['process_ms_p99']} | "
            f"{b['missed_deadlines']} / {b['blocks']} |"
        )
        for r in run["rates"]:
            a = r["audio"]
            lines.append(
                f"| {r['transport']} | {r['target_rate']} | {r['send_rate']} | {r['received']} | {r['applied']} | "
                f"{r['lost']} | {'yes' if r['engine_in_step'] else 'NO'} | {r['commands_drained']} | "
                f"{r['server_cpu_us_per_msg'] if r['server_cpu_us_per_msg'] is not None else '-'} | "
                f"{a['start_late_ms_p99']} | {a['process_ms_p99']} | {a['missed_deadlines']} / {a['blocks']} |"
            )
        lines.append("")
    lines += [
        "",
        "`applied`: messages the parameter tree took; `engine in step`: after the run the mixer holds exactly the "
        "tree's values. `commands drained` is lower than `applied` because a burst on one parameter is coalesced "
        "to its latest value once per 5 ms control tick (a single change is sent at once). The audio thread here "
        "is a Python thread sharing the interpreter (and 2 cores) with the OSC server and the sending process; "
        "`missed deadlines` counts blocks that finished after the next block was due. Regenerate with "
        "`python3 benchmarks/control_latency.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    a = p.parse_args()
    latency_count, rate_count = (200, 5000) if a.quick else (1000, 50_000)
    rates = [5000.0, 10000.0, 20000.0, 0.0]
    print("latency...", flush=True)
    latency = measure_latency(latency_count)
    print(f"  {latency}", flush=True)
    ramp = measure_ramp()
    runs = []
    for interval in (None, 0.0005):
        label = f"{sys.getswitchinterval() * 1e3:g} ms (default)" if interval is None else f"{interval * 1e3:g} ms"
        print(f"rates, GIL switch interval {label}...", flush=True)
        baseline, rows = measure_rates(rate_count, rates, 2.0 if a.quick else 5.0, interval)
        runs.append({"switch_interval": label, "baseline_audio": baseline, "rates": rows})
    res = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "latency": latency,
        "ramp": ramp,
        "rate_runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "control_latency.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "control_latency.md").write_text(write_markdown(res))
    print(write_markdown(res))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sender":
        sender_main(sys.argv[2:])
    else:
        main()
