"""The high-quality path: four stems from a look-ahead vocal model and the causal model, for audio known in advance.

``stembridge separate`` uses it by default (``--mode live`` selects the causal live model alone); live inputs never
do. The pipeline, on a whole track at the model rate (measured on real songs: docs/model.md):

1. **Vocals** from the look-ahead model (engine/lookahead.py; the shipped one is the vocals U-Net of Spleeter's
   2-stem model): its soft mask on the mixture's STFT (4096 / 1024), bins below its ``num_bins`` (11 kHz), the
   model fed the track brought to ``LEVEL_DB`` RMS (it is not level-invariant: +0.03 dB measured).
2. **Drums and bass** from the causal model run on what the vocals leave (mixture - vocals), through the same
   streaming path as live use. The vocals' share above 11 kHz (sibilants, breaths), which the look-ahead model
   does not cover, comes from the causal model run on the whole mixture (on the rest alone it hears no voice and
   keeps little of one). (A joint ratio mask over the four stems' power estimates was measured
   against this on the real validation songs: -0.10 dB mean SDR with the fine-tuned causal model, though 0.6 dB
   less vocal left in the rest; not used.)
3. **Other** is the residual: mixture - vocals - drums - bass in the time domain, so the stems sum to the input
   exactly, whatever the models do.

Memory per track: the mixture, the vocals, the rest, the causal model's stems and the vocal mask (float16): at
most about 10 copies of the track in float32 (1.1 GB for 5 minutes of stereo at 44.1 kHz). Not real-time code;
run it off the audio thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
from stembridge.engine.lookahead import LookaheadModel
from stembridge.engine.model_card import ModelError

DEFAULT_HQ_MODEL = Path(str(files("stembridge.engine").joinpath("models", "hq_vocals.onnx")))
STEMS = ("vocals", "drums", "bass", "other")
PIPELINE_VERSION = 2  # raise when the pipeline's maths changes: cached stems (engine/stem_cache.py) are keyed by it
LEVEL_DB = -16.0  # RMS (dBFS) of the track as the look-ahead model sees it
CHUNK_FRAMES = 512  # STFT frames per chunk of the inverse transforms (bounded memory on long tracks)
TILES_PER_CALL = 8  # look-ahead tiles computed together (the model batches them)
# How much audio the causal model hears before a range that does not start at 0 (``separate_range``): its recurrent
# state and the spatial filter's averages start from zero there, as they do at a track's start. Measured on the
# default model (benchmarks/results/hq_stems/): the range's stems are within 1e-3 of the whole-track pass's after
# this much (docs/hq-stems.md gives the curve).
WARMUP_S = 3.0


class HighQualitySeparator:
    """Four stems (vocals, drums, bass, other) of audio known in advance.

    ``separate(audio)``: audio float32 (num_channels, n) at ``sample_rate`` -> float32 (4, num_channels, n), aligned
    with the input and summing to it. Mono is separated as centred stereo and folded back.
    """

    stems = STEMS
    residual_stem = "other"

    def __init__(
        self,
        lookahead_path: str | Path | None = None,
        causal_path: str | Path | None = None,
        *,
        device: str = "auto",
        threads: int = 1,
        block_size: int = 4096,
        sessions=None,
    ) -> None:
        """``sessions``: an ``engine.batching.SharedSessions`` to take both models' sessions from (shared with
        separators on other threads) instead of building them."""
        from stembridge.engine.separator import StreamingSeparator
        from stembridge.engine.stream import BlockAdapter

        path = Path(lookahead_path) if lookahead_path is not None else DEFAULT_HQ_MODEL
        self.vocal_model = LookaheadModel(path, threads=threads, device=device, sessions=sessions)
        la = self.vocal_model.card
        if "vocals" not in la.stems:
            raise ModelError(f"{la.path}: the look-ahead model has no vocals stem (it has {', '.join(la.stems)})")
        self.causal = StreamingSeparator(
            causal_path,
            device=device,
            intra_op_threads=threads,
            max_hops=max(1, block_size // 64 + 2),
            sessions=sessions,
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
        # a second stream of the causal model, on the whole mix, for the vocals above the look-ahead model's band
        # (its own recurrent state, so ranges can run both streams side by side)
        self.mix_causal = StreamingSeparator(
            card.path, device=device, intra_op_threads=threads, max_hops=max(1, block_size // 64 + 2), sessions=sessions
        )
        self.mix_adapter = BlockAdapter(self.mix_causal, max_block_size=block_size, block_size=block_size)
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
            f"from causal model {card.name} on the rest, other = residual; on {self.vocal_model.active_provider}"
        )

    @property
    def model_files(self) -> list[Path]:
        """Both models' graphs and cards: what the stems depend on besides the audio and ``PIPELINE_VERSION``."""
        la, card = self.vocal_model.card.path, self.causal.card.path
        return [la, la.with_suffix(".json"), card, card.with_suffix(".json")]

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        from stembridge.engine.separate import separate_audio

        num_in, n = audio.shape
        mix = np.repeat(audio, self.num_channels, axis=0) if num_in == 1 else np.ascontiguousarray(audio)
        if mix.shape[0] != self.num_channels:
            raise ModelError(f"the high-quality path takes mono or {self.num_channels}-channel audio, not {num_in}")
        la = self.vocal_model
        gain = la.level_gain(mix, LEVEL_DB)
        bins = la.card.num_bins
        done = 0  # frames reported to ``progress``: a third per stage, n in all

        # the causal model on the whole mix, for the vocals above the look-ahead model's band (on the rest alone it
        # hears no voice below 11 kHz and keeps little above: 11-16 kHz leakage -1 dB, against -7 dB), needs nothing
        # of the look-ahead model: it runs beside steps 1 and 2 on a thread (ONNX Runtime releases the GIL)
        v = self.causal_order[0]
        with ThreadPoolExecutor(1, thread_name_prefix="stembridge-hq-mix") as pool:  # waits for it on any exit
            mix_pass = pool.submit(
                lambda: separate_audio(self.mix_adapter, mix, self.block_size, overlap=True)[v].copy()
            )
            vocals, causal, done = self._vocals_and_rest(mix, gain, progress, done)
            causal_mix_vocals = mix_pass.result()

        # 3. above the look-ahead model's band, the causal model's vocals (sibilants, breaths); 4. other = residual
        out = np.empty((4,) + mix.shape, dtype=np.float32)
        out[1], out[2] = causal[1], causal[2]
        for s0, s1, f0, f1 in self._chunks(n):
            high = la.stft(causal_mix_vocals, f0, f1)
            high[:, :, :bins] = 0.0
            out[0, :, s0:s1] = vocals[:, s0:s1] + la.istft_range(high, f0, s0, s1, n)
            done = self._report(progress, done, (s1 - s0) // 3)
        out[3] = mix - out[0] - out[1] - out[2]
        self._report(progress, done, n - done)
        if num_in == 1 and self.num_channels != 1:
            out = out.mean(axis=1, keepdims=True)
        return out

    def _vocals_and_rest(self, mix: np.ndarray, gain: float, progress, done: int):
        """Steps 1 and 2 of ``separate``: the look-ahead vocals (C, n) and the causal stems of the rest (4, C, n)."""
        from stembridge.engine.separate import separate_audio

        la = self.vocal_model
        n = mix.shape[1]
        total = la.num_frames(n)
        bins = la.card.num_bins

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
        causal = separate_audio(self.adapter, mix - vocals, self.block_size, overlap=True)[self.causal_order]
        done = self._report(progress, done, n // 3)
        return vocals, causal, done

    # ------------------------------------------------------------------------------------------- ranges

    def prepare(self, audio: np.ndarray) -> tuple[np.ndarray, TrackVocalMasks]:
        """What every range of one track shares: the track as the models take it (float32 (num_channels, n), mono
        doubled) and its vocal masks (computed tile by tile as ranges ask for them, then kept)."""
        num_in = audio.shape[0]
        mix = np.repeat(audio, self.num_channels, axis=0) if num_in == 1 else np.ascontiguousarray(audio)
        if mix.shape[0] != self.num_channels or mix.ndim != 2:
            raise ModelError(f"the high-quality path takes mono or {self.num_channels}-channel audio, not {num_in}")
        mix = mix.astype(np.float32, copy=False)
        gain = self.vocal_model.level_gain(mix, LEVEL_DB)
        return mix, TrackVocalMasks(self.vocal_model, mix, gain, self.vocal_index)

    def open_range(
        self,
        mix: np.ndarray,
        masks: TrackVocalMasks,
        start: int,
        warmup_samples: int | None = None,
        *,
        warmup_tiles: bool = True,
    ) -> RangeStems:
        """A ``RangeStems`` producing the stems of ``mix`` (from ``prepare``) from sample ``start`` on, range after
        range. The causal model is warmed up on ``warmup_samples`` (default ``WARMUP_S``) before ``start``.
        ``warmup_tiles`` False: shorten the warm-up rather than compute a look-ahead tile for it alone (a tile is
        one model call of 8.9 s of audio: what a file deck's seek waits for). Only one range of a separator may be
        open at a time: they share its causal model's stream."""
        if warmup_samples is None:
            warmup_samples = int(round(WARMUP_S * self.sample_rate))
        return RangeStems(self, mix, masks, start, warmup_samples, warmup_tiles=warmup_tiles)

    def separate_range(
        self,
        audio: np.ndarray,
        start: int,
        stop: int,
        *,
        warmup_samples: int | None = None,
        masks: TrackVocalMasks | None = None,
    ) -> np.ndarray:
        """Stems of samples [start, stop) of a whole track: audio float32 (num_channels, n) -> float32 (4,
        num_channels, stop - start), summing to ``audio[:, start:stop]`` exactly.

        The look-ahead vocals are those of the whole track (its tiles are global); the causal pass starts
        ``warmup_samples`` (default ``WARMUP_S``) before ``start`` from zero state, so drums and bass match the
        whole-track pass's once the model has converged (exactly when ``start`` is 0). ``masks``: a
        ``TrackVocalMasks`` of this track (from ``prepare``) to reuse across ranges."""
        n = audio.shape[1]
        if not 0 <= start < stop <= n:
            raise ValueError(f"range [{start}, {stop}) is not inside the track's {n} samples")
        mix, own = self.prepare(audio)
        out = self.open_range(mix, masks if masks is not None else own, start, warmup_samples).next(stop)
        if audio.shape[0] == 1 and self.num_channels != 1:
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


class TrackVocalMasks:
    """The look-ahead model's vocal mask of one whole track, computed tile by tile as ranges ask for it and kept:
    float16 (num_channels, frames, num_bins), about 53 MB for 5 minutes of stereo. Not thread-safe: one user."""

    def __init__(self, model: LookaheadModel, mix: np.ndarray, gain: float, vocal_index: int) -> None:
        kept = model.card.kept_frames
        self.model = model
        self.mix = mix
        self.gain = gain
        self.vocal_index = vocal_index
        self.num_tiles = -(-model.num_frames(mix.shape[1]) // kept)
        self.values = np.empty((mix.shape[0], self.num_tiles * kept, model.card.num_bins), dtype=np.float16)
        self.done = np.zeros(self.num_tiles, dtype=bool)

    def frames(self, first: int, last: int) -> np.ndarray:
        """The vocal mask of frames [first, last): float32 (num_channels, last - first, num_bins)."""
        kept = self.model.card.kept_frames
        k, k1 = first // kept, (last - 1) // kept + 1
        while k < k1:
            if self.done[k]:
                k += 1
                continue
            j = k
            while j < k1 and j - k < TILES_PER_CALL and not self.done[j]:
                j += 1
            self.values[:, k * kept : j * kept] = self.model.tile_masks(self.mix, k, j, self.gain)[self.vocal_index]
            self.done[k:j] = True
            k = j
        return self.values[:, first:last].astype(np.float32)

    @property
    def fraction_done(self) -> float:
        return float(self.done.mean())


class RangeStems:
    """The high-quality stems of one track from a start sample on, one range after another (``next(stop)``), with
    the causal model's stream carried from range to range, so consecutive ranges join exactly as one range would.
    Made by ``HighQualitySeparator.open_range``. Not real-time code."""

    def __init__(
        self,
        hq: HighQualitySeparator,
        mix: np.ndarray,
        masks: TrackVocalMasks,
        start: int,
        warmup_samples: int,
        *,
        warmup_tiles: bool = True,
    ) -> None:
        la = hq.vocal_model
        n = mix.shape[1]
        if not 0 <= start <= n:
            raise ValueError(f"start {start} is outside the track's {n} samples")
        if warmup_samples < 0:
            raise ValueError(f"warmup_samples must be >= 0, got {warmup_samples}")
        self.hq, self.mix, self.masks, self.num_samples = hq, mix, masks, n
        self.pos = start
        hop, half = la.card.hop_size, la.card.n_fft // 2
        first = la.frame_range(start, start + 1, n)[0] if start < n else la.num_frames(n) - 1
        begin = max(0, first * hop - half - warmup_samples)
        begin -= begin % hop  # the causal buffer starts on a frame boundary of the look-ahead STFT
        if not warmup_tiles:  # start the warm-up where the tiles already computed (or the range's own) begin
            kept = la.card.kept_frames
            k = first // kept
            while k > 0 and masks.done[k - 1]:
                k -= 1
            # the frames touching sample b start at (b - half) // hop + 1: keep them at or after tile k
            earliest = (k * kept - 1) * hop + half if k > 0 else 0
            begin = max(begin, min(earliest, first * hop - half))
        hq.adapter.reset()
        hq.mix_adapter.reset()
        self._fed = begin  # next sample of (mix - vocals) to go into the causal model
        self._drop = hq.adapter.latency_samples  # stream samples still to drop (the causal model's latency)
        self._buf_start = begin  # absolute sample of self._causal[..., 0]
        # aligned causal stems: vocals of the mix (for above the look-ahead band), drums and bass of the rest
        self._causal = np.zeros((3, mix.shape[0], 0), dtype=np.float32)

    @property
    def _buf_end(self) -> int:
        return self._buf_start + self._causal.shape[-1]

    def _vocals(self, s0: int, s1: int) -> np.ndarray:
        """The look-ahead vocals of samples [s0, s1): float32 (num_channels, s1 - s0)."""
        la, n = self.hq.vocal_model, self.num_samples
        bins = la.card.num_bins
        f0, f1 = la.frame_range(s0, s1, n)
        spec = la.stft(self.mix, f0, f1)
        spec[:, :, bins:] = 0.0
        spec[:, :, :bins] *= self.masks.frames(f0, f1)
        return la.istft_range(spec, f0, s0, s1, n)

    def _causal_until(self, stop: int) -> None:
        """Run the causal model on (mix - vocals) and on the mix until their aligned stems reach sample ``stop``."""
        hq, n = self.hq, self.num_samples
        block = hq.block_size
        latency = hq.adapter.latency_samples
        if self._buf_end >= stop:
            return
        target = self._fed + -(-(stop + latency - self._fed) // block) * block
        whole = np.zeros((self.mix.shape[0], target - self._fed), dtype=np.float32)
        real = min(target, n) - self._fed
        if real > 0:
            whole[:, :real] = self.mix[:, self._fed : self._fed + real]
        rest = whole.copy()
        if real > 0:
            rest[:, :real] -= self._vocals(self._fed, self._fed + real)
        v, d, b = hq.causal_order[:3]
        starts = range(0, target - self._fed, block)

        def mix_vocals() -> list[np.ndarray]:  # the stream on the whole mix, beside the one on the rest
            return [hq.mix_adapter.process(whole[None, :, i : i + block])[0, v].copy() for i in starts]

        with ThreadPoolExecutor(1, thread_name_prefix="stembridge-hq-mix") as pool:
            vocals = pool.submit(mix_vocals)
            rest_stems = [hq.adapter.process(rest[None, :, i : i + block])[0, [d, b]] for i in starts]
            outs = [np.concatenate([vv[None], db]) for vv, db in zip(vocals.result(), rest_stems, strict=True)]
        stems = np.concatenate(outs, axis=-1)[..., self._drop :]
        self._drop = max(0, self._drop - (target - self._fed))
        self._fed = target
        keep = max(0, min(stems.shape[-1], n - self._buf_end))
        self._causal = np.concatenate([self._causal, stems[..., :keep]], axis=-1)

    def next(self, stop: int) -> np.ndarray:
        """Stems of samples [pos, stop): float32 (4, num_channels, stop - pos), summing to the mix exactly; then
        ``pos`` is ``stop``."""
        la, n = self.hq.vocal_model, self.num_samples
        s0, s1 = self.pos, stop
        if not s0 < s1 <= n:
            raise ValueError(f"range [{s0}, {s1}) is empty or past the track's {n} samples")
        hop, half, bins = la.card.hop_size, la.card.n_fft // 2, la.card.num_bins
        out = np.empty((4, self.mix.shape[0], s1 - s0), dtype=np.float32)
        for c0 in range(s0, s1, CHUNK_FRAMES * hop):
            c1 = min(s1, c0 + CHUNK_FRAMES * hop)
            f0, f1 = la.frame_range(c0, c1, n)
            self._causal_until(min(n, (f1 - 1) * hop + half))
            if self._buf_start > max(0, f0 * hop - half):
                raise RuntimeError("RangeStems: the causal stems before this range were already dropped")
            k = self._buf_start // hop
            high = la.stft(self._causal[0], f0 - k, f1 - k)
            high[:, :, :bins] = 0.0
            out[0, :, c0 - s0 : c1 - s0] = self._vocals(c0, c1) + la.istft_range(high, f0, c0, c1, n)
            a, z = c0 - self._buf_start, c1 - self._buf_start
            out[1, :, c0 - s0 : c1 - s0] = self._causal[1, :, a:z]
            out[2, :, c0 - s0 : c1 - s0] = self._causal[2, :, a:z]
        out[3] = self.mix[:, s0:s1] - out[0] - out[1] - out[2]
        self.pos = s1
        if s1 < n:  # drop the causal stems no later range needs
            keep_from = max(0, la.frame_range(s1, s1 + 1, n)[0] * hop - half)
            keep_from -= keep_from % hop
            if keep_from > self._buf_start:
                self._causal = self._causal[..., keep_from - self._buf_start :].copy()
                self._buf_start = keep_from
        return out
