"""The OSC server: UDP (python-osc's BlockingOSCUDPServer, one thread, no thread per datagram) and TCP.

Address space (documented in the README):

    /stembridge/deck/<n>/stem/<stem>/<gain_db|level|mute|solo> <value>      set (patterns allowed: * ? [..] {..})
    /stembridge/deck/<n>/stem/<stem>/fx/<plugin>/<param|bypass> <value>
    /stembridge/deck/<n>/master/<gain_db|level> <value>
    /stembridge/deck/<n>/stem/<stem>/chain s <chain preset>                    load an effect chain
    /stembridge/get s <address or pattern>          reply to the sender: <address> <value> per match
    /stembridge/subscribe [i <port>]                feedback of every change + meters (<= 30 Hz) to sender:port
    /stembridge/unsubscribe [i <port>]
    /stembridge/scene/<k>/store                     /stembridge/deck/<n>/scene/<k>/store (one deck)
    /stembridge/scene/<k>/recall [f <fade_s>]       /stembridge/deck/<n>/scene/<k>/recall [f <fade_s>]
    /stembridge/learn s <address> [s <mode>]        MIDI learn: the next control moved is bound and saved
    /stembridge/learn/cancel
    /stembridge/status                              reply /stembridge/status with counter name/value pairs (OSC
                                                    counters, then the audio engine's latest status when live)

Values: numbers as i/f/d/h, booleans as T/F or 0/1 (also "on"/"off" strings). Out-of-range values are clamped,
counted and reported to the sender as ``/stembridge/warning s <address> s <text>``; so are unknown addresses and
bad arguments. Malformed or oversized packets (> 8192 bytes) are counted and dropped without a reply. Nothing a
client sends can stop or stall the server.

Binding: 127.0.0.1 unless told otherwise. Listening on another address needs an allowlist of client addresses
or networks (``allow=["192.168.1.0/24"]``); loopback clients are always allowed; others are refused (counted).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pythonosc.osc_server import BlockingOSCUDPServer
from stembridge.bridge.osc_codec import OscError, encode_bundle, encode_message, parse_packet, slip_decode, slip_encode
from stembridge.bridge.params import BadValue, Change, UnknownParam, has_pattern, normalize_path

if TYPE_CHECKING:
    from stembridge.bridge.control import Controller

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 8192
MAX_SUBSCRIBERS = 32
MAX_TCP_CONNECTIONS = 32
PREFIX = "/stembridge/"
_PRESET_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
COUNTERS = (
    "packets", "messages", "applied", "replies", "malformed", "oversized", "unknown", "bad_args", "clamped",
    "refused", "errors", "feedback_sent", "feedback_dropped",
)  # fmt: skip

Reply = Callable[[bytes], None]
_INT_TAG, _FLOAT_TAG = b",i\x00\x00", b",f\x00\x00"
_pack_int, _pack_float = struct.Struct(">i").pack, struct.Struct(">f").pack


def _pad_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return raw + b"\x00" * (4 - len(raw) % 4)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


def parse_allowlist(allow: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Client addresses or networks ("192.168.1.20", "10.0.0.0/8", "::1"). Raises ValueError naming a bad one."""
    nets = []
    for entry in allow:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"bad OSC allowlist entry {entry!r}: give an IP address or network like 10.0.0.0/8"
            ) from None
    return nets


