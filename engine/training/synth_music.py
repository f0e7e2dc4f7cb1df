"""Accompaniment for synthetic songs: styles, chord progressions, MMA charts, MIDI split and fluidsynth rendering.

Ported from the stemgen prototype (shared/reference/stemgen). One song's accompaniment is an MMA groove over a chord
progression; MMA writes a multi-track MIDI file, which is split by channel and GM program into drums, bass, guitars,
voices (choir and "oohs" patches: backing vocals) and the rest, re-voiced, and rendered per group with the fluidsynth
CLI (its own reverb and chorus off: all ambience comes from the production stage). Audio arrays are float32
(channels, frames) at `SAMPLE_RATE`.
"""

from __future__ import annotations

import functools
import io
import os
import random
import re
import struct
import subprocess
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100

# ---------------------------------------------------------------------------------------------------------------------
# soundfonts
# ---------------------------------------------------------------------------------------------------------------------
SF_MUSESCORE_SF3 = Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3")
SF_FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SF_TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
SF_WEIGHTS = {"musescore": 0.45, "fluidr3": 0.35, "timgm6mb": 0.2}
# Held-out timbres (--timbres heldout): a GM bank no training song uses (Debian csound-soundfont), for the test set
# that measures how the model fares on instrument sounds it never heard.
SF_CSOUND = Path("/usr/share/sounds/sf2/sf_GMbank.sf2")
HELDOUT_SOUNDFONTS = {"csound": SF_CSOUND}
TIMBRES = ("train", "heldout")
# avldrums.lv2-soundfont: two multi-sampled acoustic kits. One preset at bank 0 / program 0 (not bank 128), GM key
# map for notes 36-59 only, so they are played on a melodic channel; other percussion notes go to the GM font.
AVL_KITS = [Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"), Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2")]


def cache_dir() -> Path:
    """Folder for derived files (the decompressed MuseScore sf2): $STEMBRIDGE_CACHE or ~/.cache/stembridge."""
    return Path(os.environ.get("STEMBRIDGE_CACHE", Path.home() / ".cache" / "stembridge"))


def musescore_sf2_path() -> Path:
    return cache_dir() / "MuseScore_General_Full.sf2"


def available_soundfonts(timbres: str = "train") -> dict[str, Path]:
    """Installed General MIDI soundfonts of a timbre set ("train" or "heldout"), {name: path}.

    The two sets never share a font. The Ogg-compressed MuseScore sf3 costs ~1.5 s to load per fluidsynth call; a
    one-off decompressed sf2 copy (`sf3_to_sf2`) loads in 0.5 s and is preferred when present. Both render the same
    samples.
    """
    if timbres not in TIMBRES:
        raise ValueError(f"timbres must be one of {', '.join(TIMBRES)}, got {timbres!r}")
    if timbres == "heldout":
        held = {k: p for k, p in HELDOUT_SOUNDFONTS.items() if p.exists()}
        if not held:
            raise RuntimeError("no held-out soundfont found: run engine/training/install_synth_tools.sh")
        return held
    out: dict[str, Path] = {}
    if musescore_sf2_path().exists():
        out["musescore"] = musescore_sf2_path()
    elif SF_MUSESCORE_SF3.exists():
        out["musescore"] = SF_MUSESCORE_SF3
    if SF_FLUIDR3.exists():
        out["fluidr3"] = SF_FLUIDR3
    if SF_TIMGM.exists():
        out["timgm6mb"] = SF_TIMGM
    if not out:
        raise RuntimeError("no GM soundfont found: run engine/training/install_synth_tools.sh")
    return out


