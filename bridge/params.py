"""The parameter tree: the one source of truth for everything a performer can control.

Every controllable value lives here, per deck and stem, with its range, unit, default and smoothing:

    deck/<n>/stem/<stem>/gain_db          float dB, -120 (silence) .. +12, ramped by the engine (10 ms)
    deck/<n>/stem/<stem>/level            float 0..1, the fader: linked to gain_db by the fader curve below
    deck/<n>/stem/<stem>/mute             bool
    deck/<n>/stem/<stem>/solo             bool
    deck/<n>/stem/<stem>/fx/<plugin>/bypass   bool, crossfaded by the engine
    deck/<n>/stem/<stem>/fx/<plugin>/<param>  float or bool, one per pedalboard parameter of the loaded chain
    deck/<n>/master/gain_db, deck/<n>/master/level
    deck/<n>/level_db                     float dB: the deck's level (the live engine applies it to the deck)
    deck/<n>/transport/<play|cue|loop>    bool actions; transport/<seek_s|cue_s|loop_start_s|loop_end_s> seconds
    deck/<n>/load_next, load_prev         bool actions for the crate (carried out by the live session's loader)
    deck/<n>/pfl                          bool: the deck in the headphone cue
    deck/<n>/transport/<tempo|keylock|key>  rate 0.5..2, bool, semitones -12..12 (Rubber Band, file decks)
    cue/mix, cue/gain_db                  engine-wide: headphone blend (0 cue .. 1 master) and level

Fader curve (``level`` <-> ``gain_db``): a cubic amplitude taper with unity at 0.8,

    amplitude = (level / 0.8) ** 3,   i.e.   gain_db = 60 * log10(level / 0.8)

so level 1.0 = +5.8 dB, 0.8 = 0 dB, 0.5 = -12.2 dB, 0.25 = -30.3 dB, 0.1 = -54.2 dB, and 0 = silence (-120 dB).

Input from OSC, MIDI, scenes or code goes through ``ParamTree.set``: it converts and clamps the value, stores it,
sends ``engine.commands.SetParam(engine_path, value)`` to that deck's command queue (the audio thread drains it at
the next block boundary; the control side never waits on it), and tells every listener (OSC subscribers, MIDI LED
feedback) about the change, whatever its source. A command refused by a full queue is kept and re-sent by
``flush()`` so the engine never stays out of step with the tree.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from stembridge.engine.commands import SetParam
from stembridge.engine.mixer import MIN_GAIN_DB

MAX_GAIN_DB = 12.0
UNITY_LEVEL = 0.8
ENGINE_RAMP_MS = 10.0  # StemMixer's default ramp: gains, mutes, solos and bypasses are smoothed there

TRUE_WORDS = frozenset({"t", "true", "on", "yes", "1"})
FALSE_WORDS = frozenset({"f", "false", "off", "no", "0"})
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class ParamError(Exception):
    """Base class for errors setting or reading a parameter."""


class UnknownParam(ParamError, KeyError):
    """No parameter at that path."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown parameter"


class BadValue(ParamError, ValueError):
    """The value cannot be converted for that parameter (wrong type, NaN, unknown word)."""


def level_to_gain_db(level: float) -> float:
    """The fader curve: ``gain_db = 60 * log10(level / 0.8)``, floored at -120 dB (silence) for level <= 0.008."""
    if not level > 0.0:
        return MIN_GAIN_DB
    return max(MIN_GAIN_DB, 60.0 * math.log10(level / UNITY_LEVEL))


def gain_db_to_level(gain_db: float) -> float:
    """Inverse of ``level_to_gain_db``, clamped to 0..1 (gains above +5.8 dB show as a full fader)."""
    if gain_db <= MIN_GAIN_DB:
        return 0.0
    return min(1.0, UNITY_LEVEL * 10.0 ** (gain_db / 60.0))


