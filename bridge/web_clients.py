"""The web surface's per-client plumbing: a rate limit, what waits to go to each page, the inbox the web loop
hands to the applier thread, and OSC pass-through (a page's deck-load and crate commands run by the OSC router).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any

MAX_ACTIONS = 64  # scene and OSC actions waiting for the applier


class RateLimit:
    """A token bucket: ``take()`` is False once a client has spent its burst faster than the rate refills it."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Client:
    """One browser: its socket and what is waiting to go to it (coalesced; bounded by the parameter count)."""

    def __init__(self, ws: Any, host: str, rate_per_s: float, burst: float) -> None:
        self.ws, self.host = ws, host
        self.bucket = RateLimit(rate_per_s, burst)
        self.values: dict[str, Any] = {}
        self.events: collections.deque = collections.deque(maxlen=64)
        self.frames: dict[str, str] = {}  # latest meters / status / decks frame (pre-encoded), by type
        self.wake = asyncio.Event()
        self.last_limit_notice = 0.0
        self.window_start = 0.0  # rate-limited messages counted per second: a flood far past the limit is cut off
        self.window_dropped = 0
        self.kicked = False

    def post(self, message: dict) -> None:
        self.events.append(message)
        self.wake.set()


class Inbox:
    """What the web loop hands the applier thread: the latest value per parameter, plus a few actions in order.

    ``put_set`` never blocks and never grows past one entry per parameter; ``put_action`` refuses (False) once
    ``max_actions`` wait."""

    def __init__(self, max_actions: int = MAX_ACTIONS) -> None:
        self.max_actions = max_actions
        self.cond = threading.Condition()
        self.sets: dict[str, tuple[str, Any, Client, float]] = {}
        self.actions: collections.deque = collections.deque()
        self.closed = False

    def put_set(self, path: str, kind: str, value: Any, client: Client) -> None:
        with self.cond:
            self.sets.pop(path, None)  # re-insert: keeps the order of the latest moves
            self.sets[path] = (kind, value, client, time.monotonic())
            self.cond.notify()

    def put_action(self, action: tuple) -> bool:
        with self.cond:
            if len(self.actions) >= self.max_actions:
                return False
            self.actions.append(action)
            self.cond.notify()
            return True

    def take(self, timeout: float) -> tuple[dict, list] | None:
        with self.cond:
            if not self.sets and not self.actions and not self.closed:
                self.cond.wait(timeout)
            if self.closed:
                return None
            sets, self.sets = self.sets, {}
            actions = list(self.actions)
            self.actions.clear()
            return sets, actions

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def osc_call(router: Any, address: str, args: list, connection: Any, *, quiet: bool = False) -> list[tuple[str, list]]:
    """Run one OSC message through the OSC router as if a client sent it; return the router's replies as
    (address, args). ``connection`` stands for the client (the router then skips its allowlist: the web surface
    checked its own). ``quiet`` keeps the router's warnings out of the log (for a probe)."""
    from stembridge.bridge.osc_codec import OscError, encode_message, parse_packet

    replies: list[tuple[str, list]] = []

    def reply(packet: bytes) -> None:
        try:
            replies.extend(parse_packet(packet))
        except OscError:
            pass

    osc_log = logging.getLogger("stembridge.bridge.osc_server")
    was = osc_log.disabled
    osc_log.disabled = was or quiet
    try:
        router.handle_packet(encode_message(address, list(args)), ("web", 0), reply, connection)
    finally:
        osc_log.disabled = was
    return [(a, list(x)) for a, x in replies]
