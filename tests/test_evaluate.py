"""Quality evaluation: metrics on signals whose answer is known, the baselines, and `stembridge evaluate`."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from stembridge.bridge.cli import main
from stembridge.engine import separator as separator_module
from stembridge.engine.baselines import STEMS, ClassicalSeparator, ideal_ratio_mask, mixture_fraction
from stembridge.engine.evaluate import (
    EvaluationError,
    comparison_markdown,
    find_songs,
    full_sdr,
    load_song,
    markdown,
    median_sdr,
    median_shares,
    paired_comparison,
    shares_table,
    si_sdr,
    song_timbres,
    source_shares,
    vocal_leakage_db,
    window_sdr,
    write_report,
)

SR = 8000

ROOT = Path(__file__).resolve().parents[1]


def tones(freqs_hz, seconds, sr=SR, channels=2):
    """Sines at whole-cycle-per-second frequencies: exactly orthogonal over every 1 s window. (len, ch, n)."""
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([np.stack([0.2 * np.sin(2 * np.pi * f * t + c)] * channels) for c, f in enumerate(freqs_hz)])


def test_window_sdr_matches_museval_including_silent_windows():
    pytest.importorskip("museval")
    from stembridge.engine.evaluate import museval_sdr

    rng = np.random.default_rng(1)
    ref = (0.1 * rng.standard_normal((2, 4 * SR))).astype(np.float32)
    ref[:, :SR] = 0.0  # a silent first window: NaN in both
    est = (0.8 * ref + 0.02 * rng.standard_normal(ref.shape)).astype(np.float32)
    ours = window_sdr(ref, est, SR)
    theirs = museval_sdr(ref, est, SR)
    assert ours.shape == theirs.shape == (4,)
    assert np.isnan(ours[0]) and np.isnan(theirs[0])
    np.testing.assert_allclose(ours[1:], theirs[1:], atol=1e-6)


def test_window_sdr_counts_whole_windows_and_reports_nan_for_silent_estimates():
    ref = tones([440], 3.5)[0]
    est = ref.copy()
    est[:, : 2 * SR] = 0.0
    sdr = window_sdr(ref, 0.5 * ref, SR)
    assert sdr.shape == (3,)  # the half window at the end is not scored, as in museval
    np.testing.assert_allclose(sdr, 20 * np.log10(1 / 0.5))  # error = half the signal: 6.02 dB
    assert np.isnan(window_sdr(ref, est, SR)[:2]).all()
    assert math.isnan(median_sdr(np.array([np.nan, np.nan])))


def test_mixture_over_four_scores_the_expected_value_on_equal_orthogonal_sources():
    refs = tones([100, 200, 300, 400], 3.0)
    mixture = refs.sum(axis=0)
    estimates = mixture_fraction(mixture)
    # error = -3/4 s1 + 1/4 (s2 + s3 + s4): energy (9 + 3) / 16 of one source
    expected = 10 * np.log10(16 / 12)
    for i in range(4):
        np.testing.assert_allclose(window_sdr(refs[i], estimates[i], SR), expected, atol=1e-3)
        assert full_sdr(refs[i], estimates[i]) == pytest.approx(expected, abs=1e-3)
        assert si_sdr(refs[i], estimates[i]) == pytest.approx(10 * np.log10(1 / 3), abs=1e-3)


def test_ideal_ratio_mask_separates_sources_in_disjoint_bands():
    rng = np.random.default_rng(2)
    n = 3 * SR
    spectrum = np.fft.rfftfreq(n, 1 / SR)
    bands = [(100, 600), (900, 1500), (1900, 2600), (3000, 3700)]
    refs = []
    for lo, hi in bands:
        noise = np.fft.rfft(rng.standard_normal((2, n)), axis=-1)
        noise[:, (spectrum < lo) | (spectrum > hi)] = 0
        refs.append(np.fft.irfft(noise, n=n, axis=-1) * 0.1)
    refs = np.asarray(refs, dtype=np.float32)
    estimates = ideal_ratio_mask(refs.sum(axis=0), refs, n_fft=512, hop_size=128)
    scores = [median_sdr(window_sdr(refs[i], estimates[i], SR)) for i in range(4)]
    assert min(scores) > 20.0, scores
    # and the oracle knows nothing on equal sources: mixture/4's value again, not more
    equal = np.repeat(refs[:1], 4, axis=0)
    np.testing.assert_allclose(ideal_ratio_mask(equal.sum(axis=0), equal, 512, 128), equal, atol=1e-5)


def test_classical_separator_sums_to_the_mixture_and_finds_clicks_and_bass():
    sr = 22050
    n = 3 * sr
    t = np.arange(n) / sr
    drums = np.zeros((2, n))
    drums[:, :: sr // 4] = 0.8  # clicks: broadband and short
    bass = np.stack([0.3 * np.sin(2 * np.pi * 60 * t)] * 2)
    vocals = np.stack([0.2 * np.sin(2 * np.pi * 660 * t)] * 2)  # centred, mid-band, sustained
    other = np.stack([0.2 * np.sin(2 * np.pi * 1320 * t), 0.02 * np.sin(2 * np.pi * 1320 * t)])  # panned left
    refs = np.asarray([vocals, drums, bass, other], dtype=np.float32)
    mixture = refs.sum(axis=0)
    estimates = ClassicalSeparator().separate(mixture, sr)
    assert estimates.shape == refs.shape
    np.testing.assert_allclose(estimates.sum(axis=0), mixture, atol=1e-5)
    trivial = mixture_fraction(mixture)
    for i, stem in enumerate(STEMS):
        ours = median_sdr(window_sdr(refs[i], estimates[i], sr))
        floor = median_sdr(window_sdr(refs[i], trivial[i], sr))
        assert ours > floor + 3.0, (stem, ours, floor)


def test_vocal_leakage_is_minus_2_5_db_for_mixture_over_four_and_tracks_the_vocal_left():
    rng = np.random.default_rng(3)
    vocals = (0.1 * rng.standard_normal((2, 2 * SR))).astype(np.float32)
    accompaniment = (0.2 * rng.standard_normal((2, 2 * SR))).astype(np.float32)
    mixture = vocals + accompaniment
    assert vocal_leakage_db(0.75 * mixture, vocals, accompaniment, SR) == pytest.approx(20 * np.log10(0.75), abs=0.01)
    assert vocal_leakage_db(accompaniment + 0.1 * vocals, vocals, accompaniment, SR) == pytest.approx(-20, abs=0.1)
    assert vocal_leakage_db(accompaniment, vocals, accompaniment, SR) <= -60
    assert math.isnan(vocal_leakage_db(accompaniment, 0 * vocals, accompaniment, SR))


def write_song(folder, sr=SR, seconds=2.0, seed=0, silent=()):
    """A song whose stems are tones in separate bands plus a little noise; ``silent`` stems are all zero."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    stems = {}
    for i, stem in enumerate(STEMS):
        audio = (
            0.005 * rng.standard_normal((int(seconds * sr), 2)) + tones([(300, 1100, 2300, 3500)[i]], seconds, sr)[0].T
        )
        stems[stem] = np.zeros_like(audio) if stem in silent else audio
        sf.write(folder / f"{stem}.wav", stems[stem], sr, subtype="FLOAT")
    sf.write(folder / "mixture.wav", sum(stems.values()), sr, subtype="FLOAT")


