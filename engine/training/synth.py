"""Synthetic 4-stem training songs (vocals, drums, bass, other), deterministic from an integer seed.

One song: a style picks an MMA groove, tempo, key and chord progression (synth_music); MMA writes the accompaniment as
MIDI, split per instrument group and rendered with fluidsynth through one of several soundfonts; a melody is sung by
festival + WORLD (synth_vocals), joined by any groove track voiced with a choir or "oohs" patch (backing vocals,
as real multitracks count them); every stem gets its own effect chain, planned silent sections, level and pan, and the
mix bus compresses and limits through gain envelopes shared by all stems (synth_produce), so mixture == sum of stems.

Layout: OUT/<split>/<song_id>/{vocals,drums,bass,other}.wav (44.1 kHz stereo PCM_16) + mixture.wav (PCM_24, the exact
sum of the 16-bit stems: read as float, mixture == vocals + drums + bass + other bit for bit) + meta.json.
song_id = f"song{seed:06d}". Split rule (fixed): seed % 20 == 0 -> test, seed % 20 == 1 -> validation, else train.

    python3 -m stembridge.engine.training.synth batch --first-seed 0 --num-songs 400 --jobs 1 --out data/synth \
        --duration 20

Held-out timbres: `--timbres heldout` renders a song with a soundfont and festival voices that no training song uses
(synth_music.HELDOUT_SOUNDFONTS, synth_vocals.HELDOUT_VOICE_WEIGHTS) and no AVL drum kit. Everything else is drawn
as for the same seed with training timbres (style, groove, chords, melody, production), so the held-out rendering of
a test seed is the same song played by unheard instruments and sung by an unheard voice. Such songs are always test
songs, with the same names as their training-timbre twins (so reports pair them song by song), in their own folder:

    python3 -m stembridge.engine.training.synth batch --timbres heldout --first-seed 0 --step 20 --num-songs 60 \
        --out data/heldout_synth

Completed songs are skipped (a song is written to a hidden temporary folder and renamed when complete), so a batch
can be stopped and restarted. Needs the tools of engine/training/install_synth_tools.sh.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click
import numpy as np
import soundfile as sf
from stembridge.engine.evaluate import song_timbres
from stembridge.engine.training import synth_music as music
from stembridge.engine.training.synth_produce import STEMS, active_rms, db_to_gain, produce, silent_sections
from stembridge.engine.training.synth_vocals import installed_voices, make_vocals

GENERATOR_VERSION = 6  # 4: groove tracks with voice patches belong to the vocal stem; 5: half the leads by PSOLA;
# 6: a mix engineer's vocal EQ (synth_produce.vocal_eq_chain)
PSOLA_SHARE = 0.5  # share of the songs whose lead is sung by TD-PSOLA, not WORLD (drawn on a stream of its own)
SPLITS = ("train", "validation", "test")
SF_WEIGHTS = music.SF_WEIGHTS


def split_of(seed: int, timbres: str = "train") -> str:
    """Dataset split of a song seed: seed % 20 == 0 -> "test", seed % 20 == 1 -> "validation", else "train".
    Songs with held-out timbres are always "test"."""
    if timbres == "heldout":
        return "test"
    r = seed % 20
    return "test" if r == 0 else ("validation" if r == 1 else "train")


def song_id(seed: int) -> str:
    return f"song{seed:06d}"


def song_dir(out: Path, seed: int, timbres: str = "train") -> Path:
    return Path(out) / split_of(seed, timbres) / song_id(seed)


def is_complete(out: Path, seed: int, timbres: str = "train") -> bool:
    """Whether song `seed` is complete in `out` and made by this `GENERATOR_VERSION` (an older one's song is remade);
    ValueError if it is there with the other timbre set (a folder of songs holds one set: a held-out test song must
    not be mistaken for its training-timbre twin, or the reverse)."""
    folder = song_dir(out, seed, timbres)
    if not (folder / "meta.json").exists():
        return False
    found = song_timbres(folder)
    if found != timbres:
        raise ValueError(
            f"{folder} holds song {seed} with {found} timbres, not {timbres}: render each set into its own folder"
        )
    return json.loads((folder / "meta.json").read_text()).get("generator_version") == GENERATOR_VERSION


def missing_tools(timbres: str = "train") -> list[str]:
    """Names of the external tools or packages this generator needs that are not installed."""
    missing = [t for t in ("mma", "fluidsynth", "festival") if shutil.which(t) is None]
    try:
        import pyworld  # noqa: F401
    except ImportError:
        missing.append("pyworld")
    try:
        music.available_soundfonts(timbres)
    except RuntimeError:
        missing.append(f"{timbres} GM soundfont")
    if not installed_voices(timbres):
        missing.append(f"{timbres} festival voices")
    return missing


def quantize_pcm16(x: np.ndarray) -> np.ndarray:
    """float (channels, frames) -> int16 (channels, frames) with x = k / 32768 (libsndfile's read scaling)."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def write_song_audio(folder: Path, stems: dict[str, np.ndarray], sample_rate: int) -> None:
    """Write stems (float32 (2, frames) each) as PCM_16 and their exact integer sum as mixture.wav (PCM_24).

    Read back as float, mixture == sum of the stems exactly (all values are multiples of 2^-15)."""
    ints = {k: quantize_pcm16(stems[k]) for k in STEMS}
    total = sum(v.astype(np.int32) for v in ints.values())
    if np.abs(total).max() >= 32768:
        raise ValueError("mixture exceeds full scale; produce() should have prevented this")
    for k, v in ints.items():
        sf.write(folder / f"{k}.wav", v.T, sample_rate, subtype="PCM_16")
    sf.write(folder / "mixture.wav", (total << 16).T, sample_rate, subtype="PCM_24")


def stage_rng(seed: int, stage: str) -> random.Random:
    """Independent random stream of one stage of song `seed` (a change in one stage does not shift the others)."""
    return random.Random(f"stembridge-synth:{seed}:{stage}")


def plan_song(seed: int, duration_s: float, timbres: str = "train") -> tuple[random.Random, dict]:
    """Draw the song-level choices (soundfont, style, groove, tempo, key, mode, chords, variation) from `seed`.

    The soundfont comes from the `timbres` set; the other choices do not depend on it. Returns (the rng, positioned
    after these draws, plan dict). Pure apart from reading the installed MMA library and soundfont list."""
    rng = random.Random(seed)
    fonts = music.available_soundfonts(timbres)
    names = sorted(fonts)
    sf_name = rng.choices(names, weights=[SF_WEIGHTS.get(k, 0.2) for k in names])[0]
    style = rng.choice(sorted(music.STYLES))
    grooves, (tempo_lo, tempo_hi), flavour, _, _ = music.STYLES[style]
    groove = rng.choice(grooves)
    tempo = rng.randint(tempo_lo, tempo_hi)
    key_pc = rng.randrange(12)
    mode = "major" if rng.random() < 0.7 else "minor"
    bar_s = 240.0 / tempo
    num_bars = int(math.ceil(duration_s / bar_s)) + 1
    bars = music.make_progression(rng, key_pc, mode, flavour, num_bars)
    catalog = music.groove_catalog()
    cands = [groove + s for s in ("Plus", "Sus", "1", "SusPlus", "2") if (groove + s).lower() in catalog]
    variation = rng.choice(cands) if cands and rng.random() < 0.6 else None
    swap_bar = rng.randint(num_bars // 3, max(num_bars // 3, 2 * num_bars // 3))
    plan = {
        "timbres": timbres,
        "soundfont": sf_name,
        "soundfont_path": str(fonts[sf_name]),
        "style": style,
        "groove": groove,
        "variation": variation,
        "swap_bar": swap_bar,
        "tempo": tempo,
        "key_pc": key_pc,
        "mode": mode,
        "bar_s": bar_s,
        "bars": bars,
    }
    return rng, plan


def add_backing_voices(lead: np.ndarray, backing: np.ndarray, rng: random.Random) -> tuple[np.ndarray, float | None]:
    """The vocal stem's dry signal: the lead with the groove's choir/"oohs" tracks (backing vocals) 10 to 2 dB below
    it (RMS over active blocks), or the backing alone for an instrumental. Returns (vocals, backing level in dB
    relative to the lead, None without a lead)."""
    level_db = rng.uniform(-10.0, -2.0)
    lead_rms, backing_rms = active_rms(lead), active_rms(backing)
    if lead_rms < 1e-6 or backing_rms < 1e-9:
        return (lead + backing).astype(np.float32), None
    gain = db_to_gain(level_db) * lead_rms / backing_rms
    return (lead + gain * backing).astype(np.float32), level_db


def render_song(
    seed: int, duration_s: float, work: Path, timbres: str = "train"
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Make one song in scratch folder `work` with the `timbres` set of soundfonts and voices. Returns (stems
    {name: float32 (2, num_frames)}, mixture float32 (2, num_frames) = sum of stems, meta)."""
    timings: dict[str, float] = {}
    t0 = time.time()
    _, plan = plan_song(seed, duration_s, timbres)
    soundfont = Path(plan["soundfont_path"])
    bars = plan["bars"]
    chart = music.mma_chart(plan["groove"], plan["variation"], plan["tempo"], bars, plan["swap_bar"], seed)
    mid = music.run_mma(chart, work)
    timings["mma"] = time.time() - t0
    files, tracks = music.split_midi(mid, stage_rng(seed, "tracks"), plan["style"])
    drum_rng = stage_rng(seed, "drums")
    num_frames = int(duration_s * music.SAMPLE_RATE)
    t = time.time()
    dry: dict[str, np.ndarray] = {}
    drum_kit = None
    for group, mf in files.items():
        if mf is None:
            continue
        if group == "drums":
            x, drum_kit = music.render_drums(mf, soundfont, drum_rng, work, plan["style"], timbres)
        else:
            x = music.render_group(mf, soundfont, work, group)
        dry[group] = music.fit_length(x, num_frames)
    for group in ("drums", "bass", "other"):
        dry.setdefault(group, np.zeros((2, num_frames), np.float32))
    backing = dry.pop("voices", None)
    timings["fluidsynth"] = time.time() - t
    t = time.time()
    vocal_rng = stage_rng(seed, "vocals")
    vocoder = "psola" if stage_rng(seed, "vocoder").random() < PSOLA_SHARE else "world"
    instrumental = vocal_rng.random() < 0.04
    if instrumental:
        dry["vocals"], vmeta = np.zeros((2, num_frames), np.float32), {"instrumental": True}
    else:
        dry["vocals"], vmeta = make_vocals(
            vocal_rng,
            bars,
            plan["key_pc"],
            plan["mode"],
            plan["tempo"],
            duration_s,
            soundfont,
            work,
            timbres=timbres,
            vocoder=vocoder,
        )
    if backing is not None:
        voices_rng = stage_rng(seed, "voices")
        dry["vocals"], vmeta["backing_voices_db"] = add_backing_voices(dry["vocals"], backing, voices_rng)
    timings["vocals"] = time.time() - t
    t = time.time()
    silences = {}
    section_rng = stage_rng(seed, "sections")
    for g in ("drums", "bass", "guitars", "other"):
        spans = silent_sections(section_rng, g, len(bars), plan["bar_s"], duration_s)
        if spans and g in dry:
            silences[g] = spans
    stems, mix, pmeta = produce(dry, stage_rng(seed, "produce"), plan["style"], silences, stage_rng(seed, "vocal_eq"))
    timings["produce"] = time.time() - t
    timings["total"] = time.time() - t0
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "song_id": song_id(seed),
        "split": split_of(seed, timbres),
        "duration_s": duration_s,
        "sample_rate": music.SAMPLE_RATE,
        **{k: v for k, v in plan.items() if k not in ("bars", "key_pc", "soundfont_path", "bar_s")},
        "key": music.PC_NAMES[plan["key_pc"]],
        "drum_kit": drum_kit,
        "chords": [[music.chord_name(r, q) for _, r, q in b] for b in bars],
        "bar_s": plan["bar_s"],
        "tracks": tracks,
        "silent_sections_s": silences,
        "vocals": vmeta,
        "production": pmeta,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return stems, mix, meta


def make_song(seed: int, out: Path, duration_s: float = 20.0, timbres: str = "train") -> Path:
    """Render song `seed` with the `timbres` set into out/<split>/<song_id>/ (skipped if already complete). Returns
    the song folder."""
    final = song_dir(out, seed, timbres)
    if is_complete(out, seed, timbres):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix="synth_", dir=tmp) as work:
            stems, _mix, meta = render_song(seed, duration_s, Path(work), timbres)
        write_song_audio(tmp, stems, music.SAMPLE_RATE)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default))
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder left by an older layout
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _job(args: tuple[int, str, float, str]) -> tuple[int, float | None]:
    seed, out, duration_s, timbres = args
    t = time.time()
    try:
        make_song(seed, Path(out), duration_s, timbres)
        return seed, time.time() - t
    except Exception as e:  # a bad random draw must not stop a long batch
        sys.stderr.write(f"seed {seed} failed: {e!r}\n{traceback.format_exc()}\n")
        return seed, None


def _nice(level: int) -> None:
    if level:
        try:
            os.nice(level)
        except OSError:
            pass


def ensure_musescore_sf2() -> None:
    """Make the decompressed MuseScore sf2 cache once (faster fluidsynth loads; same samples)."""
    if not music.musescore_sf2_path().exists() and music.SF_MUSESCORE_SF3.exists():
        t = time.time()
        music.sf3_to_sf2()
        print(f"cached {music.musescore_sf2_path()} in {time.time() - t:.0f} s", flush=True)


@click.group()
def main() -> None:
    """Synthetic 4-stem training songs (vocals, drums, bass, other)."""


@main.command()
@click.option("--first-seed", type=int, default=0, show_default=True, help="Seed of the first song.")
@click.option("--num-songs", type=int, default=100, show_default=True, help="Number of seeds.")
@click.option("--step", type=click.IntRange(min=1), default=1, show_default=True, help="Seed step (20: test seeds).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Songs rendered in parallel (processes).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/synth"), show_default=True)
@click.option("--duration", type=float, default=20.0, show_default=True, help="Song length in seconds.")
@click.option("--nice", "nice_level", type=int, default=10, show_default=True, help="CPU niceness of the workers.")
@click.option(
    "--timbres",
    type=click.Choice(music.TIMBRES),
    default="train",
    show_default=True,
    help="Soundfonts and voices: the training set, or the held-out set (always test songs, in their own folder).",
)
def batch(
    first_seed: int, num_songs: int, step: int, jobs: int, out: Path, duration: float, nice_level: int, timbres: str
) -> None:
    """Render songs first-seed, first-seed+step, ... (num-songs of them) into OUT/<split>/<song_id>/, skipping
    complete ones."""
    _nice(nice_level)
    missing = missing_tools(timbres)
    if missing:
        raise click.ClickException(f"missing {', '.join(missing)}: run engine/training/install_synth_tools.sh")
    ensure_musescore_sf2()
    for split in SPLITS:  # stale temporaries of an interrupted run
        for p in (out / split).glob(".song*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
    seeds = range(first_seed, first_seed + num_songs * step, step)
    try:
        todo = [s for s in seeds if not is_complete(out, s, timbres)]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    print(f"{num_songs - len(todo)} of {num_songs} songs already complete; rendering {len(todo)}", flush=True)
    t0 = time.time()
    done = failed = 0
    args = [(s, str(out), duration, timbres) for s in todo]
    results = map(_job, args) if jobs <= 1 else ProcessPoolExecutor(jobs).map(_job, args)
    for seed, secs in results:
        if secs is None:
            failed += 1
        else:
            done += 1
        wall = time.time() - t0
        print(
            f"seed {seed} {'FAILED' if secs is None else f'{secs:.1f} s'}  done {done} failed {failed}  "
            f"{done / wall * 60:.1f} songs/min",
            flush=True,
        )
    print(json.dumps({"rendered": done, "failed": failed, "wall_s": round(time.time() - t0, 1)}), flush=True)


@main.command()
@click.option("--seed", type=int, required=True, help="Song seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/synth"), show_default=True)
@click.option("--duration", type=float, default=20.0, show_default=True, help="Song length in seconds.")
@click.option("--timbres", type=click.Choice(music.TIMBRES), default="train", show_default=True)
def song(seed: int, out: Path, duration: float, timbres: str) -> None:
    """Render one song into OUT/<split>/<song_id>/."""
    missing = missing_tools(timbres)
    if missing:
        raise click.ClickException(f"missing {', '.join(missing)}: run engine/training/install_synth_tools.sh")
    click.echo(make_song(seed, out, duration, timbres))


@main.command()
def sf3to2() -> None:
    """Cache a decompressed copy of the MuseScore sf3 soundfont (loads 3x faster in fluidsynth)."""
    ensure_musescore_sf2()


if __name__ == "__main__":
    main()
