"""MIDI learn: watch the next control the performer moves, infer how it talks, and save the binding.

A ``LearnSession`` collects messages for a short window after the first one (0.4 s, or until 12 arrive), then
decides:

- a note -> a button (``toggle`` for on/off parameters, ``momentary`` otherwise);
- CC 99 + 98 (+ 6/38) -> NRPN, 14-bit when CC 38 was seen;
- CC n < 32 followed by CC n+32 -> a 14-bit CC pair;
- a CC sending only 0 and 127 to an on/off parameter -> a CC button (``toggle``);
- a CC repeating small steps -> a relative encoder: 1..15 / 113..127 two's complement, 65..79 sign-magnitude,
  57..63 binary offset;
- pitch bend -> ``pitchwheel``; any other CC -> ``absolute``.

``mode`` forces the binding mode. ``save_binding`` writes it into the user's map TOML (replacing bindings of the
same control and layer), which ``stembridge`` loads with ``--midi-map``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stembridge.bridge.presets import BUTTON_MODES, CONTINUOUS_MODES, Binding, ControllerMap, dump_controller_map
from stembridge.bridge.presets import load_controller_map as _load_map

LEARN_WINDOW_S = 0.4
LEARN_MAX_MESSAGES = 12


def default_user_map() -> Path:
    """Where learned bindings go unless told otherwise: <user presets>/controllers/user.toml."""
    from stembridge.bridge.presets import user_dir

    return user_dir() / "controllers" / "user.toml"


class LearnSession:
    """Collects the messages of one control move and turns them into a ``Binding`` for ``target``.

    on_done(binding) is called once, from ``feed`` or ``poll``.
    """

    def __init__(
        self,
        target: str,
        *,
        is_bool: bool,
        mode: str | None = None,
        layer: str = "main",
        on_done: Callable[[Binding], None] | None = None,
        window_s: float = LEARN_WINDOW_S,
    ) -> None:
        if mode is not None and mode not in BUTTON_MODES + CONTINUOUS_MODES:
            raise ValueError(f"unknown mode {mode!r} (use one of {', '.join(BUTTON_MODES + CONTINUOUS_MODES)})")
        self.target = target
        self.is_bool = is_bool
        self.mode = mode
        self.layer = layer
        self.on_done = on_done
        self.window_s = window_s
        self.messages: list[Any] = []
        self.first_at: float | None = None
        self.result: Binding | None = None
        self.source: Any = None  # the MidiMapper that fed the messages

    @property
    def done(self) -> bool:
        return self.result is not None

    def feed(self, msg: Any, now: float) -> None:
        if self.done or msg.type not in ("note_on", "note_off", "control_change", "pitchwheel"):
            return
        if msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
            if not self.messages:
                return  # a release left over from before learning started
        if self.first_at is None:
            self.first_at = now
        self.messages.append(msg)
        if msg.type == "note_on" or len(self.messages) >= LEARN_MAX_MESSAGES:
            self._finish()
        else:
            self.poll(now)

    def poll(self, now: float) -> None:
        if not self.done and self.first_at is not None and now - self.first_at >= self.window_s:
            self._finish()

    def _finish(self) -> None:
        self.result = infer_binding(self.messages, self.target, is_bool=self.is_bool, mode=self.mode, layer=self.layer)
        if self.result is not None and self.on_done is not None:
            self.on_done(self.result)


def infer_binding(
    messages: list[Any], target: str, *, is_bool: bool, mode: str | None = None, layer: str = "main"
) -> Binding | None:
    """The binding a list of messages from one control move suggests (None if they say nothing usable)."""
    if not messages:
        return None
    first = messages[0]
    ch = first.channel + 1
    button_mode = mode if mode in BUTTON_MODES else ("toggle" if is_bool else "momentary")
    if first.type == "note_on":
        return Binding("note", ch, first.note, target, mode=button_mode, layer=layer, feedback=True)
    if first.type == "pitchwheel":
        return Binding("pitchwheel", ch, 0, target, layer=layer)
    ccs = [m for m in messages if m.type == "control_change" and m.channel == first.channel]
    numbers = [m.control for m in ccs]
    if 99 in numbers and 98 in numbers:
        msb = next(m.value for m in ccs if m.control == 99)
        lsb = next(m.value for m in ccs if m.control == 98)
        res = 14 if 38 in numbers else 7
        return Binding("nrpn", ch, (msb << 7) | lsb, target, layer=layer, resolution=res)
    n = first.control
    if n < 32 and (n + 32) in numbers:
        return Binding("cc14", ch, n, target, layer=layer)
    values = [m.value for m in ccs if m.control == n]
    if mode in BUTTON_MODES or (mode is None and is_bool and set(values) <= {0, 127}):
        return Binding("cc", ch, n, target, mode=button_mode, layer=layer, feedback=True)
    if mode in CONTINUOUS_MODES:
        return Binding("cc", ch, n, target, mode=mode, layer=layer)
    distinct = set(values)
    if len(values) >= 2 and len(distinct) <= 3:
        if distinct <= set(range(1, 16)) | set(range(113, 128)):
            return Binding("cc", ch, n, target, mode="relative_twos", layer=layer)
        if distinct <= set(range(65, 80)) | set(range(1, 16)) and distinct & set(range(65, 80)):
            return Binding("cc", ch, n, target, mode="relative_signmag", layer=layer)
        if distinct <= set(range(57, 64)) | set(range(65, 72)) and distinct & set(range(57, 64)):
            return Binding("cc", ch, n, target, mode="relative_offset", layer=layer)
    return Binding("cc", ch, n, target, mode="absolute", layer=layer)


def describe(binding: Binding) -> str:
    """A short human description: "CC 16 ch 1 absolute", "note 36 ch 10 toggle"."""
    what = {"cc": "CC", "cc14": "14-bit CC", "nrpn": "NRPN", "note": "note", "pitchwheel": "pitch bend"}[
        binding.control
    ]
    number = "" if binding.control == "pitchwheel" else f" {binding.number}"
    layer = " (shift layer)" if binding.layer == "shift" else ""
    return f"{what}{number} ch {binding.channel} {binding.mode}{layer}"


def save_binding(map_path: str | Path, binding: Binding) -> ControllerMap:
    """Add ``binding`` to the map file at ``map_path`` (created if missing), replacing bindings of the same
    control and layer. Written atomically. Returns the updated map."""
    path = Path(map_path)
    if path.exists():
        cmap = _load_map(path)
    else:
        cmap = ControllerMap(name="user", file=path, description="Bindings made with MIDI learn.")
    cmap.bindings = [b for b in cmap.bindings if b.key != binding.key] + [binding]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_controller_map(cmap), encoding="utf-8")
    os.replace(tmp, path)
    return cmap
