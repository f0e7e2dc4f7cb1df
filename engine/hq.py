"""The high-quality path: four stems from two look-ahead models and the causal model, for audio known in advance.

``stembridge separate`` uses it by default (``--mode live`` selects the causal live model alone); live inputs never
do. The pipeline, on a whole track at the model rate (measured on real songs: docs/model.md):

1. **Vocals** from the look-ahead vocal model (engine/lookahead.py; the shipped one is the vocals U-Net of Spleeter's
   2-stem model): its soft mask on the mixture's STFT (4096 / 1024), bins below its ``num_bins`` (11 kHz), the
   model fed the track brought to ``LEVEL_DB`` RMS (it is not level-invariant: +0.03 dB measured).
2. **Drums and bass** from the look-ahead stems model (the shipped one is the project's band-GRU model with a
   backward GRU layer, trained on real multitracks: engine/training/model.py ``bidirectional``) run on what the
   vocals leave (the *rest*: mixture - vocals), through the multichannel Wiener filter of engine/spatial.py with
   each tile's own spatial statistics (``segment_filter``: +0.07 dB mean SDR measured, against the masks
   alone). The vocals' share above 11 kHz (sibilants, breaths), which the vocal model does not cover, comes
   from the causal live model run on the whole mixture (on the rest alone it hears no voice and keeps little of
   one).
3. **Other** is the residual: mixture - vocals - drums - bass in the time domain, so the stems sum to the input
   exactly, whatever the models do.

Both look-ahead models tile the track globally (engine/lookahead.py), so their stems of any range equal the
whole-track pass's exactly; only the causal model's high-band vocals depend on where a range starts (its recurrent
state and spatial filter warm up over ``WARMUP_S``). Memory per track: the mixture, the rest, the stems, the vocal
mask (float16) and a few tiles of the stems model's masks: about 8 copies of the track in float32 (0.9 GB for 5
minutes of stereo at 44.1 kHz). Not real-time code; run it off the audio thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
from stembridge.engine.lookahead import LookaheadModel
from stembridge.engine.model_card import ModelError
from stembridge.engine.spatial import segment_filter, segment_stats

DEFAULT_HQ_MODEL = Path(str(files("stembridge.engine").joinpath("models", "hq_vocals.onnx")))
DEFAULT_STEMS_MODEL = Path(str(files("stembridge.engine").joinpath("models", "hq_stems.onnx")))
STEMS = ("vocals", "drums", "bass", "other")
REST_STEMS = ("drums", "bass")  # what the stems model gives from the rest
PIPELINE_VERSION = 3  # raise when the pipeline's maths changes: cached stems (engine/stem_cache.py) are keyed by it
LEVEL_DB = -16.0  # RMS (dBFS) of the track as the look-ahead vocal model sees it
CHUNK_FRAMES = 512  # vocal-model STFT frames per chunk of the inverse transforms (bounded memory on long tracks)
TILES_PER_CALL = 8  # look-ahead tiles computed together (the model batches them)
REST_BLOCK = 16384  # samples per block of the rest, computed once as ranges ask for it
REST_TILES_KEPT = 16  # stems-model tiles a track keeps (the most recent; 71 s of audio, 50 MB)
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
        stems_path: str | Path | None = None,
        device: str = "auto",
        threads: int = 1,
        block_size: int = 4096,
        sessions=None,
    ) -> None:
        """``sessions``: an ``engine.batching.SharedSessions`` to take the three models' sessions from (shared with
        separators on other threads) instead of building them."""
        from stembridge.engine.separator import StreamingSeparator
        from stembridge.engine.stream import BlockAdapter

        path = Path(lookahead_path) if lookahead_path is not None else DEFAULT_HQ_MODEL
        self.vocal_model = LookaheadModel(path, threads=threads, device=device, sessions=sessions)
        la = self.vocal_model.card
        if "vocals" not in la.stems:
            raise ModelError(f"{la.path}: the look-ahead model has no vocals stem (it has {', '.join(la.stems)})")
        self.stem_model = LookaheadModel(
            Path(stems_path) if stems_path is not None else DEFAULT_STEMS_MODEL,
            threads=threads,
            device=device,
            sessions=sessions,
        )
        sm = self.stem_model.card
        missing = [s for s in REST_STEMS if s not in sm.stems]
        if missing:
            raise ModelError(f"{sm.path}: the look-ahead stems model has no stem(s) {', '.join(missing)}")
        # the causal model on the whole mix, for the vocals above the vocal model's band
        self.mix_causal = StreamingSeparator(
            causal_path,
            device=device,
            intra_op_threads=threads,
            max_hops=max(1, block_size // 64 + 2),
            sessions=sessions,
        )
        card = self.mix_causal.card
        if "vocals" not in card.stems:
            raise ModelError(f"{card.path}: the causal model has no vocals stem")
        for other in (sm, card):
            if other.sample_rate != la.sample_rate or other.num_channels != la.num_channels:
                raise ModelError(
                    f"{other.path}: {other.sample_rate} Hz, {other.num_channels} channels, but the vocal model "
                    f"{la.path.name} takes {la.sample_rate} Hz, {la.num_channels} channels"
                )
        self.mix_adapter = BlockAdapter(self.mix_causal, max_block_size=block_size, block_size=block_size)
        self.block_size = block_size
        self.sample_rate = la.sample_rate
        self.num_channels = la.num_channels
        self.vocal_index = la.stems.index("vocals")
        self.rest_index = [sm.stems.index(s) for s in REST_STEMS]
        self.causal_vocals = card.stems.index("vocals")

    @property
    def description(self) -> str:
        la, sm, card = self.vocal_model.card, self.stem_model.card, self.mix_causal.card
        return (
            f"high-quality path: vocals from look-ahead model {la.name} ({la.path.name}, "
            f"{la.context_frames * la.hop_size / la.sample_rate:.1f} s of context either side), drums and bass "
            f"from look-ahead model {sm.name} ({sm.path.name}, {sm.context_frames * sm.hop_size / sm.sample_rate:.1f}"
            f" s) on the rest, vocals above {la.num_bins * la.sample_rate / la.n_fft / 1000:.0f} kHz from causal "
            f"model {card.name}, other = residual; on {self.vocal_model.active_provider}"
        )

    @property
    def model_files(self) -> list[Path]:
        """The models' graphs and cards: what the stems depend on besides the audio and ``PIPELINE_VERSION``."""
        paths = [self.vocal_model.card.path, self.stem_model.card.path, self.mix_causal.card.path]
        return [q for p in paths for q in (p, p.with_suffix(".json"))]

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        from stembridge.engine.separate import separate_audio

        num_in, n = audio.shape
        mix, masks = self.prepare(audio)
        la = self.vocal_model
        bins = la.card.num_bins
        done = 0  # samples reported to ``progress``: a third per stage, n in all

        # the causal model on the whole mix, for the vocals above the vocal model's band, needs nothing of the
        # look-ahead models: it runs beside steps 1 and 2 on a thread (ONNX Runtime releases the GIL)
        v = self.causal_vocals
        with ThreadPoolExecutor(1, thread_name_prefix="stembridge-hq-mix") as pool:  # waits for it on any exit
            mix_pass = pool.submit(
                lambda: separate_audio(self.mix_adapter, mix, self.block_size, overlap=True)[v].copy()
            )
            out = np.empty((4,) + mix.shape, dtype=np.float32)
            for s0 in range(0, n, REST_BLOCK):  # 1. the rest (the mix less the vocal model's vocals)
                s1 = min(n, s0 + REST_BLOCK)
                masks.rest.get(s0, s1)
                done = self._report(progress, done, (s1 - s0) // 3)
            for s0, s1, _, _ in self._chunks(n):  # 2. drums and bass of the rest
                out[1:3, :, s0:s1] = masks.rest_stems(s0, s1)
                done = self._report(progress, done, (s1 - s0) // 3)
            causal_mix_vocals = mix_pass.result()

        # 3. vocals: the vocal model's below its band, the causal model's above (sibilants, breaths); other = residual
        for s0, s1, f0, f1 in self._chunks(n):
            high = la.stft(causal_mix_vocals, f0, f1)
            high[:, :, :bins] = 0.0
            out[0, :, s0:s1] = mix[:, s0:s1] - masks.rest.get(s0, s1) + la.istft_range(high, f0, s0, s1, n)
            done = self._report(progress, done, (s1 - s0) // 3)
        out[3] = mix - out[0] - out[1] - out[2]
        self._report(progress, done, n - done)
        if num_in == 1 and self.num_channels != 1:
            out = out.mean(axis=1, keepdims=True)
        return out

    # ------------------------------------------------------------------------------------------- ranges

    def prepare(self, audio: np.ndarray) -> tuple[np.ndarray, TrackMasks]:
        """What every range of one track shares: the track as the models take it (float32 (num_channels, n), mono
        doubled) and its ``TrackMasks`` (the look-ahead models' masks and the rest, computed as ranges ask)."""
        num_in = audio.shape[0]
        mix = np.repeat(audio, self.num_channels, axis=0) if num_in == 1 else np.ascontiguousarray(audio)
        if mix.shape[0] != self.num_channels or mix.ndim != 2:
            raise ModelError(f"the high-quality path takes mono or {self.num_channels}-channel audio, not {num_in}")
        mix = mix.astype(np.float32, copy=False)
        return mix, TrackMasks(self, mix)

    def open_range(
        self,
        mix: np.ndarray,
        masks: TrackMasks,
        start: int,
        warmup_samples: int | None = None,
        *,
        warmup_tiles: bool = True,
    ) -> RangeStems:
        """A ``RangeStems`` producing the stems of ``mix`` (from ``prepare``) from sample ``start`` on, range after
        range. The causal model (the high-band vocals) is warmed up on ``warmup_samples`` (default ``WARMUP_S``)
        before ``start``. ``warmup_tiles`` False: shorten the warm-up rather than compute a vocal-model tile for it
        alone (a tile is one model call of 8.9 s of audio: what a file deck's seek waits for). Only one range of a
        separator may be open at a time: they share its causal model's stream."""
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
        masks: TrackMasks | None = None,
    ) -> np.ndarray:
        """Stems of samples [start, stop) of a whole track: audio float32 (num_channels, n) -> float32 (4,
        num_channels, stop - start), summing to ``audio[:, start:stop]`` exactly.

        The look-ahead stems are those of the whole track (their tiles are global); the causal pass starts
        ``warmup_samples`` (default ``WARMUP_S``) before ``start`` from zero state, so the high-band vocals match the
        whole-track pass's once the model has converged (exactly when ``start`` is 0). ``masks``: the
        ``TrackMasks`` of this track (from ``prepare``) to reuse across ranges."""
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
        """(first sample, end sample, first frame, end frame) of chunks of about CHUNK_FRAMES vocal-model frames
        covering n."""
        la = self.vocal_model
        step = CHUNK_FRAMES * la.card.hop_size
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            f0, f1 = la.frame_range(s0, s1, n)
            yield s0, s1, f0, f1


class TrackMasks:
    """What the look-ahead models give for one track, computed as ranges ask and kept (not thread-safe: one user):

    - ``vocals``: the vocal model's mask of the whole track (``TrackVocalMasks``);
    - ``rest``: the mix less those vocals (``TrackRest``);
    - what the multichannel Wiener filter of engine/spatial.py needs of the stems model's masks on the rest, tile
      by tile: each tile's spatial statistics (averaged over its frames) and its frames' stem amplitudes
      (``segment_stats``, used by ``segment_filter``), the most recent ``REST_TILES_KEPT`` tiles kept (a run moving
      forward computes each tile once; a jump back far recomputes a few). Drums and bass are the filter's output.
    """

    def __init__(self, hq: HighQualitySeparator, mix: np.ndarray) -> None:
        self.hq = hq
        self.mix = mix
        self.num_samples = mix.shape[1]
        gain = hq.vocal_model.level_gain(mix, LEVEL_DB)
        self.vocals = TrackVocalMasks(hq.vocal_model, mix, gain, hq.vocal_index)
        self.rest = TrackRest(hq.vocal_model, mix, self.vocals)
        # stems-model tile -> (spatial statistics (1, 1, 5, S, bins), stem amplitudes (1, kept, S, bins)): all the
        # filter needs of the tile's masks
        self._tiles: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def done(self) -> np.ndarray:
        """Which vocal-model tiles are computed (``RangeStems`` starts its warm-up where they begin)."""
        return self.vocals.done

    def _tile(self, k: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``k``'s spatial statistics and stem amplitudes, computing it (with its uncomputed successors before
        ``k1``, up to ``TILES_PER_CALL`` in one model call) when it is not kept."""
        if k in self._tiles:
            self._tiles.move_to_end(k)
            return self._tiles[k]
        sm = self.hq.stem_model
        kept, n = sm.card.kept_frames, self.num_samples
        j = k
        while j < k1 and j - k < TILES_PER_CALL and j not in self._tiles:
            j += 1
        a, b = sm.tile_span(k, j)
        a, b = max(0, a), min(n, b)
        rest = self.rest.get(a, b) if b > a else np.zeros((self.mix.shape[0], 0), dtype=np.float32)
        masks = sm.tile_masks(rest, k, j, offset=a, num_samples=n).transpose(2, 0, 1, 3)  # (frames, S, C, bins)
        spec = sm.stft(rest, k * kept, j * kept, offset=a)[:, :, : sm.card.num_bins]  # (C, frames, bins)
        for i in range(k, j):
            f = slice((i - k) * kept, (i - k + 1) * kept)
            self._tiles[i] = segment_stats(spec[None, :, f], np.ascontiguousarray(masks[None, f]))
        asked = self._tiles[k]
        while len(self._tiles) > max(REST_TILES_KEPT, j - k):  # (never the tiles just computed)
            self._tiles.popitem(last=False)
        return asked

    def rest_stems(self, s0: int, s1: int) -> np.ndarray:
        """Drums and bass of samples [s0, s1): float32 (2, C, s1 - s0), the spatial filter of the stems model's
        masks on the rest."""
        sm, n = self.hq.stem_model, self.num_samples
        kept, half, bins = sm.card.kept_frames, sm.card.n_fft // 2, sm.card.num_bins
        g0, g1 = sm.frame_range(s0, s1, n)
        a, b = max(0, g0 * sm.card.hop_size - half), min(n, (g1 - 1) * sm.card.hop_size + half)
        spec = sm.stft(self.rest.get(a, b), g0, g1, offset=a)  # (C, frames, n_fft / 2 + 1)
        out = np.zeros((2,) + spec.shape, dtype=np.complex64)
        for k in range(g0 // kept, (g1 - 1) // kept + 1):
            stats, amplitude = self._tile(k, (g1 - 1) // kept + 1)
            f0, f1 = max(g0, k * kept), min(g1, (k + 1) * kept)
            part = spec[None, :, f0 - g0 : f1 - g0, :bins]
            amp = amplitude[:, f0 - k * kept : f1 - k * kept]
            out[:, :, f0 - g0 : f1 - g0, :bins] = segment_filter(part, stats, amp, self.hq.rest_index)[0]
        return sm.istft_range(out, g0, s0, s1, n)


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


class TrackRest:
    """The mix of one track less its look-ahead vocals (below the vocal model's band), computed in blocks of
    ``REST_BLOCK`` samples as they are asked for and kept: float32 (num_channels, n). Not thread-safe: one user."""

    def __init__(self, model: LookaheadModel, mix: np.ndarray, vocals: TrackVocalMasks) -> None:
        self.model, self.mix, self.vocals = model, mix, vocals
        self.values = np.empty_like(mix)
        self.done = np.zeros(-(-mix.shape[1] // REST_BLOCK), dtype=bool)

    def get(self, s0: int, s1: int) -> np.ndarray:
        """Samples [s0, s1) of the rest (a view: do not write to it)."""
        la, n = self.model, self.mix.shape[1]
        bins = la.card.num_bins
        for b in range(s0 // REST_BLOCK, -(-s1 // REST_BLOCK)):
            if self.done[b]:
                continue
            a, z = b * REST_BLOCK, min(n, (b + 1) * REST_BLOCK)
            f0, f1 = la.frame_range(a, z, n)
            spec = la.stft(self.mix, f0, f1)
            spec[:, :, bins:] = 0.0
            spec[:, :, :bins] *= self.vocals.frames(f0, f1)
            self.values[:, a:z] = self.mix[:, a:z] - la.istft_range(spec, f0, a, z, n)
            self.done[b] = True
        return self.values[:, s0:s1]


class RangeStems:
    """The high-quality stems of one track from a start sample on, one range after another (``next(stop)``), with
    the causal model's stream carried from range to range, so consecutive ranges join exactly as one range would.
    Made by ``HighQualitySeparator.open_range``. Not real-time code."""

    def __init__(
        self,
        hq: HighQualitySeparator,
        mix: np.ndarray,
        masks: TrackMasks,
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
        begin -= begin % hop  # the causal buffer starts on a frame boundary of the vocal model's STFT
        if not warmup_tiles:  # start the warm-up where the tiles already computed (or the range's own) begin
            kept = la.card.kept_frames
            k = first // kept
            while k > 0 and masks.done[k - 1]:
                k -= 1
            # the frames touching sample b start at (b - half) // hop + 1: keep them at or after tile k
            earliest = (k * kept - 1) * hop + half if k > 0 else 0
            begin = max(begin, min(earliest, first * hop - half))
        hq.mix_adapter.reset()
        self._fed = begin  # next sample of the mix to go into the causal model
        self._drop = hq.mix_adapter.latency_samples  # stream samples still to drop (the causal model's latency)
        self._buf_start = begin  # absolute sample of self._causal[..., 0]
        self._causal = np.zeros((mix.shape[0], 0), dtype=np.float32)  # the causal model's vocals of the mix, aligned

    @property
    def _buf_end(self) -> int:
        return self._buf_start + self._causal.shape[-1]

    def _causal_until(self, stop: int) -> None:
        """Run the causal model on the mix until its aligned vocals reach sample ``stop``."""
        hq, n = self.hq, self.num_samples
        block = hq.block_size
        latency = hq.mix_adapter.latency_samples
        if self._buf_end >= stop:
            return
        target = self._fed + -(-(stop + latency - self._fed) // block) * block
        whole = np.zeros((self.mix.shape[0], target - self._fed), dtype=np.float32)
        real = min(target, n) - self._fed
        if real > 0:
            whole[:, :real] = self.mix[:, self._fed : self._fed + real]
        v = hq.causal_vocals
        starts = range(0, target - self._fed, block)
        outs = [hq.mix_adapter.process(whole[None, :, i : i + block])[0, v].copy() for i in starts]  # (its buffer)
        vocals = np.concatenate(outs, axis=-1)[..., self._drop :]
        self._drop = max(0, self._drop - (target - self._fed))
        self._fed = target
        keep = max(0, min(vocals.shape[-1], n - self._buf_end))
        self._causal = np.concatenate([self._causal, vocals[..., :keep]], axis=-1)

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
            high = la.stft(self._causal, f0 - k, f1 - k)
            high[:, :, :bins] = 0.0
            low = self.mix[:, c0:c1] - self.masks.rest.get(c0, c1)
            out[0, :, c0 - s0 : c1 - s0] = low + la.istft_range(high, f0, c0, c1, n)
            out[1:3, :, c0 - s0 : c1 - s0] = self.masks.rest_stems(c0, c1)
        out[3] = self.mix[:, s0:s1] - out[0] - out[1] - out[2]
        self.pos = s1
        if s1 < n:  # drop the causal stems no later range needs
            keep_from = max(0, la.frame_range(s1, s1 + 1, n)[0] * hop - half)
            keep_from -= keep_from % hop
            if keep_from > self._buf_start:
                self._causal = self._causal[..., keep_from - self._buf_start :].copy()
                self._buf_start = keep_from
        return out
