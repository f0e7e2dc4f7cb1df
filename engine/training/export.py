"""Export a trained model to the model contract: ``<name>.onnx`` + ``<name>.json`` card, verified and timed.

    python3 -m stembridge.engine.training.export --checkpoint runs/default/last.pt --out engine/models/default.onnx \\
        --fp16 engine/models/checkpoint/default_fp16.pt

Export uses the legacy exporter (``dynamo=False``, opset 17: native GRU op, state as real graph I/O, dynamic batch;
see the field notes). After writing, the graph is checked against torch: ONNX Runtime must equal the torch model to
1e-4 over several consecutive calls with the recurrent state carried between them, batch and frames must stay dynamic
in the session's input shapes, and the card must load and match the graph (``engine.model_card``). The single-frame
call time (batch 1, 1 thread: the live case) and the per-frame time of 32-frame calls go into the card's provenance.
A bidirectional model (training/model.py ``bidirectional``) cannot meet the causal contract: it is exported under
the look-ahead contract instead (engine/lookahead.py: magnitudes of a whole segment in, direct masks out, no state;
``export_lookahead``), verified against torch the same way and loaded by ``LookaheadModel`` before it replaces
anything. An existing card's ``provenance.quality`` (written by the evaluation) is kept unless the caller passes new
figures; when the new export has other weights (another ``trained_steps``), the kept figures get the
``trained_steps`` they were measured at, so stale quality figures are visible as such until ``stembridge evaluate``
runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stembridge.engine.evaluate import CARD_QUALITY_KEYS
from stembridge.engine.spatial import DEFAULT_SETTINGS
from stembridge.engine.training.model import (
    RESIDUAL_STEM,
    ModelConfig,
    SeparatorModel,
    build_model,
    chosen_weights,
    count_parameters,
)

INPUT, OUTPUT = "mag", "masks"
STATE_NAMES = (("h_in", "h_out"), ("lvl_in", "lvl_out"))
TOLERANCE = 1e-4


def make_card(
    config: ModelConfig,
    name: str,
    provenance: dict[str, Any] | None = None,
    description: str | None = None,
    spatial_filter: bool = True,
) -> dict:
    """The contract card (README "Model contract") for a model of ``config``. ``spatial_filter``: a stereo model's
    card asks for ``engine.spatial``'s filter with its default settings (measured better on every stem)."""
    bins = config.num_bins
    card = {
        "schema_version": 1,
        "name": name,
        "sample_rate": config.sample_rate,
        "n_fft": config.n_fft,
        "hop_size": config.hop_size,
        "window": config.window,
        "num_channels": config.num_channels,
        "stems": list(config.stems),
        "latency_samples": config.latency_samples,
        "residual_stem": RESIDUAL_STEM if RESIDUAL_STEM in config.stems else None,
        "feature": "magnitude",
        "tensors": {
            "input": {"name": INPUT, "shape": ["batch", "frames", config.num_channels, bins]},
            "output": {"name": OUTPUT, "shape": ["batch", "frames", len(config.stems), config.num_channels, bins]},
            "state": [
                {"input": "h_in", "output": "h_out", "shape": [config.num_layers, "batch", config.hidden]},
                {"input": "lvl_in", "output": "lvl_out", "shape": [1, "batch", 1]},
            ],
        },
    }
    if spatial_filter and config.num_channels == 2:
        card["spatial_filter"] = dict(DEFAULT_SETTINGS)
    if description:
        card["description"] = description
    card["provenance"] = provenance or {}
    return card


