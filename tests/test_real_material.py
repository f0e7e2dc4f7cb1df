"""Real single-stem recordings in training: pools, phrases, levels, the Debian gatherer, and the sampler."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from stembridge.engine.training import dataset, real_material
from stembridge.engine.training.real_material import RealPool, gather, phrase, recording_ok, trimmed

RATE = 44100


def burst(seconds: float, freq: float, rate: int, pad_s: float = 0.2) -> np.ndarray:
    """A mono tone of ``seconds`` with ``pad_s`` of silence either side: (n,)."""
    t = np.arange(int(seconds * rate)) / rate
    pad = np.zeros(int(pad_s * rate))
    return np.concatenate([pad, 0.3 * np.sin(2 * np.pi * freq * t), pad])


def write_pool(root, clip_rate: int = 22050) -> None:
    """vocals/speaker: five 0.5 s clips at ``clip_rate``; other/song: a 6 s stereo track, its first second silent."""
    speaker = root / "vocals" / "speaker"
    speaker.mkdir(parents=True)
    for i in range(5):
        sf.write(speaker / f"clip{i}.wav", burst(0.5, 300 + 50 * i, clip_rate), clip_rate)
    song = root / "other" / "song"
    song.mkdir(parents=True)
    track = burst(5.0, 440, RATE, pad_s=0.0)
    track = np.concatenate([np.zeros(RATE), track])
    sf.write(song / "guitar.flac", np.stack([track, 0.5 * track]).T, RATE)


def test_pool_trims_and_resamples_clips_and_strings_them_into_phrases(tmp_path):
    write_pool(tmp_path)
    pool = RealPool(tmp_path)
    assert pool.stems == ("vocals", "other")
    clips = pool.sources["vocals"][0].clips
    assert len(clips) == 5 and not pool.sources["vocals"][0].tracks
    assert all(abs(c.shape[1] - RATE // 2) <= RATE // 50 for c in clips)  # 0.5 s at 44.1 kHz, the silence trimmed
    assert len(pool.sources["other"][0].tracks) == 1 and pool.sources["other"][0].tracks[0].shape[0] == 2
    rng = np.random.default_rng(0)
    seg = pool.segment("vocals", 3 * RATE, rng)
    assert seg.shape == (2, 3 * RATE) and seg.dtype == np.float32
    np.testing.assert_array_equal(seg[0], seg[1])  # a mono voice sits in the centre
    sounding = np.abs(seg[0]) > 1e-4
    assert 0.5 < sounding.mean() < 0.97  # clips with pauses between them
    for _ in range(10):  # a track is sampled where it sounds
        assert np.sqrt(np.mean(pool.segment("other", RATE, rng) ** 2)) > 1e-3
    assert "vocals: 1 sources" in pool.describe() and "other: 1 sources" in pool.describe()


def test_phrase_places_clips_with_pauses_and_is_deterministic():
    clips = [np.ones((1, 1000), np.float32), 2 * np.ones((1, 500), np.float32)]
    a = phrase(clips, 20000, np.random.default_rng(4), 8000, channels=2)
    b = phrase(clips, 20000, np.random.default_rng(4), 8000, channels=2)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1.0, 2.0}  # whole clips, never overlapping
    edges = np.flatnonzero(np.diff((a[0] > 0).astype(int)) == 1)
    assert len(edges) >= 5  # many clips, each after a pause


def test_mixed_into_sets_the_level_relative_to_the_synthesized_stem(tmp_path):
    write_pool(tmp_path)
    pool = RealPool(tmp_path)
    rng = np.random.default_rng(1)
    synth = (np.random.default_rng(2).standard_normal((2, RATE)) * 0.1).astype(np.float32)
    replaced = added = 0
    for _ in range(40):
        out = pool.mixed_into(synth, "other", rng)
        real = out - synth
        if np.abs(out).max() and np.corrcoef(out[0], synth[0])[0, 1] < 0.2:  # replaced: the synthetic stem is gone
            replaced += 1
            real = out
        else:
            added += 1
        level_db = 20 * np.log10(np.sqrt(np.mean(real**2)) / np.sqrt(np.mean(synth**2)))
        assert real_material.LEVEL_DB[0] - 0.01 <= level_db <= real_material.LEVEL_DB[1] + 0.01
    assert replaced > 5 and added > 5
    silent = np.zeros((2, RATE), np.float32)
    out = pool.mixed_into(silent, "other", rng)
    level = np.sqrt(np.mean(out**2)) / real_material.NOMINAL_RMS
    assert 10 ** (real_material.LEVEL_DB[0] / 20) - 1e-3 <= level <= 10 ** (real_material.LEVEL_DB[1] / 20) + 1e-3


def test_recordings_with_hiss_or_clipping_are_rejected():
    rng = np.random.default_rng(0)
    clean = burst(1.0, 300, RATE)[None]
    assert recording_ok(clean, RATE)
    assert not recording_ok(clean + 0.01 * rng.standard_normal(clean.shape), RATE)  # -30 dB hiss floor
    assert not recording_ok(np.clip(clean * 10, -1, 1), RATE)
    assert trimmed(clean, RATE).shape[1] == pytest.approx(RATE, abs=RATE // 100)


def test_pool_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        RealPool(tmp_path / "missing")
    (tmp_path / "vocals" / "nobody").mkdir(parents=True)
    with pytest.raises(ValueError, match="no recordings"):
        RealPool(tmp_path)


def test_gather_splits_guitars_by_song_and_voices_by_speaker(tmp_path):
    fof, klettres = tmp_path / "fof", tmp_path / "klettres"
    for song in ("muldjord/chaos_god", "muldjord/mutilated_mime"):
        (fof / song).mkdir(parents=True)
        sf.write(fof / song / "guitar.ogg", burst(1.0, 200, RATE), RATE)
        sf.write(fof / song / "song.ogg", burst(1.0, 100, RATE), RATE)
    rng = np.random.default_rng(0)
    for language in ("en", "de"):  # en is held out
        (klettres / language / "alpha").mkdir(parents=True)
        sf.write(klettres / language / "alpha" / "a.ogg", burst(0.5, 300, RATE), RATE)
        hissy = burst(0.5, 300, RATE) + 0.02 * rng.standard_normal(int(0.9 * RATE))
        sf.write(klettres / language / "alpha" / "b.ogg", hissy, RATE)
    counts = gather(tmp_path / "real", fof, klettres)
    assert counts == {"train/other": 1, "test/other": 1, "train/vocals": 1, "test/vocals": 1}
    out = tmp_path / "real"
    assert (out / "train" / "other" / "muldjord_chaos_god" / "guitar.ogg").is_symlink()
    assert (out / "test" / "other" / "muldjord_mutilated_mime" / "guitar.ogg").exists()
    assert [p.name for p in (out / "test" / "vocals" / "en").iterdir()] == ["alpha_a.ogg"]  # the hissy one left out
    assert RealPool(out / "train").stems == ("vocals", "other")
    assert gather(out, fof, klettres) == counts  # run again: the links are replaced, not duplicated
    with pytest.raises(SystemExit, match="no guitar.ogg"):
        gather(out, tmp_path / "nothing", klettres)


def test_gather_takes_ktuberling_speakers_for_training_only(tmp_path):
    fof, klettres, ktuberling = tmp_path / "fof", tmp_path / "klettres", tmp_path / "ktuberling"
    (fof / "muldjord" / "chaos_god").mkdir(parents=True)
    sf.write(fof / "muldjord" / "chaos_god" / "guitar.ogg", burst(1.0, 200, RATE), RATE)
    (klettres / "de").mkdir(parents=True)
    sf.write(klettres / "de" / "a.ogg", burst(0.5, 300, RATE), RATE)
    for language, rate in (("de", RATE), ("en", RATE), ("fi", 8000), ("sr", 22050), ("sr@latin", RATE)):
        (ktuberling / language).mkdir(parents=True)
        sf.write(ktuberling / language / "ball.wav", burst(0.5, 250, rate), rate)
    without = gather(tmp_path / "without", fof, klettres)
    counts = gather(tmp_path / "with", fof, klettres, ktuberling)
    assert counts == {**without, "train/vocals": without["train/vocals"] + 1}
    # en: a held-out KLettres language; fi and sr: recorded at 8 and 22 kHz; sr@latin: a copy of sr
    assert sorted(p.name for p in (tmp_path / "with" / "train" / "vocals").iterdir()) == ["de", "ktuberling_de"]
    assert (tmp_path / "with" / "train" / "vocals" / "ktuberling_de" / "ball.wav").is_symlink()


def write_song(root, name: str, seed: int) -> None:
    folder = root / "train" / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for stem in dataset.STEMS:
        pcm = (rng.standard_normal((RATE, 2)) * 3000).astype(np.int16)
        sf.write(folder / f"{stem}.wav", pcm, RATE, subtype="PCM_16")


def test_sampler_mixes_real_segments_into_their_stems_only(tmp_path):
    write_pool(tmp_path / "real")
    for i in range(2):
        write_song(tmp_path / "songs", f"song{i:06d}", i)
    bank = dataset.SongBank(tmp_path / "songs", "train")
    pool = RealPool(tmp_path / "real")
    plain = dataset.SegmentSampler(bank, 22050, seed=1)
    unused = dataset.SegmentSampler(bank, 22050, seed=1, real=pool)  # p_real 0: the same draws as without a pool
    np.testing.assert_array_equal(unused.batch(2)[1], plain.batch(2)[1])
    with_real = dataset.SegmentSampler(bank, 22050, replace(dataset.Augment.none(), p_real=1.0), seed=1, real=pool)
    mix, stems = with_real.batch(4)
    np.testing.assert_allclose(mix, stems.sum(axis=1), atol=1e-6)
    # drums and bass (no pool) are the songs' own noise; vocals and other hold tones now
    for k, stem in enumerate(dataset.STEMS):
        spectrum = np.abs(np.fft.rfft(stems[:, k, 0], axis=-1)).mean(axis=0)
        peakiness = spectrum.max() / np.median(spectrum)
        assert (peakiness > 20) == (stem in ("vocals", "other")), (stem, peakiness)


def test_training_refuses_a_p_real_that_is_not_a_probability(capsys):
    train = pytest.importorskip("stembridge.engine.training.train", reason="torch is not installed")
    with pytest.raises(SystemExit):
        train.parse_args(["--real", "data/real/train", "--p-real", "1.5"])
    assert "--p-real is a probability between 0 and 1, got 1.5" in capsys.readouterr().err
