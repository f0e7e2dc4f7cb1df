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
    good = _write(tmp_path, "good.toml", head + 'target = "deck/1/stem/drums/fx/hpf/cutoff_frequency_hz"\n')
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
