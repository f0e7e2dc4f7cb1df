"""The DJ world's files: every format decoded sample-aligned, damage reported, NI stem files read, written, played.

Test files are made here (PyAV's encoders, soundfile), from synthesized audio. ffprobe/ffmpeg (Debian's ffmpeg) are
the outside reference where installed; those checks skip without them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from scipy.signal import resample_poly
from stembridge.bridge.cli import main
from stembridge.engine.audio_io import AudioFileError, audio_info, iter_audio_blocks, read_audio
from stembridge.engine.mp4_boxes import finish_stem_mp4, read_box
from stembridge.engine.stem_file import NI_SLOTS, is_stem_file, read_stem_file, stem_metadata_json, write_stem_file

SR = 44100
CLICK = 30000  # sample index of a click in the test signal
FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")


def signal(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Stereo tones plus a little noise and one click at CLICK: float32 (2, n), n not a multiple of any frame size."""
    n = int(seconds * SR) + 123
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * (220 + 30 * seed) * t) + 0.1 * np.sin(2 * np.pi * 1330 * t)
    x = np.stack([x, 0.6 * x]) + 0.01 * np.random.default_rng(seed).standard_normal((2, n))
    x[:, CLICK] = 0.95
    return x.astype(np.float32)


def music(seconds: float = 3.0) -> dict[str, np.ndarray]:
    """Four synthetic stems in NI's slot order, float32 (2, n) each: kick and snare, bass, chords, a sung tone."""
    n = int(seconds * SR) + 77
    t = np.arange(n) / SR
    rng = np.random.default_rng(3)
    beat = t % 0.5
    snare = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") * np.exp(-((t + 0.25) % 0.5) * 40)
    drums = 0.5 * np.exp(-beat * 9) * np.sin(2 * np.pi * 55 * t) + 0.1 * snare
    bass = 0.25 * np.sin(2 * np.pi * np.where(t % 2 < 1, 55.0, 73.4) * t)
    other = sum(0.06 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    phase = np.cumsum(2 * np.pi * 220 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t)) / SR)
    vocals = sum(0.08 / k * np.sin(k * phase) for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.4 * t))
    return {
        s: np.stack([a, g * a]).astype(np.float32)
        for s, a, g in zip(NI_SLOTS, (drums, bass, other, vocals), (0.9, 1.0, 0.6, 0.95), strict=True)
    }


def encode(path: Path, audio: np.ndarray, codec: str, fmt: str | None = None, rate: int = SR) -> Path:
    """Encode audio (2, n) with PyAV (FFmpeg's encoders and muxers, so MP3s get their LAME header, MP4s edit lists)."""
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout="stereo")
        sample_fmt = st.codec_context.codec.audio_formats[0].name
        st.codec_context.format = sample_fmt
        if codec in ("aac", "libmp3lame"):
            st.codec_context.bit_rate = 192000
        data = audio
        if sample_fmt.startswith("s16"):
            data = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        elif sample_fmt.startswith("s32"):
            data = np.round(np.clip(audio, -1, 1) * (2**23 - 1)).astype(np.int32) << 8
        planar = sample_fmt.endswith("p")
        if not planar:
            data = data.T.reshape(1, -1)  # interleaved
        step = 4096
        for a in range(0, audio.shape[1], step):
            chunk = data[:, a : a + step] if planar else data[:, 2 * a : 2 * (a + step)]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), sample_fmt, "stereo")
            frame.sample_rate = rate
            frame.pts = a
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return path


def click_at(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(audio[0, : CLICK * 2])))


