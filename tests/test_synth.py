"""Synthetic training songs (engine/training/synth*.py): pure parts fast, one full render where the tools are."""

from __future__ import annotations

import json
import random
import shutil

import mido
import numpy as np
import pytest
import soundfile as sf
from stembridge.engine.training import synth
from stembridge.engine.training import synth_music as music
from stembridge.engine.training import synth_produce as produce
from stembridge.engine.training import synth_vocals as vocals

SR = music.SAMPLE_RATE


# ---------------------------------------------------------------------------------------------------------------------
# progressions and charts
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_progression_is_diatonic_and_has_one_chord_on_every_downbeat(seed):
    rng = random.Random(seed)
    key_pc, mode = rng.randrange(12), rng.choice(["major", "minor"])
    flavour = rng.choice(["triad", "pop", "seventh", "jazz", "blues"])
    bars = music.make_progression(rng, key_pc, mode, flavour, 9)
    scale = {(key_pc + s) % 12 for s in (music.MAJOR if mode == "major" else music.MINOR)}
    assert len(bars) == 9
    for bar in bars:
        assert bar[0][0] == 0 and all(beat in (0, 2) for beat, _, _ in bar)
        for _, root, quality in bar:
            assert root in scale
            assert quality in music.CHORD_INTERVALS


def test_blues_in_major_follows_the_twelve_bar_form():
    bars = music.make_progression(random.Random(0), 7, "major", "blues", 12)  # G
    roots = [bar[0][1] for bar in bars]
    assert roots == [7, 0, 7, 7, 0, 0, 7, 7, 2, 0, 7, 2]
    assert all(bar[0][2] == "7" for bar in bars)


def test_mma_chart_places_chords_on_beats_and_switches_groove():
    bars = [[(0, 0, "")], [(0, 9, "m"), (2, 5, "maj7")]]
    chart = music.mma_chart("Pop", "PopPlus", 100, bars, swap_bar=1, seed=7)
    assert chart.splitlines() == [
        "RndSeed 7",
        "Tempo 100",
        "Groove Pop",
        "1 C / / /",
        "Groove PopPlus",
        "2 Am / Fmaj7 /",
    ]


