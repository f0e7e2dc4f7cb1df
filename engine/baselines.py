"""Reference separators for the quality evaluation: a trivial estimate, a classical DSP separator and an oracle.

None of these is a product feature; they put the model's figures on a scale (``engine/evaluate.py``):

- ``mixture_fraction``: every stem estimated as ``mixture / num_stems``. The floor: a separator that does not
  clearly beat it is not worth running.
- ``ClassicalSeparator``: an honest hand-set DSP separator (median-filter HPSS, band filters, centre extraction).
  Offline and non-causal. Its parameters were set once from textbook values and are NOT tuned on any test song.
- ``ideal_ratio_mask``: the oracle ratio mask, computed from the true stems with a model's own STFT
  (the host framing of ``engine.stft``). Non-causal knowledge of the answer: the upper bound for a mask model with
  that STFT.

Audio is float32 (num_channels, num_frames); stems are float32 (num_stems, num_channels, num_frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import istft, stft
from stembridge.engine.stft import StreamingSTFT

STEMS = ("vocals", "drums", "bass", "other")


def mixture_fraction(mixture: np.ndarray, num_stems: int = 4) -> np.ndarray:
    """mixture: float32 (num_channels, n) -> float32 (num_stems, num_channels, n), every stem mixture / num_stems."""
    return np.repeat((mixture / num_stems)[None], num_stems, axis=0).astype(np.float32)


def _raised_cosine(freqs_hz: np.ndarray, start_hz: float, stop_hz: float) -> np.ndarray:
    """0 below ``start_hz``, 1 above ``stop_hz``, a half-cosine in between (a soft band edge)."""
    x = np.clip((freqs_hz - start_hz) / (stop_hz - start_hz), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class ClassicalSettings:
    """The classical separator's parameters, in physical units so they mean the same at every sample rate.

    Set once by hand (textbook values), never tuned on evaluation songs:
    - STFT of about 93 ms (4096 samples at 44.1 kHz), hop a quarter of it, periodic Hann.
    - HPSS (Fitzgerald 2010): the harmonic part is a median over ``harmonic_kernel_s`` along time, the percussive
      part a median over ``percussive_kernel_hz`` along frequency (17 frames and 17 bins at 44.1 kHz, as in the
      paper), combined into soft Wiener masks with power 2.
    - Bass: the harmonic part below ``bass_full_hz``, fading out with a half-cosine by ``bass_cutoff_hz``.
    - Vocals: the harmonic part above the bass band, inside ``vocal_band_hz`` (soft edges), and only where the two
      channels agree: inter-channel similarity ``2 Re(L R*) / (|L|^2 + |R|^2)`` (1 for a centred source) mapped
      through a smoothstep from ``centre_similarity[0]`` (about 50 % off-centre in constant-power panning) to
      ``centre_similarity[1]`` (about 15 % off-centre).
    - Other: the residual (mixture minus the three), so the stems sum to the mixture exactly.
    """

    stft_s: float = 0.093
    harmonic_kernel_s: float = 0.4
    percussive_kernel_hz: float = 180.0
    bass_full_hz: float = 150.0
    bass_cutoff_hz: float = 250.0
    vocal_band_hz: tuple[float, float, float, float] = (150.0, 300.0, 6000.0, 10000.0)
    centre_similarity: tuple[float, float] = (0.7, 0.95)


class ClassicalSeparator:
    """Hand-set DSP separator into (vocals, drums, bass, other); offline, non-causal. See ``ClassicalSettings``."""

    name = "classical"
    description = (
        "median-filter HPSS (drums = percussive), harmonic part below 150-250 Hz (bass), centre extraction "
        "of the harmonic part between soft edges at 150-300 Hz and 6-10 kHz (vocals), residual (other); "
        "hand-set, offline"
    )

    def __init__(self, settings: ClassicalSettings | None = None) -> None:
        self.settings = settings or ClassicalSettings()

    @property
    def params(self) -> dict:
        return asdict(self.settings)

    def separate(self, mixture: np.ndarray, sample_rate: int) -> np.ndarray:
        """mixture: float32 (num_channels, num_frames) -> stems float32 (4, num_channels, num_frames) in STEMS
        order, summing to the mixture (to float32 rounding)."""
        s = self.settings
        num_channels, n = mixture.shape
        n_fft = int(2 ** round(np.log2(s.stft_s * sample_rate)))
        hop = n_fft // 4
        stft_args = dict(fs=sample_rate, window="hann", nperseg=n_fft, noverlap=n_fft - hop)
        freqs, _, spec = stft(mixture.astype(np.float64), boundary="zeros", padded=True, **stft_args)
        # spec: complex (num_channels, num_bins, num_frames)
        mag = np.abs(spec).mean(axis=0)
        frames_kernel = _odd(s.harmonic_kernel_s * sample_rate / hop)
        bins_kernel = _odd(s.percussive_kernel_hz / (sample_rate / n_fft))
        harmonic = median_filter(mag, size=(1, frames_kernel), mode="nearest")
        percussive = median_filter(mag, size=(bins_kernel, 1), mode="nearest")
        h2, p2 = harmonic**2, percussive**2
        percussive_mask = p2 / (h2 + p2 + 1e-20)
        harmonic_mask = 1.0 - percussive_mask

        bass_band = 1.0 - _raised_cosine(freqs, s.bass_full_hz, s.bass_cutoff_hz)
        lo0, lo1, hi0, hi1 = s.vocal_band_hz
        vocal_band = _raised_cosine(freqs, lo0, lo1) * (1.0 - _raised_cosine(freqs, hi0, hi1)) * (1.0 - bass_band)
        if num_channels == 2:
            left, right = spec
            similarity = 2.0 * np.real(left * np.conj(right)) / (np.abs(left) ** 2 + np.abs(right) ** 2 + 1e-20)
            lo, hi = s.centre_similarity
            centre = _smoothstep((similarity - lo) / (hi - lo))
        else:  # a mono mix is all centre
            centre = np.ones_like(mag)

        masks = {
            "drums": percussive_mask,
            "bass": bass_band[:, None] * harmonic_mask,
            "vocals": vocal_band[:, None] * centre * harmonic_mask,
        }
        out = np.zeros((len(STEMS), num_channels, n), dtype=np.float32)
        for stem, mask in masks.items():
            _, audio = istft(mask * spec, boundary=True, **stft_args)
            out[STEMS.index(stem)] = audio[:, :n]
        other = STEMS.index("other")
        out[other] = mixture - (out.sum(axis=0) - out[other])
        return out


def _odd(x: float) -> int:
    k = max(1, int(round(x)))
    return k if k % 2 else k + 1


def ideal_ratio_mask(
    mixture: np.ndarray,
    references: np.ndarray,
    n_fft: int,
    hop_size: int,
    power: float = 2.0,
    chunk_hops: int = 256,
    window_name: str = "hann",
) -> np.ndarray:
    """The oracle: each stem = iSTFT(mask * X) with mask = |S_j|^power / sum_k |S_k|^power, per channel and bin.

    mixture: float32 (num_channels, n); references: float32 (num_stems, num_channels, n), the true stems at the
    same rate. The STFT is the model contract's host framing (``engine.stft.StreamingSTFT``: the model's window,
    OLA-normalised), run in chunks so long songs fit in memory. Returns float32 (num_stems, num_channels, n),
    aligned with the input (the framing's latency n_fft - hop_size removed). Where every stem is silent in a bin the
    mask is split equally. ``power`` 2 (the Wiener-like ratio of powers, SiSEC's "IRM2") is the default: on a
    synthetic song it scored 0.8-1.5 dB above ``power`` 1 per stem, so it is the stricter upper bound.
    """
    num_stems, num_channels, n = references.shape
    latency = n_fft - hop_size
    total_hops = -(-(n + latency) // hop_size)
    length = total_hops * hop_size
    mix = np.zeros((num_channels, length), dtype=np.float32)
    mix[:, :n] = mixture
    refs = np.zeros((num_stems * num_channels, length), dtype=np.float32)
    refs[:, :n] = references.reshape(num_stems * num_channels, n)
    mix_stft = StreamingSTFT(n_fft, hop_size, num_channels, chunk_hops, window_name)
    ref_stft = StreamingSTFT(n_fft, hop_size, num_stems * num_channels, chunk_hops, window_name)
    out_stft = StreamingSTFT(n_fft, hop_size, num_stems * num_channels, chunk_hops, window_name)
    out = np.zeros((num_stems * num_channels, length), dtype=np.float32)
    for start in range(0, total_hops, chunk_hops):
        hops = min(chunk_hops, total_hops - start)
        a, b = start * hop_size, (start + hops) * hop_size
        x = mix_stft.analyse(mix[:, a:b])  # (channels, hops, bins)
        s = ref_stft.analyse(refs[:, a:b]).reshape(num_stems, num_channels, hops, -1)
        weights = np.abs(s) ** power
        total = weights.sum(axis=0, keepdims=True)
        masks = np.where(total > 0, weights / np.maximum(total, 1e-30), 1.0 / num_stems)
        masked = (masks * x[None]).astype(np.complex64)
        out_stft.synthesise(masked.reshape(num_stems * num_channels, hops, -1), out[:, a:b])
    aligned = out[:, latency : latency + n]
    return np.ascontiguousarray(aligned.reshape(num_stems, num_channels, n))