def sf3_to_sf2(src: Path = SF_MUSESCORE_SF3, dst: Path | None = None) -> Path:
    """Decode every Ogg-Vorbis sample of an SF3 into 16-bit PCM and write an SF2 copy (one-off, ~490 MB).

    MuseScore sf3 layout: shdr start/end are byte offsets into smpl, loop points are relative to the sample start.
    """
    dst = Path(dst) if dst is not None else musescore_sf2_path()
    data = Path(src).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError(f"{src} is not a soundfont")
    chunks = {}
    pos = 12
    while pos < len(data):
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        kind = data[pos + 8 : pos + 12]
        chunks[kind.decode()] = data[pos + 12 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    sdta = chunks["sdta"]
    smpl = sdta[8 : 8 + struct.unpack("<I", sdta[4:8])[0]]
    pdta = chunks["pdta"]
    sub, p = [], 0
    while p < len(pdta):
        cid, size = pdta[p : p + 4], struct.unpack("<I", pdta[p + 4 : p + 8])[0]
        sub.append([cid, pdta[p + 8 : p + 8 + size]])
        p += 8 + size
    shdr = next(s for s in sub if s[0] == b"shdr")
    recs = [shdr[1][i : i + 46] for i in range(0, len(shdr[1]), 46)]
    pcm = bytearray()
    new = []
    for r in recs[:-1]:
        name = r[:20]
        start, end, loop_start, loop_end, rate = struct.unpack("<5I", r[20:40])
        pitch, corr, link, stype = struct.unpack("<BbHH", r[40:46])
        if not stype & 0x10:
            raise RuntimeError("mixed sf3 (compressed and raw samples) is not supported")
        x, _ = sf.read(io.BytesIO(bytes(smpl[start : end + 1])), dtype="int16")
        if x.ndim > 1:
            x = x[:, 0]
        s0 = len(pcm) // 2
        pcm += x.tobytes() + b"\0" * 92  # 46 zero samples of padding, as the SF2 spec asks
        new.append(
            name
            + struct.pack("<5I", s0, s0 + len(x), s0 + loop_start, s0 + loop_end, rate)
            + struct.pack("<BbHH", pitch, corr, link, stype & ~0x10)
        )
    new.append(recs[-1])
    shdr[1] = b"".join(new)
    pd = b"pdta" + b"".join(c + struct.pack("<I", len(d)) + d for c, d in sub)
    sd = b"sdta" + b"smpl" + struct.pack("<I", len(pcm)) + bytes(pcm)
    info = chunks["INFO"].replace(b"ifil\x04\x00\x00\x00\x03\x00", b"ifil\x04\x00\x00\x00\x02\x00")  # version 2.01
    body = b"sfbk" + b"".join(b"LIST" + struct.pack("<I", len(x)) + x for x in (b"INFO" + info, sd, pd))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------------
# styles, keys, progressions
# ---------------------------------------------------------------------------------------------------------------------
# style: (MMA grooves, tempo range, chord flavour, drum kits (GM bank-128 programs), bass programs)
# All 4/4; grooves checked to produce drums + bass + harmony (FUNK01, POP01... are drums-only, Hymn is drumless).
STYLES: dict[str, tuple[list[str], tuple[int, int], str, list[int], list[int]]] = {
    "rock": (
        [
            "60sRock",
            "50sRock",
            "8Beat",
            "BasicRock",
            "SoftRock",
            "FolkRock",
            "BubbleRock",
            "HeavyMetal",
            "metal1A",
            "PopRock1",
            "JazzRock",
        ],
        (96, 150),
        "triad",
        [0, 8, 16],
        [33, 34, 33, 35],
    ),
    "pop": (
        ["PopBallad", "Pop", "8BeatPop1", "80sPop", "8beatmotownA", "Twist", "DiscoSoul"],
        (88, 128),
        "pop",
        [0, 8, 24, 25],
        [33, 34, 38, 39],
    ),
    "funk": (
        ["Funk1", "Funk2", "BVFunk", "DSoul", "Soul", "60sSoul", "R&B", "ModernR&B"],
        (90, 118),
        "seventh",
        [0, 8, 16, 25],
        [33, 36, 37, 38],
    ),
    "jazz": (
        ["Swing", "EasySwing", "Jazzcombo", "ModernJazz", "Bebop", "MellowJazz", "SlowJazz", "Lfusion"],
        (90, 180),
        "jazz",
        [32, 40, 0],
        [32, 32, 33, 35],
    ),
    "latin": (
        ["BossaNova", "Samba", "Salsa", "Mambo", "ChaCha", "Rhumba", "Beguine", "Bolero", "Son", "Calypso", "Ska"],
        (90, 130),
        "seventh",
        [0, 8, 32],
        [32, 33, 35],
    ),
    "ballad": (["Ballad", "PianoBallad", "GuitarBallad", "RockBallad"], (62, 84), "pop", [0, 8, 40], [33, 35, 32]),
    "dance": (
        ["House", "Dance1", "Techno", "TeamTechno", "HipHop", "Hip-Hop"],
        (96, 128),
        "pop",
        [24, 25, 0],
        [38, 39, 33],
    ),
    "blues": (
        ["Blues", "SlowBlues", "ShuffleBoggie", "CountrySwing", "Bluegrass", "Zydeco", "Strut"],
        (70, 140),
        "blues",
        [0, 8, 32],
        [32, 33, 34],
    ),
}

PC_NAMES = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
# chord quality: MMA suffix -> intervals in semitones
CHORD_INTERVALS: dict[str, tuple[int, ...]] = {
    "": (0, 4, 7),
    "m": (0, 3, 7),
    "dim": (0, 3, 6),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10),
    "m7b5": (0, 3, 6, 10),
    "sus4": (0, 5, 7),
    "add9": (0, 4, 7, 14),
    "9": (0, 4, 7, 10, 14),
    "m9": (0, 3, 7, 10, 14),
    "6": (0, 4, 7, 9),
}
# progression templates in 0-based scale degrees
PROG_MAJOR = [
    [0, 4, 5, 3],
    [0, 5, 3, 4],
    [5, 3, 0, 4],
    [0, 3, 4, 3],
    [1, 4, 0, 5],
    [0, 2, 3, 4],
    [3, 0, 4, 5],
    [0, 3, 0, 4],
    [0, 5, 1, 4],
]
PROG_MINOR = [[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 4], [0, 3, 6, 2], [0, 5, 3, 4], [0, 2, 6, 3]]

