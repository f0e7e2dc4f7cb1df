"""The web control surface: its WebSocket protocol on loopback (aiohttp's client), a fuzz of 10,000 messages after
which it still answers, access rules, the self-signed certificate, and a real headless Chromium (Debian's
/usr/bin/chromium driven by Playwright) on a running ``stembridge live --backend dummy``: a fader and a mute moved
in the page reach the engine's mixer, an OSC mute sent from outside lights the page's button, two touches move two
faders at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stembridge.bridge.control import Controller
from stembridge.bridge.web_server import WebSurface, parse_web_address
from stembridge.bridge.web_state import waveform_overview
from stembridge.engine.commands import CommandQueue, SetParam

aiohttp = pytest.importorskip("aiohttp")
STEMS = ("vocals", "drums", "bass", "other")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture
def rig():
    """(controller, surface, deck-1 queue) with the default scene on 2 decks, the control thread ticking."""
    q1, q2 = CommandQueue(100_000), CommandQueue(100_000)
    control = Controller(STEMS, 2, queues={1: q1, 2: q2})
    control.load_scene("default")
    control.start()
    surface = WebSurface(control, "127.0.0.1", 0, rate_per_s=1e6, burst=1e6).start()
    yield control, surface, q1
    surface.close()
    control.close()


def drain(q: CommandQueue) -> list[SetParam]:
    out: list = []
    q.drain(out.append)
    return [c for c in out if isinstance(c, SetParam)]


class Page:
    """A WebSocket client speaking the page's protocol."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.values: dict = {}
        self.seen: list[dict] = []

    async def recv(self, timeout: float = 5.0) -> dict:
        msg = await self.ws.receive(timeout=timeout)
        data = json.loads(msg.data)
        if data["t"] == "values":
            self.values.update(data["v"])
        self.seen.append(data)
        return data

    async def until(self, pred, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            m = await self.recv(max(0.05, deadline - time.monotonic()))
            if pred(m):
                return m

    async def send(self, msg) -> None:
        await self.ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))


async def with_page(url: str, body, **kwargs):
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "ws", **kwargs) as ws:
        return await body(Page(ws))


def test_the_page_gets_schema_and_state_then_sets_the_parameters_osc_would(rig):
    control, surface, q = rig

    async def body(page: Page):
        schema = await page.until(lambda m: m["t"] == "schema")
        assert schema["stems"] == list(STEMS) and [d["n"] for d in schema["decks"]] == [1, 2]
        assert schema["macros"]["1/vocals"] == {"label": "echo", "targets": ["deck/1/stem/vocals/fx/delay/mix"]}
        assert schema["params"]["deck/1/stem/vocals/level"]["max"] == 1.0 and "karaoke" in schema["scenes"]
        await page.until(lambda m: m["t"] == "values")
        assert page.values["deck/1/stem/vocals/mute"] is False and page.values["deck/1/stem/vocals/level"] == 0.8
        drain(q)
        await page.send({"t": "set", "path": "deck/1/stem/vocals/level", "value": 0.5})  # the fader
        await page.send({"t": "set", "path": "deck/1/stem/drums/mute", "value": True})
        await page.send({"t": "setn", "path": "deck/1/stem/vocals/fx/delay/mix", "x": 0.25})  # the macro
        await page.until(lambda m: page.values.get("deck/1/stem/vocals/fx/delay/mix") == 0.25)
        # another source (OSC, MIDI) shows on the page at once
        control.set("deck/2/stem/bass/solo", True, source="osc")
        await page.until(lambda m: page.values.get("deck/2/stem/bass/solo") is True)
        await page.send({"t": "scene", "action": "recall", "name": "karaoke", "fade_s": 0})
        await page.until(lambda m: m["t"] == "scene" and m["action"] == "recalled")

    asyncio.run(with_page(surface.url, body))
    assert control.get("deck/1/stem/vocals/gain_db") == pytest.approx(60 * np.log10(0.5 / 0.8))  # the fader curve
    assert control.get("deck/1/stem/vocals/mute") is True  # karaoke mutes the vocals
    time.sleep(0.05)
    cmds = drain(q)
    assert SetParam("stem/drums/mute", 1.0) in cmds
    assert any(c.path == "stem/vocals/gain_db" and c.value == pytest.approx(-12.247, abs=1e-3) for c in cmds)
    assert any(c.path == "stem/vocals/fx/delay/mix" and c.value == pytest.approx(0.25) for c in cmds)


