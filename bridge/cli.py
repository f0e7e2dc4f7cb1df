"""The ``stembridge`` command line: a click group; each subcommand lives in its own module.

``separate`` is defined here; the others are registered at the bottom with ``main.add_command``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from stembridge.bridge.cli_options import device_option, model_option, spatial_filter_option

STEMS_HELP = "Comma-separated stems to write (default: all the model's stems), e.g. vocals,drums."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more detail (model loading, providers).")
@click.version_option(package_name="stembridge")
def main(verbose: bool) -> None:
    """stembridge: live stem separation into vocals, drums, bass and other, controlled over OSC and MIDI."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def _parse_stems(value: str | None, available: tuple[str, ...]) -> list[str]:
    if not value:
        return list(available)
    stems = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in stems if s not in available]
    if unknown or not stems:
        raise click.BadParameter(
            f"unknown stem(s) {', '.join(unknown) or '(none given)'}; the model has {', '.join(available)}",
            param_hint="--stems",
        )
    return list(dict.fromkeys(stems))


def _check_ray_address(ctx, param, value: str | None) -> str | None:
    """``--ray`` takes an optional value, so ``--ray ~/Music`` would take the library for the address: refuse."""
    if value and Path(value).exists():
        raise click.BadParameter(
            f"took {value!r} as the Ray address; write --ray=ADDRESS, or put --ray after the inputs"
        )
    return value


def _parse_batch_files(ctx, param, value: str) -> int | None:
    """``--batch-files``: "auto" (None) or a whole number of files from 1 to 64."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise click.BadParameter(f"{value!r} is neither auto nor a number of files from 1 to 64")
    return count


@main.command("separate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    default=Path("stems"),
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (made if missing); a file gets OUTDIR/<file name>/<stem>.<format> (--format stem: "
    "OUTDIR/<file name>.stem.mp4), a folder's tree is mirrored under OUTDIR. The manifest "
    "OUTDIR/stembridge-manifest.sqlite records every track.",
)
@click.option(
    "--mode",
    type=click.Choice(["hq", "live"]),
    default="hq",
    show_default=True,
    help="hq: the high-quality path (look-ahead vocal and stems models with the causal model, for files); live: "
    "the causal live model alone, exactly as `stembridge live` plays it.",
)
@model_option(help="Causal model .onnx (with its .json card) or a folder holding one. Default: the built-in model.")
@click.option(
    "--hq-model",
    "hq_model_path",
    type=click.Path(path_type=Path),
    help="Look-ahead vocal model .onnx for --mode hq (card kind 'lookahead'). Default: the built-in one.",
)
@device_option()
@spatial_filter_option()
@click.option(
    "--block-size",
    type=click.IntRange(1, 8192),
    default=4096,
    show_default=True,
    help="Host block size in frames fed to the streaming engine (1..8192; any size works).",
)
@click.option("--stems", "stems_arg", help=STEMS_HELP)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["wav", "flac", "stem"]),
    default=None,
    help="Output format at the input's sample rate: 24-bit WAV or FLAC per stem, or 'stem': one NI stem file "
    "(OUTDIR/<name>.stem.mp4: the input as the mixture plus drums, bass, other, vocals, for Traktor and Mixxx). "
    "Default: wav for files, flac when a folder is given.",
)
@click.option(
    "--codec",
    type=click.Choice(["aac", "alac"]),
    default="aac",
    show_default=True,
    help="Codec of --format stem: aac (256 kb/s per stream, Traktor's usual) or alac (24-bit lossless).",
)
@click.option(
    "--reseparate",
    is_flag=True,
    help="Separate an input that is already an NI stem file (its mixture); without it such inputs are skipped.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Separate again tracks the manifest has as done, and replace existing output files (never without it).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads for each model (per worker).",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes, each with its own model session; largest files first. Default 1 (this process). "
    "With --ray: Ray workers, default one per CPU of the cluster.",
)
@click.option(
    "--batch-files",
    default="auto",
    show_default=True,
    callback=_parse_batch_files,
    metavar="auto|K",
    help="Files each worker separates at once, on K threads sharing one model session per model: their model "
    "calls go as one batched call, which pays on a GPU. auto: 8 where the model runs on CUDA or TensorRT, else 1. "
    "Stems equal one-at-a-time's to float rounding (within 1e-5), not bit for bit; memory grows with K.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    callback=_check_ray_address,
    metavar="[ADDRESS]",
    help="Run on Ray (pip install 'stembridge[cluster]'): --ray alone joins the cluster RAY_ADDRESS or `ray start` "
    "names, else starts one here; --ray=HOST:6379 or --ray=auto joins that one. Inputs and outputs must be on "
    "storage every node sees at the same path.",
)
def separate(
    inputs,
    out_dir,
    mode,
    model_path,
    hq_model_path,
    device,
    spatial_filter,
    block_size,
    stems_arg,
    fmt,
    codec,
    reseparate,
    overwrite,
    threads,
    jobs,
    batch_files,
    ray_address,
) -> None:
    """Separate INPUT audio files and folders into vocals, drums, bass and other.

    Writes OUTDIR/<input name>/{vocals,drums,bass,other}.wav as 24-bit files at each input's sample rate and
    channel count; the stems sum back to the input. By default the high-quality path runs (it reads the whole
    file: not for live input); --mode live runs the causal model that `stembridge live` plays. A folder is walked
    for audio files and its tree mirrored, as FLAC unless --format says. A bad input is reported and skipped; the
    others still complete; the exit status is 1 if any input failed. A second run skips the tracks the manifest
    has as done and retries the others; Ctrl-C stops cleanly.

    \b
    Examples:
      stembridge separate song.wav -o stems/
      stembridge separate ~/Music -o ~/Stems --jobs 2
      stembridge separate /mnt/music -o /mnt/stems --ray=auto
      stembridge separate ~/Music -o ~/Stems --device cuda --batch-files 8
    """
    from stembridge.bridge.cli_batch import run_separate
    from stembridge.engine.batch import SeparationSettings

    if fmt == "stem" and stems_arg:
        raise click.BadParameter("a stem file holds all four stems; leave out --stems", param_hint="--stems")
    if mode == "hq" and spatial_filter is not None:
        raise click.BadParameter("the spatial filter is a setting of --mode live", param_hint="--spatial-filter")
    if mode == "live" and hq_model_path is not None:
        raise click.BadParameter("a look-ahead model is used by --mode hq only", param_hint="--hq-model")
    settings = SeparationSettings(
        mode=mode,
        hq_model_path=Path(hq_model_path).resolve() if hq_model_path is not None else None,
        model_path=Path(model_path).resolve() if model_path is not None else None,
        device=device,
        spatial_filter=spatial_filter,
        block_size=block_size,
        threads=threads,
        fmt=fmt,
        codec=codec,
        reseparate=reseparate,
        batch_files=batch_files,
    )
    run_separate(
        list(inputs),
        out_dir,
        settings,
        stems_arg=stems_arg,
        parse_stems=_parse_stems,
        overwrite=overwrite,
        jobs=jobs,
        ray_address=ray_address,
    )


def _register_commands() -> None:
    """Add the subcommands that live in their own modules."""
    from stembridge.bridge.cli_control import midi_learn, presets
    from stembridge.bridge.cli_evaluate import evaluate
    from stembridge.bridge.cli_live import devices, live
    from stembridge.bridge.doctor import doctor
    from stembridge.bridge.layout_osc import layout_command

    for command in (live, devices, evaluate, midi_learn, presets, doctor, layout_command()):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
