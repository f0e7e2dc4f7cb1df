"""The streaming path: STFT framing, separator, block adapter, stems summing to the input, the model contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from stembridge.engine.model_card import ModelError, load_card
from stembridge.engine.separate import separate_audio
from stembridge.engine.separator import StreamingSeparator
from stembridge.engine.stft import StreamingSTFT, ola_constant
from stembridge.engine.stream import BlockAdapter


def run_blocks(adapter: BlockAdapter, audio: np.ndarray, block_size: int) -> np.ndarray:
    """Feed audio (streams, channels, n) in blocks; returns the concatenated stems of every whole block."""
    out = []
    for a in range(0, audio.shape[-1] - block_size + 1, block_size):
        out.append(adapter.process(audio[..., a : a + block_size]).copy())
    return np.concatenate(out, axis=-1)


@pytest.mark.parametrize(("window", "hop"), [("hann", 256), ("vorbis", 512), ("vorbis", 256)])
def test_stft_all_pass_reconstructs_input_delayed_by_n_fft_minus_hop(window, hop):
    stft = StreamingSTFT(n_fft=1024, hop=hop, num_signals=3, max_hops=4, window_name=window)
    x = np.random.default_rng(0).standard_normal((3, 512 * 40)).astype(np.float32)
    y = np.zeros_like(x)
    for a in range(0, x.shape[1], 1024):
        spectra = stft.analyse(x[:, a : a + 1024])
        stft.synthesise(spectra, y[:, a : a + 1024])
    latency = 1024 - hop
    np.testing.assert_allclose(y[:, latency:], x[:, :-latency], atol=2e-6)


def test_hann_at_half_overlap_is_refused():
    with pytest.raises(ValueError, match="overlap-add"):
        StreamingSTFT(n_fft=1024, hop=512, num_signals=1, max_hops=4, window_name="hann")


def test_ola_constant_rejects_non_cola_hop():
    window = np.hanning(1000).astype(np.float32)
    with pytest.raises(ValueError):
        ola_constant(window, 300)


@pytest.mark.parametrize("block_size", [32, 64, 65, 441, 4096])
def test_streaming_equals_one_shot(tiny_model, noise, block_size):
    separator = StreamingSeparator(tiny_model, max_hops=128)
    one_shot = separator.process(noise[..., : noise.shape[-1] // 64 * 64]).copy()
    adapter = BlockAdapter(separator, max_block_size=8192, block_size=block_size)
    streamed = run_blocks(adapter, noise, block_size)
    extra = adapter.extra_latency
    assert adapter.latency_samples == separator.latency_samples + extra
    n = min(streamed.shape[-1] - extra, one_shot.shape[-1])
    assert n > 40000
    np.testing.assert_allclose(streamed[..., extra : extra + n], one_shot[..., :n], atol=1e-5)


def test_variable_block_sizes_keep_one_fixed_latency(tiny_model, noise):
    separator = StreamingSeparator(tiny_model, max_hops=256)
    one_shot = separator.process(noise[..., : noise.shape[-1] // 64 * 64]).copy()
    adapter = BlockAdapter(separator, max_block_size=8192)
    sizes = np.random.default_rng(3).integers(1, 3000, size=200)
    out, a = [], 0
    for n in sizes:
        if a + n > noise.shape[-1]:
            break
        out.append(adapter.process(noise[..., a : a + n]).copy())
        a += n
    streamed = np.concatenate(out, axis=-1)
    extra = adapter.extra_latency
    assert extra == 63
    m = min(streamed.shape[-1] - extra, one_shot.shape[-1])
    np.testing.assert_allclose(streamed[..., extra : extra + m], one_shot[..., :m], atol=1e-5)


@pytest.mark.parametrize("block_size", [256, 4096])
def test_overlapped_offline_separation_is_bit_identical_to_the_block_loop(tiny_model, noise, block_size):
    separator = StreamingSeparator(tiny_model, max_hops=block_size // 64 + 2)
    adapter = BlockAdapter(separator, max_block_size=block_size, block_size=block_size)
    plain = separate_audio(adapter, noise[0], block_size, overlap=False)
    done: list[int] = []
    overlapped = separate_audio(adapter, noise[0], block_size, done.append)
    np.testing.assert_array_equal(overlapped, plain)
    assert plain.shape == (4, *noise[0].shape) and np.abs(plain).max() > 0
    assert sum(done) == noise.shape[-1]  # progress covered the input exactly once


def test_stems_sum_to_latency_aligned_input(tiny_model, noise):
    separator = StreamingSeparator(tiny_model)
    adapter = BlockAdapter(separator, block_size=441)
    stems = run_blocks(adapter, noise, 441)
    latency = adapter.latency_samples
    total = stems.sum(axis=1)
    np.testing.assert_allclose(total[..., latency:], noise[..., : total.shape[-1] - latency], atol=1e-5)
    # and the separation is not trivial: no stem is the whole mix
    assert all(np.abs(stems[0, i]).max() > 1e-3 for i in range(4))


def test_a_half_overlap_vorbis_model_streams_and_sums_to_the_input(tmp_path, tiny_model, noise):
    onnx_path = tmp_path / "half.onnx"
    shutil.copy(tiny_model, onnx_path)
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    card.update(window="vorbis", hop_size=128, latency_samples=128)
    onnx_path.with_suffix(".json").write_text(json.dumps(card))
    separator = StreamingSeparator(onnx_path, max_hops=128)
    one_shot = separator.process(noise[..., : noise.shape[-1] // 128 * 128]).copy()
    adapter = BlockAdapter(separator, block_size=441)
    stems = run_blocks(adapter, noise, 441)
    extra, latency = adapter.extra_latency, adapter.latency_samples
    assert latency == 128 + 128 - 1
    n = min(stems.shape[-1] - extra, one_shot.shape[-1])
    np.testing.assert_allclose(stems[..., extra : extra + n], one_shot[..., :n], atol=1e-5)
    total = stems.sum(axis=1)
    np.testing.assert_allclose(total[..., latency:], noise[..., : total.shape[-1] - latency], atol=1e-5)
    assert all(np.abs(stems[0, i]).max() > 1e-3 for i in range(4))


def test_batched_streams_equal_separate_runs(tiny_model, noise):
    two = np.concatenate([noise, noise[:, ::-1, ::-1].copy() * 0.5], axis=0)
    batched = StreamingSeparator(tiny_model, num_streams=2, max_hops=32)
    single = StreamingSeparator(tiny_model, num_streams=1, max_hops=32)
    n = 64 * 1000
    out_batched = batched.process(two[..., :n])
    out_second = single.process(two[1:, :, :n])
    np.testing.assert_allclose(out_batched[1:], out_second, atol=1e-5)


def test_recurrent_state_is_carried_and_reset(tiny_model, noise):
    separator = StreamingSeparator(tiny_model)
    block = noise[..., : 64 * 20]
    first = separator.process(block).copy()
    second = separator.process(block).copy()
    assert np.abs(first - second).max() > 1e-4  # history matters
    separator.reset()
    np.testing.assert_allclose(separator.process(block), first, atol=1e-6)


def test_separator_rejects_wrong_shapes(tiny_model):
    separator = StreamingSeparator(tiny_model)
    with pytest.raises(ValueError, match="multiple of hop_size"):
        separator.process(np.zeros((1, 2, 100), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        separator.process(np.zeros((2, 2, 128), np.float32))


def test_card_records_the_contract(tiny_model):
    card = load_card(tiny_model)
    assert card.stems == ("vocals", "drums", "bass", "other")
    assert card.latency_samples == card.n_fft - card.hop_size
    assert card.residual_stem == "other"


# -- the card/graph checks reject broken models ------------------------------------------------------------------


def broken_copy(tmp_path: Path, tiny_model: Path, edit) -> Path:
    onnx_path = tmp_path / "broken.onnx"
    shutil.copy(tiny_model, onnx_path)
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    edit(card)
    onnx_path.with_suffix(".json").write_text(json.dumps(card))
    return onnx_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("stems"), "missing key"),
        (lambda c: c.update(bogus=1), "unknown key"),
        (lambda c: c.update(schema_version=2), "schema_version"),
        (lambda c: c.update(latency_samples=10), "latency_samples 10"),
        (lambda c: c.update(window="blackman"), "window"),
        (lambda c: c.update(hop_size=512), "hop_size 512 is larger"),
        (lambda c: c.update(hop_size=128, latency_samples=128), "hann window with n_fft 256: .*overlap-add"),
        (lambda c: c.update(residual_stem="piano"), "residual_stem"),
        (lambda c: c["tensors"]["input"].update(name="spec"), "no input named spec"),
        (lambda c: c["tensors"]["state"][0].update(shape=[1, "batch", 32]), "h_in"),
        (lambda c: c["tensors"].update(state=[]), "h_in"),
    ],
)
def test_broken_cards_are_rejected_with_the_file_and_mismatch(tmp_path, tiny_model, edit, message):
    path = broken_copy(tmp_path, tiny_model, edit)
    with pytest.raises(ModelError, match=message) as info:
        StreamingSeparator(path)
    assert "broken" in str(info.value)


def test_n_fft_mismatch_between_card_and_graph_is_rejected(tmp_path, tiny_model):
    def edit(card):
        card.update(n_fft=512, latency_samples=512 - 64)
        card["tensors"]["input"]["shape"][3] = 257
        card["tensors"]["output"]["shape"][4] = 257

    path = broken_copy(tmp_path, tiny_model, edit)
    with pytest.raises(ModelError, match="shape"):
        StreamingSeparator(path)


def test_corrupt_graph_and_missing_card_are_rejected(tmp_path, tiny_model):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not an onnx graph")
    bad.with_suffix(".json").write_text(tiny_model.with_suffix(".json").read_text())
    with pytest.raises(ModelError, match="junk.onnx: ONNX Runtime cannot load"):
        StreamingSeparator(bad)
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(tiny_model, lonely)
    with pytest.raises(ModelError, match="card lonely.json is missing"):
        StreamingSeparator(lonely)
    with pytest.raises(ModelError, match="not found"):
        StreamingSeparator(tmp_path / "absent.onnx")
    (tmp_path / "bad_json.onnx").write_bytes(tiny_model.read_bytes())
    (tmp_path / "bad_json.json").write_text("{ nope")
    with pytest.raises(ModelError, match="not valid JSON"):
        StreamingSeparator(tmp_path / "bad_json.onnx")


def test_cuda_request_fails_clearly_without_a_gpu(tiny_model):
    from stembridge.engine.separator import _gpu_present

    if _gpu_present():
        pytest.skip("a GPU is present here")
    with pytest.raises(ModelError, match="cuda"):
        StreamingSeparator(tiny_model, device="cuda")
