"""The parameter tree: conversion, clamping, the fader curve, engine commands, listeners, fades and scenes."""

from __future__ import annotations

import math

import numpy as np
import pedalboard
import pytest
from stembridge.bridge.control import Controller
from stembridge.bridge.params import (
    BadValue,
    ParamSpec,
    ParamTree,
    UnknownParam,
    compile_osc_pattern,
    gain_db_to_level,
    level_to_gain_db,
)
from stembridge.engine.commands import CommandQueue, SetParam, SwapChain
from stembridge.engine.mixer import StemMixer

STEMS = ("vocals", "drums", "bass", "other")


def drained(queue: CommandQueue) -> list:
    out: list = []
    queue.drain(out.append)
    return out


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_fader_curve_matches_its_documented_points_and_inverts():
    assert level_to_gain_db(0.8) == pytest.approx(0.0)
    assert level_to_gain_db(1.0) == pytest.approx(5.81, abs=0.01)
    assert level_to_gain_db(0.5) == pytest.approx(-12.25, abs=0.01)
    assert level_to_gain_db(0.25) == pytest.approx(-30.31, abs=0.01)
    assert level_to_gain_db(0.0) == -120.0
    for level in np.linspace(0.01, 1.0, 50):
        assert gain_db_to_level(level_to_gain_db(level)) == pytest.approx(level)
    assert gain_db_to_level(12.0) == 1.0  # above the fader's top it shows as full
    levels = np.linspace(0, 1, 101)
    assert np.all(np.diff([level_to_gain_db(x) for x in levels]) >= 0)


def test_level_sets_gain_db_and_the_engine_gets_gain_db_only():
    q = CommandQueue(64)
    tree = ParamTree(STEMS, 2, queues={2: q})
    drained(q)
    tree.set("deck/2/stem/drums/level", 0.5)
    assert tree.get("deck/2/stem/drums/gain_db") == pytest.approx(-12.247, abs=1e-3)
    assert drained(q) == [SetParam("stem/drums/gain_db", pytest.approx(-12.247, abs=1e-3))]
    tree.set("deck/2/stem/drums/gain_db", 0.0)
    assert tree.get("deck/2/stem/drums/level") == pytest.approx(0.8)


def test_values_are_converted_and_clamped():
    tree = ParamTree(STEMS)
    r = tree.set("deck/1/stem/vocals/gain_db", 40)
    assert r.value == 12.0 and r.clamped
    r = tree.set("deck/1/stem/vocals/gain_db", -1e9)
    assert r.value == -120.0 and r.clamped
    assert tree.set("deck/1/stem/vocals/gain_db", float("inf")).value == 12.0
    with pytest.raises(BadValue):
        tree.set("deck/1/stem/vocals/gain_db", float("nan"))
    with pytest.raises(BadValue):
        tree.set("deck/1/stem/vocals/gain_db", "loud")
    for raw, expected in [(True, True), ("T", True), ("F", False), (1, True), (0, False), (0.7, True), ("off", False)]:
        assert tree.set("deck/1/stem/vocals/mute", raw).value is expected
    with pytest.raises(BadValue):
        tree.set("deck/1/stem/vocals/mute", "maybe")
    with pytest.raises(UnknownParam):
        tree.set("deck/1/stem/guitar/mute", 1)
    with pytest.raises(UnknownParam):
        tree.set("deck/3/stem/vocals/mute", 1)


def test_log_and_fader_scales_map_a_knob_evenly():
    spec = ParamSpec("float", 20.0, 20000.0, 20.0, "Hz", "log")
    assert spec.from_normalized(0.5) == pytest.approx(math.sqrt(20 * 20000))
    assert spec.to_normalized(spec.from_normalized(0.3)) == pytest.approx(0.3)
    gain = ParamSpec("float", -120.0, 12.0, 0.0, "dB", "fader")
    assert gain.from_normalized(gain.to_normalized(0.0)) == pytest.approx(0.0, abs=1e-9)


def test_listeners_hear_every_change_from_every_source_once():
    tree = ParamTree(STEMS)
    heard = []
    tree.add_listener(lambda c: heard.append((c.path, c.value, c.source)))
    tree.set("deck/1/stem/bass/mute", True, source="osc")
    tree.set("deck/1/stem/bass/mute", True, source="midi")  # unchanged: no news
    tree.set("deck/1/stem/bass/level", 0.8, source="midi")  # already 0 dB: unchanged
    tree.set("deck/1/stem/bass/gain_db", -6.0, source="scene")
    assert heard[0] == ("deck/1/stem/bass/mute", True, "osc")
    assert [h[0] for h in heard[1:]] == ["deck/1/stem/bass/gain_db", "deck/1/stem/bass/level"]
    assert all(h[2] == "scene" for h in heard[1:])


