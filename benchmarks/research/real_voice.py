"""Where a real human voice goes: held-out real speakers over real band recordings.

No real singing with its own track is reachable here (see real_stems.py), but real voices are: KLettres ships
letters and syllables spoken by native speakers of 20 languages, and Frets on Fire's songs ship their band without
the lead guitar (``song.ogg``). This benchmark strings the clean recordings of the speakers that training never
hears (``engine.training.real_material.VOICE_TEST``) into phrases, lays each over a band track at a fixed level and
asks where the voice ends up::

    apt-get install klettres-data fretsonfire-songs-muldjord fretsonfire-songs-sectoid
    python3 benchmarks/research/real_voice.py [--model M.onnx] [--seconds 30] [--voice-db -3] [--sung {world,psola}]

Speech is not singing, so this measures whether the model knows a real voice's sound (formants, consonants, breath,
a real microphone), not how it treats a sung melody. The band tracks may hold sung or growled vocals of their own;
they are part of the band here and are not scored. For each excerpt and method, the voice's share in each estimated
stem in dB relative to the voice (``engine.evaluate.source_shares``): vocals higher is better, ``outside_vocals``
lower. Writes benchmarks/results/real_voice/.

``--sung METHOD`` sings the held-out speakers' clips instead (``engine.training.sung_speech``: each syllable re-timed
and re-pitched onto a melody, by the WORLD vocoder or by PSOLA, which keeps the speaker's own excitation; reverb on
most excerpts) and writes benchmarks/results/real_voice/sung_METHOD/. The voices are real, the singing is not: a
model trained on sung training speakers (``sung_speech`` run on the training pool) has heard the same method, so this
condition measures held-out voices, not real singing.

``--levels-of OTHER`` (with ``--sung``) then brings each 46 ms frame of the sung voice to the level of the same frame
of the same track sung by OTHER (the same seed: the same melody and timing; ``vocal_contexts.with_frame_levels_of``,
the RMS kept) and writes sung_METHOD_levels_OTHER/: how much of the difference between two methods is their level
contour alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # real_stems
sys.path.insert(0, str(ROOT / "benchmarks" / "research"))  # vocal_contexts

from stembridge.engine import evaluate as quality  # noqa: E402
from stembridge.engine.baselines import STEMS  # noqa: E402
from stembridge.engine.separator import DEFAULT_MODEL  # noqa: E402
from stembridge.engine.training import real_material, sung_speech  # noqa: E402
from stembridge.engine.training.real_material import KLETTRES, VOICE_TEST, voice_clips  # noqa: E402
from vocal_contexts import with_frame_levels_of  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "real_voice"
SONGS = real_material.FRETSONFIRE
RATE = 44100


def band_tracks(root: Path) -> list[Path]:
    """The band tracks (song.ogg beside a guitar.ogg) under ``root``, sorted."""
    songs = sorted(p.parent / "song.ogg" for p in root.rglob("guitar.ogg") if (p.parent / "song.ogg").exists())
    if not songs:
        raise SystemExit(f"{root}: no song.ogg band tracks (apt-get install {real_material.FRETSONFIRE_PACKAGES})")
    return songs


def excerpt(clips: list[np.ndarray], band: np.ndarray, voice_db: float, seed: int) -> np.ndarray:
    """A phrase of ``clips`` as long as ``band`` (channels, n), its RMS ``voice_db`` relative to the band's."""
    voice = real_material.phrase(clips, band.shape[1], np.random.default_rng(seed), RATE, band.shape[0])
    gain = 10 ** (voice_db / 20) * np.sqrt(np.mean(band**2) / max(np.mean(voice**2), 1e-12))
    return (voice * gain).astype(np.float32)


def sung_excerpt(
    speaker: sung_speech.Speaker,
    band: np.ndarray,
    voice_db: float,
    seed: int,
    method: str,
    levels_of: str | None = None,
) -> np.ndarray:
    """A track of ``speaker`` sung by ``method``, as long as ``band`` (channels, n), its RMS ``voice_db`` relative to
    the band's; with ``levels_of``, its frame levels moved to those of the same track sung by that method."""
    rng = random.Random(seed)
    n = band.shape[1]
    line, _ = sung_speech.sung_track(speaker, rng, n / RATE, method)
    voice = sung_speech.produced(np.pad(line, (0, max(n - len(line), 0)))[:n], rng)[: band.shape[0]]
    if levels_of is not None:
        other = sung_excerpt(speaker, band, voice_db, seed, levels_of)
        voice = np.stack([with_frame_levels_of(v, o) for v, o in zip(voice, other, strict=True)])
    gain = 10 ** (voice_db / 20) * np.sqrt(np.mean(band**2) / max(np.mean(voice**2), 1e-12))
    return (voice * gain).astype(np.float32)


