"""`stembridge separate`: outputs, alignment, formats, and every error path a user can hit."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from stembridge.bridge.cli import main
from stembridge.engine import separator as separator_module

SR = 44100


def write_tone(path, seconds=1.0, sr=SR, channels=2, subtype="PCM_24"):
    t = np.arange(int(seconds * sr)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    x += 0.05 * np.random.default_rng(0).standard_normal(x.shape)
    sf.write(path, x, sr, subtype=subtype)
    return x


def separate(*args):
    return CliRunner().invoke(main, ["separate", *map(str, args)])


@pytest.mark.parametrize("mode", ["hq", "live"])
def test_writes_24_bit_stems_that_sum_to_the_input(tmp_path, tiny_model, mode):
    x = write_tone(tmp_path / "song.wav")
    args = ["--model", tiny_model, "--block-size", "441", "--mode", mode]
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", *args)
    assert result.exit_code == 0, result.output
    stems = []
    for stem in ("vocals", "drums", "bass", "other"):
        info = sf.info(tmp_path / "out" / "song" / f"{stem}.wav")
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 2, x.shape[0], "PCM_24")
        stems.append(sf.read(tmp_path / "out" / "song" / f"{stem}.wav")[0])
    # aligned to the input (latency removed) and summing back to it, to 24-bit rounding
    np.testing.assert_allclose(np.sum(stems, axis=0), x, atol=1e-4)
    assert "x real time" in result.output
    assert ("look-ahead model hq_vocals" if mode == "hq" else "latency") in result.output


@pytest.mark.parametrize("mode", ["hq", "live"])
def test_mono_input_at_another_rate_comes_back_mono_at_its_rate(tmp_path, tiny_model, mode):
    x = write_tone(tmp_path / "mono.wav", sr=48000, channels=1)
    result = separate(
        "--mode",
        mode,
        tmp_path / "mono.wav",
        "-o",
        tmp_path / "out",
        "--model",
        tiny_model,
        "--format",
        "flac",
        "--stems",
        "vocals,other",
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out" / "mono").iterdir())
    assert written == ["other.flac", "vocals.flac"]
    info = sf.info(tmp_path / "out" / "mono" / "vocals.flac")
    assert (info.samplerate, info.channels, info.frames) == (48000, 1, x.shape[0])
    total = sum(sf.read(tmp_path / "out" / "mono" / f"{s}.flac")[0] for s in ("vocals", "other"))
    assert np.abs(total).max() > 0.1  # real audio, not silence


def test_bad_inputs_fail_clearly_while_the_rest_of_the_batch_completes(tmp_path, tiny_model):
    write_tone(tmp_path / "good.wav", seconds=0.5)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(tmp_path / "silent0.wav", np.zeros((0, 2)), SR)
    args = ["missing.wav", "empty.wav", "corrupt.wav", "silent0.wav", "good.wav"]
    result = separate(*[tmp_path / a for a in args], "-o", tmp_path / "out", "--model", tiny_model, "--mode", "live")
    assert result.exit_code == 1
    assert "missing.wav: file not found" in result.output
    assert "empty.wav: file is empty" in result.output
    assert "corrupt.wav: cannot decode audio" in result.output
    assert "silent0.wav: contains no audio frames" in result.output
    assert "failed: 4 of 5" in result.output
    assert (tmp_path / "out" / "good" / "vocals.wav").exists()
    assert not (tmp_path / "out" / "corrupt").exists()


def test_existing_outputs_are_kept_without_overwrite(tmp_path, tiny_model):
    write_tone(tmp_path / "song.wav", seconds=0.3)
    out = tmp_path / "out" / "song"
    out.mkdir(parents=True)
    (out / "drums.wav").write_bytes(b"keep me")
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_model)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (out / "drums.wav").read_bytes() == b"keep me"
    assert not (out / "vocals.wav").exists()
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_model, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sf.info(out / "drums.wav").frames > 0


def test_a_failure_while_writing_leaves_no_partial_file(tmp_path, tiny_model, monkeypatch):
    from stembridge.engine import audio_io

    write_tone(tmp_path / "song.wav", seconds=0.3)
    calls = []

    def failing_write(self, stem, block):
        calls.append(stem)
        if len(calls) == 3:
            raise OSError("disk full")
        self._files[stem].write(block.T)

    monkeypatch.setattr(audio_io.AtomicStemWriter, "write", failing_write)
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_model)
    assert result.exit_code == 1 and "disk full" in result.output
    assert list((tmp_path / "out" / "song").iterdir()) == []


def test_bad_options_and_models_get_clear_errors(tmp_path, tiny_model):
    write_tone(tmp_path / "song.wav", seconds=0.2)
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_model, "--stems", "piano")
    assert result.exit_code == 2 and "unknown stem(s) piano" in result.output
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tmp_path / "nomodel.onnx")
    assert result.exit_code == 1 and "model file not found" in result.output
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_model, "--block-size", "0")
    assert result.exit_code == 2
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--hq-model", tiny_model)
    assert result.exit_code == 1 and "kind" in result.output  # a causal model is not a look-ahead model
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", "--spatial-filter")
    assert result.exit_code == 2 and "--mode live" in result.output


def test_without_a_default_model_the_command_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(separator_module, "DEFAULT_MODEL", tmp_path / "absent" / "default.onnx")
    write_tone(tmp_path / "song.wav", seconds=0.2)
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "no trained default model" in result.output and "--model" in result.output


@pytest.mark.parametrize("block_size", ["1", "65", "8192"])
def test_any_block_size_gives_the_same_stems(tmp_path, tiny_model, block_size):
    write_tone(tmp_path / "song.wav", seconds=0.4)
    live = ["--mode", "live", "--model", tiny_model]
    ref = separate(tmp_path / "song.wav", "-o", tmp_path / "ref", *live, "--block-size", "256")
    assert ref.exit_code == 0
    result = separate(tmp_path / "song.wav", "-o", tmp_path / "out", *live, "--block-size", block_size)
    assert result.exit_code == 0, result.output
    a = sf.read(tmp_path / "ref" / "song" / "vocals.wav")[0]
    b = sf.read(tmp_path / "out" / "song" / "vocals.wav")[0]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_without_o_the_stems_go_to_stems_in_the_current_folder_and_one_stem_is_singular(
    tmp_path, tiny_model, monkeypatch
):
    write_tone(tmp_path / "song.wav", seconds=0.5)
    monkeypatch.chdir(tmp_path)
    result = separate("song.wav", "--model", tiny_model, "--stems", "vocals")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "stems" / "song").iterdir()) == ["vocals.wav"]
    assert "song.wav: 1 stem -> " in result.output and "stems/song (" in result.output
    assert "done: 1 file," in result.output
