"""``stembridge evaluate DIR``: separation quality of a model against baselines on test songs with true stems."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from stembridge.bridge.cli_options import MODEL_HELP, device_option, model_option, spatial_filter_option

METHOD_NAMES = ("hq", "model", "mixture4", "classical", "irm")


def _parse_methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise click.BadParameter(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHOD_NAMES)}",
            param_hint="--methods",
        )
    return list(dict.fromkeys(methods))


@click.command("evaluate")
@click.argument("song_dir", metavar="DIR", type=click.Path(path_type=Path))
@model_option(MODEL_HELP + " Without one, only the baselines are evaluated.")
@device_option()
@spatial_filter_option()
@click.option(
    "--methods",
    "methods_arg",
    default=",".join(METHOD_NAMES),
    show_default=True,
    help="Comma-separated methods to compare: hq (the high-quality path `separate` uses), model (the causal live "
    "model, as `live` and `separate --mode live` play it), mixture4 (mixture/4), classical (DSP baseline), "
    "irm (ideal ratio mask with the live model's STFT, the upper bound of a mask with it).",
)
@click.option(
    "--hq-model",
    "hq_model_path",
    type=click.Path(path_type=Path),
    help="Look-ahead vocal model .onnx for the hq method (default: the built-in one).",
)
@click.option(
    "--loud",
    "loud_db",
    type=click.FloatRange(0.0, 30.0),
    help="Score loud masters instead: each mix driven this many dB into a peak limiter (the same gain on every "
    "stem, so they still sum to the mix), as DJ tracks are mastered; e.g. --loud 10.",
)
@click.option("--max-songs", type=click.IntRange(1), help="Evaluate only the first N songs (sorted by name).")
@click.option(
    "--max-seconds",
    type=click.FloatRange(1.0),
    help="Crop every song to its first S seconds (faster; at least 1 s, the SDR window).",
)
@click.option(
    "--block-size",
    type=click.IntRange(1, 8192),
    default=4096,
    show_default=True,
    help="Host block size fed to the streaming engine for the model.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="ONNX Runtime threads.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("evaluation"),
    show_default=True,
    help="Folder for quality.json, quality.md and quality.png.",
)
@click.option(
    "--update-card",
    is_flag=True,
    help="Write the model's figures and the baselines' into its card (provenance.quality; for songs with the "
    "synthesizer's held-out timbres, provenance.quality_heldout_timbres).",
)
@click.option(
    "--compare-to",
    "compare_to",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    help="An earlier quality.json: add a song-by-song paired comparison of the two models' SDR (may be repeated).",
)
def evaluate(
    song_dir,
    model_path,
    hq_model_path,
    loud_db,
    device,
    spatial_filter,
    methods_arg,
    max_songs,
    max_seconds,
    block_size,
    threads,
    out_dir,
    update_card,
    compare_to,
) -> None:
    """Measure separation quality on test songs with known stems: DIR/<song>/{mixture,vocals,drums,bass,other}.wav
    (or a DIR with a test/ folder of such songs, e.g. data/synth; without mixture.wav the mixture is the sum of the
    stems, e.g. the real validation songs `python3 -m stembridge.engine.training.musdb` writes to
    data/musdb/validation).

    Scores the high-quality path and the live model (run through the live streaming path, latency removed) next
    to mixture/4, a hand-set classical
    DSP separator and the ideal ratio mask with the model's own STFT, all in the same run. The figure is BSS Eval v4
    SDR as museval computes it (median over 1 s windows, then median over songs, per stem); the karaoke figure is
    how many dB of the true vocal remain when the vocal stem is muted.

    Example: stembridge evaluate data/synth --max-songs 5 --out evaluation/
    """
    from stembridge.engine import evaluate as quality
    from stembridge.engine.audio_io import AudioFileError
    from stembridge.engine.model_card import ModelError
    from stembridge.engine.separator import NoDefaultModelError
    from tqdm import tqdm

    names = _parse_methods(methods_arg)
    if compare_to and "model" not in names:
        raise click.ClickException("--compare-to compares models: it needs the model among --methods")
    try:
        baselines = [(path, quality.read_report(path)) for path in compare_to]  # a bad file fails before the run
    except quality.EvaluationError as exc:
        raise click.BadParameter(str(exc), param_hint="--compare-to") from exc
    try:
        songs = quality.find_songs(song_dir)
    except quality.EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
    if max_songs:
        songs = songs[:max_songs]

    model = None
    if "model" in names:
        try:
            model = quality.ModelMethod(
                model_path, device=device, block_size=block_size, threads=threads, spatial_filter=spatial_filter
            )
        except NoDefaultModelError as exc:
            if update_card:
                raise click.ClickException(f"{exc}; --update-card needs a model") from exc
            click.echo(f"warning: {exc}; evaluating the baselines only", err=True)
        except (ModelError, quality.EvaluationError) as exc:
            raise click.ClickException(str(exc)) from exc
    elif update_card:
        raise click.ClickException("--update-card needs the model among --methods")

    hq = None
    if "hq" in names:
        try:
            hq = quality.HighQualityMethod(hq_model_path, model_path, device=device, threads=threads)
        except ModelError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"hq: {hq.description}", err=True)
    builders = {
        "hq": lambda: hq,
        "model": lambda: model,
        "mixture4": quality.MixtureFractionMethod,
        "classical": quality.ClassicalMethod,
        "irm": lambda: quality.irm_for(model),
    }
    methods = [m for m in (builders[name]() for name in names) if m is not None]
    if model is not None:
        click.echo(f"model: {model.description}", err=True)
    click.echo(f"{len(songs)} song(s) from {song_dir}; methods: {', '.join(m.name for m in methods)}", err=True)

    bar = tqdm(total=len(songs) * len(methods), unit="run", file=sys.stderr, disable=None)
    started = []

    def progress(song: str, method: str) -> None:  # called before each run: count the one before it as done
        if started:
            bar.update(1)
        started.append(method)
        bar.set_description(f"{song} {method}")

    try:
        report = quality.evaluate(
            songs, methods, max_seconds=max_seconds, source=str(song_dir), progress=progress, loud_db=loud_db
        )
        bar.update(1)
    except (quality.EvaluationError, AudioFileError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()

    try:
        for path, baseline in baselines:
            quality.add_comparison(report, baseline, f"`{path}`")
    except quality.EvaluationError as exc:
        quality.write_report(report, out_dir)  # the run is not lost
        raise click.ClickException(f"{exc} (the report without the comparison is in {out_dir})") from exc
    paths = quality.write_report(report, out_dir)
    click.echo(quality.markdown(report).split("\n\nWhole-track")[0])
    click.echo(quality.comparisons_markdown(report), nl=False)
    written = ", ".join(str(p) for p in paths.values() if p is not None)
    click.echo(f"\nwrote {written}")
    if paths["png"] is None:
        click.echo("no plot: matplotlib is not installed (pip install matplotlib)", err=True)
    if update_card and model is not None:
        card_path = model.card.path.with_suffix(".json")
        key = quality.card_key(report)
        quality.update_card(card_path, quality.card_quality(report), key)
        click.echo(f"updated provenance.{key} in {card_path}")