def ffmpeg_decode(path: Path) -> np.ndarray:
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-"], capture_output=True, check=True
    ).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, 2).T


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    x = signal()
    out = {}
    for name, subtype, fmt in (("wav", "PCM_24", "WAV"), ("aiff", "PCM_16", "AIFF"), ("flac", "PCM_24", "FLAC")):
        sf.write(d / f"t.{name}", x.T, SR, subtype=subtype, format=fmt)
        out[name] = d / f"t.{name}"
    sf.write(d / "t.ogg", x.T, SR, format="OGG", subtype="VORBIS")
    out["ogg"] = d / "t.ogg"
    out["mp3"] = encode(d / "t.mp3", x, "libmp3lame")
    out["m4a"] = encode(d / "t.m4a", x, "aac", "ipod")
    out["alac"] = encode(d / "alac.m4a", x, "alac", "ipod")
    x48 = resample_poly(x, 160, 147, axis=1).astype(np.float32)  # Opus runs at 48 kHz
    out["opus"] = encode(d / "t.opus", x48, "libopus", "ogg", rate=48000)
    out["source"] = x
    return out


@pytest.mark.parametrize("kind", ["wav", "aiff", "flac", "ogg", "mp3", "m4a", "alac"])
def test_every_format_decodes_to_the_source_length_with_the_click_where_it_was(files, kind):
    audio, rate = read_audio(files[kind])
    x = files["source"]
    assert rate == SR and audio.dtype == np.float32
    assert audio.shape == x.shape  # priming skipped and end padding cut: exactly the frames that were encoded
    assert click_at(audio) == CLICK
    lossless = {"wav": 1e-6, "aiff": 1e-4, "flac": 1e-6, "alac": 1e-6}
    if kind in lossless:
        np.testing.assert_allclose(audio, x, atol=lossless[kind])
    else:
        err = audio - x
        assert 10 * np.log10((x**2).sum() / (err**2).sum()) > 15  # the same audio, not shifted or garbled


def test_opus_decodes_at_48k_aligned(files):
    audio, rate = read_audio(files["opus"])
    assert rate == 48000
    assert abs(audio.shape[1] - round(files["source"].shape[1] * 48000 / SR)) <= 1
    assert abs(click_at(audio) - round(CLICK * 48000 / SR)) <= 2


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg (Debian package ffmpeg) not installed")
@pytest.mark.parametrize("kind", ["mp3", "m4a", "alac", "flac"])
def test_decoding_starts_sample_aligned_with_ffmpegs_command_line(files, kind):
    ours, _ = read_audio(files[kind])
    theirs = ffmpeg_decode(files[kind])
    n = ours.shape[1]
    assert theirs.shape[1] >= n  # FFmpeg keeps the AAC end padding; we cut it at the length the MP4 states
    np.testing.assert_allclose(ours, theirs[:, :n], atol=2e-4)


def test_blocks_stream_the_same_audio_as_a_whole_read(files):
    for kind in ("mp3", "m4a", "wav"):
        whole, _ = read_audio(files[kind])
        blocks = list(iter_audio_blocks(files[kind], 1000))
        assert all(b.shape == (2, 1000) for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= 1000
        np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    assert audio_info(files["m4a"])[:2] == (SR, 2)


def cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("kind", ["wav", "aiff", "flac", "mp3", "m4a"])
def test_a_truncated_file_is_reported_with_where_it_breaks(files, kind, tmp_path):
    bad = cut(files[kind], tmp_path / f"cut.{files[kind].name}", 0.6)
    with pytest.raises(AudioFileError) as err:
        read_audio(bad)
    msg = str(err.value)
    assert str(bad) in msg and " s" in msg
    assert any(word in msg for word in ("truncated", "corrupt", "damaged", "incomplete"))


def test_truncated_mp3_yields_its_first_blocks_before_the_error(files, tmp_path):
    bad = cut(files["mp3"], tmp_path / "cut.mp3", 0.6)
    got = []
    with pytest.raises(AudioFileError, match="truncated"):
        for block in iter_audio_blocks(bad, 4096):
            got.append(block)
    assert len(got) >= 10  # a deck could already have been playing


def test_garbage_inside_an_m4a_is_reported_with_its_time(files, tmp_path):
    data = bytearray(files["m4a"].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 300] = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.m4a"
    bad.write_bytes(bytes(data))
    with pytest.raises(AudioFileError, match=r"corrupt\.m4a: .* at \d+\.\d\d s"):
        read_audio(bad)


def test_not_audio_is_a_clear_error(tmp_path):
    p = tmp_path / "notes.m4a"
    p.write_text("not audio at all")
    with pytest.raises(AudioFileError, match="notes.m4a"):
        read_audio(p)


# -- NI stem files --


@pytest.fixture(scope="module")
def tagged_input(tmp_path_factory) -> Path:
    """A FLAC with title, artist, BPM, key and a PNG cover (tags to carry into stem files)."""
    from mutagen.flac import FLAC, Picture

    p = tmp_path_factory.mktemp("tags") / "song.flac"
    sf.write(p, sum(music().values()).T, SR, subtype="PCM_24")
    f = FLAC(p)
    f["title"], f["artist"], f["bpm"], f["initialkey"] = "Night Drive", "Test Artist", "124", "Am"
    pic = Picture()
    pic.type, pic.mime, pic.data = 3, "image/png", PNG_1X1
    f.add_picture(pic)
    f.save()
    return p


PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301"
    "0100c9fe92ef0000000049454e44ae426082"
)


