"""StemMixer: per-stem gain, mute, solo and effect chain, plus a master bus, all ramped.

Signal flow per stem: stem -> gain stage (gain_db x mute x solo, ramped) -> effect chain (pedalboard, streamed with
``reset=False``) -> stem bus. The master is the sum of the stem busses times the master gain. The gain stage sits
before the effects, so muting a stem lets its echo and reverb tails ring out (an "echo-out throw"); a stem with no
effects goes silent within the ramp. Every change ramps linearly over ``ramp_ms``, so nothing steps (no clicks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stembridge.engine.commands import SetParam, SwapChain
from stembridge.engine.rt import multiply_rows

MIN_GAIN_DB = -120.0


def db_to_gain(gain_db: float) -> float:
    """Linear gain for ``gain_db``; at or below -120 dB it is exactly 0."""
    return 0.0 if gain_db <= MIN_GAIN_DB else 10.0 ** (gain_db / 20.0)


class Ramp:
    """A value that moves linearly to its target over ``ramp_samples`` samples. Real-time safe."""

    def __init__(self, value: float, ramp_samples: int, max_block_size: int) -> None:
        self.value = value
        self.target = value
        self.ramp_samples = max(1, ramp_samples)
        self._step = 0.0
        self._remaining = 0
        self._buf = np.zeros(max_block_size, dtype=np.float32)
        self._steps = np.arange(1, max_block_size + 1, dtype=np.float32)

    def set(self, target: float) -> None:
        if target == self.target:
            return
        self.target = target
        self._remaining = self.ramp_samples
        self._step = (target - self.value) / self.ramp_samples

    @property
    def is_still(self) -> bool:
        return self._remaining == 0

    def next_block(self, n: int) -> np.ndarray:
        """The per-sample values for the next ``n`` samples: float32 (n,), a view valid until the next call."""
        buf = self._buf[:n]
        if self._remaining == 0:
            buf.fill(self.value)
            return buf
        k = min(self._remaining, n)
        np.multiply(self._steps[:k], self._step, out=buf[:k])
        buf[:k] += self.value
        self._remaining -= k
        self.value = self.target if self._remaining == 0 else self.value + self._step * k
        buf[k:] = self.value
        return buf


@dataclass
class _Effect:
    name: str
    plugin: Any
    wet: Ramp  # 1 = active, 0 = bypassed; crossfaded on toggles


@dataclass
class _Stem:
    name: str
    gain_db: float = 0.0
    mute: bool = False
    solo: bool = False
    gain: Ramp | None = None
    effects: list[_Effect] = field(default_factory=list)


def plugin_names(board: Any) -> tuple[str, ...]:
    """Default address names of a board's plugins: lower-case class names, ``_2``, ``_3``... for repeats."""
    names: list[str] = []
    for plugin in board:
        base = type(plugin).__name__.lower()
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return tuple(names)