def test_find_songs_accepts_a_parent_with_a_test_folder_and_names_what_is_missing(tmp_path):
    write_song(tmp_path / "test" / "b")
    write_song(tmp_path / "test" / "a")
    (tmp_path / "test" / ".c.tmp").mkdir()
    assert [p.name for p in find_songs(tmp_path)] == ["a", "b"]
    assert [p.name for p in find_songs(tmp_path / "test")] == ["a", "b"]
    (tmp_path / "test" / "a" / "bass.wav").unlink()
    with pytest.raises(EvaluationError, match="missing bass.wav"):
        load_song(tmp_path / "test" / "a")
    with pytest.raises(EvaluationError, match="no test songs found"):
        find_songs(tmp_path / "test" / ".c.tmp")


def evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_cli_reports_a_missing_folder_clearly(tmp_path):
    result = evaluate(tmp_path / "nope", "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "nope: no such folder" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_evaluates_model_and_baselines_and_updates_the_card(tmp_path, tiny_model):
    # songs at 22.05 kHz against a 44.1 kHz model: the model and the oracle run at their rate and come back
    write_song(tmp_path / "songs" / "one", sr=22050, seed=1)
    write_song(tmp_path / "songs" / "two", sr=22050, seed=2, silent=("vocals",))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copy(tiny_model.with_suffix(suffix), model_dir / f"tiny{suffix}")
    out = tmp_path / "out"
    result = evaluate(tmp_path / "songs", "--model", model_dir / "tiny.onnx", "--out", out, "--update-card")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "quality.json").read_text())
    assert list(report["summary"]) == ["hq", "model", "mixture/4", "classical", "irm"]
    # the high-quality path runs beside the live model, naming its look-ahead model; means over songs beside medians
    assert report["methods"]["hq"]["params"]["lookahead_model"] == "hq_vocals"
    assert set(report["summary"]["hq"]["sdr_song_mean"]) == {"vocals", "drums", "bass", "other", "mean"}
    assert report["methods"]["irm"]["params"]["n_fft"] == 256  # the model's own STFT
    # a silent vocal stem leaves that song out of the vocal figure only
    assert report["summary"]["mixture/4"]["num_songs"] == {"vocals": 1, "drums": 2, "bass": 2, "other": 2}
    assert report["songs"]["two"]["irm"]["sdr"]["vocals"] is None
    assert report["summary"]["irm"]["sdr"]["mean"] > report["summary"]["mixture/4"]["sdr"]["mean"] + 3
    assert "| irm |" in (out / "quality.md").read_text()
    # the report read back from JSON (NaN stored as null) renders again, the song with a silent stem as n/a
    assert "| two | n/a | n/a | n/a | n/a |" in markdown(report) and "| two | n/a |" in (out / "quality.md").read_text()
    # the quality targets are checked against the same run's baselines
    summary, targets = report["summary"], report["targets"]
    bass = targets["rows"]["bass"]
    assert bass["required"] == pytest.approx(summary["classical"]["sdr"]["bass"] + 5.0, abs=2e-3)
    assert bass["margin"] == pytest.approx(summary["model"]["sdr"]["bass"] - bass["required"], abs=2e-3)
    assert targets["rows"]["mean"]["required"] == pytest.approx(summary["irm"]["sdr"]["mean"] - 3.0, abs=2e-3)
    assert targets["all_met"] == all(row["met"] for row in targets["rows"].values())
    assert "Quality targets (every stem >= classical + 5 dB" in (out / "quality.md").read_text()
    card = json.loads((model_dir / "tiny.json").read_text())
    quality = card["provenance"]["quality"]
    assert quality["sdr_db"] == report["summary"]["model"]["sdr"]
    assert set(quality["baselines_sdr_db"]) == {"mixture/4", "classical", "irm"}
    assert quality["spatial_filter"] is None  # the tiny card asks for no spatial filter: masks alone were measured
    assert card["provenance"]["training_data"].startswith("none")  # the rest of the card is kept
    # a second run compared song by song with the first, twice: the same model scores the same on every song
    again = evaluate(
        tmp_path / "songs",
        "--model",
        model_dir / "tiny.onnx",
        "--methods",
        "model",
        "--out",
        tmp_path / "again",
        "--compare-to",
        out / "quality.json",
        "--compare-to",
        out / "quality.json",
    )
    assert again.exit_code == 0, again.output
    compared = json.loads((tmp_path / "again" / "quality.json").read_text())["comparisons"]
    assert [c["baseline"] for c in compared] == [f"`{out / 'quality.json'}`"] * 2
    assert compared[0]["model"]["drums"] == {"mean_db": 0.0, "median_db": 0.0, "songs_better": 0, "num_songs": 2}
    assert compared[0]["model"]["mean"]["num_songs"] == 1  # song "two" has a silent vocal
    assert (tmp_path / "again" / "quality.md").read_text().count("Paired per song against") == 2
    assert again.output.count("Paired per song against") == 2  # shown on the terminal too
    # a report read back from JSON is written again, a stem silent in every song (null) included
    report["summary"]["irm"]["sdr"]["vocals"] = None
    paths = write_report(report, tmp_path / "rewritten")
    assert paths["png"] is not None and paths["png"].stat().st_size > 0


