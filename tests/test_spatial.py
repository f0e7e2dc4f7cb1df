"""The causal multichannel Wiener filter (engine.spatial) and the separator's use of it."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from stembridge.engine.model_card import ModelError
from stembridge.engine.separate import separate_audio
from stembridge.engine.separator import StreamingSeparator
from stembridge.engine.spatial import SpatialWiener
from stembridge.engine.stream import BlockAdapter

BINS, HOP, RATE = 65, 64, 8000


def spectra(rng: np.random.Generator, hops: int, streams: int = 1) -> np.ndarray:
    """Complex Gaussian stereo spectra (streams, 2, hops, bins)."""
    shape = (streams, 2, hops, BINS)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.abs(reference) ** 2) / np.sum(np.abs(estimate - reference) ** 2)))


def test_panned_sources_are_separated_better_than_by_their_masks():
    # two independent sources with the same spectrum, one panned left (1, 0.5), one right (0.5, 1), and per-bin
    # masks that share each bin by the sources' true amplitudes: a real mask per channel cannot undo the panning,
    # the spatial filter learns both images from the masked mix and unmixes further (measured: 5.8 -> 12.3 dB)
    rng = np.random.default_rng(0)
    hops = 400
    a, b = spectra(rng, hops)[:, :1], spectra(rng, hops)[:, :1]
    source_a = a * np.array([1.0, 0.5])[None, :, None, None]
    source_b = b * np.array([0.5, 1.0])[None, :, None, None]
    mix = (source_a + source_b).astype(np.complex64)
    share = np.abs(source_a) / (np.abs(source_a) + np.abs(source_b))  # (1, 2, hops, bins)
    masks = np.stack([share, 1.0 - share], axis=1).transpose(0, 3, 1, 2, 4).astype(np.float32)
    out = SpatialWiener(1, 2, BINS, HOP, RATE, time_constant_s=1.0).apply(mix, masks, [0, 1])
    settled = slice(hops // 2, None)  # after a few time constants
    for i, source in enumerate((source_a, source_b)):
        masked = masks[:, :, i].transpose(0, 2, 1, 3) * mix
        plain = sdr(source[..., settled, :], masked[..., settled, :])
        spatial = sdr(source[..., settled, :], out[:, i][..., settled, :])
        assert plain < 7.0
        assert spatial > plain + 4.5


def test_a_mono_mix_gives_back_the_models_masks():
    rng = np.random.default_rng(1)
    hops = 50
    mono = spectra(rng, hops)[:, :1]
    mix = np.concatenate([mono, mono], axis=1)
    masks = rng.dirichlet(np.ones(4), size=(1, hops, BINS)).transpose(0, 1, 3, 2)  # (1, hops, stems, bins)
    masks = np.repeat(masks[:, :, :, None], 2, axis=3).astype(np.float32)  # same mask on both channels
    out = SpatialWiener(1, 4, BINS, HOP, RATE).apply(mix, masks, [0, 1, 2, 3])
    expected = masks.transpose(0, 2, 3, 1, 4) * mix[:, None]
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-3 * np.abs(mix).max())


def test_all_stems_together_give_back_the_mix():
    rng = np.random.default_rng(2)
    mix = spectra(rng, 30)
    masks = rng.dirichlet(np.ones(4), size=(1, 30, 2, BINS)).transpose(0, 1, 4, 2, 3).astype(np.float32)
    out = SpatialWiener(1, 4, BINS, HOP, RATE).apply(mix, masks, [0, 1, 2, 3])
    error = np.abs(out.sum(axis=1) - mix)
    assert error.max() < 5e-3 * np.abs(mix).max()  # the regularization's share only


@pytest.mark.parametrize(
    "time_constant_s", [0.05, 0.005]
)  # 0.005 s: the averages run in closed form 4 frames at a time
def test_frames_in_one_call_equal_frames_one_by_one_and_the_future_is_not_used(time_constant_s):
    rng = np.random.default_rng(3)
    hops = 24
    mix = spectra(rng, hops, streams=2)
    masks = rng.dirichlet(np.ones(4), size=(2, hops, 2, BINS)).transpose(0, 1, 4, 2, 3).astype(np.float32)
    whole = SpatialWiener(2, 4, BINS, HOP, RATE, time_constant_s=time_constant_s).apply(mix, masks, [0, 2])
    stepped = SpatialWiener(2, 4, BINS, HOP, RATE, time_constant_s=time_constant_s)
    pieces = [stepped.apply(mix[:, :, k : k + 1], masks[:, k : k + 1], [0, 2]) for k in range(hops)]
    np.testing.assert_allclose(np.concatenate(pieces, axis=3), whole, rtol=1e-4, atol=1e-5)
    changed_future = mix.copy()
    changed_future[:, :, 12:] *= 3.0
    early = SpatialWiener(2, 4, BINS, HOP, RATE, time_constant_s=time_constant_s).apply(changed_future, masks, [0, 2])
    np.testing.assert_array_equal(early[..., :12, :], whole[..., :12, :])
    assert not np.allclose(early[..., 12:, :], whole[..., 12:, :])


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e4])
def test_silence_and_extreme_levels_stay_finite_without_warnings(scale):
    rng = np.random.default_rng(4)
    filt = SpatialWiener(1, 4, BINS, HOP, RATE)
    masks = rng.dirichlet(np.ones(4), size=(1, 8, 2, BINS)).transpose(0, 1, 4, 2, 3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = filt.apply((spectra(rng, 8) * scale).astype(np.complex64), masks, [0, 1, 2])
        after = filt.apply(spectra(rng, 8), masks, [0, 1, 2])  # and it recovers when the signal comes
    assert out.dtype == np.complex64 and np.isfinite(out).all() and np.isfinite(after).all()
    assert np.abs(out).max() <= 2 * scale * np.abs(spectra(rng, 1)).max() + 1e-30


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="time constant"):
        SpatialWiener(1, 4, BINS, HOP, RATE, time_constant_s=0.0)
    with pytest.raises(ValueError, match="regularization"):
        SpatialWiener(1, 4, BINS, HOP, RATE, regularization=float("nan"))


# ------------------------------------------------------------------------------------------------- in the engine


def with_card(tmp_path, tiny_model, **changes):
    onnx_path = tmp_path / "model.onnx"
    shutil.copy(tiny_model, onnx_path)
    card = json.loads(tiny_model.with_suffix(".json").read_text()) | changes
    onnx_path.with_suffix(".json").write_text(json.dumps(card))
    return onnx_path


def test_the_card_turns_the_filter_on_and_the_caller_can_override_it(tmp_path, tiny_model):
    settings = {"time_constant_s": 2.0, "regularization": 0.01}
    path = with_card(tmp_path, tiny_model, spatial_filter=settings)
    assert StreamingSeparator(path).spatial.settings == settings
    assert StreamingSeparator(path, spatial_filter=False).spatial is None
    assert StreamingSeparator(tiny_model).spatial is None  # no spatial_filter in the card
    assert StreamingSeparator(tiny_model, spatial_filter=True).spatial.settings == {
        "time_constant_s": 10.0,
        "regularization": 1e-3,
    }
    assert StreamingSeparator(
        path, spatial_filter={"time_constant_s": 3.0, "regularization": 1e-4}
    ).spatial.settings == {
        "time_constant_s": 3.0,
        "regularization": 1e-4,
    }  # the caller's settings over the card's


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"time_constant_s": 10.0}, "exactly time_constant_s, regularization"),
        ({"time_constant_s": -1.0, "regularization": 1e-3}, "time_constant_s must be a positive number"),
        ({"time_constant_s": 10.0, "regularization": "big"}, "regularization must be a positive number"),
        ("on", "must be null or an object"),
    ],
)
def test_bad_spatial_filter_cards_are_rejected(tmp_path, tiny_model, value, message):
    with pytest.raises(ModelError, match=message):
        StreamingSeparator(with_card(tmp_path, tiny_model, spatial_filter=value))


def test_mono_models_cannot_have_the_filter(tmp_path, tiny_model):
    path = with_card(tmp_path, tiny_model, spatial_filter={"time_constant_s": 10.0, "regularization": 1e-3})
    card = json.loads(path.with_suffix(".json").read_text())
    card["num_channels"] = 1
    card["tensors"]["input"]["shape"][2] = 1
    card["tensors"]["output"]["shape"][3] = 1
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="needs a stereo model"):
        StreamingSeparator(path)


@pytest.mark.parametrize("block_size", [64, 441, 4096])
def test_filtered_stems_stream_like_one_shot_and_sum_to_the_input(tiny_model, noise, block_size):
    separator = StreamingSeparator(tiny_model, max_hops=128, spatial_filter=True)
    plain = StreamingSeparator(tiny_model, max_hops=128, spatial_filter=False)
    n = noise.shape[-1] // 64 * 64
    one_shot = separator.process(noise[..., :n]).copy()
    assert not np.allclose(one_shot, plain.process(noise[..., :n]), atol=1e-3)  # the filter does something
    separator.reset()
    adapter = BlockAdapter(separator, max_block_size=8192, block_size=block_size)
    streamed = separate_audio(adapter, noise[0], block_size, overlap=block_size == 4096)
    latency = separator.latency_samples
    np.testing.assert_allclose(streamed[..., : n - latency], one_shot[0, ..., latency:n], atol=1e-4)
    np.testing.assert_allclose(streamed.sum(axis=0), noise[0], atol=1e-5)  # the residual stem keeps the sum exact


def test_batched_streams_are_filtered_independently(tiny_model, noise):
    batched = StreamingSeparator(tiny_model, num_streams=2, max_hops=32, spatial_filter=True)
    single = StreamingSeparator(tiny_model, num_streams=1, max_hops=32, spatial_filter=True)
    quiet = noise[..., :2048] * 0.1
    both = batched.process(np.concatenate([noise[..., :2048], quiet], axis=0))
    np.testing.assert_allclose(both[1:], single.process(quiet), atol=1e-5)
