"""The high-quality path: four stems from a look-ahead vocal model and the causal model, for audio known in advance.

``stembridge separate`` uses it by default (``--mode live`` selects the causal live model alone); live inputs never
do. The pipeline, on a whole track at the model rate (measured on real songs: docs/model.md):

1. **Vocals** from the look-ahead model (engine/lookahead.py; the shipped one is Spleeter's 2-stem U-Nets): its
   ratio mask on the mixture's STFT (4096 / 1024), bins below its ``num_bins`` (11 kHz), the model fed the track
   brought to ``LEVEL_DB`` RMS (it is not level-invariant).
2. **Drums and bass** from the causal model run on what the vocals leave (mixture - vocals), through the same
   streaming path as live use; the causal model also gives the vocals' share above 11 kHz (sibilants, breaths),
   which the look-ahead model does not cover.
3. **One joint ratio mask** (a single-pass Wiener filter): every stem's power estimate in the 4096-point STFT,
   each stem gets mixture x (its power / all powers).
4. **Other** is the residual: mixture - vocals - drums - bass in the time domain, so the stems sum to the input
   exactly, whatever the models do.

Memory per track: the mixture, four stems, the causal model's stems and the vocal mask (float16): about
4.5 x the track as float32 stems. Not real-time code; run it off the audio thread.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np
from stembridge.engine.lookahead import LookaheadModel
from stembridge.engine.model_card import ModelError

DEFAULT_HQ_MODEL = Path(str(files("stembridge.engine").joinpath("models", "hq_vocals.onnx")))
STEMS = ("vocals", "drums", "bass", "other")
LEVEL_DB = -16.0  # RMS (dBFS) of the track as the look-ahead model sees it
CHUNK_FRAMES = 512  # STFT frames per chunk of the joint mask (bounded memory on long tracks)
TILES_PER_CALL = 8  # look-ahead tiles computed together (the model batches them)


class HighQualitySeparator:
    """Four stems (vocals, drums, bass, other) of audio known in advance.

    ``separate(audio)``: audio float32 (num_channels, n) at ``sample_rate`` -> float32 (4, num_channels, n), aligned
    with the input and summing to it. Mono is separated as centred stereo and folded back.
    """

    stems = STEMS

    def __init__(
        self,
        lookahead_path: str | Path | None = None,
        causal_path: str | Path | None = None,
        *,
        device: str = "auto",
        threads: int = 1,
        block_size: int = 4096,
    ) -> None:
        from stembridge.engine.separator import StreamingSeparator
        from stembridge.engine.stream import BlockAdapter

        path = Path(lookahead_path) if lookahead_path is not None else DEFAULT_HQ_MODEL
        self.vocal_model = LookaheadModel(path, threads=threads, device=device)
        la = self.vocal_model.card
        if "vocals" not in la.stems:
            raise ModelError(f"{la.path}: the look-ahead model has no vocals stem (it has {', '.join(la.stems)})")
        self.causal = StreamingSeparator(
            causal_path, device=device, intra_op_threads=threads, max_hops=max(1, block_size // 64 + 2)
        )
        card = self.causal.card
        missing = [s for s in STEMS if s not in card.stems]
        if missing:
            raise ModelError(f"{card.path}: the causal model has no stem(s) {', '.join(missing)}")
        if card.sample_rate != la.sample_rate:
            raise ModelError(
                f"{la.path}: its sample rate {la.sample_rate} Hz differs from the causal model's {card.sample_rate}"
            )
        self.adapter = BlockAdapter(self.causal, max_block_size=block_size, block_size=block_size)
        self.block_size = block_size
        self.sample_rate = la.sample_rate
        self.num_channels = la.num_channels
        self.vocal_index = la.stems.index("vocals")
        self.causal_order = [card.stems.index(s) for s in STEMS]

    @property
    def description(self) -> str:
        la, card = self.vocal_model.card, self.causal.card
        return (
            f"high-quality path: vocals from look-ahead model {la.name} ({la.path.name}, "
            f"{la.context_frames * la.hop_size / la.sample_rate:.1f} s of context either side), drums and bass "
            f"from causal model {card.name}, joint ratio mask, other = residual; on {self.vocal_model.active_provider}"
        )

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        from stembridge.engine.separate import separate_audio

        num_in, n = audio.shape
        mix = np.repeat(audio, self.num_channels, axis=0) if num_in == 1 else np.ascontiguousarray(audio)
        if mix.shape[0] != self.num_channels:
            raise ModelError(f"the high-quality path takes mono or {self.num_channels}-channel audio, not {num_in}")
        la = self.vocal_model
        total = la.num_frames(n)
        gain = la.level_gain(mix, LEVEL_DB)
        bins = la.card.num_bins
        done = 0  # frames reported to ``progress``: a third per stage, n in all

        # 1. the look-ahead vocal mask, kept as float16 (C, frames, bins), each tile of frames computed once
        kept = la.card.kept_frames
        num_tiles = -(-total // kept)
        vmask = np.empty((mix.shape[0], num_tiles * kept, bins), dtype=np.float16)
        for k0 in range(0, num_tiles, TILES_PER_CALL):
            k1 = min(num_tiles, k0 + TILES_PER_CALL)
            vmask[:, k0 * kept : k1 * kept] = la.tile_masks(mix, k0, k1, gain)[self.vocal_index]
            covered = min(k1 * kept * la.card.hop_size, n) - min(k0 * kept * la.card.hop_size, n)
            done = self._report(progress, done, covered // 3)
        vocals = np.zeros_like(mix)
        for s0, s1, f0, f1 in self._chunks(n):
            spec = la.stft(mix, f0, f1)
            spec[:, :, bins:] = 0.0
            spec[:, :, :bins] *= vmask[:, f0:f1].astype(np.float32)
            vocals[:, s0:s1] = la.istft_range(spec, f0, s0, s1, n)

        # 2. the causal model on what the vocals leave
        residual = mix - vocals
        causal = separate_audio(self.adapter, residual, self.block_size, overlap=True)[self.causal_order]
        done = self._report(progress, done, n // 3)

        # 3. one joint ratio mask in the look-ahead model's STFT; 4. other = residual in the time domain
        out = np.empty((4,) + mix.shape, dtype=np.float32)
        for s0, s1, f0, f1 in self._chunks(n):
            x = la.stft(mix, f0, f1)
            v = np.zeros_like(x)
            v[:, :, :bins] = x[:, :, :bins] * vmask[:, f0:f1].astype(np.float32)
            cv, cd, cb = (la.stft(causal[i], f0, f1) for i in range(3))
            v[:, :, bins:] = cv[:, :, bins:]  # above the look-ahead model's band, the causal model's vocals
            o = x - v - cd - cb
            powers = np.stack([np.abs(s) ** 2 for s in (v, cd, cb, o)])
            masks = powers / (powers.sum(axis=0) + 1e-20)
            for i in range(3):
                out[i, :, s0:s1] = la.istft_range(x * masks[i], f0, s0, s1, n)
            done = self._report(progress, done, (s1 - s0) // 3)
        out[3] = mix - out[0] - out[1] - out[2]
        self._report(progress, done, n - done)
        if num_in == 1 and self.num_channels != 1:
            out = out.mean(axis=1, keepdims=True)
        return out

    @staticmethod
    def _report(progress: Callable[[int], None] | None, done: int, frames: int) -> int:
        if progress is not None and frames > 0:
            progress(frames)
        return done + frames

    def _chunks(self, n: int):
        """(first sample, end sample, first frame, end frame) of chunks of about CHUNK_FRAMES frames covering n."""
        la = self.vocal_model
        step = CHUNK_FRAMES * la.card.hop_size
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            f0, f1 = la.frame_range(s0, s1, n)
            yield s0, s1, f0, f1