def test_held_out_timbre_songs_are_recorded_as_such_and_go_to_their_own_card_entry(tmp_path, tiny_model):
    for name, meta in (("a", {"generator_version": 3, "timbres": "heldout"}), ("b", None), ("c", {"seed": 1})):
        write_song(tmp_path / name, seconds=1.0)
        if meta is not None:
            (tmp_path / name / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.json").write_text('{"generator_version": 3}')  # synthesized before held-out timbres
    assert [song_timbres(tmp_path / n) for n in "abcd"] == ["heldout", None, None, "train"]
    songs = tmp_path / "songs"
    write_song(songs / "x", seconds=1.5)
    (songs / "x" / "meta.json").write_text(json.dumps({"generator_version": 3, "timbres": "heldout"}))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for suffix in (".onnx", ".json"):
        shutil.copy(tiny_model.with_suffix(suffix), model_dir / f"tiny{suffix}")
    out = tmp_path / "out"
    args = (songs, "--model", model_dir / "tiny.onnx", "--methods", "model", "--out", out, "--update-card")
    result = evaluate(*args)
    assert result.exit_code == 0, result.output
    assert "updated provenance.quality_heldout_timbres" in result.output
    report = json.loads((out / "quality.json").read_text())
    assert report["dataset"]["timbres"] == ["heldout"] and report["dataset"]["songs"]["x"]["timbres"] == "heldout"
    provenance = json.loads((model_dir / "tiny.json").read_text())["provenance"]
    assert provenance["quality_heldout_timbres"]["sdr_db"] == report["summary"]["model"]["sdr"]
    assert "quality" not in provenance  # the figures on the training timbres are left alone
    assert provenance["quality_heldout_timbres"]["spatial_filter"] is None
    filtered = evaluate(*args[:-1], "--spatial-filter")  # the filter asked for on the command line
    assert filtered.exit_code == 0, filtered.output
    params = json.loads((out / "quality.json").read_text())["methods"]["model"]["params"]
    assert params["spatial_filter"] == {"time_constant_s": 10.0, "regularization": 0.001}
    (songs / "x" / "meta.json").unlink()  # not from the synthesizer: the main entry
    assert "updated provenance.quality in" in evaluate(*args).output


def test_cli_without_a_default_model_evaluates_the_baselines(tmp_path, monkeypatch):
    monkeypatch.setattr(separator_module, "DEFAULT_MODEL", tmp_path / "absent.onnx")
    write_song(tmp_path / "songs" / "one")
    result = evaluate(tmp_path / "songs", "--methods", "model,mixture4", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "evaluating the baselines only" in result.output
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert list(report["summary"]) == ["mixture/4"] and report["targets"] is None
    refused = evaluate(tmp_path / "songs", "--update-card", "--out", tmp_path / "out")
    assert refused.exit_code != 0 and "--update-card needs a model" in refused.output
    bad = evaluate(tmp_path / "songs", "--methods", "model,karaoke")
    assert bad.exit_code != 0 and "unknown method(s) karaoke" in bad.output
    (tmp_path / "notes.json").write_text("{not json")
    bad = evaluate(tmp_path / "songs", "--compare-to", tmp_path / "notes.json", "--out", tmp_path / "never")
    assert bad.exit_code != 0 and "notes.json is not a readable quality report" in bad.output
    assert not (tmp_path / "never").exists()  # refused before the run
    (tmp_path / "notes.json").write_text('{"summary": {}}')
    bad = evaluate(tmp_path / "songs", "--compare-to", tmp_path / "notes.json")
    assert bad.exit_code != 0 and "has no per-song results" in bad.output
    bad = evaluate(tmp_path / "songs", "--methods", "mixture4", "--compare-to", tmp_path / "notes.json")
    assert bad.exit_code != 0 and "--compare-to compares models" in bad.output
    # the default model is absent: nothing to compare, but the baselines' run is kept
    (tmp_path / "old.json").write_text((tmp_path / "out" / "quality.json").read_text())
    lost = evaluate(
        tmp_path / "songs",
        "--methods",
        "model,mixture4",
        "--compare-to",
        tmp_path / "old.json",
        "--out",
        tmp_path / "kept",
    )
    assert lost.exit_code != 0 and "no song has all four stems scored by 'model'" in lost.output
    assert json.loads((tmp_path / "kept" / "quality.json").read_text())["summary"]["mixture/4"]


def test_paired_comparison_pairs_the_same_songs_and_stems():
    def report(songs):
        return {"songs": {n: {"model": {"sdr": dict(zip(STEMS, v, strict=True))}} for n, v in songs.items()}}

    new = report({"a": [5.0, 4.0, 3.0, 2.0], "b": [1.0, 1.0, None, 1.0], "c": [9.0, 9.0, 9.0, 9.0]})
    old = report({"a": [4.0, 4.5, 3.0, 1.0], "b": [2.0, 0.0, None, 1.0]})  # no song "c": it is left out
    c = paired_comparison(new, old)
    assert c["vocals"] == {"mean_db": 0.0, "median_db": 0.0, "songs_better": 1, "num_songs": 2}
    assert c["bass"]["num_songs"] == 1 and c["bass"]["songs_better"] == 0  # a silent stem pairs nothing
    assert c["mean"] == {"mean_db": 0.375, "median_db": 0.375, "songs_better": 1, "num_songs": 1}  # only "a" is whole
    assert "| mean | +0.38 | +0.38 | 1 of 1 |" in comparison_markdown(c, "old")
    with pytest.raises(EvaluationError, match="no song has all four stems"):
        paired_comparison(new, report({"z": [1.0, 1.0, 1.0, 1.0]}))


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timbre_transfer_pairs_each_model_across_timbre_sets_and_models_within_each():
    transfer = load_benchmark("timbre_transfer")

    def report(scale):  # two songs; every stem at scale * (1, 2)
        songs = {n: {"model": {"sdr": dict.fromkeys(STEMS, scale * k)}} for n, k in (("a", 1.0), ("b", 2.0))}
        return {"songs": songs, "summary": {"model": {"sdr": {**dict.fromkeys(STEMS, 1.5 * scale), "mean": 0.0}}}}

    models = {"old": (report(4.0), report(3.0)), "new": (report(5.0), report(3.5))}
    result = transfer.transfer(models, [("new", "old")])
    assert result["models"]["old"]["paired_gap"]["mean"]["mean_db"] == pytest.approx(-1.5)  # (-1 - 2) / 2
    pair = result["pairs"][0]
    assert pair["train_timbres"]["mean"]["mean_db"] == pytest.approx(1.5)
    assert pair["heldout_timbres"]["mean"] == {"mean_db": 0.75, "median_db": 0.75, "songs_better": 2, "num_songs": 2}
    assert "| new | old | +1.50 (2/2) | +0.75 (2/2) |" in transfer.markdown(result)
    with pytest.raises(SystemExit, match="'newer', which no --model defines"):
        transfer.transfer(models, [("newer", "old")])


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_real_stems_decodes_a_stem_file_into_a_song_whose_mixture_is_the_stems_sum(tmp_path):
    pytest.importorskip("stempeg", reason="stempeg (installed with museval) ships the example stem file")
    real = load_benchmark("real_stems")
    song_dir = real.decode_song(real.example_stem_file(), tmp_path, trim_s=0.1)
    song = load_song(song_dir)
    assert song.sample_rate == 44100 and song.references.shape[:2] == (4, 2)
    assert 5.5 < song.duration_s < 6.0  # 6.08 s less the encoder priming and 0.1 s at each end
    assert np.allclose(song.references.sum(axis=0), song.mixture, atol=1e-6)
    # the full-scale coding clicks at the cut edges are left out: nothing near full scale in any stem
    assert np.abs(song.references).max() < 0.9
    with pytest.raises(SystemExit, match="less than 1 s of audio"):
        real.decode_song(real.example_stem_file(), tmp_path / "short", trim_s=3.0)


def test_source_shares_find_a_source_where_the_estimates_put_it():
    rng = np.random.default_rng(0)
    guitar, band = (rng.standard_normal((2, 44100)).astype(np.float32) * 0.1 for _ in range(2))
    estimates = np.stack([0.5 * guitar, 0.5 * band, np.zeros_like(band), 0.5 * guitar + 0.5 * band])
    shares = source_shares(estimates, guitar, band, 44100, "other")
    half = 20 * math.log10(0.5)
    assert shares["vocals"] == pytest.approx(half, abs=0.05) and shares["other"] == pytest.approx(half, abs=0.05)
    assert shares["outside_other"] == pytest.approx(half, abs=0.05)  # the band in the drums is not guitar
    assert shares["drums"] < -60 and shares["bass"] < -60


def test_median_shares_and_their_table_take_each_method_and_key_over_the_entries():
    entries = [{"methods": {"model": {"vocals": v, "outside_vocals": -v}}} for v in (-1.0, -3.0, -2.0)]
    summary = median_shares(entries, ["model"], ["vocals", "outside_vocals"])
    assert summary == {"model": {"vocals": -2.0, "outside_vocals": 2.0}}
    assert shares_table(summary, ["vocals", "outside_vocals"]) == [
        "| method | vocals | outside_vocals |",
        "|---|---|---|",
        "| model | -2.00 | 2.00 |",
    ]


def test_presence_tilt_moves_the_1_to_8_khz_band_against_the_rest_and_keeps_the_level():
    contexts = load_benchmark("vocal_contexts")
    rate = 44100
    t = np.arange(rate) / rate
    tones = {hz: np.sin(2 * np.pi * hz * t) for hz in (200.0, 3000.0, 15000.0)}
    x = np.stack([sum(tones.values())] * 2).astype(np.float32)
    for db in (-4.0, 4.0):
        y = contexts.presence_tilted(x, rate, db)
        assert np.mean(y**2) == pytest.approx(np.mean(x**2), rel=1e-4)
        amp = {hz: abs(np.dot(y[0], tone)) / abs(np.dot(x[0], tone)) for hz, tone in tones.items()}
        assert 20 * np.log10(amp[3000.0] / amp[200.0]) == pytest.approx(db, abs=0.05)
        assert amp[15000.0] == pytest.approx(amp[200.0], rel=1e-3)  # outside the band: untouched relative to the lows


def test_reverberated_rings_on_after_the_voice_stops_and_keeps_the_level():
    contexts = load_benchmark("vocal_contexts")
    rate = 44100
    burst = np.zeros((2, rate), np.float32)
    burst[:, : rate // 10] = np.random.default_rng(0).normal(size=(2, rate // 10)) * 0.1
    wet = contexts.reverberated(burst, rate)
    assert np.mean(wet**2) == pytest.approx(np.mean(burst**2), rel=1e-4)
    after = slice(rate // 5, rate // 2)  # 100 to 400 ms after the burst: silence before, a tail now
    assert 10 * np.log10(np.mean(wet[:, after] ** 2) / np.mean(burst**2)) > -30


def test_frame_levels_follow_the_other_signal_and_keep_the_level():
    contexts = load_benchmark("vocal_contexts")
    rate = 44100
    x = np.random.default_rng(0).normal(size=2 * rate).astype(np.float32) * 0.1
    np.testing.assert_allclose(contexts.with_frame_levels_of(x, x), x, atol=1e-6)  # its own levels: unchanged
    ramp = np.linspace(0.1, 1.0, 2 * rate) ** 2  # 40 dB louder at the end than at the start
    y = contexts.with_frame_levels_of(x, x * ramp)
    assert np.mean(y**2) == pytest.approx(np.mean(x**2), rel=1e-4)

    def level_db(a, seconds):
        return 10 * np.log10(np.mean(a[int(seconds * rate) : int((seconds + 0.1) * rate)] ** 2))

    for start in (0.2, 1.0, 1.8):  # the contour of x * ramp, up to the level scaling
        shape = level_db(x * ramp, start) - level_db(x * ramp, 1.0)
        assert level_db(y, start) - level_db(y, 1.0) == pytest.approx(shape, abs=0.5)


def test_real_voice_moves_a_sung_track_to_the_frame_levels_of_its_twin():
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    real_voice = load_benchmark("real_voice")
    rate, rng = real_voice.RATE, np.random.default_rng(0)
    t = np.arange(int(0.4 * rate)) / rate
    clips = []
    for i in range(4):  # spoken syllables: a noisy onset, then a vowel at 120-135 Hz
        vowel = sum(np.sin(2 * np.pi * k * (120 + 5 * i) * t) / k for k in range(1, 20)) * np.hanning(len(t)) ** 0.3
        clips.append(np.concatenate([0.03 * rng.normal(size=int(0.06 * rate)), 0.2 * vowel / np.abs(vowel).max()]))
    speaker = real_voice.sung_speech.Speaker(clips)
    band = 0.1 * rng.normal(size=(2, 6 * rate)).astype(np.float32)
    psola, world = (real_voice.sung_excerpt(speaker, band, -3.0, 1, m) for m in ("psola", "world"))
    moved = real_voice.sung_excerpt(speaker, band, -3.0, 1, "psola", levels_of="world")
    for voice in (psola, world, moved):  # every version at the asked level against the band
        assert 10 * np.log10(np.mean(voice**2) / np.mean(band**2)) == pytest.approx(-3.0, abs=1e-3)
    contexts = load_benchmark("vocal_contexts")

    sounding = contexts.frame_levels(world[0]) > contexts.frame_levels(world[0]).max() * 1e-3

    def contour(x):  # frame levels in dB relative to their mean, where the twin sounds
        levels = contexts.frame_levels(x[0])[sounding]
        return 10 * np.log10(np.maximum(levels, 1e-12) / levels.mean())

    target = contour(world)
    assert np.median(np.abs(contour(moved) - target)) < 0.5 < np.median(np.abs(contour(psola) - target))


def test_vocal_levels_set_the_vocal_against_its_own_accompaniment():
    levels = load_benchmark("vocal_levels")
    rate, n = 8000, 8000
    rng = np.random.default_rng(0)
    vocal, drums, bass, other = (rng.normal(size=(2, n)).astype(np.float32) * g for g in (0.3, 0.2, 0.1, 0.05))
    song = levels.quality.Song("s", rate, vocal + drums + bass + other, np.stack([vocal, drums, bass, other]))
    accompaniment = drums + bass + other
    mono = np.broadcast_to(vocal.mean(axis=0), vocal.shape).astype(np.float32)
    remixed = levels.at_levels(song, mono, (-7.2, 0.0))
    assert list(remixed) == [-7.2, 0.0]
    for level, s in remixed.items():
        assert levels.vocal_db(s.references[0], accompaniment) == pytest.approx(level, abs=1e-4)
        np.testing.assert_array_equal(s.references[0][0], s.references[0][1])  # the given vocal, only scaled
        np.testing.assert_array_equal(s.references[1:], song.references[1:])
        np.testing.assert_allclose(s.mixture, s.references.sum(axis=0), atol=1e-6)
    assert levels.slope([-9.0, -6.0, -3.0], [-8.0, -6.5, -5.0]) == pytest.approx(0.5)


def test_vocal_contexts_pair_one_vocal_with_each_company(tmp_path):
    pytest.importorskip("pyworld", reason="pyworld is not installed: pip install -e '.[train]'")
    contexts = load_benchmark("vocal_contexts")
    rate, n = 8000, 8000
    t = np.arange(n) / rate
    vocal = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32) * 0.2
    drums, bass, other = (np.full((2, n), v, np.float32) for v in (0.01, 0.02, 0.03))
    song = contexts.quality.Song("s", rate, vocal + drums + bass + other, np.stack([vocal, drums, bass, other]))
    band = tmp_path / "band.wav"
    sf.write(band, 0.5 * np.ones((32 * rate, 2), np.float32), rate)
    found = contexts.contexts(song, band)
    assert list(found) == [
        "solo",
        "own drums + bass",
        "own other",
        "own accompaniment",
        "band at the same level",
        "centred, own accompaniment",
        "centred and WORLD-resynthesised, own accompaniment",
        "centred with WORLD's frame levels, own accompaniment",
        "presence -4 dB, own accompaniment",
        "presence +4 dB, own accompaniment",
        "centred + heavy reverb, own accompaniment",
        "centred and WORLD-resynthesised + heavy reverb, own accompaniment",
    ]
    np.testing.assert_array_equal(found["own accompaniment"][1], drums + bass + other)
    np.testing.assert_array_equal(found["presence +4 dB, own accompaniment"][1], drums + bass + other)
    centred_power = np.mean(found["centred, own accompaniment"][0] ** 2)
    for name in (
        "centred and WORLD-resynthesised, own accompaniment",
        "centred with WORLD's frame levels, own accompaniment",
        "centred + heavy reverb, own accompaniment",
        "centred and WORLD-resynthesised + heavy reverb, own accompaniment",
    ):
        assert np.mean(found[name][0] ** 2) == pytest.approx(centred_power, rel=1e-4), name  # sound, not level
    np.testing.assert_array_equal(found["own other"][1], other)
    assert not found["solo"][1].any()
    band_mix = found["band at the same level"][1]  # another company at the accompaniment's level
    assert np.mean(band_mix**2) == pytest.approx(np.mean((drums + bass + other) ** 2), rel=1e-5)
    centred, resynthesised = (
        found["centred, own accompaniment"][0],
        found["centred and WORLD-resynthesised, own accompaniment"][0],
    )
    np.testing.assert_array_equal(centred[0], centred[1])
    np.testing.assert_allclose(centred[0], 0.75 * vocal[0], atol=1e-6)
    np.testing.assert_array_equal(resynthesised[0], resynthesised[1])
    # the vocoder keeps a steady tone's level and pitch without being a copy of it
    middle = slice(n // 4, 3 * n // 4)
    level = np.sqrt(np.mean(resynthesised[0, middle] ** 2) / np.mean(centred[0, middle] ** 2))
    assert 0.5 < level < 2.0 and not np.allclose(resynthesised[0], centred[0], atol=1e-3)
    spectrum = np.abs(np.fft.rfft(resynthesised[0, middle]))
    assert abs(np.argmax(spectrum) * rate / len(spectrum) / 2 - 220) < 10


def test_fit_gap_compares_each_split_with_the_oracle_on_the_same_songs():
    fit = load_benchmark("fit_gap")
    nan = math.nan

    def report(model_by_song, oracle):  # per song the model's four stem SDRs; the oracle at this dB everywhere
        songs = {
            name: {"model": {"sdr": dict(zip(STEMS, sdr, strict=True))}, "irm": {"sdr": dict.fromkeys(STEMS, oracle)}}
            for name, sdr in model_by_song.items()
        }
        summary = {m: {"sdr": {**dict.fromkeys(STEMS, 0.0), "mean": 0.0}} for m in ("model", "irm")}
        return {"songs": songs, "summary": summary}

    # training songs: 2 dB below an oracle at 8 dB (a silent vocal left out); test songs: 3 dB below one at 10 dB
    train = report({"a": [nan, 6.0, 6.0, 6.0], "b": [5.0, 7.0, 5.0, 7.0]}, 8.0)
    test = report({"c": [7.0, 7.0, 7.0, 7.0], "d": [6.0, 8.0, 8.0, 6.0]}, 10.0)
    assert fit.to_oracle(train, "model") == {"median": -2.0, "songs": {"a": -2.0, "b": -2.0}}
    summary = fit.summarize({"train": train, "test": test}, ["model", "irm"])
    assert summary["model"]["train"]["to_oracle"] == -2.0
    assert summary["model"]["test"]["to_oracle"] == -3.0
    assert summary["model"]["fit_gap_db"] == 1.0  # better, relative to the oracle, on what it trained on
    assert summary["model"]["fit_gap_90_db"] == [1.0, 1.0]
    assert "fit_gap_db" not in summary["irm"]
    paths = [Path(f"song{i}") for i in range(10)]
    assert fit.spread(paths, 4) == [paths[0], paths[3], paths[6], paths[9]]
    assert fit.spread(paths, 12) == paths