def export_onnx(model: SeparatorModel, path: Path) -> None:
    """Write ``model`` as ONNX (opset 17, legacy exporter) with dynamic batch and frames."""
    model = model.eval()
    h, lvl = model.initial_state(1)
    mag = torch.rand(1, 4, model.config.num_channels, model.config.num_bins)
    dyn_b = {1: "batch"}
    dynamic_axes = {
        INPUT: {0: "batch", 1: "frames"},
        OUTPUT: {0: "batch", 1: "frames"},
        "h_in": dyn_b,
        "h_out": dyn_b,
        "lvl_in": dyn_b,
        "lvl_out": dyn_b,
    }
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about the GRU's hidden-size check and batch sizes; the state is graph I/O and
        # verify() checks batch and frames stay dynamic
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (mag, h, lvl),
            str(path),
            input_names=[INPUT, "h_in", "lvl_in"],
            output_names=[OUTPUT, "h_out", "lvl_out"],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify(model: SeparatorModel, path: Path, seed: int = 0) -> float:
    """Max |ONNX Runtime - torch| over consecutive calls (frames 7, 1, 33, 2) at batch 3 with state carried.

    Also checks that batch and frames are dynamic in the session's input shapes. Raises AssertionError on failure.
    """
    cfg = model.config
    sess = _session(path)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    for name in (INPUT,):
        if isinstance(shapes[name][0], int) or isinstance(shapes[name][1], int):
            raise AssertionError(f"{path}: input '{name}' has fixed batch/frames {shapes[name]}")
    for name, _ in STATE_NAMES:
        if isinstance(shapes[name][1], int):
            raise AssertionError(f"{path}: state '{name}' has a fixed batch axis {shapes[name]}")
    gen = torch.Generator().manual_seed(seed)
    batch = 3
    h, lvl = model.initial_state(batch)
    feeds_state = {"h_in": h.numpy(), "lvl_in": lvl.numpy()}
    worst = 0.0
    model = model.eval()
    for frames in (7, 1, 33, 2):
        # magnitudes over a wide level range, like real spectra (a few loud bins, many quiet ones)
        mag = torch.rand(batch, frames, cfg.num_channels, cfg.num_bins, generator=gen) ** 4 * 300.0
        mag[1] *= 1e-3  # one quiet stream
        with torch.no_grad():
            want, h, lvl = model(mag, h, lvl)
        got = sess.run([OUTPUT, "h_out", "lvl_out"], {INPUT: mag.numpy()} | feeds_state)
        feeds_state = {"h_in": got[1], "lvl_in": got[2]}
        for a, b in zip(got, (want, h, lvl), strict=True):
            worst = max(worst, float(np.abs(a - b.numpy()).max()))
    if worst > TOLERANCE:
        raise AssertionError(f"{path}: ONNX Runtime differs from torch by {worst:.3g} (> {TOLERANCE})")
    return worst


def time_calls(path: Path, config: ModelConfig, frames: int, num_calls: int = 2000) -> dict[str, float]:
    """Per-call time of the graph at batch 1 on 1 thread: median / p99 in ms, and per-frame median in us."""
    sess = _session(path, threads=1)
    rng = np.random.default_rng(0)
    mag = (rng.random((1, frames, config.num_channels, config.num_bins)) ** 4 * 100).astype(np.float32)
    feeds = {
        INPUT: mag,
        "h_in": np.zeros((config.num_layers, 1, config.hidden), np.float32),
        "lvl_in": np.zeros((1, 1, 1), np.float32),
    }
    for _ in range(50):
        sess.run(None, feeds)
    times = np.empty(num_calls)
    for i in range(num_calls):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times[i] = time.perf_counter() - t0
    return {
        "frames_per_call": frames,
        "median_ms": round(float(np.median(times)) * 1e3, 4),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
        "per_frame_us": round(float(np.median(times)) * 1e6 / frames, 2),
    }