# ---------------------------------------------------------------------------------------------------------------------
# melody
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(10))
def test_melody_fits_range_and_chords(seed):
    rng = random.Random(seed)
    tempo = rng.randint(62, 170)
    key_pc, mode = rng.randrange(12), rng.choice(["major", "minor"])
    bars = music.make_progression(rng, key_pc, mode, "seventh", 12)
    lo = rng.randint(45, 60)
    phrases = vocals.melody_notes(rng, bars, key_pc, mode, tempo, (lo, lo + 15), lambda i, mx: mx // 2 + 1, 20.0)
    assert phrases
    spb = 60.0 / tempo
    scale = {(key_pc + s) % 12 for s in (music.MAJOR if mode == "major" else music.MINOR)}
    last_end = -1.0
    for ph in phrases:
        for n in ph:
            assert lo <= n["pitch"] <= lo + 15
            assert n["t"] >= last_end - 1e-9 and n["d"] > 0
            last_end = n["t"] + n["d"]
            beat = round(n["t"] / spb, 6)
            root, quality = vocals.chord_at(bars, beat)[1:]
            chord = {(root + iv) % 12 for iv in music.CHORD_INTERVALS[quality]}
            assert n["pitch"] % 12 in chord | scale
            if beat == round(beat):  # on the beat: a chord tone
                assert n["pitch"] % 12 in chord


def test_melody_layout_is_shared_between_passes_with_the_same_layout_seed():
    bars = music.make_progression(random.Random(1), 2, "major", "pop", 10)
    first = vocals.melody_notes(
        random.Random(5), bars, 2, "major", 90, (55, 72), lambda i, mx: 3, 20.0, 0.4, random.Random(77)
    )
    second = vocals.melody_notes(
        random.Random(6), bars, 2, "major", 90, (55, 72), lambda i, mx: 5, 20.0, 0.4, random.Random(77)
    )

    def bar_of(ph):
        return int(round(ph[0]["t"] / (4 * 60 / 90), 6))  # a pickup is at most a quarter bar early

    assert [bar_of(ph) for ph in first] == [bar_of(ph) for ph in second]
    assert [len(ph) for ph in first] == [3] * len(first)
    assert [len(ph) for ph in second] == [5] * len(second)


def test_harmony_moves_every_note_three_to_nine_semitones_the_asked_way():
    bars = music.make_progression(random.Random(3), 0, "major", "pop", 8)
    phrases = vocals.melody_notes(random.Random(3), bars, 0, "major", 100, (55, 70), lambda i, mx: 4, 15.0)
    for direction in (1, -1):
        harm = vocals.harmony_line(phrases, bars, 0, "major", 100, direction)
        for ph, hp in zip(phrases, harm, strict=True):
            for n, h in zip(ph, hp, strict=True):
                assert 3 <= (h["pitch"] - n["pitch"]) * direction <= 9
                assert h["t"] == n["t"] and h["d"] == n["d"]


def test_quiet_phrases_finds_a_phrase_sung_into_near_silence():
    phrases = [
        [{"t": 0.0, "d": 0.5, "pitch": 60}],
        [],
        [{"t": 1.0, "d": 0.5, "pitch": 62}],
        [{"t": 2.0, "d": 1, "pitch": 64}],
    ]
    t = np.arange(4 * SR) / SR
    line = 0.3 * np.sin(2 * np.pi * 220 * t)
    line[2 * SR : 3 * SR] *= 0.05  # a quiet phrase (-26 dB) is music
    assert vocals.quiet_phrases(line, phrases) == []
    line[SR : int(1.5 * SR)] *= 1e-3  # -60 dB: a failed rendering
    assert vocals.quiet_phrases(line, phrases) == [2]
    assert vocals.quiet_phrases(np.zeros(4 * SR), [[], []]) == []


def test_pitch_contour_follows_notes_and_is_zero_between_phrases():
    notes = [[{"t": 0.5, "d": 1.0, "pitch": 69}], [{"t": 3.0, "d": 0.5, "pitch": 57}]]
    singer = {
        "vib_rate": 5.5,
        "vib_depth": 30,
        "vib_delay": 0.2,
        "glide_hz": 8,
        "damping": 0.7,
        "scoop": 0.5,
        "drift_cents": 5,
    }
    f0 = vocals.pitch_contour(notes, 1000, random.Random(0), singer)
    frame = vocals.FRAME_PERIOD_MS / 1000
    assert f0[int(2.0 / frame)] == 0 and f0[int(4.0 / frame)] == 0
    assert 420 < np.median(f0[int(0.9 / frame) : int(1.4 / frame)]) < 460  # A4 = 440 Hz
    assert 210 < np.median(f0[int(3.2 / frame) : int(3.45 / frame)]) < 230  # A3 = 220 Hz


def band_db(x: np.ndarray, lo: float, hi: float) -> float:
    """Energy of x (mono, at SR) between lo and hi Hz, in dB."""
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    hz = np.fft.rfftfreq(len(x), 1 / SR)
    return 10 * np.log10(spectrum[(hz >= lo) & (hz < hi)].sum() + 1e-20)


def test_air_fills_the_band_above_a_16_khz_voice_at_the_asked_level_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    bursts = np.repeat(rng.uniform(0, 1, 40) > 0.5, SR // 20)[: 2 * SR]  # on and off, as syllables are
    voice = np.fft.irfft(np.fft.rfft(rng.normal(size=2 * SR) * bursts) * (np.fft.rfftfreq(2 * SR, 1 / SR) < 7800))
    voice = voice.astype(np.float32)
    aired = vocals.add_air(voice, 16000, -10.0, random.Random(1))
    assert band_db(voice, 8500, 20000) < band_db(voice, 4000, 7600) - 60  # nothing above 8 kHz before
    above = band_db(aired, 8500, 20000) - band_db(aired, 4000, 7600)
    assert -16 < above < -8  # about 10 dB below the octave under the old Nyquist (filter skirts aside)
    assert band_db(aired - voice, 0, 6000) < band_db(voice, 0, 6000) - 40  # the voice itself is left alone
    envelope_corr = np.corrcoef(np.abs(aired - voice).reshape(-1, 441).mean(1), bursts.reshape(-1, 441).mean(1))
    assert envelope_corr[0, 1] > 0.8  # the air follows the voice
    np.testing.assert_array_equal(vocals.add_air(voice, 44100, -10.0, random.Random(1)), voice)  # full band: as is


def test_formant_scaling_moves_the_spectrum_and_the_syllable_times_together():
    rate = 16000
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)
    syllables = [[("k", False, 0.1, 0.2), ("a", True, 0.2, 0.6)]]
    ((y, out_rate, scaled),) = vocals.formant_scaled([(tone, rate, syllables)], 1.1)
    assert out_rate == SR and abs(len(y) - SR / 1.1) < 50
    hz = np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(np.abs(np.fft.rfft(y)))]
    assert abs(hz - 1100) < 5
    assert scaled == [[("k", False, 0.1 / 1.1, 0.2 / 1.1), ("a", True, 0.2 / 1.1, 0.6 / 1.1)]]


