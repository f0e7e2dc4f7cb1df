"""The causal mask model (torch): band-compressed, level-independent features -> GRU -> band masks -> bin masks.

Input is the linear magnitude of the host STFT, ``mag`` float32 (batch, frames, num_channels, num_bins); output is a
softmax mask per stem, ``masks`` float32 (batch, frames, num_stems, num_channels, num_bins), that sums to 1 over
stems. Everything the model needs beyond the magnitude happens inside the graph:

* level independence: each frame is divided by its own RMS magnitude (over channels and bins), so scaling the mix
  by any gain leaves the features unchanged (apart from a tiny floor for digital silence);
* the frame level itself enters only as its change from the previous frame (an onset cue), carried across calls in
  the ``lvl_in``/``lvl_out`` state;
* band compression: a fixed triangular filterbank turns 513 bins per channel into 89 log band levels. Band centres
  are 1 bin apart up to 1/32 of the spectrum (690 Hz), then 2, 4, 8 and 16 bins apart, each spacing over an octave
  (``band_layout``); stereo cues come from both channels' bands side by side plus their difference;
* a unidirectional ``num_layers``-layer GRU whose hidden state is explicit graph I/O (``h_in``/``h_out``);
* a low-rank decoder: per stem and channel band logits, linearly interpolated to bins, plus a per-stem "peakiness"
  gain times each bin's log level relative to its band, so harmonics and noise in one band can go to different stems
  without a dense hidden -> 4104 layer (the speed budget in DESIGN.md). Because the spacing is uniform within each
  octave region, band -> bin interpolation is a few broadcast multiply-adds instead of a dense (bands, bins) matmul
  (which cost more than the GRU in ONNX Runtime); softmax over stems is spelled out for the same reason.

Output frame k depends on input frames <= k only. All shapes and sizes come from ``ModelConfig``.

``ModelConfig.bidirectional`` makes the look-ahead variant for audio known in advance (the high-quality path,
engine/hq.py; exported under the look-ahead contract, engine/lookahead.py): one more GRU layer runs backwards in
time over the causal GRU's output, and a linear projection of it is added to that output before the decoder. The
projection starts at zero, so a model warm-started from causal weights begins as exactly the causal model and
learns what the future adds. Its output frame k then depends on every frame of the segment it is given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction

import numpy as np
import torch
from stembridge.engine.stft import window as host_window
from torch import nn

STEMS = ("vocals", "drums", "bass", "other")
RESIDUAL_STEM = "other"  # the stem that takes what the others leave (the card's residual_stem), when a model has it
MAG_FLOOR = 1e-3  # magnitude units; white noise at about -86 dBFS has this RMS magnitude with n_fft 1024 Hann
LEVEL_REF = 1e-2  # frame RMS magnitude that maps to level 0 in the onset cue


@dataclass
class ModelConfig:
    """Architecture and STFT of a model; saved in checkpoints and written into the card."""

    sample_rate: int = 44100
    n_fft: int = 1024
    hop_size: int = 256
    window: str = "hann"  # engine.stft.WINDOWS; checkpoints from before this field used Hann
    num_channels: int = 2
    stems: tuple[str, ...] = STEMS
    band_layout: tuple[tuple[int, int], ...] = ()  # (spacing_bins, end_bin) regions; () = default_band_layout
    hidden: int = 192
    num_layers: int = 2
    bidirectional: bool = False  # a backward GRU layer over the causal one: look-ahead, never live (module docstring)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def latency_samples(self) -> int:
        return self.n_fft - self.hop_size

    @property
    def layout(self) -> tuple[tuple[int, int], ...]:
        return tuple(tuple(r) for r in self.band_layout) or default_band_layout(self.num_bins)

    @property
    def num_bands(self) -> int:
        return len(band_centers(self.layout))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stems"] = list(self.stems)
        d["band_layout"] = [list(r) for r in self.layout]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "stems" in known:
            known["stems"] = tuple(known["stems"])
        if "band_layout" in known:
            known["band_layout"] = tuple(tuple(r) for r in known["band_layout"])
        return cls(**known)


def default_band_layout(num_bins: int) -> tuple[tuple[int, int], ...]:
    """Octave regions of uniform band spacing: (1, N/32), (2, N/8), (4, N/4), (8, N/2), (16, N) with N = num_bins - 1.

    For n_fft 1024 (N = 512) that is 89 bands: 43 Hz apart below 690 Hz, 690 Hz apart above 11 kHz.
    """
    n = num_bins - 1
    if n < 32 or n % 32:
        raise ValueError(f"num_bins - 1 must be a multiple of 32 for the default band layout, got {n}")
    return ((1, n // 32), (2, n // 8), (4, n // 4), (8, n // 2), (16, n))


def band_centers(layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Band centre bins, int (num_bands,), of a layout of (spacing_bins, end_bin) regions starting at bin 0."""
    centers, start = [0], 0
    for spacing, end in layout:
        if spacing < 1 or end <= start or (end - start) % spacing:
            raise ValueError(f"band region (spacing {spacing}, end {end}) does not tile bins {start}..{end}")
        centers.extend(range(start + spacing, end + 1, spacing))
        start = end
    return np.asarray(centers, dtype=np.int64)


