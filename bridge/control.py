"""The controller: the parameter tree plus everything that drives it and listens to it.

``Controller`` ties together the ``ParamTree`` (values), the engine's per-deck command queues (where changes go),
effect chains (built here, off the audio thread, and swapped in by reference), scenes (store/recall with fades),
the OSC server, MIDI mappers (with LED feedback and learn), and meters from the engine
(``publish_meters``, forwarded to OSC subscribers at up to 30 Hz). A background thread ticks every few ms to
advance fades and smoothing, re-send commands a full queue refused, send meters and finish MIDI learn.

Typical use by the live engine::

    control = Controller(card.stems, num_decks=2)
    control.attach_queue(1, deck1_queue)             # engine.commands.CommandQueue, drained at block starts
    control.load_scene("default")                    # chains + levels for every deck
    control.serve_osc("127.0.0.1", 9000)
    control.add_midi(load_controller_map(path), *open_ports("APC mini", "APC mini"))
    control.start()
    ...  # the engine calls control.publish_meters(deck, {"vocals": (peak, rms), ...}) now and then
    control.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stembridge.bridge.midi_learn import LearnSession, default_user_map, describe, save_binding
from stembridge.bridge.midi_map import MidiMapper
from stembridge.bridge.params import MIN_GAIN_DB, ParamTree, SetResult, UnknownParam, normalize_path
from stembridge.bridge.presets import (
    BuiltChain,
    ChainPreset,
    ControllerMap,
    PresetError,
    build_chain,
    find_preset,
    load_chain,
    load_scene,
)
from stembridge.engine.mixer import chain_latencies

log = logging.getLogger(__name__)

TICK_S = 0.005
METER_HZ = 30.0


class Controller:
    """The control side of one engine. Thread-safe; nothing here runs on the audio thread.

    stems: the engine's stems (from the model card). queues: {deck: CommandQueue} (more via ``attach_queue``).
    """

    def __init__(
        self,
        stems: Iterable[str],
        num_decks: int = 1,
        *,
        queues: dict[int, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        meter_hz: float = METER_HZ,
        user_map: str | Path | None = None,
    ) -> None:
        self.tree = ParamTree(stems, num_decks, clock=clock)
        self.clock = clock
        self.meter_hz = min(float(meter_hz), METER_HZ)
        self.user_map = Path(user_map) if user_map else default_user_map()
        self.scenes: dict[str, dict[int, dict[str, float | bool]]] = {}  # stored: name -> deck -> {rel path: v}
        self.chains: dict[tuple[int, str], tuple[str, BuiltChain]] = {}  # (deck, stem) -> (preset name, chain)
        self.latencies: dict[tuple[int, str], tuple[int, ...]] = {}  # (deck, stem) -> each plugin's latency
        self.sample_rate = 44100.0  # the engine's rate and period, for measuring chain latencies (set by live)
        self.block_size = 256
        self.midi: list[MidiMapper] = []
        self.osc: Any = None
        self.meter_listeners: list[Callable[[int, str, float, float], None]] = []
        self._queues: dict[int, Any] = {}
        self._meters: dict[int, dict[str, tuple[float, float]]] = {}
        self._meters_pending = False
        self._last_meter_send = 0.0
        self._learn: tuple[LearnSession, Callable | None] | None = None
        self._learn_deadline = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for deck, queue in (queues or {}).items():
            self.attach_queue(deck, queue)

    @property
    def stems(self) -> tuple[str, ...]:
        return self.tree.stems

    @property
    def num_decks(self) -> int:
        return self.tree.num_decks

    # -- engine side --
    def attach_queue(self, deck: int, queue: Any) -> None:
        """Send deck ``deck``'s commands to ``queue``: first its chains, then every current value."""
        from stembridge.engine.commands import SwapChain

        with self.tree.lock:
            self._queues[deck] = queue
            for (d, stem), (_name, built) in self.chains.items():
                latencies = self.latencies.get((d, stem))
                if d == deck and not queue.push(SwapChain(stem, built.board, built.names, latencies)):
                    raise RuntimeError(f"deck {deck}'s command queue is full")
            self.tree.attach_queue(deck, queue)

    def publish_meters(self, deck: int, levels: dict[str, tuple[float, float]]) -> None:
        """Engine callback: the latest (peak, rms) per stem (and optionally "master"), linear amplitude.

        Cheap and non-blocking (it only stores a reference); call it from any thread as often as you like.
        Subscribers get ``/stembridge/deck/<n>/stem/<stem>/meter f <peak> f <rms>`` at up to 30 Hz.
        """
        self._meters[deck] = levels
        self._meters_pending = True

    def _send_meters(self, now: float) -> None:
        if not self._meters_pending or now - self._last_meter_send < 1.0 / self.meter_hz:
            return
        self._meters_pending = False
        self._last_meter_send = now
        for deck, levels in list(self._meters.items()):
            for stem, (peak, rms) in list(levels.items()):
                peak, rms = float(peak) + 0.0, float(rms) + 0.0  # + 0.0 turns -0.0 (silence) into 0.0
                address = (
                    f"/stembridge/deck/{deck}/master/meter" if stem == "master"
                    else f"/stembridge/deck/{deck}/stem/{stem}/meter"
                )  # fmt: skip
                if self.osc is not None:
                    self.osc.broadcast(address, [peak, rms])
                for listener in self.meter_listeners:
                    listener(deck, stem, peak, rms)

    # -- parameters --
    def set(self, path: str, value: Any, source: str = "api", *, fade_s: float = 0.0) -> SetResult:
        """Set a parameter (``deck/1/stem/vocals/mute`` or its OSC address). See ``ParamTree.set``."""
        return self.tree.set(normalize_path(path), value, source, fade_s=fade_s)

    def get(self, path: str) -> float | bool:
        return self.tree.get(normalize_path(path))

    # -- chains --
    def load_chain(self, deck: int, stem: str, chain: str | Path | ChainPreset, source: str = "chain") -> list[str]:
        """Build an effect chain (preset name, file or ``ChainPreset``), swap it into ``deck``/``stem`` and register
        its parameters. Raises KeyError for an unknown deck/stem, PresetError for a bad preset."""
        from stembridge.engine.commands import SwapChain

        if not 1 <= deck <= self.num_decks or stem not in self.stems:
            raise KeyError(f"no deck {deck} stem {stem!r} (decks 1..{self.num_decks}, stems {', '.join(self.stems)})")
        preset = chain if isinstance(chain, ChainPreset) else load_chain(find_preset("chains", chain))
        built = build_chain(preset)  # off the audio thread: the engine only swaps a reference
        # and each plugin's latency measured here too, at the engine's rate, for its delay compensation
        latencies = chain_latencies(built.board, self.sample_rate, self.block_size)
        self.latencies[(deck, stem)] = latencies
        with self.tree.lock:
            self.chains[(deck, stem)] = (preset.name, built)
            queue = self._queues.get(deck)
            if queue is not None and not queue.push(SwapChain(stem, built.board, built.names, latencies)):
                raise RuntimeError(f"deck {deck}'s command queue is full; the chain was not swapped in")
            paths = self.tree.set_chain_params(
                deck, stem, list(zip(built.names, built.board, strict=True)), built.overrides, built.bypassed, source
            )
            for name in built.bypassed:  # the engine starts every plugin active
                self.tree.send_engine(deck, f"stem/{stem}/fx/{name}/bypass", 1.0)
            return paths

    # -- scenes --
    def store_scene(self, name: str, deck: int | None = None) -> None:
        """Remember every stored value of one deck (or all decks) as scene ``name``."""
        snapshot: dict[int, dict[str, float | bool]] = {}
        for path, value in self.tree.snapshot(deck).items():
            _, d, rel = path.split("/", 2)
            snapshot.setdefault(int(d), {})[rel] = value
        self.scenes[str(name)] = snapshot
        log.info("stored scene %s (%d deck(s))", name, len(snapshot))

    def load_scene(self, name: str | Path, fade_s: float | None = None, deck: int | None = None) -> list[str]:
        """Recall a scene preset file by name or path (see ``recall_scene``)."""
        return self.recall_scene(str(name), fade_s=fade_s, deck=deck)

    def recall_scene(
        self, name: str, fade_s: float | None = None, deck: int | None = None, source: str = "scene"
    ) -> list[str]:
        """Recall a stored scene, else a scene preset (presets/scenes/<name>.toml), on one deck or all.

        fade_s: seconds to glide gains and effect parameters (default: the preset's ``fade_s``, 0 for stored
        scenes). Gains glide in the fader's feel; a mute or unmute fades the stem out or in first; solo and
        bypass switch at once. Returns a list of problems (values for parameters this engine lacks), and raises
        KeyError when no scene has that name.
        """
        decks = [deck] if deck is not None else list(range(1, self.num_decks + 1))
        chains: dict[str, str] = {}
        if name in self.scenes:
            stored = self.scenes[name]
            fade = 0.0 if fade_s is None else fade_s
            if deck is not None:
                values = stored.get(deck) or (next(iter(stored.values())) if len(stored) == 1 else {})
                per_deck = {deck: values}
            else:
                per_deck = {d: v for d, v in stored.items() if d in decks}
        else:
            try:
                preset = load_scene(find_preset("scenes", name))
            except PresetError as exc:
                if exc.line is None and "no scene preset" in exc.message:
                    raise KeyError(f"no scene {name!r}: store one first, or add presets/scenes/{name}.toml") from None
                raise
            fade = preset.fade_s if fade_s is None else fade_s
            chains = preset.chains
            per_deck = {d: preset.values for d in decks}
        problems: list[str] = []
        for d, values in per_deck.items():
            for stem, chain in chains.items():
                if stem not in self.stems:
                    problems.append(f"scene {name}: no stem {stem!r} for chain {chain}")
                elif self.chains.get((d, stem), (None,))[0] != chain:
                    self.load_chain(d, stem, chain, source=source)
            problems += self._apply_scene_values(d, values, fade, source)
        if problems:
            log.warning("scene %s: %s", name, "; ".join(problems[:5]))
        return problems

    def _apply_scene_values(self, deck: int, values: dict[str, float | bool], fade: float, source: str) -> list[str]:
        tree = self.tree
        problems = []
        with tree.lock:
            fading = fade > 0 and tree.ticking
            mutes = {rel: v for rel, v in values.items() if rel.endswith("/mute")}
            for rel, value in values.items():
                path = f"deck/{deck}/{rel}"
                if path not in tree:
                    problems.append(f"no parameter {path}")
                    continue
                if rel.endswith("/mute"):
                    continue
                stem_gain = rel.endswith("/gain_db") and rel.startswith("stem/")
                mute_path = rel[: -len("gain_db")] + "mute" if stem_gain else None
                muting_change = (
                    fading
                    and mute_path is not None
                    and mute_path in mutes
                    and bool(mutes[mute_path]) != bool(tree.get(f"deck/{deck}/{mute_path}"))
                )
                if muting_change:
                    continue  # handled with its mute below
                tree.set(path, value, source, fade_s=fade if fading else 0.0)
            for rel, mute in mutes.items():
                path = f"deck/{deck}/{rel}"
                if path not in tree:
                    problems.append(f"no parameter {path}")
                    continue
                mute = bool(mute)
                stem_base = rel[: -len("mute")]
                gain_rel = stem_base + "gain_db"
                gain_path = f"deck/{deck}/{gain_rel}"
                target_gain = float(values.get(gain_rel, tree.get(gain_path)))
                was_muted = bool(tree.get(path))
                if not fading or mute == was_muted:
                    tree.set(path, mute, source)
                    if gain_rel in values:
                        tree.set(gain_path, target_gain, source, fade_s=fade if fading else 0.0)
                    continue
                # a faded mute: dip the engine's gain to silence, then mute; a faded unmute: the reverse
                engine_gain, engine_mute = f"{stem_base}gain_db", f"{stem_base}mute"
                tree.set(path, mute, source, emit=False)  # tree + listeners now; the engine is driven below
                tree.set(gain_path, target_gain, source, emit=False)
                if mute:
                    tree.fade_engine(
                        deck, engine_gain, MIN_GAIN_DB, fade, curve="gain",
                        start=tree.engine_value(deck, engine_gain, target_gain),
                        then=[(engine_mute, 1.0), (engine_gain, target_gain)],
                    )  # fmt: skip
                else:
                    tree.send_engine(deck, engine_gain, MIN_GAIN_DB)
                    tree.send_engine(deck, engine_mute, 0.0)
                    tree.fade_engine(deck, engine_gain, target_gain, fade, curve="gain", start=MIN_GAIN_DB)
        return problems

    # -- MIDI --
    def add_midi(self, cmap: ControllerMap, input_port: Any = None, output_port: Any = None) -> MidiMapper:
        """Apply a controller map to MIDI ports (either may be None). Sends the map's init and LED state."""
        mapper = MidiMapper(self.tree, cmap, output=output_port, actions=self._midi_action, clock=self.clock)
        self.midi.append(mapper)
        missing = mapper.unknown_targets()
        if missing:
            log.warning(
                "controller map %s: %d binding target(s) not in this engine, e.g. %s", cmap.name, len(missing),
                ", ".join(missing[:3]),
            )  # fmt: skip
        if input_port is not None:
            mapper.attach_input(input_port)
        mapper.send_state()
        return mapper

    def _midi_action(self, target: str, binding: Any) -> None:
        _scene, name, action = target.split("/")
        if action == "store":
            self.store_scene(name)
        else:
            try:
                self.recall_scene(name, fade_s=binding.fade_s, source="midi")
            except (KeyError, PresetError) as exc:
                log.warning("MIDI %s: %s", target, exc)

    def learn(
        self,
        target: str,
        *,
        mode: str | None = None,
        layer: str = "main",
        map_path: str | Path | None = None,
        on_done: Callable[[str, str], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Arm MIDI learn for ``target``: the next control moved on any attached MIDI input is bound to it, added
        to the running mappers, and saved into the user's map (``map_path``, default ``self.user_map``).

        on_done(target path, description) is called when it is saved. Raises KeyError for an unknown target,
        RuntimeError when no MIDI input is attached.
        """
        path = normalize_path(target)
        is_action = path.startswith("scene/")
        if not is_action:
            param = self.tree.param(path)  # raises UnknownParam (a KeyError)
        if not self.midi:
            raise RuntimeError("MIDI learn needs a MIDI input (start stembridge with --midi-in)")
        save_to = Path(map_path) if map_path else self.user_map
        self.cancel_learn()

        def finished(binding: Any) -> None:
            save_binding(save_to, binding)
            for mapper in self.midi:
                mapper.learn = None
            target_mapper = session.source if session.source in self.midi else self.midi[0]
            target_mapper.add_binding(binding, replace=True)
            target_mapper.stats.learned += 1
            if binding.feedback and target_mapper.output is not None:
                target_mapper.send_state()
            self._learn = None
            text = describe(binding)
            log.info("learned %s -> %s (saved in %s)", text, path, save_to)
            if on_done is not None:
                on_done(path, text)

        session = LearnSession(
            path, is_bool=is_action or param.spec.kind == "bool", mode=mode, layer=layer, on_done=finished
        )
        self._learn = (session, on_done)
        self._learn_deadline = self.clock() + timeout_s
        for mapper in self.midi:
            mapper.learn = session

    def cancel_learn(self) -> None:
        for mapper in self.midi:
            mapper.learn = None
        self._learn = None

    @property
    def learning(self) -> bool:
        return self._learn is not None

    # -- OSC --
    def serve_osc(
        self, host: str = "127.0.0.1", port: int = 9000, *, tcp_port: int | None = None, allow: Iterable[str] = ()
    ) -> Any:
        """Start the OSC server (UDP + TCP) and its feedback to subscribers. Returns the ``OscServer``."""
        from stembridge.bridge.osc_server import OscServer

        server = OscServer(self, host, port, tcp_port=tcp_port, allow=allow)
        self.osc = server.start()
        self._osc_feedback = server.router.feedback
        self.tree.add_listener(self._osc_feedback)
        return server

    # -- life cycle --
    def start(self) -> Controller:
        """Start the tick thread (fades, smoothing, re-sends, meters, learn timeouts)."""
        if self._thread is None:
            self.tree.ticking = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stembridge-control", daemon=True)
            self._thread.start()
        return self

    def tick(self, now: float | None = None) -> None:
        """One tick (the thread calls this every 5 ms; tests call it with their own clock)."""
        now = self.clock() if now is None else now
        self.tree.tick(now)
        self._send_meters(now)
        if self._learn is not None:
            for mapper in self.midi:
                mapper.poll()
            if self._learn is not None and now > self._learn_deadline:
                log.warning("MIDI learn for %s timed out", self._learn[0].target)
                self.cancel_learn()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:
                log.exception("control tick failed")

    def stats(self) -> dict[str, Any]:
        """Counters from every part: OSC, MIDI, queue drops."""
        out: dict[str, Any] = {"commands_refused": self.tree.num_dropped}
        if self.osc is not None:
            out["osc"] = self.osc.stats
        out["midi"] = [vars(m.stats).copy() for m in self.midi]
        return out

    def close(self) -> None:
        """Stop the thread, the OSC server and the MIDI ports."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self.tree.ticking = False
        if self.osc is not None:
            self.osc.close()
            self.tree.remove_listener(self._osc_feedback)
            self.osc = None
        for mapper in self.midi:
            mapper.close()
        self.midi.clear()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Controller", "UnknownParam"]
