"""Click options that several ``stembridge`` commands share (model and device), defined once."""

from __future__ import annotations

from pathlib import Path

import click

MODEL_HELP = "Model .onnx (with its .json card beside it) or a folder holding one. Default: the built-in model."


def model_option(help: str = MODEL_HELP):
    """``--model PATH`` stored as ``model_path``."""
    return click.option("--model", "model_path", type=click.Path(path_type=Path), help=help)


def device_option():
    """``--device auto|cpu|cuda``."""
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the model runs; auto uses CUDA only when it really starts, else CPU.",
    )


def spatial_filter_option():
    """``--spatial-filter/--no-spatial-filter``, None (the card decides) when neither is given."""
    return click.option(
        "--spatial-filter/--no-spatial-filter",
        "spatial_filter",
        default=None,
        help="Refine a stereo model's masks with the causal multichannel Wiener filter (no added latency). "
        "Default: as the model's card says (on for the built-in model).",
    )