_FESTIVAL = shutil.which("festival") is not None and bool(vocals.installed_voices())


@pytest.mark.skipif(not _FESTIVAL, reason="festival voices not installed: run engine/training/install_synth_tools.sh")
@pytest.mark.parametrize("seed", [1, 4])
def test_psola_vocals_sing_festivals_speech_on_the_melody_with_the_band_filled(seed, tmp_path):
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    bars = music.make_progression(random.Random(0), 0, "major", "pop", 6)

    def sing():
        return vocals.make_vocals(random.Random(seed), bars, 0, "major", 100, 8.0, tmp_path, tmp_path, "psola")

    (y, meta), (again, _) = sing(), sing()
    np.testing.assert_array_equal(y, again)
    assert meta["method"] == "psola" and y.shape == (2, 8 * SR) and np.isfinite(y).all()
    line = y.mean(axis=0).astype(np.float64)
    measured = vocals.speech_f0(line, SR)
    frame = vocals.FRAME_PERIOD_MS / 1000
    errors = []
    for phrase in meta["notes"]:
        for t, d, pitch in phrase:
            if d > 0.3:
                hz = np.median(measured[int((t + d / 2) / frame) - 4 : int((t + d / 2) / frame) + 4])
                errors.append(12 * np.log2(max(hz, 1.0) / (440 * 2 ** ((pitch - 69) / 12))))
    assert len(errors) >= 3 and np.median(np.abs(errors)) < 0.6  # semitones
    nyquist = vocals.FESTIVAL_VOICES[meta["voice"]][1] * meta["voice_params"]["alpha"] / 2
    if nyquist < 10000:  # a 16 kHz diphone voice: the band above its Nyquist is filled, not empty
        assert band_db(line, nyquist * 1.1, 16000) > band_db(line, nyquist / 2, nyquist * 0.95) - 25


def test_make_vocals_names_an_unknown_vocoder(tmp_path):
    with pytest.raises(ValueError, match="vocoder must be one of world, psola"):
        vocals.make_vocals(random.Random(0), [], 0, "major", 100, 4.0, tmp_path, tmp_path, vocoder="autotune")


@pytest.mark.skipif(shutil.which("mma") is None, reason="mma not installed: run engine/training/install_synth_tools.sh")
def test_mma_output_is_reproducible_from_the_chart_seed(tmp_path):
    bars = music.make_progression(random.Random(0), 0, "major", "pop", 4)
    midi = []
    for i, seed in enumerate((5, 5, 6)):
        (tmp_path / str(i)).mkdir()
        music.run_mma(music.mma_chart("Swing", None, 120, bars, 0, seed), tmp_path / str(i))
        midi.append((tmp_path / str(i) / "song.mid").read_bytes())
    assert midi[0] == midi[1]  # MMA humanises timing and velocity with Python's random: seeded, it repeats
    assert midi[0] != midi[2]


