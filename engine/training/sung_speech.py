"""Real speakers, sung: the spoken clips of a real pool turned into sung phrases.

The default model keeps a real *spoken* voice in its vocal stem (benchmarks/results/real_voice/) but loses most of a
real *sung* one to "other" (benchmarks/results/real_stems/): singing holds long pitched vowels, as the instruments
do, and the only singing it trained on was festival's diphone voices sung by the WORLD vocoder (generator version 5
sings half the songs by PSOLA). No isolated real singing is reachable here, so this module sings the real speakers
instead: each spoken letter or syllable of a KLettres speaker (``real_material``) becomes one syllable of a melody
over a chord progression, laid onto its note as the synthetic songs lay festival's syllables
(``synth_vocals.syllable_segments``: consonants at natural speed, the vowel stretched over the note) with the
portamento, vibrato and drift of a random singer (``pitch_contour``). Two methods sing it:

* ``world``: the synthesizer's own WORLD speech-to-singing (``synth_vocals.sing_frames``). The spectral envelope
  and the consonants are the speaker's; the excitation is WORLD's.
* ``psola``: TD-PSOLA (``synth_vocals.psola_phrase``): the speaker's own periods, windowed and laid at the sung
  pitch, so the real excitation (glottal pulse, jitter, breath) stays too. The real sung vocal of the MUSDB18
  excerpt keeps 2.4 dB more of itself in the default model's vocal stem once WORLD has merely resynthesised it
  (benchmarks/results/vocal_contexts/): the model keys partly on the vocoder's sound, which WORLD-sung training
  material would only teach it further.

``python3 -m stembridge.engine.training.sung_speech data/real/train --method psola --out DIR`` writes, for every
vocal source of
the pool, a source ``<source>_sung`` of sung tracks (24-bit WAV, stereo, most with reverb) into ``DIR`` and links the
pool's own sources beside them, so ``DIR`` is the pool plus its sung speakers (without ``--out`` the sung sources
join the pool itself). ``RealPool`` samples a sung track as it samples a guitar track. Deterministic from
``--seed``, the method and the source's name.
"""

from __future__ import annotations

import argparse
import math
import random
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from stembridge.engine.training.real_material import AUDIO_SUFFIXES, CLIP_SECONDS, load_audio, trimmed
from stembridge.engine.training.synth_music import SAMPLE_RATE, make_progression
from stembridge.engine.training.synth_vocals import (
    FRAME_PERIOD_MS,
    melody_for_speech,
    pitch_contour,
    psola_line,
    quiet_phrases,
    random_singer,
    sing_frames,
    speech_f0,
    synthesize_line,
    voiced_regions,
)

CLIP_PAUSE_S = 0.06  # silence between clips strung into one phrase for the analysis
MALE_BELOW_HZ = 165.0  # median speaking F0 under which a speaker sings in the lower register
REGISTERS = {"low": (41, 67), "high": (53, 79)}  # widest sung MIDI range, as for the festival voices
PEAK = 10 ** (-1 / 20)  # tracks are written peaking at -1 dBFS
METHODS = ("world", "psola")


def clip_syllables(x: np.ndarray, sample_rate: int, f0: np.ndarray | None = None) -> list[list[tuple]]:
    """The syllables of one spoken clip x: float64 (num_samples,), in festival's form (``synth_vocals``): a list of
    syllables, each a list of (phone, is_vowel, start_s, end_s) segments. Each voiced stretch is a vowel; the unvoiced
    sound between two of them is split at its middle into coda and onset. ``f0``: x's ``speech_f0`` if known."""
    dt = FRAME_PERIOD_MS / 1000.0
    end_s = len(x) / sample_rate
    f0 = speech_f0(x, sample_rate) if f0 is None else f0
    regions = [(a * dt, min(b * dt, end_s)) for a, b in voiced_regions(f0)]
    syllables = []
    for i, (v0, v1) in enumerate(regions):
        start = 0.0 if i == 0 else (regions[i - 1][1] + v0) / 2
        stop = end_s if i == len(regions) - 1 else (v1 + regions[i + 1][0]) / 2
        segments = [("C", False, start, v0)] if v0 - start > dt else []
        segments.append(("V", True, v0, v1))
        if stop - v1 > dt:
            segments.append(("C", False, v1, stop))
        syllables.append(segments)
    return syllables


def shifted(syllables: list[list[tuple]], offset_s: float) -> list[list[tuple]]:
    """``syllables`` (as ``clip_syllables`` gives them) with every time moved by ``offset_s``."""
    return [[(p, vowel, a + offset_s, b + offset_s) for p, vowel, a, b in syl] for syl in syllables]