def interpolation_matrix(layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Band -> bin linear interpolation, float32 (num_bands, num_bins); each bin's column sums to 1."""
    centers = band_centers(layout)
    m = np.zeros((len(centers), centers[-1] + 1), dtype=np.float64)
    for b in range(len(centers) - 1):
        lo, hi = centers[b], centers[b + 1]
        f = np.arange(lo, hi)
        t = (f - lo) / (hi - lo)
        m[b, f] += 1.0 - t
        m[b + 1, f] += t
    m[-1, centers[-1]] = 1.0
    return m.astype(np.float32)


class SeparatorModel(nn.Module):
    """forward(mag, h, lvl) -> (masks, h_out, lvl_out); see the module docstring for shapes and meaning.

    mag: (batch, frames, num_channels, num_bins); h: (num_layers, batch, hidden); lvl: (1, batch, 1).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        c, nb, f = config.num_channels, config.num_bands, config.num_bins
        s = len(config.stems)
        self.layout = config.layout
        interp = torch.from_numpy(interpolation_matrix(self.layout))  # (bands, bins)
        if interp.shape[1] != f:
            raise ValueError(f"band layout ends at bin {interp.shape[1] - 1}, expected {f - 1}")
        analysis = interp.T / interp.T.sum(dim=0, keepdim=True)  # (bins, bands), each band a weighted mean
        self.register_buffer("analysis", analysis.contiguous())
        # band -> bin interpolation, one small matrix per region (block-diagonal: 5x fewer multiply-adds than the
        # dense (bands, bins) matrix, which cost more than the GRU in ONNX Runtime)
        self._regions: list[tuple[int, int, int]] = []  # (first band, bands used, spacing)
        a, start = 0, 0
        last = len(self.layout) - 1
        for r, (spacing, end) in enumerate(self.layout):
            n = (end - start) // spacing
            bins = slice(start, end + 1 if r == last else end)
            self.register_buffer(f"interp{r}", interp[a : a + n + 1, bins].contiguous())
            self._regions.append((a, n + 1, spacing))
            a, start = a + n, end
        num_in = c * nb + nb + 1  # per-channel bands, their channel difference (if stereo), onset cue
        self.encoder = nn.Sequential(nn.Linear(num_in, config.hidden), nn.LayerNorm(config.hidden), nn.ReLU())
        self.gru = nn.GRU(config.hidden, config.hidden, num_layers=config.num_layers, batch_first=True)
        if config.bidirectional:
            self.backward_gru = nn.GRU(config.hidden, config.hidden, num_layers=1, batch_first=True)
            self.backward_proj = nn.Linear(config.hidden, config.hidden)
            with torch.no_grad():  # start as the causal model exactly: the future adds nothing until trained to
                self.backward_proj.weight.zero_()
                self.backward_proj.bias.zero_()
        self.decoder_norm = nn.LayerNorm(config.hidden)
        self.decoder = nn.Linear(config.hidden, s * c * nb + s * nb)
        with torch.no_grad():  # start from "equal masks, no peakiness preference"
            self.decoder.weight.mul_(0.1)
            self.decoder.bias.zero_()

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state: h (num_layers, batch, hidden), lvl (1, batch, 1) (= silence before the stream)."""
        cfg = self.config
        return torch.zeros(cfg.num_layers, batch, cfg.hidden), torch.zeros(1, batch, 1)

    def forward(
        self, mag: torch.Tensor, h: torch.Tensor, lvl: torch.Tensor, frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks for all frames; ``frames`` (int64 (k,), training only) selects the frames the mask head runs on."""
        cfg = self.config
        b, t = mag.shape[0], mag.shape[1]
        c, nb, s = cfg.num_channels, cfg.num_bands, len(cfg.stems)
        # level-independent per-bin features: magnitude over the frame's RMS magnitude
        power = (mag * mag).mean(dim=(2, 3), keepdim=True)  # (b, t, 1, 1)
        rms = torch.sqrt(power + MAG_FLOOR * MAG_FLOOR)
        x = mag / rms  # (b, t, c, f)
        bands = torch.log1p(torch.matmul(x, self.analysis))  # (b, t, c, nb)
        # onset cue: change of the frame level from the previous frame (state carries the last level)
        level = torch.log(rms.reshape(b, t) / LEVEL_REF + 1.0)  # >= 0, 0 = silence
        prev = torch.cat([lvl.reshape(b, 1), level[:, :-1]], dim=1)
        onset = torch.clamp(level - prev, -4.0, 4.0).unsqueeze(-1) * 0.5  # (b, t, 1)
        lvl_out = level[:, -1:].reshape(1, b, 1)
        stereo = bands[:, :, 0] - bands[:, :, c - 1]  # zero for mono
        feats = torch.cat([bands.reshape(b, t, c * nb), stereo, onset], dim=-1)
        z = self.encoder(feats)
        y, h_out = self.gru(z, h)
        if cfg.bidirectional:  # what the rest of the segment says about each frame, read backwards in time
            future, _ = self.backward_gru(torch.flip(y, dims=(1,)))
            y = y + self.backward_proj(torch.flip(future, dims=(1,)))
        y = self.decoder_norm(y + z)
        if frames is not None:
            y, x, bands = y[:, frames], x[:, frames], bands[:, frames]
            t = frames.shape[0]
        out = self.decoder(y)  # (b, t, s*c*nb + s*nb)
        # logits bounded in the band domain (cheap) so that exp needs no max subtraction: |logit| <= 20 + 10 * ~4
        band_logits = self.to_bins(torch.clamp(out[..., : s * c * nb], -20.0, 20.0).reshape(b, t, s, c, nb))
        gain = self.to_bins(torch.clamp(out[..., s * c * nb :], -10.0, 10.0).reshape(b, t, s, 1, nb))
        peak = (torch.log1p(x) - self.to_bins(bands)).unsqueeze(2)  # each bin's log level relative to its band
        # softmax over stems, spelled out: ONNX Runtime's Softmax on a non-last axis transposes and is ~10x slower
        e = torch.exp(band_logits + gain * peak)
        masks = e / e.sum(dim=2, keepdim=True)
        return masks, h_out, lvl_out

    def to_bins(self, bands: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of band values to bins: (..., num_bands) -> (..., num_bins)."""
        pieces = []
        for r, (a, n, spacing) in enumerate(self._regions):
            if spacing == 1 and r < len(self._regions) - 1:
                pieces.append(bands[..., a : a + n - 1])  # identity region
            else:
                pieces.append(torch.matmul(bands[..., a : a + n], getattr(self, f"interp{r}")))
        return torch.cat(pieces, dim=-1)


def window_tensor(name: str, n_fft: int, like: torch.Tensor) -> torch.Tensor:
    """The host's analysis/synthesis window (``engine.stft.window``) as a tensor on ``like``'s device and dtype."""
    return torch.from_numpy(host_window(name, n_fft)).to(device=like.device, dtype=like.dtype)


def stft_frames(audio: torch.Tensor, n_fft: int, hop: int, frames: torch.Tensor, window: str = "hann") -> torch.Tensor:
    """Selected frames of ``stft``: audio (..., num_samples), frames int64 (k,) -> complex (..., k, num_bins)."""
    padded = nn.functional.pad(audio, (n_fft - hop, 0))
    chunks = padded.unfold(-1, n_fft, hop)[..., frames, :]  # (..., k, n_fft)
    return torch.fft.rfft(chunks * window_tensor(window, n_fft, audio), dim=-1)


def magnitude(spec: torch.Tensor) -> torch.Tensor:
    """|spec| of a complex tensor: sqrt(re^2 + im^2) is ~3x faster than ``abs()`` on CPU (which calls hypot)."""
    return torch.sqrt(spec.real.square() + spec.imag.square())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stft(audio: torch.Tensor, n_fft: int, hop: int, window: str = "hann") -> torch.Tensor:
    """Host-framed STFT (DESIGN.md): audio float32 (..., num_samples) -> complex (..., num_frames, num_bins).

    Frame k covers samples [(k + 1) * hop - n_fft, (k + 1) * hop), with zeros before the start; num_frames =
    num_samples // hop.
    """
    shape = audio.shape
    flat = audio.reshape(-1, shape[-1])
    padded = nn.functional.pad(flat, (n_fft - hop, 0))
    w = window_tensor(window, n_fft, audio)
    spec = torch.stft(padded, n_fft, hop, window=w, center=False, return_complex=True)  # (n, bins, frames)
    return spec.transpose(1, 2).reshape(*shape[:-1], spec.shape[2], spec.shape[1])


def istft(spec: torch.Tensor, n_fft: int, hop: int, window: str = "hann") -> torch.Tensor:
    """Inverse of ``stft`` with the host's synthesis (the same window, divided by the OLA constant).

    spec complex (..., num_frames, num_bins) -> float (..., num_frames * hop), aligned with the ``stft`` input
    (sample n of the result estimates input sample n). The last n_fft - hop samples are covered by fewer frames
    than overlap-add needs (the host outputs them one call later): leave them out of comparisons.
    """
    shape = spec.shape
    frames = torch.fft.irfft(spec.reshape(-1, shape[-2], shape[-1]), n=n_fft, dim=-1)  # (n, T, n_fft)
    w = window_tensor(window, n_fft, frames)
    ola = float((w * w).reshape(n_fft // hop, hop).sum(0).mean())
    frames = frames * (w / ola)
    num_frames = shape[-2]
    total = (num_frames - 1) * hop + n_fft
    out = nn.functional.fold(
        frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, n_fft), stride=(1, hop)
    )  # (n, 1, 1, total)
    out = out.reshape(-1, total)[:, n_fft - hop :]
    return out.reshape(*shape[:-2], num_frames * hop)


def chosen_weights(ckpt: dict, average: bool = True) -> tuple[dict, str]:
    """(state dict, description): the weight average when the checkpoint has one and ``average`` is true, otherwise
    the weights being trained."""
    if average and ckpt.get("ema") is not None:
        return ckpt["ema"], f"moving average of the training weights (decay {ckpt['ema_decay']})"
    return ckpt["model"], "training weights"


def reframed(config: ModelConfig, n_fft: int) -> ModelConfig:
    """The same model on an STFT of ``n_fft``: the band layout is scaled so every band keeps its frequency.

    The bands keep their count, so every weight of a model trained with ``config`` fits the new one (the fixed
    filterbank buffers are rebuilt from the new layout). Scaling must keep every region's spacing and end a whole
    number of bins.
    """
    factor = Fraction(n_fft, config.n_fft)
    layout = []
    for spacing, end in config.layout:
        s, e = spacing * factor, end * factor
        if s.denominator != 1 or e.denominator != 1:
            raise ValueError(
                f"n_fft {n_fft} cannot keep the bands of n_fft {config.n_fft}: region (spacing {spacing}, end {end}) "
                f"would span {s} bins apart up to bin {e}"
            )
        layout.append((int(s), int(e)))
    return replace(config, n_fft=n_fft, band_layout=tuple(layout))


def widened(
    weights: dict[str, torch.Tensor], config: ModelConfig, factor: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The weights of the same function with ``factor`` times the hidden units (``config.hidden * factor``).

    Every hidden unit is copied ``factor`` times (unit ``c * hidden + i`` is copy ``c`` of unit ``i``): the rows that
    compute a unit are repeated, and each weight that reads a unit is split between its copies in random shares that
    sum to 1. The copies therefore carry equal values, so the layer norms over the hidden units see the same mean and
    variance and the network computes exactly what it did (up to rounding). The random shares make the copies' outgoing
    weights differ, so their gradients differ and training can pull them apart; equal shares would keep them twins.
    """
    if factor < 1:
        raise ValueError(f"widening factor must be >= 1, got {factor}")
    h = config.hidden
    gen = torch.Generator().manual_seed(seed)

    def rows(w: torch.Tensor, gates: int = 1) -> torch.Tensor:  # (gates*h, ...) -> (gates*h*factor, ...)
        w = w.reshape(gates, h, *w.shape[1:])
        return torch.cat([w] * factor, dim=1).reshape(gates * h * factor, *w.shape[2:])

    def columns(w: torch.Tensor) -> torch.Tensor:  # (..., h) -> (..., h*factor), split in random shares
        shares = torch.rand((factor, *w.shape), generator=gen, dtype=w.dtype) + 0.5
        shares = shares / shares.sum(dim=0, keepdim=True)
        return torch.cat([w * s for s in shares], dim=-1)

    out = {}
    for name, w in weights.items():
        w = w.float()
        if name.startswith(("encoder.0.", "encoder.1.", "decoder_norm.")):
            out[name] = rows(w)
        elif name == "decoder.weight":
            out[name] = columns(w)
        elif name.startswith(("gru.weight_ih_l", "gru.weight_hh_l")):  # every GRU layer reads hidden-sized input
            out[name] = columns(rows(w, 3))
        elif name.startswith("gru.bias_"):
            out[name] = rows(w, 3)
        else:
            out[name] = w
    return out


def build_model(config: ModelConfig | dict | None = None) -> SeparatorModel:
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SeparatorModel(config)


def latency_ms(config: ModelConfig) -> float:
    return 1000.0 * config.latency_samples / config.sample_rate
