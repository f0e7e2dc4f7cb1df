"""Host-side streaming STFT and overlap-add inverse, with the framing the model contract fixes.

Frame ``k`` covers input samples ``[(k + 1) * hop - n_fft, (k + 1) * hop)``; the stream starts with ``n_fft - hop``
samples of zero history. The same window is used for analysis and synthesis and the overlap-add is divided by the
constant ``sum_k w(n - k * hop)^2``, so an all-pass mask reconstructs the input delayed by exactly ``n_fft - hop``
samples. Windows (``WINDOWS``, named in the model card):

* ``hann``: periodic Hann, the same as ``torch.hann_window(n_fft)``; its square overlap-adds to a constant for
  ``hop <= n_fft / 4``;
* ``vorbis``: the Vorbis power-complementary window ``sin(pi/2 sin^2(pi (n + 1/2) / n_fft))``, whose square
  overlap-adds to a constant already at ``hop = n_fft / 2`` (half the frames of Hann at a quarter hop, with
  sidelobes well below the sine window's).

Equivalent in torch (used in training)::

    torch.stft(F.pad(x, (n_fft - hop, 0)), n_fft, hop, window=torch.from_numpy(window(name, n_fft)), center=False)
"""

from __future__ import annotations

import numpy as np
import scipy.fft

WINDOWS = ("hann", "vorbis")


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window, float32 (n_fft,): the same as ``torch.hann_window(n_fft)``."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


def vorbis_window(n_fft: int) -> np.ndarray:
    """Vorbis power-complementary window, float32 (n_fft,): ``w(n)^2 + w(n + n_fft/2)^2 = 1``."""
    n = np.arange(n_fft, dtype=np.float64)
    return np.sin(0.5 * np.pi * np.sin(np.pi * (n + 0.5) / n_fft) ** 2).astype(np.float32)


def window(name: str, n_fft: int) -> np.ndarray:
    """The analysis/synthesis window called ``name`` (one of ``WINDOWS``), float32 (n_fft,)."""
    if name == "hann":
        return hann_window(n_fft)
    if name == "vorbis":
        return vorbis_window(n_fft)
    raise ValueError(f"unknown window {name!r} (supported: {', '.join(WINDOWS)})")


def ola_constant(window: np.ndarray, hop: int) -> float:
    """The constant that ``sum_k window(n - k * hop)^2`` takes; raises ValueError when it is not constant."""
    n_fft = window.shape[0]
    if n_fft % hop:
        raise ValueError(f"n_fft {n_fft} must be a multiple of hop_size {hop} for constant overlap-add")
    squared = (window.astype(np.float64) ** 2).reshape(n_fft // hop, hop).sum(axis=0)
    if np.ptp(squared) > 1e-6 * squared.mean():
        raise ValueError(f"window with hop {hop} does not overlap-add to a constant")
    return float(squared.mean())


class StreamingSTFT:
    """Analysis and synthesis for ``num_signals`` independent signals, one hop at a time or many hops per call.

    Buffers are preallocated for ``max_hops`` hops per call; ``analyse`` and ``synthesise`` are real-time safe
    apart from numpy's FFT work arrays.
    """

    def __init__(self, n_fft: int, hop: int, num_signals: int, max_hops: int, window_name: str = "hann") -> None:
        self.n_fft = n_fft
        self.hop = hop
        self.num_signals = num_signals
        self.max_hops = max_hops
        self.num_bins = n_fft // 2 + 1
        self.window = window(window_name, n_fft)
        self.synthesis_window = (self.window / ola_constant(self.window, hop)).astype(np.float32)
        history = n_fft - hop
        # Input ring: n_fft - hop samples of history, then up to max_hops * hop new samples.
        self._in = np.zeros((num_signals, history + max_hops * hop), dtype=np.float32)
        # Overlap-add accumulator: the tail still owed by earlier frames, plus room for new frames.
        self._ola = np.zeros((num_signals, n_fft + max_hops * hop), dtype=np.float32)
        self._frames = np.zeros((num_signals, max_hops, n_fft), dtype=np.float32)
        self._views: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        self._in[:] = 0.0
        self._ola[:] = 0.0

    def analyse(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 (num_signals, num_hops * hop) -> complex64 spectra (num_signals, num_hops, num_bins)."""
        num_hops = audio.shape[1] // self.hop
        history = self.n_fft - self.hop
        new = num_hops * self.hop
        self._in[:, history : history + new] = audio
        # frame k = samples [k * hop, k * hop + n_fft) of the buffer
        view = self._views.get(num_hops)
        if view is None:  # one strided view per distinct hop count, made once
            s0, s1 = self._in.strides
            shape = (self.num_signals, num_hops, self.n_fft)
            view = np.lib.stride_tricks.as_strided(self._in, shape=shape, strides=(s0, self.hop * s1, s1))
            self._views[num_hops] = view
        frames = self._frames[:, :num_hops]
        np.multiply(view, self.window, out=frames)
        spectra = scipy.fft.rfft(frames, axis=-1)  # float32 in, complex64 out
        # keep the last n_fft - hop samples as history for the next call
        self._in[:, :history] = self._in[:, new : new + history]
        return spectra

    def synthesise(self, spectra: np.ndarray, out: np.ndarray) -> None:
        """spectra: complex (num_signals, num_hops, num_bins) -> writes float32 out (num_signals, num_hops * hop).

        Output sample ``j`` of this call is input sample ``j - (n_fft - hop)`` of the stream (latency n_fft - hop).
        """
        num_hops = spectra.shape[1]
        frames = scipy.fft.irfft(spectra, n=self.n_fft, axis=-1)
        frames *= self.synthesis_window
        ola = self._ola
        hop = self.hop
        new = num_hops * hop
        # frame k lands at [k * hop, k * hop + n_fft): add its r-th hop-sized piece for all k at once
        for r in range(self.n_fft // hop):
            ola[:, r * hop : r * hop + new] += frames[:, :, r * hop : (r + 1) * hop].reshape(-1, new)
        out[:, :new] = ola[:, :new]
        tail = self.n_fft - self.hop
        ola[:, :tail] = ola[:, new : new + tail]
        ola[:, tail : tail + new] = 0.0