def test_a_fader_moved_in_the_page_keeps_midi_soft_takeover_working(rig):
    import mido
    from stembridge.bridge.presets import Binding, ControllerMap

    control, surface, _q = rig
    mapper = control.add_midi(ControllerMap("knob", bindings=[Binding("cc", 1, 7, "deck/1/stem/vocals/level")]))

    def knob(value: int) -> None:
        mapper.handle(mido.Message("control_change", channel=0, control=7, value=value))

    knob(102)  # 0.8 * 127: the knob catches the fader
    knob(90)
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(90 / 127)

    async def body(page: Page):
        await page.until(lambda m: m["t"] == "values")
        await page.send({"t": "set", "path": "deck/1/stem/vocals/level", "value": 0.2})
        await page.until(lambda m: page.values.get("deck/1/stem/vocals/level") == 0.2)

    asyncio.run(with_page(surface.url, body))
    knob(127)  # the knob is far from where the page left the fader: it must not jump
    assert control.get("deck/1/stem/vocals/level") == 0.2
    knob(30)
    knob(20)  # crossing 0.2 * 127 = 25.4 takes over again
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(20 / 127)


def test_deadline_misses_raise_the_dry_fallback_warning_in_the_status(rig):
    _control, surface, _q = rig
    surface.publish_status({"deadline_misses": 3, "xruns": 0, "cpu_pct": 40.0, "latency_ms": 40.6})

    async def body(page: Page):
        first = await page.until(lambda m: m["t"] == "status")
        assert first["s"]["misses_now"] == 0 and first["s"]["latency_ms"] == 40.6
        surface.publish_status({"deadline_misses": 11, "xruns": 0, "cpu_pct": 40.0, "latency_ms": 40.6})
        late = await page.until(lambda m: m["t"] == "status" and m["s"]["deadline_misses"] == 11)
        assert late["s"]["misses_now"] == 8 and late["s"]["web"]["clients"] == 1

    asyncio.run(with_page(surface.url, body))


def test_a_change_from_one_browser_shows_on_another_at_once(rig):
    control, surface, _q = rig

    async def body():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(surface.url + "ws") as a, session.ws_connect(surface.url + "ws") as b:
                one, two = Page(a), Page(b)
                await one.until(lambda m: m["t"] == "values")
                await two.until(lambda m: m["t"] == "values")
                await one.send({"t": "set", "path": "deck/2/stem/vocals/mute", "value": True})
                await two.until(lambda m: two.values.get("deck/2/stem/vocals/mute") is True)

    asyncio.run(body())
    assert control.get("deck/2/stem/vocals/mute") is True


