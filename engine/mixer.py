"""StemMixer: per-stem gain, mute, solo and effect chain, plus a master bus, all ramped.

Signal flow per stem: stem -> gain stage (gain_db x mute x solo, ramped) -> effect chain (pedalboard, streamed with
``reset=False``) -> delay compensation -> stem bus. The master is the sum of the stem busses times the master gain.

Plugin delay compensation. A plugin with latency (a look-ahead limiter, PitchShift, Resample, a VST3 that reports
latency) streams through pedalboard as output that is aligned with its input but delivered late: blocks of varying
length, fewer samples than went in until its latency is covered. Each such plugin gets a FIFO primed with exactly
that many samples of silence (its latency, measured when the chain is set by streaming silence through it:
``measure_latency``), so it answers every block in full, delayed by a fixed amount; its bypass crossfades against a
dry signal delayed by the same amount. Every other stem is then delayed to match the slowest chain, so the busses
stay aligned and still sum to the deck's input, delayed by ``latency_samples`` (reported). The gain stage sits
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


class DelayLine:
    """A multichannel delay of up to ``max_delay`` samples, for blocks of up to ``max_block_size``. Real-time safe."""

    def __init__(self, num_channels: int, max_delay: int, max_block_size: int) -> None:
        self._buf = np.zeros((num_channels, max_delay + max_block_size), dtype=np.float32)
        self._write = 0

    def process(self, block: np.ndarray, delay: int, out: np.ndarray) -> None:
        """out = block delayed by ``delay`` samples (block, out: float32 (num_channels, n); may be the same array)."""
        buf, size, n = self._buf, self._buf.shape[1], block.shape[-1]
        w = self._write
        k = min(n, size - w)
        buf[:, w : w + k] = block[:, :k]
        buf[:, : n - k] = block[:, k:]
        r = (w - delay) % size
        k = min(n, size - r)
        out[:, :k] = buf[:, r : r + k]
        out[:, k:] = buf[:, : n - k]
        self._write = (w + n) % size


class LatencyFifo:
    """Turns a plugin's late, variable-length output back into full blocks: primed with ``latency`` samples of
    silence, it takes whatever the plugin returned and gives back exactly the block asked for. Real-time safe."""

    def __init__(self, num_channels: int, latency: int, max_block_size: int) -> None:
        self.latency = latency
        self._buf = np.zeros((num_channels, latency + 8 * max_block_size), dtype=np.float32)
        self._len = latency
        self.num_short = 0  # blocks the plugin was later than its measured latency (answered with silence)

    def exchange(self, produced: np.ndarray, out: np.ndarray) -> None:
        """produced: float32 (num_channels, m), any m; out: float32 (num_channels, n) filled from the FIFO."""
        m, n, buf = produced.shape[-1], out.shape[-1], self._buf
        m = min(m, buf.shape[1] - self._len)
        buf[:, self._len : self._len + m] = produced[:, :m]
        self._len += m
        take = min(n, self._len)
        out[:, :take] = buf[:, :take]
        if take < n:
            out[:, take:] = 0.0
            self.num_short += 1
        left = self._len - take
        buf[:, :left] = buf[:, take : self._len]
        self._len = left


def measure_latency(plugin: Any, sample_rate: float, block_size: int, num_channels: int = 2, max_s: float = 4.0) -> int:
    """A plugin's latency in samples: how far its streamed output falls behind its input (pedalboard delivers a
    latent plugin's output aligned but late). Streams silence for up to ``max_s`` seconds, then resets the plugin.
    Not real-time (run it when a chain is built)."""
    block = np.zeros((num_channels, block_size), dtype=np.float32)
    fed = got = worst = 0
    steady = 0
    limit = int(max_s * sample_rate)
    while fed < limit:
        out = plugin.process(block, float(sample_rate), buffer_size=block_size, reset=False)
        fed += block_size
        got += out.shape[-1]
        deficit = fed - got
        steady = steady + 1 if deficit <= worst and got > 0 else 0
        worst = max(worst, deficit)
        if steady >= 32:
            break
    plugin.reset()
    return worst


def chain_latencies(board: Any, sample_rate: float, block_size: int, num_channels: int = 2) -> tuple[int, ...]:
    """``measure_latency`` of each plugin of a chain, in order."""
    return tuple(measure_latency(p, sample_rate, block_size, num_channels) for p in board)


@dataclass
class _Effect:
    name: str
    plugin: Any
    wet: Ramp  # 1 = active, 0 = bypassed; crossfaded on toggles
    fifo: LatencyFifo | None = None  # for a plugin with latency
    dry: DelayLine | None = None  # the bypass path, delayed like the plugin

    @property
    def latency(self) -> int:
        return self.fifo.latency if self.fifo is not None else 0


@dataclass
class _Stem:
    name: str
    gain_db: float = 0.0
    mute: bool = False
    solo: bool = False
    gain: Ramp | None = None
    effects: list[_Effect] = field(default_factory=list)
    compensation: int = 0  # samples this stem is delayed to line up with the slowest chain

    @property
    def chain_latency(self) -> int:
        return sum(e.latency for e in self.effects)


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
        max_latency_s: float = 2.0,
    ) -> None:
        self.stems = tuple(stems)
        self.max_latency = int(max_latency_s * sample_rate)  # the most delay compensation can add
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
        self._wet = np.zeros((num_channels, max_block_size), dtype=np.float32)
        self._dry = np.zeros((num_channels, max_block_size), dtype=np.float32)
        self._lines = [DelayLine(num_channels, self.max_latency, max_block_size) for _ in self.stems]
        self.latency_samples = 0  # the slowest chain's latency: every bus is delayed by this much
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

    def set_chain(
        self,
        stem: str,
        board: Any,
        names: tuple[str, ...] | None = None,
        latencies: tuple[int, ...] | None = None,
    ) -> None:
        """Swap in a prepared pedalboard chain (any iterable of plugins). The old chain is dropped by reference.

        latencies: each plugin's latency in samples at this mixer's rate (``chain_latencies``); measured here when
        not given, which streams seconds of silence through latent plugins: give them when swapping on the audio
        thread (``SwapChain.latencies``). The delay compensation of every stem follows."""
        plugins = list(board)
        names = tuple(names) if names is not None else plugin_names(plugins)
        if len(names) != len(plugins):
            raise ValueError(f"{len(names)} names given for a chain of {len(plugins)} plugins")
        if latencies is None:
            latencies = chain_latencies(plugins, self.sample_rate, self.max_block_size, self.num_channels)
        if len(latencies) != len(plugins):
            raise ValueError(f"{len(latencies)} latencies given for a chain of {len(plugins)} plugins")
        if sum(latencies) > self.max_latency:
            raise ValueError(f"the chain's latency {sum(latencies)} exceeds the {self.max_latency} samples compensated")
        effects = []
        for n, p, latency in zip(names, plugins, latencies, strict=True):
            effect = _Effect(n, p, self._ramp(1.0))
            if latency > 0:
                effect.fifo = LatencyFifo(self.num_channels, latency, self.max_block_size)
                effect.dry = DelayLine(self.num_channels, latency, self.max_block_size)
            effects.append(effect)
        self._stems[stem].effects = effects
        self._compensate()

    def _compensate(self) -> None:
        """Delay every stem to line up with the slowest chain."""
        self.latency_samples = max(s.chain_latency for s in self._order)
        for s in self._order:
            s.compensation = self.latency_samples - s.chain_latency

    def chain_latency(self, stem: str) -> int:
        """The latency of a stem's effect chain in samples (before compensation)."""
        return self._stems[stem].chain_latency

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
            self.set_chain(command.stem, command.board, command.names, getattr(command, "latencies", None))
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
            if silent and not s.effects and not self.latency_samples:
                bus.fill(0.0)
                continue
            multiply_rows(stems[i], gain, bus)
            for effect in s.effects:
                self._run_effect(effect, bus, n)
            if self.latency_samples:
                self._lines[i].process(bus, s.compensation, bus)
        mix = self._mix[:, :n]
        np.sum(busses, axis=0, out=mix)
        multiply_rows(mix, self._master.next_block(n), mix)
        return busses, mix

    def _run_effect(self, effect: _Effect, bus: np.ndarray, n: int) -> None:
        wet = effect.wet
        if effect.fifo is not None:
            self._run_latent(effect, bus, n)
            return
        if wet.is_still and wet.value == 0.0:
            return  # bypassed and settled
        processed = effect.plugin.process(bus, self.sample_rate, buffer_size=n, reset=False)
        if processed.shape[-1] != n:  # latent, but measured as not: leave the bus as it is
            return
        if wet.is_still and wet.value == 1.0:
            bus[:] = processed
            return
        mix = wet.next_block(n)
        bus += (processed - bus) * mix

    def _run_latent(self, effect: _Effect, bus: np.ndarray, n: int) -> None:
        """A plugin with latency: it always runs (so its delay never changes), through its FIFO; bypass crossfades
        to the dry signal delayed by the same latency."""
        wet_out, dry = self._wet[:, :n], self._dry[:, :n]
        processed = effect.plugin.process(bus, self.sample_rate, buffer_size=n, reset=False)
        effect.fifo.exchange(processed, wet_out)
        effect.dry.process(bus, effect.latency, dry)
        wet = effect.wet
        if wet.is_still and wet.value == 1.0:
            bus[:] = wet_out
        elif wet.is_still and wet.value == 0.0:
            bus[:] = dry
        else:
            mix = wet.next_block(n)
            np.subtract(wet_out, dry, out=wet_out)
            multiply_rows(wet_out, mix, wet_out)
            np.add(dry, wet_out, out=bus)
