"""BlockAdapter: runs a StreamingSeparator on host blocks of any size with one fixed, reported latency.

Input samples collect in a FIFO until whole hops are there; the separator turns them into stems; the stems wait in
an output FIFO primed with ``hop_size - gcd(block_size, hop_size)`` samples of silence, which is exactly enough for
every host block to be answered at once. So the total latency is
``separator.latency_samples + hop_size - gcd(block_size, hop_size)`` for a constant block size (zero extra when the
block size is a multiple of the hop), and ``separator.latency_samples + hop_size - 1`` when block sizes vary.
"""

from __future__ import annotations

import math

import numpy as np
from stembridge.engine.separator import StreamingSeparator


class BlockAdapter:
    """Adapts host blocks (1 to ``max_block_size`` frames) to the separator's hop."""

    def __init__(
        self, separator: StreamingSeparator, max_block_size: int = 8192, block_size: int | None = None
    ) -> None:
        """``block_size``: the host's constant block size if it has one (lower latency), else None (any size)."""
        if max_block_size < 1:
            raise ValueError("max_block_size must be at least 1")
        if block_size is not None and not 1 <= block_size <= max_block_size:
            raise ValueError(f"block_size {block_size} must be between 1 and max_block_size {max_block_size}")
        self.separator = separator
        self.max_block_size = max_block_size
        self.block_size = block_size
        hop = separator.hop_size
        self.extra_latency = hop - (math.gcd(block_size, hop) if block_size else 1)
        self.latency_samples = separator.latency_samples + self.extra_latency
        streams, channels, stems = separator.num_streams, separator.num_channels, separator.num_stems
        capacity = max_block_size + 2 * hop
        self._in = np.zeros((streams, channels, capacity), dtype=np.float32)
        self._in_len = 0
        self._out = np.zeros((streams, stems, channels, capacity + hop), dtype=np.float32)
        self._out_len = 0
        self._result = np.zeros((streams, stems, channels, max_block_size), dtype=np.float32)
        self.reset()

    @property
    def hop_size(self) -> int:
        return self.separator.hop_size

    def reset(self) -> None:
        """Forget all history; the output starts again with the latency's silence."""
        self.separator.reset()
        self._in_len = 0
        self._out[:] = 0.0
        self._out_len = self.extra_latency

    def process(self, block: np.ndarray) -> np.ndarray:
        """block: float32 (num_streams, num_channels, n), 1 <= n <= max_block_size.

        Returns stems float32 (num_streams, num_stems, num_channels, n), delayed by ``latency_samples``; a view
        of an internal buffer, valid until the next call.
        """
        n = block.shape[-1]
        if not 1 <= n <= self.max_block_size:
            raise ValueError(f"block of {n} frames is outside 1..{self.max_block_size}")
        if self.block_size is not None and n != self.block_size:
            raise ValueError(
                f"block of {n} frames, but this adapter was set up for constant blocks of {self.block_size}"
            )
        hop = self.hop_size
        self._in[:, :, self._in_len : self._in_len + n] = block
        self._in_len += n
        num_hops = self._in_len // hop
        if num_hops:
            used = num_hops * hop
            stems = self.separator.process(self._in[:, :, :used])
            self._out[..., self._out_len : self._out_len + used] = stems
            self._out_len += used
            left = self._in_len - used
            self._in[:, :, :left] = self._in[:, :, used : self._in_len]
            self._in_len = left
        if self._out_len < n:  # cannot happen with the priming above; guards against misuse
            raise RuntimeError("BlockAdapter output FIFO ran dry")
        result = self._result[..., :n]
        result[:] = self._out[..., :n]
        left = self._out_len - n
        self._out[..., :left] = self._out[..., n : self._out_len]
        self._out_len = left
        return result
