"""SpatialWiener: a causal multichannel Wiener filter that turns a stereo model's masks into stem spectra.

A mask model scales each channel's bins by a real gain: it uses the channels' levels but cannot use their phase
relation, so a stem panned left and one panned right are told apart only as far as their levels differ. The filter
here adds that: each stem gets a 2 x 2 spatial covariance (its inter-channel level, correlation and phase), learned
causally from the masked mix, and every stem is estimated as

    s_j = w_j R_j (sum_k w_k R_k + r I)^-1 x

per bin and frame, where x is the mix's stereo STFT bin. This is the local Gaussian model behind multichannel Wiener
filtering (Duong, Vincent and Gribonval 2010; the ``norbert`` filter of Open-Unmix) in one causal pass:

* ``y_j = m_j * x`` is the model's masked mix (a real mask per channel);
* ``R_j`` is the exponential average, over past and present frames, of ``y_j y_j^H`` divided by the same average of
  ``|y_j|^2`` (mean over channels), with time constant ``time_constant_s``;
* ``w_j`` is the stem's masked amplitude (root mean square over channels of ``|y_j|``), not its power: where all
  stems share one spatial image (a mono mix with the same mask on both channels) the filter gives back the model's
  own masks, up to the regularization, so the spatial model adds separation without sharpening the masks (power
  weights sharpen them, and measured worse: README, "Quality");
* ``r`` is ``regularization`` times the mean diagonal of the sum, which keeps the inverse finite when the stems
  share one spatial image.

Output frame k uses input frames <= k only: the filter adds no latency. The filters of all stems sum to the identity
apart from ``r``; ``engine.separator`` still makes the residual stem the input minus the others, so the stems sum
to the input exactly.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_TIME_CONSTANT_S = 10.0
DEFAULT_REGULARIZATION = 1e-3
DEFAULT_SETTINGS = {"time_constant_s": DEFAULT_TIME_CONSTANT_S, "regularization": DEFAULT_REGULARIZATION}
POWER_FLOOR = 1e-20  # keeps the covariance finite on digital silence
AMPLITUDE_FLOOR = 1e-9  # keeps the inverse finite on digital silence (a -120 dBFS bin is ~1e-4)
_FLUSH = 1e-30


class SpatialWiener:
    """The filter for ``num_streams`` stereo streams of ``num_stems`` stems; state carried across calls."""

    def __init__(
        self,
        num_streams: int,
        num_stems: int,
        num_bins: int,
        hop_size: int,
        sample_rate: int,
        time_constant_s: float = DEFAULT_TIME_CONSTANT_S,
        regularization: float = DEFAULT_REGULARIZATION,
    ) -> None:
        if time_constant_s <= 0 or not math.isfinite(time_constant_s):
            raise ValueError(
                f"spatial filter time constant must be a positive number of seconds, got {time_constant_s}"
            )
        if regularization <= 0 or not math.isfinite(regularization):
            raise ValueError(f"spatial filter regularization must be positive, got {regularization}")
        self.time_constant_s = time_constant_s
        self.regularization = regularization
        self.decay = float(np.exp(-hop_size / (time_constant_s * sample_rate)))
        # running averages per stream, quantity, stem and bin; quantities: |y0|^2, |y1|^2, Re(y0 y1*), Im(y0 y1*) and
        # the mean power (|y0|^2 + |y1|^2) / 2
        self._stats = np.zeros((num_streams, 5, num_stems, num_bins), dtype=np.float32)
        self._power_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._run = max(1, int(math.log(1e3) / -math.log(self.decay)))  # frames per closed-form run

    @property
    def settings(self) -> dict[str, float]:
        """The settings as a card's ``spatial_filter`` holds them."""
        return {"time_constant_s": self.time_constant_s, "regularization": self.regularization}

    def reset(self) -> None:
        self._stats[:] = 0.0

    def _powers(self, hops: int) -> tuple[np.ndarray, np.ndarray]:
        """(1 - a) a^-k and a^k for k < hops, float32 shaped to broadcast over (streams, hops, 5, stems, bins)."""
        powers = self._power_cache.get(hops)
        if powers is None:
            k = np.arange(hops, dtype=np.float64)[None, :, None, None, None]
            a = self.decay
            powers = (((1.0 - a) * a**-k).astype(np.float32), (a**k).astype(np.float32))
            self._power_cache[hops] = powers
        return powers

    def apply(self, spectra: np.ndarray, masks: np.ndarray, stems: slice | list[int]) -> np.ndarray:
        """Stem spectra of ``stems`` (a slice or indices) for ``hops`` frames.

        spectra: complex64 (streams, 2, hops, bins), the mix; masks: float32 (streams, hops, num_stems, 2, bins),
        all stems' masks (every stem's covariance enters the filter). Returns complex64
        (streams, len(stems), 2, hops, bins).
        """
        new, amplitude = _moments(spectra, masks)
        hops = spectra.shape[2]
        # the exponential averages after each frame, in closed form over runs of frames:
        # stats_k = a^k (a stats_-1 + (1 - a) sum_{i <= k} a^-i new_i), runs short enough that a^-i stays <= 1e3
        stats = np.empty_like(new)
        for start in range(0, hops, self._run):
            run = slice(start, min(hops, start + self._run))
            rise, fall = self._powers(run.stop - run.start)
            part = stats[:, run]
            np.multiply(new[:, run], rise, out=part)
            for k in range(1, part.shape[1]):  # prefix sums (np.cumsum over this axis is ~10x slower)
                part[:, k] += part[:, k - 1]
            part += self.decay * self._stats[:, None]
            part *= fall
            self._stats[:] = part[:, -1]
        # flush what long silence decays towards float32's subnormal range (arithmetic on it is many times slower):
        # adding and taking away _FLUSH leaves every value above ~1e-37 as it was (to float32 precision)
        self._stats += _FLUSH
        self._stats -= _FLUSH
        return _filtered(spectra, stats, amplitude, stems, self.regularization)


