"""The model contract: an ONNX graph plus a JSON card beside it.

A model is ``<name>.onnx`` with ``<name>.json`` next to it. The card says everything the engine needs to run the
graph (sample rate, STFT, stems, latency, tensor names and shapes); the engine never assumes these from constants.
``load_card`` reads and validates a card on its own; ``check_card_against_graph`` compares it with the inputs and
outputs an ONNX Runtime session reports. Every failure raises ``ModelError`` naming the file and the mismatch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stembridge.engine.stft import WINDOWS, ola_constant, window

SCHEMA_VERSION = 1
SUPPORTED_FEATURES = ("magnitude",)
REQUIRED_KEYS = (
    "schema_version",
    "name",
    "sample_rate",
    "n_fft",
    "hop_size",
    "window",
    "num_channels",
    "stems",
    "latency_samples",
    "tensors",
)
OPTIONAL_KEYS = ("residual_stem", "feature", "spatial_filter", "provenance", "description")
SPATIAL_FILTER_KEYS = ("time_constant_s", "regularization")

Dim = int | str


class ModelError(ValueError):
    """A model file or its card is missing, malformed, or does not match the graph."""


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state: fed as ``input``, returned as ``output``; ``shape`` has one "batch" entry."""

    input: str
    output: str
    shape: tuple[Dim, ...]

    @property
    def batch_axis(self) -> int:
        return self.shape.index("batch")


@dataclass(frozen=True)
class ModelCard:
    """What a model promises. Built by ``load_card``; see the README section "Model contract"."""

    path: Path
    name: str
    sample_rate: int
    n_fft: int
    hop_size: int
    window: str
    num_channels: int
    stems: tuple[str, ...]
    latency_samples: int
    input_name: str
    input_shape: tuple[Dim, ...]
    output_name: str
    output_shape: tuple[Dim, ...]
    states: tuple[StateTensor, ...]
    residual_stem: str | None = "other"
    feature: str = "magnitude"
    spatial_filter: dict[str, float] | None = None  # engine.spatial.SpatialWiener settings; None = plain masks
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def num_stems(self) -> int:
        return len(self.stems)

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.sample_rate


def card_path_for(model_path: Path) -> Path:
    """The card that belongs to ``model_path`` (``x.onnx`` -> ``x.json``)."""
    return model_path.with_suffix(".json")


def resolve_model_path(path: str | Path) -> Path:
    """Accept ``x.onnx``, ``x.json`` or a folder holding exactly one ``.onnx``; return the ``.onnx`` path."""
    p = Path(path)
    if p.is_dir():
        graphs = sorted(p.glob("*.onnx"))
        if len(graphs) != 1:
            raise ModelError(f"{p}: expected exactly one .onnx model in the folder, found {len(graphs)}")
        p = graphs[0]
    if p.suffix == ".json":
        p = p.with_suffix(".onnx")
    if not p.exists():
        raise ModelError(f"{p}: model file not found")
    if not card_path_for(p).exists():
        raise ModelError(f"{p}: its card {card_path_for(p).name} is missing (a model is an .onnx plus a .json card)")
    return p


def _fail(path: Path, message: str) -> ModelError:
    return ModelError(f"{path}: {message}")


