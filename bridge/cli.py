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
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder; each input gets OUTDIR/<input name>/<stem>.wav (--format stem: OUTDIR/<input name>.stem.mp4).",
)
@model_option()
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
    help="ONNX Runtime intra-op threads for the model.",
)
def separate(
    inputs,
    out_dir,
    model_path,
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
    """Separate INPUT audio files into stems through the live streaming path.

    Writes OUTDIR/<input name>/{vocals,drums,bass,other}.wav as 24-bit files at each input's sample rate and
    channel count, or with --format stem one OUTDIR/<input name>.stem.mp4 per input. Inputs: WAV, AIFF, FLAC, MP3,
    AAC/M4A, ALAC, Ogg, Opus (anything FFmpeg reads). An NI stem file is skipped (nothing to separate) unless
    --reseparate. A bad input is reported and skipped; the others still complete; the exit status is 1 if any
    input failed.

    Examples: stembridge separate song.wav -o stems/
              stembridge separate song.m4a -o stems/ --format stem --codec alac
    """
    from stembridge.engine.audio_io import AudioFileError
    from stembridge.engine.model_card import ModelError
    from stembridge.engine.separate import separate_file
    from stembridge.engine.separator import StreamingSeparator
    from stembridge.engine.stem_output import NothingToSeparate
    from stembridge.engine.stream import BlockAdapter
    from tqdm import tqdm

    if fmt == "stem" and stems_arg:
        raise click.BadParameter("a stem file holds all four stems; leave out --stems", param_hint="--stems")

    try:
        separator = StreamingSeparator(
            model_path,
            device=device,
            intra_op_threads=threads,
            max_hops=max(1, block_size // 64 + 2),
            spatial_filter=spatial_filter,
        )
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    card = separator.card
    stems = _parse_stems(stems_arg, card.stems)
    adapter = BlockAdapter(separator, max_block_size=block_size, block_size=block_size)
    latency_ms = 1000.0 * adapter.latency_samples / card.sample_rate
    click.echo(
        f"model {card.name} ({card.path}){' + spatial filter' if separator.spatial else ''} on "
        f"{separator.active_provider}; "
        f"latency {adapter.latency_samples} samples ({latency_ms:.1f} ms) at {card.sample_rate} Hz",
        err=True,
    )

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
                adapter,
                path,
                out_dir if fmt == "stem" else out_dir / name,
                stems=stems,
                block_size=block_size,
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
        where = result.outputs[0] if fmt == "stem" else out_dir / name
        click.echo(
            f"{path}: {len(stems) if fmt == 'stem' else len(result.outputs)} stems -> {where} "
            f"({result.duration_s:.1f} s of audio in {result.elapsed_s:.2f} s, "
            f"{result.realtime_factor:.1f}x real time{clipped})"
        )

    total_audio = sum(r.duration_s for r in results)
    total_time = sum(r.elapsed_s for r in results)
    if results:
        click.echo(
            f"done: {len(results)} file(s), {total_audio:.1f} s of audio in {total_time:.2f} s "
            f"= {total_audio / max(total_time, 1e-9):.1f}x real time; latency {latency_ms:.1f} ms "
            f"({adapter.latency_samples} samples, removed from the outputs)"
        )
    if failures:
        click.echo(f"failed: {len(failures)} of {len(inputs)} input(s)", err=True)
        sys.exit(1)


def _register_commands() -> None:
    """Add the subcommands that live in their own modules."""
    from stembridge.bridge.cli_control import midi_learn, presets
    from stembridge.bridge.cli_evaluate import evaluate
    from stembridge.bridge.cli_live import devices, live

    for command in (live, devices, evaluate, midi_learn, presets):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