# A bar is a list of chords (beat, root pitch class, MMA quality suffix).
Bar = list[tuple[int, int, str]]


@functools.lru_cache(maxsize=1)
def groove_catalog() -> frozenset[str]:
    """Lower-cased DefGroove names of the installed MMA library (to find a groove's variations)."""
    names = set()
    for root, _, files in os.walk("/usr/share/mma/lib"):
        for f in files:
            if f.endswith(".mma"):
                with open(os.path.join(root, f), errors="ignore") as fh:
                    for line in fh:
                        m = re.match(r"\s*DefGroove\s+(\S+)", line, re.I)
                        if m:
                            names.add(m.group(1).lower())
    return frozenset(names)


def chord_quality(mode: str, degree: int, flavour: str, rng: random.Random) -> str:
    """MMA chord suffix of a diatonic degree (0-6) in `mode` ("major"/"minor"), flavoured by the style."""
    if mode == "major":
        tri = ["", "m", "m", "", "", "m", "dim"][degree]
        sev = ["maj7", "m7", "m7", "maj7", "7", "m7", "m7b5"][degree]
    else:
        tri = ["m", "dim", "", "m", "m", "", ""][degree]
        sev = ["m7", "m7b5", "maj7", "m7", "m7", "maj7", "7"][degree]
        if degree == 4 and rng.random() < 0.5:  # harmonic-minor dominant
            tri, sev = "", "7"
    if flavour == "jazz":
        q = sev if rng.random() < 0.85 else tri
        if q == "7" and rng.random() < 0.3:
            q = "9"
    elif flavour == "seventh":
        q = sev if rng.random() < 0.6 else tri
    elif flavour == "blues":
        q = "7" if tri == "" else ("m7" if tri == "m" else tri)
    elif flavour == "pop":
        q = tri
        if tri == "" and rng.random() < 0.15:
            q = rng.choice(["sus4", "add9", "6"])
    else:
        q = tri
        if tri == "" and rng.random() < 0.1:
            q = "sus4"
    return q