def _require_int(card: dict, key: str, path: Path, minimum: int = 1) -> int:
    value = card[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _fail(path, f"card key '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _shape(spec: Any, what: str, path: Path) -> tuple[Dim, ...]:
    if not isinstance(spec, list) or not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec):
        raise _fail(path, f"{what} shape must be a list of integers and names, got {spec!r}")
    return tuple(spec)


def _tensor(tensors: dict, key: str, path: Path) -> tuple[str, tuple[Dim, ...]]:
    spec = tensors.get(key)
    if not isinstance(spec, dict) or set(spec) != {"name", "shape"}:
        raise _fail(path, f"card 'tensors.{key}' must be an object with exactly 'name' and 'shape'")
    return str(spec["name"]), _shape(spec["shape"], f"tensors.{key}", path)


def load_card(model_path: str | Path) -> ModelCard:
    """Read and validate the card of ``model_path`` (an ``.onnx`` file, its ``.json`` card, or a folder)."""
    onnx_path = resolve_model_path(model_path)
    path = card_path_for(onnx_path)
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read card: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise _fail(path, f"card is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(card, dict):
        raise _fail(path, "card must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise _fail(path, f"card is missing key(s): {', '.join(missing)}")
    unknown = sorted(set(card) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise _fail(path, f"card has unknown key(s): {', '.join(unknown)}")
    if card["schema_version"] != SCHEMA_VERSION:
        raise _fail(
            path, f"card schema_version {card['schema_version']!r} is not supported (expected {SCHEMA_VERSION})"
        )

    sample_rate = _require_int(card, "sample_rate", path, 8000)
    n_fft = _require_int(card, "n_fft", path, 16)
    hop = _require_int(card, "hop_size", path, 1)
    num_channels = _require_int(card, "num_channels", path, 1)
    latency = _require_int(card, "latency_samples", path, 0)
    if hop > n_fft:
        raise _fail(path, f"hop_size {hop} is larger than n_fft {n_fft}")
    if card["window"] not in WINDOWS:
        raise _fail(path, f"window {card['window']!r} is not supported (supported: {', '.join(WINDOWS)})")
    try:
        ola_constant(window(card["window"], n_fft), hop)
    except ValueError as exc:
        raise _fail(path, f"{card['window']} window with n_fft {n_fft}: {exc}") from None
    feature = card.get("feature", "magnitude")
    if feature not in SUPPORTED_FEATURES:
        raise _fail(path, f"feature {feature!r} is not supported (supported: {', '.join(SUPPORTED_FEATURES)})")
    if latency != n_fft - hop:
        raise _fail(
            path,
            f"latency_samples {latency} does not match the host STFT framing (n_fft - hop_size = {n_fft - hop}); "
            "models with look-ahead are not supported",
        )
    stems = card["stems"]
    if not isinstance(stems, list) or not stems or not all(isinstance(s, str) and s for s in stems):
        raise _fail(path, f"'stems' must be a non-empty list of names, got {stems!r}")
    if len(set(stems)) != len(stems):
        raise _fail(path, f"'stems' has duplicate names: {stems}")
    residual = card.get("residual_stem", "other" if "other" in stems else None)
    if residual is not None and residual not in stems:
        raise _fail(path, f"residual_stem {residual!r} is not one of the stems {stems}")

    tensors = card["tensors"]
    if not isinstance(tensors, dict) or set(tensors) - {"input", "output", "state"}:
        raise _fail(path, "card 'tensors' must be an object with 'input', 'output' and optional 'state'")
    input_name, input_shape = _tensor(tensors, "input", path)
    output_name, output_shape = _tensor(tensors, "output", path)
    bins = n_fft // 2 + 1
    expected_in = ("batch", "frames", num_channels, bins)
    if input_shape != expected_in:
        raise _fail(path, f"tensors.input shape {list(input_shape)} must be {list(expected_in)}")
    expected_out = ("batch", "frames", len(stems), num_channels, bins)
    if output_shape != expected_out:
        raise _fail(path, f"tensors.output shape {list(output_shape)} must be {list(expected_out)}")
    states = []
    for i, spec in enumerate(tensors.get("state", [])):
        if not isinstance(spec, dict) or set(spec) != {"input", "output", "shape"}:
            raise _fail(path, f"tensors.state[{i}] must have exactly 'input', 'output' and 'shape'")
        shape = _shape(spec["shape"], f"tensors.state[{i}]", path)
        if shape.count("batch") != 1 or any(isinstance(d, str) and d != "batch" for d in shape):
            raise _fail(path, f"tensors.state[{i}] shape {list(shape)} needs one 'batch' axis and fixed sizes")
        states.append(StateTensor(str(spec["input"]), str(spec["output"]), shape))
    spatial = _spatial_filter(card.get("spatial_filter"), num_channels, path)
    provenance = card.get("provenance", {})
    if not isinstance(provenance, dict):
        raise _fail(path, "'provenance' must be an object")

    return ModelCard(
        path=onnx_path,
        name=str(card["name"]),
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_size=hop,
        window=card["window"],
        num_channels=num_channels,
        stems=tuple(stems),
        latency_samples=latency,
        input_name=input_name,
        input_shape=input_shape,
        output_name=output_name,
        output_shape=output_shape,
        states=tuple(states),
        residual_stem=residual,
        feature=feature,
        spatial_filter=spatial,
        provenance=provenance,
    )


def _spatial_filter(spec: Any, num_channels: int, path: Path) -> dict[str, float] | None:
    """The card's ``spatial_filter``: absent or null (plain masks), or an object of positive numbers."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != set(SPATIAL_FILTER_KEYS):
        raise _fail(path, f"'spatial_filter' must be null or an object with exactly {', '.join(SPATIAL_FILTER_KEYS)}")
    for key in SPATIAL_FILTER_KEYS:
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _fail(path, f"spatial_filter.{key} must be a positive number, got {value!r}")
    if num_channels != 2:
        raise _fail(path, f"'spatial_filter' needs a stereo model, but num_channels is {num_channels}")
    return {key: float(spec[key]) for key in SPATIAL_FILTER_KEYS}


def _dims_match(card_dim: Dim, graph_dim: Any) -> bool:
    """A named card axis must be dynamic in the graph; a fixed one must be equal or dynamic."""
    graph_fixed = isinstance(graph_dim, int)
    if isinstance(card_dim, str):
        return not graph_fixed
    return not graph_fixed or graph_dim == card_dim


def check_card_against_graph(card: ModelCard, graph_inputs: dict, graph_outputs: dict) -> None:
    """Compare the card with the graph's ``{name: shape}`` inputs and outputs (as ONNX Runtime reports them).

    Raises ``ModelError`` naming the model file and the first mismatch.
    """
    path = card.path
    want_inputs = {card.input_name: card.input_shape} | {s.input: s.shape for s in card.states}
    want_outputs = {card.output_name: card.output_shape} | {s.output: s.shape for s in card.states}
    for kind, want, have in (("input", want_inputs, graph_inputs), ("output", want_outputs, graph_outputs)):
        missing = sorted(set(want) - set(have))
        if missing:
            raise _fail(path, f"graph has no {kind} named {', '.join(missing)} (graph {kind}s: {', '.join(have)})")
        extra = sorted(set(have) - set(want))
        if kind == "input" and extra:
            raise _fail(path, f"graph input(s) {', '.join(extra)} are not described in the card")
        for name, shape in want.items():
            got = list(have[name])
            if len(got) != len(shape) or not all(_dims_match(c, g) for c, g in zip(shape, got, strict=False)):
                raise _fail(path, f"{kind} '{name}' has shape {got} in the graph but {list(shape)} in the card")