# ---------------------------------------------------------------------------------------------------------------------
# MIDI split
# ---------------------------------------------------------------------------------------------------------------------
def _track(name, channel, program, pitches):
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("track_name", name=name, time=0))
    tr.append(mido.Message("program_change", channel=channel, program=program, time=0))
    tr.append(mido.Message("control_change", channel=channel, control=10, value=20, time=0))
    for p in pitches:
        tr.append(mido.Message("note_on", channel=channel, note=p, velocity=90, time=0))
        tr.append(mido.Message("note_off", channel=channel, note=p, velocity=0, time=240))
    return tr


def _mma_like(*tracks):
    mf = mido.MidiFile(type=1, ticks_per_beat=480)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
    mf.tracks.append(conductor)
    mf.tracks.extend(tracks)
    return mf


def test_split_midi_groups_by_channel_and_program():
    mf = _mma_like(
        _track("Drum-Kick", 9, 0, [36, 38]),
        _track("Bass", 1, 33, [40, 43]),
        _track("Chord", 2, 0, [60, 64, 67]),
        _track("Chord-Guitar", 3, 27, [55, 59]),
        _track("Walk", 4, 24, [41, 45]),  # an MMA walking bass voiced with a guitar
        mido.MidiTrack([mido.MetaMessage("track_name", name="empty", time=0)]),
    )
    files, info = music.split_midi(mf, random.Random(0), "rock")
    assert [t["group"] for t in info] == ["drums", "bass", "other", "guitars", "bass"]
    assert len(files["drums"].tracks) == 2 and len(files["bass"].tracks) == 3
    assert len(files["other"].tracks) == 2 and len(files["guitars"].tracks) == 2
    assert files["voices"] is None  # no choir or "oohs" patch
    for f in (files[g] for g in ("drums", "bass", "guitars", "other")):
        assert f.tracks[0] is mf.tracks[0]  # the conductor track travels with every group
    drum_progs = [m.program for m in files["drums"].tracks[1] if m.type == "program_change"]
    assert drum_progs[0] in music.STYLES["rock"][3]
    for g in ("bass",):
        for tr in files[g].tracks[1:]:
            assert all(32 <= m.program <= 39 for m in tr if m.type == "program_change")
    pans = [m.value for m in files["other"].tracks[1] if m.type == "control_change" and m.control == 10]
    assert len(pans) == 1 and pans[0] == info[2]["pan"]  # MMA's pan replaced by ours


def test_split_midi_sends_choir_and_oohs_patches_to_the_backing_voices():
    tracks = [_track("Chord-Sus", 2, prog, [60, 64]) for prog in (52, 53, 54)] + [_track("Chord", 3, 48, [60, 64])]
    for seed in range(20):
        files, info = music.split_midi(_mma_like(*tracks), random.Random(seed), "rock")
        for t in info:
            assert t["group"] == ("voices" if t["new_prog"] in music.VOICE_PROGRAMS else "other")
        voice_tracks = files["voices"].tracks[1:] if files["voices"] else []
        voiced = [m.program for tr in voice_tracks for m in tr if m.type == "program_change"]
        assert sorted(voiced) == sorted(t["new_prog"] for t in info if t["group"] == "voices")
    kept = music.split_midi(_mma_like(*tracks), random.Random(0), "rock")[1]
    assert [t["group"] for t in kept[:3]].count("voices") >= 1  # most voice patches keep their family