def test_a_full_queue_keeps_the_latest_value_and_flush_resends_it():
    q = CommandQueue(2)
    tree = ParamTree(STEMS, queues={1: q})
    drained(q)  # attach sends nothing before queues exist; empty anyway
    for v in (-1.0, -2.0, -3.0, -4.0):
        tree.set("deck/1/stem/vocals/gain_db", v)
    assert tree.num_dropped == 2
    assert [c.value for c in drained(q)] == [-1.0, -2.0]
    assert tree.flush() == 0
    assert drained(q) == [SetParam("stem/vocals/gain_db", -4.0)]


def test_attaching_a_queue_sends_every_engine_value_so_the_engine_starts_in_step():
    tree = ParamTree(STEMS)
    tree.set("deck/1/stem/other/solo", True)
    q = CommandQueue(256)
    tree.attach_queue(1, q)
    cmds = {c.path: c.value for c in drained(q)}
    assert cmds["stem/other/solo"] == 1.0 and cmds["master/gain_db"] == 0.0
    assert (
        len(cmds) == 4 * 3 + 3
    )  # gain_db, mute, solo per stem + master + deck level_db and pfl; no level, no transport
    assert not any(path.startswith("transport/") for path in cmds)  # actions are never replayed


def test_deck_transport_actions_reach_the_deck_every_time_but_stay_out_of_scenes():
    q = CommandQueue(64)
    control = Controller(STEMS, queues={1: q})
    drained(q)
    control.set("/stembridge/deck/1/transport/cue", True)
    control.set("/stembridge/deck/1/transport/cue", True)  # pressing cue again cues again
    control.set("deck/1/transport/seek_s", 42.5)
    control.set("deck/1/level_db", -6.0)
    assert drained(q) == [
        SetParam("transport/cue", 1.0),
        SetParam("transport/cue", 1.0),
        SetParam("transport/seek_s", 42.5),
        SetParam("level_db", -6.0),
    ]
    control.store_scene("x")
    assert control.scenes["x"][1]["level_db"] == -6.0 and "transport/seek_s" not in control.scenes["x"][1]


def test_a_burst_on_one_path_is_coalesced_to_its_latest_value_per_tick_but_a_single_change_is_immediate():
    clock = FakeClock()
    q = CommandQueue(1024)
    control = Controller(STEMS, queues={1: q}, clock=clock)
    control.tree.ticking = True
    drained(q)
    control.set("deck/1/stem/vocals/mute", True)
    assert drained(q) == [SetParam("stem/vocals/mute", 1.0)]  # at once
    for i in range(50):  # an OSC fader streaming far faster than the engine's blocks
        control.set("deck/1/stem/drums/gain_db", -i / 10)
    assert drained(q) == [SetParam("stem/drums/gain_db", 0.0)]  # the first goes at once, the rest wait
    clock.t += 0.005
    control.tick()
    assert drained(q) == [SetParam("stem/drums/gain_db", -4.9)]  # one command: the latest
    clock.t += 0.005
    control.set("deck/1/stem/drums/gain_db", -1.0)
    assert drained(q) == [SetParam("stem/drums/gain_db", -1.0)]  # quiet again: immediate


def test_chain_parameters_are_enumerated_from_a_pedalboard_with_ranges():
    tree = ParamTree(STEMS)
    board = pedalboard.Pedalboard([pedalboard.Delay(mix=0.3), pedalboard.HighpassFilter(cutoff_frequency_hz=80.0)])
    paths = tree.set_chain_params(1, "drums", [("delay", board[0]), ("hpf", board[1])])
    assert "deck/1/stem/drums/fx/delay/mix" in paths and "deck/1/stem/drums/fx/hpf/bypass" in paths
    assert tree.get("deck/1/stem/drums/fx/delay/mix") == pytest.approx(0.3)
    spec = tree.param("deck/1/stem/drums/fx/hpf/cutoff_frequency_hz").spec
    assert (spec.minimum, spec.maximum, spec.unit, spec.scale) == (20.0, 20000.0, "Hz", "log")
    assert tree.set("deck/1/stem/drums/fx/delay/feedback", 5).value == 0.99  # clamped to what Delay accepts
    tree.set_chain_params(1, "drums", [("hpf", board[1])])  # a new chain replaces the old parameters
    assert "deck/1/stem/drums/fx/delay/mix" not in tree


def test_tree_commands_drive_a_real_mixer_including_effects():
    q = CommandQueue(256)
    control = Controller(STEMS, queues={1: q})
    control.load_chain(1, "drums", "drum_filter_sweep")
    mixer = StemMixer(STEMS, sample_rate=44100, max_block_size=256)
    control.set("deck/1/stem/drums/fx/hpf/cutoff_frequency_hz", 5000.0)
    control.set("deck/1/stem/vocals/mute", True)
    cmds = drained(q)
    assert isinstance(cmds[0], SwapChain) or any(isinstance(c, SwapChain) for c in cmds)
    cmds = [c for c in cmds if not (isinstance(c, SetParam) and c.path in ("level_db", "pfl"))]  # the deck's
    assert all(mixer.apply(c) for c in cmds)
    assert mixer.num_rejected == 0
    assert mixer.chain("drums")[0][1].cutoff_frequency_hz == pytest.approx(5000.0)
    assert mixer.state("vocals")["mute"] is True