def test_fuzz_of_10000_messages_gets_error_replies_is_counted_and_the_server_still_answers(rig):
    control, surface, _q = rig
    rng = random.Random(3)
    good = ["deck/1/stem/vocals/level", "deck/2/stem/drums/mute", "deck/1/stem/other/fx/lpf/cutoff_frequency_hz"]
    garbage = [
        lambda: "{not json",
        lambda: json.dumps([1, 2, 3]),
        lambda: json.dumps({"t": "set", "path": "deck/9/stem/kazoo/mute", "value": 1}),
        lambda: json.dumps({"t": "set", "path": "../../etc/passwd", "value": 1}),
        lambda: json.dumps({"t": "set", "path": rng.choice(good), "value": rng.choice([1e9, -1e9, 7, -3])}),
        lambda: json.dumps({"t": "set", "path": rng.choice(good), "value": rng.choice(["loud", None, [1], {"a": 1}])}),
        lambda: '{"t": "set", "path": "deck/1/stem/vocals/level", "value": NaN}',
        lambda: json.dumps({"t": "setn", "path": rng.choice(good), "x": rng.uniform(-5, 5)}),
        lambda: json.dumps({"t": rng.choice(["", "SET", "subscribe", "eval"]), "id": rng.random()}),
        lambda: json.dumps({"t": "scene", "action": "recall", "name": "no_such_scene"}),
        lambda: json.dumps({"t": "scene", "action": "explode", "name": "x" * 300}),
        lambda: json.dumps({"t": "osc", "address": "/stembridge/subscribe", "args": [9000]}),
        lambda: "[" * 5000,
        lambda: "x" * 9000,
        lambda: bytes(rng.getrandbits(8) for _ in range(20)).decode("latin-1"),
    ]

    async def body(page: Page):
        await page.until(lambda m: m["t"] == "schema")
        for _ in range(10_000):
            await page.send(rng.choice(garbage)())
        await page.ws.send_bytes(b"\x00\x01binary")
        await page.send({"t": "ping", "id": 42})
        await page.until(lambda m: m["t"] == "pong" and m["id"] == 42, timeout=20)
        await page.send({"t": "set", "path": "deck/1/stem/bass/mute", "value": True})
        await page.until(lambda m: page.values.get("deck/1/stem/bass/mute") is True)
        return [m for m in page.seen if m["t"] in ("error", "warning")]

    errors = asyncio.run(with_page(surface.url, body))
    codes = {m["code"] for m in errors}
    assert {"malformed", "unknown_path", "bad_path", "bad_value", "clamped", "unknown_type", "oversized"} <= codes
    assert all(isinstance(m["message"], str) and m["message"] for m in errors)
    stats = surface.snapshot_stats()
    assert stats["messages"] == 10_002 and stats["malformed"] > 500 and stats["unknown"] > 500
    assert control.get("deck/1/stem/vocals/level") <= 1.0 and control.get("deck/1/stem/bass/mute") is True


def test_a_flooding_client_is_rate_limited_then_cut_off_and_others_keep_working():
    control = Controller(STEMS, 1, queues={1: CommandQueue(10_000)})
    control.start()
    surface = WebSurface(control, "127.0.0.1", 0, rate_per_s=100, burst=50).start()
    try:

        async def flood(page: Page):
            await page.until(lambda m: m["t"] == "schema")
            for i in range(300):  # 3x the rate in a burst: dropped with a notice, the connection stays
                await page.send({"t": "set", "path": "deck/1/stem/vocals/level", "value": (i % 100) / 100})
            notice = await page.until(lambda m: m["t"] == "error" and m["code"] == "rate_limited")
            assert "100 messages a second" in notice["message"]
            with pytest.raises((ConnectionError, aiohttp.ClientError)):
                for i in range(5000):  # over 10x the rate within a second: the server closes the socket
                    await page.send({"t": "set", "path": "deck/1/stem/vocals/level", "value": (i % 100) / 100})
                    if i % 100 == 0:
                        await asyncio.sleep(0)
                while True:
                    await page.recv()

        async def other(page: Page):
            await page.until(lambda m: m["t"] == "schema")
            await page.send({"t": "set", "path": "deck/1/stem/drums/solo", "value": True})
            await page.until(lambda m: page.values.get("deck/1/stem/drums/solo") is True)

        asyncio.run(with_page(surface.url, flood))
        asyncio.run(with_page(surface.url, other))
        stats = surface.snapshot_stats()
        assert stats["rate_limited"] >= 1000 and stats["kicked"] == 1
    finally:
        surface.close()
        control.close()


def test_network_binds_need_an_allowlist_and_a_foreign_origin_is_refused(rig):
    control, surface, _q = rig
    with pytest.raises(ValueError, match="allowlist"):
        WebSurface(control, "0.0.0.0", 0)
    assert parse_web_address("8080") == ("127.0.0.1", 8080)
    assert parse_web_address("0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_web_address("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="PORT"):
        parse_web_address("host:http")

    async def foreign():
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(surface.url + "ws", headers={"Origin": "https://evil.example"})

    asyncio.run(foreign())
    assert surface.snapshot_stats()["refused"] == 1