def markdown(report: dict) -> str:
    keys = [*STEMS, "outside_vocals"]
    sung = f" sung by {report['sung']} (engine.training.sung_speech)" if report.get("sung") else ""
    if report.get("levels_of"):
        sung += f" with the frame levels of the same tracks sung by {report['levels_of']}"
    lines = [
        "# Where a real voice goes",
        "",
        f"{len(report['excerpts'])} excerpts of {report['seconds']} s: held-out KLettres speakers"
        f"{sung} "
        f"({', '.join(report['voices'])}) at {report['voice_db']} dB against Frets on Fire band tracks; evaluated "
        f"{report['created']}. The voice's energy in each estimated stem, dB relative to the voice (vocals: higher "
        "is better; drums, bass, other, outside vocals: lower is better). Median over excerpts:",
        "",
    ]
    lines += quality.shares_table(report["summary"], keys)
    methods = list(report["summary"])
    lines += ["", "Per excerpt (voice in vocals / outside vocals, dB):", ""]
    lines += ["| excerpt | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name, entry in report["excerpts"].items():
        cells = [f"{entry['methods'][m]['vocals']:.1f} / {entry['methods'][m]['outside_vocals']:.1f}" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Methods:", ""] + [f"- **{m}**: {d}" for m, d in report["methods"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=Path, default=SONGS, help="folder searched for Frets on Fire band tracks")
    parser.add_argument("--voices", type=Path, default=KLETTRES, help="KLettres data folder")
    parser.add_argument("--start", type=float, default=30.0, help="seconds into each band track")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per excerpt")
    parser.add_argument("--voice-db", type=float, default=-3.0, help="voice RMS relative to the band's, dB")
    parser.add_argument(
        "--sung", choices=sung_speech.METHODS, default=None, help="sing the speakers' clips by this method (see above)"
    )
    parser.add_argument(
        "--levels-of",
        choices=sung_speech.METHODS,
        default=None,
        help="with --sung: the frame levels of the same tracks sung by this method (see above)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"default {RESULTS} (with --sung M, its sung_M/ or sung_M_levels_L/)"
    )
    quality.add_model_options(parser)
    args = parser.parse_args()
    if args.levels_of and not args.sung:
        parser.error("--levels-of needs --sung: it moves one sung track's frame levels to another's")

    voices = {}
    for language in VOICE_TEST:
        clips = list(voice_clips(language, args.voices, RATE).values())
        if clips:
            voices[language] = clips
    if not voices:
        wanted = ", ".join(VOICE_TEST)
        raise SystemExit(f"{args.voices}: no clean recordings of {wanted} (apt-get install klettres-data)")
    levels = f"_levels_{args.levels_of}" if args.levels_of else ""
    out = args.out or (RESULTS / f"sung_{args.sung}{levels}" if args.sung else RESULTS)
    speakers = {}
    if args.sung:
        speakers = {
            language: sung_speech.Speaker([c.mean(axis=0).astype(np.float64) for c in clips])
            for language, clips in voices.items()
        }
    model, candidates, methods = quality.share_methods(args, DEFAULT_MODEL)
    excerpts = {}
    for i, path in enumerate(band_tracks(args.songs)):
        language = list(voices)[i % len(voices)]
        band = real_material.load_audio(path, RATE)
        a = min(int(args.start * RATE), band.shape[1])
        band = np.ascontiguousarray(band[:, a : a + int(args.seconds * RATE)])
        if band.shape[1] < RATE:
            raise SystemExit(f"{path}: less than 1 s of audio from {args.start} s")
        if args.sung:
            voice = sung_excerpt(speakers[language], band, args.voice_db, i, args.sung, args.levels_of)
        else:
            voice = excerpt(voices[language], band, args.voice_db, seed=i)
        mixture = voice + band
        song = quality.Song(path.parent.name, RATE, mixture, np.zeros((len(STEMS), *mixture.shape), np.float32))
        name = f"{language} over {path.parent.name}"
        entry = {"voice": language, "band": path.parent.name}
        entry["methods"] = {
            m.name: quality.source_shares(m.separate(song), voice, band, RATE, "vocals") for m in methods
        }
        excerpts[name] = entry
        print(name, json.dumps(entry["methods"]), file=sys.stderr, flush=True)
    keys = [*STEMS, "outside_vocals"]
    summary = quality.median_shares(list(excerpts.values()), [m.name for m in methods], keys)
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "songs": str(args.songs),
        "voices": {language: len(clips) for language, clips in voices.items()},
        "start_s": args.start,
        "seconds": args.seconds,
        "voice_db": args.voice_db,
        "sung": args.sung,
        "levels_of": args.levels_of,
        "methods": {m.name: m.description for m in methods},
        "model": model.params,
        "candidates": {c.name: c.params for c in candidates},
        "summary": summary,
        "excerpts": excerpts,
    }
    quality.write_json_and_markdown(out, "real_voice", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