def test_control_side_smoothing_glides_the_engine_value_but_reports_the_target_at_once():
    clock = FakeClock()
    q = CommandQueue(1024)
    control = Controller(STEMS, queues={1: q}, clock=clock)
    control.load_chain(1, "drums", "drum_filter_sweep")  # cutoff smoothing_ms = 30
    control.tree.ticking = True
    drained(q)
    path = "deck/1/stem/drums/fx/hpf/cutoff_frequency_hz"
    control.set(path, 2000.0)
    assert control.get(path) == 2000.0
    assert drained(q) == []  # nothing jumps
    values = []
    for _ in range(8):
        clock.t += 0.005
        control.tick()
        values += [c.value for c in drained(q)]
    assert values[-1] == 2000.0
    assert values == sorted(values) and len(values) >= 6 and values[0] < 500  # it glided up over ~30 ms


def test_scene_store_and_recall_restore_values_and_report_them():
    q = CommandQueue(1024)
    control = Controller(STEMS, 2, queues={1: q})
    control.set("deck/1/stem/vocals/gain_db", -6.0)
    control.set("deck/2/stem/bass/mute", True)
    control.store_scene("a")
    control.set("deck/1/stem/vocals/gain_db", 3.0)
    control.set("deck/2/stem/bass/mute", False)
    heard = []
    control.tree.add_listener(lambda c: heard.append(c.path))
    assert control.recall_scene("a") == []
    assert control.get("deck/1/stem/vocals/gain_db") == -6.0
    assert control.get("deck/2/stem/bass/mute") is True
    assert "deck/2/stem/bass/mute" in heard and "deck/1/stem/vocals/level" in heard
    with pytest.raises(KeyError):
        control.recall_scene("never-stored")


def test_faded_scene_recall_glides_gains_and_fades_a_mute_before_muting():
    clock = FakeClock()
    q = CommandQueue(4096)
    control = Controller(STEMS, queues={1: q}, clock=clock)
    control.tree.ticking = True
    drained(q)
    control.recall_scene("karaoke", fade_s=0.1)  # vocals mute over 0.1 s
    assert control.get("deck/1/stem/vocals/mute") is True  # the tree tells the truth at once
    cmds = []
    for _ in range(30):
        clock.t += 0.005
        control.tick()
        cmds += drained(q)
    gains = [c.value for c in cmds if c.path == "stem/vocals/gain_db"]
    mutes = [(i, c.value) for i, c in enumerate(cmds) if c.path == "stem/vocals/mute"]
    assert gains[:-1] == sorted(gains[:-1], reverse=True) and gains[-2] == -120.0  # faded down to silence
    assert mutes and mutes[-1][1] == 1.0  # then muted, then the gain restored behind the mute
    assert gains[-1] == 0.0 and mutes[-1][0] < len(cmds) - 1
    # an unmute fades in from silence
    control.recall_scene("default", fade_s=0.1)
    cmds = [c for c in drained(q) if isinstance(c, SetParam)]  # "default" also swaps chains in
    first_gain = next(c for c in cmds if c.path == "stem/vocals/gain_db")
    assert first_gain.value == -120.0 and any(c.path == "stem/vocals/mute" and c.value == 0.0 for c in cmds)


def test_touching_a_parameter_during_a_fade_wins_and_keeps_the_engine_consistent():
    clock = FakeClock()
    q = CommandQueue(4096)
    mixer = StemMixer(STEMS)
    control = Controller(STEMS, queues={1: q}, clock=clock)
    control.tree.ticking = True
    control.recall_scene("karaoke", fade_s=1.0)
    clock.t += 0.2
    control.tick()
    control.set("deck/1/stem/vocals/mute", False)  # the performer changes their mind mid-fade
    for _ in range(300):
        clock.t += 0.005
        control.tick()
    q.drain(mixer.apply)
    assert control.tree.num_glides == 0
    assert mixer.state("vocals") == {"gain_db": 0.0, "mute": False, "solo": False}


def test_osc_address_patterns():
    rx = compile_osc_pattern("deck/*/stem/{vocals,bass}/m?te")
    assert rx.fullmatch("deck/1/stem/vocals/mute") and rx.fullmatch("deck/12/stem/bass/mute")
    assert not rx.fullmatch("deck/1/stem/drums/mute") and not rx.fullmatch("deck/1/x/stem/vocals/mute")
    assert compile_osc_pattern("deck/[1-3]/x").fullmatch("deck/2/x")
    assert not compile_osc_pattern("deck/[!1-3]/x").fullmatch("deck/2/x")
    for bad in ("deck/[1", "deck/{a", "deck/]"):
        with pytest.raises(ValueError):
            compile_osc_pattern(bad)