def load_weights(checkpoint: Path, average: bool = True) -> SeparatorModel:
    """A model from a full training checkpoint or a weights-only (fp16) one (weights as ``chosen_weights``)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict({k: v.float() for k, v in chosen_weights(ckpt, average)[0].items()})
    return model.eval()


def carried_provenance(card_path: Path, provenance: dict[str, Any] | None, keep: list[str]) -> dict[str, Any]:
    """``provenance`` with the ``keep`` entries of the card already at ``card_path`` (the evaluation's figures) that
    it does not set itself; kept quality figures of other weights (another ``trained_steps``) get the
    ``trained_steps`` they were measured at, so they read as stale until the evaluation runs again."""
    provenance = dict(provenance or {})
    if not card_path.exists():
        return provenance
    try:
        old = json.loads(card_path.read_text()).get("provenance", {})
    except (OSError, json.JSONDecodeError):
        old = {}
    for key in keep:
        if key in old and key not in provenance:
            provenance[key] = old[key]
    steps_before = old.get("trained_steps")
    for key in CARD_QUALITY_KEYS:
        quality = provenance.get(key)
        if quality and "trained_steps" not in quality and steps_before != provenance.get("trained_steps"):
            provenance[key] = {**quality, "trained_steps": steps_before}
    return provenance


def export_model(
    model: SeparatorModel,
    out: Path,
    provenance: dict[str, Any] | None = None,
    name: str | None = None,
    timing: bool = True,
    spatial_filter: bool = True,
) -> dict:
    """Export, verify and card ``model`` at ``out`` (``x.onnx``; the card goes to ``x.json``). Returns the card.

    The graph is written to a temporary file and moved into place only after it passed verification, so a failed
    export never replaces a working model.
    """
    from stembridge.engine.model_card import check_card_against_graph, load_card

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    card_path = out.with_suffix(".json")
    keep = [*CARD_QUALITY_KEYS] + ([] if timing else ["inference_time_cpu_1thread"])
    provenance = carried_provenance(card_path, provenance, keep)
    provenance.setdefault("quality", {})
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_onnx = Path(tmp) / out.name
        export_onnx(model, tmp_onnx)
        max_error = verify(model, tmp_onnx)
        provenance["onnx_max_abs_error_vs_torch"] = float(f"{max_error:.3g}")
        provenance["num_parameters"] = count_parameters(model)
        provenance["architecture"] = model.config.to_dict()
        if timing:
            provenance["inference_time_cpu_1thread"] = {
                "live_single_frame": time_calls(tmp_onnx, model.config, 1, num_calls=5000),
                "offline_32_frames": time_calls(tmp_onnx, model.config, 32, num_calls=500),
                "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} while measuring",
            }
        card = make_card(model.config, name or out.stem, provenance, spatial_filter=spatial_filter)
        tmp_card = tmp_onnx.with_suffix(".json")
        tmp_card.write_text(json.dumps(card, indent=1) + "\n")
        loaded = load_card(tmp_onnx)
        sess = _session(tmp_onnx)
        check_card_against_graph(
            loaded,
            {i.name: i.shape for i in sess.get_inputs()},
            {o.name: o.shape for o in sess.get_outputs()},
        )
        os.replace(tmp_onnx, out)
        os.replace(tmp_card, card_path)
    return card


class _LookaheadGraph(torch.nn.Module):
    """A bidirectional model under the look-ahead contract: mag (batch, C, frames, bins) -> masks (batch, S, C,
    frames, bins), from zero state at the segment's start."""

    def __init__(self, model: SeparatorModel) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        x = mag.permute(0, 2, 1, 3)  # (batch, frames, C, bins)
        h = x.new_zeros((cfg.num_layers, x.shape[0], cfg.hidden))
        lvl = x.new_zeros((1, x.shape[0], 1))
        masks, _, _ = self.model(x, h, lvl)  # (batch, frames, S, C, bins)
        return masks.permute(0, 2, 3, 1, 4)


def make_lookahead_card(
    config: ModelConfig, name: str, segment_frames: int, context_frames: int, provenance: dict[str, Any]
) -> dict:
    """The look-ahead contract card (engine/lookahead.py) of a bidirectional model of ``config``."""
    bins, c, s = config.num_bins, config.num_channels, len(config.stems)
    return {
        "schema_version": 1,
        "kind": "lookahead",
        "name": name,
        "description": "the project's band-GRU model with a backward GRU layer (engine/training/model.py), for audio "
        "known in advance",
        "sample_rate": config.sample_rate,
        "n_fft": config.n_fft,
        "hop_size": config.hop_size,
        "window": config.window,
        "num_channels": c,
        "num_bins": bins,
        "stems": list(config.stems),
        "mask": "direct",
        # a recurrent model's state after digital silence is not its start state: edge windows run cropped
        "framing": {
            "segment_frames": segment_frames,
            "frame_multiple": 1,
            "context_frames": context_frames,
            "edges": "crop",
        },
        "tensors": {
            "input": {"name": INPUT, "shape": ["batch", c, "frames", bins]},
            "output": {"name": OUTPUT, "shape": ["batch", s, c, "frames", bins]},
        },
        "provenance": provenance,
    }


def export_lookahead(
    model: SeparatorModel,
    out: Path,
    provenance: dict[str, Any] | None = None,
    name: str | None = None,
    segment_frames: int = 640,
    context_frames: int = 128,
) -> dict:
    """Export, verify and card a bidirectional ``model`` under the look-ahead contract at ``out``; returns the card.
    Written to a temporary file and moved into place only after ONNX Runtime matched torch (to ``TOLERANCE`` at
    batch 1 and 3, several segment lengths) and ``LookaheadModel`` loaded it; an existing card's quality figures
    carry over as ``export_model``'s do."""
    from stembridge.engine.lookahead import LookaheadModel

    if not model.config.bidirectional:
        raise ValueError("export_lookahead takes a bidirectional model (a causal one goes through export_model)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    provenance = carried_provenance(out.with_suffix(".json"), provenance, list(CARD_QUALITY_KEYS))
    cfg = model.config
    graph = _LookaheadGraph(model)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_onnx = Path(tmp) / out.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (torch.rand(1, cfg.num_channels, 16, cfg.num_bins),),
                str(tmp_onnx),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch", 2: "frames"}, OUTPUT: {0: "batch", 3: "frames"}},
                opset_version=17,
                dynamo=False,
            )
        sess = _session(tmp_onnx)
        gen = torch.Generator().manual_seed(0)
        worst = 0.0
        for batch, frames in ((1, 40), (3, 7), (2, segment_frames)):
            mag = torch.rand(batch, cfg.num_channels, frames, cfg.num_bins, generator=gen) ** 4 * 300.0
            with torch.no_grad():
                want = graph(mag).numpy()
            got = sess.run([OUTPUT], {INPUT: mag.numpy()})[0]
            worst = max(worst, float(np.abs(got - want).max()))
        if worst > TOLERANCE:
            raise AssertionError(f"{out}: ONNX Runtime differs from torch by {worst:.3g} (> {TOLERANCE})")
        provenance["onnx_max_abs_error_vs_torch"] = float(f"{worst:.3g}")
        provenance["num_parameters"] = count_parameters(model)
        provenance["architecture"] = cfg.to_dict()
        card = make_lookahead_card(cfg, name or out.stem, segment_frames, context_frames, provenance)
        tmp_card = tmp_onnx.with_suffix(".json")
        tmp_card.write_text(json.dumps(card, indent=1) + "\n")
        LookaheadModel(tmp_onnx)  # the contract's own checks of card against graph
        os.replace(tmp_onnx, out)
        os.replace(tmp_card, out.with_suffix(".json"))
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint to ONNX + card, verified against torch.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="runs/<name>/last.pt or an fp16 checkpoint")
    parser.add_argument("--out", type=Path, default=Path("engine/models/default.onnx"), help="the .onnx to write")
    parser.add_argument("--name", default=None, help="model name in the card (default: the file stem)")
    parser.add_argument(
        "--no-timing", action="store_true", help="skip the inference timing (an existing card's timing is kept)"
    )
    parser.add_argument(
        "--no-spatial-filter",
        action="store_true",
        help="leave the spatial filter out of a stereo model's card (the engine then applies the masks as they are)",
    )
    parser.add_argument(
        "--fp16",
        type=Path,
        default=None,
        help="first write the weights-only fp16 checkpoint here (e.g. engine/models/checkpoint/default_fp16.pt) "
        "and export from it, so the committed checkpoint and graph hold the same weights",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="export the weights being trained, not their moving average (when the checkpoint has one)",
    )
    parser.add_argument(
        "--training-data",
        default=None,
        help="what the weights were trained on, for the card (default: as the checkpoint's provenance says)",
    )
    parser.add_argument(
        "--history",
        action="append",
        default=[],
        help="a line for the provenance's history (e.g. how the run was started); kept in the fp16 checkpoint too",
    )
    parser.add_argument(
        "--segment-frames", type=int, default=640, help="bidirectional models: frames per look-ahead call"
    )
    parser.add_argument(
        "--context-frames", type=int, default=128, help="bidirectional models: frames of context either side"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = args.checkpoint
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["provenance"] = {**ckpt.get("provenance", {})}
    ckpt["provenance"]["history"] = [*ckpt["provenance"].get("history", []), *args.history]
    if args.fp16 is not None:
        from stembridge.engine.training.train import save_fp16

        save_fp16(ckpt, args.fp16)
        checkpoint = args.fp16
        print(f"wrote {args.fp16} ({args.fp16.stat().st_size / 1e6:.2f} MB)")
    model = load_weights(checkpoint, average=not args.raw)
    provenance = dict(ckpt.get("provenance", {}))
    if args.training_data:
        provenance["training_data"] = args.training_data
    provenance["weights"] = chosen_weights(ckpt, average=not args.raw)[1]
    provenance["trained_steps"] = int(ckpt.get("step", provenance.get("trained_steps", 0)))
    if model.config.bidirectional:
        card = export_lookahead(model, args.out, provenance, args.name, args.segment_frames, args.context_frames)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and its look-ahead card")
        print(
            f"{card['provenance']['num_parameters']} parameters; ONNX vs torch max abs error "
            f"{card['provenance']['onnx_max_abs_error_vs_torch']}"
        )
        return
    card = export_model(
        model,
        args.out,
        provenance,
        name=args.name,
        timing=not args.no_timing,
        spatial_filter=not args.no_spatial_filter,
    )
    p = card["provenance"]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and its card; {p['num_parameters']} parameters")
    print(f"ONNX vs torch max abs error {p['onnx_max_abs_error_vs_torch']}")
    if "inference_time_cpu_1thread" in p:
        print(json.dumps(p["inference_time_cpu_1thread"]))


if __name__ == "__main__":
    main()