def probe(path: Path) -> dict:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)


def mixture_and_stems():
    stems = music()
    return sum(stems.values()).astype(np.float32), stems


def test_alac_stem_file_round_trips_24_bit_exactly_and_sums_to_the_mixture(tmp_path, tagged_input):
    mix, stems = mixture_and_stems()
    stems["other"] = mix - stems["drums"] - stems["bass"] - stems["vocals"]  # a residual stem, as the models have
    path = tmp_path / "song.stem.mp4"
    result = write_stem_file(path, mix, stems, SR, codec="alac", tags_from=tagged_input, residual="other")
    assert result.path == path and result.bit_rate is None and result.size_bytes == path.stat().st_size
    back = read_stem_file(path)
    q = lambda a: np.round(a.astype(np.float64) * 2**23).astype(np.int64)  # noqa: E731
    assert back.codec == "alac" and back.sample_rate == SR and back.mixture.shape == mix.shape
    np.testing.assert_array_equal(q(back.mixture), q(mix))
    for s in ("drums", "bass", "vocals"):
        np.testing.assert_array_equal(q(back.stems[s]), q(stems[s]))
    np.testing.assert_array_equal(sum(q(back.stems[s]) for s in NI_SLOTS), q(back.mixture))  # exactly
    assert list(back.stems) == list(NI_SLOTS)
    assert back.names == ["Drums", "Bass", "Other", "Vocals"]
    assert back.metadata["version"] == 1 and back.metadata["mastering_dsp"]["limiter"]["enabled"] is False
    # read_audio on a stem file gives the mixture; it is recognised as a stem file
    np.testing.assert_array_equal(read_audio(path)[0], back.mixture)
    assert is_stem_file(path)
    # tags and cover, as iTunes atoms
    from mutagen.mp4 import MP4

    tags = MP4(path).tags
    assert tags["\xa9nam"] == ["Night Drive"] and tags["\xa9ART"] == ["Test Artist"] and tags["tmpo"] == [124]
    assert bytes(tags["covr"][0]) == PNG_1X1
    assert bytes(tags["----:com.apple.iTunes:initialkey"][0]) == b"Am"


def test_stem_file_is_laid_out_as_ni_and_mixxx_expect(tmp_path):
    mix, stems = mixture_and_stems()
    path = tmp_path / "a.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec="aac")
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data[8:12] == b"M4A " and b"mp42" in data[:32]
    moov = data.find(b"moov")
    assert moov < data.find(b"mdat")  # index first, as MP4Box writes
    meta = json.loads(read_box(path, [b"moov", b"udta", b"stem"]))  # Mixxx reads moov/udta/stem as JSON
    assert [s["name"] for s in meta["stems"]] == ["Drums", "Bass", "Other", "Vocals"]
    assert [s["color"] for s in meta["stems"]] == ["#009E73", "#D55E00", "#CC79A7", "#56B4E9"]
    assert set(meta["mastering_dsp"]) == {"compressor", "limiter"}


@pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian package ffmpeg) not installed")
@pytest.mark.parametrize("codec", ["aac", "alac"])
def test_ffprobe_sees_five_audio_streams_and_the_tags(tmp_path, tagged_input, codec):
    mix, stems = mixture_and_stems()
    path = tmp_path / "p.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec=codec, tags_from=tagged_input)
    info = probe(path)
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert [s["codec_name"] for s in audio] == [codec] * 5
    assert all(s["channels"] == 2 and int(s["sample_rate"]) == SR for s in audio)
    assert [s["disposition"]["default"] for s in audio] == [1, 0, 0, 0, 0]  # the mixture is the enabled track
    if codec == "aac":
        # 256 kb/s per stream asked; FFmpeg's AAC encoder spends less on simple stems (a sine bass gets ~165 kb/s)
        assert all(100_000 < int(s["bit_rate"]) < 270_000 for s in audio)
    else:
        assert all(s.get("bits_per_raw_sample") == "24" for s in audio)
    assert info["format"]["tags"]["title"] == "Night Drive"
    assert any(s["disposition"].get("attached_pic") for s in info["streams"])  # the cover


def test_aac_stem_file_streams_are_sample_aligned_and_sum_to_the_mixture(tmp_path):
    mix, stems = mixture_and_stems()
    click = np.zeros_like(mix)
    click[:, CLICK] = 0.5
    stems = {s: a + (click if s == "bass" else 0) for s, a in stems.items()}
    mix = sum(stems.values()).astype(np.float32)
    path = tmp_path / "aac.stem.mp4"
    result = write_stem_file(path, mix, stems, SR, codec="aac")
    assert result.bit_rate == 256_000
    back = read_stem_file(path)
    assert back.mixture.shape == mix.shape and all(a.shape == mix.shape for a in back.stems.values())
    # priming removed in all five: each decoded stream lines up with its source to the sample
    for name, src, dec in [("mixture", mix, back.mixture)] + [(s, stems[s], back.stems[s]) for s in NI_SLOTS]:
        lags = range(-3, 4)
        errs = [np.abs(np.roll(dec, lag, axis=1)[:, 10:-10] - src[:, 10:-10]).sum() for lag in lags]
        assert lags[int(np.argmin(errs))] == 0, name
    total = sum(back.stems.values())
    snr_db = 10 * np.log10((back.mixture**2).sum() / ((back.mixture - total) ** 2).sum())
    assert snr_db > 25


def test_stem_slots_follow_the_stream_order_not_the_names(tmp_path):
    mix, stems = mixture_and_stems()
    path = tmp_path / "named.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec="alac")
    # relabel the slots with misleading names; the reader must still take slot 1 as drums
    relabelled = tmp_path / "relabelled.stem.mp4"
    finish_stem_mp4(
        path, relabelled, stem_metadata_json(["Vocals", "Drums", "Bass", "Synth"], ["#1", "#2", "#3", "#4"])
    )
    back = read_stem_file(relabelled)
    assert back.names == ["Vocals", "Drums", "Bass", "Synth"]
    for s in NI_SLOTS:
        np.testing.assert_allclose(back.stems[s], stems[s], atol=1e-6)


REFERENCE = None
try:  # the NI stem file stempeg ships (made with NI's tools and MP4Box); read here, never copied
    import stempeg

    REFERENCE = Path(stempeg.__file__).parent / "data" / "The Easton Ellises - Falcon 69.stem.mp4"
except ImportError:
    pass