def test_backing_voices_join_the_lead_below_it():
    t = np.arange(SR) / SR
    lead = np.stack([np.sin(2 * np.pi * 220 * t)] * 2).astype(np.float32)
    backing = 0.01 * np.stack([np.sin(2 * np.pi * 330 * t)] * 2).astype(np.float32)
    for seed in range(5):
        out, level_db = synth.add_backing_voices(lead, backing, random.Random(seed))
        assert -10.0 <= level_db <= -2.0 and out.dtype == np.float32
        rel = produce.active_rms(out - lead) / produce.active_rms(lead)
        assert 20 * np.log10(rel) == pytest.approx(level_db, abs=0.01)
    out, level_db = synth.add_backing_voices(np.zeros_like(lead), backing, random.Random(0))
    assert level_db is None and np.array_equal(out, backing)  # an instrumental: the backing is the vocal stem


def test_songs_of_an_older_generator_are_remade(tmp_path):
    folder = tmp_path / "train" / "song000042"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(f'{{"generator_version": {synth.GENERATOR_VERSION - 1}, "seed": 42}}')
    assert not synth.is_complete(tmp_path, 42)


def test_split_midi_makes_the_lowest_track_the_bass_when_none_is_marked():
    mf = _mma_like(_track("Drum", 9, 0, [36]), _track("Chord", 1, 16, [36, 40]), _track("Arp", 2, 0, [72, 76]))
    files, info = music.split_midi(mf, random.Random(1), "dance")
    assert [t["group"] for t in info] == ["drums", "bass", "other"]
    assert files["guitars"] is None


def test_split_kit_notes_moves_kit_range_to_a_melodic_channel():
    mf = _mma_like(_track("Drum", 9, 0, [36, 42, 81, 35]))
    kit, rest, num_rest = music.split_kit_notes(mf)
    kit_notes = [(m.channel, m.note) for m in kit.tracks[1] if m.type == "note_on"]
    rest_notes = [(m.channel, m.note) for m in rest.tracks[1] if m.type == "note_on"]
    assert kit_notes == [(0, 36), (0, 42), (0, 36)]
    assert rest_notes == [(9, 81)] and num_rest == 2  # note_on + note_off


# ---------------------------------------------------------------------------------------------------------------------
# production
# ---------------------------------------------------------------------------------------------------------------------
def _dry_stems(seconds=2.0, seed=0):
    r = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    hits = np.zeros(n)
    hits[:: SR // 4] = 1.0
    drums = np.convolve(hits, r.normal(0, 1, 2000) * np.exp(-np.arange(2000) / 300), "same")
    return {
        "vocals": np.stack([np.sin(2 * np.pi * 220 * t) * (t % 1 < 0.7)] * 2) * 0.3,
        "drums": np.stack([drums, drums]) * 0.5,
        "bass": np.stack([np.sin(2 * np.pi * 55 * t)] * 2) * 0.4,
        "guitars": np.stack([np.sign(np.sin(2 * np.pi * 196 * t))] * 2) * 0.1,
        "other": np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)]) * 0.2,
    }


@pytest.mark.parametrize("seed", range(6))
def test_production_keeps_the_mixture_the_sum_of_stems_and_never_clips(seed):
    dry = {k: v.astype(np.float32) for k, v in _dry_stems(seed=seed).items()}
    stems, mix, meta = produce.produce(dry, random.Random(seed), "rock", {"drums": [[0.5, 1.0]]})
    assert set(stems) == set(produce.STEMS)
    for v in stems.values():
        assert v.shape == (2, int(2.0 * SR)) and v.dtype == np.float32 and np.isfinite(v).all()
        assert np.abs(v).max() <= 0.98 + 1e-6
    np.testing.assert_allclose(mix, sum(stems.values()), atol=1e-6)
    assert np.abs(mix).max() <= 0.98 + 1e-6
    assert "bus" in meta and "loudness_db_rms" in meta["bus"]


def test_production_is_deterministic_from_the_rng():
    dry = {k: v.astype(np.float32) for k, v in _dry_stems().items()}
    a = produce.produce(dry, random.Random(3), "pop", {})
    b = produce.produce(dry, random.Random(3), "pop", {})
    for k in produce.STEMS:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert json.dumps(a[2], default=str) == json.dumps(b[2], default=str)