@dataclass
class ParamSpec:
    """What a parameter is: kind ("float" or "bool"), range, default, unit, scale and smoothing.

    ``scale`` maps the range onto a 0..1 control (a MIDI knob): "linear", "log" (equal ratios per turn, for
    frequencies and times; needs minimum > 0) or "fader" (the fader curve, for gains in dB).
    ``smoothing_ms`` > 0 with ``smoothed_by="control"`` makes the control side glide the engine value there in
    steps of a few ms; ``smoothed_by="engine"`` documents the engine's own ramp.
    """

    kind: str = "float"
    minimum: float = 0.0
    maximum: float = 1.0
    default: float | bool = 0.0
    unit: str = ""
    scale: str = "linear"
    smoothing_ms: float = 0.0
    smoothed_by: str = "control"
    description: str = ""
    stateful: bool = True  # False for actions (transport): not in scenes, not re-sent when an engine attaches

    def __post_init__(self) -> None:
        if self.kind not in ("float", "bool"):
            raise ValueError(f"kind must be 'float' or 'bool', not {self.kind!r}")
        if self.kind == "bool":
            self.minimum, self.maximum = 0.0, 1.0
            self.default = bool(self.default)
        elif not self.minimum < self.maximum:
            raise ValueError(f"range [{self.minimum}, {self.maximum}] is empty")
        if self.scale not in ("linear", "log", "fader"):
            raise ValueError(f"scale must be linear, log or fader, not {self.scale!r}")
        if self.scale == "log" and self.minimum <= 0:
            raise ValueError("a log scale needs a positive minimum")

    def coerce(self, raw: Any) -> tuple[float | bool, bool]:
        """Convert ``raw`` (bool, int, float or a word/number string) to this kind. Returns (value, clamped)."""
        if self.kind == "bool":
            return _to_bool(raw), False
        x = _to_float(raw)
        if x < self.minimum:
            return float(self.minimum), True
        if x > self.maximum:
            return float(self.maximum), True
        return x, False

    def to_normalized(self, value: float | bool) -> float:
        """0..1 position of ``value`` on a control (inverse of ``from_normalized``)."""
        if self.kind == "bool":
            return 1.0 if value else 0.0
        v = min(max(float(value), self.minimum), self.maximum)
        if self.scale == "fader":
            lo, hi = gain_db_to_level(self.minimum), gain_db_to_level(self.maximum)
            return (gain_db_to_level(v) - lo) / (hi - lo) if hi > lo else 0.0
        if self.scale == "log":
            return math.log(v / self.minimum) / math.log(self.maximum / self.minimum)
        return (v - self.minimum) / (self.maximum - self.minimum)

    def from_normalized(self, x: float) -> float | bool:
        """The value at position ``x`` (clamped to 0..1) of a control spanning the range."""
        x = min(max(float(x), 0.0), 1.0)
        if self.kind == "bool":
            return x >= 0.5
        if self.scale == "fader":
            lo, hi = gain_db_to_level(self.minimum), gain_db_to_level(self.maximum)
            v = level_to_gain_db(lo + x * (hi - lo))
        elif self.scale == "log":
            v = self.minimum * (self.maximum / self.minimum) ** x
        else:
            v = self.minimum + x * (self.maximum - self.minimum)
        return min(max(v, self.minimum), self.maximum)


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)):
        if isinstance(raw, float) and math.isnan(raw):
            raise BadValue("NaN is not a boolean")
        return raw >= 0.5
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        try:
            return _to_float(word) >= 0.5
        except BadValue:
            pass
    raise BadValue(f"{raw!r} is not a boolean (use T/F, 1/0, true/false, on/off)")


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, (int, float)):
        x = float(raw)
    elif isinstance(raw, str):
        try:
            x = float(raw.strip())
        except ValueError:
            raise BadValue(f"{raw!r} is not a number") from None
    else:
        raise BadValue(f"{type(raw).__name__} is not a number")
    if math.isnan(x):
        raise BadValue("NaN is not a value")
    return x


