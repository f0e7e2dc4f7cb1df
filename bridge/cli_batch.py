"""What ``stembridge separate`` does with its inputs: a batch over files and folders, with a manifest, a size check,
a progress bar or a log, and a summary. The command's options are in ``bridge.cli``; the work is in
``engine.library`` (the walk), ``engine.manifest`` (the record), ``engine.batch`` (the pools and the coordinator)
and ``engine.ray_batch`` (Ray).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click
from stembridge.engine.batch import (
    BatchSummary,
    InlinePool,
    Outcome,
    SeparationSettings,
    ThreadsPool,
    files_per_worker,
    identity,
    run_batch,
)
from stembridge.engine.library import (
    SPACE_MARGIN,
    Job,
    collect_jobs,
    estimate_output_bytes,
    format_bytes,
    free_bytes,
    largest_first,
    probe_jobs,
)
from stembridge.engine.manifest import MANIFEST_NAME, Manifest, ManifestError

LIBRARY_FORMAT = "flac"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.1f} s"


class CliReporter:
    """A progress bar over the batch on a terminal (files, hours of audio, time left); a line per file elsewhere."""

    def __init__(self, jobs: list[Job], model_rate: int, tty: bool) -> None:
        self.tty = tty
        self.model_rate = model_rate
        self.num_files = len(jobs)
        self.num_finished = 0
        self._advanced = 0.0  # seconds of the inline job in progress already on the bar
        total_s = sum(j.duration_s for j in jobs)
        self._unit_s, unit = (3600.0, "h") if total_s >= 3600 else (60.0, "min")  # the bar counts audio in this unit
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_s / self._unit_s,
                desc=self._desc(),
                bar_format="{desc} |{bar}| {n:.2f}/{total:.2f} " + unit + " of audio [{elapsed}<{remaining}]",
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def _desc(self) -> str:
        return f"{self.num_finished}/{self.num_files} files"

    def _say(self, line: str, err: bool = False) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=err)

    def progress(self, model_frames: int) -> None:
        """Frames at the model rate done of the file in progress (inline only)."""
        if self.bar is not None:
            seconds = model_frames / self.model_rate
            self._advanced += seconds
            self.bar.update(seconds / self._unit_s)

    def finished(self, job: Job, outcome: Outcome) -> None:
        self.num_finished += 1
        if self.bar is not None:
            self.bar.update(max(0.0, job.duration_s - self._advanced) / self._unit_s)
            self._advanced = 0.0
            self.bar.set_description_str(self._desc(), refresh=True)
        if not outcome.ok:
            self._say(f"error: {outcome.error}", err=True)
        elif outcome.skipped:
            self._say(f"skipped: {outcome.skipped}", err=True)
        elif self.bar is None:
            rtf = outcome.duration_s / outcome.elapsed_s if outcome.elapsed_s > 0 else float("inf")
            clipped = f", {outcome.num_clipped} samples clipped" if outcome.num_clipped else ""
            count = len(outcome.outputs)
            click.echo(
                f"{job.input}: {count} stem{'s' if count != 1 else ''} -> {job.out_dir} "
                f"({outcome.duration_s:.1f} s of audio in {outcome.elapsed_s:.2f} s, {rtf:.1f}x real time{clipped})"
            )

    def retrying(self, job: Job, reason: str) -> None:
        if self.bar is not None:
            self.bar.update(-self._advanced / self._unit_s)
        self._advanced = 0.0
        self._say(f"retrying {job.input}: {reason}", err=True)

    def elsewhere(self, job: Job) -> None:
        self.num_finished += 1
        if self.bar is not None:
            self.bar.update(job.duration_s / self._unit_s)
        self._say(f"{job.input}: skipped, another run has it or finished it", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_separate(
    inputs: list[Path],
    out_dir: Path,
    settings: SeparationSettings,
    *,
    stems_arg: str | None,
    parse_stems,
    overwrite: bool,
    jobs: int | None,
    ray_address: str | None,
) -> None:
    """The ``separate`` command after option parsing (see its help)."""
    from stembridge.engine.model_card import ModelError

    collected = collect_jobs(inputs, out_dir)
    if settings.fmt is None:
        fmt = LIBRARY_FORMAT if collected.has_folders else "wav"
        if collected.has_folders:
            click.echo(
                "a folder is a library: writing 24-bit FLAC stems (lossless, smaller than WAV); --format wav to change",
                err=True,
            )
        settings = replace(settings, fmt=fmt)
    if not collected.jobs and not collected.problems:
        raise click.ClickException(f"no audio files found in {', '.join(map(str, inputs))}")
    try:
        separator = settings.make_separator()
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    batch_files = files_per_worker(settings, separator, on_ray=ray_address is not None)
    settings = replace(settings, stems=tuple(parse_stems(stems_arg, separator.stems)), batch_files=batch_files)
    click.echo(separator.description, err=True)
    for suffix, count in sorted(collected.unreadable.items()):
        click.echo(f"note: {count} {suffix} file(s) left out: {suffix} files hold no audio to separate", err=True)

    try:
        manifest = Manifest(out_dir / MANIFEST_NAME)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    with manifest:
        run_id = manifest.start_run(" ".join(sys.argv))
        fingerprint = settings.fingerprint(separator)
        probe_jobs(collected.jobs)
        done_keys = manifest.plan([identity(j, settings) for j in collected.jobs], fingerprint, run_id, redo=overwrite)
        for path, reason in collected.problems:
            manifest.record_failed(str(path.resolve()), reason)
        todo = largest_first([j for j in collected.jobs if j.key not in done_keys])
        needed = estimate_output_bytes(todo, len(settings.stems), settings.fmt)
        free = free_bytes(out_dir)
        audio_s = sum(j.duration_s for j in todo)
        if needed * SPACE_MARGIN > free:
            manifest.finish_run(run_id)
            raise click.ClickException(
                f"not enough disk space: the stems of {len(todo)} track(s) ({_hours(audio_s)} of audio, "
                f"{settings.fmt}) need about {format_bytes(needed)}, and {out_dir} has {format_bytes(free)} free"
            )
        where = f" on Ray ({ray_address or 'local or RAY_ADDRESS'})" if ray_address is not None else ""
        local = jobs and jobs > 1 and ray_address is None
        workers = f", {min(jobs, -(-len(todo) // batch_files))} worker process(es)" if local else ""
        if batch_files > 1 and len(todo) > 1:
            workers += f", {batch_files} files at once per worker (model calls batched)"
        click.echo(
            f"{len(todo)} track(s) to separate ({_hours(audio_s)} of audio, stems about {format_bytes(needed)} "
            f"of {format_bytes(free)} free){where}{workers}"
            + (f"; {len(done_keys)} done already (skipped)" if done_keys else ""),
            err=True,
        )
        reporter = CliReporter(todo, separator.sample_rate, tty=sys.stderr.isatty())
        try:
            if todo:
                pool = _make_pool(separator, settings, fingerprint, jobs, len(todo), ray_address, reporter)
                try:
                    summary = run_batch(
                        todo, pool, manifest, run_id, fingerprint, settings, reporter, overwrite=overwrite
                    )
                except RuntimeError as exc:
                    raise click.ClickException(f"the batch stopped: {exc}; run the same command to go on") from exc
            else:
                manifest.finish_run(run_id)
                summary = BatchSummary()
        finally:
            reporter.close()
    _print_summary(summary, collected.problems, len(done_keys), len(collected.jobs), out_dir, settings.mode)


def _make_pool(
    separator,
    settings: SeparationSettings,
    fingerprint,
    jobs: int | None,
    num_files: int,
    ray_address: str | None,
    reporter: CliReporter,
):
    """The pool for ``jobs`` workers (never more than the files need): Ray actors, local processes, or this
    process (on ``settings.batch_files`` threads when that is more than 1)."""
    from stembridge.engine.model_card import ModelError

    if ray_address is not None:
        try:
            from stembridge.engine.ray_batch import RayPool
        except ImportError as exc:
            raise click.ClickException(
                f"--ray needs Ray, which is not installed ({exc}); pip install 'stembridge[cluster]'"
            ) from exc
        try:
            return RayPool(
                settings,
                ray_address or None,
                num_workers=jobs,
                max_workers=num_files,
                model_sha256=fingerprint.model_sha256,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise click.ClickException(f"Ray: {exc}") from exc
    files_each = settings.batch_files or 1
    if jobs is not None and jobs > 1 and num_files > 1:
        from stembridge.engine.batch import LocalPool

        return LocalPool(settings, min(jobs, -(-num_files // files_each)))
    if files_each > 1 and num_files > 1:
        try:
            return ThreadsPool(settings.make_separators(min(files_each, num_files)), settings)
        except ModelError as exc:
            raise click.ClickException(str(exc)) from exc
    return InlinePool(separator, settings, reporter.progress)


def _print_summary(
    summary: BatchSummary,
    problems: list[tuple[Path, str]],
    num_skipped: int,
    num_jobs: int,
    out_dir: Path,
    mode: str,
) -> None:
    total_audio = sum(o.duration_s for _, o in summary.done)
    if summary.done:
        retried = f", {summary.retries} retried after a lost worker" if summary.retries else ""
        click.echo(
            f"done: {_files(len(summary.done))}, {_hours(total_audio)} of audio in {summary.wall_s:.2f} s "
            f"= {total_audio / max(summary.wall_s, 1e-9):.1f}x real time ({mode} mode){retried}"
        )
    if num_skipped:
        click.echo(f"skipped: {num_skipped} file(s) done already (manifest {out_dir / MANIFEST_NAME})")
    if summary.elsewhere:
        click.echo(f"skipped: {len(summary.elsewhere)} file(s) another run was separating or had finished")
    failures = [(p, reason) for p, reason in problems] + [(j.input, reason) for j, reason in summary.failed]
    if failures:
        click.echo(f"failed: {len(failures)} of {num_jobs + len(problems)} input(s):", err=True)
        for _, reason in failures:
            click.echo(f"  {reason}", err=True)
    if summary.interrupted:
        click.echo(
            f"interrupted: {len(summary.left_running)} file(s) stopped mid-way (no partial outputs kept), "
            f"{len(summary.left_pending)} not started; run the same command again to finish them",
            err=True,
        )
        sys.exit(130)
    if failures:
        sys.exit(1)


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
