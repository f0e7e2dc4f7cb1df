"""StreamingSeparator: runs a model-contract ONNX model on audio, hop by hop, with recurrent state carried.

One separator serves ``num_streams`` independent streams (decks) in one batched model call. Audio goes in whole
hops; stems come out delayed by the model latency ``n_fft - hop_size``. ``engine.stream.BlockAdapter`` adapts any
host block size to whole hops.
"""

from __future__ import annotations

import logging
import os
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from stembridge.engine.model_card import ModelCard, ModelError, check_card_against_graph, load_card, resolve_model_path
from stembridge.engine.spatial import SpatialWiener
from stembridge.engine.stft import StreamingSTFT

if TYPE_CHECKING:
    from stembridge.engine.batching import SharedSessions

log = logging.getLogger(__name__)

# found through the package (importlib.resources), wherever it is installed
DEFAULT_MODEL = Path(str(files("stembridge.engine").joinpath("models", "default.onnx")))
DEVICES = ("auto", "cpu", "cuda")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class NoDefaultModelError(ModelError):
    """The package holds no trained default model yet."""


def default_model_path() -> Path:
    """The shipped default model; raises ``NoDefaultModelError`` with a clear message when it is absent."""
    if not DEFAULT_MODEL.exists() or not DEFAULT_MODEL.with_suffix(".json").exists():
        raise NoDefaultModelError(
            f"no trained default model is installed (expected {DEFAULT_MODEL}); "
            "pass --model PATH to a model that follows the model contract"
        )
    return DEFAULT_MODEL


def _providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("CUDAExecutionProvider",) if p in available]
    if device == "cuda" and not gpu:
        raise ModelError("--device cuda was asked for, but this onnxruntime build has no CUDA provider")
    if device == "auto" and not _gpu_present():
        # onnxruntime-gpu lists CUDA even without a GPU and logs a load failure when asked for it: don't ask.
        return ["CPUExecutionProvider"]
    return gpu + ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    """Whether an NVIDIA driver is visible to this process (device nodes exist)."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def create_session(card: ModelCard, device: str = "auto", intra_op_threads: int = 1):
    """An ONNX Runtime session for ``card``'s graph on ``device``; checks the graph against the card.

    Returns ``(session, active_provider)``. The provider is read from ``session.get_providers()``, which is what
    really runs (a CUDA provider that fails to load falls back to CPU silently in ONNX Runtime).
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(card.path), sess_options=options, providers=_providers_for(device))
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise ModelError(f"{card.path}: ONNX Runtime cannot load the graph: {exc}") from exc
    check_card_against_graph(
        card,
        {i.name: i.shape for i in session.get_inputs()},
        {o.name: o.shape for o in session.get_outputs()},
    )
    active = session.get_providers()[0]
    if device == "cuda" and active not in GPU_PROVIDERS:
        raise ModelError(f"--device cuda was asked for, but CUDA could not start here (running on {active})")
    return session, active


def _spatial_filter_for(
    card: ModelCard, num_streams: int, wanted: bool | dict[str, float] | None
) -> SpatialWiener | None:
    """The spatial filter the card asks for (``wanted`` None), none (False), one with the card's settings or the
    defaults (True), or one with the given settings (a dict like the card's ``spatial_filter``)."""
    if wanted is False or (wanted is None and card.spatial_filter is None):
        return None
    if card.num_channels != 2:
        raise ModelError(
            f"{card.path}: the spatial filter needs a stereo model, this one has {card.num_channels} channel(s)"
        )
    settings = wanted if isinstance(wanted, dict) else card.spatial_filter or {}
    return SpatialWiener(num_streams, card.num_stems, card.num_bins, card.hop_size, card.sample_rate, **settings)