def test_vocal_eq_thins_the_lows_and_brightens_the_presence_band_on_its_own_stream():
    dry = {k: v.astype(np.float32) for k, v in _dry_stems().items()}
    noise = np.random.default_rng(0).normal(size=dry["vocals"].shape[1])
    pink = np.fft.irfft(np.fft.rfft(noise) / np.sqrt(np.maximum(np.fft.rfftfreq(len(noise), 1 / SR), 20.0)), len(noise))
    dry["vocals"] = (np.stack([pink, pink]) * 0.1 / np.abs(pink).max()).astype(np.float32)
    plain, _, plain_meta = produce.produce(dry, random.Random(3), "pop", {})
    for seed in range(4):
        eqd, _, meta = produce.produce(dry, random.Random(3), "pop", {}, random.Random(seed))
        assert meta["vocals"]["fx"] == plain_meta["vocals"]["fx"] and set(meta["vocals"]["eq"]) >= {"mud", "presence"}
        for k in ("drums", "bass", "other"):  # the other stems keep their own draws (the bus gain may move a little)
            assert meta[k] == plain_meta[k]
        v, w = plain["vocals"].mean(axis=0), eqd["vocals"].mean(axis=0)
        lows = band_db(w, 20, 150) - band_db(v, 20, 150)
        presence = band_db(w, 1000, 8000) - band_db(v, 1000, 8000)
        assert presence - lows > 6  # dB, the balance moved toward produced vocals


def test_silent_stem_stays_silent():
    dry = {k: v.astype(np.float32) for k, v in _dry_stems().items()}
    dry["vocals"] = np.zeros_like(dry["vocals"])
    stems, mix, meta = produce.produce(dry, random.Random(0), "jazz", {})
    assert not stems["vocals"].any() and meta["vocals"]["silent"]


def test_section_gain_mutes_spans_with_short_fades():
    g = produce.section_gain([[0.5, 1.0]], SR * 2, fade_s=0.01)
    assert g[int(0.6 * SR) : int(0.99 * SR)].max() == 0
    assert g[: int(0.48 * SR)].min() == 1 and g[int(1.02 * SR) :].min() == 1
    assert 0 < g[int(0.495 * SR)] < 1 and 0 < g[int(1.005 * SR)] < 1


def test_silent_sections_lie_on_bar_lines_inside_the_song():
    rng = random.Random(0)
    spans = [s for _ in range(200) for s in produce.silent_sections(rng, "drums", 10, 2.0, 18.0)]
    assert 30 < len(spans) < 100  # about 30 %
    for a, b in spans:
        assert 0 <= a < b <= 18.0 and a % 2.0 == 0 and b - a <= 8.0
    assert produce.silent_sections(rng, "vocals", 10, 2.0, 18.0) == []


def test_bus_compressor_turns_loud_parts_down_and_leaves_quiet_parts():
    t = np.arange(SR * 2) / SR
    mix = np.stack([np.sin(2 * np.pi * 100 * t) * np.where(t < 1, 0.05, 0.9)] * 2)
    g = produce.compressor_gain(mix, threshold_db=-12, ratio=4, attack_ms=5, release_ms=100)
    assert g.shape == (SR * 2,)
    assert np.all(g[int(0.2 * SR) : int(0.95 * SR)] > 0.99)
    gr_db = -20 * np.log10(g[int(1.5 * SR)])
    assert 5.5 < gr_db < 9.5  # (-0.9 dB - -12 dB) * (1 - 1/4) = 8.3 dB, less the soft knee


def test_limiter_holds_peaks_near_the_ceiling():
    r = np.random.default_rng(0)
    mix = r.normal(0, 0.1, (2, SR))
    mix[:, 10000] = 3.0
    g = produce.limiter_gain(mix, ceiling=0.9, release_ms=100)
    assert np.abs(mix * g).max() <= 0.9 * 1.05
    assert g[-1000:].min() > 0.99  # recovered
    assert np.median(g) > 0.9