def make_progression(rng: random.Random, key_pc: int, mode: str, flavour: str, num_bars: int) -> list[Bar]:
    """Chord progression of `num_bars` bars; each bar is a list of (beat, root_pc, suffix), first chord on beat 0."""
    scale = MAJOR if mode == "major" else MINOR
    if flavour == "blues" and mode == "major":
        twelve_bar = [0, 3, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4]
        degrees = [twelve_bar[i % 12] for i in range(num_bars)]
    else:
        base = rng.choice(PROG_MAJOR if mode == "major" else PROG_MINOR)
        bars_per_chord = rng.choice([1, 1, 2]) if num_bars > 6 else 1
        degrees = []
        i = 0
        while len(degrees) < num_bars:
            degrees += [base[i % len(base)]] * bars_per_chord
            i += 1
        degrees = degrees[:num_bars]
    bars = []
    for b, d in enumerate(degrees):
        chords = [(0, d)]
        if rng.random() < 0.2 and b % 2 == 1:  # sometimes a second chord on beat 3
            chords.append((2, rng.choice([(d + 3) % 7, (d + 4) % 7, (d + 1) % 7])))
        bars.append(
            [(beat, (key_pc + scale[deg]) % 12, chord_quality(mode, deg, flavour, rng)) for beat, deg in chords]
        )
    return bars


def chord_name(root_pc: int, suffix: str) -> str:
    return PC_NAMES[root_pc] + suffix


def mma_chart(groove: str, variation: str | None, tempo: int, bars: list[Bar], swap_bar: int, seed: int = 0) -> str:
    """MMA source text: tempo, groove, one line of four beat slots per bar; `variation` takes over at `swap_bar`.

    `seed` seeds MMA's own humanisation (random timing, volume, skipped notes), which is otherwise unseeded."""
    lines = [f"RndSeed {seed}", f"Tempo {tempo}", f"Groove {groove}"]
    for i, bar in enumerate(bars):
        if variation and i == swap_bar:
            lines.append(f"Groove {variation}")
        slots = ["/"] * 4
        for beat, root, q in bar:
            slots[beat] = chord_name(root, q)
        lines.append(f"{i + 1} " + " ".join(slots))
    return "\n".join(lines) + "\n"


def run_mma(chart: str, work: Path) -> mido.MidiFile:
    """Run `mma` on a chart in folder `work` and return its MIDI file."""
    (work / "song.mma").write_text(chart)
    r = subprocess.run(["mma", "song.mma", "-f", "song.mid"], cwd=work, capture_output=True, text=True)
    if r.returncode != 0 or not (work / "song.mid").exists():
        raise RuntimeError("mma failed: " + r.stdout[-400:] + r.stderr[-400:])
    return mido.MidiFile(work / "song.mid")


# ---------------------------------------------------------------------------------------------------------------------
# MIDI split and re-voicing
# ---------------------------------------------------------------------------------------------------------------------
GROUPS = ("drums", "bass", "guitars", "other", "voices")
# GM voice patches (0-based: 52 Choir Aahs, 53 Voice Oohs, 54 Synth Voice). A groove track voiced with one sings
# "aahs" and "oohs", which real multitracks (MUSDB18) count as backing vocals: it joins the vocal stem, not "other"
VOICE_PROGRAMS = frozenset({52, 53, 54})
# GM families an 'other' track may be re-voiced with: piano, chromatic percussion, organ, strings, ensemble, brass,
# reed, pipe, synth lead, synth pad (program // 8)
SWAP_FAMILIES = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]


def classify_track(track: mido.MidiTrack) -> tuple[str, int, float] | None:
    """Group of one MMA track: ("drums" | "bass" | "guitars" | "other", GM program, median pitch); None if it has no
    notes. Drums = MIDI channel 10 (index 9); bass = GM programs 32-39, or an MMA 'Bass'/'Walk' track voiced low with
    another instrument (BossaNova voices it with a guitar); guitars = GM programs 24-31."""
    chans = {m.channel for m in track if m.type == "note_on" and m.velocity > 0}
    if not chans:
        return None
    progs = [m.program for m in track if m.type == "program_change"]
    prog = progs[0] if progs else 0
    pitch = float(np.median([m.note for m in track if m.type == "note_on" and m.velocity > 0]))
    name = track.name or ""
    if 9 in chans:
        group = "drums"
    elif 32 <= prog <= 39:
        group = "bass"
    elif (name == "Bass" or name.startswith("Walk")) and pitch < 55:
        group = "bass"
    elif 24 <= prog <= 31:
        group = "guitars"
    else:
        group = "other"
    return group, prog, pitch


