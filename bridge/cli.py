"""The ``stembridge`` command line: a click group; each subcommand lives in its own module.

``separate`` is defined here; the others are registered at the bottom with ``main.add_command``.
"""

from __future__ import annotations

import logging
import sys
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


def plural(count: int, noun: str) -> str:
    """``1 stem``, ``4 stems``, ``0 files``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


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


@main.command("separate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    default=Path("stems"),
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder (made if missing; default: stems/ in the current folder); each input gets "
    "OUTDIR/<input name>/<stem>.wav (--format stem: OUTDIR/<input name>.stem.mp4).",
)
@click.option(
    "--mode",
    type=click.Choice(["hq", "live"]),
    default="hq",
    show_default=True,
    help="hq: the high-quality path (a look-ahead vocal model with the causal model, for files); live: the "
    "causal live model alone, exactly as `stembridge live` plays it.",
)
@model_option(help="Causal model .onnx (with its .json card) or a folder holding one. Default: the built-in model.")
@click.option(
    "--hq-model",
    "hq_model_path",
    type=click.Path(path_type=Path),
    help="Look-ahead model .onnx for --mode hq (card kind 'lookahead'). Default: the built-in one.",
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
    default="wav",
    show_default=True,
    help="Output format at the input's sample rate: 24-bit WAV or FLAC per stem, or 'stem': one NI stem file "
    "(.stem.mp4: the input as the mixture plus drums, bass, other, vocals, for Traktor and Mixxx).",
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
@click.option("--overwrite", is_flag=True, help="Replace existing output files (never done without it).")
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="ONNX Runtime intra-op threads for each model.",
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
) -> None:
    """Separate INPUT audio files into vocals, drums, bass and other.

    Writes OUTDIR/<input name>/{vocals,drums,bass,other}.wav as 24-bit files at each input's sample rate and
    channel count; the stems sum back to the input. By default the high-quality path runs (it reads the whole
    file: not for live input); --mode live runs the causal model that `stembridge live` plays. A bad input is
    reported and skipped; the others still complete; the exit status is 1 if any input failed. With --format stem,
    one OUTDIR/<input name>.stem.mp4 per input. Inputs: WAV, AIFF, FLAC, MP3, AAC/M4A, ALAC, Ogg, Opus (anything
    FFmpeg reads). An NI stem file is skipped (nothing to separate) unless --reseparate.

    \b
    Examples: stembridge separate song.wav -o stems/   (writes stems/song/vocals.wav, ...)
              stembridge separate song.m4a -o stems/ --format stem --codec alac
    """
    from stembridge.engine.audio_io import AudioFileError
    from stembridge.engine.model_card import ModelError
    from stembridge.engine.separate import separate_file
    from stembridge.engine.stem_output import NothingToSeparate
    from tqdm import tqdm

    if fmt == "stem" and stems_arg:
        raise click.BadParameter("a stem file holds all four stems; leave out --stems", param_hint="--stems")

    if mode == "hq" and spatial_filter is not None:
        raise click.BadParameter("the spatial filter is a setting of --mode live", param_hint="--spatial-filter")
    if mode == "live" and hq_model_path is not None:
        raise click.BadParameter("a look-ahead model is used by --mode hq only", param_hint="--hq-model")
    try:
        separator = _file_separator(mode, model_path, hq_model_path, device, spatial_filter, block_size, threads)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    stems = _parse_stems(stems_arg, separator.stems)
    click.echo(separator.description, err=True)

    results, failures, seen = [], [], {}
    for path in inputs:
        name = path.stem
        if name in seen:
            failures.append((path, f"{path}: another input ({seen[name]}) has the same name; outputs would collide"))
            click.echo(f"error: {failures[-1][1]}", err=True)
            continue
        seen[name] = path
        bar = tqdm(total=0, desc=path.name, unit="frame", unit_scale=True, leave=False, file=sys.stderr, disable=None)
        try:
            result = separate_file(
                separator,
                path,
                out_dir if fmt == "stem" else out_dir / name,
                stems=stems,
                fmt=fmt,
                overwrite=overwrite,
                progress=bar.update,
                on_loaded=lambda n, b=bar: b.reset(total=n),
                codec=codec,
                reseparate=reseparate,
            )
        except NothingToSeparate as exc:
            click.echo(f"skipped: {exc}", err=True)
            continue
        except (AudioFileError, OSError) as exc:
            failures.append((path, str(exc)))
            click.echo(f"error: {exc}", err=True)
            continue
        finally:
            bar.close()
        results.append(result)
        clipped = f", {result.num_clipped} samples clipped" if result.num_clipped else ""
        count = len(stems) if fmt == "stem" else len(result.outputs)
        where = result.outputs[0] if fmt == "stem" else out_dir / name
        click.echo(
            f"{path}: {plural(count, 'stem')} -> {where} "
            f"({result.duration_s:.1f} s of audio in {result.elapsed_s:.2f} s, "
            f"{result.realtime_factor:.1f}x real time{clipped})"
        )

    total_audio = sum(r.duration_s for r in results)
    total_time = sum(r.elapsed_s for r in results)
    if results:
        click.echo(
            f"done: {plural(len(results), 'file')}, {total_audio:.1f} s of audio in {total_time:.2f} s "
            f"= {total_audio / max(total_time, 1e-9):.1f}x real time ({mode} mode)"
        )
    if failures:
        click.echo(f"failed: {len(failures)} of {plural(len(inputs), 'input')}", err=True)
        sys.exit(1)


def _file_separator(mode, model_path, hq_model_path, device, spatial_filter, block_size, threads):
    """The separator ``separate`` runs: the high-quality path or the causal live model (raises ModelError)."""
    if mode == "hq":
        from stembridge.engine.hq import HighQualitySeparator

        return HighQualitySeparator(hq_model_path, model_path, device=device, threads=threads, block_size=block_size)
    from stembridge.engine.separate import CausalFileSeparator
    from stembridge.engine.separator import StreamingSeparator
    from stembridge.engine.stream import BlockAdapter

    causal = StreamingSeparator(
        model_path,
        device=device,
        intra_op_threads=threads,
        max_hops=max(1, block_size // 64 + 2),
        spatial_filter=spatial_filter,
    )
    return CausalFileSeparator(BlockAdapter(causal, max_block_size=block_size, block_size=block_size), block_size)


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