def test_written_mixture_reads_back_as_the_exact_sum_of_stems(tmp_path):
    r = np.random.default_rng(0)
    stems = {k: (r.uniform(-0.24, 0.24, (2, 3000))).astype(np.float32) for k in produce.STEMS}
    synth.write_song_audio(tmp_path, stems, SR)
    back = {
        k: sf.read(tmp_path / f"{k}.wav", dtype="float32", always_2d=True)[0].T for k in (*produce.STEMS, "mixture")
    }
    assert np.array_equal(back["mixture"], back["vocals"] + back["drums"] + back["bass"] + back["other"])
    for k in produce.STEMS:
        assert np.abs(back[k] - stems[k]).max() <= 1 / 32768


# ---------------------------------------------------------------------------------------------------------------------
# splits and seeds
# ---------------------------------------------------------------------------------------------------------------------
def test_split_rule_is_seed_mod_20():
    splits = [synth.split_of(s) for s in range(200)]
    assert splits.count("test") == 10 and splits.count("validation") == 10 and splits.count("train") == 180
    assert synth.split_of(40) == "test" and synth.split_of(41) == "validation" and synth.split_of(42) == "train"
    assert synth.song_dir("out", 41).as_posix() == "out/validation/song000041"


def test_held_out_timbres_are_always_test_songs_and_never_mixed_with_training_timbres(tmp_path):
    assert [synth.split_of(s, "heldout") for s in (0, 1, 2)] == ["test"] * 3
    assert synth.song_dir("out", 41, "heldout").as_posix() == "out/test/song000041"  # named like its twin
    assert not synth.is_complete(tmp_path, 40, "heldout")
    (tmp_path / "test" / "song000040").mkdir(parents=True)
    (tmp_path / "test" / "song000040" / "meta.json").write_text(
        f'{{"generator_version": {synth.GENERATOR_VERSION}, "seed": 40}}'
    )  # a training song from before
    assert synth.is_complete(tmp_path, 40, "train")
    with pytest.raises(ValueError, match="with train timbres, not heldout"):
        synth.is_complete(tmp_path, 40, "heldout")
    with pytest.raises(ValueError, match="its own folder"):
        synth.make_song(40, tmp_path, timbres="heldout")


def test_held_out_timbres_share_no_soundfont_voice_or_kit_with_training():
    assert not set(music.HELDOUT_SOUNDFONTS) & set(music.SF_WEIGHTS)
    assert not set(music.HELDOUT_SOUNDFONTS.values()) & {music.SF_FLUIDR3, music.SF_TIMGM, music.SF_MUSESCORE_SF3}
    assert not set(vocals.voice_weights("heldout")) & set(vocals.voice_weights("train"))
    assert set(vocals.voice_weights("heldout")) <= set(vocals.FESTIVAL_VOICES)
    with pytest.raises(ValueError, match="timbres"):
        vocals.voice_weights("studio")
    with pytest.raises(ValueError, match="timbres"):
        music.available_soundfonts("studio")


@pytest.mark.skipif(
    not music.SF_CSOUND.exists() or not (music.SF_FLUIDR3.exists() or music.SF_TIMGM.exists()),
    reason="training and held-out GM soundfonts not both installed",
)
def test_held_out_plan_is_the_training_plan_with_another_soundfont():
    train, held = synth.plan_song(40, 20.0)[1], synth.plan_song(40, 20.0, "heldout")[1]
    assert held["soundfont"] in music.HELDOUT_SOUNDFONTS and train["soundfont"] in music.SF_WEIGHTS
    assert held["timbres"] == "heldout" and train["timbres"] == "train"
    same = ("style", "groove", "variation", "swap_bar", "tempo", "key_pc", "mode", "bars")
    assert {k: held[k] for k in same} == {k: train[k] for k in same}