def spoken_clips(folder: Path) -> list[np.ndarray]:
    """The trimmed mono recordings (float64 (num_samples,) at SAMPLE_RATE) of one source folder of a real pool that are
    clips (shorter than real_material.CLIP_SECONDS), sorted by path."""
    clips = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        x = trimmed(load_audio(path, SAMPLE_RATE), SAMPLE_RATE)
        if SAMPLE_RATE // 10 <= x.shape[1] < CLIP_SECONDS * SAMPLE_RATE:
            clips.append(x.mean(axis=0).astype(np.float64))
    return clips


class Speaker:
    """One real speaker's clips (mono float64 (num_samples,) at SAMPLE_RATE) with their syllables, analysed once, and
    the register the speaker sings in. A speaker with no voiced clip is refused (ValueError)."""

    def __init__(self, clips: list[np.ndarray]) -> None:
        self.sample_rate = SAMPLE_RATE
        self.clips, self.syllables, voiced = [], [], []
        for x in clips:
            f0 = speech_f0(x, SAMPLE_RATE)
            syllables = clip_syllables(x, SAMPLE_RATE, f0)
            if syllables:
                self.clips.append(x)
                self.syllables.append(syllables)
                voiced.append(f0[f0 > 0])
        if not self.clips:
            raise ValueError("no clip with a voiced stretch to sing")
        self.median_f0_hz = float(np.median(np.concatenate(voiced)))

    def pitch_range(self, rng: random.Random) -> tuple[int, int]:
        """A sung MIDI range of 12-17 semitones in the speaker's register, around and above the speaking pitch."""
        lo_wide, hi_wide = REGISTERS["low" if self.median_f0_hz < MALE_BELOW_HZ else "high"]
        speaking = 69 + 12 * math.log2(self.median_f0_hz / 440.0)
        span = rng.randint(12, 17)
        centre = speaking + rng.uniform(0, 7)
        lo = int(round(min(max(centre - span / 2, lo_wide), hi_wide - span)))
        return lo, lo + span

    def phrase_audio(self, rng: random.Random, num_syllables: int) -> tuple[np.ndarray, int, list[list[tuple]]]:
        """Random clips strung with CLIP_PAUSE_S pauses until they hold ``num_syllables`` syllables:
        (speech float64 (num_samples,), sample rate, syllables), as ``synth_vocals.festival_phrases`` gives."""
        pause = np.zeros(int(CLIP_PAUSE_S * self.sample_rate))
        parts, syllables, offset = [], [], 0
        while len(syllables) < num_syllables:
            i = rng.randrange(len(self.clips))
            syllables += shifted(self.syllables[i], offset / self.sample_rate)
            parts += [self.clips[i], pause]
            offset += len(self.clips[i]) + len(pause)
        return np.concatenate(parts), self.sample_rate, syllables