@dataclass
class Param:
    """One node of the tree: its path, deck, engine path (None for derived values like ``level``) and value."""

    path: str
    deck: int
    spec: ParamSpec
    engine_path: str | None
    value: float | bool = 0.0
    linked: str | None = None  # level <-> gain_db sibling

    def __post_init__(self) -> None:
        self.linked = _linked(self.path)

    @property
    def address(self) -> str:
        """The OSC address, e.g. ``/stembridge/deck/1/stem/vocals/mute``."""
        return "/stembridge/" + self.path


class SetResult(NamedTuple):
    """What ``ParamTree.set`` did: the value stored, what was asked, and whether it was clamped or changed."""

    path: str
    value: float | bool
    requested: Any
    clamped: bool
    changed: bool


class Change(NamedTuple):
    """A change told to listeners: path, new value, and source ("osc", "midi", "scene", "api", "chain", ...)."""

    path: str
    value: float | bool
    source: str


@dataclass
class _Glide:
    deck: int
    engine_path: str
    start: float
    end: float
    t0: float
    duration_s: float
    curve: str  # "linear" or "gain" (interpolates amplitude ** (1/3), like the fader, so fades sound even)
    then: list[tuple[str, float]] = field(default_factory=list)  # engine commands sent when it ends


GAIN_SPEC = dict(minimum=MIN_GAIN_DB, maximum=MAX_GAIN_DB, unit="dB", scale="fader", smoothed_by="engine")


def stem_param_specs() -> dict[str, ParamSpec]:
    """The fixed parameters of every stem (a fresh copy each call)."""
    return {
        "gain_db": ParamSpec(
            "float", default=0.0, smoothing_ms=ENGINE_RAMP_MS, description="stem gain; -120 dB is silence", **GAIN_SPEC
        ),
        "level": ParamSpec(
            "float",
            0.0,
            1.0,
            UNITY_LEVEL,
            "",
            "linear",
            ENGINE_RAMP_MS,
            "engine",
            "fader 0..1 (0.8 = 0 dB); sets gain_db through the fader curve",
        ),
        "mute": ParamSpec("bool", smoothing_ms=ENGINE_RAMP_MS, smoothed_by="engine", description="mute (ramped)"),
        "solo": ParamSpec("bool", smoothing_ms=ENGINE_RAMP_MS, smoothed_by="engine", description="solo (ramped)"),
    }


def deck_param_specs() -> dict[str, ParamSpec]:
    """Deck-level parameters (``deck/<n>/...``), routed by the live engine to the deck rather than its mixer."""
    seconds = dict(minimum=-1.0, maximum=86400.0, unit="s", stateful=False)
    return {
        "level_db": ParamSpec(
            "float", default=0.0, smoothing_ms=ENGINE_RAMP_MS, description="deck level; scales every bus it feeds",
            **GAIN_SPEC,
        ),
        "transport/play": ParamSpec("bool", default=False, stateful=False, description="1 plays, 0 pauses"),
        "transport/cue": ParamSpec("bool", stateful=False, description="1 jumps to the cue point and pauses"),
        "transport/loop": ParamSpec("bool", stateful=False, description="1 loops loop_start_s..loop_end_s"),
        "transport/seek_s": ParamSpec("float", description="jump the playhead here (seconds)", **seconds),
        "transport/cue_s": ParamSpec("float", description="set the cue point (-1: at the playhead)", **seconds),
        "transport/loop_start_s": ParamSpec("float", description="loop start (-1: at the playhead)", **seconds),
        "transport/loop_end_s": ParamSpec("float", description="loop end (-1: at the playhead)", **seconds),
        "pfl": ParamSpec("bool", default=False, description="headphone cue: 1 sends the deck to cue_L/R"),
        "transport/tempo": ParamSpec(
            "float", 0.5, 2.0, 1.0, "x", stateful=False, description="playback rate (0.92 = -8 %), Rubber Band"
        ),
        "transport/keylock": ParamSpec("bool", default=True, stateful=False, description="1 keeps the pitch"),
        "transport/key": ParamSpec(
            "float", -12.0, 12.0, 0.0, "st", stateful=False, description="key shift in semitones"
        ),
        "load_next": ParamSpec("bool", stateful=False, description="1 loads the crate's next track (--crate)"),
        "load_prev": ParamSpec("bool", stateful=False, description="1 loads the crate's previous track (--crate)"),
    }  # fmt: skip


