"""LiveEngine: decks in, stem busses and a stereo master out, one host block at a time.

Per block (``process_block``, the one audio-thread entry point):

1. drain each deck's ``CommandQueue`` (mixer and deck parameters, never blocking);
2. each deck writes its input for the separation worker into the worker's input ring (a file deck reads ahead of its
   playhead by the engine's latency) and the worker is woken;
3. the stems of the block committed ``fifo_periods`` blocks ago are taken from the output ring if the worker has
   delivered them; each deck's stems are crossfaded with its dry signal (below), go through the deck's ``StemMixer``
   (ramped gain/mute/solo, effect chains), and are summed over decks into the stem busses and the master.

Deadline misses. The engine looks one block ahead: if the stems for the *next* block are not there yet, this block
fades separation out (linearly across the block) and the deck's dry, latency-aligned signal in, on the dry bus
(the model's residual stem, "other", or the last stem). While the worker is late the dry mix plays on that bus;
when it catches up, separation fades back in across one block. Because the residual stem makes the stems sum to the
input, the master is the same either way: nothing goes silent, nothing clicks, the mix only loses its separation for
a moment. Misses are counted (``num_misses``) together with the blocks that played any dry signal.

A miss never undoes a mute. The dry signal holds every stem, so it is scaled by
``StemMixer.dry_fallback_scale`` (the lowest stem gain over the dry stem's, ramped over a block): with every stem at
one gain that is 1 and the fallback is exact; with a stem muted or a solo active it is 0, and the deck dips for the
length of the miss (faded out and in) rather than letting a muted vocal back in on "other".

Output channels (``output_names``), stereo pairs in this order:

- ``outputs="summed"`` (or "both"): master_L/R, then <stem>_L/R per stem in the model's order (all decks summed);
- ``outputs="per-deck"`` (or "both"): deck<n>_master_L/R, then deck<n>_<stem>_L/R, for each deck in turn;
- with ``cue=True``: cue_L/R, the headphone (PFL) pair: the decks whose ``pfl`` switch is on, blended with the
  master by ``cue/mix`` (0 = cue only, 1 = master only) and scaled by ``cue/gain_db``; with ``cue_first=True`` it
  comes right after the first master pair (a 4-channel interface: master on 1-2, headphones on 3-4).

Engine-wide parameters (``cue/mix``, ``cue/gain_db``) arrive on ``engine_queue``; each deck's ``pfl`` on its own.
Input channels (``input_names``): in<deck>_L, in<deck>_R for each live input deck, in deck order.
"""

from __future__ import annotations

import math
import time

import numpy as np
from stembridge.engine.commands import CommandQueue, LoadTrack, SetHqStems
from stembridge.engine.live.deck import Deck, InputDeck
from stembridge.engine.live.worker import HIST_BIN_NS, HIST_BINS, SeparationWorker
from stembridge.engine.mixer import Ramp, StemMixer, db_to_gain
from stembridge.engine.rt import add_rows_scaled, multiply_rows

CHANNEL_NAMES = ("L", "R")
DECK_PATHS = ("level_db", "pfl")  # deck parameters besides transport/...
OUTPUT_LAYOUTS = ("summed", "per-deck", "both")
ENGINE_PATHS = {
    "cue/mix": "headphones: 0 = the cued (PFL) decks only, 1 = the master only, between: a blend",
    "cue/gain_db": "headphone level in dB (-120 = silence), ramped",
}


