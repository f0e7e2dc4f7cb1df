"""StemMixer: ramped gain, mute and solo without clicks; effects streamed; commands through the queue."""

from __future__ import annotations

import numpy as np
import pedalboard
import pytest
from stembridge.engine.commands import CommandQueue, SetParam, SwapChain
from stembridge.engine.mixer import StemMixer

STEMS = ("vocals", "drums", "bass", "other")
SR = 44100


def sine_stems(n: int, freq: float = 1000.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / SR
    s = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.broadcast_to(s, (4, 2, n)).copy()


def run(mixer: StemMixer, stems: np.ndarray, block: int, events: dict[int, list]) -> tuple[np.ndarray, np.ndarray]:
    """Process stems (4, 2, n) in blocks, applying events {block_index: [commands]} at block starts."""
    busses, masters = [], []
    for b, a in enumerate(range(0, stems.shape[-1], block)):
        for cmd in events.get(b, []):
            mixer.apply(cmd)
        bus, master = mixer.process(stems[..., a : a + block])
        busses.append(bus.copy())
        masters.append(master.copy())
    return np.concatenate(busses, -1), np.concatenate(masters, -1)


@pytest.mark.parametrize("block", [64, 256, 441])
def test_mute_toggle_on_a_sine_has_no_step_larger_than_the_ramp_allows(block):
    amp, freq = 0.5, 1000.0
    mixer = StemMixer(STEMS, sample_rate=SR, ramp_ms=10.0)
    stems = sine_stems(SR, freq, amp)
    busses, _ = run(mixer, stems, block, {20: [SetParam("stem/vocals/mute", 1)], 60: [SetParam("stem/vocals/mute", 0)]})
    vocals = busses[0, 0]
    largest_sine_step = amp * 2 * np.pi * freq / SR
    ramp_step = amp / mixer.ramp_samples
    assert np.abs(np.diff(vocals)).max() <= largest_sine_step + ramp_step + 1e-6
    # the mute is complete one ramp after the block it arrived in, and silent until unmuted
    start = 20 * block + mixer.ramp_samples
    assert np.abs(vocals[start : 60 * block]).max() == 0.0
    # the other stems are untouched
    np.testing.assert_allclose(busses[1], stems[1], atol=1e-7)


def test_a_step_change_would_break_the_click_bound():
    """The bound above is meaningful: an unramped mute steps by up to the full amplitude."""
    amp, freq = 0.5, 1000.0
    stems = sine_stems(4410, freq, amp)[0, 0]
    stepped = stems.copy()
    stepped[2216:] = 0.0  # near a peak of the sine
    assert np.abs(np.diff(stepped)).max() > amp * 2 * np.pi * freq / SR + amp / 441 + 1e-3


def test_solo_silences_the_other_stems_and_unsolo_restores_them():
    mixer = StemMixer(STEMS, sample_rate=SR)
    stems = sine_stems(SR // 2)
    busses, master = run(mixer, stems, 256, {2: [SetParam("stem/drums/solo", 1)], 40: [SetParam("stem/drums/solo", 0)]})
    settled = slice(2 * 256 + mixer.ramp_samples, 40 * 256)
    assert np.abs(busses[[0, 2, 3]][..., settled]).max() == 0.0
    np.testing.assert_allclose(master[..., settled], stems[1][..., settled], atol=1e-6)
    np.testing.assert_allclose(busses[..., -1000:], stems[..., -1000:], atol=1e-6)


def test_gain_db_ramps_to_the_exact_target():
    mixer = StemMixer(STEMS, sample_rate=SR)
    stems = sine_stems(SR // 4)
    busses, _ = run(mixer, stems, 128, {1: [SetParam("stem/bass/gain_db", -6.0)]})
    tail = slice(128 + mixer.ramp_samples, None)
    np.testing.assert_allclose(busses[2][..., tail], stems[2][..., tail] * 10 ** (-6 / 20), atol=1e-6)


def test_unity_mixer_without_effects_passes_the_stems_and_sums_them_to_the_master():
    mixer = StemMixer(STEMS, sample_rate=SR)
    stems = np.random.default_rng(0).standard_normal((4, 2, 2048)).astype(np.float32)
    busses, master = run(mixer, stems, 512, {})
    np.testing.assert_array_equal(busses, stems)
    np.testing.assert_allclose(master, stems.sum(0), atol=1e-6)


def test_effect_chain_streams_like_one_shot_and_params_and_bypass_apply():
    board = pedalboard.Pedalboard([pedalboard.HighpassFilter(200.0), pedalboard.Delay(0.05, 0.3, 0.5)])
    reference = pedalboard.Pedalboard([pedalboard.HighpassFilter(200.0), pedalboard.Delay(0.05, 0.3, 0.5)])
    stems = np.random.default_rng(1).standard_normal((4, 2, 8192)).astype(np.float32) * 0.1
    mixer = StemMixer(STEMS, sample_rate=SR)
    mixer.apply(SwapChain("vocals", board))
    busses, _ = run(mixer, stems, 65, {})
    one_shot = reference(stems[0], SR)
    np.testing.assert_allclose(busses[0], one_shot, atol=1e-5)
    assert mixer.apply(SetParam("stem/vocals/fx/delay/mix", 0.25))
    assert board[1].mix == pytest.approx(0.25)
    assert mixer.apply(SetParam("stem/vocals/fx/delay/bypass", 1))
    assert not mixer.apply(SetParam("stem/vocals/fx/delay/nonexistent", 1))
    assert not mixer.apply(SetParam("stem/piano/gain_db", 1))
    assert mixer.num_rejected == 2
    # bypassed and settled: the delay no longer runs, only the filter does
    run(mixer, stems[..., :1024], 256, {})
    busses, _ = run(mixer, stems[..., :512], 256, {})
    assert np.abs(busses[0]).max() > 0


def test_command_queue_is_bounded_and_never_blocks():
    queue = CommandQueue(maxlen=3)
    assert all(queue.push(SetParam("master/gain_db", -1.0)) for _ in range(3))
    assert not queue.push(SetParam("master/gain_db", -2.0))
    assert queue.num_dropped == 1
    seen = []
    assert queue.drain(seen.append) == 3
    assert len(queue) == 0 and len(seen) == 3