def test_a_bad_web_address_or_a_taken_port_is_a_clear_error():
    import socket

    from click.testing import CliRunner
    from stembridge.bridge.cli_live import live

    result = CliRunner().invoke(live, ["--backend", "dummy", "--web", "80x"])
    assert result.exit_code == 2 and "give [HOST:]PORT" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        control = Controller(STEMS, 1)
        with pytest.raises(OSError, match=f"cannot serve the web surface on 127.0.0.1:{port}: .*in use"):
            WebSurface(control, "127.0.0.1", port).start()
        assert control.tree._listeners == []  # nothing left hooked into the tree


def _lan_address() -> str | None:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_network_clients_need_the_token_and_get_https(tmp_path):
    ip = _lan_address()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test a network client from")
    control = Controller(STEMS, 1)
    surface = WebSurface(control, ip, 0, allow=[f"{ip}/32"], tls_dir=tmp_path).start()
    try:
        assert surface.url.startswith(f"https://{ip}:") and f"?token={surface.token}" in surface.url
        bare = surface.url.split("?")[0]

        async def body():
            connector = aiohttp.TCPConnector(ssl=False)  # self-signed
            jar = aiohttp.CookieJar(unsafe=True)  # keep cookies from an IP address, as browsers do
            async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
                async with session.get(bare) as r:
                    assert r.status == 403 and "token" in await r.text()
                async with session.get(surface.url) as r:  # sets the cookie, redirects to a clean address
                    assert r.status == 200 and "stembridge" in await r.text()
                async with session.ws_connect(bare + "ws") as ws:  # the cookie opens the socket
                    assert json.loads((await ws.receive(timeout=5)).data)["t"] == "schema"

        asyncio.run(body())
        assert (tmp_path / "cert.pem").exists() and oct((tmp_path / "key.pem").stat().st_mode & 0o777) == "0o600"
    finally:
        surface.close()


def test_the_certificate_is_made_once_and_covers_the_hosts(tmp_path):
    from cryptography import x509
    from stembridge.bridge.web_tls import ensure_certificate

    cert, _key = ensure_certificate(["192.168.7.7"], tmp_path)
    first = cert.read_bytes()
    assert ensure_certificate(["192.168.7.7"], tmp_path)[0].read_bytes() == first  # reused
    san = x509.load_pem_x509_certificate(first).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "192.168.7.7" in {str(v) for v in san.value.get_values_for_type(x509.IPAddress)}
    ensure_certificate(["10.1.2.3"], tmp_path)  # a new address: a new certificate
    assert cert.read_bytes() != first


def test_waveform_overview_shape_and_scale():
    audio = np.zeros((2, 44100), np.float32)
    audio[0, 22050:22100] = 0.5
    peaks, rms = waveform_overview(audio, 100)
    assert len(peaks) == len(rms) == 100 and max(peaks) == 255 and peaks[50] == 255 and peaks[10] == 0


