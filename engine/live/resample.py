"""Running the model at its own rate inside a host at another one (48, 88.2, 96 kHz...), off the audio thread.

``ResampledSeparator`` wraps a ``StreamingSeparator`` and looks like one at the host's rate: the separation worker
calls ``process`` with host-rate audio (any number of frames) and gets host-rate stems back, with one fixed latency
in host samples (``latency_samples``). Inside:

    host audio -> soxr ResampleStream (host -> model rate) -> whole model hops -> the model -> its stems
               -> soxr ResampleStream (model -> host rate) -> a FIFO primed with silence -> host-rate stems

soxr's streaming output is time-aligned with its input (output sample k is the input at time k / rate, emitted a
few hundred samples later in bursts); the FIFO's priming (found by running the same chain on silence at start-up)
absorbs those bursts, so every call is answered at once. The model's own latency is padded to a whole number of
host samples (at 48 kHz a multiple of 147 model samples, 160 host samples), so the stems lag the input by an exact
integer number of host samples.

The residual stem ("other") is not resampled: it is the host-rate input, delayed by that latency, minus the other
stems. So the stems sum to the input exactly, the band above the model's Nyquist frequency (22.05 kHz for a 44.1 kHz
model at 96 kHz) included, and the live engine's dry fallback stays exact.
"""

from __future__ import annotations

import math

import numpy as np

QUALITIES = ("LQ", "MQ", "HQ", "VHQ")  # soxr's recipes; measured at 48 kHz, period 256: +17, +46, +46, +66 ms


class ResampledSeparator:
    """A separator at ``host_rate`` around ``separator`` (at its model's rate). ``block_size``: the host period
    (used to size the FIFO's priming; any chunk of whole periods is accepted). ``quality``: soxr's recipe, "HQ"
    (20-bit) by default; "LQ" (16-bit, a wider transition band) adds a third of the latency, for live inputs."""

    def __init__(self, separator, host_rate: int, block_size: int, quality: str = "HQ") -> None:
        import soxr

        if quality not in QUALITIES:
            raise ValueError(f"resampling quality must be one of {', '.join(QUALITIES)}, not {quality!r}")
        self.quality = quality
        self.inner = separator
        self.card = separator.card
        self.model_rate = int(separator.sample_rate)
        self.sample_rate = int(host_rate)
        if self.sample_rate == self.model_rate:
            raise ValueError("ResampledSeparator is for a host rate other than the model's")
        self.block_size = block_size
        self.num_streams = separator.num_streams
        self.num_channels = separator.num_channels
        self.num_stems = separator.num_stems
        self.stems = separator.stems
        self.hop_size = 1  # any number of frames
        self._soxr = soxr
        g = math.gcd(self.sample_rate, self.model_rate)
        step = self.model_rate // g  # model samples per whole number of host samples
        self.model_pad = (-separator.latency_samples) % step
        self.content_latency = (separator.latency_samples + self.model_pad) * self.sample_rate // self.model_rate
        residual = self.card.residual_stem or self.stems[-1]
        self._residual = self.stems.index(residual)
        self._others = [k for k in range(self.num_stems) if k != self._residual]
        self.priming = self._measure_priming()
        self.latency_samples = self.content_latency + self.priming
        self.resampler_latency_samples = self.latency_samples - round(
            separator.latency_samples * self.sample_rate / self.model_rate
        )  # what resampling adds to the model's own latency, in host samples
        self.reset()

    def __getattr__(self, name: str):  # session, active_provider, spatial, ...: the inner separator's
        return getattr(self.inner, name)

    def _streams(self):
        s, c, k = self.num_streams, self.num_channels, self.num_stems
        down = self._soxr.ResampleStream(
            self.sample_rate, self.model_rate, s * c, dtype="float32", quality=self.quality
        )
        up = self._soxr.ResampleStream(
            self.model_rate, self.sample_rate, s * k * c, dtype="float32", quality=self.quality
        )
        return down, up

    def _measure_priming(self) -> int:
        """The silence the output FIFO needs up front so that it never runs dry, found by running the chain (both
        resamplers and the hop buffering, not the model) on silence in chunks of 1, 2 and 4 periods."""
        s, c, k = self.num_streams, self.num_channels, self.num_stems
        hop = self.inner.hop_size
        worst = 0
        for blocks in (1, 2, 4):
            down, up = self._streams()
            chunk = np.zeros((blocks * self.block_size, s * c), np.float32)
            pending, have, asked = 0, self.model_pad, 0  # model frames waiting for a hop; host frames out
            for _ in range(max(64, 4096 // blocks)):
                pending += down.resample_chunk(chunk).shape[0]
                used = (pending // hop) * hop
                pending -= used
                if used:
                    have += up.resample_chunk(np.zeros((used, s * k * c), np.float32)).shape[0]
                asked += chunk.shape[0]
                worst = max(worst, asked - have)
        return worst + self.block_size  # a period of margin

    def reset(self) -> None:
        s, c, k = self.num_streams, self.num_channels, self.num_stems
        self.inner.reset()
        self._down, self._up = self._streams()
        self._model_in = np.zeros((s, c, 0), np.float32)
        pad = np.zeros((self.model_pad, s * k * c), np.float32)
        primed = self._up.resample_chunk(pad) if self.model_pad else np.zeros((0, s * k * c), np.float32)
        self._out = np.zeros((s, k, c, self.priming), np.float32)
        self._append(primed)
        self._line = np.zeros((s, c, self.latency_samples), np.float32)  # the input, for the residual

    def _append(self, frames: np.ndarray) -> None:
        """frames: float32 (m, num_streams * num_stems * num_channels) from the up-sampler."""
        if frames.shape[0]:
            s, c, k = self.num_streams, self.num_channels, self.num_stems
            block = frames.T.reshape(s, k, c, -1)
            self._out = np.concatenate([self._out, block], axis=-1)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 (num_streams, num_channels, n) at the host rate -> stems float32 (num_streams, num_stems,
        num_channels, n), delayed by ``latency_samples``. Runs in the separation worker, never on the audio
        thread (soxr and NumPy allocate here)."""
        s, c, k = self.num_streams, self.num_channels, self.num_stems
        n = audio.shape[-1]
        model = self._down.resample_chunk(np.ascontiguousarray(audio.reshape(s * c, n).T))
        if model.shape[0]:
            self._model_in = np.concatenate([self._model_in, model.T.reshape(s, c, -1)], axis=-1)
        hop = self.inner.hop_size
        used = (self._model_in.shape[-1] // hop) * hop
        if used:
            stems = self.inner.process(np.ascontiguousarray(self._model_in[..., :used]))
            self._model_in = self._model_in[..., used:]
            self._append(self._up.resample_chunk(np.ascontiguousarray(stems.reshape(s * k * c, used).T)))
        if self._out.shape[-1] < n:
            raise RuntimeError("the resampling FIFO ran dry (its priming was too short)")
        out = np.ascontiguousarray(self._out[..., :n])
        self._out = self._out[..., n:]
        # the residual stem: the host-rate input delayed by the latency, minus the other stems
        line = np.concatenate([self._line, audio], axis=-1)
        delayed, self._line = line[..., :n], line[..., n:]
        out[:, self._residual] = delayed - out[:, self._others].sum(axis=1)
        return out
