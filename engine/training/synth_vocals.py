"""Sung vocals for synthetic songs: melody over the chords, lyrics, festival TTS, speech-to-singing by WORLD or PSOLA.

Ported from the stemgen prototype. A melody is laid out in phrases with one note per syllable; festival speaks random
lyrics (with phone timings); each syllable is re-timed onto its note (consonants at natural speed, vowels stretched)
and sung at the melody's pitch (portamento, vibrato, drift) by one of two vocoders:

* WORLD (pyworld): the spectral envelope is resampled to 44.1 kHz with a formant shift and extrapolated above the
  voice's Nyquist, and resynthesised with WORLD's own excitation.
* TD-PSOLA: festival's own periods (its diphone voices are recorded speech) are windowed and laid at the sung pitch,
  after a resampling that scales the formants; the band above the voice's Nyquist is filled by ``add_air``.

A real sung vocal once seemed to keep more of itself in the default model's vocal stem when resynthesised by
WORLD, so since generator version 5 half the songs are sung by each and no vocoder is a constant of the data. That
advantage turned out to be WORLD's louder output and level contour, not its sound (benchmarks/results/vocal_contexts/;
the README's "What WORLD's resynthesis changes"). Harmony lines and doubles reuse the same speech with another pitch
contour. Mono audio is float32 (num_frames,).
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np
import soundfile as sf
from stembridge.engine.training.synth_music import (
    CHORD_INTERVALS,
    MAJOR,
    MINOR,
    SAMPLE_RATE,
    TIMBRES,
    Bar,
    fit_length,
    render_fluidsynth,
)

WORDS = """love heart night day light fire rain dream baby dance sky sun moon star time
home road river ocean wind golden silver shadow morning evening summer winter city
forever never always together alone running falling flying burning shining sweet
blue green tonight yesterday tomorrow remember believe hold touch feel kiss smile tears
open door window street highway sister brother mother father lover stranger angel
devil heaven island mountain valley rolling thunder lightning whisper crying laughing
holding waiting calling dreaming breaking moving lonely happy crazy easy heavy honey
sugar candy money paper diamond rocket magic music rhythm melody singing dancing party
wonder beautiful wild free slow fast high low deep soul body mind eyes hands voice
story memory little darling sorrow glory freedom echo fever desire ever over under
again away alive inside outside across along behind beyond between
oh yeah hey la na go come stay run fly shine rise fall turn burn call find lose
""".split()

# Debian's English festival voices: name -> (scheme call, native sample rate, gender, widest sung MIDI range).
# The sung range of a song is a random window inside the widest range (WORLD moves F0 far from the speech F0).
# Italian voices sing the English lyrics with Italian letter-to-sound rules: other vowels and consonants, on purpose.
FESTIVAL_VOICES: dict[str, tuple[str, int, str, tuple[int, int]]] = {
    "slt": ("(voice_cmu_us_slt_arctic_hts)", 32000, "f", (53, 79)),
    "kal": ("(voice_kal_diphone)", 16000, "m", (41, 67)),
    "ked": ("(voice_ked_diphone)", 16000, "m", (41, 67)),
    "lp": ("(voice_lp_diphone)", 16000, "f", (53, 79)),
    "pc": ("(voice_pc_diphone)", 16000, "m", (41, 67)),
}
VOICE_WEIGHTS = {"slt": 0.3, "kal": 0.25, "ked": 0.2, "lp": 0.125, "pc": 0.125}
# Held-out voices (--timbres heldout): speakers no training song uses, each singing the English lyrics with its own
# language's letter-to-sound rules, for the test set that measures how the model fares on voices it never heard.
FESTIVAL_VOICES.update(
    {
        "ona": ("(voice_upc_ca_ona_hts)", 16000, "f", (53, 79)),  # Catalan, HTS
        "dita": ("(voice_czech_dita)", 32000, "f", (53, 79)),  # Czech, diphone
        "nsh": ("(voice_msu_ru_nsh_clunits)", 16000, "m", (41, 67)),  # Russian, unit selection
        "machac": ("(voice_czech_machac)", 32000, "m", (41, 67)),  # Czech, diphone
    }
)
HELDOUT_VOICE_WEIGHTS = {"ona": 0.3, "dita": 0.2, "nsh": 0.25, "machac": 0.25}
# (The Finnish "lj" voice was tried and dropped: in 4 of its 13 test songs WORLD sang whole phrases 50-70 dB too quiet;
# quiet_phrases now fails such a song.)
_VOICE_DIRS = {
    "slt": "us/cmu_us_slt_arctic_hts",
    "kal": "english/kal_diphone",
    "ked": "english/ked_diphone",
    "lp": "italian/lp_diphone",
    "pc": "italian/pc_diphone",
    "ona": "catalan/upc_ca_ona_hts",
    "dita": "czech/czech_dita",
    "nsh": "russian/msu_ru_nsh_clunits",
    "machac": "czech/czech_machac",
}


def voice_weights(timbres: str = "train") -> dict[str, float]:
    """Draw weights of the voices of a timbre set: "train" or "heldout" (the two share no voice)."""
    if timbres not in TIMBRES:
        raise ValueError(f"timbres must be one of {', '.join(TIMBRES)}, got {timbres!r}")
    return VOICE_WEIGHTS if timbres == "train" else HELDOUT_VOICE_WEIGHTS


def installed_voices(timbres: str = "train") -> list[str]:
    """Festival voices of a timbre set installed under /usr/share/festival/voices, sorted."""
    return sorted(v for v in voice_weights(timbres) if Path("/usr/share/festival/voices", _VOICE_DIRS[v]).is_dir())


FRAME_PERIOD_MS = 5.0  # WORLD frame period
VOCODERS = ("world", "psola")  # how a song's lead line is sung from festival's speech

# A note is {"t": onset s, "d": duration s, "pitch": MIDI}; a phrase is a list of notes, one per syllable.
Note = dict
Phrase = list[Note]


def choice_weighted(rng: random.Random, weights, k: int) -> np.ndarray:
    """k distinct indices drawn without replacement with probability proportional to `weights`."""
    w = np.asarray(weights, float).copy()
    out = []
    for _ in range(k):
        if w.sum() <= 0:
            break
        i = int(np.searchsorted(np.cumsum(w / w.sum()), rng.random()))
        i = min(i, len(w) - 1)
        out.append(i)
        w[i] = 0
    return np.array(out, int)


def chord_at(bars: list[Bar], t_beats: float) -> tuple[int, int, str]:
    """The chord sounding at beat `t_beats` (4 beats per bar)."""
    bar_i = min(int(t_beats // 4), len(bars) - 1)
    beat_in_bar = t_beats - bar_i * 4
    return [c for c in bars[bar_i] if c[0] <= beat_in_bar + 1e-6][-1]


def melody_notes(
    rng: random.Random,
    bars: list[Bar],
    key_pc: int,
    mode: str,
    tempo: int,
    pitch_range: tuple[int, int],
    num_syllables_fn,
    total_s: float,
    gap_prob: float = 0.15,
    layout_rng: random.Random | None = None,
) -> list[Phrase]:
    """Phrase layout, rhythm and pitches of a melody that fits the chords and stays inside `pitch_range` (MIDI lo, hi).

    num_syllables_fn(phrase_index, max_notes) says how many syllables the lyrics of that phrase have (the rhythm is
    built around the lyrics; <= 0 skips the phrase). Strong beats take chord tones, weak ones scale or chord tones;
    steps are mostly small. A phrase is left out (instrumental gap) with probability `gap_prob`. The start bar and the
    gaps are drawn from `layout_rng` (default `rng`): two calls with equal layout_rng seeds place phrases alike.
    """
    layout_rng = layout_rng or rng
    spb = 60.0 / tempo
    bar_s = 4 * spb
    scale = MAJOR if mode == "major" else MINOR
    phrase_bars = 1 if bar_s > 3.2 else (2 if bar_s > 1.5 else 4)
    grid = 0.5 if tempo < 150 else 1.0  # eighth notes (quarters when fast)
    if tempo < 75 and rng.random() < 0.5:
        grid = 0.25
    start_bar = layout_rng.choice([0, 1, 1, 2]) if len(bars) > 6 else 0
    phrases: list[Phrase] = []
    lo, hi = pitch_range
    prev = rng.randint(lo + 3, hi - 5)
    scale_pcs = {(key_pc + s) % 12 for s in scale}
    b = start_bar
    while b + phrase_bars <= len(bars) and b * bar_s < total_s - 1.0:
        if layout_rng.random() < gap_prob and phrases:
            b += phrase_bars
            continue
        beats_total = phrase_bars * 4
        rests = [1, 1.5, 2, 2, 3] if beats_total >= 8 else [0.5, 1, 1.5]
        sung = beats_total - rng.choice(rests) + rng.choice([0, 0, -0.5])
        pickup = rng.choice([0, 0, 0, 0.5, 1.0]) if grid < 1 else 0
        slots = np.arange(pickup, sung, grid)
        if len(slots) < 2:
            b += phrase_bars
            continue
        n = num_syllables_fn(len(phrases), len(slots))
        if n <= 0:
            b += phrase_bars
            continue
        n = min(n, len(slots))
        w = np.array([3.0 if abs(s - round(s)) < 1e-6 else 1.0 for s in slots])  # on-beat slots preferred
        w[0] = 1e6  # always sing on the first slot
        onsets = sorted(slots[choice_weighted(rng, w, n)])
        notes = []
        for i, o in enumerate(onsets):
            end = onsets[i + 1] if i + 1 < len(onsets) else sung + rng.choice([0.5, 1.0])
            t_beat = b * 4 + o
            root, quality = chord_at(bars, t_beat)[1:]
            chord_pcs = {(root + iv) % 12 for iv in CHORD_INTERVALS[quality]}
            strong = abs(t_beat - round(t_beat)) < 1e-6 or i == len(onsets) - 1
            allowed = chord_pcs if strong else (scale_pcs | chord_pcs)
            cands = [p for p in range(lo, hi + 1) if p % 12 in allowed]
            wts = [
                math.exp(-abs(p - prev) / 2.5)
                * (1.6 if p % 12 in chord_pcs else 1.0)
                * (0.3 if p == prev and rng.random() < 0.5 else 1.0)
                for p in cands
            ]
            p = cands[choice_weighted(rng, wts, 1)[0]]
            prev = p
            notes.append({"t": t_beat * spb, "d": (end - o) * spb, "pitch": int(p)})
        phrases.append(notes)
        b += phrase_bars
    return phrases


def melody_for_speech(
    rng: random.Random,
    bars: list[Bar],
    key_pc: int,
    mode: str,
    tempo: int,
    pitch_range: tuple[int, int],
    total_s: float,
    gap_prob: float,
    speak,
) -> tuple[list[Phrase], list[tuple]]:
    """A melody whose rhythm fits the syllables actually spoken, in two passes: the phrase grid draws a syllable
    budget per phrase; ``speak(budgets)`` returns per phrase (speech, sample rate, syllables) as
    ``festival_phrases`` does, with about that many syllables; then the rhythm is built around the syllable counts
    it produced, on the same phrase layout. Returns (phrases, speech per phrase), equally long."""
    budgets: list[int] = []

    def budget(_i: int, max_notes: int) -> int:
        n = rng.randint(max(2, max_notes // 3), max(3, int(max_notes * 0.8)))
        budgets.append(n)
        return n

    layout_seed = rng.randrange(1 << 30)
    layout = (bars, key_pc, mode, tempo, pitch_range)
    proto = melody_notes(random.Random(rng.random()), *layout, budget, total_s, gap_prob, random.Random(layout_seed))
    tts = speak(budgets[: len(proto)])
    actual = [len(syllables) for _, _, syllables in tts]
    phrases = melody_notes(
        random.Random(rng.random()),
        *layout,
        lambda i, _mx: actual[i] if i < len(actual) else 0,
        total_s,
        gap_prob,
        random.Random(layout_seed),
    )[: len(tts)]
    return phrases, tts


def harmony_line(
    phrases: list[Phrase], bars: list[Bar], key_pc: int, mode: str, tempo: int, direction: int
) -> list[Phrase]:
    """A harmony part: every note moved to the nearest chord tone (else scale tone) at least 3 semitones above
    (direction +1) or below (-1) the melody note, at most 9 away."""
    scale_pcs = {(key_pc + s) % 12 for s in (MAJOR if mode == "major" else MINOR)}
    spb = 60.0 / tempo
    out = []
    for ph in phrases:
        new = []
        for n in ph:
            root, quality = chord_at(bars, n["t"] / spb)[1:]
            chord_pcs = {(root + iv) % 12 for iv in CHORD_INTERVALS[quality]}
            steps = range(3, 10)
            p = next(
                (n["pitch"] + direction * s for s in steps if (n["pitch"] + direction * s) % 12 in chord_pcs), None
            )
            if p is None:
                p = next(n["pitch"] + direction * s for s in steps if (n["pitch"] + direction * s) % 12 in scale_pcs)
            new.append({**n, "pitch": int(p)})
        out.append(new)
    return out


def rough_syllables(word: str) -> int:
    return max(1, len(re.findall(r"[aeiouy]+", word.lower().rstrip("e"))))


# ---------------------------------------------------------------------------------------------------------------------
# festival TTS with phone timings
# ---------------------------------------------------------------------------------------------------------------------
_DUMP_SYLLABLES = """(define (dumpsyl utt tag)
  (mapcar (lambda (w) (mapcar (lambda (syl)
      (format t "SYL %s\\n" tag)
      (mapcar (lambda (seg) (format t "SEG %s %s %s %f %f\\n" tag (item.name seg)
                 (item.feat seg "ph_vc") (item.feat seg "segment_start") (item.feat seg "end")))
              (item.daughters syl)))
    (item.daughters (item.relation w 'SylStructure)))) (utt.relation.items utt 'Word)))"""


def festival_phrases(texts: list[str], voice: str, workdir: Path, stretch: float = 1.3) -> list[tuple]:
    """Speak each text as its own utterance in one festival process.

    Returns per text (speech float64 (num_samples,), sample rate, syllables), where syllables is a list of lists of
    (phone, is_vowel, start_s, end_s).
    """
    call = FESTIVAL_VOICES[voice][0]
    scm = [call, f"(Parameter.set 'Duration_Stretch {stretch:.2f})", _DUMP_SYLLABLES]
    for i, t in enumerate(texts):
        scm.append(f'(set! u (utt.synth (Utterance Text "{t}")))')
        scm.append(f'(utt.save.wave u "{workdir / f"phr{i}.wav"}" \'riff)')
        scm.append(f'(dumpsyl u "{i}")')
    p = workdir / "tts.scm"
    p.write_text("\n".join(scm) + "\n")
    r = subprocess.run(["festival", "-b", str(p)], capture_output=True, text=True)
    syls: list[list] = [[] for _ in texts]
    for line in r.stdout.splitlines():
        f = line.split()
        if not f:
            continue
        if f[0] == "SYL":
            syls[int(f[1])].append([])
        elif f[0] == "SEG":
            syls[int(f[1])][-1].append((f[2], f[3] == "+", float(f[4]), float(f[5])))
    out = []
    for i in range(len(texts)):
        path = workdir / f"phr{i}.wav"
        if not path.exists():
            raise RuntimeError("festival failed: " + r.stderr[-400:])
        x, fs = sf.read(path, dtype="float64")
        out.append((x, fs, syls[i]))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# WORLD speech-to-singing
# ---------------------------------------------------------------------------------------------------------------------
def random_singer(rng: random.Random) -> dict:
    """Vibrato, portamento and drift parameters of one singer."""
    return {
        "vib_rate": rng.uniform(4.5, 6.8),
        "vib_depth": rng.uniform(10, 70),
        "vib_delay": rng.uniform(0.1, 0.35),
        "glide_hz": rng.uniform(4, 11),
        "damping": rng.uniform(0.5, 0.95),
        "scoop": rng.uniform(0, 1.2),
        "drift_cents": rng.uniform(3, 15),
    }


def pitch_contour(phrases: list[Phrase], num_frames: int, rng: random.Random, singer: dict) -> np.ndarray:
    """Target F0 (Hz) per WORLD frame, 0 where no note: step pitch through a 2nd-order 'muscle' filter (portamento,
    overshoot, preparation) plus vibrato on long notes and slow drift. Returns float64 (num_frames,)."""
    dt = FRAME_PERIOD_MS / 1000.0
    step = np.full(num_frames, np.nan)
    vib_env = np.zeros(num_frames)
    for ph in phrases:
        for n in ph:
            step[int(n["t"] / dt) : int((n["t"] + n["d"]) / dt) + 2] = n["pitch"]
    for ph in phrases:  # onset consonants before a note take its pitch (only where free)
        for n in ph:
            seg = step[max(int((n["t"] - 0.3) / dt), 0) : int(n["t"] / dt)]
            seg[np.isnan(seg)] = n["pitch"]
    for ph in phrases:
        for n in ph:
            e = int((n["t"] + n["d"]) / dt) + 2
            if n["d"] > 0.35:
                v0 = int((n["t"] + singer["vib_delay"]) / dt)
                ramp = np.clip((np.arange(v0, e) - v0) * dt / 0.25, 0, 1)
                vib_env[v0:e] = ramp[: max(0, min(e, num_frames) - v0)]
    filled = step.copy()  # hold the last pitch through gaps so the filter glides between phrases
    last = np.nanmean(step) if np.any(~np.isnan(step)) else 60.0
    for k in range(num_frames):
        if np.isnan(filled[k]):
            filled[k] = last
        else:
            last = filled[k]
    w = 2 * math.pi * singer["glide_hz"]  # y'' = w^2 (x - y) - 2 z w y'
    z = singer["damping"]
    y = filled[0] - singer["scoop"]
    v = 0.0
    out = np.empty(num_frames)
    for k in range(num_frames):
        v += (w * w * (filled[k] - y) - 2 * z * w * v) * dt
        y += v * dt
        out[k] = y
    t = np.arange(num_frames) * dt
    rate = singer["vib_rate"] * (1 + 0.05 * np.sin(2 * math.pi * 0.3 * t + rng.random() * 6))
    out += vib_env * singer["vib_depth"] / 100.0 * np.sin(2 * math.pi * np.cumsum(rate) * dt)
    drift = np.convolve(np.array([rng.gauss(0, 1) for _ in range(num_frames)]), np.hanning(61), "same")
    out += drift / (np.std(drift) + 1e-9) * singer["drift_cents"] / 100.0
    f0 = 440.0 * 2 ** ((out - 69) / 12.0)
    f0[np.isnan(step)] = 0.0
    return f0


def warp_envelope(
    sp_in: np.ndarray, fs_in: int, fs_out: int, fft_out: int, alpha: float, slope: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a power spectral envelope (frames, bins_in) from fs_in's bin grid to fs_out's, formants scaled by
    `alpha` (>1 = smaller vocal tract). Above the source Nyquist the envelope is extrapolated from the 70-90 % band
    with a per-frame slope in power decades per decade (1 = -10 dB/decade; 0 = flat, for unvoiced frames).
    Returns (envelope (frames, fft_out // 2 + 1), bool mask of the output bins above the source Nyquist)."""
    n_in = sp_in.shape[1]
    f_src = np.arange(fft_out // 2 + 1) * fs_out / fft_out / alpha
    nyq = fs_in / 2.0
    pos = f_src / nyq * (n_in - 1)
    inside = pos <= n_in - 1
    lo = np.floor(np.clip(pos, 0, n_in - 2)).astype(int)
    fr = np.clip(pos - lo, 0, 1)
    lsp = np.log(sp_in + 1e-16)
    out = lsp[:, lo] * (1 - fr) + lsp[:, lo + 1] * fr
    anchor = lsp[:, int(0.7 * (n_in - 1)) : int(0.9 * (n_in - 1))].mean(axis=1, keepdims=True)
    sl = np.ones((len(sp_in), 1)) if slope is None else np.asarray(slope, float)[:, None]
    out[:, ~inside] = anchor - sl * np.log(np.maximum(f_src[None, ~inside], nyq) / (0.8 * nyq))
    return np.exp(out), ~inside


def syllable_segments(notes: Phrase, syls: list[list[tuple]], consonant_scale: float) -> list[tuple]:
    """How the syllables of a spoken phrase are laid onto its notes (one syllable per note): per note, (onset_s, t0,
    end, segments), where each segment (src_start_s, src_end_s, out_start_s, out_end_s, is_vowel) maps a stretch of
    the speech onto the sung line. Onset consonants run at natural speed (times `consonant_scale`) before the note
    and steal time from the previous one; the vowel's edges keep their speed and its middle fills the note; coda
    consonants end the note. syls: festival syllables, lists of (phone, is_vowel, start_s, end_s)."""
    parts = []
    for s in syls[: len(notes)]:
        vidx = [k for k, seg in enumerate(s) if seg[1]]
        if not vidx:  # syllabic consonant: the longest segment is the nucleus
            vidx = [int(np.argmax([seg[3] - seg[2] for seg in s]))]
        parts.append((s[: vidx[0]], s[vidx[0] : vidx[-1] + 1], s[vidx[-1] + 1 :]))
    onset_s = []  # onset consonants steal time from the previous note
    for j, (on, _, _) in enumerate(parts):
        d = sum(min(seg[3] - seg[2], 0.12) for seg in on) * consonant_scale
        onset_s.append(min(d, notes[j - 1]["d"] * 0.4 if j > 0 else 0.25))
    out = []
    for j, (on, nuc, co) in enumerate(parts):
        n = notes[j]
        t0 = n["t"]
        end = t0 + n["d"] * (0.92 if j == len(parts) - 1 else 1.0)
        if j + 1 < len(parts):
            end = min(end, notes[j + 1]["t"] - onset_s[j + 1])
        coda_s = min(sum(min(seg[3] - seg[2], 0.12) for seg in co) * consonant_scale, 0.35 * (end - t0))
        v_end = end - coda_s
        segs = []  # piecewise-linear source -> output time map of this syllable
        if on:
            segs.append((on[0][2], on[-1][3], t0 - onset_s[j], t0, False))
        s0, s1 = nuc[0][2], nuc[-1][3]
        edge = 0.025
        if (v_end - t0) > (s1 - s0) > 3 * edge:  # vowel transitions at natural speed, the middle stretched
            segs += [
                (s0, s0 + edge, t0, t0 + edge, True),
                (s0 + edge, s1 - edge, t0 + edge, v_end - edge, True),
                (s1 - edge, s1, v_end - edge, v_end, True),
            ]
        else:
            segs.append((s0, s1, t0, v_end, True))
        if co:
            segs.append((co[0][2], co[-1][3], v_end, end, False))
        out.append((onset_s[j], t0, end, segs))
    return out


@dataclass
class SungFrames:
    """WORLD parameters of a sung line before its pitch is set: spectral envelope and aperiodicity
    (frames, bins) at SAMPLE_RATE, voiced mask and per-frame gain (frames,)."""

    sp: np.ndarray
    ap: np.ndarray
    voiced: np.ndarray
    gain: np.ndarray


def sing_frames(
    phrases: list[Phrase], tts: list[tuple], rng: random.Random, num_out: int, voice_params: dict
) -> SungFrames:
    """Re-time festival syllables onto the notes of `phrases` (one syllable per note) at the WORLD frame rate."""
    import pyworld as pw

    fft_out = pw.get_cheaptrick_fft_size(SAMPLE_RATE)
    dt = FRAME_PERIOD_MS / 1000.0
    num_frames = int(num_out / SAMPLE_RATE / dt) + 1
    nb = fft_out // 2 + 1
    sp_o = np.full((num_frames, nb), 1e-14)
    ap_o = np.ones((num_frames, nb))
    voiced = np.zeros(num_frames, bool)
    vowel = np.zeros(num_frames, bool)
    gain = np.zeros(num_frames)
    alpha = voice_params["alpha"]
    cons_scale = voice_params["consonant_scale"]
    b_lo, b_hi, b_amt = voice_params["breath"]
    hf_slope, hf_ap = voice_params["hf_slope"], voice_params["hf_aperiodicity"]
    fq = np.arange(nb) * SAMPLE_RATE / fft_out
    breath_floor = np.clip((fq - b_lo) / (b_hi - b_lo), 0, 1) * b_amt
    for notes, (x, fs_in, syls) in zip(phrases, tts, strict=False):
        if not notes:
            continue
        f0, t = pw.dio(x, fs_in, frame_period=FRAME_PERIOD_MS, f0_floor=60, f0_ceil=500)
        f0 = pw.stonemask(x, f0, t, fs_in)
        sp = pw.cheaptrick(x, f0, t, fs_in)
        ap = pw.d4c(x, f0, t, fs_in)
        sp, high = warp_envelope(sp, fs_in, SAMPLE_RATE, fft_out, alpha, slope=np.where(f0 > 0, hf_slope, 0.0))
        ap_w, _ = warp_envelope(np.maximum(ap, 1e-6) ** 2, fs_in, SAMPLE_RATE, fft_out, alpha)
        ap = np.sqrt(np.clip(ap_w, 0, 1))
        ap[:, high] = np.maximum(ap[:, high], hf_ap)  # above the source Nyquist: mostly noise, amount per singer
        # TTS harmonics are too clean up high ("buzzy"); real voices get noisy above a few kHz
        ap = np.maximum(ap, breath_floor)
        e_frame = sp.sum(axis=1)
        for n, (onset_s, t0, end, segs) in zip(notes, syllable_segments(notes, syls, cons_scale), strict=False):
            for a, b, oa, ob, is_vowel in segs:
                k0, k1 = max(int(round(oa / dt)), 0), min(int(round(ob / dt)), num_frames)
                if k1 <= k0:
                    continue
                ks = np.arange(k0, k1)
                src = np.clip((a + (ks * dt - oa) * (b - a) / max(ob - oa, 1e-6)) / dt, 0, len(f0) - 1.001)
                i0 = src.astype(int)
                fr = (src - i0)[:, None]
                sp_o[ks] = np.exp(np.log(sp[i0] + 1e-16) * (1 - fr) + np.log(sp[i0 + 1] + 1e-16) * fr)
                ap_o[ks] = ap[i0] * (1 - fr) + ap[i0 + 1] * fr
                voiced[ks] = (f0[i0] > 0) | is_vowel
                vowel[ks] = is_vowel
            kk = np.arange(max(int((t0 - onset_s) / dt), 0), min(int(end / dt) + 1, num_frames))
            if len(kk):  # note loudness: pull each vowel toward a common level, soft release
                kv = kk[vowel[kk]]
                lev = np.median(sp_o[kv].sum(axis=1)) if len(kv) else np.median(e_frame)
                g = (np.median(e_frame[e_frame > np.percentile(e_frame, 60)]) / (lev + 1e-16)) ** 0.35
                env = np.ones(len(kk))
                rel = min(len(kk), int(0.04 / dt))
                env[-rel:] = np.linspace(1, 0.3, rel)
                if n["d"] > 0.5:  # slight decay on long notes
                    env *= np.linspace(1.0, rng.uniform(0.6, 1.0), len(kk))
                gain[kk] = g * env
    return SungFrames(sp_o, ap_o, voiced, gain)


QUIET_PHRASE_DB = 30.0


def quiet_phrases(line: np.ndarray, phrases: list[Phrase], below_db: float = QUIET_PHRASE_DB) -> list[int]:
    """Indices of the phrases whose RMS in `line` (float (num_samples,) at SAMPLE_RATE), over the span of their
    notes, lies more than `below_db` under the loudest phrase's: a failed rendering (a voice whose syllable timings do
    not match its audio sings near-silence), not a quiet part."""
    levels = {}
    for i, notes in enumerate(phrases):
        if notes:
            a = int(notes[0]["t"] * SAMPLE_RATE)
            b = int((notes[-1]["t"] + notes[-1]["d"]) * SAMPLE_RATE)
            seg = line[a:b]
            if len(seg):
                levels[i] = 10.0 * math.log10(float(np.mean(np.square(seg, dtype=np.float64))) + 1e-20)
    if not levels:
        return []
    top = max(levels.values())
    return [i for i, db in levels.items() if db < top - below_db]


def synthesize_line(frames: SungFrames, f0: np.ndarray, num_out: int, only_pitched: bool = False) -> np.ndarray:
    """WORLD synthesis of `frames` sung at F0 contour `f0` (frames,), silent where f0 is 0 if `only_pitched` (for
    harmony parts that leave phrases out). Returns float32 (num_out,)."""
    import pyworld as pw

    gain = np.where(f0 > 0, frames.gain, 0.0) if only_pitched else frames.gain
    f0 = np.where(frames.voiced & (f0 > 0), f0, 0.0)
    sp = frames.sp * ((gain**2)[:, None] + 1e-12)
    y = pw.synthesize(
        np.ascontiguousarray(f0),
        np.ascontiguousarray(sp),
        np.ascontiguousarray(frames.ap),
        SAMPLE_RATE,
        FRAME_PERIOD_MS,
    )
    return fit_length(y, num_out)[0]


def add_breaths(y: np.ndarray, phrases: list[Phrase], rng: random.Random, prob: float, level: float) -> None:
    """Add a short filtered-noise in-breath before phrases (in place), each with probability `prob`."""
    np_rng = np.random.default_rng(rng.randrange(1 << 30))
    peak = float(np.abs(y).max()) + 1e-6
    for ph in phrases:
        if ph and rng.random() < prob:
            length_s = rng.uniform(0.12, 0.3)
            k = int((ph[0]["t"] - length_s - rng.uniform(0.02, 0.1)) * SAMPLE_RATE)
            if k <= 0:
                continue
            n = int(length_s * SAMPLE_RATE)
            noise = np.convolve(np_rng.normal(0, 1, n), [1, -rng.uniform(0.3, 0.95)], "same") * np.hanning(n)
            seg = y[k : k + n]
            seg += (level * noise * peak * rng.uniform(0.5, 1.5))[: len(seg)].astype(np.float32)


def choir_midi(phrases: list[Phrase], rng: random.Random, tempo: int, program: int) -> mido.MidiFile:
    """The melody as a one-track MIDI file on GM `program` (the soundfont-voice alternative to WORLD)."""
    mf = mido.MidiFile(type=1, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0))
    tr.append(mido.Message("program_change", channel=0, program=program, time=0))
    tr.append(mido.Message("control_change", channel=0, control=1, value=rng.randint(0, 50), time=0))
    events = []
    for ph in phrases:
        for n in ph:
            events.append((n["t"], 1, n["pitch"]))
            events.append((n["t"] + n["d"] * 0.97, 0, n["pitch"]))
    events.sort(key=lambda e: (e[0], e[1]))
    ticks_per_s = 480 * tempo / 60.0
    last = 0
    for t, on, p in events:
        tick = int(round(t * ticks_per_s))
        vel = rng.randint(80, 110) if on else 0
        tr.append(mido.Message("note_on" if on else "note_off", channel=0, note=p, velocity=vel, time=tick - last))
        last = tick
    return mf


# ---------------------------------------------------------------------------------------------------------------------
# TD-PSOLA speech-to-singing: the speaker's own periods laid at the sung pitch
# ---------------------------------------------------------------------------------------------------------------------
MIN_VOICED_S = 0.03  # shortest voiced stretch that counts as a syllable's vowel
MAX_GAP_S = 0.03  # unvoiced gaps shorter than this do not split a vowel
UNVOICED_HOP_S = 0.005  # PSOLA: consonants are copied in overlapping grains of twice this


def speech_f0(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """WORLD F0 (Hz, 0 = unvoiced) per FRAME_PERIOD_MS frame of mono speech x: float64 (num_samples,)."""
    import pyworld as pw

    f0, t = pw.dio(x, sample_rate, frame_period=FRAME_PERIOD_MS, f0_floor=60, f0_ceil=500)
    return pw.stonemask(x, f0, t, sample_rate)


def voiced_regions(f0: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the voiced stretches of f0 (frames,), gaps under MAX_GAP_S bridged, stretches
    under MIN_VOICED_S dropped."""
    dt = FRAME_PERIOD_MS / 1000.0
    regions: list[list[int]] = []
    for k in np.flatnonzero(f0 > 0):
        if regions and k - regions[-1][1] <= MAX_GAP_S / dt:
            regions[-1][1] = k + 1
        else:
            regions.append([k, k + 1])
    return [(a, b) for a, b in regions if (b - a) * dt >= MIN_VOICED_S]


def analysis_marks(x: np.ndarray, sample_rate: int, f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSOLA pitch marks of speech x: float64 (num_samples,) with its ``speech_f0`` f0 (frames,): one mark per
    period through each voiced stretch, each at the waveform's peak within a quarter period of where the last mark
    and the local F0 put it. Returns (mark sample indices, periods in samples), both int (num_marks,)."""
    hop = FRAME_PERIOD_MS / 1000.0 * sample_rate
    marks, periods = [], []
    for a, b in voiced_regions(f0):
        voiced = f0[a:b][f0[a:b] > 0]
        period = int(sample_rate / voiced[0])
        start, stop = int(a * hop), min(int(b * hop), len(x) - 1)
        t = start + int(np.argmax(x[start : start + period]))
        while t < stop:
            marks.append(t)
            periods.append(period)
            hz = f0[min(int(t / hop), len(f0) - 1)]
            period = int(sample_rate / hz) if hz > 0 else period
            lo, hi = t + period - period // 4, t + period + period // 4
            if hi >= len(x):
                break
            t = lo + int(np.argmax(x[lo:hi]))
    return np.array(marks, int), np.array(periods, int)


def psola_analysis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What PSOLA needs of speech x (float64 (num_samples,) at SAMPLE_RATE): its ``speech_f0`` and its
    ``analysis_marks`` (mark sample indices, periods)."""
    f0 = speech_f0(x, SAMPLE_RATE)
    return (f0, *analysis_marks(x, SAMPLE_RATE, f0))


def psola_phrase(
    out: np.ndarray,
    x: np.ndarray,
    notes: Phrase,
    syllables: list[list[tuple]],
    f0_out: np.ndarray,
    params: dict,
    analysis: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Sing one spoken phrase into ``out`` (float64 (num_samples,) at SAMPLE_RATE, added in place) by TD-PSOLA: the
    notes' segments (``synth_vocals.syllable_segments``) map output time to speech time; where the speech is voiced
    and the output has a pitch (``f0_out``, Hz per frame, 0 = none), the period of speech x (float64, at SAMPLE_RATE)
    nearest that time is windowed (two periods) and laid at the output's period, so the real excitation (jitter,
    breath, the glottal pulse) is kept and only the timing and pitch change; consonants are copied in overlapping
    grains. Each note's vowel is pulled toward the phrase's median level (exponent ``params["level_pull"]``).
    ``analysis``: x's ``psola_analysis`` if known (a phrase sung by several lines is analysed once)."""
    fs, dt = SAMPLE_RATE, FRAME_PERIOD_MS / 1000.0
    f0_src, marks, periods = psola_analysis(x) if analysis is None else analysis
    hop = int(UNVOICED_HOP_S * fs)
    windows: dict[int, np.ndarray] = {}

    def grain(centre: int, half: int) -> np.ndarray:
        """x around ``centre`` (2 * half samples, zero beyond its ends) times a Hann window."""
        if half not in windows:
            windows[half] = np.hanning(2 * half + 1)[:-1]
        a = centre - half
        seg = x[max(a, 0) : a + 2 * half]
        if a < 0:
            seg = np.concatenate([np.zeros(-a), seg])
        seg = np.pad(seg, (0, 2 * half - len(seg)))
        return seg * windows[half]

    layout = syllable_segments(notes, syllables, params["consonant_scale"])
    vowel_rms = []
    for _, _, _, segs in layout:
        a, b = min(s[0] for s in segs if s[4]), max(s[1] for s in segs if s[4])
        vowel_rms.append(math.sqrt(float(np.mean(x[int(a * fs) : max(int(b * fs), int(a * fs) + 1)] ** 2))) + 1e-9)
    reference = float(np.median(vowel_rms))
    for note, rms, (onset_s, t0, end, segs) in zip(notes, vowel_rms, layout, strict=False):
        level = (reference / rms) ** params["level_pull"]
        first, last = t0 - onset_s, end
        decay = params["rng"].uniform(0.6, 1.0) if note["d"] > 0.5 else 1.0
        for a, b, oa, ob, is_vowel in segs:
            o0, o1 = max(int(oa * fs), 0), min(int(ob * fs), len(out))
            rate = (b - a) / max(ob - oa, 1e-6)  # speech seconds per sung second
            t = o0
            while t < o1:
                src = a + (t / fs - oa) * rate
                hz = f0_out[min(int(t / fs / dt), len(f0_out) - 1)]
                voiced = is_vowel or f0_src[min(int(src / dt), len(f0_src) - 1)] > 0
                if voiced and hz > 0 and len(marks):
                    i = int(np.clip(np.searchsorted(marks, src * fs), 1, len(marks) - 1))
                    i -= int(src * fs - marks[i - 1] < marks[i] - src * fs)
                    g = grain(int(marks[i]), int(periods[i]))
                    step = max(int(round(fs / hz)), 1)
                else:
                    g = grain(int(src * fs), hop)
                    step = hop
                pos = (t / fs - first) / max(last - first, 1e-6)  # where in the note: decay, then a soft release
                envelope = level * (1 + (decay - 1) * pos) * min(1.0, 0.3 + 0.7 * (last - t / fs) / 0.04)
                begin = t - len(g) // 2
                lo, hi = max(begin, 0), min(begin + len(g), len(out))
                if hi > lo:
                    out[lo:hi] += envelope * g[lo - begin : hi - begin]
                t += step


def psola_line(
    phrases: list[Phrase],
    speech: list[tuple],
    f0: np.ndarray,
    rng: random.Random,
    params: dict,
    num_out: int,
    analyses: list[tuple] | None = None,
) -> np.ndarray:
    """A sung line by TD-PSOLA (``psola_phrase``): each phrase's notes sung with its spoken phrase of ``speech``
    ((audio float64 (num_samples,) at SAMPLE_RATE, SAMPLE_RATE, syllables) per phrase, as ``festival_phrases`` gives
    them once resampled) at the pitch contour ``f0`` (Hz per FRAME_PERIOD_MS frame). Phrases without notes stay
    silent. ``analyses``: the phrases' ``psola_analysis``, for a caller that sings the same speech more than once.
    Returns float32 (num_out,)."""
    out = np.zeros(num_out)
    for k, (notes, (x, rate, syllables)) in enumerate(zip(phrases, speech, strict=False)):
        if rate != SAMPLE_RATE:
            raise ValueError(f"PSOLA sings speech at {SAMPLE_RATE} Hz, got {rate} Hz")
        if notes:
            analysis = analyses[k] if analyses is not None else None
            psola_phrase(out, x, notes, syllables, f0, {**params, "rng": rng}, analysis)
    return out.astype(np.float32)


def formant_scaled(speech: list[tuple], alpha: float) -> list[tuple]:
    """Festival phrases (audio, native rate, syllables) played ``alpha`` times faster and resampled to SAMPLE_RATE:
    formants (and pitch, which PSOLA sets anew) scaled by ``alpha`` (>1 = smaller vocal tract), syllable times by
    1 / alpha."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    out = []
    for x, rate, syllables in speech:
        ratio = Fraction(SAMPLE_RATE / (rate * alpha)).limit_denominator(1000)
        y = resample_poly(x, ratio.numerator, ratio.denominator)
        out.append((y, SAMPLE_RATE, [[(p, v, a / alpha, b / alpha) for p, v, a, b in syl] for syl in syllables]))
    return out


def add_air(line: np.ndarray, source_rate: float, level_db: float, rng: random.Random) -> np.ndarray:
    """``line`` (float32 (num_samples,) at SAMPLE_RATE) sung from speech recorded at ``source_rate`` with the band
    above the recording's Nyquist filled: noise shaped by the envelope of the octave below it, and the harmonics a
    full-wave rectifier draws from that octave (an exciter), high-passed at the Nyquist, tilted by a one-pole low-pass
    and mixed ``level_db`` below the octave's level. A 16 kHz diphone voice otherwise ends at 8 kHz, a band edge no
    real singer has and a cue a model could learn."""
    from scipy.signal import butter, sosfilt

    nyquist = source_rate / 2
    if nyquist >= 0.45 * SAMPLE_RATE:
        return line
    x = line.astype(np.float64)
    octave = sosfilt(butter(4, [0.5 * nyquist, 0.95 * nyquist], "bandpass", fs=SAMPLE_RATE, output="sos"), x)
    envelope = np.sqrt(np.maximum(sosfilt(butter(2, 80, fs=SAMPLE_RATE, output="sos"), octave**2), 0.0))
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(size=len(x)) * envelope
    harmonics = np.abs(octave)
    mix = rng.uniform(0.2, 0.8)
    air = sosfilt(butter(6, nyquist, "highpass", fs=SAMPLE_RATE, output="sos"), mix * noise + (1 - mix) * harmonics)
    corner = min(nyquist * rng.uniform(1.2, 2.5), 0.45 * SAMPLE_RATE)
    air = sosfilt(butter(1, corner, fs=SAMPLE_RATE, output="sos"), air)
    scale = 10 ** (level_db / 20) * math.sqrt(np.mean(octave**2) / (np.mean(air**2) + 1e-20))
    return (x + scale * air).astype(np.float32)


def make_vocals(
    rng: random.Random,
    bars: list[Bar],
    key_pc: int,
    mode: str,
    tempo: int,
    total_s: float,
    soundfont: Path,
    work: Path,
    method: str | None = None,
    timbres: str = "train",
    vocoder: str = "world",
) -> tuple[np.ndarray, dict]:
    """The vocal stem of one song: lead line (sung by `vocoder`, "world" or "psola", or a GM choir patch with
    probability 0.1), and for a sung lead sometimes a double and/or a harmony part panned apart. The singer comes
    from the `timbres` set of voices. `method` forces "choir" or a vocoder. Returns (float32 (2, num_frames), meta)."""
    if vocoder not in VOCODERS:
        raise ValueError(f"vocoder must be one of {', '.join(VOCODERS)}, got {vocoder!r}")
    weights = voice_weights(timbres)
    voices = installed_voices(timbres)
    if not voices:
        raise RuntimeError(f"no {timbres} festival voice installed: run engine/training/install_synth_tools.sh")
    voice = rng.choices(voices, weights=[weights[v] for v in voices])[0]
    wide_lo, wide_hi = FESTIVAL_VOICES[voice][3]
    span = rng.randint(14, 19)
    lo = rng.randint(wide_lo, wide_hi - span)
    pitch_range = (lo, lo + span)
    gap_prob = rng.uniform(0.05, 0.35)
    texts: list[str] = []

    def speak(budgets: list[int]) -> list[tuple]:  # lyrics with about that many syllables, spoken by festival
        for n in budgets:
            words: list[str] = []
            count = 0
            while count < n:
                w = rng.choice(WORDS)
                words.append(w)
                count += rough_syllables(w)
            texts.append(" ".join(words))
        with tempfile.TemporaryDirectory(dir=work) as td:
            return festival_phrases(texts, voice, Path(td), stretch=rng.uniform(1.1, 1.5)) if texts else []

    phrases, tts = melody_for_speech(rng, bars, key_pc, mode, tempo, pitch_range, total_s, gap_prob, speak)
    num_out = int(total_s * SAMPLE_RATE)
    method = method or ("choir" if rng.random() < 0.1 else vocoder)
    meta: dict = {
        "voice": voice,
        "method": method,
        "pitch_range": pitch_range,
        "lyrics": texts,
        "notes": [[(round(n["t"], 3), round(n["d"], 3), n["pitch"]) for n in ph] for ph in phrases],
    }
    if method == "choir":
        prog = rng.choice([52, 53])  # 0-based GM: 52 Choir Aahs, 53 Voice Oohs
        mp = work / "vox.mid"
        choir_midi(phrases, rng, tempo, prog).save(mp)
        x = render_fluidsynth(soundfont, mp, work / "vox.wav")
        meta["program"] = prog
        return fit_length(x.mean(axis=0), num_out), meta
    num_frames = int(num_out / SAMPLE_RATE / (FRAME_PERIOD_MS / 1000.0)) + 1
    if method == "psola":  # festival's own (recorded diphone) excitation, formants scaled, the band above it filled
        voice_params = {
            "alpha": rng.uniform(0.9, 1.1),
            "consonant_scale": rng.uniform(0.6, 1.0),
            "level_pull": rng.uniform(0.3, 0.6),
            "air_db": rng.uniform(-18.0, -6.0),
        }
        speech = formant_scaled(tts[: len(phrases)], voice_params["alpha"])
        analyses = [psola_analysis(x) for x, _, _ in speech]  # once for the lead, double and harmony
        source_rate = min(rate for _, rate, _ in tts) * voice_params["alpha"]  # the band festival filled

        def sing(line_phrases: list[Phrase], f0: np.ndarray, harmony: bool = False) -> np.ndarray:
            line = psola_line(line_phrases, speech, f0, rng, voice_params, num_out, analyses)
            return add_air(line, source_rate, voice_params["air_db"], rng)
    else:
        voice_params = {
            "alpha": rng.uniform(0.88, 1.12),
            "consonant_scale": rng.uniform(0.6, 1.0),
            "breath": (rng.uniform(2000, 5500), rng.uniform(6000, 13000), rng.uniform(0.3, 0.95)),
            "hf_slope": rng.uniform(0.5, 1.8),
            "hf_aperiodicity": rng.uniform(0.5, 1.0),
        }
        frames = sing_frames(phrases, tts[: len(phrases)], rng, num_out, voice_params)

        def sing(line_phrases: list[Phrase], f0: np.ndarray, harmony: bool = False) -> np.ndarray:
            return synthesize_line(frames, f0, num_out, only_pitched=harmony)

    lead = sing(phrases, pitch_contour(phrases, num_frames, rng, random_singer(rng)))
    quiet = quiet_phrases(lead, phrases)
    if quiet:
        raise RuntimeError(f"voice {voice} sang phrase(s) {quiet} more than {QUIET_PHRASE_DB} dB below the loudest")
    breath_prob, breath_level = rng.uniform(0.2, 0.9), rng.uniform(0.003, 0.03)
    add_breaths(lead, phrases, rng, breath_prob, breath_level)
    out = np.stack([lead, lead])
    parts = []
    if rng.random() < 0.3:  # a double: same words, another take of the pitch, a few ms late, panned apart
        dbl = sing(phrases, pitch_contour(phrases, num_frames, rng, random_singer(rng)))
        delay = int(rng.uniform(0.005, 0.03) * SAMPLE_RATE)
        dbl = np.concatenate([np.zeros(delay, np.float32), dbl[: num_out - delay]])
        width, level = rng.choice([-1, 1]) * rng.uniform(0.3, 1.0), rng.uniform(0.4, 0.9)
        out += level * np.stack([dbl * (1 - width), dbl * (1 + width)]) / math.sqrt(1 + width * width)
        parts.append({"kind": "double", "delay_samples": delay, "width": width, "level": level})
    if rng.random() < 0.3:  # a harmony a third-ish above or below, on some or all phrases
        direction = rng.choice([1, 1, -1])
        harm = harmony_line(phrases, bars, key_pc, mode, tempo, direction)
        keep = [rng.random() < 0.7 for _ in harm]
        harm = [h if k else [] for h, k in zip(harm, keep, strict=True)]
        if any(harm):
            f0 = pitch_contour(harm, num_frames, rng, random_singer(rng))
            hv = sing(harm, f0, harmony=True)
            pan, level = rng.uniform(-0.7, 0.7), rng.uniform(0.3, 0.7)
            a = (pan + 1) * math.pi / 4
            out += level * np.stack([hv * math.cos(a), hv * math.sin(a)]) * math.sqrt(2)
            parts.append({"kind": "harmony", "direction": direction, "pan": pan, "level": level, "phrases": keep})
    meta.update(
        {"voice_params": voice_params, "breath_prob": breath_prob, "breath_level": breath_level, "parts": parts}
    )
    return out.astype(np.float32), meta