def split_midi(
    mid: mido.MidiFile, rng: random.Random, style: str, pan_sd: float = 30.0
) -> tuple[dict[str, mido.MidiFile | None], list[dict]]:
    """Split an MMA MIDI file into one MIDI file per group of `GROUPS` (each with the conductor track; None where the
    group has no track), re-voice drums/bass/some other patches and re-pan every melodic track. An "other" track that
    ends up with a voice patch (`VOICE_PROGRAMS`) goes to "voices", the backing vocals.

    Returns (files, info) where info lists per track {track, group, prog, new_prog, pan}.
    """
    _, _, _, kits, basses = STYLES[style]
    kit = rng.choice(kits)
    tracks = []
    for tr in mid.tracks[1:]:
        c = classify_track(tr)
        if c is not None:
            tracks.append([tr, c[0], c[1], c[2]])
    if not any(t[1] == "bass" for t in tracks):
        # e.g. casio 'Dance1' plays its bass line with an organ: the lowest melodic track becomes the bass
        low = [t for t in tracks if t[1] in ("other", "guitars") and t[3] < 52]
        if low:
            min(low, key=lambda t: t[3])[1] = "bass"
    groups: dict[str, list[mido.MidiTrack]] = {g: [] for g in GROUPS}
    info = []
    for tr, group, prog, _ in tracks:
        if group == "drums":
            new_prog = kit
        elif group == "bass":
            new_prog = prog if (32 <= prog <= 39 and rng.random() < 0.5) else rng.choice(basses)
        else:
            new_prog = prog
            r = rng.random()
            if r < 0.3:  # another patch of the same GM family
                new_prog = (prog // 8) * 8 + rng.randrange(8)
            elif r < 0.45 and group == "other" and prog < 96:  # another harmonic family altogether
                new_prog = rng.choice(SWAP_FAMILIES) * 8 + rng.randrange(8)
            if group == "other" and new_prog in VOICE_PROGRAMS:
                group = "voices"
        pan = 64 if group in ("drums", "bass") else int(np.clip(64 + rng.gauss(0, pan_sd), 5, 122))
        new = mido.MidiTrack()
        for m in tr:
            if m.type == "program_change":
                m = m.copy(program=new_prog)
            elif m.type == "control_change" and m.control == 10:
                continue  # drop MMA's pans, ours follow the program change
            new.append(m)
            if m.type == "program_change":
                new.append(mido.Message("control_change", channel=m.channel, control=10, value=pan, time=0))
        groups[group].append(new)
        info.append({"track": tr.name or "", "group": group, "prog": prog, "new_prog": new_prog, "pan": pan})
    files: dict[str, mido.MidiFile | None] = {}
    for g, trs in groups.items():
        mf = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat)
        mf.tracks.append(mid.tracks[0])
        mf.tracks.extend(trs)
        files[g] = mf if trs else None
    return files, info


