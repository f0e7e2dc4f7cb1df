"""Deck feedback for controllers and screens: what each deck holds and does, pushed to OSC subscribers.

``DeckFeedback`` polls the live engine's decks at 10 Hz (their ``status()``, read off the audio thread) and

- keeps the parameter tree's transport state true (``transport/play``, ``transport/loop``, ``transport/cue_s``):
  a deck that plays from the start, stops at the end of its track or takes a new track shows it, in the first state
  dump a subscriber gets and on every MIDI LED (``ParamTree.set(..., emit=False)``: told to listeners, nothing is
  sent to the engine);
- pushes what the tree does not hold, to every subscriber, when it changes:

      /stembridge/deck/<n>/track s <name>          ("" for an empty deck)
      /stembridge/deck/<n>/duration_s f <seconds>
      /stembridge/deck/<n>/loaded f <0..1>         decoding progress of the track
      /stembridge/deck/<n>/tempo f <ratio>         1.0 = the track's own tempo
      /stembridge/deck/<n>/hq i <0|1>              whether high-quality stems are ready for this track
      /stembridge/deck/<n>/position_s f <seconds>  10 times a second while it moves

and gives a new subscriber all of these after the tree's own state (``OscRouter.state_providers``).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

RATE_HZ = 10.0
FIELDS = (("track", str), ("duration_s", float), ("loaded", float), ("tempo", float), ("hq", int))
TREE_FIELDS = (
    ("playing", "transport/play", bool),
    ("loop", "transport/loop", bool),
    ("cue_s", "transport/cue_s", float),
)


class DeckFeedback:
    """Publishes deck state. ``engine``: a LiveEngine; ``control``: its Controller (tree + OSC server)."""

    def __init__(self, engine, control, rate_hz: float = RATE_HZ) -> None:
        self.engine = engine
        self.control = control
        self.period_s = 1.0 / rate_hz
        self._last: dict[tuple[int, str], object] = {}
        self._touched: dict[str, float] = {}  # tree path -> when a performer last set it
        self.hold_s = 0.3  # a value a performer just set is not overwritten before the deck has taken it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.num_pushes = 0

    def messages(self, deck: int, status: dict) -> list[tuple[str, list]]:
        """The OSC messages describing one deck's ``status()`` (fields it has)."""
        out = []
        base = f"/stembridge/deck/{deck}/"
        for key, kind in FIELDS:
            if key in status:
                out.append((base + key, [kind(status[key])]))
        if "position_s" in status:
            out.append((base + "position_s", [float(status["position_s"])]))
        return out

    def state(self) -> list[tuple[str, list]]:
        """Every deck's feedback now (for a new subscriber)."""
        out = []
        for i, deck in enumerate(self.engine.decks, start=1):
            out += self.messages(i, deck.status())
        return out

    def poll(self) -> None:
        """One round: sync the tree's transport state and push what changed. Not real-time."""
        osc = self.control.osc
        tree = self.control.tree
        now = time.monotonic()
        for i, deck in enumerate(self.engine.decks, start=1):
            status = deck.status()
            for key, rel, kind in TREE_FIELDS:
                if key not in status:
                    continue
                path = f"deck/{i}/{rel}"
                value = kind(status[key])
                recent = now - self._touched.get(path, -1e9) < self.hold_s
                if path in tree and not recent and tree.get(path) != value:
                    tree.set(path, value, source="engine", emit=False)
            if osc is None:
                continue
            for address, values in self.messages(i, status):
                key = (i, address)
                if self._last.get(key) != values:
                    self._last[key] = values
                    osc.broadcast(address, values)
                    self.num_pushes += 1

    def _on_change(self, change) -> None:
        if change.source != "engine":
            self._touched[change.path] = time.monotonic()

    def start(self) -> DeckFeedback:
        self.control.tree.add_listener(self._on_change)
        if self.control.osc is not None:
            self.control.osc.router.state_providers.append(self.state)
        self.poll()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stembridge-deck-feedback", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.poll()
            except Exception:
                log.exception("deck feedback failed")

    def stop(self) -> None:
        self.control.tree.remove_listener(self._on_change)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
