"""Real multitrack songs for training and validation: MUSDB18 excerpts (``.stem.mp4``) decoded into a song bank.

``python3 -m stembridge.engine.training.musdb --src ../shared/data/musdb18-7-train --out data/musdb`` decodes every
NI stem file of the folder (streams in MUSDB18's order: mixture, drums, bass, other, vocals) into
``<out>/<split>/<song>/{vocals,drums,bass,other}.wav``, 16-bit PCM at the file's rate, the shape
``dataset.SongBank`` reads. The stored mixture stream is not kept: it differs from the sum of the coded stems by
coding noise, and training builds every mixture from its stems. ``TRIM_FRAMES`` are cut at both ends (the AAC
coding transient of every excerpt).

The split is by song and fixed: ``VALIDATION`` names 12 of the 94 songs, spread over both sources and the
genres (chosen once by name, never by score), so that every candidate is decided on the same unseen songs. The
other 82 train. ``--validation none`` puts all 94 into train (what ships is trained on all of them once a candidate
has been chosen). ``Music Delta - 80s Rock`` is in the training folder and so never counts as unseen.

Licence: MUSDB18 is for research and non-commercial use (DSD100: restricted to that use; MedleyDB: CC BY-NC-SA).
The decoded songs are data, never committed (``data/`` is ignored); a model trained on them says so in its card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

STEMS = ("vocals", "drums", "bass", "other")
TRIM_FRAMES = 2048  # the AAC coding transient at both ends of every excerpt
SUFFIX = ".stem.mp4"

# 12 validation songs, by name (chosen once by source and genre, never by score): 5 MedleyDB and 7 DSD100; rap,
# pop/rock, singer/songwriter, heavy metal, electronic, jazz, pop and rock among them
VALIDATION = (
    "ANiMAL - Rockshow",
    "Actions - One Minute Smile",
    "Atlantis Bound - It Was My Fault For Waiting",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Dark Ride - Burning Bridges",
    "Fergessen - Back From The Start",
    "Giselle - Moss",
    "Johnny Lokke - Whisper To A Scream",
    "Matthew Entwistle - Dont You Ever",
    "Night Panther - Fire",
    "Patrick Talbot - Set Me Free",
    "The So So Glos - Emergency",
)


def song_name(path: Path) -> str:
    return path.name.removesuffix(SUFFIX)


def decode_stems(stem_file: Path, trim_frames: int = TRIM_FRAMES) -> tuple[dict[str, np.ndarray], int]:
    """The four stems of a MUSDB18 stem file: {stem: float32 (num_frames, 2)}, trimmed, and the sample rate.
    Decoded by the project's own NI stem reader (engine/stem_file.py: streams 1-4 in NI's slot order, which is
    MUSDB18's drums, bass, other, vocals)."""
    from stembridge.engine.audio_io import AudioFileError
    from stembridge.engine.stem_file import read_stem_file

    try:
        decoded = read_stem_file(stem_file)
    except AudioFileError as exc:
        raise SystemExit(str(exc)) from exc
    rate = decoded.sample_rate
    stems = {stem: np.ascontiguousarray(decoded.stems[stem].T, dtype=np.float32) for stem in STEMS}
    n = min(a.shape[0] for a in stems.values())
    if n <= 2 * trim_frames + rate:
        raise SystemExit(f"{stem_file}: under 1 s of audio once {trim_frames} frames are cut at each end")
    return {k: v[trim_frames : n - trim_frames] for k, v in stems.items()}, rate


def prepare(src: Path, out: Path, validation: tuple[str, ...] = VALIDATION) -> dict[str, list[str]]:
    """Decode every ``*.stem.mp4`` of ``src`` into the song bank ``out``; returns {split: [song names]}.
    Songs already decoded are kept (a song folder appears only when complete)."""
    files = sorted(src.glob(f"*{SUFFIX}"))
    if not files:
        raise SystemExit(f"{src}: no {SUFFIX} files")
    names = {song_name(f) for f in files}
    missing = [v for v in validation if v not in names]
    if missing:
        raise SystemExit(f"{src}: validation songs not found: {', '.join(missing)}")
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for f in files:
        name = song_name(f)
        split = "validation" if name in validation else "train"
        splits[split].append(name)
        folder = out / split / name
        if folder.is_dir():
            continue
        stems, rate = decode_stems(f)
        partial = out / split / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        peak = max(float(np.abs(a).max()) for a in stems.values())
        scale = 1.0 if peak < 1.0 else 0.999 / peak  # 16-bit PCM holds [-1, 1): one scale for all stems of a song
        for stem, audio in stems.items():
            sf.write(partial / f"{stem}.wav", audio * scale, rate, subtype="PCM_16")
        partial.rename(folder)
    describe(out, splits)
    return splits


def describe(out: Path, splits: dict[str, list[str]]) -> None:
    """Write ``<out>/bank.json``: what the song bank is, for the training log and the model card."""
    text = (
        f"MUSDB18-7 (sigsep's 7-second excerpts of the MUSDB18 train split; research and non-commercial use only: "
        f"DSD100 restricted to that use, MedleyDB CC BY-NC-SA): {len(splits['train'])} real songs in train, "
        f"{len(splits['validation'])} held out for validation (engine/training/musdb.py VALIDATION)"
    )
    info = {"dataset": "MUSDB18-7", "description": text, "splits": {k: sorted(v) for k, v in splits.items()}}
    (out / "bank.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=Path("../shared/data/musdb18-7-train"), help="folder of .stem.mp4")
    p.add_argument("--out", type=Path, default=Path("data/musdb"), help="song bank to write (<split>/<song>/*.wav)")
    p.add_argument(
        "--validation", choices=("fixed", "none"), default="fixed", help="none: every song trains (the final run)"
    )
    args = p.parse_args(argv)
    splits = prepare(args.src, args.out, VALIDATION if args.validation == "fixed" else ())
    print(f"{args.out}: {len(splits['train'])} train, {len(splits['validation'])} validation songs")


if __name__ == "__main__":
    main()
