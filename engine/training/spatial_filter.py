"""The engine's causal spatial filter (``engine/spatial.py``) in torch, so that training can run through it.

The shipped model's masks reach the listener through the filter, not as they are; a loss on ``mask * mix`` trains
masks for a path the engine does not take. ``spatial_estimates`` computes what ``engine.spatial.SpatialWiener``
computes, differentiably and for a whole segment at once:

    s_j = w_j R_j (sum_k w_k R_k + r I)^-1 x

with ``R_j`` the exponential average of the masked mix's 2 x 2 covariance over past and present frames (normalised
by its mean power), ``w_j`` the stem's masked amplitude and ``r`` the regularization times the mean diagonal. The
average is taken in closed form (``a^k * cumsum(a^-i * new_i)``), and all complex arithmetic is spelled out in real
and imaginary parts, as in the loss.

Training may evaluate the masks on every ``stride``-th frame only (the mask head dominates the cost): the average
then runs over those frames with the decay per ``stride`` hops, which keeps its time constant in seconds.
"""

from __future__ import annotations

import math

import torch
from stembridge.engine.spatial import AMPLITUDE_FLOOR, POWER_FLOOR


def frame_decay(time_constant_s: float, hop_size: int, sample_rate: int, stride: int = 1) -> float:
    """The average's decay from one evaluated frame to the next, ``stride`` hops apart (as ``SpatialWiener.decay``)."""
    return math.exp(-stride * hop_size / (time_constant_s * sample_rate))


def spatial_estimates(
    spec_re: torch.Tensor,
    spec_im: torch.Tensor,
    masks: torch.Tensor,
    decay: float,
    regularization: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stem's filtered spectrum, starting from empty averages at the first frame.

    spec_re, spec_im: float (batch, frames, 2, bins), the mix; masks: float (batch, frames, stems, 2, bins). Returns
    (real, imaginary), each float (batch, frames, stems, 2, bins).
    """
    if spec_re.shape[2] != 2:
        raise ValueError(f"the spatial filter needs stereo spectra, got {spec_re.shape[2]} channel(s)")
    frames = spec_re.shape[1]
    x0r, x1r = spec_re[:, :, 0], spec_re[:, :, 1]  # (b, t, f)
    x0i, x1i = spec_im[:, :, 0], spec_im[:, :, 1]
    # the mix's second moments: |x0|^2, |x1|^2 and x0 x1* (real, imaginary), each (b, t, 1, f)
    p0 = (x0r.square() + x0i.square()).unsqueeze(2)
    p1 = (x1r.square() + x1i.square()).unsqueeze(2)
    cross_re = (x0r * x1r + x0i * x1i).unsqueeze(2)
    cross_im = (x0i * x1r - x0r * x1i).unsqueeze(2)
    m0, m1 = masks[:, :, :, 0], masks[:, :, :, 1]  # (b, t, s, f)
    m01 = m0 * m1
    n00, n11 = m0.square() * p0, m1.square() * p1
    power = 0.5 * (n00 + n11)
    new = torch.stack([n00, n11, m01 * cross_re, m01 * cross_im, power], dim=2)  # (b, t, 5, s, f)
    # exponential averages after each frame, in closed form over runs of frames short enough that a^-i stays <= 1e3:
    # stats_k = a^k (a stats_-1 + (1 - a) sum_{i <= k} a^-i new_i)
    run = max(1, int(math.log(1e3) / -math.log(decay))) if decay < 1.0 else frames
    k = torch.arange(min(run, frames), dtype=torch.float64)
    rise = ((1.0 - decay) * decay**-k).to(new.dtype).reshape(1, -1, 1, 1, 1)
    fall = (decay**k).to(new.dtype).reshape(1, -1, 1, 1, 1)
    parts, last = [], None
    for start in range(0, frames, run):
        n = min(run, frames - start)
        part = torch.cumsum(new[:, start : start + n] * rise[:, :n], dim=1)
        if last is not None:
            part = part + decay * last
        part = part * fall[:, :n]
        parts.append(part)
        last = part[:, -1:]
    stats = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    amplitude = torch.sqrt(power + POWER_FLOOR)  # the floor keeps the gradient finite at silence
    wr = stats[:, :, :4] * (amplitude / (stats[:, :, 4] + POWER_FLOOR)).unsqueeze(2)  # w_j R_j, (b, t, 4, s, f)
    c = wr.sum(dim=3)  # (b, t, 4, f)
    reg = (c[:, :, 0] + c[:, :, 1]) * (0.5 * regularization) + AMPLITUDE_FLOOR
    c00, c11, c_re, c_im = c[:, :, 0] + reg, c[:, :, 1] + reg, c[:, :, 2], c[:, :, 3]
    inv_det = 1.0 / (c00 * c11 - c_re.square() - c_im.square())
    # z = C^-1 x with C = [[c00, c01], [c01*, c11]], c01 = c_re + i c_im
    z0r = (c11 * x0r - (c_re * x1r - c_im * x1i)) * inv_det
    z0i = (c11 * x0i - (c_re * x1i + c_im * x1r)) * inv_det
    z1r = (c00 * x1r - (c_re * x0r + c_im * x0i)) * inv_det
    z1i = (c00 * x1i - (c_re * x0i - c_im * x0r)) * inv_det
    z0r, z0i, z1r, z1i = (z.unsqueeze(2) for z in (z0r, z0i, z1r, z1i))  # (b, t, 1, f)
    r00, r11, r_re, r_im = wr[:, :, 0], wr[:, :, 1], wr[:, :, 2], wr[:, :, 3]  # (b, t, s, f)
    out0r = r00 * z0r + r_re * z1r - r_im * z1i  # w R00 z0 + w R01 z1
    out0i = r00 * z0i + r_re * z1i + r_im * z1r
    out1r = r11 * z1r + r_re * z0r + r_im * z0i  # w R11 z1 + conj(w R01) z0
    out1i = r11 * z1i + r_re * z0i - r_im * z0r
    return torch.stack([out0r, out1r], dim=3), torch.stack([out0i, out1i], dim=3)