def segment_stats(spectra: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For audio known in advance: each stem's spatial statistics averaged over the whole segment given, past and
    future alike (instead of ``SpatialWiener``'s causal running average), float32 (streams, 1, 5, stems, bins), and
    each frame's stem amplitudes, float32 (streams, hops, stems, bins): what ``segment_filter`` needs. spectra and
    masks as ``SpatialWiener.apply`` takes them."""
    new, amplitude = _moments(spectra, masks)
    return new.mean(axis=1, keepdims=True), amplitude


def segment_filter(
    spectra: np.ndarray,
    stats: np.ndarray,
    amplitude: np.ndarray,
    stems: slice | list[int],
    regularization: float = DEFAULT_REGULARIZATION,
) -> np.ndarray:
    """The filter with fixed statistics over a segment, from ``segment_stats`` of the same frames (or a stretch of
    them: amplitude (streams, hops, stems, bins) for the frames of ``spectra``). Result as ``SpatialWiener.apply``.
    The high-quality path filters each look-ahead tile with its own statistics, so any range's stems equal the
    whole track's."""
    return _filtered(spectra, stats, amplitude, stems, regularization)


def _moments(spectra: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, stem and bin: the masked mix's second moments |y0|^2, |y1|^2, Re and Im of y0 y1*, and mean power,
    float32 (streams, hops, 5, stems, bins); and the stem's masked amplitude (streams, hops, stems, bins)."""
    streams, _, hops, bins = spectra.shape
    num_stems = masks.shape[2]
    x0, x1 = spectra[:, 0], spectra[:, 1]  # (streams, hops, bins)
    # second moments of the masked mix y_j = m_j * x without forming it: the mix's own, once per bin
    # (|x0|^2, |x1|^2, Re and Im of x0 x1*), times the stem's m0^2, m1^2, m0 m1, m0 m1
    mix = np.empty((streams, hops, 4, 1, bins), dtype=np.float32)
    sq = spectra.real * spectra.real
    sq += spectra.imag * spectra.imag  # (streams, 2, hops, bins)
    mix[:, :, 0:2, 0] = sq.transpose(0, 2, 1, 3)
    cross = x0 * np.conj(x1)
    mix[:, :, 2, 0] = cross.real
    mix[:, :, 3, 0] = cross.imag
    coef = np.empty((streams, hops, 4, num_stems, bins), dtype=np.float32)
    np.square(masks.transpose(0, 1, 3, 2, 4), out=coef[:, :, 0:2])
    np.multiply(masks[:, :, :, 0], masks[:, :, :, 1], out=coef[:, :, 2])
    coef[:, :, 3] = coef[:, :, 2]
    new = np.empty((streams, hops, 5, num_stems, bins), dtype=np.float32)
    np.multiply(coef, mix, out=new[:, :, :4])
    power = new[:, :, 4]
    np.add(new[:, :, 0], new[:, :, 1], out=power)
    power *= 0.5
    return new, np.sqrt(power)


def _filtered(
    spectra: np.ndarray, stats: np.ndarray, amplitude: np.ndarray, stems: slice | list[int], regularization: float
) -> np.ndarray:
    """s_j = w_j R_j (sum_k w_k R_k + r I)^-1 x for the stems asked for, from averaged moments ``stats`` (streams,
    hops or 1, 5, stems, bins) and amplitudes (streams, hops, stems, bins): complex64 (streams, stems, 2, hops,
    bins)."""
    x0, x1 = spectra[:, 0], spectra[:, 1]
    hops = spectra.shape[2]
    # w_j R_j = (w_j / mean power_j) * [[|y0|^2, y0 y1*], [y1 y0*, |y1|^2]] (averages)
    wr = stats[:, :, :4] * (amplitude / (stats[:, :, 4] + POWER_FLOOR))[:, :, None]
    c = wr.sum(axis=3)  # (streams, hops, 4, bins): their sum over stems
    c00, c11, c_re, c_im = c[:, :, 0], c[:, :, 1], c[:, :, 2], c[:, :, 3]
    reg = (c00 + c11) * (0.5 * regularization) + AMPLITUDE_FLOOR
    c00 += reg
    c11 += reg
    inv_det = 1.0 / (c00 * c11 - c_re * c_re - c_im * c_im)
    c01 = _complex(c_re, c_im)
    z0 = ((c11 * x0 - c01 * x1) * inv_det)[:, None]  # C^-1 x, (streams, 1, hops, bins)
    z1 = ((c00 * x1 - np.conj(c01) * x0) * inv_det)[:, None]
    sel = wr[:, :, :, stems].transpose(0, 3, 2, 1, 4)  # (streams, stems, 4, hops, bins)
    r01 = _complex(sel[:, :, 2], sel[:, :, 3])
    out = np.empty((spectra.shape[0], sel.shape[1], 2, hops, spectra.shape[3]), dtype=np.complex64)
    np.multiply(sel[:, :, 0], z0, out=out[:, :, 0])
    out[:, :, 0] += r01 * z1
    np.multiply(sel[:, :, 1], z1, out=out[:, :, 1])
    out[:, :, 1] += np.conj(r01, out=r01) * z0
    return out


def _complex(real: np.ndarray, imag: np.ndarray) -> np.ndarray:
    """complex64 real + i imag (cheaper than ``real + 1j * imag``, which makes and adds a third array)."""
    out = np.empty(real.shape, dtype=np.complex64)
    out.real = real
    out.imag = imag
    return out