@pytest.mark.skipif(REFERENCE is None or not REFERENCE.exists(), reason="stempeg's example stem file not installed")
def test_reads_an_ni_made_stem_file():
    assert is_stem_file(REFERENCE)
    back = read_stem_file(REFERENCE)
    assert back.names == ["Drums", "Bass", "Other", "Vox"] and back.codec == "aac"
    assert back.mixture.shape[0] == 2 and back.mixture.shape[1] > 5 * 44100
    total = sum(back.stems.values())
    assert 10 * np.log10((back.mixture**2).sum() / ((back.mixture - total) ** 2).sum()) > 15


# -- decks and the command line --


def test_a_stem_file_plays_its_own_stems_on_the_busses(tmp_path, tiny_model):
    from stembridge.engine.commands import SetParam
    from stembridge.engine.live import LiveEngine
    from stembridge.engine.live.stem_deck import StemFileDeck, load_deck
    from stembridge.engine.separator import StreamingSeparator

    mix, stems = mixture_and_stems()
    path = tmp_path / "deck.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec="alac")
    sep = StreamingSeparator(tiny_model, num_streams=1, max_hops=64)
    deck = load_deck(path, SR, tuple(sep.stems))
    assert isinstance(deck, StemFileDeck)
    period = 256
    engine = LiveEngine(sep, [deck], period, fifo_periods=2)
    assert deck.status()["stems"]["vocals"] == {"name": "Vocals", "colour": "#56B4E9"}
    num_blocks = 120
    out = np.zeros((engine.num_outputs, num_blocks * period), dtype=np.float32)
    for b in range(num_blocks):
        if b == 60:
            assert engine.push(1, SetParam("transport/seek_s", 0.5))
        engine.process_block(np.zeros((0, period), np.float32), out[:, b * period : (b + 1) * period])
        engine.worker.step()
    names = engine.output_names()
    start, n = 8 * period, 50 * period  # after the play fade-in; no separation latency to wait for
    for stem in engine.stems:
        bus = out[names.index(f"{stem}_L") : names.index(f"{stem}_L") + 2, start : start + n]
        np.testing.assert_allclose(bus, stems[stem][:, start : start + n], atol=1e-5)
    master = out[0:2, start : start + n]
    np.testing.assert_allclose(master, mix[:, start : start + n], atol=1e-4)
    # after the seek (crossfaded in one block) the stems play from 0.5 s, still aligned with each other
    s0, after = 62 * period, int(0.5 * SR) + 2 * period
    drums = out[names.index("drums_L"), s0 : s0 + 4 * period]
    np.testing.assert_allclose(drums, stems["drums"][0, after : after + 4 * period], atol=1e-5)


def test_load_deck_separates_ordinary_files(files, tiny_model):
    from stembridge.engine.live.deck import FileDeck
    from stembridge.engine.live.stem_deck import StemFileDeck, load_deck

    deck = load_deck(files["m4a"], SR, ("vocals", "drums", "bass", "other"))
    assert isinstance(deck, FileDeck) and not isinstance(deck, StemFileDeck)
    assert deck.audio.shape == files["source"].shape