def sung_track(speaker: Speaker, rng: random.Random, seconds: float, method: str = "world") -> tuple[np.ndarray, dict]:
    """One sung track of ``seconds``: a melody over a random progression, one syllable per note, sung with the
    speaker's clips by ``method``: "world" (the synthesizer's vocoder: the envelope is the speaker's, the excitation
    WORLD's) or "psola" (``synth_vocals.psola_line``: the speaker's own excitation). Returns (mono float32
    (num_samples,) at SAMPLE_RATE, meta)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    key_pc, mode = rng.randrange(12), rng.choice(["major", "minor"])
    tempo = rng.randint(66, 150)
    bars = make_progression(rng, key_pc, mode, "pop", int(seconds * tempo / 240) + 2)
    pitch_range = speaker.pitch_range(rng)
    gap_prob = rng.uniform(0.05, 0.3)
    phrases, tts = melody_for_speech(
        rng,
        bars,
        key_pc,
        mode,
        tempo,
        pitch_range,
        seconds,
        gap_prob,
        lambda n: [speaker.phrase_audio(rng, k) for k in n],
    )
    num_out = int(seconds * SAMPLE_RATE)
    if method == "world":
        voice_params = {
            "alpha": rng.uniform(0.96, 1.04),  # a real voice: formants left nearly where they are
            "consonant_scale": rng.uniform(0.6, 1.0),
            "breath": (rng.uniform(3000, 6000), rng.uniform(8000, 14000), rng.uniform(0.0, 0.5)),
            "hf_slope": 1.0,  # unused: the clips are analysed at the output rate
            "hf_aperiodicity": 0.5,
        }
        frames = sing_frames(phrases, tts[: len(phrases)], rng, num_out, voice_params)
        f0 = pitch_contour(phrases, len(frames.gain), rng, random_singer(rng))
        line = synthesize_line(frames, f0, num_out)
    else:
        voice_params = {"consonant_scale": rng.uniform(0.6, 1.0), "level_pull": rng.uniform(0.3, 0.6)}
        num_frames = int(num_out / SAMPLE_RATE / (FRAME_PERIOD_MS / 1000.0)) + 1
        f0 = pitch_contour(phrases, num_frames, rng, random_singer(rng))
        line = psola_line(phrases, tts, f0, rng, voice_params, num_out)
    meta = {
        "method": method,
        "key_pc": key_pc,
        "mode": mode,
        "tempo": tempo,
        "pitch_range": pitch_range,
        "voice_params": voice_params,
        "quiet_phrases": quiet_phrases(line, phrases),
        "notes": [[(round(n["t"], 3), round(n["d"], 3), n["pitch"]) for n in ph] for ph in phrases],
    }
    return line, meta


def produced(line: np.ndarray, rng: random.Random) -> np.ndarray:
    """A sung line made a stereo vocal track: reverb on most, peak at -1 dBFS. float32 (2, num_samples)."""
    from pedalboard import Compressor, Pedalboard, Reverb

    x = np.stack([line, line]).astype(np.float32)
    effects = [Compressor(threshold_db=rng.uniform(-24, -12), ratio=rng.uniform(2, 4), attack_ms=5, release_ms=80)]
    if rng.random() < 0.7:
        wet = rng.uniform(0.08, 0.3)
        effects.append(Reverb(room_size=rng.uniform(0.2, 0.8), damping=0.5, wet_level=wet, dry_level=1 - wet / 2))
    y = Pedalboard(effects)(x, SAMPLE_RATE)
    return (y * PEAK / max(float(np.abs(y).max()), 1e-9)).astype(np.float32)


def sing_pool(
    pool: Path,
    out: Path | None = None,
    num_tracks: int = 3,
    seconds: float = 20.0,
    seed: int = 0,
    method: str = "world",
) -> dict[str, int]:
    """Write ``num_tracks`` tracks of ``seconds`` sung by ``method`` (see ``sung_track``) for every vocal source of
    ``pool`` that has clips, into ``out/vocals/<source>_sung/``. ``out`` defaults to the pool itself; another ``out``
    becomes a whole pool: the pool's own source folders are linked into it beside the sung ones. Returns tracks
    written per source."""
    out = pool if out is None else out
    folder = pool / "vocals"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no vocal sources to sing (see engine/training/real_material.py)")
    if out.resolve() != pool.resolve():
        for source in sorted(p for p in pool.glob("*/*") if p.is_dir() and not p.name.endswith("_sung")):
            link = out / source.parent.name / source.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            if not link.exists():
                link.symlink_to(source.resolve(), target_is_directory=True)
    written: dict[str, int] = {}
    for source in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith("_sung")):
        clips = spoken_clips(source)
        try:
            speaker = Speaker(clips)
        except ValueError:  # no clips, or none voiced: nothing to sing
            continue
        rng = random.Random(seed * 1_000_003 + zlib.crc32(source.name.encode()))
        dest = out / "vocals" / f"{source.name}_sung"
        dest.mkdir(parents=True, exist_ok=True)
        count = 0
        for k in range(num_tracks):
            for _attempt in range(3):  # a track with a failed phrase is sung again with the next draws
                line, meta = sung_track(speaker, rng, seconds, method)
                if not meta["quiet_phrases"]:
                    break
            else:
                continue
            sf.write(dest / f"sung_{k:02d}.wav", produced(line, rng).T, SAMPLE_RATE, subtype="PCM_24")
            count += 1
        written[source.name] = count
    if not written:
        raise ValueError(f"{folder}: no source with voiced spoken clips (shorter than {CLIP_SECONDS:g} s) to sing")
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Sing the spoken clips of a real pool's vocal sources (see the docstring).")
    p.add_argument("pool", type=Path, help="a real pool (real_material gather's train or test folder)")
    p.add_argument(
        "--out", type=Path, default=None, help="pool to write the <source>_sung folders into (default: POOL)"
    )
    p.add_argument("--tracks", type=int, default=3, help="sung tracks per source")
    p.add_argument("--seconds", type=float, default=20.0, help="length of a track")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=METHODS, default="world", help="how to sing (see sung_track)")
    args = p.parse_args(argv)
    if args.tracks < 1 or args.seconds < 2:
        p.error("--tracks must be at least 1 and --seconds at least 2")
    for source, count in sing_pool(args.pool, args.out, args.tracks, args.seconds, args.seed, args.method).items():
        print(f"{source}: {count} sung tracks")


if __name__ == "__main__":
    main()