class StreamingSeparator:
    """Separates ``num_streams`` stereo streams into the card's stems, any number of whole hops per call."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "auto",
        num_streams: int = 1,
        intra_op_threads: int = 1,
        max_hops: int = 64,
        spatial_filter: bool | dict[str, float] | None = None,
        sessions: SharedSessions | None = None,
    ) -> None:
        """``spatial_filter``: None follows the card's ``spatial_filter``, False turns it off, True turns it on (with
        the card's settings, or ``engine.spatial``'s defaults when the card has none; stereo models only), and a dict
        like the card's turns it on with those settings. ``sessions``: take the model's session from there (one
        ``engine.batching.BatchingSession`` per model file, shared with other separators on other threads) instead
        of building one; this separator's state and buffers stay its own."""
        path = resolve_model_path(model_path) if model_path is not None else default_model_path()
        self.card = load_card(path)
        if sessions is None:
            self.session, self.active_provider = create_session(self.card, device, intra_op_threads)
        else:
            self.session = sessions.get(self.card.path, lambda: create_session(self.card, device, intra_op_threads)[0])
            self.active_provider = self.session.get_providers()[0]
        log.info("model %s runs on %s (%d stream(s))", self.card.name, self.active_provider, num_streams)
        card = self.card
        self.num_streams = num_streams
        self.max_hops = max_hops
        self.num_channels = card.num_channels
        self.stems = card.stems
        self.sample_rate = card.sample_rate
        self.hop_size = card.hop_size
        self.latency_samples = card.latency_samples
        num_signals = num_streams * card.num_channels
        self._analysis = StreamingSTFT(card.n_fft, card.hop_size, num_signals, max_hops, card.window)
        self._residual = card.stems.index(card.residual_stem) if card.residual_stem else None
        # the residual stem is computed in the time domain (input minus the others), so it needs no inverse STFT
        self._synthesised = [i for i in range(card.num_stems) if i != self._residual]
        synth = self._synthesised
        contiguous = bool(synth) and synth == list(range(synth[0], synth[-1] + 1))
        self._synthesised_slice = slice(synth[0], synth[-1] + 1) if contiguous else synth  # a slice copies nothing
        num_synth = len(self._synthesised)
        self._synthesis = StreamingSTFT(card.n_fft, card.hop_size, num_signals * num_synth, max_hops, card.window)
        self._mag = np.zeros((2, num_streams, max_hops, card.num_channels, card.num_bins), dtype=np.float32)
        self._out = np.zeros((num_signals * card.num_stems, max_hops * card.hop_size), dtype=np.float32)
        self._synth_out = np.zeros((num_signals * num_synth, max_hops * card.hop_size), dtype=np.float32)
        self._dry = np.zeros((num_streams * card.num_channels, max_hops * card.hop_size), dtype=np.float32)
        self.spatial = _spatial_filter_for(card, num_streams, spatial_filter)
        self._states: dict[str, np.ndarray] = {}
        self._state_outputs = [s.output for s in card.states]
        self._output_names = [card.output_name, *self._state_outputs]
        self.reset()

    @property
    def num_stems(self) -> int:
        return self.card.num_stems

    def reset(self) -> None:
        """Forget all history: zero STFT buffers and recurrent state."""
        self._analysis.reset()
        self._synthesis.reset()
        if self.spatial is not None:
            self.spatial.reset()
        self._dry_history = np.zeros((self.num_streams * self.num_channels, self.latency_samples), np.float32)
        for s in self.card.states:
            shape = [self.num_streams if d == "batch" else d for d in s.shape]
            self._states[s.input] = np.zeros(shape, dtype=np.float32)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 (num_streams, num_channels, num_hops * hop_size), any number of hops.

        Returns float32 stems (num_streams, num_stems, num_channels, num_hops * hop_size), delayed by
        ``latency_samples``. Up to ``max_hops`` hops the result is a view of an internal buffer, valid until the
        next call. With a residual stem, that stem is the latency-aligned input minus the other stems, so the
        stems sum to the input exactly.
        """
        num_streams, num_channels, num_frames = audio.shape
        if num_streams != self.num_streams or num_channels != self.num_channels:
            raise ValueError(
                f"audio shape {audio.shape} does not match ({self.num_streams}, {self.num_channels}, frames)"
            )
        if num_frames % self.hop_size:
            raise ValueError(f"num_frames {num_frames} is not a multiple of hop_size {self.hop_size}")
        total_hops = num_frames // self.hop_size
        if total_hops <= self.max_hops:
            return self._process_hops(audio, total_hops)
        out = np.empty((num_streams, self.num_stems, num_channels, num_frames), dtype=np.float32)
        for start in range(0, total_hops, self.max_hops):
            hops = min(self.max_hops, total_hops - start)
            a, b = start * self.hop_size, (start + hops) * self.hop_size
            out[:, :, :, a:b] = self._process_hops(audio[:, :, a:b], hops)
        return out

    def _process_hops(self, audio: np.ndarray, hops: int) -> np.ndarray:
        spectra, mag = self.analyse(audio, hops)
        return self.synthesise(audio, self.stem_spectra(spectra, self.infer(mag)), hops)

    # The four stages of ``process``, public so that offline separation can overlap them (``engine.separate``):
    # ``analyse`` and ``synthesise`` are host work that must run in stream order; ``infer`` is the model call
    # (ONNX Runtime releases the GIL) and must also run in order, because it carries the recurrent state, and so
    # must ``stem_spectra``, because the spatial filter carries its covariances.

    def analyse(self, audio: np.ndarray, hops: int, slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """STFT of ``hops`` whole hops: (complex spectra (streams, channels, hops, bins), magnitude feed).

        The magnitude is written to buffer ``slot`` (0 or 1) so that the next hops can be analysed while the model
        still reads this one."""
        card = self.card
        signals = audio.reshape(self.num_streams * self.num_channels, hops * self.hop_size)
        spectra = self._analysis.analyse(signals)  # (streams * channels, hops, bins), a new array
        spectra_4d = spectra.reshape(self.num_streams, self.num_channels, hops, card.num_bins)
        mag = self._mag[slot, :, :hops]
        np.abs(spectra_4d.transpose(0, 2, 1, 3), out=mag)
        return spectra_4d, mag

    def infer(self, mag: np.ndarray) -> np.ndarray:
        """The model call on a magnitude feed: masks (streams, hops, stems, channels, bins); carries the state."""
        card = self.card
        results = self.session.run(self._output_names, {card.input_name: mag} | self._states)
        for s, value in zip(card.states, results[1:], strict=True):
            self._states[s.input] = value
        return results[0]

    def stem_spectra(self, spectra: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The spectra of the stems ``synthesise`` makes (all but the residual stem), complex (streams, stems,
        channels, hops, bins): the masked mix, or the spatial filter's estimate when it is on."""
        if self.spatial is not None:
            return self.spatial.apply(spectra, masks, self._synthesised_slice)
        if self._residual is not None:
            masks = masks[:, :, self._synthesised]
        return masks.transpose(0, 2, 3, 1, 4) * spectra[:, None]

    def synthesise(self, audio: np.ndarray, stem_spectra: np.ndarray, hops: int) -> np.ndarray:
        """Inverse STFT of ``stem_spectra`` (+ the residual stem) for the hops of ``audio``."""
        card = self.card
        n = hops * self.hop_size
        signals = audio.reshape(self.num_streams * self.num_channels, n)
        synth = self._synth_out[:, :n]
        self._synthesis.synthesise(stem_spectra.reshape(-1, hops, card.num_bins), synth)
        synth_4d = synth.reshape(self.num_streams, len(self._synthesised), self.num_channels, n)
        stems = self._out[:, :n].reshape(self.num_streams, self.num_stems, self.num_channels, n)
        if self._residual is None:
            stems[:] = synth_4d
        else:
            stems[:, self._synthesised] = synth_4d
            self._apply_residual(signals, stems, synth_4d, n)
        return stems

    def _apply_residual(self, signals: np.ndarray, stems: np.ndarray, synth: np.ndarray, n: int) -> None:
        """Set the residual stem to the latency-aligned input minus all other stems."""
        latency = self.card.latency_samples
        dry = self._dry[:, :n]
        if n >= latency:
            dry[:, :latency] = self._dry_history
            dry[:, latency:] = signals[:, : n - latency]
            self._dry_history[:] = signals[:, n - latency :]
        else:
            dry[:] = self._dry_history[:, :n]
            self._dry_history[:, : latency - n] = self._dry_history[:, n:]
            self._dry_history[:, latency - n :] = signals
        np.subtract(
            dry.reshape(self.num_streams, self.num_channels, n), synth.sum(axis=1), out=stems[:, self._residual]
        )
