"""Tempo and key for a file deck, before separation: Rubber Band's real-time stretcher (pylibrb).

A deck plays its track through a ``DeckStretcher`` once its tempo is not 1 or its key is shifted. The stretcher
renders the deck's stream where the separation feed reads (``latency_samples`` ahead of what is heard); the heard
(dry) signal is the same stream delayed by ``latency_samples``, so the separator hears exactly what is played, only
earlier, and the stems sum to the deck's output as without tempo.

Keylock on: the time ratio changes, the pitch stays (``pitch_scale`` = key shift only). Keylock off: pitch follows
tempo, as a turntable. Rubber Band's own latency (its start delay) is discarded at every (re)start, so its output is
aligned with the track position it was started at; its size is reported (``latency_samples``).

Real-time: Rubber Band is built for it; pylibrb returns new NumPy arrays per call (as pedalboard does), nothing else
allocates. A (re)start (play, seek, loop jump, tempo on) renders ``read_ahead`` samples in one block to fill the
heard delay: a one-off CPU spike of a few blocks' work.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TEMPO, MAX_TEMPO = 0.5, 2.0
MAX_SEMITONES = 12.0


def stretcher_available() -> bool:
    try:
        import pylibrb  # noqa: F401
    except ImportError:
        return False
    return True


class DeckStretcher:
    """Renders a deck's stretched stream. ``read(pos, dst) -> pos`` reads the track (following loops)."""

    def __init__(self, num_channels: int, sample_rate: int, block_size: int, read_ahead: int) -> None:
        from pylibrb import Option, RubberBandStretcher

        options = Option.PROCESS_REALTIME | Option.ENGINE_FASTER | Option.PitchHighConsistency
        self.rb = RubberBandStretcher(
            sample_rate=int(sample_rate), channels=num_channels, options=options, initial_time_ratio=1.0,
            initial_pitch_scale=1.0,
        )  # fmt: skip
        self.max_process = 4 * block_size
        self.rb.set_max_process_size(self.max_process)
        self.num_channels, self.block_size, self.read_ahead = num_channels, block_size, read_ahead
        self._in = np.zeros((num_channels, self.max_process), dtype=np.float32)
        self._ring = np.zeros((num_channels, read_ahead + block_size), dtype=np.float32)
        self._write = 0
        self.tempo, self.keylock, self.semitones = 1.0, True, 0.0
        self.in_pos = 0
        self._skip = 0
        self.latency_samples = int(self.rb.get_start_delay())

    def configure(self, tempo: float, keylock: bool, semitones: float) -> None:
        """Set tempo (ratio, 1 = the track's), keylock and key shift in semitones. Takes effect at once."""
        self.tempo, self.keylock, self.semitones = tempo, keylock, semitones
        self.rb.time_ratio = 1.0 / tempo
        self.rb.pitch_scale = (1.0 if keylock else tempo) * 2.0 ** (semitones / 12.0)

    def restart(self, pos: int, read) -> None:
        """Start the stream at track position ``pos`` and fill the heard delay (``read_ahead`` samples)."""
        self.rb.reset()
        self.configure(self.tempo, self.keylock, self.semitones)
        pad = int(self.rb.get_preferred_start_pad())
        if pad:
            self.rb.process(np.zeros((self.num_channels, pad), dtype=np.float32))
        self._skip = int(self.rb.get_start_delay())
        self.latency_samples = self._skip
        self.in_pos = pos
        self._write = 0
        left = self.read_ahead
        chunk = np.zeros((self.num_channels, self.block_size), dtype=np.float32)
        while left > 0:
            k = min(left, self.block_size)
            self._render(read, chunk[:, :k])
            self._ring[:, self._write : self._write + k] = chunk[:, :k]
            self._write += k
            left -= k
        self._write %= self._ring.shape[1]

    def _render(self, read, dst: np.ndarray) -> None:
        n = dst.shape[-1]
        rb = self.rb
        while rb.available() < n + self._skip:
            k = min(max(int(rb.get_samples_required()), 1), self.max_process)
            self.in_pos = read(self.in_pos, self._in[:, :k])
            rb.process(self._in[:, :k])
        if self._skip:
            rb.retrieve(self._skip)
            self._skip = 0
        dst[:] = rb.retrieve(n)

    def feed(self, read, feed_dst: np.ndarray, heard_dst: np.ndarray) -> None:
        """The next block of the stream into ``feed_dst`` (for the separator) and the block ``read_ahead`` samples
        behind it into ``heard_dst`` (what the deck plays now). Both float32 (num_channels, n)."""
        n = feed_dst.shape[-1]
        self._render(read, feed_dst)
        ring, size = self._ring, self._ring.shape[1]
        w = self._write
        k = min(n, size - w)
        ring[:, w : w + k] = feed_dst[:, :k]
        ring[:, : n - k] = feed_dst[:, k:]
        r = (w - self.read_ahead) % size
        k = min(n, size - r)
        heard_dst[:, :k] = ring[:, r : r + k]
        heard_dst[:, k:] = ring[:, : n - k]
        self._write = (w + n) % size


def clamp_tempo(value: float) -> float:
    return min(max(value, MIN_TEMPO), MAX_TEMPO) if math.isfinite(value) else 1.0