# ---------------------------------------------------------------------------------------------------------------
# a real browser on a running `stembridge live --backend dummy`


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)")
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture
def live_session(tmp_path, tiny_model):
    from stembridge.bridge.cli_live import LiveSession, live

    t = np.arange(44100 * 20) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    path = tmp_path / "two tones.wav"
    sf.write(path, np.stack([tone, tone]).T, 44100)
    args = [
        "--backend", "dummy", "--deck", str(path), "--deck", str(path), "--model", str(tiny_model), "--worker",
        "thread", "--web", "127.0.0.1:0", "--osc-port", "0", "--scene", "default", "--thread-rt-priority", "0",
        "--worker-rt-priority", "0", "--loop",
    ]  # fmt: skip
    opts = live.make_context("live", args).params
    session = LiveSession(opts)
    try:
        session.open()
        yield session
    finally:
        session.close()


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_in_chromium_fader_and_mute_reach_the_engine_and_osc_lights_the_page(live_session, tmp_path):
    sync_api = _browser_or_skip()
    from pythonosc.udp_client import SimpleUDPClient

    session = live_session
    mixer = session.engine.mixers[0]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(session.web.url)
        vocals = page.locator('.deck[data-deck="1"] .stem[data-stem="vocals"]')
        vocals.locator(".vfader").wait_for()
        page.wait_for_function("() => window.__stembridge.values['deck/1/stem/vocals/level'] === 0.8")
        box = vocals.locator(".vfader").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x, y + 40, steps=5)
        page.mouse.move(x, y + 80, steps=5)
        page.mouse.up()
        assert wait_for(lambda: mixer.state("vocals")["gain_db"] < -3.0), mixer.state("vocals")
        level = session.control.get("deck/1/stem/vocals/level")
        assert level < 0.8 and mixer.state("vocals")["gain_db"] == pytest.approx(60 * np.log10(level / 0.8), abs=1e-4)
        vocals.locator(".mute").click()
        assert wait_for(lambda: mixer.state("vocals")["mute"] is True)
        # an OSC mute from outside lights the page's button
        osc = SimpleUDPClient("127.0.0.1", session.control.osc.address[1])
        osc.send_message("/stembridge/deck/1/stem/bass/mute", 1)
        page.wait_for_function(
            """() => document.querySelector('.deck[data-deck="1"] .stem[data-stem="bass"] .mute')
                     .classList.contains('on')""",
            timeout=5000,
        )
        assert mixer.state("bass")["mute"] is True
        # state restored on reconnect: the socket drops, a change happens meanwhile, the page comes back showing it
        assert session.web.disconnect_all() == 1
        page.wait_for_function("() => window.__stembridge.ws.readyState !== 1", timeout=5000)
        session.control.set("deck/2/stem/other/solo", True, source="osc")
        page.wait_for_function(
            """() => window.__stembridge.ws.readyState === 1 && document.querySelector(
                     '.deck[data-deck="2"] .stem[data-stem="other"] .solo').classList.contains('on')""",
            timeout=10000,
        )
        assert session.web.snapshot_stats()["connections"] == 2
        # the keyboard map: listed on the page, and "2" mutes deck 1's second stem (drums)
        assert page.locator("#keymap tr").count() >= 8
        page.keyboard.press("2")
        assert wait_for(lambda: mixer.state("drums")["mute"] is True)
        page.wait_for_function("() => window.__stembridge.stats.meterFrames > 5", timeout=5000)
        page.screenshot(path=str(tmp_path / "web-surface.png"))
        if os.environ.get("STEMBRIDGE_UPDATE_SCREENSHOT"):
            shutil.copy(tmp_path / "web-surface.png", Path(__file__).resolve().parent.parent / "docs")
        browser.close()


def test_in_chromium_two_touches_move_two_faders_at_once(live_session):
    sync_api = _browser_or_skip()
    session = live_session
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, has_touch=True)
        page = context.new_page()
        page.goto(session.web.url)
        page.wait_for_function("() => window.__stembridge.values['deck/1/stem/drums/level'] === 0.8")
        boxes = [
            page.locator(f'.deck[data-deck="1"] .stem[data-stem="{s}"] .vfader').bounding_box()
            for s in ("drums", "bass")
        ]
        points = [{"x": b["x"] + b["width"] / 2, "y": b["y"] + b["height"] * 0.5} for b in boxes]
        cdp = context.new_cdp_session(page)

        def touch(kind: str, dy: tuple[float, float]) -> None:
            pts = [{"x": pt["x"], "y": pt["y"] + d, "id": i} for i, (pt, d) in enumerate(zip(points, dy, strict=True))]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": pts if kind != "touchEnd" else []})

        touch("touchStart", (0, 0))
        for k in range(1, 9):
            touch("touchMove", (10 * k, -10 * k))  # drums down, bass up, in the same events
        touch("touchEnd", (80, -80))
        assert wait_for(lambda: session.control.get("deck/1/stem/drums/level") < 0.7)
        assert wait_for(lambda: session.control.get("deck/1/stem/bass/level") > 0.9)
        browser.close()
