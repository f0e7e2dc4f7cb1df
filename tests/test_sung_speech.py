"""Real speakers sung: syllables from spoken clips, the sung melody, and the sung sources written into a pool."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
from stembridge.engine.training import sung_speech, synth_vocals
from stembridge.engine.training.real_material import RealPool
from stembridge.engine.training.sung_speech import clip_syllables
from stembridge.engine.training.synth_vocals import FRAME_PERIOD_MS, voiced_regions

RATE = 44100
DT = FRAME_PERIOD_MS / 1000


def frames(*runs: tuple[int, float]) -> np.ndarray:
    """An F0 track from (num_frames, Hz) runs."""
    return np.concatenate([np.full(n, hz) for n, hz in runs])


def test_voiced_regions_bridge_short_gaps_and_drop_blips():
    f0 = frames((10, 0), (20, 120), (4, 0), (20, 125), (30, 0), (3, 130), (30, 0), (12, 110))
    # the 4-frame (20 ms) gap is bridged; the 3-frame (15 ms) blip is dropped
    assert voiced_regions(f0) == [(10, 54), (117, 129)]


def test_clip_syllables_make_each_vowel_a_syllable_and_split_the_consonants_between():
    f0 = frames((20, 0), (30, 120), (20, 0), (40, 118), (10, 0))
    x = np.zeros(int(len(f0) * DT * RATE))
    syllables = clip_syllables(x, RATE, f0)
    assert [[(vowel, round(a, 3), round(b, 3)) for _, vowel, a, b in syl] for syl in syllables] == [
        [(False, 0.0, 0.1), (True, 0.1, 0.25), (False, 0.25, 0.3)],
        [(False, 0.3, 0.35), (True, 0.35, 0.55), (False, 0.55, 0.6)],
    ]
    assert clip_syllables(x, RATE, np.zeros(len(f0))) == []  # nothing voiced: nothing to sing


def spoken_clip(f0_hz: float, seed: int, glide: float = 0.2) -> np.ndarray:
    """A stand-in for a spoken syllable: a noise onset, a 0.3 s buzz with two formants (its pitch falling by
    ``glide`` of f0_hz), a noise coda."""
    rng = np.random.default_rng(seed)
    n = int(0.3 * RATE)
    t = np.arange(n) / RATE
    hz = f0_hz * (1 + glide / 2 - glide * t / t[-1])
    phase = 2 * np.pi * np.cumsum(hz) / RATE
    vowel = sum(
        np.sin(k * phase)
        * (np.exp(-(((k * hz - 700) / 300) ** 2)) + 0.5 * np.exp(-(((k * hz - 1800) / 400) ** 2)) + 0.02)
        for k in range(1, 40)
    )
    vowel *= np.hanning(n) ** 0.3 * 0.2 / np.abs(vowel).max()
    return np.concatenate([0.03 * rng.normal(size=int(0.06 * RATE)), vowel, 0.02 * rng.normal(size=int(0.04 * RATE))])


@pytest.mark.parametrize("method", sung_speech.METHODS)
def test_sung_track_sings_the_speakers_syllables_on_the_melody(method):
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    speaker = sung_speech.Speaker([spoken_clip(120, i) for i in range(4)])
    assert 100 < speaker.median_f0_hz < 140
    line, meta = sung_speech.sung_track(speaker, random.Random(3), 8.0, method)
    again, _ = sung_speech.sung_track(speaker, random.Random(3), 8.0, method)
    np.testing.assert_array_equal(line, again)
    assert line.shape == (8 * RATE,) and line.dtype == np.float32
    lo, hi = meta["pitch_range"]
    assert 41 <= lo and hi <= 67  # a low speaking voice sings in the low register
    measured = synth_vocals.speech_f0(line.astype(np.float64), RATE)
    errors = []
    for phrase in meta["notes"]:
        for t, d, pitch in phrase:
            if d > 0.3:  # the middle of a long note: portamento done, vibrato and drift only
                k = int((t + d / 2) / DT)
                hz = np.median(measured[k - 4 : k + 4])
                errors.append(12 * np.log2(max(hz, 1.0) / (440 * 2 ** ((pitch - 69) / 12))))
    assert len(errors) >= 3
    assert np.median(np.abs(errors)) < 0.6  # semitones
    assert quiet_phrases_ok(line, meta)


def quiet_phrases_ok(line: np.ndarray, meta: dict) -> bool:
    """Every phrase sounds: none far below the loudest, and the line holds no NaN."""
    return not meta["quiet_phrases"] and bool(np.isfinite(line).all()) and float(np.abs(line).max()) > 0.01


def test_analysis_marks_fall_one_period_apart():
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    x = spoken_clip(150, 0, glide=0.0)
    marks, periods = synth_vocals.analysis_marks(x, RATE, synth_vocals.speech_f0(x, RATE))
    assert len(marks) > 30
    assert np.all(np.diff(marks) > 0)
    np.testing.assert_allclose(np.median(np.diff(marks)), RATE / 150, rtol=0.02)
    np.testing.assert_allclose(np.median(periods), RATE / 150, rtol=0.02)


def test_psola_at_the_speakers_own_pitch_and_pace_gives_the_speech_back():
    """What PSOLA keeps and WORLD does not: the speaker's own waveform, period by period."""
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    x = spoken_clip(150, 1, glide=0.0)
    (syllable,) = clip_syllables(x, RATE)
    vowel = next(seg for seg in syllable if seg[1])
    t0 = 0.5
    note = {"t": t0, "d": (syllable[-1][3] - vowel[2]) / 0.92, "pitch": 69 + 12 * np.log2(150 / 440)}
    f0_out = np.full(int(2.0 / DT), 150.0)
    out = np.zeros(2 * RATE)
    synth_vocals.psola_phrase(
        out, x, [note], [syllable], f0_out, {"consonant_scale": 1.0, "level_pull": 0.0, "rng": random.Random(0)}
    )
    a = int((t0 + 0.05) * RATE)
    sung = out[a : a + int(0.1 * RATE)]
    b = int((vowel[2] + 0.05) * RATE)
    best = max(
        np.dot(sung, x[b + lag : b + lag + len(sung)])
        / np.linalg.norm(sung)
        / np.linalg.norm(x[b + lag : b + lag + len(sung)])
        for lag in range(-RATE // 100, RATE // 100)
    )
    assert best > 0.9


def test_sung_track_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be one of world, psola"):
        sung_speech.sung_track(None, random.Random(0), 4.0, "autotune")


def test_sing_pool_writes_sung_sources_that_the_pool_samples_as_tracks(tmp_path):
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    speaker = tmp_path / "vocals" / "xx"
    speaker.mkdir(parents=True)
    for i in range(4):
        sf.write(speaker / f"clip{i}.wav", spoken_clip(220, i), RATE)
    assert sung_speech.sing_pool(tmp_path, num_tracks=1, seconds=6.0, method="psola") == {"xx": 1}
    info = sf.info(tmp_path / "vocals" / "xx_sung" / "sung_00.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (RATE, 2, 6 * RATE, "PCM_24")
    assert sung_speech.sing_pool(tmp_path, num_tracks=1, seconds=6.0) == {"xx": 1}  # sung folders are not sung again
    pool = RealPool(tmp_path)
    sung = {s.name: s for s in pool.sources["vocals"]}["xx_sung"]
    assert len(sung.tracks) == 1 and not sung.clips
    assert "vocals: 2 sources (1 of them sung speech" in pool.describe()
    # into another folder: the pool's own sources are linked beside the sung ones
    (tmp_path / "other" / "song").mkdir(parents=True)
    sf.write(tmp_path / "other" / "song" / "guitar.wav", spoken_clip(330, 9), RATE)
    assert sung_speech.sing_pool(tmp_path, tmp_path / "out", num_tracks=1, seconds=6.0) == {"xx": 1}
    whole = RealPool(tmp_path / "out")
    assert sorted(s.name for s in whole.sources["vocals"]) == ["xx", "xx_sung"]
    assert [s.name for s in whole.sources["other"]] == ["song"] and (tmp_path / "out" / "vocals" / "xx").is_symlink()


def test_sing_pool_names_a_pool_without_voices(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vocal sources"):
        sung_speech.sing_pool(tmp_path)
    (tmp_path / "vocals" / "empty").mkdir(parents=True)
    with pytest.raises(ValueError, match="no source with voiced spoken clips"):
        sung_speech.sing_pool(tmp_path)
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    hiss = tmp_path / "vocals" / "hiss"  # clips with nothing voiced: skipped, not sung into silence
    hiss.mkdir()
    sf.write(hiss / "s.wav", 0.1 * np.random.default_rng(0).normal(size=RATE // 2), RATE)
    with pytest.raises(ValueError, match="no source with voiced spoken clips"):
        sung_speech.sing_pool(tmp_path)