# ---------------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------------
def render_fluidsynth(soundfont: Path, midi_path: Path, wav_path: Path, gain: float = 0.5) -> np.ndarray:
    """Render a MIDI file with the fluidsynth CLI: float output (no clipping), internal reverb and chorus off, only the
    samples of used presets loaded. Returns float32 (2, num_frames); the output runs ~4 s past the MIDI end."""
    cmd = [
        "fluidsynth",
        "-ni",
        "-q",
        "-R",
        "0",
        "-C",
        "0",
        "-g",
        str(gain),
        "-r",
        str(SAMPLE_RATE),
        "-O",
        "float",
        "-T",
        "wav",
        "-F",
        str(wav_path),
        "-o",
        "synth.dynamic-sample-loading=1",
        str(soundfont),
        str(midi_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not Path(wav_path).exists():
        raise RuntimeError("fluidsynth failed: " + r.stderr[-500:])
    x, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, expected {SAMPLE_RATE}")
    return np.ascontiguousarray(x.T)


def render_group(mf: mido.MidiFile, soundfont: Path, work: Path, name: str) -> np.ndarray:
    """Save one group's MIDI file in `work` and render it. Returns float32 (2, num_frames)."""
    p = work / f"{name}.mid"
    mf.save(p)
    return render_fluidsynth(soundfont, p, work / f"{name}.wav")


def _abs_events(track: mido.MidiTrack):
    t = 0
    for m in track:
        t += m.time
        yield t, m


def _from_abs(events: list) -> mido.MidiTrack:
    tr = mido.MidiTrack()
    last = 0
    for t, m in events:
        tr.append(m.copy(time=t - last))
        last = t
    return tr


def split_kit_notes(mf: mido.MidiFile) -> tuple[mido.MidiFile, mido.MidiFile, int]:
    """Split a drum MIDI file into (kit notes 35-59 moved to melodic channel 1 for an AVL kit, the remaining
    percussion on the GM drum channel, number of remaining note events)."""
    a = mido.MidiFile(type=1, ticks_per_beat=mf.ticks_per_beat)
    b = mido.MidiFile(type=1, ticks_per_beat=mf.ticks_per_beat)
    a.tracks.append(mf.tracks[0])
    b.tracks.append(mf.tracks[0])
    num_rest = 0
    for tr in mf.tracks[1:]:
        ea, eb = [], []
        for t, m in _abs_events(tr):
            if m.type in ("note_on", "note_off"):
                if 35 <= m.note <= 59:
                    ea.append((t, m.copy(channel=0, note=max(m.note, 36))))
                else:
                    eb.append((t, m))
                    num_rest += 1
            elif m.type == "program_change":
                ea.append((t, m.copy(channel=0, program=0)))
                eb.append((t, m))
            elif hasattr(m, "channel"):
                ea.append((t, m.copy(channel=0)))
                eb.append((t, m))
            else:
                ea.append((t, m))
                eb.append((t, m))
        a.tracks.append(_from_abs(ea))
        b.tracks.append(_from_abs(eb))
    return a, b, num_rest


def render_drums(
    mf: mido.MidiFile, soundfont: Path, rng: random.Random, work: Path, style: str, timbres: str = "train"
) -> tuple[np.ndarray, str]:
    """Drums stem: with probability 0.4 (not for latin or dance, which lean on hand percussion and electronic kits)
    kit notes play on a multi-sampled AVL acoustic kit, the rest on the GM font. Held-out timbres never use the AVL
    kits (training songs do). Returns ((2, n) float32, kit name)."""
    avl = [k for k in AVL_KITS if k.exists()] if timbres == "train" else []
    if not avl or style in ("latin", "dance") or rng.random() > 0.4:
        return render_group(mf, soundfont, work, "drums"), "gm"
    kit = rng.choice(avl)
    a, b, num_rest = split_kit_notes(mf)
    x = render_group(a, kit, work, "drums_kit")
    if num_rest:
        y = render_group(b, soundfont, work, "drums_rest")
        n = max(x.shape[1], y.shape[1])
        x = fit_length(x, n) + fit_length(y, n)
    return x, kit.name


def fit_length(x: np.ndarray | None, num_frames: int, num_channels: int = 2) -> np.ndarray:
    """Crop or zero-pad audio (channels, frames) (or mono (frames,)) to float32 (num_channels, num_frames)."""
    if x is None:
        return np.zeros((num_channels, num_frames), np.float32)
    x = np.asarray(x, np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.shape[0] == 1 and num_channels > 1:
        x = np.repeat(x, num_channels, axis=0)
    if x.shape[1] >= num_frames:
        return np.ascontiguousarray(x[:, :num_frames])
    return np.concatenate([x, np.zeros((x.shape[0], num_frames - x.shape[1]), np.float32)], axis=1)