def host_allowed(host: str, allow: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """The allowlist rule (OSC and the web surface): loopback clients always, others only inside ``allow``."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
        if ip.is_loopback:
            return True
    return any(ip in net for net in allow if ip.version == net.version)


class _RateLimitedLog:
    """At most one warning per kind every ``interval_s``, with a count of the ones held back."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        log.warning("OSC %s: %s%s", kind, message, f" (and {held} more since the last report)" if held else "")


class _UdpServer(BlockingOSCUDPServer):
    """python-osc's blocking UDP server with a bigger receive buffer, no size cap below 64 KiB (so oversized
    packets can be counted rather than truncated) and every packet passed to the router."""

    max_packet_size = 65536
    allow_reuse_address = False

    def server_bind(self) -> None:
        for opt, size in ((socket.SO_RCVBUF, 4 << 20), (socket.SO_SNDBUF, 1 << 20)):
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True  # the router counts and reports everything, including what is not OSC

    def _handle_request_noblock(self) -> None:
        """Called by serve_forever when the socket is readable: handle every datagram waiting (up to 256), on
        this one thread, without a select() and a handler object per datagram."""
        sock, router = self.socket, self.dispatcher
        for _ in range(256):
            try:
                data, client = sock.recvfrom(self.max_packet_size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                router.count_error("UDP receive failed")
                return
            router.call_handlers_for_packet(data, client)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.dispatcher.count_error("unexpected error in the UDP handler")


class _TcpHandler(socketserver.BaseRequestHandler):
    """One TCP connection: OSC 1.1 (SLIP, first byte 0xC0) or OSC 1.0 (32-bit length prefix), detected."""

    def setup(self) -> None:
        self.router: OscRouter = self.server.router  # type: ignore[attr-defined]
        self.slip: bool | None = None
        self.lock = threading.Lock()
        self.alive = True

    def send(self, packet: bytes) -> None:
        framed = slip_encode(packet) if self.slip else struct.pack(">I", len(packet)) + packet
        with self.lock:
            self.request.sendall(framed)

    def handle(self) -> None:
        server = self.server
        with server.conn_lock:  # type: ignore[attr-defined]
            if len(server.connections) >= MAX_TCP_CONNECTIONS:  # type: ignore[attr-defined]
                self.router.count("refused", "too many TCP connections")
                return
            server.connections.add(self)  # type: ignore[attr-defined]
        if not self.router.allowed(self.client_address[0]):
            self.router.count("refused", f"TCP client {self.client_address[0]} is not in the allowlist")
            return
        buf = bytearray()
        skipping = False
        try:
            while True:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                if self.slip is None:
                    self.slip = chunk[0] == 0xC0
                buf += chunk
                if self.slip:
                    while True:
                        end = buf.find(b"\xc0")
                        if end < 0:
                            if len(buf) > 2 * MAX_PACKET_BYTES:  # a frame too long: drop it up to its END
                                self.router.count("oversized", f"TCP frame over {MAX_PACKET_BYTES} bytes")
                                buf.clear()
                                skipping = True
                            break
                        frame = bytes(buf[:end])
                        del buf[: end + 1]
                        if skipping:
                            skipping = False
                            continue
                        if frame:
                            try:
                                packet = slip_decode(frame)
                            except OscError:
                                self.router.count("malformed", "bad SLIP escape")
                                continue
                            self.router.handle_packet(packet, self.client_address, self.send, self)
                else:
                    while len(buf) >= 4:
                        (size,) = struct.unpack_from(">I", buf, 0)
                        if size > MAX_PACKET_BYTES:
                            self.router.count("oversized", f"TCP packet of {size} bytes; closing the connection")
                            return
                        if len(buf) < 4 + size:
                            break
                        packet = bytes(buf[4 : 4 + size])
                        del buf[: 4 + size]
                        self.router.handle_packet(packet, self.client_address, self.send, self)
        except OSError:
            return
        finally:
            self.alive = False
            self.router.drop_subscriber(self)
            with server.conn_lock:  # type: ignore[attr-defined]
                server.connections.discard(self)  # type: ignore[attr-defined]


class _TcpServer(socketserver.ThreadingTCPServer):
    """A thread per TCP connection (not per packet), at most MAX_TCP_CONNECTIONS."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], router: OscRouter) -> None:
        self.router = router
        self.connections: set[_TcpHandler] = set()
        self.conn_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _TcpHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.router.count_error("unexpected error in a TCP connection")

    def close_connections(self) -> None:
        with self.conn_lock:
            for conn in list(self.connections):
                try:
                    conn.request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _UdpSubscriber:
    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock, self.address = sock, address

    def send(self, packet: bytes) -> None:
        self.sock.sendto(packet, socket.MSG_DONTWAIT, self.address)


class OscRouter:
    """Parses packets and carries out their messages on a ``Controller``. Shared by the UDP and TCP transports.

    Also the "dispatcher" the python-osc UDP server calls (``call_handlers_for_packet``).
    """

    def __init__(self, controller: Controller, allow: Iterable[str] = ()) -> None:
        self.controller = controller
        self.allow = parse_allowlist(allow)
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.engine_stats: dict[str, int | float] = {}  # the live engine's latest status (OscServer.set_engine_status)
        self.udp_socket: socket.socket | None = None
        self.state_providers: list[Callable[[], list[tuple[str, list]]]] = []  # extra state for a new subscriber
        self._stats_lock = threading.Lock()
        self._subs_lock = threading.Lock()
        self._subscribers: dict[Any, Any] = {}
        self._allowed: dict[str, bool] = {}
        self._heads: dict[str, bytes] = {}
        self._local = threading.local()  # per transport thread: feedback collected while a packet is handled
        self._log = _RateLimitedLog()

    # -- counters --
    def count(self, kind: str, message: str | None = None) -> None:
        with self._stats_lock:
            self.stats[kind] += 1
        if message is not None:
            self._log.warn(kind, message)

    def count_error(self, message: str) -> None:
        self.count("errors", None)
        log.exception("OSC %s", message)

    def allowed(self, host: str) -> bool:
        """Loopback clients always; others only when in the allowlist (cached per address)."""
        cached = self._allowed.get(host)
        if cached is None:
            if len(self._allowed) > 4096:
                self._allowed.clear()
            cached = self._allowed[host] = self._check_allowed(host)
        return cached

    def _check_allowed(self, host: str) -> bool:
        return host_allowed(host, self.allow)

    # -- python-osc dispatcher interface (UDP) --
    def call_handlers_for_packet(self, data: bytes, client_address: tuple[str, int]) -> list:
        sock = self.udp_socket

        def reply(packet: bytes, _addr: tuple = client_address) -> None:
            if sock is not None:
                try:
                    sock.sendto(packet, socket.MSG_DONTWAIT, _addr)
                except OSError:
                    self.count("feedback_dropped", None)

        self.handle_packet(data, client_address, reply, None)
        return []

    # -- packets --
    def handle_packet(self, data: bytes, client: tuple, reply: Reply, connection: _TcpHandler | None) -> None:
        """Count, check and carry out one packet. Never raises."""
        self.count("packets")
        try:
            if len(data) > MAX_PACKET_BYTES:
                self.count("oversized", f"{len(data)}-byte packet from {client[0]} (limit {MAX_PACKET_BYTES})")
                return
            if connection is None and not self.allowed(client[0]):
                self.count("refused", f"client {client[0]} is not in the allowlist")
                return
            try:
                messages = parse_packet(data)
            except OscError as exc:
                self.count("malformed", f"from {client[0]}: {exc}")
                return
            self._local.batch = [] if self._subscribers else None
            for address, args in messages:
                self.count("messages")
                self._dispatch(address, args, client, reply, connection)
            self._flush_feedback()
        except Exception:
            self._local.batch = None
            self.count_error("unexpected error handling a packet")

    def _warn(self, reply: Reply, kind: str, address: str, text: str) -> None:
        self.count(kind, f"{address}: {text}")
        self._send(reply, "/stembridge/warning", [address, text])

    def _send(self, reply: Reply, address: str, args: list) -> None:
        try:
            reply(encode_message(address, args))
            self.count("replies")
        except OSError:
            self.count("feedback_dropped")

    def _dispatch(self, address: str, args: list, client: tuple, reply: Reply, connection: Any) -> None:
        if not address.startswith(PREFIX):
            self._warn(reply, "unknown", address, "addresses start with /stembridge/")
            return
        parts = address[len(PREFIX) :].split("/")
        head = parts[0]
        if head == "get" and len(parts) == 1:
            self._get(args, reply)
        elif head == "subscribe" and len(parts) == 1:
            self._subscribe(args, client, reply, connection)
        elif head == "unsubscribe" and len(parts) == 1:
            self._unsubscribe(args, client, connection)
        elif head == "status" and len(parts) == 1:
            pairs: list[Any] = []
            for name, value in self.snapshot_stats().items():
                pairs += [name, int(value)]
            for name, value in dict(self.engine_stats).items():
                pairs += [name, value]
            self._send(reply, "/stembridge/status", pairs)
        elif head == "learn":
            self._learn(parts[1:], args, reply, address)
        elif head == "scene" and len(parts) == 3:
            self._scene(None, parts[1], parts[2], args, reply, address)
        elif head == "deck" and len(parts) == 5 and parts[2] == "scene":
            deck = _deck_number(parts[1])
            if deck is None:
                self._warn(reply, "unknown", address, "deck must be a number")
            else:
                self._scene(deck, parts[3], parts[4], args, reply, address)
        elif head == "deck" and len(parts) == 5 and parts[2] == "stem" and parts[4] == "chain":
            self._chain(parts, args, reply, address)
        else:
            self._set(address, args, reply)

    def _set(self, address: str, args: list, reply: Reply) -> None:
        tree = self.controller.tree
        path = normalize_path(address)
        if has_pattern(path):
            try:
                paths = tree.match(path)
            except ValueError as exc:
                self._warn(reply, "malformed", address, f"bad address pattern: {exc}")
                return
        else:
            paths = [path] if path in tree else []
        if not paths:
            self._warn(reply, "unknown", address, "no such parameter (try /stembridge/get s /stembridge/*)")
            return
        if len(args) != 1 or isinstance(args[0], (list, bytes, tuple)) or args[0] is None:
            self._warn(reply, "bad_args", address, f"expected one value, got {len(args)} argument(s)")
            return
        value = args[0]
        clamped = []
        for p in paths:
            try:
                result = self.controller.set(p, value, source="osc")
            except BadValue as exc:
                self._warn(reply, "bad_args", address, str(exc))
                return
            except UnknownParam:  # removed meanwhile (a chain swap)
                continue
            self.count("applied")
            if result.clamped:
                clamped.append((p, result.value))
        if clamped:
            p, v = clamped[0]
            self._warn(reply, "clamped", "/stembridge/" + p, f"{value!r} is out of range; clamped to {v}")

    def _get(self, args: list, reply: Reply) -> None:
        if len(args) != 1 or not isinstance(args[0], str):
            self._warn(reply, "bad_args", "/stembridge/get", "expected s <address>")
            return
        tree = self.controller.tree
        path = normalize_path(args[0])
        try:
            paths = tree.match(path) if has_pattern(path) else ([path] if path in tree else [])
        except ValueError as exc:
            self._warn(reply, "malformed", args[0], f"bad address pattern: {exc}")
            return
        if not paths:
            self._warn(reply, "unknown", args[0], "no such parameter")
            return
        for p in paths:
            try:
                value = tree.get(p)
            except UnknownParam:
                continue
            self._send(reply, "/stembridge/" + p, [osc_value(value)])

    def _subscribe(self, args: list, client: tuple, reply: Reply, connection: Any) -> None:
        if args and not (isinstance(args[0], int) and not isinstance(args[0], bool) and 0 <= args[0] < 65536):
            self._warn(reply, "bad_args", "/stembridge/subscribe", "expected i <port> (0..65535) or no argument")
            return
        port = args[0] if args else 0
        if connection is not None and port == 0:
            key, sub = connection, connection  # feedback over this TCP connection
        else:
            port = port or client[1]
            key = (client[0], port)
            if self.udp_socket is None:
                self._warn(reply, "bad_args", "/stembridge/subscribe", "no UDP socket for feedback")
                return
            sub = _UdpSubscriber(self.udp_socket, key)
        with self._subs_lock:
            if key not in self._subscribers and len(self._subscribers) >= MAX_SUBSCRIBERS:
                self._warn(reply, "refused", "/stembridge/subscribe", f"at most {MAX_SUBSCRIBERS} subscribers")
                return
            self._subscribers[key] = sub
        tree = self.controller.tree
        for p in tree.paths():  # the current state first, so a control surface starts in sync
            try:
                self._to(sub, encode_message("/stembridge/" + p, [osc_value(tree.get(p))]))
            except UnknownParam:
                continue
        for provider in list(self.state_providers):  # state outside the tree (deck feedback: track, position...)
            try:
                for address, values in provider():
                    self._to(sub, encode_message(address, values))
            except Exception:
                self.count_error("a state provider failed")
        self._send(reply, "/stembridge/subscribed", [port])

    def _unsubscribe(self, args: list, client: tuple, connection: Any) -> None:
        port = args[0] if args and isinstance(args[0], int) else 0
        key = connection if (connection is not None and port == 0) else (client[0], port or client[1])
        with self._subs_lock:
            self._subscribers.pop(key, None)

    def drop_subscriber(self, key: Any) -> None:
        with self._subs_lock:
            self._subscribers.pop(key, None)

    @property
    def num_subscribers(self) -> int:
        return len(self._subscribers)

    def _to(self, sub: Any, packet: bytes) -> None:
        try:
            sub.send(packet)
            self.count("feedback_sent")
        except OSError:
            self.count("feedback_dropped")

    def broadcast(self, address: str, args: list) -> None:
        """Send one message to every subscriber (never blocks; a full socket buffer drops and counts it)."""
        if self._subscribers:
            self.broadcast_packet(encode_message(address, args))

    def broadcast_packet(self, packet: bytes) -> None:
        with self._subs_lock:
            subs = list(self._subscribers.values())
        for sub in subs:
            self._to(sub, packet)

    def feedback(self, change: Change) -> None:
        """Tree listener: push a change to every subscriber (address bytes cached per parameter)."""
        if not self._subscribers:
            return
        head = self._heads.get(change.path)
        if head is None:
            if len(self._heads) > 100_000:
                self._heads.clear()
            head = self._heads[change.path] = _pad_str("/stembridge/" + change.path)
        value = change.value
        if isinstance(value, bool):
            packet = head + _INT_TAG + _pack_int(1 if value else 0)
        else:
            packet = head + _FLOAT_TAG + _pack_float(value)
        batch = getattr(self._local, "batch", None)
        if batch is not None:  # inside handle_packet: sent as one bundle when the packet is done
            batch.append(packet)
        else:
            self.broadcast_packet(packet)

    def _flush_feedback(self) -> None:
        batch = self._local.batch
        self._local.batch = None
        if batch:
            self.broadcast_packet(batch[0] if len(batch) == 1 else encode_bundle(batch))

    def _scene(self, deck: int | None, key: str, action: str, args: list, reply: Reply, address: str) -> None:
        if not _PRESET_NAME.match(key):
            self._warn(reply, "unknown", address, "scene names are letters, digits, '_' or '-'")
            return
        if action == "store":
            self.controller.store_scene(key, deck=deck)
            self.count("applied")
            return
        if action != "recall":
            self._warn(reply, "unknown", address, "scene actions are store and recall")
            return
        fade = None
        if args:
            if isinstance(args[0], bool) or not isinstance(args[0], (int, float)) or not 0 <= args[0] <= 600:
                self._warn(reply, "bad_args", address, "fade must be a number of seconds, 0..600")
                return
            fade = float(args[0])
        try:
            problems = self.controller.recall_scene(key, fade_s=fade, deck=deck, source="osc")
        except KeyError as exc:
            self._warn(reply, "unknown", address, str(exc.args[0]) if exc.args else "no such scene")
            return
        self.count("applied")
        for problem in problems[:4]:
            self._send(reply, "/stembridge/warning", [address, problem])

    def _chain(self, parts: list[str], args: list, reply: Reply, address: str) -> None:
        deck = _deck_number(parts[1])
        if deck is None or len(args) != 1 or not isinstance(args[0], str) or not _PRESET_NAME.match(args[0]):
            self._warn(reply, "bad_args", address, "expected s <chain preset name>")
            return
        try:
            self.controller.load_chain(deck, parts[3], args[0])
        except (KeyError, ValueError) as exc:
            self._warn(reply, "bad_args", address, str(exc))
            return
        self.count("applied")

    def _learn(self, rest: list[str], args: list, reply: Reply, address: str) -> None:
        if rest == ["cancel"]:
            self.controller.cancel_learn()
            return
        if rest or not args or not isinstance(args[0], str) or (len(args) > 1 and not isinstance(args[1], str)):
            self._warn(reply, "bad_args", address, "expected s <parameter address> [s <mode>]")
            return
        mode = args[1] if len(args) > 1 else None

        def done(target: str, description: str) -> None:
            self._send(reply, "/stembridge/learn/done", [target, description])
            self.broadcast("/stembridge/learn/done", [target, description])

        try:
            self.controller.learn(args[0], mode=mode, on_done=done)
        except (KeyError, ValueError, RuntimeError) as exc:
            self._warn(reply, "bad_args", address, str(exc.args[0]) if exc.args else str(exc))
            return
        self._send(reply, "/stembridge/learn/armed", [normalize_path(args[0])])

    def snapshot_stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.stats)


def _deck_number(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 1000 else None


def osc_value(value: float | bool) -> float | int:
    """Booleans go out as i 0/1 (what most control surfaces expect), numbers as f."""
    return int(value) if isinstance(value, bool) else float(value)


class OscServer:
    """UDP + TCP OSC endpoints for a ``Controller``; each serves on its own daemon thread.

    host: bind address (default loopback). port: UDP port (0 picks a free one); tcp_port: TCP port (None = same
    number as UDP, 0 = any, -1 = no TCP). allow: client allowlist, required for a non-loopback host.
    """

    def __init__(
        self,
        controller: Controller,
        host: str = "127.0.0.1",
        port: int = 9000,
        *,
        tcp_port: int | None = None,
        allow: Iterable[str] = (),
    ) -> None:
        allow = list(allow)
        if not is_loopback_host(host) and not allow:
            raise ValueError(
                f"listening for OSC on {host!r} accepts clients from the network: give an allowlist of client "
                "addresses (e.g. --osc-allow 192.168.1.20 or --osc-allow 192.168.1.0/24), or bind 127.0.0.1"
            )
        self.router = OscRouter(controller, allow)
        try:
            self._udp = _UdpServer((host, port), self.router)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for OSC on UDP {host}:{port}: {exc.strerror}") from exc
        self.router.udp_socket = self._udp.socket
        self._tcp: _TcpServer | None = None
        if tcp_port != -1:
            tport = self._udp.server_address[1] if tcp_port is None else tcp_port
            try:
                self._tcp = _TcpServer((host, tport), self.router)
            except OSError as exc:
                self._udp.server_close()
                raise OSError(exc.errno, f"cannot listen for OSC on TCP {host}:{tport}: {exc.strerror}") from exc
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        """(host, UDP port) actually bound."""
        return self._udp.server_address[:2]

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return None if self._tcp is None else self._tcp.server_address[:2]

    @property
    def stats(self) -> dict[str, int]:
        return self.router.snapshot_stats()

    def set_engine_status(self, status: dict[str, int | float]) -> None:
        """The live engine's latest counters, appended to every ``/stembridge/status`` reply (a reference swap)."""
        self.router.engine_stats = status

    def start(self) -> OscServer:
        for name, server in (("osc-udp", self._udp), ("osc-tcp", self._tcp)):
            if server is not None:
                t = threading.Thread(
                    target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
                )
                t.start()
                self._threads.append(t)
        return self

    def broadcast(self, address: str, args: list) -> None:
        self.router.broadcast(address, args)

    def close(self) -> None:
        for server in (self._udp, self._tcp):
            if server is None:
                continue
            if self._threads:
                server.shutdown()
            if server is self._tcp:
                self._tcp.close_connections()
            server.server_close()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
