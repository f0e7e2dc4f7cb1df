"""Training tools: model contract properties, STFT framing, ONNX export, data loading and augmentation, resuming.

Needs torch (the optional `train` extra); skipped without it. Uses tiny model configurations and made-up songs, so
it runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch", reason="torch is not installed (install the `train` extra to test training)")
pytest.importorskip("onnx", reason="onnx is not installed (needed by torch.onnx.export)")

from stembridge.engine.model_card import load_card  # noqa: E402
from stembridge.engine.separator import StreamingSeparator  # noqa: E402
from stembridge.engine.stft import StreamingSTFT  # noqa: E402
from stembridge.engine.training import dataset, export, train  # noqa: E402
from stembridge.engine.training.model import (  # noqa: E402
    ModelConfig,
    SeparatorModel,
    band_centers,
    default_band_layout,
    interpolation_matrix,
    istft,
    reframed,
    stft,
    stft_frames,
    widened,
)

TINY = ModelConfig(n_fft=256, hop_size=64, hidden=16, num_layers=2)
STEMS = ("vocals", "drums", "bass", "other")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_model() -> SeparatorModel:
    model = SeparatorModel(TINY).eval()
    with torch.no_grad():  # make the decoder matter, so that mask properties are not trivially met
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.5)
    return model


def test_band_layout_tiles_the_spectrum_and_interpolates_linearly():
    layout = default_band_layout(513)
    centers = band_centers(layout)
    assert centers[0] == 0 and centers[-1] == 512 and len(centers) == 89
    assert np.all(np.diff(centers) >= 1)
    m = interpolation_matrix(layout)
    assert m.shape == (89, 513)
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-6)
    ramp = np.arange(513, dtype=np.float32)  # a linear function is reproduced exactly from its band samples
    np.testing.assert_allclose(centers.astype(np.float32) @ m, ramp, atol=1e-3)
    model = SeparatorModel(ModelConfig())
    bands = torch.randn(3, 89)
    torch.testing.assert_close(model.to_bins(bands), bands @ torch.from_numpy(m), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("window", "hop"), [("hann", 64), ("vorbis", 128)])
def test_training_stft_matches_host_framing_and_inverts(window, hop):
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((3, hop * 40)).astype(np.float32)
    host = StreamingSTFT(256, hop, 3, 64, window).analyse(audio)  # (3, 40, 129)
    spec = stft(torch.from_numpy(audio), 256, hop, window)
    np.testing.assert_allclose(spec.numpy(), host, atol=2e-4)
    frames = torch.tensor([0, 5, 39])
    torch.testing.assert_close(stft_frames(torch.from_numpy(audio), 256, hop, frames, window), spec[:, frames])
    back = istft(spec, 256, hop, window).numpy()
    n = back.shape[-1] - (256 - hop)  # the tail needs frames that come later
    np.testing.assert_allclose(back[:, :n], audio[:, :n], atol=1e-5)


def test_masks_are_causal_sum_to_one_and_ignore_mix_level():
    model = tiny_model()
    mag = torch.rand(2, 30, 2, TINY.num_bins) ** 4 * 50
    h, lvl = model.initial_state(2)
    with torch.no_grad():
        masks, _, _ = model(mag, h, lvl)
        assert masks.shape == (2, 30, 4, 2, TINY.num_bins)
        torch.testing.assert_close(masks.sum(dim=2), torch.ones(2, 30, 2, TINY.num_bins))
        assert float(masks.std()) > 0.01  # the masks really vary
        changed = mag.clone()
        changed[:, 17:] = torch.rand(2, 13, 2, TINY.num_bins) * 10
        masks2, _, _ = model(changed, h, lvl)
        assert torch.equal(masks2[:, :17], masks[:, :17])  # no look-ahead
        assert not torch.allclose(masks2[:, 17:], masks[:, 17:])
        louder, _, _ = model(mag * 30.0, h, lvl)
        # only the first frame's onset cue (level change from the initial state) may differ
        torch.testing.assert_close(louder[:, 1:], masks[:, 1:], atol=1e-4, rtol=0)


def test_streaming_with_carried_state_equals_one_pass_and_head_subset_matches():
    model = tiny_model()
    mag = torch.rand(3, 25, 2, TINY.num_bins) * 20
    with torch.no_grad():
        full, h_full, lvl_full = model(mag, *model.initial_state(3))
        h, lvl = model.initial_state(3)
        parts = []
        for a, b in ((0, 1), (1, 8), (8, 9), (9, 25)):
            out, h, lvl = model(mag[:, a:b], h, lvl)
            parts.append(out)
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
        torch.testing.assert_close(h, h_full)
        frames = torch.tensor([2, 3, 11, 24])
        subset, _, _ = model(mag, *model.initial_state(3), frames)
        torch.testing.assert_close(subset, full[:, frames], atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", [2, 3])
def test_widened_weights_compute_the_same_masks_and_can_grow_apart(factor):
    narrow = tiny_model()
    wide = SeparatorModel(replace(TINY, hidden=TINY.hidden * factor))
    wide.load_state_dict(widened(narrow.state_dict(), TINY, factor, seed=3))
    mag = torch.rand(2, 30, 2, TINY.num_bins) * 4.0
    narrow_out = narrow(mag, *narrow.initial_state(2))
    wide_out = wide(mag, *wide.initial_state(2))
    assert torch.allclose(narrow_out[0], wide_out[0], atol=1e-5)
    h = TINY.hidden
    for c in range(factor):  # every copy of a unit carries the unit's state
        assert torch.allclose(wide_out[1][..., c * h : (c + 1) * h], narrow_out[1], atol=1e-5)
    # the copies' outgoing weights differ, so their gradients differ and training can pull them apart
    wide_out[0][:, :, 0].sum().backward()
    grad = wide.encoder[0].weight.grad
    assert not torch.allclose(grad[:h], grad[h : 2 * h], atol=1e-6)


def test_bidirectional_model_starts_as_its_causal_model_and_then_reads_the_future():
    causal = tiny_model()
    bidi = SeparatorModel(replace(TINY, bidirectional=True)).eval()
    params = {k for k, _ in bidi.named_parameters()}
    assert {k for k, _ in causal.named_parameters()} < params  # the causal weights all fit
    bidi.load_state_dict({**bidi.state_dict(), **causal.state_dict()})
    mag = torch.rand(2, 30, 2, TINY.num_bins) * 4.0
    torch.testing.assert_close(bidi(mag, *bidi.initial_state(2))[0], causal(mag, *causal.initial_state(2))[0])
    with torch.no_grad():  # once the backward layer counts, a frame's masks depend on frames after it
        bidi.backward_proj.weight.normal_(0.0, 0.5)
        later = mag.clone()
        later[:, 20:] *= 3.0
        before = bidi(mag, *bidi.initial_state(2))[0][:, :20]
        after = bidi(later, *bidi.initial_state(2))[0][:, :20]
    assert not torch.allclose(before, after, atol=1e-4)


def test_bidirectional_export_meets_the_lookahead_contract(tmp_path):
    from stembridge.engine.lookahead import LookaheadModel

    model = SeparatorModel(replace(TINY, bidirectional=True, window="vorbis")).eval()
    with torch.no_grad():
        model.backward_proj.weight.normal_(0.0, 0.5)
        model.decoder.weight.normal_(0.0, 0.5)
    out = tmp_path / "bidi.onnx"
    card = export.export_lookahead(model, out, {"training_data": "test"}, segment_frames=48, context_frames=8)
    assert card["kind"] == "lookahead" and card["window"] == "vorbis" and card["mask"] == "direct"
    assert card["provenance"]["onnx_max_abs_error_vs_torch"] <= 1e-4
    la = LookaheadModel(out)
    assert la.card.num_bins == TINY.num_bins and la.card.kept_frames == 32
    # the engine's tiled masks are the torch model's on each tile's segment, and sum to 1 over stems
    audio = (np.random.default_rng(0).standard_normal((2, TINY.hop_size * 90)) * 0.1).astype(np.float32)
    masks = la.masks(audio, 0, la.num_frames(audio.shape[1]))
    np.testing.assert_allclose(masks.sum(axis=0), 1.0, atol=1e-5)
    seg = np.abs(la.stft(audio, 32 - 8, 32 - 8 + 48)).astype(np.float32)  # tile 1's segment
    with torch.no_grad():
        want = model(torch.from_numpy(seg).permute(1, 0, 2)[None], *model.initial_state(1))[0][0]
    np.testing.assert_allclose(masks[:, :, 32:64], want.permute(1, 2, 0, 3)[:, :, 8:40].numpy(), atol=1e-4)
    # a window reaching before the track's start runs on its frames inside only ("edges": "crop"), not on zeros
    assert la.card.edges == "crop"
    seg = np.abs(la.stft(audio, 0, 40)).astype(np.float32)  # tile 0's segment [-8, 40), cropped to the track
    with torch.no_grad():
        want = model(torch.from_numpy(seg).permute(1, 0, 2)[None], *model.initial_state(1))[0][0]
    np.testing.assert_allclose(masks[:, :, :32], want.permute(1, 2, 0, 3)[:, :, :32].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="takes a bidirectional model"):
        export.export_lookahead(tiny_model(), tmp_path / "causal.onnx")


def test_reframed_config_keeps_band_frequencies_and_weight_shapes():
    base = ModelConfig(n_fft=1024, hop_size=512)
    longer = reframed(base, 2048)
    assert longer.num_bands == base.num_bands == 89
    np.testing.assert_allclose(band_centers(longer.layout) / 2048, band_centers(base.layout) / 1024)
    shapes = {k: v.shape for k, v in SeparatorModel(base).named_parameters()}
    assert {k: v.shape for k, v in SeparatorModel(longer).named_parameters()} == shapes
    with pytest.raises(ValueError, match="n_fft 1536 cannot keep the bands"):
        reframed(base, 1536)


def test_export_matches_torch_and_runs_in_the_engine(tmp_path):
    model = tiny_model()
    out = tmp_path / "tiny_trained.onnx"
    card = export.export_model(model, out, {"training_data": "test", "trained_steps": 3}, timing=False)
    assert card["provenance"]["onnx_max_abs_error_vs_torch"] <= 1e-4
    assert "quality" in card["provenance"]
    loaded = load_card(out)
    assert loaded.latency_samples == TINY.n_fft - TINY.hop_size and loaded.residual_stem == "other"
    assert [s.input for s in loaded.states] == ["h_in", "lvl_in"]
    assert loaded.spatial_filter == {"time_constant_s": 10.0, "regularization": 0.001}  # a stereo model asks for it
    # an existing card's quality figures (both entries) survive a re-export
    data = json.loads(out.with_suffix(".json").read_text())
    data["provenance"]["quality"] = {"sdr_mean": 1.5}
    data["provenance"]["quality_heldout_timbres"] = {"sdr_mean": 1.2}
    out.with_suffix(".json").write_text(json.dumps(data))
    card = export.export_model(model, out, {"trained_steps": 3}, timing=False)
    assert card["provenance"]["quality"] == {"sdr_mean": 1.5}
    card = export.export_model(model, out, {"trained_steps": 4}, timing=False)  # new weights: figures marked stale
    assert card["provenance"]["quality"] == {"sdr_mean": 1.5, "trained_steps": 3}
    assert card["provenance"]["quality_heldout_timbres"] == {"sdr_mean": 1.2, "trained_steps": 3}
    plain = export.export_model(
        model, tmp_path / "plain.onnx", {"trained_steps": 4}, timing=False, spatial_filter=False
    )
    assert "spatial_filter" not in plain and load_card(tmp_path / "plain.onnx").spatial_filter is None
    # the engine runs it, batched, and the stems sum to the (latency-aligned) input
    sep = StreamingSeparator(out, num_streams=2)
    audio = (np.random.default_rng(0).standard_normal((2, 2, TINY.hop_size * 20)) * 0.1).astype(np.float32)
    stems = sep.process(audio)
    assert stems.shape == (2, 4, 2, audio.shape[-1])
    lat = sep.latency_samples
    np.testing.assert_allclose(stems.sum(axis=1)[..., lat:], audio[..., :-lat], atol=1e-5)


def test_export_refuses_a_graph_that_differs_from_torch(tmp_path, monkeypatch):
    model = tiny_model()
    real_export = export.export_onnx

    def broken_export(m, path):
        real_export(m, path)
        with torch.no_grad():  # the graph was written: now torch's weights no longer match it
            m.decoder.bias.add_(torch.randn_like(m.decoder.bias))

    monkeypatch.setattr(export, "export_onnx", broken_export)
    with pytest.raises(AssertionError, match="differs from torch"):
        export.export_model(model, tmp_path / "bad.onnx", timing=False)
    assert not (tmp_path / "bad.onnx").exists()


def write_song(root: Path, split: str, name: str, seconds: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / split / name
    folder.mkdir(parents=True)
    n = int(seconds * 44100)
    t = np.arange(n) / 44100.0
    stems = {
        "vocals": np.sin(2 * np.pi * (220 + 40 * seed) * t) * 0.2,
        "drums": (rng.random(n) < 0.001) * rng.standard_normal(n) * 0.5,
        "bass": np.sin(2 * np.pi * (55 + 5 * seed) * t) * 0.3,
        "other": rng.standard_normal(n) * 0.02,
    }
    out = {}
    for k, v in stems.items():
        stereo = np.stack([v, 0.5 * v]).T
        pcm = np.clip(np.round(stereo * 32768), -32768, 32767).astype(np.int16)
        sf.write(folder / f"{k}.wav", pcm, 44100, subtype="PCM_16")
        out[k] = pcm
    return out


def test_song_bank_memory_maps_stems_and_rescans(tmp_path):
    written = write_song(tmp_path, "train", "song000002", 1.0, 2)
    bank = dataset.SongBank(tmp_path, "train")
    assert len(bank) == 1
    assert isinstance(bank.songs[0].stems["bass"], np.memmap)
    np.testing.assert_array_equal(np.asarray(bank.songs[0].stems["bass"]), written["bass"])
    (tmp_path / "train" / ".song000003.tmp").mkdir()  # incomplete songs are ignored
    write_song(tmp_path, "train", "song000004", 1.0, 4)
    assert bank.rescan() == 1 and len(bank) == 2
    seg = bank.songs[0].segment("vocals", -10, 100)
    assert seg.shape == (2, 100) and np.all(seg[:, :10] == 0)
    np.testing.assert_allclose(seg[:, 10:], written["vocals"][:90].T / 32768.0)


def test_sampler_rebuilds_the_mixture_from_augmented_stems(tmp_path):
    for i in range(3):
        write_song(tmp_path, "train", f"song{i:06d}", 1.5, i)
    bank = dataset.SongBank(tmp_path, "train")
    sampler = dataset.SegmentSampler(bank, 22050, seed=3)
    mix, stems = sampler.batch(6)
    assert mix.shape == (6, 2, 22050) and stems.shape == (6, 4, 2, 22050)
    np.testing.assert_allclose(mix, stems.sum(axis=1), atol=1e-6)
    rms_db = 20 * np.log10(np.sqrt((mix**2).mean(axis=(1, 2))))
    lo, hi = dataset.Augment().mix_level_db
    assert np.all(rms_db > lo - 0.1) and np.all(rms_db < hi + 0.1)
    # without augmentation an example is an aligned excerpt of one song: stems here count samples, so the first
    # value of each stem gives its offset in the song
    counting = tmp_path / "count" / "train" / "song000000"
    counting.mkdir(parents=True)
    index = np.arange(30000, dtype=np.int16)
    for k, stem in enumerate(STEMS):
        sf.write(counting / f"{stem}.wav", np.stack([index, -index]).T + k, 44100, subtype="PCM_16")
    plain = dataset.SegmentSampler(dataset.SongBank(tmp_path / "count", "train"), 4000, dataset.Augment.none(), seed=3)
    for _ in range(5):
        example = np.round(plain.example() * 32768).astype(np.int32)  # (stems, channels, n)
        start = example[0, 0, 0]
        for k in range(4):
            np.testing.assert_array_equal(example[k, 0], np.arange(start, start + 4000) + k)
            np.testing.assert_array_equal(example[k, 1], -np.arange(start, start + 4000) + k)


def test_prefetcher_hands_over_fresh_batches_through_shared_slots(tmp_path):
    for i in range(3):
        write_song(tmp_path, "train", f"song{i:06d}", 1.5, i)
    prefetch = dataset.BatchPrefetcher(tmp_path, "train", 8000, batch_size=3, seed=5, depth=2)
    try:
        batches = [prefetch.get(timeout=120) for _ in range(5)]  # more batches than slots: slots are reused
    finally:
        prefetch.close()
    assert not prefetch.process.is_alive()
    for mix, stems in batches:
        assert mix.shape == (3, 2, 8000) and stems.shape == (3, 4, 2, 8000)
        np.testing.assert_allclose(mix, stems.sum(axis=1), atol=1e-6)
    # the worker draws what a sampler with the same seed draws, in order, and a returned batch is the caller's copy
    expected = dataset.SegmentSampler(dataset.SongBank(tmp_path, "train"), 8000, seed=5)
    for mix, stems in batches:
        want_mix, want_stems = expected.batch(3)
        np.testing.assert_array_equal(stems, want_stems)
        np.testing.assert_array_equal(mix, want_mix)


def test_augmentation_presets_name_their_settings():
    assert dataset.Augment.preset("default") == dataset.Augment()
    timbre = dataset.Augment.preset("timbre")
    assert timbre.eq_db > dataset.Augment().eq_db and timbre.resample_range > dataset.Augment().resample_range
    assert timbre.gain_db == dataset.Augment().gain_db  # only the timbre changes are stronger
    assert dataset.Augment.preset("rest").vocal_offset_db == (-24.0, 0.0)  # what the stems model hears: less voice
    with pytest.raises(ValueError, match="unknown augmentation preset 'loud'"):
        dataset.Augment.preset("loud")


def test_coherent_presets_remix_fewer_examples_across_songs(tmp_path):
    # two songs whose stems count samples from 10000 * song + stem index: an example's first values tell which song
    # and offset each stem came from
    for j in range(2):
        song = tmp_path / "train" / f"song{j:06d}"
        song.mkdir(parents=True)
        index = np.arange(8000, dtype=np.int16) + 10000 * j
        for k, stem in enumerate(STEMS):
            sf.write(song / f"{stem}.wav", np.stack([index, index]).T + k, 44100, subtype="PCM_16")
    bank = dataset.SongBank(tmp_path, "train")

    def whole(name):  # how many of 200 examples take all four stems from one song at one offset
        aug = replace(dataset.Augment.none(), p_remix=dataset.Augment.preset(name).p_remix)
        sampler = dataset.SegmentSampler(bank, 1000, aug, seed=1)
        firsts = [np.round(sampler.example()[:, 0, 0] * 32768).astype(int) - np.arange(4) for _ in range(200)]
        return sum(len(set(first)) == 1 for first in firsts)

    assert whole("whole_songs") == 200
    assert 140 < whole("coherent") < 180  # 80 % expected
    assert 60 < whole("default") < 100  # 40 % expected


def test_quiet_vocals_turn_only_the_vocal_stem_down(tmp_path):
    for i in range(3):
        write_song(tmp_path, "train", f"song{i:06d}", 1.5, i)
    bank = dataset.SongBank(tmp_path, "train")
    plain = replace(dataset.Augment.none(), mix_level_db=(-8.0, -8.0))  # stems as the songs hold them
    quiet = replace(plain, vocal_offset_db=dataset.Augment.preset("quiet_vocals").vocal_offset_db)
    ratios = []
    for aug in (plain, quiet):
        examples = [dataset.SegmentSampler(bank, 8000, aug, seed=s).example() for s in range(40)]
        power = np.array([(e**2).mean(axis=(1, 2)) for e in examples])  # (examples, stems)
        ratios.append(10 * np.log10(power / power[:, 3:4]))  # each stem against "other"
    change = ratios[1] - ratios[0]  # the same draws otherwise: the same segments
    lo, hi = dataset.Augment.preset("quiet_vocals").vocal_offset_db
    assert np.all(change[:, 0] >= lo - 1e-3) and np.all(change[:, 0] <= hi + 1e-3)
    assert np.mean(change[:, 0]) == pytest.approx((lo + hi) / 2, abs=1.0)
    np.testing.assert_allclose(change[:, 1:], 0.0, atol=1e-3)


def test_resampling_and_eq_keep_length_and_shift_pitch():
    rng = np.random.default_rng(0)
    n = 44100
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(3 * n) / 44100.0).astype(np.float32)
    pcm = np.round(np.stack([tone, tone]).T * 16000).astype(np.int16)
    song = dataset.Song("s", {k: pcm for k in STEMS}, pcm.shape[0])

    class Bank:
        sample_rate = 44100

    aug = dataset.Augment(p_eq=0.0)
    sampler = dataset.SegmentSampler(Bank(), n, aug, seed=0)  # type: ignore[arg-type]
    y = sampler._draw(song, "vocals", n, 1.05)
    assert y.shape == (2, n)
    peak_hz = np.argmax(np.abs(np.fft.rfft(y[0]))) * 44100 / n
    assert abs(peak_hz - 1050.0) < 8.0  # pitch goes up with the factor
    curve = dataset.random_eq_db(np.array([20.0, 1000.0, 20000.0]), rng, 6.0)
    assert np.all(np.abs(curve) < 4 * 6.0)


def test_training_steps_lower_the_loss_and_resume(tmp_path):
    for i in range(3):
        write_song(tmp_path / "data", "train", f"song{i:06d}", 1.2, i)
    write_song(tmp_path / "data", "validation", "song000001", 1.2, 7)
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--run", str(run), "--hidden", "16", "--batch", "2"]
    common += ["--segment-seconds", "0.5", "--workers", "0", "--init", str(tmp_path / "none.pt")]
    common += ["--log-every", "1", "--validate-every", "4", "--val-seconds", "1"]
    train.main([*common, "--steps", "4"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "validation" and r["sdr_mean"] is not None for r in log)
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 4
    train.main([*common, "--steps", "6"])  # resumes from last.pt
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "resume" and r["step"] == 4 for r in log)
    assert max(r["step"] for r in log if r["kind"] == "train") == 6
    fp16 = torch.load(run / "last_fp16.pt", weights_only=True)
    assert fp16["step"] == 6 and all(v.dtype == torch.float16 for v in fp16["model"].values() if v.is_floating_point())
    model = export.load_weights(run / "last_fp16.pt")
    assert model.config.hidden == 16

    # the weight average trails the weights, survives the resume, and is what export takes
    full = torch.load(run / "last.pt", weights_only=True)
    name = next(k for k in full["model"] if k.endswith("weight_ih_l0"))
    assert full["ema_decay"] == 0.999 and not torch.equal(full["ema"][name], full["model"][name])
    assert any(r["kind"] == "validation" and r["weights"] == "average" and "raw_sdr_mean" in r for r in log)
    assert torch.equal(export.load_weights(run / "last.pt").state_dict()[name], full["ema"][name])
    assert torch.equal(export.load_weights(run / "last.pt", average=False).state_dict()[name], full["model"][name])
    assert torch.allclose(model.state_dict()[name], full["ema"][name], atol=1e-3)  # the fp16 copy has it too

    # a warm start into a new run with another STFT framing keeps the weights and records how it began
    warm = tmp_path / "warm"
    args = [str(warm) if a == str(run) else a for a in common]  # the last --init wins
    train.main([*args, "--init", str(run / "last_fp16.pt"), "--hop-size", "512", "--window", "vorbis", "--steps", "7"])
    ckpt = torch.load(warm / "last.pt", weights_only=False)
    assert ckpt["config"]["hop_size"] == 512 and ckpt["config"]["window"] == "vorbis" and ckpt["step"] == 7
    assert "step 6: warm start from" in ckpt["provenance"]["history"][0]

    # a warm start on a longer STFT keeps the bands at their frequencies, so every parameter carries as it was
    longer = tmp_path / "longer"
    args = [str(longer) if a == str(run) else a for a in common]
    train.main([*args, "--init", str(run / "last.pt"), "--n-fft", "2048", "--hop-size", "512", "--steps", "6"])
    ckpt = torch.load(longer / "last.pt", weights_only=False)
    assert ckpt["config"]["n_fft"] == 2048 and ckpt["config"]["hop_size"] == 512 and ckpt["step"] == 6
    assert ckpt["config"]["band_layout"] == [[2, 32], [4, 128], [8, 256], [16, 512], [32, 1024]]
    source = torch.load(run / "last.pt", weights_only=False)["ema"]
    assert torch.equal(ckpt["model"]["gru.weight_hh_l1"], source["gru.weight_hh_l1"])  # the average, unchanged
    assert ckpt["model"]["analysis"].shape == (1025, 89) and ckpt["optimizer"]["state"] == {}
    assert "(n_fft 1024, hop 256, hann window) with n_fft 2048, hop 512" in ckpt["provenance"]["history"][0]

    # a widening warm start doubles the GRU, with a fresh optimizer that warms up again
    wide = tmp_path / "wide"
    args = [str(wide) if a == str(run) else a for a in common]
    train.main([*args, "--init", str(run / "last.pt"), "--widen", "2", "--warmup", "100", "--steps", "7"])
    ckpt = torch.load(wide / "last.pt", weights_only=False)
    assert ckpt["config"]["hidden"] == 32 and ckpt["step"] == 7 and ckpt["lr_origin"] == 6
    assert [e[:20] for e in ckpt["provenance"]["history"][-2:]] == ["step 6: widened from", "step 6: weight avera"]
    lrs = [r["lr"] for r in (json.loads(line) for line in (wide / "log.jsonl").read_text().splitlines()) if "lr" in r]
    assert lrs == [pytest.approx(1e-3 / 100)]  # the first warm-up step, not the schedule's step 7

    # a warm start with another loss records the change, and checkpoints name their loss
    l1_run = tmp_path / "l1"
    args = [str(l1_run) if a == str(run) else a for a in common]
    voice = tmp_path / "real" / "vocals" / "speaker"  # a pool of real recordings: here, one clip of one voice
    voice.mkdir(parents=True)
    sf.write(voice / "a.wav", np.sin(np.arange(22050) * 0.05) * 0.3, 44100)
    train.main(
        [*args, "--init", str(run / "last_fp16.pt"), "--loss", "l1", "--augment", "timbre"]
        + ["--spatial-filter", "on", "--validate-every", "1", "--steps", "7"]
        + ["--real", str(tmp_path / "real"), "--p-real", "0.5"]
    )
    ckpt = torch.load(l1_run / "last.pt", weights_only=False)
    assert ckpt["loss"] == "l1" and torch.load(l1_run / "last_fp16.pt", weights_only=True)["loss"] == "l1"
    assert ckpt["augment"] == "timbre" and torch.load(l1_run / "last_fp16.pt", weights_only=True)["augment"] == "timbre"
    assert ckpt["provenance"]["history"][-4:] == [
        "step 6: loss sdr changed to l1 (--loss)",
        f"step 6: real recordings none changed to {tmp_path / 'real'} (p 0.5) (--real)",
        "step 6: augmentation default changed to timbre (--augment)",
        "step 6: training through the spatial filter off changed to on (--spatial-filter)",
    ]
    assert "with probability 0.5 per stem, real recordings from" in ckpt["provenance"]["training_data"]
    assert "vocals: 1 sources" in ckpt["provenance"]["training_data"]
    assert ckpt["spatial_filter"] == "on"
    # resumed from its fp16 copy with the same settings, a run notes no change
    again = tmp_path / "again"
    train.main(
        [str(again) if a == str(run) else a for a in common]
        + ["--init", str(l1_run / "last_fp16.pt"), "--loss", "l1", "--augment", "timbre", "--spatial-filter", "on"]
        + ["--real", str(tmp_path / "real"), "--p-real", "0.5", "--steps", "8"]
    )
    history = torch.load(again / "last.pt", weights_only=False)["provenance"]["history"]
    assert history == ckpt["provenance"]["history"]
    log = [json.loads(line) for line in (l1_run / "log.jsonl").read_text().splitlines()]
    assert [r["spatial_filter"] for r in log if r["kind"] == "validation"] == [True]
    assert all(np.isfinite(r["loss"]) for r in log if r["kind"] == "train")
    assert '"eq_db": 12.0' in ckpt["provenance"]["training_data"]  # the card says which augmentations trained it

    # a fixed batch is fitted: the loss falls clearly within a few dozen steps
    model = SeparatorModel(ModelConfig(hidden=32))
    bank = dataset.SongBank(tmp_path / "data", "train")
    mix, stems = dataset.SegmentSampler(bank, 11025, seed=0).batch(2)
    mix, stems = torch.from_numpy(mix), torch.from_numpy(stems)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = train.separation_loss(model, mix, stems, frame_fraction=1.0, kind="l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


class FixedMasks(torch.nn.Module):
    """Stands in for the model in ``separation_loss``: the same mask for every stem, frame and bin."""

    def __init__(self, config: ModelConfig, value: float) -> None:
        super().__init__()
        self.config, self.value = config, value

    def initial_state(self, batch: int):
        return None, None

    def forward(self, mag, h, lvl, frames):
        b, _, c, f = mag.shape
        return torch.full((b, len(frames), len(self.config.stems), c, f), self.value), None, None


def test_sdr_loss_is_the_negative_sdr_of_the_stems_that_sound_and_ignores_level():
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.standard_normal((3, 2, 4096)).astype(np.float32)) * 0.1
    stems = torch.zeros(2, 4, 2, 4096)
    stems[0, 0] = noise[0]  # example 0: only the vocal sounds; the mask of 1/4 gives it a quarter of the mix
    stems[1, 0], stems[1, 1] = noise[1], noise[2] * 10 ** (-50 / 20)  # example 1: drums 50 dB down, below the floor
    model = FixedMasks(TINY, 0.25)
    vocal = 10 * np.log10(9 / 16)  # error (3/4)^2 of its energy (the drums' leakage and the floor: < 0.001 dB)
    for gain in (1.0, 1000.0):
        loss, per_stem = train.separation_loss(model, stems.sum(1) * gain, stems * gain, kind="sdr")
        assert per_stem == pytest.approx({"vocals": vocal}, abs=1e-3)  # the silent stems are left out
        assert float(loss) == pytest.approx(vocal, abs=1e-3)
    # four equal stems and masks of 1/4: a perfect estimate, scored at the floor
    equal = noise[:1, None].expand(1, 4, 2, 4096) * 1.0
    loss, per_stem = train.separation_loss(model, equal.sum(1), equal, kind="sdr")
    assert float(loss) == pytest.approx(10 * np.log10(1e-4 * 16 / (1 + 1e-4 * 16)), abs=1e-3)
    assert sorted(per_stem) == sorted(STEMS)
    with pytest.raises(ValueError, match="unknown loss 'sdri'"):
        train.separation_loss(model, equal.sum(1), equal, kind="sdri")


def test_sdr_loss_counts_only_the_stems_asked_for():
    model = tiny_model()
    rng = np.random.default_rng(5)
    stems = torch.from_numpy((rng.standard_normal((2, 4, 2, TINY.hop_size * 40)) * 0.1).astype(np.float32))
    mix = stems.sum(dim=1)
    weights = torch.tensor([0.0, 1.0, 1.0, 0.0])  # drums and bass
    torch.manual_seed(1)
    loss, figures = train.separation_loss(model, mix, stems, 1.0, stem_weights=weights)
    assert set(figures) == {"drums", "bass"}
    other_refs = stems.clone()
    other_refs[:, 0] *= 0.5  # another vocal reference (same mix): the drums and bass loss does not see it
    torch.manual_seed(1)
    assert torch.allclose(train.separation_loss(model, mix, other_refs, 1.0, stem_weights=weights)[0], loss)
    torch.manual_seed(1)
    assert not torch.allclose(train.separation_loss(model, mix, other_refs, 1.0)[0], loss)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    for i in range(2):
        write_song(tmp_path / "data", "train", f"song{i:06d}", 1.2, i)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "stembridge.engine.training.train",
        "--data",
        str(tmp_path / "data"),
        "--run",
        str(run),
    ]
    cmd += ["--hidden", "16", "--batch", "2", "--segment-seconds", "0.5", "--init", str(tmp_path / "none.pt")]
    cmd += ["--log-every", "1", "--checkpoint-minutes", "100"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        log = run / "log.jsonl"
        while time.monotonic() < deadline and not (log.exists() and '"kind": "train"' in log.read_text()):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    sig = next(r for r in records if r["kind"] == "signal")
    assert sig["signal"] == "SIGTERM"
    last = records[-1]
    assert last["kind"] == "checkpoint" and last["step"] >= 1
    assert torch.load(run / "last.pt", weights_only=False)["step"] == last["step"]


def panned_spectra(rng: np.random.Generator, frames: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """A stereo mix of four sources panned apart, complex64 (2, frames, bins), and masks float32
    (frames, 4, 2, bins) that sum to 1 over the sources (each source's share of the mix per channel, smeared)."""
    pans = np.array([[1.0, 0.3], [0.4, 1.0], [0.8, 0.8], [1.0, 0.6]], dtype=np.float32)
    src = (rng.standard_normal((4, frames, bins)) + 1j * rng.standard_normal((4, frames, bins))).astype(np.complex64)
    src *= rng.uniform(0.0, 2.0, (4, 1, bins)).astype(np.float32)
    images = pans[:, :, None, None] * src[:, None]  # (4, 2, frames, bins)
    mix = images.sum(axis=0)
    share = np.abs(images).transpose(2, 0, 1, 3) + 0.3 * rng.uniform(size=(frames, 4, 2, bins)).astype(np.float32)
    return mix, (share / share.sum(axis=1, keepdims=True)).astype(np.float32)


def test_torch_spatial_filter_matches_the_engine_and_has_finite_gradients():
    from stembridge.engine.spatial import SpatialWiener
    from stembridge.engine.training.spatial_filter import frame_decay, spatial_estimates

    rng = np.random.default_rng(3)
    frames, bins = 400, 33  # more frames than one closed-form run (159 at 0.5 s)
    mix, masks = panned_spectra(rng, frames, bins)
    engine = SpatialWiener(1, 4, bins, hop_size=512, sample_rate=44100, time_constant_s=0.5, regularization=1e-3)
    expected = engine.apply(mix[None], masks[None], slice(0, 4))[0]  # (4, 2, frames, bins)
    decay = frame_decay(0.5, 512, 44100)
    assert decay == pytest.approx(engine.decay)
    x = torch.from_numpy(mix).permute(1, 0, 2)[None]  # (1, frames, 2, bins)
    m = torch.from_numpy(masks)[None].requires_grad_(True)
    est_re, est_im = spatial_estimates(x.real, x.imag, m, decay, 1e-3)
    got = torch.complex(est_re, est_im)[0].permute(1, 2, 0, 3).detach().numpy()
    scale = np.abs(mix).max()
    assert np.abs(got - expected).max() < 1e-4 * scale
    assert np.abs(got - masks.transpose(1, 2, 0, 3) * mix[None]).max() > 0.05 * scale  # it is not the masks
    # digital silence in part of the mix and in whole stems keeps the loss's gradient finite
    x = x.clone()
    x[:, :10] = 0
    x[:, 200:] = 0
    m = torch.from_numpy(masks)[None].clone()
    m[:, :, 1] = 0
    m = (m / m.sum(dim=2, keepdim=True)).requires_grad_(True)
    est_re, est_im = spatial_estimates(x.real, x.imag, m, decay, 1e-3)
    (est_re.square() + est_im.square()).sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0


class GivenMasks(torch.nn.Module):
    """Stands in for the model in ``separation_loss``: masks fixed in advance, (1, frames, stems, channels, bins)."""

    def __init__(self, config: ModelConfig, masks: torch.Tensor) -> None:
        super().__init__()
        self.config, self.masks = config, masks

    def initial_state(self, batch: int):
        return None, None

    def forward(self, mag, h, lvl, frames):
        return self.masks[:, frames], None, None


def test_sdr_loss_through_the_spatial_filter_scores_what_the_engine_plays():
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.standard_normal((4, 8192)).astype(np.float32)) * 0.1
    pans = torch.tensor([[1.0, 0.2], [0.2, 1.0], [1.0, 1.0], [0.7, 0.7]])
    stems = (pans[:, :, None] * noise[:, None])[None]  # (1, 4, 2, n): four sources, two panned hard apart
    mix = stems.sum(1)
    # vague masks: each stem's true share of the mix, pulled halfway to 1/4
    share = train.magnitude(train.spectra(stems[0], TINY)).permute(1, 0, 2, 3)[None]  # (1, frames, 4, 2, bins)
    share = share / share.sum(dim=2, keepdim=True).clamp_min(1e-12)
    model = GivenMasks(TINY, 0.5 * share + 0.125)
    spatial = {"time_constant_s": 0.2, "regularization": 1e-3}
    plain, plain_stems = train.separation_loss(model, mix, stems, frame_fraction=0.25, kind="sdr")
    filtered, filtered_stems = train.separation_loss(
        model, mix, stems, frame_fraction=0.25, kind="sdr", spatial=spatial
    )
    # the spatial image tells the hard-panned vocals and drums apart better than the masks do (the loss is -SDR)
    assert filtered_stems["vocals"] < plain_stems["vocals"] - 1.0, (plain_stems, filtered_stems)
    assert filtered_stems["drums"] < plain_stems["drums"] - 1.0 and float(filtered) < float(plain)
    # the residual stem takes the rest, so the estimates sum to the mix as the engine's stems do
    x = train.spectra(mix, TINY)  # (1, frames, 2, bins)
    est_re, est_im = train.filtered(x, model.masks, TINY, spatial)
    assert torch.allclose(est_re.sum(2), x.real, atol=1e-5) and torch.allclose(est_im.sum(2), x.imag, atol=1e-5)
    # one causal pass with the filter, as validation runs it
    out = train.separate(SeparatorModel(TINY).eval(), mix[0], spatial)
    assert out.shape == (4, 2, 8192) and torch.isfinite(out).all()
