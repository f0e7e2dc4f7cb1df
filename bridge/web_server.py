"""The web control surface: a page and a WebSocket on the same parameter tree that OSC and MIDI drive.

``stembridge live --web [HOST:]PORT`` starts a ``WebSurface``: an aiohttp server on its own thread and asyncio
event loop. The page (bridge/web/static, served from the package) asks for ``/ws`` and then works like an OSC
subscriber: it gets the schema (decks, stems, parameters with their ranges and scales, each stem's macro as the
loaded chain declares it, scenes, features), a full dump of the values, then every change from any source (OSC,
MIDI, scenes, another browser) and meters at up to 30 Hz. What it sets goes through ``Controller.set`` with
source "web": the same parameters OSC sets, so MIDI soft takeover and LED feedback follow it like any other change.

Messages (JSON text frames). From the page::

    {"t": "set", "path": "deck/1/stem/vocals/level", "value": 0.6}     a parameter (numbers or booleans)
    {"t": "setn", "path": "deck/1/stem/vocals/fx/delay/mix", "x": 0.3} through the parameter's 0..1 scale
    {"t": "scene", "action": "recall", "name": "karaoke", "fade_s": 2} recall (with a fade) or "store"
    {"t": "osc", "address": "/stembridge/deck/1/load", "args": ["..."]} deck load/eject and crate commands,
                                                                        handed to the OSC router when it has them
    {"t": "ping", "id": 7}                                              answered {"t": "pong", "id": 7}

To the page: ``schema``, ``values`` ({path: value}, a full dump first), ``meters``, ``decks`` (transport state
at 10 Hz), ``overview`` (a deck's waveform, computed off the audio thread), ``status`` (engine and surface
counters), ``osc`` (replies of passed-through OSC commands), ``error`` and ``warning`` (with ``code`` and a
message naming the problem).

Reliability. Nothing a browser sends runs on the audio thread or holds the control thread: messages are parsed and
checked on the web loop, per-client rate limited (a token bucket), and handed to an applier thread through a
bounded inbox that keeps only the latest value per parameter (a flooding fader costs one ``set`` per pass, never
a growing queue); scenes and deck-load commands go to a second thread, so a slow load never holds a fader.
Outgoing changes are coalesced per parameter and per client, so a slow client never grows memory and never delays
the others. Garbage (bad JSON, unknown types, unknown paths, out-of-range or non-finite values,
oversized frames) gets an ``error`` reply and is counted in ``stats`` and in the status the page shows; a client
sending more than ten times its rate within a second is disconnected (its page reconnects after a back-off). The
web threads are ordinary Python threads: like the OSC and control threads they take the GIL only briefly, and
``stembridge live --thread-rt-priority`` promotes them with the others.

Access. The default bind is 127.0.0.1. Another address needs an allowlist of client networks (the OSC rule,
``allow=[...]``), and then non-loopback clients need the access token printed at start (a cookie once the page
was opened with ``?token=``) and the server speaks HTTPS with a self-signed certificate (``web_tls``), because the
Screen Wake Lock API needs a secure context. WebSocket upgrades from a page of another origin are refused.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

from stembridge.bridge.osc_server import host_allowed, is_loopback_host, parse_allowlist
from stembridge.bridge.params import BadValue, Change, UnknownParam
from stembridge.bridge.web_clients import Client, Inbox, osc_call
from stembridge.bridge.web_state import (
    StatusView,
    all_values,
    build_schema,
    deck_states,
    schema_key,
    waveform_overview,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4096  # a bigger text frame gets an error; one over 64 KiB closes the connection
MAX_CLIENTS = 32
RATE_PER_S = 1000.0  # messages a client may send per second on average (four fingers on a 120 Hz screen: ~500)
RATE_BURST = 2000.0  # ...and in one burst
KICK_FACTOR = 10.0  # a client sending over 10x its rate for a second is disconnected (the page reconnects)
METER_POLL_S = 1.0 / 60.0  # the controller sends meters at <= 30 Hz; this picks every frame up
DECK_POLL_S = 0.1
SEND_TIMEOUT_S = 5.0
COOKIE = "stembridge_token"
_PATH = re.compile(r"^[A-Za-z0-9_\-/]{1,200}$")
_SCENE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
# OSC commands a page may pass through to the OSC router (deck loading and the crate, where the engine has them)
_OSC_PASS = re.compile(r"^/stembridge/(?:deck/[0-9]{1,3}/(?:load|load_next|load_prev|eject)|crate(?:/[a-z_]+)?)$")
COUNTERS = (
    "clients", "connections", "refused", "messages", "applied", "errors", "malformed", "unknown", "bad_values",
    "clamped", "rate_limited", "kicked", "oversized", "busy", "sent", "send_timeouts",
)  # fmt: skip


def parse_web_address(text: str) -> tuple[str, int]:
    """ "8080" -> ("127.0.0.1", 8080); "0.0.0.0:8080"; "[::1]:8080". Raises ValueError naming the problem."""
    text = text.strip()
    host, port = "127.0.0.1", text
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise ValueError(f"--web {text!r}: write an IPv6 address as [ADDR]:PORT")
        host, port = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web {text!r}: give [HOST:]PORT with a port 0..65535 (e.g. 8080 or 0.0.0.0:8080)")
    return host or "127.0.0.1", int(port)


def _static_dir() -> Path:
    return Path(str(files("stembridge.bridge.web") / "static"))


class WebSurface:
    """The web control surface for a ``Controller``.

    engine: the LiveEngine (optional) for transport state, waveform overviews and the dry-fallback warning.
    osc_router: the OSC router (optional): deck load/eject and crate commands the page passes through.
    allow: client networks allowed when ``host`` is not loopback (required then). token: the access token for
    non-loopback clients (default: a new random one). tls_dir: where the self-signed certificate is kept.
    """

    def __init__(
        self,
        controller: Any,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        allow: Iterable[str] = (),
        engine: Any = None,
        osc_router: Any = None,
        token: str | None = None,
        tls_dir: str | Path | None = None,
        tls: bool | None = None,
        rate_per_s: float = RATE_PER_S,
        burst: float = RATE_BURST,
    ) -> None:
        allow = list(allow)
        self.loopback_only = is_loopback_host(host)
        if not self.loopback_only and not allow:
            raise ValueError(
                f"the web surface on {host!r} accepts clients from the network: give an allowlist of client "
                "addresses (e.g. --web-allow 192.168.1.0/24), or bind 127.0.0.1"
            )
        self.controller = controller
        self.tree = controller.tree
        self.host, self.port = host, port
        self.allow = parse_allowlist(allow)
        self.engine = engine
        self.osc_router = osc_router
        self.token = token or secrets.token_urlsafe(16)
        self.tls = (not self.loopback_only) if tls is None else tls
        self.tls_dir = tls_dir
        self.rate_per_s, self.burst = float(rate_per_s), float(burst)
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.engine_status: dict[str, Any] = {}
        self.features = {"load": False, "crate": False}
        self.crate: list[str] = []
        self.apply_latency_ms: collections.deque = collections.deque(maxlen=1024)  # inbox -> applied, for status
        self._stats_lock = threading.Lock()
        self._clients: set[Client] = set()
        self._inbox = Inbox()  # parameter sets: the latest per parameter
        self._action_inbox = Inbox()  # scenes and OSC actions (a deck load can take a while): their own thread
        self._appliers: list[threading.Thread] = []
        self._out_lock = threading.Lock()
        self._changes: dict[str, Any] = {}
        self._wake_scheduled = False
        self._meters: dict[int, dict[str, list[float]]] = {}
        self._meter_seq = 0
        self._status_seq = 0
        self._schema_key: Any = None
        self._schema_json = ""
        self._decks_json = ""
        self._overviews: dict[int, tuple[Any, str]] = {}
        self._overview_pending: set[int] = set()
        self._status_view = StatusView()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self.bound: tuple[str, int] | None = None

    # -- counters --
    def count(self, kind: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[kind] += n

    def snapshot_stats(self) -> dict[str, int]:
        with self._stats_lock:
            out = dict(self.stats)
        out["clients"] = len(self._clients)
        return out

    # -- life cycle --
    @property
    def url(self) -> str:
        """The address to open (with the token for network clients)."""
        host, port = self.bound or (self.host, self.port)
        scheme = "https" if self.tls else "http"
        shown = host if ":" not in host else f"[{host}]"
        if host in ("0.0.0.0", "::"):
            import socket

            shown = socket.gethostname()
        return f"{scheme}://{shown}:{port}/" + ("" if self.loopback_only else f"?token={self.token}")

    def start(self) -> WebSurface:
        """Bind and serve (raises OSError when the port is taken). Also hooks into the tree and the meters."""
        self.tree.add_listener(self._on_change)
        self.controller.meter_listeners.append(self._on_meter)
        for name, inbox in (("stembridge-web-apply", self._inbox), ("stembridge-web-actions", self._action_inbox)):
            thread = threading.Thread(target=self._apply_loop, args=(inbox,), name=name, daemon=True)
            thread.start()
            self._appliers.append(thread)
        self._thread = threading.Thread(target=self._serve, name="stembridge-web", daemon=True)
        self._thread.start()
        self._ready.wait(15.0)
        if self._start_error is not None or self.bound is None:
            self.close()
            error = self._start_error
            if isinstance(error, OSError):
                reason = (error.strerror or str(error)).rsplit(": ", 1)[-1]  # asyncio repeats the address
                raise OSError(f"cannot serve the web surface on {self.host}:{self.port}: {reason}")
            raise RuntimeError(f"the web surface did not start: {error!r}")
        return self

    def close(self) -> None:
        """Stop serving, close every socket and the threads; unhook from the tree."""
        self.tree.remove_listener(self._on_change)
        if self._on_meter in self.controller.meter_listeners:
            self.controller.meter_listeners.remove(self._on_meter)
        loop, stop = self._loop, self._stop_event
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._inbox.close()
        self._action_inbox.close()
        for thread in self._appliers:
            thread.join(timeout=2.0)
        self._appliers.clear()

    def disconnect_all(self, reason: str = "server asked") -> int:
        """Close every browser's socket (the pages reconnect by themselves and get the full state again).
        Returns how many were open."""
        loop, clients = self._loop, list(self._clients)
        if loop is None or loop.is_closed():
            return 0
        for client in clients:
            coro = client.ws.close(code=1012, message=reason.encode()[:100])
            asyncio.run_coroutine_threadsafe(coro, loop)
        return len(clients)

    def __enter__(self) -> WebSurface:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() or logged
            if not self._ready.is_set():
                self._start_error = exc
            else:
                log.exception("the web surface stopped")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        from aiohttp import web

        self._stop_event = asyncio.Event()
        app = web.Application(middlewares=[self._middleware()], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/schema", self._http_schema)
        app.router.add_static("/static/", _static_dir(), show_index=False, follow_symlinks=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        ssl_context = None
        if self.tls:
            from stembridge.bridge.web_tls import ensure_certificate, server_context

            cert, key = await asyncio.get_running_loop().run_in_executor(
                None, ensure_certificate, [self.host], self.tls_dir
            )
            ssl_context = server_context(cert, key)
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.bound = tuple(sockets[0].getsockname()[:2]) if sockets else (self.host, self.port)
        self._probe_features()
        self._ready.set()
        tasks = [asyncio.create_task(self._meter_task()), asyncio.create_task(self._deck_task())]
        await self._stop_event.wait()
        for t in tasks:
            t.cancel()
        for client in list(self._clients):
            await client.ws.close(code=1001, message=b"server stopping")
        await runner.cleanup()

    # -- access --
    def _client_ok(self, request: Any) -> tuple[bool, str]:
        host = request.remote or ""
        if not host_allowed(host, self.allow):
            return False, f"client {host} is not in the web allowlist"
        if host_allowed(host, []):  # loopback: no token
            return True, ""
        given = request.cookies.get(COOKIE) or request.query.get("token") or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return False, "open the address printed by stembridge live, with its ?token=..."
        return True, ""

    @staticmethod
    def _same_origin(request: Any) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser page (a script or a test client)
        from urllib.parse import urlsplit

        return urlsplit(origin).netloc == request.host

    def _middleware(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(request: Any, handler: Callable) -> Any:
            ok, why = self._client_ok(request)
            if not ok:
                self.count("refused")
                return web.Response(status=403, text=f"stembridge: {why}\n")
            response = await handler(request)
            host = request.host
            response.headers.setdefault(
                "Content-Security-Policy",
                f"default-src 'self'; connect-src 'self' ws://{host} wss://{host}; img-src 'self' data:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            )
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            token = request.query.get("token")
            if token and hmac.compare_digest(token.encode(), self.token.encode()):
                response.set_cookie(COOKIE, token, httponly=True, secure=self.tls, samesite="Strict")
            return response

        return guard

    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        if request.query.get("token"):  # the cookie is set by the guard; show a clean address
            response = web.HTTPFound("/")
            response.set_cookie(COOKIE, request.query["token"], httponly=True, secure=self.tls, samesite="Strict")
            raise response
        return web.FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def _http_schema(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text=self._schema(), content_type="application/json")

    # -- the socket --
    async def _ws(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        if not self._same_origin(request):
            self.count("refused")
            return web.Response(status=403, text="stembridge: WebSocket from a page of another origin\n")
        if len(self._clients) >= MAX_CLIENTS:
            self.count("refused")
            return web.Response(status=503, text=f"stembridge: at most {MAX_CLIENTS} web clients\n")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=64 * 1024, compress=False)
        await ws.prepare(request)
        client = Client(ws, request.remote or "", self.rate_per_s, self.burst)
        self._clients.add(client)
        self.count("connections")
        client.frames["schema"] = self._schema()
        client.values = self._all_values()
        for kind in ("decks", "status"):
            frame = self._decks_json if kind == "decks" else self._status_json()
            if frame:
                client.frames[kind] = frame
        for _deck, (_key, frame) in list(self._overviews.items()):
            client.events.append(frame)
        client.wake.set()
        sender = asyncio.create_task(self._sender(client))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._receive(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.count("malformed")
                    self._error(client, "malformed", "send JSON text frames, not binary")
                elif msg.type == WSMsgType.ERROR:
                    self.count("oversized")
                    break
        finally:
            self._clients.discard(client)
            sender.cancel()
        return ws

    async def _sender(self, client: Client) -> None:
        ws = client.ws
        while not ws.closed:
            await client.wake.wait()
            client.wake.clear()
            out: list[str] = []
            schema = client.frames.pop("schema", None)
            if schema is not None:
                out.append(schema)
            if client.values:
                values, client.values = client.values, {}
                out.append(json.dumps({"t": "values", "v": values}, separators=(",", ":")))
            while client.events:
                event = client.events.popleft()
                out.append(event if isinstance(event, str) else json.dumps(event, separators=(",", ":")))
            for kind in ("decks", "status", "meters"):
                frame = client.frames.pop(kind, None)
                if frame is not None:
                    out.append(frame)
            try:
                for text in out:
                    await asyncio.wait_for(ws.send_str(text), SEND_TIMEOUT_S)
                self.count("sent", len(out))
            except asyncio.TimeoutError:
                self.count("send_timeouts")
                await ws.close(code=1013, message=b"too slow")
                return
            except (ConnectionError, RuntimeError):
                return

    def _error(self, client: Client, code: str, message: str, ref: Any = None, kind: str = "error") -> None:
        reply: dict[str, Any] = {"t": kind, "code": code, "message": message}
        if ref is not None:
            reply["ref"] = ref
        client.post(reply)

    def _receive(self, client: Client, data: str) -> None:
        """Check one message from a page and hand it on. On the web loop; never blocks."""
        self.count("messages")
        if not client.bucket.take():
            self.count("rate_limited")
            now = time.monotonic()
            if now - client.window_start > 1.0:
                client.window_start, client.window_dropped = now, 0
            client.window_dropped += 1
            if client.window_dropped > KICK_FACTOR * self.rate_per_s and not client.kicked:
                client.kicked = True  # parsing even dropped frames costs CPU: a flood this big ends the connection
                self.count("kicked")
                asyncio.ensure_future(client.ws.close(code=1008, message=b"flooding: too many messages"))
                return
            if now - client.last_limit_notice > 1.0:
                client.last_limit_notice = now
                self._error(client, "rate_limited", f"more than {self.rate_per_s:.0f} messages a second; dropping")
            return
        if len(data) > MAX_MESSAGE_BYTES:
            self.count("oversized")
            self._error(client, "oversized", f"a message of {len(data)} bytes (limit {MAX_MESSAGE_BYTES})")
            return
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            self.count("malformed")
            self._error(client, "malformed", "not JSON")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            self.count("malformed")
            self._error(client, "malformed", 'expected an object with a "t" (type) field')
            return
        kind, ref = msg["t"], msg.get("id")
        if ref is not None and not isinstance(ref, (int, str)):
            ref = None
        if kind in ("set", "setn"):
            self._receive_set(client, kind, msg, ref)
        elif kind == "scene":
            self._receive_scene(client, msg, ref)
        elif kind == "osc":
            self._receive_osc(client, msg, ref)
        elif kind == "ping":
            client.post({"t": "pong", "id": ref})
        elif kind == "get":
            client.values.update(self._all_values())
            client.wake.set()
        else:
            self.count("unknown")
            kinds = "set, setn, scene, osc, ping, get"
            self._error(client, "unknown_type", f"unknown message type {kind[:40]!r} ({kinds})", ref)

    def _receive_set(self, client: Client, kind: str, msg: dict, ref: Any) -> None:
        path = msg.get("path")
        if not isinstance(path, str) or not _PATH.match(path):
            self.count("malformed")
            self._error(client, "bad_path", "path must be a parameter path like deck/1/stem/vocals/mute", ref)
            return
        if path not in self.tree:
            self.count("unknown")
            self._error(client, "unknown_path", f"no parameter {path!r}", ref)
            return
        raw = msg.get("value" if kind == "set" else "x")
        if isinstance(raw, bool):
            value: Any = raw
        elif isinstance(raw, (int, float)) and math.isfinite(raw):
            value = float(raw)
        else:
            self.count("bad_values")
            self._error(client, "bad_value", f"{path}: expected a finite number or a boolean, got {raw!r}"[:200], ref)
            return
        if kind == "setn" and not isinstance(value, bool) and not 0.0 <= value <= 1.0:
            self.count("clamped")
            self._error(client, "clamped", f"{path}: x must be 0..1; clamped", ref, kind="warning")
        self._inbox.put_set(path, kind, value, client)

    def _receive_scene(self, client: Client, msg: dict, ref: Any) -> None:
        name, action, fade = msg.get("name"), msg.get("action"), msg.get("fade_s", None)
        if not isinstance(name, str) or not _SCENE.match(name) or action not in ("recall", "store"):
            self.count("malformed")
            self._error(client, "bad_scene", 'expected {"t":"scene","action":"recall"|"store","name":"<name>"}', ref)
            return
        if fade is not None and (isinstance(fade, bool) or not isinstance(fade, (int, float)) or not 0 <= fade <= 600):
            self.count("bad_values")
            self._error(client, "bad_value", "fade_s must be a number of seconds, 0..600", ref)
            return
        deck = msg.get("deck")
        if deck is not None and (not isinstance(deck, int) or not 1 <= deck <= self.tree.num_decks):
            self.count("bad_values")
            self._error(client, "bad_value", f"deck must be 1..{self.tree.num_decks}", ref)
            return
        if not self._action_inbox.put_action(("scene", client, ref, name, action, fade, deck)):
            self.count("busy")
            self._error(client, "busy", "too many actions waiting; try again", ref)

    def _receive_osc(self, client: Client, msg: dict, ref: Any) -> None:
        address, args = msg.get("address"), msg.get("args", [])
        if not isinstance(address, str) or not _OSC_PASS.match(address):
            self.count("unknown")
            self._error(client, "unknown_osc", "only deck load/eject and crate commands pass through", ref)
            return
        ok_args = isinstance(args, list) and len(args) <= 4
        ok_args = ok_args and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in args)
        ok_args = ok_args and all(len(a) <= 1024 for a in args if isinstance(a, str))
        if not ok_args:
            self.count("bad_values")
            self._error(client, "bad_value", "args must be a list of up to 4 strings or numbers", ref)
            return
        if self.osc_router is None:
            self._error(client, "unavailable", "no OSC router in this engine", ref)
            return
        if not self._action_inbox.put_action(("osc", client, ref, address, args)):
            self.count("busy")
            self._error(client, "busy", "too many actions waiting; try again", ref)

    # -- the applier threads --
    def _apply_loop(self, inbox: Inbox) -> None:
        while True:
            batch = inbox.take(0.5)
            if batch is None:
                return
            sets, actions = batch
            for path, (kind, value, client, t_in) in sets.items():
                self._apply_set(path, kind, value, client)
                self.apply_latency_ms.append(1000.0 * (time.monotonic() - t_in))
            for action in actions:
                try:
                    if action[0] == "scene":
                        self._apply_scene(*action[1:])
                    else:
                        self._apply_osc(*action[1:])
                except Exception:  # a broken action must not stop the applier
                    log.exception("web action %s failed", action[0])
                    self.count("errors")

    def _reply(self, client: Client, message: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(client.post, message)
            except RuntimeError:
                pass

    def _apply_set(self, path: str, kind: str, value: Any, client: Client) -> None:
        try:
            if kind == "setn":
                result = self.tree.set_normalized(path, float(value), source="web")
            else:
                result = self.controller.set(path, value, source="web")
        except (UnknownParam, BadValue) as exc:
            self.count("bad_values")
            self._reply(client, {"t": "error", "code": "bad_value", "message": str(exc)})
            return
        self.count("applied")
        if result.clamped:
            self.count("clamped")
            self._reply(
                client,
                {"t": "warning", "code": "clamped", "message": f"{path}: {value!r} is out of range; clamped to "
                 f"{result.value}", "path": path},
            )  # fmt: skip

    def _apply_scene(self, client: Client, ref: Any, name: str, action: str, fade: Any, deck: Any) -> None:
        if action == "store":
            self.controller.store_scene(name, deck=deck)
            self.count("applied")
            self._reply(client, {"t": "scene", "action": "stored", "name": name, "id": ref})
            self._schema_key = None  # the scene list changed
            return
        try:
            problems = self.controller.recall_scene(name, fade_s=fade, deck=deck, source="web")
        except (KeyError, ValueError) as exc:
            self.count("unknown")
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            self._reply(client, {"t": "error", "code": "unknown_scene", "message": text, "ref": ref})
            return
        self.count("applied")
        self._reply(client, {"t": "scene", "action": "recalled", "name": name, "problems": problems[:4], "id": ref})

    def _apply_osc(self, client: Client, ref: Any, address: str, args: list) -> None:
        replies = osc_call(self.osc_router, address, args, self)
        out = [
            {"address": a, "args": [x if isinstance(x, (str, int, float)) else str(x) for x in xs]} for a, xs in replies
        ]
        self.count("applied")
        self._reply(client, {"t": "osc", "address": address, "replies": out[:512], "id": ref})
        if address == "/stembridge/crate/list":
            self._take_crate(out)

    def _take_crate(self, replies: list[dict]) -> None:
        items = [a for r in replies if not r["address"].endswith("/warning") for a in r["args"] if isinstance(a, str)]
        if items != self.crate:
            self.crate = items[:2048]
            self._schema_key = None

    def send(self, packet: bytes) -> None:
        """OSC router connection interface: the page never subscribes over OSC, so nothing is sent here."""

    def _probe_features(self) -> None:
        """Deck loading and the crate show on the page only when the OSC router answers ``/stembridge/crate/list``
        with something other than 'unknown address' (read-only, so probing it changes nothing)."""
        if self.osc_router is None:
            return
        try:
            replies = osc_call(self.osc_router, "/stembridge/crate/list", [], self, quiet=True)
        except Exception:
            log.exception("probing the OSC router for a crate failed")
            return
        unknown = any(a == "/stembridge/warning" and "no such parameter" in " ".join(map(str, x)) for a, x in replies)
        has = bool(replies) and not unknown
        self.features = {"load": has, "crate": has}
        if has:
            self._take_crate([{"address": a, "args": x} for a, x in replies])

    # -- outgoing --
    def _on_change(self, change: Change) -> None:
        """Tree listener (any thread): remember the latest value; wake the loop once."""
        with self._out_lock:
            self._changes[change.path] = change.value
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._distribute)
            except RuntimeError:
                pass

    def _distribute(self) -> None:
        with self._out_lock:
            changes, self._changes = self._changes, {}
            self._wake_scheduled = False
        if not changes:
            return
        for client in self._clients:
            client.values.update(changes)
            client.wake.set()

    def _on_meter(self, deck: int, stem: str, peak: float, rms: float) -> None:
        """Controller meter listener (the control thread, <= 30 Hz): store only."""
        self._meters.setdefault(deck, {})[stem] = [round(peak, 4), round(rms, 4)]
        self._meter_seq += 1

    def publish_status(self, stats: dict) -> None:
        """Monitor stats listener (a few times a second): keep the latest engine counters."""
        self.engine_status = stats
        self._status_seq += 1

    async def _meter_task(self) -> None:
        seq, status_seq = -1, -1
        while True:
            await asyncio.sleep(METER_POLL_S)
            try:
                if self._meter_seq != seq and self._clients:
                    seq = self._meter_seq
                    meters = {d: dict(levels) for d, levels in list(self._meters.items())}  # written meanwhile
                    frame = json.dumps({"t": "meters", "seq": seq, "m": meters}, separators=(",", ":"))
                    for client in self._clients:
                        client.frames["meters"] = frame
                        client.wake.set()
                if self._status_seq != status_seq and self._clients:
                    status_seq = self._status_seq
                    frame = self._status_json()
                    for client in self._clients:
                        client.frames["status"] = frame
                        client.wake.set()
            except Exception:
                log.exception("web surface meter push failed")

    async def _deck_task(self) -> None:
        loop = asyncio.get_running_loop()
        polls = 0
        while True:
            await asyncio.sleep(DECK_POLL_S)
            try:
                key = self._schema_state()
                if key != self._schema_key:
                    self._schema_key = key
                    self._schema_json = ""
                    frame = self._schema()
                    values = self._all_values()
                    for client in self._clients:
                        client.frames["schema"] = frame
                        client.values.update(values)
                        client.wake.set()
                decks = self._deck_states()
                frame = json.dumps({"t": "decks", "decks": decks}, separators=(",", ":"))
                if frame != self._decks_json:
                    self._decks_json = frame
                    for client in self._clients:
                        client.frames["decks"] = frame
                        client.wake.set()
                self._refresh_overviews(loop)
                polls += 1
                if not self.engine_status and polls % 10 == 0:  # no monitor: the surface's own counters, 1 Hz
                    self._status_seq += 1
            except Exception:
                log.exception("web surface deck poll failed")

    # -- state --
    def _all_values(self) -> dict[str, Any]:
        return all_values(self.tree)

    def _schema_state(self) -> Any:
        return schema_key(self.controller, self.engine, self.crate)

    def _schema(self) -> str:
        if self._schema_json and self._schema_key == self._schema_state():
            return self._schema_json
        self._schema_key = self._schema_state()
        limits = {"rate_per_s": self.rate_per_s, "max_message_bytes": MAX_MESSAGE_BYTES}
        schema = build_schema(self.controller, self.engine, features=self.features, crate=self.crate, limits=limits)
        self._schema_json = json.dumps(schema, separators=(",", ":"))
        return self._schema_json

    def _deck_states(self) -> list[dict]:
        return deck_states(self.engine)

    def _refresh_overviews(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a waveform overview on a worker thread for each deck whose audio is new (a load swaps it)."""
        if self.engine is None:
            return
        for n, deck in enumerate(self.engine.decks, start=1):
            audio = getattr(deck, "audio", None)
            if audio is None or n in self._overview_pending:
                continue
            key = (id(deck), id(audio), getattr(audio, "shape", None))
            known = self._overviews.get(n)
            if known is not None and known[0] == key:
                continue
            self._overview_pending.add(n)
            rate = float(getattr(deck, "sample_rate", 0) or 0)
            future = loop.run_in_executor(None, waveform_overview, audio)
            future.add_done_callback(lambda f, n=n, key=key, rate=rate: self._overview_done(n, key, rate, f))

    def _overview_done(self, n: int, key: Any, rate: float, future: Any) -> None:
        self._overview_pending.discard(n)
        try:
            peaks, rms = future.result()
        except Exception:
            log.exception("waveform overview of deck %d failed", n)
            self._overviews[n] = (key, "")
            return
        duration = key[2][-1] / rate if rate and key[2] else None
        frame = json.dumps({"t": "overview", "deck": n, "peaks": peaks, "rms": rms, "duration_s": duration})
        self._overviews[n] = (key, frame)
        for client in self._clients:
            client.post(frame)

    def _status_json(self) -> str:
        status = self._status_view.build(self.engine_status, getattr(self.engine, "dry_stem", None))
        lat = sorted(self.apply_latency_ms)
        status["web"] = self.snapshot_stats() | {"apply_ms_p50": round(lat[len(lat) // 2], 3) if lat else None}
        if self.osc_router is not None:
            status["osc"] = {k: v for k, v in self.osc_router.snapshot_stats().items() if v}
        return json.dumps({"t": "status", "s": status}, separators=(",", ":"))


def web_option(func: Callable) -> Callable:
    """The ``--web`` and ``--web-allow`` options of ``stembridge live``."""
    import click

    func = click.option(
        "--web-allow",
        multiple=True,
        metavar="NET",
        help="Client addresses or networks allowed when --web is not loopback (repeatable); those clients also "
        "need the access token printed at start, and get HTTPS (a self-signed certificate made on first use).",
    )(func)

    def check(_ctx: Any, _param: Any, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_web_address(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    func = click.option(
        "--web",
        metavar="[HOST:]PORT",
        callback=check,
        help="Serve the browser control surface (decks, stem faders, mutes, meters, scenes) on this port, "
        "127.0.0.1 unless a host is given, e.g. --web 8080 or --web 0.0.0.0:8443 --web-allow 192.168.1.0/24.",
    )(func)
    return func


def open_for_live(session: Any) -> WebSurface | None:
    """``stembridge live``'s hook: start the surface for a LiveSession (after its controller, engine and monitor
    exist), or return None without --web. Raises ValueError or OSError with a message for the user."""
    import click

    spec = session.opts.get("web")
    if not spec:
        return None
    host, port = parse_web_address(spec)
    control = session.control
    router = control.osc.router if getattr(control, "osc", None) is not None else None
    surface = WebSurface(control, host, port, allow=session.opts.get("web_allow") or (), engine=session.engine,
                         osc_router=router).start()  # fmt: skip
    if session.monitor is not None:
        session.monitor.stats_listeners.append(surface.publish_status)
    line = f"web surface: {surface.url}"
    if not surface.loopback_only:
        line += " (HTTPS, self-signed: accept the certificate once per device; the token changes every start)"
    click.echo(line, err=True)
    return surface
