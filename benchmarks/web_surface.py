"""Benchmark of the web control surface on a running live engine (dummy backend, 4 file decks, the shipped model,
separation in a worker process), in one run:

1. audio callback durations with no page open (the surface serving, nobody connected);
2. headless Chromium (Debian's /usr/bin/chromium through Playwright) with the page open: meter frames per second
   for 4 decks x 4 stems as the page receives and draws them, and the latency from a fader move in the page (the
   pointer event's time) to the engine applying the new gain on the audio thread (the command drained at a block
   start), for real mouse moves 60 ms apart; callback durations meanwhile;
3. the page open plus a second client flooding the WebSocket with garbage and fader moves as fast as it can:
   callback durations meanwhile, and whether the surface still answers.

Results: benchmarks/results/web_surface/web_surface.json and .md; docs/web-surface.png (the page, 4 decks).
Run: nice -n 15 .venv/bin/python benchmarks/web_surface.py   (about 2 minutes)
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "web_surface"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
PHASE_S = 20.0
NUM_DECKS = 4
INIT_SCRIPT = """
window.__bench = {moves: [], lastMove: 0};
document.addEventListener('pointermove', (e) => { window.__bench.lastMove = performance.timeOrigin + e.timeStamp; },
                          true);
const _send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data === 'string' && data.includes('deck/1/stem/vocals/level')) {
    const m = JSON.parse(data);
    window.__bench.moves.push([window.__bench.lastMove, performance.timeOrigin + performance.now(), m.value]);
  }
  return _send.call(this, data);
};
"""


def make_decks(folder: Path) -> list[Path]:
    paths = []
    t = np.arange(44100 * 60) / 44100
    rng = np.random.default_rng(0)
    for k in range(NUM_DECKS):
        beat = (np.sin(2 * np.pi * 2 * t) > 0.95).astype(np.float32) * rng.standard_normal(t.size).astype(np.float32)
        tone = 0.2 * np.sin(2 * np.pi * (110 * (k + 1)) * t) + 0.1 * np.sin(2 * np.pi * 880 * t) * np.sin(0.3 * t)
        x = (tone + 0.3 * beat).astype(np.float32)
        path = folder / f"deck {k + 1} synth.wav"
        sf.write(path, np.stack([x, 0.8 * x]).T, 44100)
        paths.append(path)
    return paths


def callback_ms(engine, b0: int, b1: int) -> np.ndarray:
    ring = engine.cb_ns
    b0 = max(b0, b1 - len(ring))
    return np.array([ring[b % len(ring)] for b in range(b0, b1)], dtype=np.float64) / 1e6


def pct(x, q) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def summary(ms: np.ndarray) -> dict:
    return {"blocks": int(len(ms)), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": float(ms.max())}


def flood(url: str, seconds: float, conn) -> None:
    """A second client in its own process (as a remote browser would be): garbage and fader moves as fast as it can
    send them, reconnecting when the surface cuts it off. Sends a summary back through ``conn``."""
    import aiohttp

    rng = random.Random(1)
    junk = [
        "{bad", "[]", json.dumps({"t": "set", "path": "deck/9/x", "value": 1}), "x" * 5000,
        json.dumps({"t": "set", "path": "deck/2/stem/drums/level", "value": 1e9}),
        json.dumps({"t": "nope"}),
    ]  # fmt: skip

    result = {"sent": 0, "connections": 0}

    async def run() -> None:
        end = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                async with session.ws_connect(url + "ws") as ws:
                    result["connections"] += 1
                    try:
                        while time.monotonic() < end and not ws.closed:
                            for _ in range(200):
                                if rng.random() < 0.5:
                                    await ws.send_str(rng.choice(junk))
                                else:
                                    move = {"t": "set", "path": "deck/2/stem/bass/level", "value": rng.random()}
                                    await ws.send_str(json.dumps(move))
                                result["sent"] += 1
                            await asyncio.sleep(0)
                    except (ConnectionError, RuntimeError):
                        pass
                await asyncio.sleep(0.5)  # the page's reconnect back-off starts at 0.5 s
            async with session.ws_connect(url + "ws") as ws:
                await ws.send_str(json.dumps({"t": "ping", "id": "after"}))
                t0 = time.monotonic()
                while True:
                    m = await ws.receive(timeout=10)
                    if m.type.name == "TEXT" and '"pong"' in m.data:
                        result["pong_after_flood_ms"] = 1000 * (time.monotonic() - t0)
                        break

    asyncio.run(run())
    conn.send(result)


def main() -> None:
    from playwright.sync_api import sync_playwright
    from stembridge.bridge.cli_live import LiveSession, live
    from stembridge.bridge.params import level_to_gain_db

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="stembridge_web_bench_"))
    decks = make_decks(tmp)
    args = ["--backend", "dummy", "--web", "127.0.0.1:0", "--osc-port", "0", "--scene", "default", "--loop"]
    for d in decks:
        args += ["--deck", str(d)]
    session = LiveSession(live.make_context("live", args).params)
    session.open()
    engine, surface = session.engine, session.web
    applied: list[tuple[float, float]] = []
    apply0 = engine._appliers[0]

    def timed_apply(cmd, _apply=apply0, _applied=applied, _now=time.time) -> None:
        if getattr(cmd, "path", "") == "stem/vocals/gain_db":
            _applied.append((_now(), cmd.value))
        _apply(cmd)

    engine._appliers[0] = timed_apply  # the audio thread's command hook for deck 1 (benchmark only)
    results: dict = {
        "decks": NUM_DECKS, "stems": list(engine.stems), "period": engine.block_size, "model": engine.card.name,
        "worker": engine.worker.mode, "phase_s": PHASE_S,
    }  # fmt: skip
    try:
        time.sleep(3.0)  # warm-up
        b0 = engine.block
        time.sleep(PHASE_S)
        results["no_page"] = summary(callback_ms(engine, b0, engine.block))
        print("no page:", results["no_page"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 1024})
            page.add_init_script(INIT_SCRIPT)
            page.goto(surface.url)
            page.wait_for_function("() => window.__stembridge.stats.meterFrames > 10", timeout=20000)
            b0 = engine.block
            t0 = time.monotonic()
            m0 = page.evaluate("() => ({...window.__stembridge.stats})")
            time.sleep(10.0)
            m1 = page.evaluate("() => ({...window.__stembridge.stats})")
            dt = time.monotonic() - t0
            results["meters"] = {
                "messages_per_s": (m1["meterMsgs"] - m0["meterMsgs"]) / dt,
                "frames_drawn_per_s": (m1["meterFrames"] - m0["meterFrames"]) / dt,
                "meters_per_frame": NUM_DECKS * (len(engine.stems) + 1),
            }
            print("meters:", results["meters"])
            fader = page.locator('.deck[data-deck="1"] .stem[data-stem="vocals"] .vfader').bounding_box()
            x, y = fader["x"] + fader["width"] / 2, fader["y"] + fader["height"] * 0.5
            page.mouse.move(x, y)
            page.mouse.down()
            for k in range(150):
                page.mouse.move(x, y + 3 * ((k % 20) - 10) + (k // 20))
                time.sleep(0.06)
            page.mouse.up()
            time.sleep(0.5)
            moves = page.evaluate("() => window.__bench.moves")
            results["page_open"] = summary(callback_ms(engine, b0, engine.block))
            print("page open:", results["page_open"])
            lat = []
            for t_event, _t_send, value in moves:
                target = level_to_gain_db(value)
                hits = [t for t, v in applied if abs(v - target) < 1e-6 and t >= t_event / 1000 - 0.001]
                if hits:
                    lat.append(1000 * (hits[0] - t_event / 1000))
            lat = np.array(lat)
            results["fader_latency_ms"] = {
                "moves": len(moves), "matched": int(len(lat)), "median": pct(lat, 50), "p99": pct(lat, 99),
                "max": float(lat.max()) if len(lat) else None,
                "send_minus_event_median": pct(np.array([(s - e) for e, s, _ in moves]), 50),
            }  # fmt: skip
            print("fader latency:", results["fader_latency_ms"])
            page.set_viewport_size({"width": 1366, "height": 1300})  # four decks in one view
            time.sleep(0.5)
            page.screenshot(path=str(ROOT / "docs" / "web-surface.png"))
            # flood from a second client while the page stays open
            before = surface.snapshot_stats()
            ctx = multiprocessing.get_context("spawn")
            here, there = ctx.Pipe()
            proc = ctx.Process(target=flood, args=(surface.url, PHASE_S, there), daemon=True)
            proc.start()
            time.sleep(1.0)  # the flooder's start-up
            b0 = engine.block
            time.sleep(PHASE_S - 1.0)
            b1 = engine.block
            flood_result = here.recv() if here.poll(30) else {}
            proc.join(10)
            results["page_open_and_flood"] = summary(callback_ms(engine, b0, b1))
            after = surface.snapshot_stats()
            counters = ("messages", "rate_limited", "kicked", "malformed", "unknown", "applied")
            results["flood"] = flood_result | {k: after[k] - before[k] for k in counters}
            alive = page.evaluate("() => window.__stembridge.ws.readyState === 1")
            results["flood"]["page_still_connected"] = bool(alive)
            print("flood:", results["page_open_and_flood"], results["flood"])
            browser.close()
        results["engine_stats"] = {k: v for k, v in engine.stats().items() if isinstance(v, (int, float))}
    finally:
        engine._appliers[0] = apply0
        session.close()
    (OUT / "web_surface.json").write_text(json.dumps(results, indent=2) + "\n")
    write_md(results)


def write_md(r: dict) -> None:
    f, m = r["fader_latency_ms"], r["meters"]
    rows = [
        "# Web surface benchmark",
        "",
        f"Dummy backend, {r['decks']} file decks x {len(r['stems'])} stems, period {r['period']}, model {r['model']}, "
        f"separation worker: {r['worker']}; headless Chromium (Debian) on the same 2-core machine, which was also "
        "training a model in the background. Written by benchmarks/web_surface.py.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| fader move in the page -> gain applied on the audio thread, median | {f['median']:.1f} ms |",
        f"| same, p99 ({f['matched']} of {f['moves']} moves matched) | {f['p99']:.1f} ms |",
        f"| meter messages received by the page | {m['messages_per_s']:.1f} /s |",
        f"| meter frames drawn by the page (20 meters each) | {m['frames_drawn_per_s']:.1f} /s |",
    ]
    for key, label in (
        ("no_page", "no page open"), ("page_open", "page open (meters, fader moves)"),
        ("page_open_and_flood", "page open + a client flooding the socket"),
    ):  # fmt: skip
        s = r[key]
        rows.append(f"| audio callback p50 / p99 / max, {label} | {s['p50_ms']:.3f} / {s['p99_ms']:.3f} / "
                    f"{s['max_ms']:.2f} ms ({s['blocks']} blocks) |")  # fmt: skip
    fl = r["flood"]
    rows += [
        f"| flood: messages sent / rate-limited / applied / cut-offs | {fl.get('sent', 0)} / {fl['rate_limited']} / "
        f"{fl['applied']} / {fl['kicked']} |",
        f"| flood: ping answered after it | {fl.get('pong_after_flood_ms', math.nan):.1f} ms; page still connected: "
        f"{fl['page_still_connected']} |",
        "",
    ]
    (OUT / "web_surface.md").write_text("\n".join(rows))
    print("\n".join(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
