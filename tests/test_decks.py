"""Decks for a whole set: the deadline-miss fallback keeps mutes, run-time loading, feedback and outputs.

Driven synchronously like tests/test_live.py: ``process_block`` (the audio thread's work) then ``worker.step()``
(the worker's); a late worker is simulated by not stepping it.
"""

from __future__ import annotations

import numpy as np
import pytest
from stembridge.engine.commands import SetParam
from stembridge.engine.live import FileDeck, LiveEngine
from stembridge.engine.separator import StreamingSeparator

SR = 44100
P = 256
MASTER, VOCALS, DRUMS, BASS, OTHER = (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10))


def song(seconds: float, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.2 * np.sin(2 * np.pi * 1330 * t)
    return (np.stack([x, 0.7 * x]) + 0.05 * rng.standard_normal((2, n))).astype(np.float32)


def make_engine(model, decks, fifo_periods=2, **kwargs) -> LiveEngine:
    sep = StreamingSeparator(model, num_streams=len(decks), max_hops=64)
    return LiveEngine(sep, decks, P, fifo_periods=fifo_periods, **kwargs)


def run(engine: LiveEngine, num_blocks: int, *, events=None, late=(), before_block=None) -> np.ndarray:
    out = np.zeros((engine.num_outputs, num_blocks * P), dtype=np.float32)
    inp = np.zeros((engine.num_inputs, P), np.float32)
    for b in range(num_blocks):
        if before_block is not None:
            before_block(b)
        for deck, cmd in (events or {}).get(b, []):
            assert engine.push(deck, cmd)
        engine.process_block(inp, out[:, b * P : (b + 1) * P])
        if b not in late:
            engine.worker.step()
    return out


# -- item 6: a miss never undoes a mute --
@pytest.mark.parametrize("control", ["stem/vocals/mute", "stem/drums/solo"])
def test_a_stem_muted_or_left_out_of_a_solo_stays_silent_on_every_bus_through_deadline_misses(tiny_model, control):
    a = song(3.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    late = set(range(100, 106))  # six periods without separation
    out = run(engine, 160, events={20: [(1, SetParam(control, 1.0))]}, late=late)
    assert engine.num_misses > 0 and engine.num_dry_blocks > 0  # the misses happened and are counted
    fade = 100 + engine.fifo_periods - 1
    gap = slice((fade + 1) * P, (fade + 3) * P)
    # the dry mix holds every stem, the muted one too: it must not play on any bus; the deck dips instead
    assert np.abs(out[:, gap]).max() == 0.0
    # and before and after the misses the deck plays its separated, mixed stems (not silence)
    assert np.abs(out[MASTER, 60 * P : 95 * P]).max() > 0.05 and np.abs(out[MASTER, 150 * P :]).max() > 0.05
    if control.endswith("mute"):
        assert np.abs(out[VOCALS, 30 * P :]).max() == 0.0  # the vocal bus never came back
    # no step larger than the signal's own: the dip fades out and in
    assert np.abs(np.diff(out[MASTER], axis=1)).max() <= np.abs(np.diff(a, axis=1)).max() + 1e-3


def test_the_fallback_keeps_unequal_stem_gains_as_low_as_the_lowest(tiny_model):
    a = song(3.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    events = {20: [(1, SetParam("stem/vocals/gain_db", -6.0)), (1, SetParam("stem/bass/gain_db", 3.0))]}
    out = run(engine, 160, events=events, late=set(range(100, 106)))
    fade = 100 + engine.fifo_periods - 1
    gap = slice((fade + 1) * P, (fade + 3) * P)
    # the dry signal plays on "other" at the lowest stem gain (vocals' -6 dB): no stem is louder than it may be
    np.testing.assert_allclose(out[OTHER, gap], a[:, gap] * 10 ** (-6 / 20), atol=2e-5)
    assert np.abs(out[VOCALS, gap]).max() == 0.0


def test_with_every_stem_at_one_gain_the_fallback_is_the_exact_dry_mix(tiny_model):
    a = song(3.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    out = run(engine, 160, late=set(range(100, 106)))
    np.testing.assert_allclose(out[MASTER, P:], a[:, P : 160 * P], atol=2e-5)


# -- item 8: defaults that work --
def live_session(args: list[str]):
    """A LiveSession opened from `stembridge live` arguments (the CLI's own option parsing and defaults)."""
    from stembridge.bridge.cli_live import LiveSession, live

    ctx = live.make_context("live", list(args))
    return LiveSession(ctx.params)


def test_live_with_no_options_loads_every_shipped_chain_so_the_documented_addresses_and_maps_work(tiny_model):
    from stembridge.bridge.presets import find_preset, load_controller_map

    session = live_session(["--backend", "dummy", "--inputs", "1", "--model", str(tiny_model), "--worker", "thread",
                            "--osc-port", "0", "--osc-tcp-port", "-1", "--thread-rt-priority", "0"])  # fmt: skip
    try:
        session.open()
        control = session.control
        for stem in control.stems:
            assert control.chains.get((1, stem)), f"no chain on {stem}"
        result = control.set("/stembridge/deck/1/stem/drums/fx/hpf/cutoff_frequency_hz", 800.0)
        assert result.value == 800.0 and not result.clamped
        mapper = control.add_midi(load_controller_map(find_preset("controllers", "generic_8x8")))
        assert mapper.unknown_targets() == []
    finally:
        session.close()


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_presets_check_rejects_unknown_stems_and_targets_naming_the_line(tmp_path):
    from click.testing import CliRunner
    from stembridge.bridge.cli_control import presets

    head = 'schema_version = 1\nname = "x"\n\n[[binding]]\ncontrol = "cc"\nnumber = 1\n'
    bad_stem = _write(tmp_path, "vocal.toml", head + 'target = "deck/1/stem/vocal/level"\n')
    bad_fx = _write(tmp_path, "fx.toml", head + 'target = "deck/1/stem/drums/fx/hpf/cutof_hz"\n')
    bad_plugin = _write(tmp_path, "plugin.toml", head + 'target = "deck/1/stem/drums/fx/flanger/rate_hz"\n')
    good = _write(
        tmp_path, "good.toml",
        head + 'target = "deck/1/stem/drums/fx/hpf/cutoff_frequency_hz"\n\n[[binding]]\ncontrol = "note"\n'
        'number = 2\nmode = "momentary"\ntarget = "deck/1/load_next"\n',
    )  # fmt: skip
    scene = _write(tmp_path, "scene.toml", 'schema_version = 1\nname = "s"\n\n[stem.vocal]\nmute = true\n')
    scene_fx = _write(
        tmp_path, "scene_fx.toml",
        'schema_version = 1\nname = "s"\n\n[stem.drums]\nchain = "drum_filter_sweep"\nfx.delay.mix = 0.5\n',
    )  # fmt: skip
    runner = CliRunner()
    for path, words in [
        (bad_stem, ["vocal.toml:7", "no stem 'vocal'"]),
        (bad_fx, ["fx.toml:7", "no parameter 'cutof_hz'"]),
        (bad_plugin, ["plugin.toml:7", "no plugin named 'flanger'"]),
        (scene, ["scene.toml:4", "no stem 'vocal'"]),
        (scene_fx, ["scene_fx.toml:6", "no plugin named 'delay' in chain drum_filter_sweep"]),
    ]:
        result = runner.invoke(presets, ["check", str(path)])
        assert result.exit_code == 1, (path, result.output)
        for word in words:
            assert word in result.output, (word, result.output)
    result = runner.invoke(presets, ["check", str(good)])
    assert result.exit_code == 0, result.output
    # another model's stems: the same map is fine where a stem is called "vocal"
    result = runner.invoke(presets, ["check", "--stems", "vocal,drums,bass,other", str(bad_stem)])
    assert result.exit_code == 0, result.output


# -- item 1: load and eject at run time --
def loader_for(engine, warnings=None):
    from stembridge.engine.live.loader import TrackLoader

    def warn(deck, path, reason):
        if warnings is not None:
            warnings.append((deck, path, reason))

    return TrackLoader(engine.decks, engine.queues, engine.sample_rate, on_warning=warn).start()


def test_a_track_loaded_into_an_empty_deck_leaves_the_playing_deck_untouched_and_plays(tiny_model, tmp_path):
    import soundfile as sf

    a, b = song(3.0, 0), song(2.0, 1)
    sf.write(tmp_path / "b.wav", b.T, SR, subtype="FLOAT")
    solo = make_engine(tiny_model, [FileDeck(a, "a"), FileDeck(None, "deck 2")])
    ref = run(solo, 200)
    engine = make_engine(tiny_model, [FileDeck(a, "a"), FileDeck(None, "deck 2")])
    loader = loader_for(engine)

    def before(block):
        if block == 40:
            loader.load(2, tmp_path / "b.wav")
            assert loader.wait_idle()

    try:
        out = run(engine, 200, events={60: [(2, SetParam("transport/play", 1))]}, before_block=before)
    finally:
        loader.close()
    deck2 = engine.decks[1]
    assert deck2.track.name == "b.wav" and deck2.track.complete and deck2.num_loads == 1
    # until deck 2 plays, everything is deck 1 alone, sample for sample
    np.testing.assert_array_equal(out[:, : 60 * P], ref[:, : 60 * P])
    # then the master is deck 1's plus the new track from its start (after its one-block fade-in)
    s = 61 * P
    np.testing.assert_allclose(out[MASTER, s:] - ref[MASTER, s:], b[:, P : P + 200 * P - s], atol=5e-5)


def test_loading_into_a_playing_deck_fades_it_out_and_the_new_track_waits_at_its_start(tiny_model, tmp_path):
    import soundfile as sf

    a, b = song(3.0, 0), song(2.0, 1)
    sf.write(tmp_path / "b.wav", b.T, SR, subtype="FLOAT")
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    loader = loader_for(engine)

    def before(block):
        if block == 50:
            loader.load(1, tmp_path / "b.wav")
            assert loader.wait_idle()

    try:
        out = run(engine, 120, events={80: [(1, SetParam("transport/play", 1))]}, before_block=before)
    finally:
        loader.close()
    fade = slice(50 * P, 51 * P)
    ramp = 1.0 - np.arange(1, P + 1, dtype=np.float32) / P
    np.testing.assert_allclose(out[MASTER, fade], a[:, fade] * ramp, atol=5e-5)  # faded out over one block
    assert np.abs(out[:, 51 * P : 80 * P]).max() == 0.0  # then paused with the new track
    np.testing.assert_allclose(out[MASTER, 81 * P :], b[:, P : 40 * P], atol=5e-5)  # played from its start


def test_a_file_that_fails_is_reported_and_the_deck_keeps_playing_what_it_had(tiny_model, tmp_path):
    a = song(3.0, 0)
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    warnings: list = []
    loader = loader_for(engine, warnings)

    def before(block):
        if block == 30:
            loader.load(1, bad)
            assert loader.wait_idle()
            loader.load(1, tmp_path / "missing.wav")
            assert loader.wait_idle()

    try:
        out = run(engine, 60, before_block=before)
    finally:
        loader.close()
    assert [w[0] for w in warnings] == [1, 1]
    assert "broken.mp3" in warnings[0][2] and "cannot decode" in warnings[0][2]
    assert "missing.wav" in warnings[1][2] and "not found" in warnings[1][2]
    np.testing.assert_allclose(out[MASTER, P:], a[:, P : 60 * P], atol=2e-5)
    assert engine.decks[0].track.name == "a" and engine.decks[0].num_loads == 0


def test_an_mp3_and_a_48_khz_file_decode_to_the_engine_rate_and_eject_empties_the_deck(tiny_model, tmp_path):
    import soundfile as sf

    t = np.arange(int(1.5 * 48000)) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    sf.write(tmp_path / "tone48.wav", np.stack([tone, tone], 1), 48000, subtype="FLOAT")
    sf.write(tmp_path / "song.mp3", song(1.5, 2).T, SR, format="MP3")
    engine = make_engine(tiny_model, [FileDeck(None, "deck 1")])
    loader = loader_for(engine)
    try:
        loader.load(1, tmp_path / "tone48.wav")
        assert loader.wait_idle()
        run(engine, 2)
        track = engine.decks[0].track
        assert track.complete and abs(track.num_frames - int(1.5 * SR)) <= 64
        # resampled, not just relabelled: still a 1 kHz tone at 44.1 kHz
        spectrum = np.abs(np.fft.rfft(track.audio[0, 4096 : 4096 + SR]))
        assert abs(np.argmax(spectrum) - 1000) <= 1
        loader.load(1, tmp_path / "song.mp3")
        assert loader.wait_idle()
        run(engine, 2)
        track = engine.decks[0].track
        assert track.name == "song.mp3" and abs(track.num_frames - int(1.5 * SR)) < 2048
        loader.eject(1)
        assert loader.wait_idle()
        run(engine, 2)
        assert engine.decks[0].track.num_frames == 0 and engine.decks[0].status()["track"] == ""
    finally:
        loader.close()


def _osc_messages(sock, seconds: float = 1.0, until=None) -> list[tuple[str, list]]:
    """Every OSC message (bundles opened) that reaches ``sock`` within ``seconds`` (or until ``until(msgs)``)."""
    import time

    from stembridge.bridge.osc_codec import parse_packet

    got: list = []
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            if until is not None and until(got):
                return got
            continue
        got += parse_packet(data)
        if until is not None and until(got):
            return got
    return got


def test_live_loads_and_ejects_over_osc_with_a_crate_and_warns_about_a_bad_file(tiny_model, tmp_path):
    import socket
    import time

    import soundfile as sf

    crate = tmp_path / "crate"
    crate.mkdir()
    for k, name in enumerate(["a_first.wav", "b_second.flac"]):
        sf.write(crate / name, song(1.0, k).T, SR)
    (crate / "c_broken.wav").write_bytes(b"RIFF....WAVEjunk" * 50)
    (crate / "notes.txt").write_text("not a track")
    session = live_session(["--backend", "dummy", "--decks", "2", "--crate", str(crate), "--model", str(tiny_model),
                            "--worker", "thread", "--osc-port", "0", "--osc-tcp-port", "-1",
                            "--thread-rt-priority", "0"])  # fmt: skip
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    me.bind(("127.0.0.1", 0))
    try:
        session.open()
        engine = session.engine
        assert [d.track.num_frames for d in engine.decks] == [0, 0]  # two empty decks
        host, port = session.control.osc.address

        def send(address, *args):
            from pythonosc.osc_message_builder import OscMessageBuilder

            builder = OscMessageBuilder(address)
            for arg in args:
                builder.add_arg(arg)
            me.sendto(builder.build().dgram, (host, port))

        send("/stembridge/crate/list")
        got = _osc_messages(me, until=lambda m: sum(a == "/stembridge/crate/entry" for a, _ in m) >= 3)
        assert ("/stembridge/crate/list", [3, str(crate)]) in got
        assert [args for a, args in got if a == "/stembridge/crate/entry"] == [
            [0, "a_first.wav"], [1, "b_second.flac"], [2, "c_broken.wav"],
        ]  # fmt: skip
        send("/stembridge/subscribe")
        _osc_messages(me, 0.3)
        send("/stembridge/deck/2/load", "b_second.flac")  # a crate entry by name
        send("/stembridge/deck/1/load_next")  # the crate's first entry
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            engine.decks[0].track.name == "a_first.wav" and engine.decks[1].track.name == "b_second.flac"
        ):
            time.sleep(0.02)
        assert engine.decks[0].track.name == "a_first.wav" and engine.decks[1].track.name == "b_second.flac"
        send("/stembridge/deck/1/load_next")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and engine.decks[0].track.name != "b_second.flac":
            time.sleep(0.02)
        send("/stembridge/deck/1/load_next")  # the broken file: a warning, and deck 1 keeps what it had
        got = _osc_messages(me, 5.0, until=lambda m: any(a == "/stembridge/warning" for a, _ in m))
        warning = [args for a, args in got if a == "/stembridge/warning"]
        assert warning and warning[0][0] == "/stembridge/deck/1/load" and "c_broken.wav" in warning[0][1]
        assert "cannot decode" in warning[0][1]
        time.sleep(0.1)
        assert engine.decks[0].track.name == "b_second.flac"
        send("/stembridge/deck/2/eject")
        send("/stembridge/deck/5/load", "x.wav")  # no such deck
        got = _osc_messages(me, 2.0, until=lambda m: any(a == "/stembridge/warning" for a, _ in m))
        assert any(a == "/stembridge/warning" and "no deck 5" in args[1] for a, args in got)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and engine.decks[1].track.num_frames:
            time.sleep(0.02)
        assert engine.decks[1].track.num_frames == 0
    finally:
        me.close()
        session.close()


# -- item 2: deck feedback --
def test_a_subscriber_gets_true_deck_state_first_then_position_at_10_hz_and_load_progress(tiny_model, tmp_path):
    import socket
    import time

    import soundfile as sf
    from pythonosc.osc_message_builder import OscMessageBuilder

    sf.write(tmp_path / "first.wav", song(3.0, 0).T, SR)
    sf.write(tmp_path / "second.wav", song(2.0, 1).T, SR)
    session = live_session(["--backend", "dummy", "--deck", str(tmp_path / "first.wav"), "--decks", "2", "--loop",
                            "--model", str(tiny_model), "--worker", "thread", "--osc-port", "0",
                            "--osc-tcp-port", "-1", "--thread-rt-priority", "0"])  # fmt: skip
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    me.bind(("127.0.0.1", 0))
    try:
        session.open()
        host, port = session.control.osc.address
        me.sendto(OscMessageBuilder("/stembridge/subscribe").build().dgram, (host, port))
        got = _osc_messages(me, 3.0, until=lambda m: any(a == "/stembridge/subscribed" for a, _ in m))
        dump = {a: args for a, args in got[: [a for a, _ in got].index("/stembridge/subscribed")]}
        # the first state dump tells the truth: deck 1 plays (it started by itself), deck 2 is empty and stopped
        assert dump["/stembridge/deck/1/transport/play"] == [1]
        assert dump["/stembridge/deck/1/transport/loop"] == [1]
        assert dump["/stembridge/deck/2/transport/play"] == [0]
        assert dump["/stembridge/deck/1/track"] == ["first.wav"] and dump["/stembridge/deck/2/track"] == [""]
        assert abs(dump["/stembridge/deck/1/duration_s"][0] - 3.0) < 1e-3
        assert dump["/stembridge/deck/1/tempo"] == [1.0] and dump["/stembridge/deck/1/hq"] == [0]
        t0 = time.monotonic()
        got = _osc_messages(me, 1.0)
        positions = [args[0] for a, args in got if a == "/stembridge/deck/1/position_s"]
        assert 6 <= len(positions) <= 14, positions  # about 10 a second
        assert all(b > a for a, b in zip(positions, positions[1:], strict=False)), positions  # it moves on
        assert not any(a == "/stembridge/deck/2/position_s" for a, _ in got)  # a stopped deck stays quiet
        session.load(2, str(tmp_path / "second.wav"))
        got = _osc_messages(me, 3.0, until=lambda m: ("/stembridge/deck/2/loaded", [1.0]) in m)
        assert ("/stembridge/deck/2/track", ["second.wav"]) in got and ("/stembridge/deck/2/loaded", [1.0]) in got
        assert any(a == "/stembridge/deck/2/duration_s" and abs(args[0] - 2.0) < 1e-3 for a, args in got)
        # a pause reaches the tree (and so every LED and subscriber) from the deck itself
        session.engine.push(1, SetParam("transport/play", 0))
        got = _osc_messages(me, 2.0, until=lambda m: ("/stembridge/deck/1/transport/play", [0]) in m)
        assert ("/stembridge/deck/1/transport/play", [0]) in got
        assert session.control.get("deck/1/transport/play") is False
        assert time.monotonic() - t0 < 10
    finally:
        me.close()
        session.close()


# -- item 3: per-deck outputs and the headphone cue --
def pairs(engine) -> dict[str, slice]:
    names = engine.output_names()
    return {names[k][:-2]: slice(k, k + 2) for k in range(0, len(names), 2)}


def test_per_deck_outputs_carry_only_their_deck_and_a_deck_is_sample_exact_while_another_loads(tiny_model, tmp_path):
    import soundfile as sf

    a, b = song(3.0, 0), song(2.0, 1)
    sf.write(tmp_path / "b.wav", b.T, SR, subtype="FLOAT")
    kw = dict(outputs="both", cue=True)
    solo = make_engine(tiny_model, [FileDeck(a, "a"), FileDeck(None, "deck 2")], **kw)
    ref = run(solo, 200)
    engine = make_engine(tiny_model, [FileDeck(a, "a"), FileDeck(None, "deck 2")], **kw)
    out_pairs = pairs(engine)
    assert list(out_pairs)[:6] == ["master", "vocals", "drums", "bass", "other", "deck1_master"]
    assert list(out_pairs)[-1] == "cue" and len(out_pairs) == 5 + 2 * 5 + 1
    loader = loader_for(engine)

    def before(block):
        if block == 40:
            loader.load(2, tmp_path / "b.wav")
            assert loader.wait_idle()

    events = {
        60: [(2, SetParam("transport/play", 1))],
        100: [(2, SetParam("pfl", 1)), (2, SetParam("level_db", -120.0))],  # cue deck 2 with its fader down
        140: [(0, SetParam("cue/mix", 1.0))],  # headphones: master only
    }
    try:
        out = run(engine, 200, events=events, before_block=before)
    finally:
        loader.close()
    # deck 1's own ports are deck 1 alone, sample for sample, through the load into deck 2 and its playing
    for name in ["deck1_master", "deck1_vocals", "deck1_drums", "deck1_bass", "deck1_other"]:
        np.testing.assert_array_equal(out[out_pairs[name]], ref[out_pairs[name]])
    # deck 2's ports carry the new track from its start (after the one-block fade-in), until its fader goes down
    s, e = 61 * P, 100 * P
    np.testing.assert_allclose(out[out_pairs["deck2_master"], s:e], b[:, P : P + e - s], atol=5e-5)
    deck2_stems = sum(out[out_pairs[f"deck2_{stem}"], s:e] for stem in engine.stems)
    np.testing.assert_allclose(deck2_stems, out[out_pairs["deck2_master"], s:e], atol=5e-5)
    assert np.abs(out[out_pairs["deck2_master"], 102 * P :]).max() == 0.0  # the fader is down
    # the summed busses are the sum of the decks
    for stem in ("master", *engine.stems):
        total = out[out_pairs[f"deck1_{stem}"]] + out[out_pairs[f"deck2_{stem}"]]
        np.testing.assert_allclose(out[out_pairs[stem]], total, atol=1e-6)
    # the cue: silent until deck 2's switch is on, then deck 2 before its fader (pre-fader listening), then the
    # master once the blend is at 1
    cue = out[out_pairs["cue"]]
    assert np.abs(cue[:, : 100 * P]).max() == 0.0
    np.testing.assert_allclose(cue[:, 102 * P : 140 * P], b[:, 102 * P - 60 * P : 140 * P - 60 * P], atol=5e-5)
    np.testing.assert_allclose(cue[:, 142 * P :], out[MASTER, 142 * P :], atol=1e-6)


def test_the_recorder_takes_any_layout_and_names_its_channels(tiny_model, tmp_path):
    import soundfile as sf
    from stembridge.bridge.cli_live import LiveError, record_rows
    from stembridge.engine.live.monitor import Recorder

    engine = make_engine(tiny_model, [FileDeck(song(1.0, 0), "a"), FileDeck(song(1.0, 1), "b")], outputs="both",
                         cue=True)  # fmt: skip
    names = engine.output_names()
    rows = record_rows(names, "deck2_master,cue", 2)
    assert [names[r] for r in rows] == ["deck2_master_L", "deck2_master_R", "cue_L", "cue_R"]
    assert len(record_rows(names, "per-deck", 2)) == 20 and len(record_rows(names, "summed", 2)) == 10
    with pytest.raises(LiveError, match="deck3_master"):
        record_rows(names, "deck3_master", 2)
    rec = Recorder(tmp_path / "r.wav", engine.num_outputs, SR, P, rows=rows, channel_names=[names[r] for r in rows])
    engine.taps.append(rec)
    out = run(engine, 20)
    rec.close()
    data, _ = sf.read(tmp_path / "r.wav", dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data.T, out[rows])
    assert (tmp_path / "r.wav.channels.txt").read_text().split() == ["deck2_master_L", "deck2_master_R", "cue_L",
                                                                     "cue_R"]  # fmt: skip


# -- item 5: any host sample rate --
@pytest.mark.parametrize("host_rate", [48000, 88200, 96000])
def test_at_another_host_rate_the_stems_are_separated_and_sum_to_the_input_band_above_22_khz_included(
    tiny_model, host_rate
):
    from stembridge.engine.live import InputDeck
    from stembridge.engine.live.resample import ResampledSeparator

    inner = StreamingSeparator(tiny_model, num_streams=1, max_hops=64)
    sep = ResampledSeparator(inner, host_rate, P)
    engine = LiveEngine(sep, [InputDeck("in")], P, fifo_periods=2)
    assert engine.sample_rate == host_rate and engine.latency_samples == sep.latency_samples + 2 * P
    assert sep.resampler_latency_samples > 0
    n = (int(1.5 * host_rate) // P) * P
    t = np.arange(n) / host_rate
    rng = np.random.default_rng(4)
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    if host_rate > 88200:
        x += 0.2 * np.sin(2 * np.pi * 30000 * t)  # above the model's Nyquist frequency
    x = np.stack([x, 0.8 * x]).astype(np.float32)
    out = np.zeros((engine.num_outputs, n), np.float32)
    for b in range(n // P):
        engine.process_block(x[:, b * P : (b + 1) * P], out[:, b * P : (b + 1) * P])
        engine.worker.step()
    lat = engine.latency_samples
    assert engine.num_misses == 0
    # the master is the input delayed by exactly the reported latency, whatever the rates
    np.testing.assert_allclose(out[MASTER, lat:], x[:, : n - lat], atol=2e-5)
    on = lat + 8 * P
    stems = out[2:10, on:].reshape(4, 2, -1)
    np.testing.assert_allclose(stems.sum(0), x[:, on - lat : n - lat], atol=2e-5)  # separated, and summing exactly
    assert np.abs(stems[0]).max() > 0.01  # the vocal stem carries the model's output
    if host_rate > 88200:  # the 30 kHz tone is in the residual ("other") and nowhere else
        spectrum = np.abs(np.fft.rfft(stems[0, 0, -host_rate // 2 :]))
        k = 30000 * (host_rate // 2) // host_rate
        assert spectrum[k - 2 : k + 3].max() < 1e-3 * np.abs(np.fft.rfft(stems[3, 0, -host_rate // 2 :]))[k]


def test_a_file_deck_at_48_khz_plays_the_file_at_its_playhead(tiny_model):
    from stembridge.engine.live.resample import ResampledSeparator

    rate = 48000
    t = np.arange(3 * rate) / rate
    a = np.stack([0.3 * np.sin(2 * np.pi * 330 * t)] * 2).astype(np.float32)
    sep = ResampledSeparator(StreamingSeparator(tiny_model, num_streams=1, max_hops=64), rate, P)
    engine = LiveEngine(sep, [FileDeck(a, "a")], P)
    out = run(engine, 400)
    np.testing.assert_allclose(out[MASTER, P:], a[:, P : 400 * P], atol=2e-5)
    assert np.abs(out[VOCALS, 200 * P :]).max() > 0.01 and engine.num_misses == 0


def test_separate_keeps_the_stems_sum_exact_for_a_96_khz_file_the_band_above_22_khz_included(tiny_model, tmp_path):
    import soundfile as sf
    from click.testing import CliRunner
    from stembridge.bridge.cli import main

    rate = 96000
    t = np.arange(rate) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 30000 * t)
    x = np.stack([x, 0.7 * x], axis=1).astype(np.float32)
    sf.write(tmp_path / "hi.wav", x, rate, subtype="FLOAT")
    result = CliRunner().invoke(main, ["separate", str(tmp_path / "hi.wav"), "-o", str(tmp_path / "out"),
                                       "--model", str(tiny_model)])  # fmt: skip
    assert result.exit_code == 0, result.output
    stems = {p.stem: sf.read(p, dtype="float32")[0] for p in (tmp_path / "out").rglob("*.wav")}
    assert set(stems) == {"vocals", "drums", "bass", "other"}
    total = sum(stems.values())
    np.testing.assert_allclose(total, x, atol=1e-5)  # 24-bit files: a few LSB
    spectrum = np.abs(np.fft.rfft(stems["other"][:, 0]))
    assert spectrum[30000] > 0.5 * np.abs(np.fft.rfft(x[:, 0]))[30000]  # the 30 kHz tone is kept, in "other"


# -- item 7: plugin delay compensation --
class LatentIdentity:
    """A plugin with a known latency that behaves as pedalboard streams latent plugins: its output is aligned with
    its input but delivered ``latency`` samples late, in blocks of varying length."""

    def __init__(self, latency: int, burst: int = 300) -> None:
        self.latency, self.burst = latency, burst
        self.reset()

    def reset(self) -> None:
        self._held = np.zeros((2, 0), np.float32)

    def process(self, x, sample_rate, buffer_size=None, reset=False):
        self._held = np.concatenate([self._held, x], axis=1)
        ready = self._held.shape[1] - self.latency
        if ready < self.burst:  # delivered in bursts, as pedalboard's latent plugins do
            return np.zeros((2, 0), np.float32)
        out, self._held = self._held[:, :ready], self._held[:, ready:]
        return out


def test_a_chain_with_a_known_latency_keeps_the_stems_sum_equal_to_the_deck_input_after_the_reported_delay(
    tiny_model,
):
    from stembridge.engine.commands import SwapChain
    from stembridge.engine.mixer import chain_latencies

    a = song(3.0, 0)
    plugin = LatentIdentity(1000)
    latencies = chain_latencies([plugin], SR, P)
    assert latencies[0] >= 1000  # the measured deficit covers the latency and the bursts
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    engine.push(1, SwapChain("drums", [plugin], ("late",), latencies))
    out = run(engine, 200)
    delay = engine.stats()["fx_latency_samples"]
    assert delay == latencies[0] == engine.mixers[0].latency_samples
    n = 200 * P
    stems = out[2:10].reshape(4, 2, n)
    # the stems still sum to the deck's input (the file at the playhead), delayed by exactly the reported amount
    np.testing.assert_allclose(stems.sum(0)[:, delay + P :], a[:, P : n - delay], atol=5e-5)
    np.testing.assert_allclose(out[MASTER, delay + P :], a[:, P : n - delay], atol=5e-5)
    # and the latent stem is not shifted against the others: the same run without the plugin, delayed
    ref_engine = make_engine(tiny_model, [FileDeck(a, "a")])
    ref = run(ref_engine, 200)
    np.testing.assert_allclose(out[DRUMS, delay:], ref[DRUMS, : n - delay], atol=5e-5)
    np.testing.assert_allclose(out[VOCALS, delay:], ref[VOCALS, : n - delay], atol=5e-5)


def test_a_real_latent_pedalboard_plugin_is_measured_and_compensated():
    import pedalboard
    from stembridge.engine.mixer import StemMixer

    mixer = StemMixer(("vocals", "drums", "bass", "other"), 2, SR, max_block_size=P)
    mixer.set_chain("drums", [pedalboard.Resample(target_sample_rate=96000)])  # measured here
    delay = mixer.latency_samples
    assert delay > 0 and mixer.chain_latency("drums") == delay
    t = np.arange(2 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    stems = np.stack([np.stack([x, x])] * 4) / 4
    n = (x.size // P) * P
    out = np.concatenate(
        [mixer.process(np.ascontiguousarray(stems[..., i : i + P]))[0].copy() for i in range(0, n, P)], -1
    )
    # the resampled drum stem lines up with the untouched vocal stem at the compensated delay, not one sample off
    errors = {d: np.abs(out[1, 0, 4000 : n - 64] - out[0, 0, 4000 + d : n - 64 + d]).max() for d in (-2, -1, 0, 1, 2)}
    assert min(errors, key=errors.get) == 0 and errors[0] < 0.5 * max(errors[-2], errors[2])
    np.testing.assert_allclose(out[0, :, delay:], stems[0, :, : n - delay], atol=1e-6)  # vocals: pure delay


# -- item 4: tempo and key with keylock --
def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)  # parabolic interpolation of the peak
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / x.size


@pytest.mark.parametrize("keylock", [True, False])
def test_tempo_0_9_lasts_1_over_0_9_keeps_the_pitch_with_keylock_and_the_stems_sum_to_the_deck(tiny_model, keylock):
    pytest.importorskip("pylibrb", reason="tempo needs pylibrb (pip install pylibrb)")
    seconds = 2.0
    t = np.arange(int(seconds * SR)) / SR
    tone = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    deck = FileDeck(tone, "tone", play=False)
    engine = make_engine(tiny_model, [deck], outputs="both")
    assert deck.ensure_stretcher()
    events = {0: [(1, SetParam("transport/tempo", 0.9)), (1, SetParam("transport/keylock", float(keylock)))],
              2: [(1, SetParam("transport/play", 1))]}  # fmt: skip
    num_blocks = int(3.0 * SR / P)
    out = run(engine, num_blocks, events=events)
    played = np.flatnonzero(np.abs(out[MASTER]).max(axis=0) > 1e-3)
    duration = (played[-1] - played[0]) / SR
    assert abs(duration - seconds / 0.9) < 0.03, duration  # 2.222 s, within a few periods
    steady = out[MASTER][0, played[0] + SR // 2 : played[0] + SR // 2 + SR]
    pitch = _peak_hz(steady, SR)
    if keylock:
        assert abs(pitch - 440.0) < 2.0, pitch  # pitch unchanged
    else:
        assert abs(pitch - 396.0) < 2.0, pitch  # a turntable: 440 x 0.9
    # the stems still sum to the deck's output: the same deck with separation never arriving plays only its dry
    # (heard) signal; the separated run's busses sum to exactly that, so the separator heard what is played
    dry_deck = FileDeck(tone, "tone", play=False)
    dry_engine = make_engine(tiny_model, [dry_deck], outputs="both")
    assert dry_deck.ensure_stretcher()
    dry = run(dry_engine, num_blocks, events=events, late=set(range(num_blocks)))
    stems = out[2:10].reshape(4, 2, -1)
    np.testing.assert_allclose(stems.sum(0), dry[MASTER], atol=5e-5)
    assert np.abs(out[VOCALS, played[0] + SR // 2 :]).max() > 0.01  # separated (not the dry fallback)
    assert engine.num_misses == 0 and deck.status()["tempo"] == 0.9
    for d in (deck, dry_deck):
        d.release_stretcher()  # before the interpreter exits (pylibrb's bindings report live objects then)


def test_tempo_survives_seeks_loops_and_changes_while_playing(tiny_model):
    pytest.importorskip("pylibrb", reason="tempo needs pylibrb (pip install pylibrb)")
    a = song(3.0, 0)
    deck = FileDeck(a, "a")
    engine = make_engine(tiny_model, [deck])
    assert deck.ensure_stretcher()
    events = {
        20: [(1, SetParam("transport/tempo", 1.08))],  # into the stretcher while playing
        60: [(1, SetParam("transport/seek_s", 1.0)), (1, SetParam("transport/key", -2.0))],
        100: [
            (1, SetParam("transport/loop_start_s", 1.0)),
            (1, SetParam("transport/loop_end_s", 1.5)),
            (1, SetParam("transport/loop", 1)),
        ],  # fmt: skip
        160: [(1, SetParam("transport/tempo", 1.0)), (1, SetParam("transport/key", 0.0))],  # out of it again
    }
    out = run(engine, 260, events=events)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 2.0
    assert np.abs(out[MASTER, 250 * P :]).max() > 0.05  # still playing, in the loop
    assert 1.0 * SR <= deck.playhead <= 1.5 * SR
    # no step bigger than the music's own at the switches (crossfaded like a jump)
    assert np.abs(np.diff(out[MASTER], axis=1)).max() < 4 * np.abs(np.diff(a, axis=1)).max()
    deck.release_stretcher()


def test_a_midi_button_mapped_to_load_next_loads_the_crates_next_track(tiny_model, tmp_path):
    import time

    import mido
    import soundfile as sf
    from stembridge.bridge.presets import load_controller_map

    crate = tmp_path / "crate"
    crate.mkdir()
    for k, name in enumerate(["one.wav", "two.wav"]):
        sf.write(crate / name, song(0.5, k).T, SR)
    cmap_path = _write(
        tmp_path, "map.toml",
        'schema_version = 1\nname = "crate"\n\n[[binding]]\ncontrol = "note"\nnumber = 36\nmode = "momentary"\n'
        'target = "deck/1/load_next"\n',
    )  # fmt: skip
    session = live_session(["--backend", "dummy", "--decks", "1", "--crate", str(crate), "--model", str(tiny_model),
                            "--worker", "thread", "--no-osc", "--thread-rt-priority", "0"])  # fmt: skip
    try:
        session.open()
        mapper = session.control.add_midi(load_controller_map(cmap_path))
        deck = session.engine.decks[0]
        for expected in ("one.wav", "two.wav"):
            mapper.handle(mido.Message("note_on", note=36, velocity=127))
            mapper.handle(mido.Message("note_off", note=36))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and deck.track.name != expected:
                time.sleep(0.02)
            assert deck.track.name == expected
    finally:
        session.close()


def test_a_portaudio_device_gets_master_then_the_cue_pair_first(tiny_model):
    engine = make_engine(tiny_model, [FileDeck(song(0.5), "a")], outputs="both", cue=True, cue_first=True)
    names = engine.output_names()
    assert names[:6] == ["master_L", "master_R", "cue_L", "cue_R", "vocals_L", "vocals_R"]
    assert names[-2:] == ["deck1_other_L", "deck1_other_R"] and len(names) == 2 * (1 + 1 + 4 + 5)
    out = run(engine, 40, events={10: [(1, SetParam("pfl", 1))]})
    np.testing.assert_allclose(out[2:4, 12 * P :], out[0:2, 12 * P :], atol=1e-6)  # one deck cued: cue = master
