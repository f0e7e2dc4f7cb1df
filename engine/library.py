"""A music library as a list of separation jobs: the folder walk, the output tree, the size estimate, the order.

``collect_jobs`` turns the inputs a user names (files and folders) into one ``Job`` per track: a file named on the
command line is separated into ``OUT/<file name>/``; a folder is walked recursively for audio files and its tree is
mirrored, so ``lib/a/b/song.flac`` goes to ``OUT/a/b/song/``. ``probe_jobs`` reads each file's header (frames, rate,
channels: no decoding), ``estimate_output_bytes`` says what the stems will take on disk, and ``largest_first`` orders
the jobs so that the longest tracks start first and a batch does not end waiting on one long file.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

# what engine/audio_io.py decodes (libsndfile, and FFmpeg through PyAV): a folder walk takes these and nothing else
AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".mp3", ".ogg", ".oga", ".opus", ".w64", ".rf64", ".caf"}
    | {".m4a", ".mp4", ".aac", ".alac", ".wma", ".ape", ".wv", ".dsf"}
)
# music files a walk meets that hold no audio to separate (reported, not silently dropped)
UNREADABLE_AUDIO_SUFFIXES = frozenset({".mid", ".midi", ".kar"})

# bytes per sample of the written stems: 24-bit PCM; FLAC costed at 0.70 of it (measured: 0.59 on the shipped
# model's stems of 8 real-music excerpts, 0.63 on benchmarks/library.py's synthetic files), erring on the large side
# an NI stem file (--format stem) holds the mixture as well: 5 streams for 4 stems, ALAC costed at 0.62 of 24-bit
# PCM (measured by benchmarks/file_formats.py; AAC is far smaller, so this errs on the large side)
BYTES_PER_SAMPLE = {"wav": 3.0, "flac": 3.0 * 0.7, "stem": 3.0 * 0.62 * 5 / 4}
HEADER_BYTES_PER_FILE = 8192
SPACE_MARGIN = 1.05  # refuse unless the free space exceeds the estimate by this factor


@dataclass
class Job:
    """One track: where it is, where its stems go, and what its header says (``frames`` 0 until probed)."""

    input: Path  # absolute
    out_dir: Path  # absolute: the folder that receives <stem>.<fmt>
    size_bytes: int | None = None  # None when the file cannot be stat'ed (it then fails with the reason)
    mtime_ns: int | None = None
    frames: int = 0
    sample_rate: int = 0
    num_channels: int = 0
    attempts: int = 0  # tries so far in this run (a worker lost mid-file counts one)

    @property
    def key(self) -> str:
        """The manifest's key for this track: its absolute input path."""
        return str(self.input)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass
class Collected:
    """What ``collect_jobs`` found: jobs, inputs that cannot become jobs (path, reason), unreadable formats."""

    jobs: list[Job]
    problems: list[tuple[Path, str]]
    unreadable: Counter  # suffix -> count of files a walk skipped because they cannot be decoded
    has_folders: bool


def _stat(job: Job) -> Job:
    try:
        st = job.input.stat()
    except OSError:
        return job
    job.size_bytes, job.mtime_ns = st.st_size, st.st_mtime_ns
    return job


def walk_audio(folder: Path, exclude: Path | None = None) -> tuple[list[Path], Counter]:
    """Audio files under ``folder`` (recursively, sorted; hidden files and folders and ``exclude`` left out)."""
    found: list[Path] = []
    unreadable: Counter = Counter()
    for root, dirs, names in os.walk(folder, followlinks=False):
        root_path = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude)
        )
        for name in sorted(names):
            if name.startswith("."):
                continue
            suffix = Path(name).suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                found.append(root_path / name)
            elif suffix in UNREADABLE_AUDIO_SUFFIXES:
                unreadable[suffix] += 1
    return found, unreadable


def collect_jobs(inputs: list[Path], out_dir: Path) -> Collected:
    """One job per track of ``inputs`` (files and folders), with its mirrored output folder under ``out_dir``.

    A named file becomes a job whatever it is (it fails later with its reason if it is not audio); a missing path
    does too. Two tracks that would write into the same output folder (``song.wav`` and ``song.flac`` side by side,
    or two named files called ``song``) are a problem for every one after the first.
    """
    out_root = out_dir.resolve()
    jobs: list[Job] = []
    problems: list[tuple[Path, str]] = []
    unreadable: Counter = Counter()
    taken: dict[Path, Path] = {}
    has_folders = False

    def add(path: Path, target: Path) -> None:
        source = path.resolve()
        if target in taken:
            if taken[target] != source:
                problems.append(
                    (path, f"{path}: another input ({taken[target]}) has the same name; outputs would collide")
                )
            return
        taken[target] = source
        jobs.append(_stat(Job(input=source, out_dir=target)))

    for path in inputs:
        if path.is_dir():
            has_folders = True
            files, skipped = walk_audio(path, exclude=out_root)
            unreadable.update(skipped)
            for f in files:
                rel = f.relative_to(path)
                add(f, out_root / rel.parent / rel.stem)
        else:
            add(path, out_root / path.stem)
    return Collected(jobs, problems, unreadable, has_folders)


def probe_jobs(jobs: list[Job]) -> None:
    """Fill in frames, rate and channels from each file's header; files that cannot be read keep zeros."""
    for job in jobs:
        try:
            info = sf.info(str(job.input))
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
            continue
        job.frames, job.sample_rate, job.num_channels = int(info.frames), int(info.samplerate), int(info.channels)


def estimate_output_bytes(jobs: list[Job], num_stems: int, fmt: str) -> int:
    """Bytes the stems of ``jobs`` will take: each stem at the input's rate and channels, 24-bit (compressed for
    FLAC by the measured ratio). Unprobed jobs count as their input file size per stem."""
    per_sample = BYTES_PER_SAMPLE.get(fmt, 3.0)  # a format not listed is costed as 24-bit PCM
    total = 0.0
    for job in jobs:
        if job.frames:
            total += job.frames * job.num_channels * per_sample * num_stems
        else:
            total += (job.size_bytes or 0) * num_stems
        total += HEADER_BYTES_PER_FILE * num_stems
    return int(total)


def free_bytes(out_dir: Path) -> int:
    """Free space on the filesystem that will hold ``out_dir`` (its nearest existing parent)."""
    p = out_dir.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def largest_first(jobs: list[Job]) -> list[Job]:
    """Longest audio first (samples x channels; file size for files without a readable header), then by path."""
    return sorted(jobs, key=lambda j: (-(j.frames * max(j.num_channels, 1) or (j.size_bytes or 0) // 3), j.key))


def planned_outputs(job: Job, stems: list[str], fmt: str) -> list[Path]:
    """The files ``engine.audio_io.AtomicStemWriter`` writes for this job (``<out_dir>/<stem>.<fmt>``), or with
    ``fmt`` "stem" the one NI stem file beside that folder (``engine.stem_output``)."""
    if fmt == "stem":
        from stembridge.engine.stem_output import stem_file_name

        return [job.out_dir.parent / stem_file_name(job.input)]
    return [job.out_dir / f"{stem}.{fmt}" for stem in stems]