def test_separate_skips_a_stem_file_unless_asked_and_writes_stem_files(tmp_path, tiny_model, tagged_input):
    mix, stems = mixture_and_stems()
    stem_in = tmp_path / "in.stem.mp4"
    write_stem_file(stem_in, mix, stems, SR, codec="aac")
    run = lambda *a: CliRunner().invoke(main, ["separate", *map(str, a), "--model", str(tiny_model)])  # noqa: E731
    result = run(stem_in, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "nothing to separate" in result.output and "--reseparate" in result.output
    written = [p.name for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert not [name for name in written if not name.startswith("stembridge-manifest.sqlite")]  # no stems written

    result = run(stem_in, tagged_input, "-o", tmp_path / "out", "--format", "stem", "--codec", "alac", "--reseparate")
    assert result.exit_code == 0, result.output
    for name, source in (("in", stem_in), ("song", tagged_input)):
        back = read_stem_file(tmp_path / "out" / f"{name}.stem.mp4")
        x, _ = read_audio(source)
        q = lambda a: np.round(a.astype(np.float64) * 2**23).astype(np.int64)  # noqa: E731
        np.testing.assert_array_equal(q(back.mixture), q(x))  # the input itself is the mixture stream
        np.testing.assert_array_equal(sum(q(a) for a in back.stems.values()), q(back.mixture))
    # a stem file someone else put there is never replaced; one this library wrote is redone with new settings
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "song.stem.mp4").write_bytes(b"not ours")
    result = run(tagged_input, "-o", tmp_path / "o3", "--format", "stem")
    assert result.exit_code == 1 and "output exists" in result.output
    assert (tmp_path / "o3" / "song.stem.mp4").read_bytes() == b"not ours"
    result = run(tagged_input, "-o", tmp_path / "out", "--format", "stem")  # aac now: settings changed
    assert result.exit_code == 0, result.output
    assert read_stem_file(tmp_path / "out" / "song.stem.mp4").codec == "aac"
    result = run(tagged_input, "-o", tmp_path / "o2", "--format", "stem", "--stems", "vocals")
    assert result.exit_code != 0 and "--stems" in result.output


def test_live_plays_a_stem_file_deck_on_its_stem_busses(tmp_path, tiny_model):
    mix, stems = mixture_and_stems()
    path = tmp_path / "live.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec="alac")
    rec = tmp_path / "rec.wav"
    result = CliRunner().invoke(
        main,
        ["live", "--backend", "dummy", "--deck", str(path), "--model", str(tiny_model), "--duration", "1",
         "--no-osc", "--worker", "thread", "--record", str(rec), "--record-outputs", "summed", "--scene", "none"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out, rate = sf.read(rec, dtype="float32", always_2d=True)
    assert rate == SR and out.shape[1] == 10 and out.shape[0] > SR // 2
    n = out.shape[0]
    start = 2048  # after the play fade-in
    for k, stem in enumerate(("vocals", "drums", "bass", "other"), start=1):  # the tiny model's bus order
        np.testing.assert_allclose(out[start:n, 2 * k : 2 * k + 2].T, stems[stem][:, start:n], atol=1e-5)


def test_itunes_gapless_tag_gives_the_exact_length(files, tmp_path):
    """An M4A without an edit list but with iTunes' iTunSMPB tag (priming, padding, length) decodes to its length."""
    from mutagen.mp4 import MP4, MP4FreeForm

    x = files["source"]
    plain = tmp_path / "noedit.m4a"
    with av.open(str(plain), "w", format="ipod", options={"use_editlist": "0"}) as out:
        st = out.add_stream("aac", rate=SR, layout="stereo")
        st.codec_context.format, st.codec_context.bit_rate = "fltp", 192000
        for a in range(0, x.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, a : a + 4096]), "fltp", "stereo")
            frame.sample_rate, frame.pts = SR, a
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    tags = MP4(plain)
    tags["----:com.apple.iTunes:iTunSMPB"] = [
        MP4FreeForm(f" 00000000 00000400 {0:08X} {x.shape[1]:016X} 00000000 00000000".encode())
    ]
    tags.save()
    audio, _ = read_audio(plain)
    assert audio.shape == x.shape and click_at(audio) == CLICK


@pytest.mark.skipif(REFERENCE is None or FFMPEG is None, reason="stempeg or ffmpeg not installed")
def test_stempeg_reads_our_stem_files_as_we_do(tmp_path):
    """sigsep's stempeg (the MUSDB18 tools' reader, through ffmpeg) sees the same five streams in the same order."""
    mix, stems = mixture_and_stems()
    path = tmp_path / "ours.stem.mp4"
    write_stem_file(path, mix, stems, SR, codec="alac")
    theirs, rate = stempeg.read_stems(str(path))
    ours = read_stem_file(path)
    assert rate == SR and theirs.shape == (5, ours.num_frames, 2)
    for k, audio in enumerate([ours.mixture] + [ours.stems[s] for s in NI_SLOTS]):
        np.testing.assert_array_equal(theirs[k].T.astype(np.float32), audio)
