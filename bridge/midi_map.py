"""MIDI controller mapping: mido messages in, parameter changes out, LED feedback back to the controller.

A ``MidiMapper`` applies one ``ControllerMap`` (see bridge.presets) to a ``ParamTree``:

- absolute CC (7-bit), 14-bit CC pairs (MSB on CC n, LSB on CC n+32; the value applies when the LSB arrives),
  NRPN (CC 99/98 select the parameter, CC 6/38 carry the value, CC 96/97 step it) and pitch bend, each through a
  curve (linear, square, cube, sqrt, scurve), optional invert and an optional sub-range of the parameter;
- relative encoders: two's complement (1..63 up, 127..65 down), sign-magnitude (1..63 up, 65..127 down) and
  binary offset (65.. up, ..63 down), ``step`` of the range per tick;
- buttons (notes, or CCs >= 64 pressed): toggle, momentary, or hold (a tap latches, a press held longer than
  ``hold_ms`` springs back on release); a note-on with velocity 0 is a note-off;
- a shift layer: while the shift button is held (or toggled on), a control's shift-layer bindings replace its
  main ones (controls without shift bindings keep their main ones);
- soft takeover for absolute controls: after the parameter moved by other means (OSC, a scene, the other layer),
  a knob only takes over once it reaches the current value (within 3% or by crossing it), so nothing jumps;
- feedback: button LEDs (and, where asked, knob rings / motor faders) follow their parameter whatever changed it.

Ports: ``open_ports`` opens real ports through mido + python-rtmidi, trying ALSA then JACK MIDI, and fails with
one clear message when neither is available. Tests use hardware-free subclasses of mido's port classes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mido
from stembridge.bridge.params import Change, ParamTree, UnknownParam
from stembridge.bridge.presets import Binding, ControllerMap
from stembridge.engine.live.devices import quiet_stderr

log = logging.getLogger(__name__)

TAKEOVER_TOLERANCE = 0.03  # of the control's travel


def apply_curve(curve: str, x: float) -> float:
    """Shape a 0..1 control position: linear, square (fine at the bottom), cube, sqrt (fine at the top), scurve."""
    if curve == "square":
        return x * x
    if curve == "cube":
        return x * x * x
    if curve == "sqrt":
        return x**0.5
    if curve == "scurve":
        return x * x * (3.0 - 2.0 * x)
    return x


def invert_curve(curve: str, y: float) -> float:
    """The control position that gives ``y`` (for feedback to knob rings and motor faders)."""
    y = min(max(y, 0.0), 1.0)
    if curve == "square":
        return y**0.5
    if curve == "cube":
        return y ** (1.0 / 3.0)
    if curve == "sqrt":
        return y * y
    if curve == "scurve":
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if apply_curve("scurve", mid) < y else (lo, mid)
        return (lo + hi) / 2
    return y


def relative_delta(mode: str, value: int) -> int:
    """Encoder ticks from one relative CC value."""
    if mode == "relative_twos":
        return value if value < 64 else value - 128
    if mode == "relative_signmag":
        return -(value & 63) if value & 64 else value & 63
    return value - 64  # relative_offset


@dataclass
class _State:
    """Runtime state of one binding."""

    binding: Binding
    engaged: bool = False  # soft takeover: this control has caught the parameter
    last_in: float | None = None  # last normalized position this control asked for
    last_set: Any = None  # last value this control set
    pressed_at: float | None = None
    was_on: bool = False  # hold mode: state before the press
    saved: Any = None  # value before a button switched a float parameter on
    last_led: tuple | None = None


@dataclass
class MapperStats:
    messages: int = 0
    applied: int = 0
    unmapped: int = 0
    waiting_takeover: int = 0
    unknown_target: int = 0
    feedback_sent: int = 0
    learned: int = 0


class MidiMapper:
    """Applies a controller map. ``handle(msg)`` is thread-safe (call it from a port callback or a reader thread).

    actions: callable(target, binding) for ``scene/<k>/recall|store`` targets. output: a mido output port for
    feedback (optional). clock: seconds, for hold buttons.
    """

    def __init__(
        self,
        tree: ParamTree,
        cmap: ControllerMap,
        *,
        output: Any = None,
        actions: Callable[[str, Binding], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tree = tree
        self.map = cmap
        self.output = output
        self.actions = actions
        self.clock = clock
        self.shift_active = False
        self.stats = MapperStats()
        self.learn: Any = None  # a bridge.midi_learn.LearnSession while learning
        self._lock = tree.lock  # one lock for tree and mapper: no lock-order inversion between MIDI and OSC threads
        self._states: list[_State] = []
        self._by_control: dict[tuple[str, int, int], list[_State]] = {}
        self._by_target: dict[str, list[_State]] = {}
        self._pressed: dict[tuple[str, int, int], list[_State]] = {}
        self._cc14_msb: dict[tuple[int, int], int] = {}
        self._nrpn: dict[int, dict[str, int]] = {}
        self._nrpn_channels: set[int] = set()
        self._input_thread: threading.Thread | None = None
        self._input: Any = None
        for b in cmap.bindings:
            self.add_binding(b)
        tree.add_listener(self._on_change)

    # -- bindings --
    def add_binding(self, binding: Binding, replace: bool = False) -> None:
        """Add a binding (``replace``: first drop the bindings of the same control and layer, as learn does)."""
        with self._lock:
            if replace:
                self.remove_bindings(binding.key)
            st = _State(binding)
            self._states.append(st)
            self._by_control.setdefault((binding.control, binding.channel, binding.number), []).append(st)
            self._by_target.setdefault(binding.target, []).append(st)
            if binding.control == "nrpn":
                self._nrpn_channels.add(binding.channel)

    def remove_bindings(self, key: tuple[str, int, int, str]) -> list[Binding]:
        """Remove the bindings of one (control, channel, number, layer); returns them."""
        with self._lock:
            gone = [st for st in self._states if st.binding.key == key]
            for st in gone:
                self._states.remove(st)
                self._by_control[key[:3]].remove(st)
                self._by_target[st.binding.target].remove(st)
            return [st.binding for st in gone]

    @property
    def bindings(self) -> list[Binding]:
        return [st.binding for st in self._states]

    def unknown_targets(self) -> list[str]:
        """Targets of this map that the tree does not have (e.g. an effect of a chain that is not loaded)."""
        return sorted(
            t for t in self._by_target if not t.startswith("scene/") and self._by_target[t] and t not in self.tree
        )

    # -- input --
    def handle(self, msg: mido.Message) -> None:
        """Apply one incoming message. Never raises on odd input (it is counted)."""
        with self._lock:
            self.stats.messages += 1
            now = self.clock()
            if self.learn is not None:
                self.learn.source = self  # the learned binding goes to the mapper whose controller moved
                self.learn.feed(msg, now)
                return
            try:
                self._handle(msg, now)
            except Exception:  # a mapping bug must not kill the MIDI thread
                log.exception("MIDI message %s failed", msg)

    def poll(self) -> None:
        """Finish a learn session whose collection window has passed (the controller calls this on its tick)."""
        with self._lock:
            if self.learn is not None:
                self.learn.poll(self.clock())

    def _handle(self, msg: mido.Message, now: float) -> None:
        t = msg.type
        if t in ("note_on", "note_off"):
            pressed = t == "note_on" and msg.velocity > 0
            ch = msg.channel + 1
            if self._is_shift("note", ch, msg.note):
                self._shift(pressed)
                return
            self._button(("note", ch, msg.note), pressed, now)
        elif t == "control_change":
            ch, cc, value = msg.channel + 1, msg.control, msg.value
            if self._is_shift("cc", ch, cc):
                self._shift(value >= 64)
                return
            if ch in self._nrpn_channels and cc in (99, 98, 6, 38, 96, 97):
                self._nrpn_cc(ch, cc, value, now)
            if cc < 32 and ("cc14", ch, cc) in self._by_control:
                self._cc14_msb[(ch, cc)] = value
            elif 32 <= cc < 64 and ("cc14", ch, cc - 32) in self._by_control:
                msb = self._cc14_msb.get((ch, cc - 32))
                if msb is not None:
                    self._continuous(("cc14", ch, cc - 32), ((msb << 7) | value) / 16383.0, None)
            states = self._active(("cc", ch, cc))
            if not states:
                if not (("cc14", ch, cc) in self._by_control or ("cc14", ch, cc - 32) in self._by_control
                        or ch in self._nrpn_channels):  # fmt: skip
                    self.stats.unmapped += 1
                return
            if states[0].binding.is_button:
                self._button(("cc", ch, cc), value >= 64, now)
            elif states[0].binding.mode == "absolute":
                self._continuous(("cc", ch, cc), value / 127.0, None)
            else:
                self._continuous(("cc", ch, cc), None, value)
        elif t == "pitchwheel":
            self._continuous(("pitchwheel", msg.channel + 1, 0), (msg.pitch + 8192) / 16383.0, None)
        else:
            self.stats.unmapped += 1

    def _is_shift(self, control: str, ch: int, number: int) -> bool:
        s = self.map.shift
        return s is not None and s.control == control and s.channel == ch and s.number == number

    def _shift(self, pressed: bool) -> None:
        s = self.map.shift
        if s.mode == "toggle":
            if not pressed:
                return
            active = not self.shift_active
        else:
            active = pressed
        if active == self.shift_active:
            return
        self.shift_active = active
        for st in self._states:  # knobs must take over again in the layer that now listens
            st.engaged = False
            st.last_in = None
        if s.feedback and self.output is not None:
            vel = s.on_value if active else s.off_value
            kind = "note_on" if s.control == "note" else "control_change"
            data = {"note": s.number, "velocity": vel} if kind == "note_on" else {"control": s.number, "value": vel}
            self._send(mido.Message(kind, channel=s.channel - 1, **data))

    def _active(self, key: tuple[str, int, int]) -> list[_State]:
        states = self._by_control.get(key)
        if not states:
            return []
        if self.shift_active:
            shifted = [st for st in states if st.binding.layer == "shift"]
            if shifted:
                return shifted
        return [st for st in states if st.binding.layer == "main"]

    def _nrpn_cc(self, ch: int, cc: int, value: int, now: float) -> None:
        state = self._nrpn.setdefault(ch, {})
        if cc == 99:
            state.clear()
            state["msb"] = value
        elif cc == 98:
            state["lsb"] = value
            state.pop("data", None)
        elif "msb" in state and "lsb" in state:
            if state["msb"] == 127 and state["lsb"] == 127:
                return  # the null parameter
            key = ("nrpn", ch, (state["msb"] << 7) | state["lsb"])
            states = self._active(key)
            if not states:
                self.stats.unmapped += 1
                return
            resolution = states[0].binding.resolution
            if cc == 6:
                state["data"] = value
                if resolution == 7:
                    self._continuous(key, value / 127.0, None)
            elif cc == 38 and resolution == 14 and "data" in state:
                self._continuous(key, ((state["data"] << 7) | value) / 16383.0, None)
            elif cc in (96, 97):
                self._continuous(key, None, 1 if cc == 96 else -1, raw_ticks=True)

    # -- continuous controls --
    def _continuous(
        self, key: tuple[str, int, int], position: float | None, value: int | None, raw_ticks: bool = False
    ) -> None:
        states = self._active(key)
        if not states:
            self.stats.unmapped += 1
            return
        for st in states:
            b = st.binding
            if b.is_button or b.target.startswith("scene/"):
                continue
            try:
                p = self.tree.param(b.target)
            except UnknownParam:
                self.stats.unknown_target += 1
                continue
            spec = p.spec
            lo, hi = (0.0, 1.0) if b.range is None else (spec.to_normalized(b.range[0]), spec.to_normalized(b.range[1]))
            current = spec.to_normalized(p.value)
            if position is not None:  # absolute
                x = 1.0 - position if b.invert else position
                target = lo + apply_curve(b.curve, x) * (hi - lo)
                if b.takeover == "soft" and not st.engaged:
                    cur = min(max(current, min(lo, hi)), max(lo, hi))
                    crossed = st.last_in is not None and (st.last_in - cur) * (target - cur) <= 0
                    st.last_in = target
                    if abs(target - cur) > TAKEOVER_TOLERANCE and not crossed:
                        self.stats.waiting_takeover += 1
                        continue
                st.engaged = True
                st.last_in = target
            else:  # relative
                ticks = value if raw_ticks else relative_delta(b.mode, value)
                if b.invert:
                    ticks = -ticks
                if spec.kind == "bool":
                    target = 1.0 if ticks > 0 else 0.0
                else:
                    target = min(max(current + ticks * b.step * (1 if hi >= lo else -1), min(lo, hi)), max(lo, hi))
            st.last_set = self._set(b.target, spec.from_normalized(target), st)

    def _set(self, target: str, value: Any, st: _State) -> Any:
        st.last_set = value  # before the listener runs, so this control stays engaged
        try:
            result = self.tree.set(target, value, source="midi")
        except UnknownParam:
            self.stats.unknown_target += 1
            return None
        self.stats.applied += 1
        st.last_set = result.value
        return result.value

    # -- buttons --
    def _button(self, key: tuple[str, int, int], pressed: bool, now: float) -> None:
        if pressed:
            states = self._active(key)
            if not states:
                self.stats.unmapped += 1
                return
            self._pressed[key] = states
            for st in states:
                self._press(st, now)
        else:
            for st in self._pressed.pop(key, []):
                self._release(st, now)

    def _on_off_values(self, st: _State, spec: Any) -> tuple[Any, Any]:
        b = st.binding
        if spec.kind == "bool":
            on, off = True, False
        else:
            on = spec.maximum if b.value_on is None else b.value_on
            off = (spec.minimum if st.saved is None else st.saved) if b.value_off is None else b.value_off
        return (off, on) if b.invert else (on, off)

    def _is_on(self, st: _State, spec: Any, value: Any) -> bool:
        b = st.binding
        if spec.kind == "bool":
            return bool(value) != b.invert
        on = spec.maximum if b.value_on is None else b.value_on
        hit = abs(float(value) - float(on)) <= 1e-6 * max(1.0, abs(float(on)))
        return hit != b.invert

    def _press(self, st: _State, now: float) -> None:
        b = st.binding
        if b.target.startswith("scene/"):
            if self.actions is not None:
                self.actions(b.target, b)
                self.stats.applied += 1
            return
        try:
            p = self.tree.param(b.target)
        except UnknownParam:
            self.stats.unknown_target += 1
            return
        on_now = self._is_on(st, p.spec, p.value)
        if not on_now and p.spec.kind == "float":
            st.saved = p.value
        on, off = self._on_off_values(st, p.spec)
        st.pressed_at, st.was_on = now, on_now
        if b.mode == "momentary":
            self._set(b.target, on, st)
        else:  # toggle and hold flip on press
            self._set(b.target, off if on_now else on, st)

    def _release(self, st: _State, now: float) -> None:
        b = st.binding
        if b.target.startswith("scene/") or b.mode == "toggle":
            return
        try:
            p = self.tree.param(b.target)
        except UnknownParam:
            return
        on, off = self._on_off_values(st, p.spec)
        if b.mode == "momentary":
            self._set(b.target, off, st)
        elif st.pressed_at is not None and (now - st.pressed_at) * 1000.0 >= b.hold_ms:
            self._set(b.target, on if st.was_on else off, st)  # held: spring back
        st.pressed_at = None

    # -- feedback --
    def _on_change(self, change: Change) -> None:
        states = self._by_target.get(change.path)
        if not states:
            return
        with self._lock:
            for st in states:
                if not (change.source == "midi" and change.value == st.last_set):
                    st.engaged = False  # moved by something else: take over again
                if st.binding.feedback and self.output is not None:
                    self._feedback(st)

    def _feedback(self, st: _State, force: bool = False) -> None:
        b = st.binding
        try:
            p = self.tree.param(b.target)
        except UnknownParam:
            return
        ch = (b.led_channel or b.channel) - 1
        if b.is_button:
            vel = b.on_value if self._is_on(st, p.spec, p.value) else b.off_value
            if b.control == "note":
                msgs = [mido.Message("note_on", channel=ch, note=b.number, velocity=vel)]
            else:
                msgs = [mido.Message("control_change", channel=ch, control=b.number, value=vel)]
        else:
            spec = p.spec
            lo, hi = (0.0, 1.0) if b.range is None else (spec.to_normalized(b.range[0]), spec.to_normalized(b.range[1]))
            y = 0.0 if hi == lo else (spec.to_normalized(p.value) - lo) / (hi - lo)
            x = invert_curve(b.curve, y)
            x = 1.0 - x if b.invert else x
            if b.control == "cc":
                msgs = [mido.Message("control_change", channel=ch, control=b.number, value=round(x * 127))]
            elif b.control == "cc14":
                v = round(x * 16383)
                msgs = [
                    mido.Message("control_change", channel=ch, control=b.number, value=v >> 7),
                    mido.Message("control_change", channel=ch, control=b.number + 32, value=v & 127),
                ]
            elif b.control == "pitchwheel":
                msgs = [mido.Message("pitchwheel", channel=ch, pitch=round(x * 16383) - 8192)]
            else:
                return  # NRPN feedback is not sent
        signature = tuple(m.bytes()[1] for m in msgs) + tuple(m.bytes()[-1] for m in msgs)
        if not force and signature == st.last_led:
            return
        st.last_led = signature
        for m in msgs:
            self._send(m)

    def _send(self, msg: mido.Message) -> None:
        try:
            self.output.send(msg)
            self.stats.feedback_sent += 1
        except (OSError, ValueError):
            log.warning("MIDI feedback to %s failed", getattr(self.output, "name", "output"))

    def send_state(self) -> None:
        """Send the map's init messages and every feedback control's current state (on connect)."""
        if self.output is None:
            return
        with self._lock:
            for raw in self.map.init:
                self._send(mido.Message.from_bytes(raw))
            for st in self._states:
                if st.binding.feedback:
                    self._feedback(st, force=True)

    # -- ports --
    def attach_input(self, port: Any) -> None:
        """Read ``port``: through its callback when it has one (rtmidi ports), else on a reader thread."""
        self._input = port
        if hasattr(port, "_rt") or type(port).__module__.startswith("mido.backends"):
            port.callback = self.handle
            return

        def reader() -> None:
            try:
                for msg in port:
                    self.handle(msg)
            except (OSError, ValueError):
                pass

        self._input_thread = threading.Thread(target=reader, name="midi-in", daemon=True)
        self._input_thread.start()

    def close(self) -> None:
        """Stop listening to the tree and close the ports this mapper was given."""
        self.tree.remove_listener(self._on_change)
        for port in (self._input, self.output):
            if port is not None:
                try:
                    port.close()
                except Exception:
                    pass
        if self._input_thread is not None:
            self._input_thread.join(timeout=1.0)


class MidiUnavailable(RuntimeError):
    """No MIDI backend works here (no ALSA sequencer, no JACK server)."""


BACKENDS = {
    "alsa": "mido.backends.rtmidi/LINUX_ALSA",
    "jack": "mido.backends.rtmidi/UNIX_JACK",
}


def midi_backend(api: str = "auto") -> Any:
    """A working mido backend: "alsa", "jack", or "auto" (ALSA, then JACK). Raises MidiUnavailable."""
    names = ["alsa", "jack"] if api == "auto" else [api]
    errors = []
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown MIDI API {name!r} (use alsa, jack or auto)")
        try:
            with quiet_stderr():
                backend = mido.Backend(BACKENDS[name], load=True)
                backend.get_input_names()  # creates a client: fails here when the API has no server
            return backend
        except Exception as exc:  # rtmidi raises its own SystemError types
            errors.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    hint = (
        "No MIDI backend is available ("
        + "; ".join(errors)
        + "). Plug in a controller with an ALSA sequencer (/dev/snd/seq), or start JACK "
        "(e.g. `jackd -d dummy -r 44100 -p 256 &`, or a real audio interface) and use --midi-api jack."
    )
    raise MidiUnavailable(hint)


def _pick(names: list[str], wanted: str | None, what: str) -> str:
    if not names:
        raise MidiUnavailable(f"no MIDI {what} ports are available")
    if wanted is None:
        return names[0]
    exact = [n for n in names if n == wanted]
    if exact:
        return exact[0]
    partial = [n for n in names if wanted.lower() in n.lower()]
    if partial:
        return partial[0]
    raise MidiUnavailable(f"no MIDI {what} port matches {wanted!r} (available: {', '.join(names)})")


def open_ports(
    input_name: str | None, output_name: str | None = None, *, api: str = "auto", virtual: bool = False
) -> tuple[Any, Any]:
    """Open (input, output) MIDI ports by exact or partial name (None = first port; output None = no output).

    ``virtual``: create ports named ``input_name``/``output_name`` for other programs to connect to.
    """
    backend = midi_backend(api)
    try:
        if virtual:
            inp = backend.open_input(input_name or "stembridge in", virtual=True)
            out = backend.open_output(output_name, virtual=True) if output_name else None
            return inp, out
        inp = backend.open_input(_pick(backend.get_input_names(), input_name, "input"))
        out = None
        if output_name is not None:
            out = backend.open_output(_pick(backend.get_output_names(), output_name, "output"))
        return inp, out
    except MidiUnavailable:
        raise
    except Exception as exc:
        raise MidiUnavailable(f"cannot open MIDI port: {exc}") from exc