def hist_percentile_ms(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of a 10-us-bin duration histogram, in ms (upper bin edge)."""
    total = int(hist.sum())
    if total == 0:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total))
    return (k + 1) * HIST_BIN_NS / 1e6


class _DeckSlot:
    """Routes a deck's commands: deck parameters to the deck, everything else to its mixer."""

    __slots__ = ("deck", "mixer", "num_rejected", "hq", "hq_track")

    def __init__(self, deck: Deck, mixer: StemMixer, hq=None) -> None:
        self.deck, self.mixer, self.num_rejected = deck, mixer, 0
        self.hq = hq  # engine.live.hq_stems.HqPlayback of a file deck, or None
        self.hq_track = None  # the deck track its stems belong to

    def apply(self, command) -> None:
        if isinstance(command, SetHqStems):
            if self.hq is None:
                self.num_rejected += 1
            else:
                self.hq.set_track(command.stems)
                self.hq_track = command.track
            return
        path = getattr(command, "path", "")
        if path.startswith("transport/") or path in DECK_PATHS or isinstance(command, LoadTrack):
            self.deck.apply(command)
        elif not self.mixer.apply(command):
            self.num_rejected += 1


class LiveEngine:
    """The live engine. Build it, ``start()`` its worker, then call ``process_block`` from the device callback.

    separator: a StreamingSeparator with ``num_streams == len(decks)``. block_size: the host period (constant).
    fifo_periods: how many periods the stems may take (>= 2); default 2 with a live input deck (latency matters),
    4 with file decks only (their read-ahead hides it, and the worker gets more slack).
    worker_mode: "thread" or "process" (see ``engine.live.worker``; ``stembridge live`` uses a process).
    """

    def __init__(
        self,
        separator,
        decks: list[Deck],
        block_size: int,
        *,
        fifo_periods: int | None = None,
        ramp_ms: float = 10.0,
        num_slots: int = 64,
        queue_len: int = 1024,
        worker_mode: str = "thread",
        worker_rt_priority: int = 0,
        outputs: str = "summed",
        cue: bool = False,
        cue_first: bool = False,
    ) -> None:
        if outputs not in OUTPUT_LAYOUTS:
            raise ValueError(f"outputs must be one of {', '.join(OUTPUT_LAYOUTS)}, not {outputs!r}")
        if not decks:
            raise ValueError("the engine needs at least one deck")
        if separator.num_streams != len(decks):
            raise ValueError(f"the separator serves {separator.num_streams} stream(s) but there are {len(decks)} decks")
        if fifo_periods is None:
            fifo_periods = 2 if any(isinstance(d, InputDeck) for d in decks) else 4
        self.separator = separator
        self.card = separator.card
        self.stems = tuple(separator.stems)
        self.sample_rate = int(separator.sample_rate)
        self.num_channels = separator.num_channels
        self.block_size = block_size
        self.fifo_periods = fifo_periods
        self.decks = list(decks)
        self.worker = SeparationWorker(
            separator, block_size, fifo_periods, num_slots, mode=worker_mode, rt_priority=worker_rt_priority
        )
        self.latency_samples = self.worker.latency_samples
        self.dry_stem = self.card.residual_stem or self.stems[-1]
        self._dry_index = self.stems.index(self.dry_stem)
        for deck in self.decks:
            deck.prepare(
                sample_rate=self.sample_rate,
                block_size=block_size,
                latency_samples=self.latency_samples,
                settle_blocks=self.worker.settle_blocks + fifo_periods,
            )
        # decks that carry their own stems (engine.live.stem_deck.StemFileDeck) bypass the worker's output
        self._own_stems = [getattr(deck, "stems_block", None) for deck in self.decks]
        self.mixers = [
            StemMixer(self.stems, self.num_channels, self.sample_rate, max_block_size=block_size, ramp_ms=ramp_ms)
            for _ in self.decks
        ]
        # per deck: the gain on its dry signal when it stands in for the stems (StemMixer.dry_fallback_scale),
        # ramped over one block and advanced every block, so a mute made long before a miss is already at zero
        self._fallback = [Ramp(1.0, block_size, block_size) for _ in self.decks]
        self.queues = [CommandQueue(queue_len) for _ in self.decks]
        # high-quality stems a file deck may be given (SetHqStems): one block buffer and crossfade per file deck
        from stembridge.engine.live.hq_stems import HqPlayback

        self.hq = [
            HqPlayback(block_size, self.num_channels) if getattr(d, "loadable", False) and not hasattr(d, "stems_block")
            else None
            for d in self.decks
        ]  # fmt: skip
        self._hq_pos = [0] * len(self.decks)  # each deck's playhead at the block's start (after its jump, if any)
        self._hq_from: list[int | None] = [None] * len(self.decks)  # where a jump in this block comes from
        self._hq_old = np.zeros((len(self.stems), self.num_channels, block_size), dtype=np.float32)
        self._hq_next = [-1] * len(self.decks)  # where each deck's next block would start without a jump
        # (stems * channels, n) views of the HQ block buffers, made once: a jump's block blends them row by row
        self._hq_flat = [h.block.reshape(-1, block_size) if h is not None else None for h in self.hq]
        self._hq_old_flat = self._hq_old.reshape(-1, block_size)
        self.num_hq_blocks = 0  # deck blocks that played high-quality stems (in part, during a fade)
        self._slots = [_DeckSlot(d, m, h) for d, m, h in zip(self.decks, self.mixers, self.hq, strict=True)]
        self._appliers = [s.apply for s in self._slots]
        self._input_ranges = []
        first = 0
        for deck in self.decks:
            self._input_ranges.append((first, first + deck.num_inputs))
            first += deck.num_inputs
        self.num_inputs = first
        self.outputs, self.cue, self.cue_first = outputs, cue, cue_first
        self.engine_queue = CommandQueue(queue_len)
        self.num_engine_rejected = 0
        self.cue_mix = 0.0
        self.cue_gain_db = 0.0
        self._cue_mix = Ramp(0.0, block_size, block_size)
        self._cue_gain = Ramp(1.0, block_size, block_size)
        self._build_buffers()
        self._routes = self._build_routes()
        self.num_outputs = len(self._routes) * self.num_channels
        self._weights = [0.0] * len(self.decks)  # separation weight at the end of the last block, per deck
        self._was_silent = [True] * len(self.decks)
        self.block = 0
        self.num_misses = 0  # blocks whose look-ahead found the worker late (separation faded out)
        self.num_dry_blocks = 0  # blocks in which a playing deck played any dry signal
        self.num_bad_blocks = 0  # blocks of the wrong size (the host changed its period): answered with silence
        self.cb_ns = np.zeros(8192, dtype=np.int64)  # recent callback durations (ring)
        self.cb_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)  # all callback durations, 10 us bins
        self.cb_max_ns = 0
        self.taps: list = []  # objects with push(out) (real-time safe), e.g. a Recorder

    def _build_buffers(self) -> None:
        n, ch, s, d = self.block_size, self.num_channels, len(self.stems), len(self.decks)
        self._stems_in = np.zeros((d, s, ch, n), dtype=np.float32)
        self._dry = np.zeros((d, ch, n), dtype=np.float32)
        self._busses = np.zeros((s, ch, n), dtype=np.float32)
        self._master = np.zeros((ch, n), dtype=np.float32)
        self._cue = np.zeros((ch, n), dtype=np.float32)  # the PFL sum
        self._cue_out = np.zeros((ch, n), dtype=np.float32)  # what the headphones get
        self._ramp = np.zeros(n, dtype=np.float32)
        self._inv = np.zeros(n, dtype=np.float32)
        self._row = np.zeros(n, dtype=np.float32)
        self._steps = (np.arange(1, n + 1, dtype=np.float32) / n).astype(np.float32)
        self._no_input = np.zeros((0, n), dtype=np.float32)
        self.meter_frames = n * max(1, -(-2048 // n))
        self.meters = np.zeros((d, s + 1, ch, self.meter_frames), dtype=np.float32)  # per deck: stems + master
        self.meter_pos = 0

    def _build_routes(self) -> list[tuple[str, np.ndarray]]:
        """(pair name, source buffer float32 (num_channels, block_size)) per output pair, in output order. The
        sources are persistent buffers (the engine's sums, each deck mixer's own bus and master buffers), so the
        audio thread only copies."""
        routes: list[tuple[str, np.ndarray]] = []
        n = self.block_size
        if self.outputs in ("summed", "both"):
            routes.append(("master", self._master))
            routes += [(stem, self._busses[k]) for k, stem in enumerate(self.stems)]
        if self.outputs in ("per-deck", "both"):
            for i, mixer in enumerate(self.mixers, start=1):
                routes.append((f"deck{i}_master", mixer._mix[:, :n]))
                routes += [(f"deck{i}_{stem}", mixer._busses[k, :, :n]) for k, stem in enumerate(self.stems)]
        if self.cue:
            routes.insert(1 if self.cue_first else len(routes), ("cue", self._cue_out))
        return routes

    # -- names --
    def output_names(self) -> list[str]:
        names = []
        for pair, _src in self._routes:
            names += [f"{pair}_{c}" for c in CHANNEL_NAMES[: self.num_channels]]
        return names

    def input_names(self) -> list[str]:
        names = []
        for i, deck in enumerate(self.decks, start=1):
            if deck.num_inputs:
                names += [f"in{i}_{c}" for c in CHANNEL_NAMES[: deck.num_inputs]]
        return names

    # -- control side --
    def push(self, deck: int, command) -> bool:
        """Queue a command for deck ``deck`` (1-based; 0: the engine itself, ``ENGINE_PATHS``); False when its queue
        is full. Never blocks."""
        if deck == 0:
            return self.engine_queue.push(command)
        return self.queues[deck - 1].push(command)

    def _apply_engine(self, command) -> None:
        """An engine-wide parameter (``ENGINE_PATHS``). Real-time safe."""
        path, value = getattr(command, "path", ""), float(getattr(command, "value", math.nan))
        if not math.isfinite(value):
            self.num_engine_rejected += 1
        elif path == "cue/mix":
            self.cue_mix = min(max(value, 0.0), 1.0)
            self._cue_mix.set(self.cue_mix)
        elif path == "cue/gain_db":
            self.cue_gain_db = value
            self._cue_gain.set(db_to_gain(value))
        else:
            self.num_engine_rejected += 1

    def start(self) -> LiveEngine:
        """Start the separation worker (it warms the model up first, so the first real block is not slow)."""
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop()

    def close(self) -> None:
        self.worker.close()

    def _apply_hq(self, i: int, deck, stems_in: np.ndarray, n: int) -> None:
        """Replace deck ``i``'s stems of this block by its high-quality ones where they are ready, crossfading over
        one block either way (``HqPlayback.crossfade``); both sum to the deck's dry signal, so the sum holds through
        the fade. A jump's block (the deck crossfades two positions) takes both positions' HQ stems with the deck's
        own fade. Not while the deck stretches (tempo or key: its audio is not the track's samples then), nor for
        a block across a loop splice. Real-time safe."""
        hq = self.hq[i]
        buf = hq.block
        pos, old = self._hq_pos[i], self._hq_from[i]
        if pos != self._hq_next[i]:  # a load, seek, cue or loop jump: analysis goes to the new playhead first
            hq.track.request(pos)
        self._hq_next[i] = deck.position_after(pos, n) if deck.playing else pos
        ready = (
            self._slots[i].hq_track is deck.track
            and deck.playing
            and not deck.stretching
            and not _crosses_loop(deck, pos, n)
            and hq.track.read(pos, buf)
        )
        if ready and old is not None:
            ready = not _crosses_loop(deck, old, n) and hq.track.read(old, self._hq_old)
            if ready:
                deck.blend_jump(self._hq_flat[i], self._hq_old_flat)
        ready_next = bool(ready) and hq.track.ready_at(deck.position_after(pos, n), n)
        hq.crossfade.process(stems_in, buf, bool(ready), ready_next, stems_in)
        if ready:
            self.num_hq_blocks += 1

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.sample_rate

    # -- audio thread --
    def process_block(self, inp: np.ndarray, out: np.ndarray) -> None:
        """inp: float32 (num_inputs, n); out: float32 (num_outputs, n), written in full. n must equal block_size
        (otherwise the block is answered with silence and counted). Real-time safe: only copies and mixes into
        preallocated buffers (pedalboard effects allocate their own output arrays)."""
        t0 = time.perf_counter_ns()
        n = out.shape[-1]
        if n != self.block_size:
            out.fill(0.0)
            self.num_bad_blocks += 1
            return
        t = self.block
        worker = self.worker
        decks = self.decks
        if len(self.engine_queue):
            self.engine_queue.drain(self._apply_engine)
        for i, queue in enumerate(self.queues):
            if len(queue):
                queue.drain(self._appliers[i])
        slot = worker.input_slot(t)
        for i, deck in enumerate(decks):
            a, b = self._input_ranges[i]
            deck_in = inp[a:b] if b > a else self._no_input
            self._was_silent[i] = deck.silent
            deck.begin_block(t)
            self._hq_pos[i] = getattr(deck, "playhead", 0)
            self._hq_from[i] = getattr(deck, "jump_from", None)
            deck.feed(slot[i], deck_in)
            deck.dry(self._dry[i], deck_in)
        worker.commit()
        j = t - self.fifo_periods
        have = worker.ready(j)
        ahead = worker.ready(j + 1)
        if not ahead and j + 1 >= 0 and worker.done <= j + 1:
            self.num_misses += 1
        sep = worker.output_slot(j) if have else None
        busses, master, cue = self._busses, self._master, self._cue
        busses.fill(0.0)
        master.fill(0.0)
        cue.fill(0.0)
        any_dry = False
        for i, deck in enumerate(decks):
            # a deck that was silent starts on its dry signal: its stems are of the silence (a paused deck
            # feeds zeros), and its own fade-in already shapes the start
            w0 = self._weights[i] if (have and not self._was_silent[i]) else 0.0
            w1 = 1.0 if (have and ahead and deck.sep_valid(t)) else 0.0
            self._weights[i] = w1
            stems_in = self._stems_in[i]
            dry = self._dry[i]
            own = self._own_stems[i]
            fallback = self._fallback[i]
            fallback.set(self.mixers[i].dry_fallback_scale(self._dry_index))
            still_unity = fallback.is_still and fallback.value == 1.0
            scale = fallback.next_block(n)
            if own is None and not still_unity and not (w0 == 1.0 and w1 == 1.0):
                multiply_rows(dry, scale, dry)
            if own is not None:
                np.copyto(stems_in, own)  # a stem file's own stems: no separation, no dry fallback needed
            elif w0 == 1.0 and w1 == 1.0:
                np.copyto(stems_in, sep[i])
            elif w0 == 0.0 and w1 == 0.0:
                stems_in.fill(0.0)
                stems_in[self._dry_index] = dry
                any_dry = any_dry or not deck.silent
            else:
                ramp = self._ramp
                np.multiply(self._steps, w1 - w0, out=ramp)
                ramp += w0
                multiply_rows(sep[i], ramp, stems_in)
                np.subtract(1.0, ramp, out=self._inv)
                add_rows_scaled(dry, self._inv, stems_in[self._dry_index], self._row)
                any_dry = any_dry or not deck.silent
            if self.hq[i] is not None and self.hq[i].track is not None:
                self._apply_hq(i, deck, stems_in, n)
            gain = deck.gain(n)
            if gain is not None:
                multiply_rows(stems_in, gain, stems_in)
            deck_busses, deck_master = self.mixers[i].process(stems_in)
            pfl = deck.pfl_gain(n)
            if pfl is not None:  # pre-fader: a deck pulled down on the master can still be cued
                add_rows_scaled(deck_master, pfl, cue, self._row)
            level = deck.level_gain(n)
            if level is not None:
                multiply_rows(deck_busses, level, deck_busses)
                multiply_rows(deck_master, level, deck_master)
            busses += deck_busses
            master += deck_master
            p = self.meter_pos
            self.meters[i, :-1, :, p : p + n] = deck_busses
            self.meters[i, -1, :, p : p + n] = deck_master
            deck.end_block()
        if any_dry:
            self.num_dry_blocks += 1
        if self.cue:
            self._mix_cue(n)
        ch = self.num_channels
        row = 0
        for _pair, src in self._routes:
            out[row : row + ch] = src
            row += ch
        self.meter_pos = (self.meter_pos + n) % self.meter_frames
        for tap in self.taps:
            tap.push(out)
        self.block = t + 1
        dt = time.perf_counter_ns() - t0
        self.cb_ns[t % len(self.cb_ns)] = dt
        self.cb_hist[min(dt // HIST_BIN_NS, HIST_BINS)] += 1
        if dt > self.cb_max_ns:
            self.cb_max_ns = dt

    def _mix_cue(self, n: int) -> None:
        """cue_out = gain * ((1 - mix) * cue + mix * master), both ramped. Real-time safe."""
        mix, gain, out = self._cue_mix, self._cue_gain, self._cue_out
        if mix.is_still and mix.value == 0.0:
            np.copyto(out, self._cue)
        elif mix.is_still and mix.value == 1.0:
            np.copyto(out, self._master)
        else:
            ramp = mix.next_block(n)
            np.subtract(1.0, ramp, out=self._inv)
            multiply_rows(self._cue, self._inv, out)
            add_rows_scaled(self._master, ramp, out, self._row)
        if not (gain.is_still and gain.value == 1.0):
            multiply_rows(out, gain.next_block(n), out)

    # -- statistics (control side) --
    def callback_times_ms(self) -> np.ndarray:
        """Recent callback durations in ms (up to the last 8192 blocks)."""
        return self.cb_ns[: min(self.block, len(self.cb_ns))] / 1e6

    def stats(self) -> dict:
        """Counters and timings for logs, the OSC status push and benchmarks. Not real-time.

        Callback and worker percentiles cover the whole run (10 us histogram bins)."""
        period_ms = 1000.0 * self.block_size / self.sample_rate
        return {
            "blocks": self.block,
            "deadline_misses": self.num_misses,
            "dry_blocks": self.num_dry_blocks,
            "skipped_blocks": self.worker.num_skipped,
            "bad_blocks": self.num_bad_blocks,
            "commands_dropped": sum(q.num_dropped for q in self.queues),
            "commands_rejected": sum(s.num_rejected + s.deck.num_rejected for s in self._slots)
            + self.num_engine_rejected,
            "callback_ms_p50": hist_percentile_ms(self.cb_hist, 50),
            "callback_ms_p99": hist_percentile_ms(self.cb_hist, 99),
            "callback_ms_p999": hist_percentile_ms(self.cb_hist, 99.9),
            "callback_ms_max": self.cb_max_ns / 1e6,
            "worker_ms_p50": hist_percentile_ms(self.worker.call_hist, 50),
            "worker_ms_p99": hist_percentile_ms(self.worker.call_hist, 99),
            "worker_ms_max": self.worker.call_max_ns / 1e6,
            "worker_calls": self.worker.num_calls,
            "worker_cpu_s": self.worker.cpu_s,
            "worker_failures": self.worker.num_failures,
            "period_ms": period_ms,
            "latency_samples": self.latency_samples,
            "latency_ms": self.latency_ms,
            "fx_latency_samples": max(m.latency_samples for m in self.mixers),
            "tempo_latency_samples": max(d.status().get("tempo_latency_samples", 0) for d in self.decks),
            "sample_rate": self.sample_rate,
            "model_sample_rate": int(self.card.sample_rate),
            "resample_latency_ms": 1000.0 * getattr(self.separator, "resampler_latency_samples", 0) / self.sample_rate,
        }

    def meter_levels(self) -> list[dict[str, tuple[float, float]]]:
        """Per deck {stem or "master": (peak, rms)} over the last ~2048 frames (linear). Not real-time."""
        m = self.meters  # read while the audio thread writes: a meter may mix two blocks, which is fine
        peak = np.abs(m).max(axis=(2, 3))  # abs, not max(max, -min): a silent stem reads 0.0, never -0.0
        rms = np.sqrt(np.einsum("dscn,dscn->ds", m, m) / (m.shape[2] * m.shape[3]))
        names = [*self.stems, "master"]
        return [{name: (float(peak[d, k]), float(rms[d, k])) for k, name in enumerate(names)} for d in range(len(peak))]


def _crosses_loop(deck, pos: int, n: int) -> bool:
    """Whether the deck's block of ``n`` frames from ``pos`` wraps at its loop end (not one run of the track)."""
    return bool(deck.loop_on and pos < deck.loop_end < pos + n)