CONTROL_SIDE_PATHS = frozenset({"load_next", "load_prev"})  # deck actions carried out by the control side


def engine_param_specs() -> dict[str, ParamSpec]:
    """Engine-wide parameters (no deck: ``Param.deck == 0``, sent to the live engine's own queue)."""
    return {
        "cue/mix": ParamSpec("float", 0.0, 1.0, 0.0, "", description="headphones: 0 cue only, 1 master only"),
        "cue/gain_db": ParamSpec("float", default=0.0, description="headphone level", **GAIN_SPEC),
    }


def _linked(path: str) -> str | None:
    """level <-> gain_db sibling path."""
    head, _, leaf = path.rpartition("/")
    if leaf == "level":
        return head + "/gain_db"
    if leaf == "gain_db" and (head.endswith("/master") or "/fx/" not in path):
        return head + "/level"
    return None


Listener = Callable[[Change], None]


class ParamTree:
    """All decks' parameters. Thread-safe (one re-entrant lock); never called from the audio thread.

    stems: stem names in the engine's order (from the model card), e.g. ("vocals", "drums", "bass", "other").
    """

    def __init__(
        self,
        stems: Iterable[str],
        num_decks: int = 1,
        *,
        queues: dict[int, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stems = tuple(stems)
        for stem in self.stems:
            if not _NAME.match(stem):
                raise ValueError(f"stem name {stem!r} must be letters, digits, '_' or '-'")
        if num_decks < 1:
            raise ValueError("num_decks must be >= 1")
        self.num_decks = num_decks
        self.clock = clock
        self.ticking = False  # True while something calls tick() every few ms (the Controller's thread)
        self.num_dropped = 0  # commands a full queue refused (they are re-sent by flush())
        self._lock = threading.RLock()
        self._params: dict[str, Param] = {}
        self._listeners: list[Listener] = []
        self._queues: dict[int, Any] = dict(queues or {})
        self._unsent: dict[tuple[int, str], float] = {}
        self._engine_values: dict[tuple[int, str], float] = {}
        self._glides: dict[tuple[int, str], _Glide] = {}
        self.coalesce_s = 0.002  # see _emit
        self._last_push: dict[tuple[int, str], float] = {}
        self._deferred: dict[tuple[int, str], float] = {}
        self._fx: dict[tuple[int, str], list[str]] = {}  # (deck, stem) -> fx param paths
        for deck in range(1, num_decks + 1):
            for stem in self.stems:
                for leaf, spec in stem_param_specs().items():
                    engine = None if leaf == "level" else f"stem/{stem}/{leaf}"
                    self._add(Param(f"deck/{deck}/stem/{stem}/{leaf}", deck, spec, engine, spec.default))
            master = stem_param_specs()
            self._add(
                Param(f"deck/{deck}/master/gain_db", deck, master["gain_db"], "master/gain_db", 0.0),
            )
            self._add(Param(f"deck/{deck}/master/level", deck, master["level"], None, UNITY_LEVEL))
            for key in [k for k in self._params if k.startswith(f"deck/{deck}/master/")]:
                self._params[key].spec.description = self._params[key].spec.description.replace("stem", "master")
            for leaf, spec in deck_param_specs().items():
                engine = None if leaf in CONTROL_SIDE_PATHS else leaf
                self._add(Param(f"deck/{deck}/{leaf}", deck, spec, engine, spec.default))
        for path, spec in engine_param_specs().items():
            self._add(Param(path, 0, spec, path, spec.default))

    # -- structure --
    def _add(self, param: Param) -> None:
        self._params[param.path] = param

    def paths(self, prefix: str = "") -> list[str]:
        """All parameter paths (in creation order), optionally only those starting with ``prefix``."""
        with self._lock:
            return [p for p in self._params if p.startswith(prefix)]

    def param(self, path: str) -> Param:
        """The ``Param`` at ``path`` (a leading "/stembridge/" or "/" is accepted). Raises UnknownParam."""
        p = self._params.get(path)
        if p is not None:
            return p
        key = normalize_path(path)
        try:
            return self._params[key]
        except KeyError:
            raise UnknownParam(f"no parameter {key!r}") from None

    @property
    def lock(self) -> threading.RLock:
        """The tree's re-entrant lock; MIDI mappers share it so MIDI and OSC threads never deadlock."""
        return self._lock

    def __contains__(self, path: str) -> bool:
        return path in self._params or normalize_path(path) in self._params

    def attach_queue(self, deck: int, queue: Any) -> None:
        """Route deck ``deck``'s commands to ``queue`` (anything with ``push(cmd) -> bool``) and send it every
        current engine value, so a freshly started engine starts in step with the tree."""
        with self._lock:
            self._queues[deck] = queue
            for p in self._params.values():
                if p.deck == deck and p.engine_path is not None and p.spec.stateful:
                    self._emit(deck, p.engine_path, float(p.value))

    def set_chain_params(
        self,
        deck: int,
        stem: str,
        plugins: list[tuple[str, Any]],
        overrides: dict[tuple[str, str], dict[str, Any]] | None = None,
        bypassed: Iterable[str] = (),
        source: str = "chain",
    ) -> list[str]:
        """Register the effect parameters of a chain just sent to the engine (replacing the stem's old ones).

        plugins: (address name, pedalboard plugin) pairs in chain order. overrides: {(name, param): ParamSpec
        fields} from the chain preset. Values are read from the plugins. Returns the new paths; listeners are told
        each new value. Call it right after pushing the ``SwapChain`` so both reach the engine in order.
        """
        from stembridge.bridge.presets import (
            plugin_param_specs,  # the table of built-in plugin ranges lives with the loader
        )

        overrides = overrides or {}
        bypassed = set(bypassed)
        self._check_deck_stem(deck, stem)
        with self._lock:
            for path in self._fx.pop((deck, stem), []):
                self._params.pop(path, None)
            prefix = f"stem/{stem}/fx/"
            for table in (self._glides, self._engine_values, self._unsent, self._deferred, self._last_push):
                for key in [k for k in table if k[0] == deck and k[1].startswith(prefix)]:
                    del table[key]
            new: list[str] = []
            for name, plugin in plugins:
                if not _NAME.match(name):
                    raise ValueError(f"plugin name {name!r} must be letters, digits, '_' or '-'")
                base = f"deck/{deck}/stem/{stem}/fx/{name}"
                engine_base = f"stem/{stem}/fx/{name}"
                bypass = ParamSpec("bool", default=False, smoothing_ms=ENGINE_RAMP_MS, smoothed_by="engine")
                bypass.description = f"bypass {name} (crossfaded)"
                p = Param(f"{base}/bypass", deck, bypass, f"{engine_base}/bypass", name in bypassed)
                self._add(p)
                new.append(p.path)
                self._engine_values[(deck, p.engine_path)] = 1.0 if p.value else 0.0
                for pname, spec in plugin_param_specs(plugin).items():
                    fields = overrides.get((name, pname))
                    if fields:
                        spec = ParamSpec(**{**spec.__dict__, **fields})
                    value = getattr(plugin, pname)
                    value = bool(value) if spec.kind == "bool" else float(value)
                    spec.default = value
                    p = Param(f"{base}/{pname}", deck, spec, f"{engine_base}/{pname}", value)
                    self._add(p)
                    new.append(p.path)
                    self._engine_values[(deck, p.engine_path)] = float(value)
            self._fx[(deck, stem)] = new
            for path in new:
                self._notify(Change(path, self._params[path].value, source))
            return new

    def _check_deck_stem(self, deck: int, stem: str) -> None:
        if not 1 <= deck <= self.num_decks:
            raise UnknownParam(f"no deck {deck} (decks 1..{self.num_decks})")
        if stem not in self.stems:
            raise UnknownParam(f"no stem {stem!r} (stems: {', '.join(self.stems)})")

    # -- listeners --
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(Change)`` after every change, from any source, on the thread that made it."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, change: Change) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must not stop the others or the caller
                import logging

                logging.getLogger(__name__).exception("parameter listener failed for %s", change.path)

    # -- values --
    def get(self, path: str) -> float | bool:
        with self._lock:
            return self.param(path).value

    def get_normalized(self, path: str) -> float:
        with self._lock:
            p = self.param(path)
            return p.spec.to_normalized(p.value)

    def set_normalized(self, path: str, x: float, source: str = "api") -> SetResult:
        """Set from a 0..1 control position (through the parameter's scale)."""
        p = self.param(path)
        return self.set(path, p.spec.from_normalized(x), source)

    def set(
        self,
        path: str,
        raw: Any,
        source: str = "api",
        *,
        fade_s: float = 0.0,
        emit: bool = True,
        notify_unchanged: bool = False,
    ) -> SetResult:
        """Convert, clamp, store and send a value; tell the listeners. Raises UnknownParam or BadValue.

        Setting ``level`` sets ``gain_db`` through the fader curve and vice versa; both are reported.
        ``fade_s`` > 0 (or the parameter's own control-side smoothing) glides the engine there while the tree
        is ticking; the tree and the listeners see the target at once. ``emit=False`` changes the tree and tells
        the listeners but sends nothing (the caller drives the engine itself, as faded mutes do).
        """
        with self._lock:
            p = self.param(path)
            value, clamped = p.spec.coerce(raw)
            changed = value != p.value
            p.value = value
            linked = self._params.get(p.linked) if p.linked else None
            linked_changed = False
            if p.engine_path is None and linked is not None:  # level -> gain_db
                linked_value = level_to_gain_db(float(value))
                linked_changed = linked_value != linked.value
                linked.value = linked_value
                if emit:
                    self._send(linked, float(linked_value), fade_s)
            else:
                if linked is not None:  # gain_db -> level
                    linked_value = gain_db_to_level(float(value))
                    linked_changed = linked_value != linked.value
                    linked.value = linked_value
                if emit and p.engine_path is not None:  # None: an action the control side carries out
                    self._send(p, float(value), fade_s)
            if changed or notify_unchanged:
                self._notify(Change(p.path, value, source))
            if linked is not None and (linked_changed or notify_unchanged):
                self._notify(Change(linked.path, linked.value, source))
            return SetResult(p.path, value, raw, clamped, changed)

    def _send(self, p: Param, value: float, fade_s: float = 0.0) -> None:
        key = (p.deck, p.engine_path)
        self._cancel_glides(p.deck, p.engine_path)  # a direct set wins over a running fade
        if self.ticking and p.spec.kind == "float":
            duration = (
                fade_s if fade_s > 0 else (p.spec.smoothing_ms / 1000.0 if p.spec.smoothed_by == "control" else 0)
            )
            start = self._engine_values.get(key, value)
            if duration > 0 and start != value:
                curve = "gain" if p.spec.scale == "fader" else "linear"
                self._glides[key] = _Glide(p.deck, p.engine_path, start, value, self.clock(), duration, curve)
                return
        self._emit(p.deck, p.engine_path, value, coalesce=True)

    def _cancel_glides(self, deck: int, engine_path: str) -> None:
        """End the glides on ``engine_path`` or whose end commands touch it, sending their end state (but not
        for ``engine_path`` itself, which the caller is about to send)."""
        if not self._glides:
            return
        for key, g in list(self._glides.items()):
            if key[0] != deck or (key[1] != engine_path and all(path != engine_path for path, _ in g.then)):
                continue
            del self._glides[key]
            if key[1] != engine_path:
                self._emit(deck, g.engine_path, g.end)
            for path, v in g.then:
                if path != engine_path:
                    self._emit(deck, path, v)

    def send_engine(self, deck: int, engine_path: str, value: float) -> None:
        """Send one engine value directly (no tree change, no listeners): for fades that need the engine to
        take a path the tree does not describe (e.g. a gain dip before an unmute)."""
        with self._lock:
            self._cancel_glides(deck, engine_path)
            self._emit(deck, engine_path, value)

    def _emit(self, deck: int, engine_path: str, value: float, coalesce: bool = False) -> None:
        """Queue one engine command. ``coalesce`` (direct sets while ticking): a path sent less than
        ``coalesce_s`` ago waits for the next tick, which sends only its latest value. A burst on one path (an
        OSC fader streaming at 1 kHz) then costs the audio thread one command per tick, not one per message;
        a single change is never delayed."""
        key = (deck, engine_path)
        self._engine_values[key] = value
        queue = self._queues.get(deck)
        if queue is None:
            return
        if coalesce and self.ticking and self.coalesce_s > 0:
            now = self.clock()
            if now - self._last_push.get(key, -1e9) < self.coalesce_s:
                self._deferred[key] = value
                return
            self._last_push[key] = now
        self._deferred.pop(key, None)
        self._unsent.pop(key, None)
        if not queue.push(SetParam(engine_path, value)):
            self.num_dropped += 1
            self._unsent[key] = value

    def flush(self) -> int:
        """Re-send commands a full queue refused (latest value per path). Returns how many are still unsent."""
        with self._lock:
            for (deck, engine_path), value in list(self._unsent.items()):
                queue = self._queues.get(deck)
                if queue is not None and queue.push(SetParam(engine_path, value)):
                    del self._unsent[(deck, engine_path)]
            return len(self._unsent)

    # -- fades --
    def fade_engine(
        self,
        deck: int,
        engine_path: str,
        end: float,
        duration_s: float,
        *,
        start: float | None = None,
        curve: str = "linear",
        then: list[tuple[str, float]] | None = None,
    ) -> None:
        """Glide the engine's value of ``engine_path`` to ``end`` over ``duration_s`` (tree values untouched).

        ``then``: engine commands sent when the glide ends. Without a ticking controller the end state is sent now.
        """
        with self._lock:
            key = (deck, engine_path)
            self._cancel_glides(deck, engine_path)
            if start is None:
                start = self._engine_values.get(key, end)
            if not self.ticking or duration_s <= 0:
                self._glides.pop(key, None)
                self._emit(deck, engine_path, end)
                for path, value in then or []:
                    self._emit(deck, path, value)
                return
            self._emit(deck, engine_path, start)
            self._glides[key] = _Glide(deck, engine_path, start, end, self.clock(), duration_s, curve, list(then or []))

    def engine_value(self, deck: int, engine_path: str, default: float) -> float:
        """The last value sent (or being glided to) for an engine path."""
        return self._engine_values.get((deck, engine_path), default)

    @property
    def num_glides(self) -> int:
        return len(self._glides)

    def tick(self, now: float | None = None) -> None:
        """Advance glides (send their current values) and re-send refused commands. Call every few ms."""
        with self._lock:
            if self._unsent:
                self.flush()
            if self._deferred:
                for (deck, engine_path), value in list(self._deferred.items()):
                    self._emit(deck, engine_path, value)
                    self._last_push[(deck, engine_path)] = self.clock() if now is None else now
            if not self._glides:
                return
            now = self.clock() if now is None else now
            for key, g in list(self._glides.items()):
                t = 1.0 if g.duration_s <= 0 else min(1.0, (now - g.t0) / g.duration_s)
                value = _interpolate(g.start, g.end, t, g.curve)
                self._emit(g.deck, g.engine_path, value)
                if t >= 1.0:
                    del self._glides[key]
                    for path, v in g.then:
                        self._emit(g.deck, path, v)

    # -- patterns and snapshots --
    def match(self, pattern: str) -> list[str]:
        """Paths matching an OSC address pattern (``*``, ``?``, ``[a-z]``, ``[!a]``, ``{a,b}``), with or without
        the "/stembridge/" prefix."""
        regex = compile_osc_pattern(normalize_path(pattern))
        with self._lock:
            return [p for p in self._params if regex.fullmatch(p)]

    def snapshot(self, deck: int | None = None) -> dict[str, float | bool]:
        """Stored values (gain_db, mute, solo, effects, master; not the derived ``level``) of one or all decks."""
        with self._lock:
            return {
                p.path: p.value
                for p in self._params.values()
                if p.engine_path is not None and p.spec.stateful and p.deck > 0 and (deck is None or p.deck == deck)
            }


def _interpolate(a: float, b: float, t: float, curve: str) -> float:
    if t >= 1.0:
        return b
    if curve == "gain":  # move linearly in amplitude ** (1/3) (the fader's feel), so a fade has no dead start
        xa = 0.0 if a <= MIN_GAIN_DB else 10.0 ** (a / 60.0)
        xb = 0.0 if b <= MIN_GAIN_DB else 10.0 ** (b / 60.0)
        x = xa + (xb - xa) * t
        return MIN_GAIN_DB if x <= 10.0 ** (MIN_GAIN_DB / 60.0) else max(MIN_GAIN_DB, 60.0 * math.log10(x))
    return a + (b - a) * t


def normalize_path(path: str) -> str:
    """ "/stembridge/deck/1/x" or "/deck/1/x" or "deck/1/x" -> "deck/1/x"."""
    if path.startswith("/stembridge/"):
        return path[len("/stembridge/") :]
    return path.lstrip("/")


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def compile_osc_pattern(pattern: str) -> re.Pattern:
    """An OSC 1.0 address pattern as a regular expression over one address. Raises ValueError if malformed."""
    cached = _PATTERN_CACHE.get(pattern)
    if cached is not None:
        return cached
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise ValueError(f"unclosed '[' in {pattern!r}")
            body = pattern[i + 1 : j]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body or "/" in body:
                raise ValueError(f"bad character class in {pattern!r}")
            parts = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo > hi:
                        raise ValueError(f"bad range {lo}-{hi} in {pattern!r}")
                    parts.append(re.escape(lo) + "-" + re.escape(hi))
                    k += 3
                else:
                    parts.append(re.escape(body[k]))
                    k += 1
            out.append("[" + ("^/" if negate else "") + "".join(parts) + "]")
            i = j
        elif c == "{":
            j = pattern.find("}", i + 1)
            if j < 0:
                raise ValueError(f"unclosed '{{' in {pattern!r}")
            options = pattern[i + 1 : j].split(",")
            if any("/" in o for o in options):
                raise ValueError(f"'/' inside {{}} in {pattern!r}")
            out.append("(?:" + "|".join(re.escape(o) for o in options) + ")")
            i = j
        elif c in "]}":
            raise ValueError(f"unbalanced {c!r} in {pattern!r}")
        else:
            out.append(re.escape(c))
        i += 1
    regex = re.compile("".join(out))
    if len(_PATTERN_CACHE) > 512:
        _PATTERN_CACHE.clear()
    _PATTERN_CACHE[pattern] = regex
    return regex


_PATTERN_CHARS = re.compile(r"[*?\[\]{}]")


def has_pattern(address: str) -> bool:
    """True if the address uses OSC pattern characters."""
    return _PATTERN_CHARS.search(address) is not None
