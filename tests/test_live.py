"""The live engine without a device: decks, read-ahead, the worker FIFO, the dry fallback, transport, backends.

Most tests drive the engine synchronously: ``process_block`` (the audio thread's work) then ``worker.step()`` (the
worker's), so timing never decides the outcome; a late worker is simulated by not stepping it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from stembridge.engine.commands import SetParam
from stembridge.engine.live import FileDeck, InputDeck, LiveEngine
from stembridge.engine.live.backends import DummyBackend
from stembridge.engine.live.monitor import Monitor, Recorder
from stembridge.engine.separator import StreamingSeparator

SR = 44100
P = 256  # host period
MASTER, VOCALS, DRUMS, BASS, OTHER = (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 10))


def song(seconds: float, seed: int = 0) -> np.ndarray:
    """A stereo test signal: two tones plus noise, float32 (2, n)."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t) + 0.2 * np.sin(2 * np.pi * 1330 * t)
    return (np.stack([x, 0.7 * x]) + 0.05 * rng.standard_normal((2, n))).astype(np.float32)


def make_engine(model, decks, fifo_periods=2, **kwargs) -> LiveEngine:
    sep = StreamingSeparator(model, num_streams=len(decks), max_hops=64)
    return LiveEngine(sep, decks, P, fifo_periods=fifo_periods, **kwargs)


def run(engine: LiveEngine, num_blocks: int, *, inp=None, events=None, late=()) -> np.ndarray:
    """Run blocks synchronously; events {block: [(deck, command)]}; the worker is not stepped in blocks ``late``.
    Returns the outputs float32 (num_outputs, num_blocks * P)."""
    out = np.zeros((engine.num_outputs, num_blocks * P), dtype=np.float32)
    for b in range(num_blocks):
        for deck, cmd in (events or {}).get(b, []):
            assert engine.push(deck, cmd)
        block_in = inp[:, b * P : (b + 1) * P] if inp is not None else np.zeros((0, P), np.float32)
        engine.process_block(block_in, out[:, b * P : (b + 1) * P])
        if b not in late:
            engine.worker.step()
    return out


def offline(model, audio: np.ndarray) -> np.ndarray:
    """One-shot separation of audio (2, n): stems (4, 2, n), delayed by the model latency."""
    sep = StreamingSeparator(model, num_streams=1, max_hops=64)
    n = audio.shape[1] - audio.shape[1] % sep.hop_size
    return sep.process(np.ascontiguousarray(audio[None, :, :n]))[0].copy()


def test_file_deck_plays_the_file_at_the_playhead_and_reads_separation_ahead(tiny_model):
    a, b = song(3.0, 0), song(3.0, 1)
    engine = make_engine(tiny_model, [FileDeck(a, "a"), FileDeck(b, "b")], fifo_periods=3)
    num_blocks = 300
    out = run(engine, num_blocks)
    n = num_blocks * P
    total = a[:, :n] + b[:, :n]
    # the master is the two files at their playheads, sample for sample, from the end of the first (fade-in) block:
    # a file deck adds no latency, whatever the separation is doing
    np.testing.assert_allclose(out[MASTER, P:], total[:, P:], atol=2e-5)
    # the stem busses sum to the master
    np.testing.assert_allclose(out[2:].reshape(4, 2, n).sum(0), out[MASTER], atol=2e-5)
    # once separation is on, the busses are the model's stems of what is heard now: the feed ran latency_samples
    # ahead of the playhead, so bus[T] = offline(file[latency:])[T - fifo_periods * P], for each deck (batched)
    lat, lag = engine.latency_samples, engine.fifo_periods * P
    on = (engine.decks[0].settle_blocks + 2) * P
    ref = offline(tiny_model, a[:, lat:]) + offline(tiny_model, b[:, lat:])
    vocals_ref = ref[0, :, on - lag : n - lag]
    np.testing.assert_allclose(out[VOCALS, on:], vocals_ref, atol=2e-5)
    assert np.abs(vocals_ref).max() > 0.01  # the fixture model puts real signal on the vocal stem
    assert engine.num_misses == 0 and engine.worker.num_skipped == 0
    levels = engine.meter_levels()  # per deck, over the last ~2048 frames: what the control side pushes as meters
    peak, rms = levels[0]["master"]
    assert abs(peak - np.abs(a[:, n - 2048 : n]).max()) < 1e-4 and 0 < rms < peak  # deck 1 plays file a