def test_stage_streams_are_reproducible_and_independent():
    assert synth.stage_rng(7, "vocals").random() == synth.stage_rng(7, "vocals").random()
    assert synth.stage_rng(7, "vocals").random() != synth.stage_rng(7, "produce").random()
    assert synth.stage_rng(7, "vocals").random() != synth.stage_rng(8, "vocals").random()


@pytest.mark.skipif(not music.SF_FLUIDR3.exists() and not music.SF_TIMGM.exists(), reason="no GM soundfont installed")
def test_song_plan_is_deterministic_from_seed():
    a, b, c = synth.plan_song(12, 20.0)[1], synth.plan_song(12, 20.0)[1], synth.plan_song(13, 20.0)[1]
    assert a == b and a != c
    assert a["style"] in music.STYLES and a["groove"] in music.STYLES[a["style"]][0]
    assert len(a["bars"]) == int(np.ceil(20.0 / a["bar_s"])) + 1


# ---------------------------------------------------------------------------------------------------------------------
# one full song (needs mma, fluidsynth, festival, pyworld and soundfonts)
# ---------------------------------------------------------------------------------------------------------------------
_MISSING = synth.missing_tools()


@pytest.mark.slow
@pytest.mark.skipif(
    bool(_MISSING),
    reason=f"synthesis tools missing ({', '.join(_MISSING)}): run engine/training/install_synth_tools.sh",
)
def test_full_song_render(tmp_path):
    seed = 21  # validation split (21 % 20 == 1), its lead sung by PSOLA
    folder = synth.make_song(seed, tmp_path, duration_s=8.0)
    assert folder == tmp_path / "validation" / "song000021"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["seed"] == seed and meta["generator_version"] == synth.GENERATOR_VERSION
    assert meta["vocals"]["method"] == "psola"  # (seed 20 below is sung by WORLD)
    audio = {k: sf.read(folder / f"{k}.wav", dtype="float32", always_2d=True) for k in (*produce.STEMS, "mixture")}
    for x, rate in audio.values():
        assert rate == SR and x.shape == (8 * SR, 2) and np.isfinite(x).all()
    x = {k: v[0] for k, v in audio.items()}
    assert np.array_equal(x["mixture"], x["vocals"] + x["drums"] + x["bass"] + x["other"])
    assert np.sqrt(np.mean(x["mixture"] ** 2)) > 0.01
    if not meta["vocals"].get("instrumental"):
        assert np.sqrt(np.mean(x["vocals"] ** 2)) > 1e-3
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary left behind
    mtime = (folder / "meta.json").stat().st_mtime_ns
    synth.make_song(seed, tmp_path, duration_s=8.0)  # complete songs are skipped
    assert (folder / "meta.json").stat().st_mtime_ns == mtime


_MISSING_HELD = synth.missing_tools("heldout")


@pytest.mark.slow
@pytest.mark.skipif(
    bool(_MISSING_HELD),
    reason=f"synthesis tools missing ({', '.join(_MISSING_HELD)}): run engine/training/install_synth_tools.sh",
)
def test_full_song_render_with_held_out_timbres(tmp_path):
    folder = synth.make_song(20, tmp_path, duration_s=6.0, timbres="heldout")
    assert folder == tmp_path / "test" / "song000020"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["timbres"] == "heldout" and meta["split"] == "test"
    assert meta["soundfont"] in music.HELDOUT_SOUNDFONTS and meta["drum_kit"] == "gm"
    if meta["vocals"].get("method") == "world":
        assert meta["vocals"]["voice"] in vocals.voice_weights("heldout")
    x = {k: sf.read(folder / f"{k}.wav", dtype="float32")[0] for k in (*produce.STEMS, "mixture")}
    assert np.array_equal(x["mixture"], x["vocals"] + x["drums"] + x["bass"] + x["other"])
    assert np.sqrt(np.mean(x["mixture"] ** 2)) > 0.01