class StemMixer:
    """Mixes one deck's stems: ``process(stems) -> (busses, master)``. Control arrives via ``apply(command)``."""

    def __init__(
        self,
        stems: tuple[str, ...] | list[str],
        num_channels: int = 2,
        sample_rate: float = 44100.0,
        max_block_size: int = 8192,
        ramp_ms: float = 10.0,
    ) -> None:
        self.stems = tuple(stems)
        self.num_channels = num_channels
        self.sample_rate = float(sample_rate)
        self.max_block_size = max_block_size
        self.ramp_samples = max(1, int(round(ramp_ms * 1e-3 * sample_rate)))
        self._stems = {name: _Stem(name, gain=self._ramp(1.0)) for name in self.stems}
        self._order = [self._stems[name] for name in self.stems]
        self.master_gain_db = 0.0
        self._master = self._ramp(1.0)
        self._busses = np.zeros((len(self.stems), num_channels, max_block_size), dtype=np.float32)
        self._mix = np.zeros((num_channels, max_block_size), dtype=np.float32)
        self.num_rejected = 0  # commands naming unknown stems, plugins or parameters

    def _ramp(self, value: float) -> Ramp:
        return Ramp(value, self.ramp_samples, self.max_block_size)

    # -- control (call from the audio thread via apply(), or before streaming starts) --
    def set_gain_db(self, stem: str, gain_db: float) -> None:
        self._stems[stem].gain_db = float(gain_db)
        self._update_gains()

    def set_mute(self, stem: str, mute: bool) -> None:
        self._stems[stem].mute = bool(mute)
        self._update_gains()

    def set_solo(self, stem: str, solo: bool) -> None:
        self._stems[stem].solo = bool(solo)
        self._update_gains()

    def set_master_gain_db(self, gain_db: float) -> None:
        self.master_gain_db = float(gain_db)
        self._master.set(db_to_gain(gain_db))

    def set_chain(self, stem: str, board: Any, names: tuple[str, ...] | None = None) -> None:
        """Swap in a prepared pedalboard chain (any iterable of plugins). The old chain is dropped by reference."""
        plugins = list(board)
        names = tuple(names) if names is not None else plugin_names(plugins)
        if len(names) != len(plugins):
            raise ValueError(f"{len(names)} names given for a chain of {len(plugins)} plugins")
        self._stems[stem].effects = [_Effect(n, p, self._ramp(1.0)) for n, p in zip(names, plugins, strict=True)]

    def chain(self, stem: str) -> list[tuple[str, Any]]:
        """The (name, plugin) pairs of a stem's chain, in processing order."""
        return [(e.name, e.plugin) for e in self._stems[stem].effects]

    def state(self, stem: str) -> dict[str, float | bool]:
        s = self._stems[stem]
        return {"gain_db": s.gain_db, "mute": s.mute, "solo": s.solo}

    def dry_fallback_scale(self, dry_index: int) -> float:
        """The gain to put on the dry (unseparated) signal before it plays on stem ``dry_index``'s bus in place of
        the stems, so that no stem is heard louder than its own gain allows: the smallest target gain of any stem
        over the dry stem's own. With every stem at one gain this is 1 and the fallback is exact (the stems sum to
        the dry signal); with a stem muted or a solo active it is 0 (a muted vocal never comes back on a miss; the
        deck dips instead). Real-time safe."""
        dry = self._order[dry_index].gain.target
        if dry <= 0.0:
            return 0.0
        lowest = min(s.gain.target for s in self._order)
        return min(1.0, lowest / dry)

    def _update_gains(self) -> None:
        any_solo = any(s.solo for s in self._order)
        for s in self._order:
            audible = not s.mute and (s.solo or not any_solo)
            s.gain.set(db_to_gain(s.gain_db) if audible else 0.0)

    def apply(self, command: Any) -> bool:
        """Apply a ``SetParam`` or ``SwapChain``. Returns False (and counts it) when it names nothing known.

        Real-time safe (a few small strings per command, no I/O).
        """
        if isinstance(command, SwapChain):
            if command.stem not in self._stems:
                self.num_rejected += 1
                return False
            self.set_chain(command.stem, command.board, command.names)
            return True
        if not isinstance(command, SetParam):
            self.num_rejected += 1
            return False
        parts = command.path.split("/")
        value = command.value
        if parts == ["master", "gain_db"]:
            self.set_master_gain_db(value)
            return True
        if len(parts) < 3 or parts[0] != "stem" or parts[1] not in self._stems:
            self.num_rejected += 1
            return False
        stem = parts[1]
        if len(parts) == 3 and parts[2] == "gain_db":
            self.set_gain_db(stem, value)
        elif len(parts) == 3 and parts[2] == "mute":
            self.set_mute(stem, value >= 0.5)
        elif len(parts) == 3 and parts[2] == "solo":
            self.set_solo(stem, value >= 0.5)
        elif len(parts) == 5 and parts[2] == "fx":
            return self._set_effect_param(stem, parts[3], parts[4], value)
        else:
            self.num_rejected += 1
            return False
        return True

    def _set_effect_param(self, stem: str, name: str, param: str, value: float) -> bool:
        for i, effect in enumerate(self._stems[stem].effects):
            if effect.name == name or name == str(i):
                if param == "bypass":
                    effect.wet.set(0.0 if value >= 0.5 else 1.0)
                    return True
                current = getattr(effect.plugin, param, None)
                if param.startswith("_") or current is None or callable(current):
                    break
                try:
                    setattr(effect.plugin, param, type(current)(value) if isinstance(current, bool) else value)
                except (TypeError, ValueError):
                    break
                return True
        self.num_rejected += 1
        return False

    # -- audio --
    def process(self, stems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """stems: float32 (num_stems, num_channels, n) with n <= max_block_size.

        Returns (busses float32 (num_stems, num_channels, n), master float32 (num_channels, n)), views of internal
        buffers valid until the next call. Real-time safe apart from pedalboard's own output arrays when effects run.
        """
        n = stems.shape[-1]
        busses = self._busses[:, :, :n]
        for i, s in enumerate(self._order):
            bus = busses[i]
            silent = s.gain.is_still and s.gain.value == 0.0  # settled at zero before this block
            gain = s.gain.next_block(n)
            if silent and not s.effects:
                bus.fill(0.0)
                continue
            multiply_rows(stems[i], gain, bus)
            for effect in s.effects:
                self._run_effect(effect, bus, n)
        mix = self._mix[:, :n]
        np.sum(busses, axis=0, out=mix)
        multiply_rows(mix, self._master.next_block(n), mix)
        return busses, mix

    def _run_effect(self, effect: _Effect, bus: np.ndarray, n: int) -> None:
        wet = effect.wet
        if wet.is_still and wet.value == 0.0:
            return  # bypassed and settled
        processed = effect.plugin.process(bus, self.sample_rate, buffer_size=n, reset=False)
        if processed.shape[-1] != n:  # plugins with variable-length output (PitchShift) need a FIFO, not this path
            return
        if wet.is_still and wet.value == 1.0:
            bus[:] = processed
            return
        mix = wet.next_block(n)
        bus += (processed - bus) * mix