def test_meters_of_a_silent_stem_read_zero_not_minus_zero(tiny_model):
    engine = make_engine(tiny_model, [InputDeck("mic")])
    engine.meters[...] = -0.0  # what a silent stem's samples can be
    engine.meters[0, 1, 0, 5] = -0.25
    peaks = np.array([[peak for peak, _rms in deck.values()] for deck in engine.meter_levels()])
    assert peaks[0, 1] == 0.25 and not np.signbit(np.delete(peaks, 1, axis=1)).any()


def test_live_input_latency_is_model_latency_plus_fifo_periods(tiny_model):
    engine = make_engine(tiny_model, [InputDeck("mic")])
    assert engine.fifo_periods == 2  # a live input deck gets the shortest FIFO by default
    assert engine.latency_samples == engine.separator.latency_samples + 2 * P  # the hop (64) divides the period
    x = song(1.5, 2)
    n = (x.shape[1] // P) * P
    out = run(engine, n // P, inp=x[:, :n])
    lat = engine.latency_samples
    # the master (dry or separated, the same sum) is the input delayed by exactly the reported latency
    np.testing.assert_allclose(out[MASTER, lat:], x[:, : n - lat], atol=2e-5)
    # and the vocal bus is the model's vocal stem, played fifo_periods later than the worker made it
    on = (engine.worker.settle_blocks + 4) * P
    ref = offline(tiny_model, x[:, :n])
    np.testing.assert_allclose(out[VOCALS, on:], ref[0, :, on - 2 * P : n - 2 * P], atol=2e-5)


def test_late_worker_fades_to_dry_on_the_other_bus_and_back_without_a_gap(tiny_model):
    a = song(3.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    late = set(range(100, 106))  # the worker misses six periods, then catches up in one batched call
    out = run(engine, 160, late=late)
    n = 160 * P
    np.testing.assert_allclose(out[MASTER, P:], a[:, P:n], atol=2e-5)  # never silent, never a jump
    assert engine.num_misses > 0 and engine.num_dry_blocks > 0
    vocals = out[VOCALS]
    ref = offline(tiny_model, a[:, engine.latency_samples :])[0]
    lag = engine.fifo_periods * P
    # the block before the first missing stems fades the vocal stem out linearly; then it is silent and the
    # dry mix is on the other bus; then separation fades back in over one block and continues exactly
    fade = 100 + engine.fifo_periods - 1  # block 100's stems were due at block 102, known late at block 101
    ramp = 1.0 - np.arange(1, P + 1, dtype=np.float32) / P
    seg = slice(fade * P, (fade + 1) * P)
    np.testing.assert_allclose(vocals[:, seg], ref[:, fade * P - lag : (fade + 1) * P - lag] * ramp, atol=2e-5)
    gap = slice((fade + 1) * P, (fade + 3) * P)
    assert np.abs(vocals[:, gap]).max() == 0.0
    np.testing.assert_allclose(out[OTHER, gap], a[:, gap], atol=2e-5)
    back = 140 * P
    np.testing.assert_allclose(vocals[:, back:], ref[:, back - lag : n - lag], atol=2e-5)
    # no step in the vocal bus larger than the signal's own largest step
    assert np.abs(np.diff(vocals, axis=1)).max() <= np.abs(np.diff(ref, axis=1)).max() + 1e-6


def test_seek_is_heard_at_once_and_separation_returns(tiny_model):
    a = song(4.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    seek_block, target = 80, 2 * SR
    out = run(engine, 160, events={seek_block: [(1, SetParam("transport/seek_s", 2.0))]})
    s = seek_block * P
    # the seek block crossfades old into new; from the next block on the master is the file from 2.0 s
    np.testing.assert_allclose(out[MASTER, s + P :], a[:, target + P : target + 160 * P - s], atol=2e-5)
    np.testing.assert_allclose(out[MASTER, s + P - 1], a[:, target + P - 1], atol=2e-5)
    # separation is back after the settle time and is the model's view of the new position
    deck = engine.decks[0]
    assert engine.decks[0].num_jumps == 1
    back = (seek_block + deck.settle_blocks + 1) * P
    assert np.abs(out[VOCALS, back:]).max() > 0.01
    np.testing.assert_allclose(out[2:, back:].reshape(4, 2, -1).sum(0), out[MASTER, back:], atol=2e-5)


def test_pause_play_cue_and_loop(tiny_model):
    a = song(2.0, 0)
    deck = FileDeck(a, "a")
    engine = make_engine(tiny_model, [deck])
    events = {
        20: [(1, SetParam("transport/play", 0))],
        40: [(1, SetParam("transport/play", 1))],
        60: [(1, SetParam("transport/cue_s", 0.5)), (1, SetParam("transport/loop_start_s", 0.5))],
        61: [(1, SetParam("transport/loop_end_s", 0.6)), (1, SetParam("transport/loop", 1))],
        190: [(1, SetParam("transport/cue", 1))],
    }
    out = run(engine, 200, events=events)
    m = out[MASTER]
    # pause fades out within its block (the playhead runs on through it) and stays silent; play resumes where it
    # stopped, with a one-block fade-in
    assert np.abs(m[:, 21 * P : 40 * P]).max() == 0.0
    fade_in = np.arange(1, P + 1, dtype=np.float32) / P
    np.testing.assert_allclose(m[:, 40 * P : 41 * P], a[:, 21 * P : 22 * P] * fade_in, atol=2e-5)
    np.testing.assert_allclose(m[:, 41 * P : 42 * P], a[:, 22 * P : 23 * P], atol=2e-5)
    # the loop 0.5 s .. 0.6 s: once the playhead reaches 0.6 s it repeats the loop
    loop = a[:, int(0.5 * SR) : int(0.6 * SR)]
    start = int(0.6 * SR) + 19 * P  # engine sample where the playhead first reaches 0.6 s (19 silent blocks)
    np.testing.assert_allclose(m[:, start : start + loop.shape[1]], loop, atol=2e-5)
    np.testing.assert_allclose(m[:, start + loop.shape[1] : start + 2 * loop.shape[1]], loop, atol=2e-5)
    # cue: back to the cue point, paused
    assert not deck.playing and deck.playhead == int(0.5 * SR)
    assert np.abs(m[:, 191 * P :]).max() == 0.0
    assert deck.status()["loop"] is True


def test_mute_vocals_is_silent_within_the_ramp_and_the_other_busses_continue(tiny_model):
    a = song(3.0, 0)
    engine = make_engine(tiny_model, [FileDeck(a, "a")])
    before = run(engine, 200)
    engine2 = make_engine(tiny_model, [FileDeck(a, "a")])
    after = run(engine2, 200, events={150: [(1, SetParam("stem/vocals/mute", 1))]})
    ramp = int(0.010 * SR)
    s = 150 * P
    assert np.abs(after[VOCALS, s + ramp :]).max() == 0.0
    assert np.abs(after[VOCALS, s - P : s]).max() > 0.01
    np.testing.assert_allclose(after[DRUMS], before[DRUMS], atol=1e-6)
    np.testing.assert_allclose(after[OTHER], before[OTHER], atol=1e-6)


def test_process_block_allocates_no_audio_buffers(tiny_model):
    engine = make_engine(tiny_model, [FileDeck(song(3.0), "a"), InputDeck("in")])
    inp = np.zeros((2, P), np.float32)
    out = np.zeros((engine.num_outputs, P), np.float32)
    events = {
        60: [(1, SetParam("transport/seek_s", 1.0)), (2, SetParam("level_db", -6.0))],  # crossfades, ramps
        70: [(1, SetParam("transport/play", 0))],
        75: [(1, SetParam("transport/play", 1)), (1, SetParam("stem/vocals/mute", 1))],
    }
    worst = kept = 0
    tracemalloc.start()
    try:
        for b in range(150):
            for deck, cmd in events.get(b, []):
                engine.push(deck, cmd)
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            engine.process_block(inp, out)
            current, peak = tracemalloc.get_traced_memory()
            if b >= 50:
                worst, kept = max(worst, peak - before), kept + current - before
            if b < 50 or b == 100:  # the worker is late from block 50 and catches up once at block 100
                engine.worker.step()
    finally:
        tracemalloc.stop()
    assert engine.num_misses > 0  # the measured blocks include the dry fallback's fades
    # no per-block audio buffer (a deck's stems block is 8 KB): what remains is small Python objects and the
    # StemMixer's broadcasting multiplies (~3 KB of NumPy iteration buffer each)
    assert worst < 4 * P * 2 * 4, f"process_block allocated {worst} bytes at peak"
    assert kept < 1024


def test_commands_with_unknown_paths_are_counted_not_fatal(tiny_model):
    engine = make_engine(tiny_model, [InputDeck("in")])
    run(engine, 4, inp=np.zeros((2, 4 * P), np.float32), events={1: [(1, SetParam("transport/play", 1))]})
    run(engine, 2, inp=np.zeros((2, 2 * P), np.float32), events={0: [(1, SetParam("stem/nope/gain_db", 1))]})
    assert engine.stats()["commands_rejected"] == 2


def test_worker_process_separates_in_real_time_on_the_dummy_backend(tiny_model, tmp_path):
    a = song(3.0, 0)
    sep = StreamingSeparator(tiny_model, num_streams=1)
    engine = LiveEngine(sep, [FileDeck(a, "a")], P, worker_mode="process")
    backend = DummyBackend()
    backend.open(SR, P)
    recorder = Recorder(tmp_path / "rec.wav", engine.num_outputs, SR, P)
    engine.taps.append(recorder)
    monitor = Monitor(engine, backend)
    engine.start()
    try:
        backend.start(engine.process_block, engine.input_names(), engine.output_names())
        import time

        time.sleep(1.0)
    finally:
        backend.close()
        stats = monitor.check()
        engine.close()
        recorder.close()
    assert stats["worker_mode"] == "process" and stats["worker_calls"] > 50
    assert stats["blocks"] > 100
    rec, rate = sf.read(tmp_path / "rec.wav", dtype="float32", always_2d=True)
    assert rate == SR and rec.shape[1] == 10
    rec = rec.T
    # separation came on (real vocal signal) and the master is the file at the playhead throughout
    assert np.abs(rec[VOCALS, -P * 20 :]).max() > 0.01
    k = rec.shape[1]
    np.testing.assert_allclose(rec[MASTER, P:k], a[:, P:k], atol=2e-5)


def test_live_cli_runs_on_the_dummy_backend_and_writes_stats(tiny_model, tmp_path):
    from stembridge.bridge.cli import main

    wav = tmp_path / "song.wav"
    sf.write(wav, song(2.0).T, SR)
    stats_path = tmp_path / "stats.json"
    result = CliRunner().invoke(
        main,
        ["live", "--backend", "dummy", "--deck", str(wav), "--model", str(tiny_model), "--duration", "1",
         "--osc-port", "0", "--worker", "thread", "--loop", "--stats-json", str(stats_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path.read_text())
    assert stats["blocks"] > 100 and stats["decks"] == 1 and stats["backend"] == "dummy"
    assert stats["latency_samples"] == 192 + 4 * P  # file decks only: four periods of FIFO
    assert "stopped after 1." in result.output and "(--duration 1 s)" in result.output  # the closing summary


def test_live_cli_reports_a_missing_jack_server_or_bad_file(tiny_model, tmp_path):
    from stembridge.bridge.cli import main

    result = CliRunner().invoke(main, ["live", "--backend", "dummy", "--deck", str(tmp_path / "nope.wav"),
                                       "--model", str(tiny_model), "--no-osc"])  # fmt: skip
    assert result.exit_code != 0 and "file not found" in result.output


def test_devices_lists_every_section():
    from stembridge.bridge.cli import main

    result = CliRunner().invoke(main, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    names = [s["name"] for s in json.loads(result.output)]
    assert names == ["JACK", "PortAudio", "MIDI (ALSA)", "MIDI (JACK)"]


@pytest.mark.parametrize("fifo", [1])
def test_fifo_needs_a_look_ahead_period(tiny_model, fifo):
    with pytest.raises(ValueError, match="at least 2"):
        make_engine(tiny_model, [InputDeck("in")], fifo_periods=fifo)


def test_osc_reaches_deck_transport_and_the_stem_mixer(tiny_model):
    import time

    from pythonosc.udp_client import SimpleUDPClient
    from stembridge.bridge.cli_live import route_deck_commands
    from stembridge.bridge.control import Controller

    engine = make_engine(tiny_model, [FileDeck(song(2.0), "a")])
    control = Controller(engine.stems, 1)
    control.attach_queue(1, engine.queues[0])
    server = control.serve_osc("127.0.0.1", 0, tcp_port=-1)
    route_deck_commands(server, engine)
    try:
        queued = len(engine.queues[0])  # attach_queue sent every current value first
        client = SimpleUDPClient(*server.address)
        client.send_message("/stembridge/deck/1/stem/drums/mute", 1)
        client.send_message("/stembridge/deck/1/transport/seek_s", 1.0)
        client.send_message("/stembridge/deck/1/transport/play", 0)
        client.send_message("/stembridge/deck/9/transport/play", 1)  # no such deck: a warning, counted
        deadline = time.monotonic() + 5
        while (len(engine.queues[0]) < queued + 3 or server.stats["unknown"] < 1) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        control.close()
    run(engine, 3)
    deck = engine.decks[0]
    assert engine.mixers[0].state("drums")["mute"] is True
    assert not deck.playing and deck.playhead == SR  # seek and pause arrived before the first block: paused there
    assert server.stats["unknown"] == 1


def test_live_stopped_with_ctrl_c_prints_a_summary_of_the_run(tiny_model, tmp_path):
    cmd = [sys.executable, "-m", "stembridge.bridge.cli", "live", "--backend", "dummy", "--model", str(tiny_model),
           "--worker", "thread", "--osc-port", "0", "--osc-tcp-port", "-1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if "Ctrl-C stops" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "(Ctrl-C); the whole run:" in rest and "xruns" in rest.splitlines()[-1]


def test_a_file_deck_crossfades_to_its_high_quality_stems_keeps_their_sum_and_follows_a_seek(tiny_model):
    """HQ stems (computed ahead, off the audio thread) replace the causal ones once ready, over a one-block fade, with
    a muted vocal staying muted; the stems sum to the deck's output throughout; a seek plays on from the HQ stems of
    the new position (the whole track is analysed), the deck's jump crossfade applied to them."""
    from stembridge.engine.commands import SetHqStems
    from stembridge.engine.hq import HighQualitySeparator
    from stembridge.engine.live.hq_stems import HqTrackStems

    audio = song(4.0, 2)
    deck = FileDeck(audio, "a")
    engine = make_engine(tiny_model, [deck], fifo_periods=3)
    stems = HqTrackStems(audio, HighQualitySeparator(causal_path=tiny_model), cache=None, name="a")
    assert stems.wait(120) and stems.complete
    whole = np.zeros((4, 2, audio.shape[1]), np.float32)
    assert stems.read(0, whole)
    events = {
        10: [(1, SetHqStems(stems, deck.track)), (1, SetParam("stem/vocals/mute", 1.0))],
        200: [(1, SetParam("transport/seek_s", 0.5))],
    }
    out = run(engine, 400, events=events)
    n = out.shape[1]
    busses = out[2:].reshape(4, 2, n)
    np.testing.assert_allclose(busses.sum(0), out[MASTER], atol=2e-5)  # the stems sum to what is heard
    assert engine.num_hq_blocks > 300
    # between the fade-in and the seek: the HQ stems of the playhead, the vocal muted
    a, b = 40 * P, 200 * P
    np.testing.assert_allclose(busses[1:, :, a:b], whole[1:, :, a:b], atol=2e-5)
    assert np.abs(busses[0, :, a:b]).max() < 1e-6
    # after the seek's block: the HQ stems of the new position
    seek = int(0.5 * SR)
    np.testing.assert_allclose(busses[1:, :, 201 * P : 260 * P], whole[1:, :, seek + P : seek + 60 * P], atol=2e-5)
    assert np.abs(busses[0, :, 12 * P :]).max() < 1e-6  # the muted vocal never came back, fades and seek included
    stems.close()
