"""MIDI mapping through hardware-free ports (subclasses of mido's port classes), plus JACK MIDI where jackd exists."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import time
import uuid

import mido
import pytest
from click.testing import CliRunner
from stembridge.bridge.control import Controller
from stembridge.bridge.midi_learn import infer_binding
from stembridge.bridge.midi_map import MidiMapper, MidiUnavailable, midi_backend, open_ports, relative_delta
from stembridge.bridge.presets import Binding, ControllerMap, ShiftSpec, load_controller_map

STEMS = ("vocals", "drums", "bass", "other")


class FakeInput(mido.ports.BaseInput):
    """A controller's output as seen by us: tests push messages into it."""

    def _open(self, **kwargs) -> None:
        self.queue: queue.Queue = queue.Queue()

    def feed(self, *messages: mido.Message) -> None:
        for m in messages:
            self.queue.put(m)

    def _receive(self, block: bool = True):
        try:
            return self.queue.get(timeout=0.02) if block else self.queue.get_nowait()
        except queue.Empty:
            return None


class FakeOutput(mido.ports.BaseOutput):
    """The controller's input (its LEDs): records what we send."""

    def _open(self, **kwargs) -> None:
        self.sent: list[mido.Message] = []

    def _send(self, msg: mido.Message) -> None:
        self.sent.append(msg)


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def cc(number: int, value: int, channel: int = 1) -> mido.Message:
    return mido.Message("control_change", channel=channel - 1, control=number, value=value)


def note(number: int, velocity: int = 127, channel: int = 1, off: bool = False) -> mido.Message:
    kind = "note_off" if off else "note_on"
    return mido.Message(kind, channel=channel - 1, note=number, velocity=velocity)


def rig(*bindings: Binding, shift: ShiftSpec | None = None, chain: bool = False):
    clock = Clock()
    control = Controller(STEMS, 2, clock=clock)
    if chain:
        control.load_chain(1, "drums", "drum_filter_sweep")
    out = FakeOutput()
    mapper = control.add_midi(ControllerMap("test", shift=shift, bindings=list(bindings)), None, out)
    out.sent.clear()
    return control, mapper, out, clock


def test_absolute_cc_with_curve_and_range_and_soft_takeover():
    b = Binding("cc", 1, 7, "deck/1/stem/vocals/level", curve="square")
    control, m, _out, _clock = rig(b)
    # level starts at 0.8: a knob at the bottom does not yank it down (soft takeover)
    m.handle(cc(7, 0))
    assert control.get("deck/1/stem/vocals/level") == 0.8 and m.stats.waiting_takeover == 1
    m.handle(cc(7, 113))  # sqrt(0.8) * 127 = 113.6: within 3% of the value: takes over
    assert control.get("deck/1/stem/vocals/level") == pytest.approx((113 / 127) ** 2)
    m.handle(cc(7, 64))
    assert control.get("deck/1/stem/vocals/level") == pytest.approx((64 / 127) ** 2)
    # another source moves the level: the knob must catch it again
    control.set("deck/1/stem/vocals/level", 0.2, source="osc")
    m.handle(cc(7, 127))
    assert control.get("deck/1/stem/vocals/level") == 0.2
    m.handle(cc(7, 40))
    m.handle(cc(7, 70))  # crossing the current value (sqrt(0.2) * 127 = 56.8) takes over
    assert control.get("deck/1/stem/vocals/level") == pytest.approx((70 / 127) ** 2)


def test_range_and_invert_and_jump_takeover_on_a_log_parameter():
    b = Binding("cc", 2, 20, "deck/1/stem/drums/fx/hpf/cutoff_frequency_hz", range=(100.0, 1000.0), invert=True,
                takeover="jump")  # fmt: skip
    control, m, _out, _clock = rig(b, chain=True)
    m.handle(cc(20, 127, channel=2))
    assert control.get("deck/1/stem/drums/fx/hpf/cutoff_frequency_hz") == pytest.approx(100.0)
    m.handle(cc(20, 0, channel=2))
    assert control.get("deck/1/stem/drums/fx/hpf/cutoff_frequency_hz") == pytest.approx(1000.0)
    m.handle(cc(20, 127))  # another channel: not this binding
    assert m.stats.unmapped == 1


def test_relative_encoders_twos_complement_sign_magnitude_and_offset():
    assert [relative_delta("relative_twos", v) for v in (1, 3, 127, 125)] == [1, 3, -1, -3]
    assert [relative_delta("relative_signmag", v) for v in (1, 3, 65, 67)] == [1, 3, -1, -3]
    assert [relative_delta("relative_offset", v) for v in (65, 67, 63, 61)] == [1, 3, -1, -3]
    control, m, _out, _clock = rig(
        Binding("cc", 1, 10, "deck/1/stem/vocals/level", mode="relative_twos", step=0.01),
        Binding("cc", 1, 11, "deck/1/stem/drums/level", mode="relative_signmag", step=0.01),
        Binding("cc", 1, 12, "deck/1/stem/bass/mute", mode="relative_offset"),
    )
    for v in (1, 1, 3):
        m.handle(cc(10, v))
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(0.85)
    m.handle(cc(10, 126))  # -2
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(0.83)
    for v in (65, 65, 66):  # sign-magnitude down 4
        m.handle(cc(11, v))
    assert control.get("deck/1/stem/drums/level") == pytest.approx(0.76)
    for _ in range(40):
        m.handle(cc(11, 63))  # up to the top, clamped
    assert control.get("deck/1/stem/drums/level") == 1.0
    m.handle(cc(12, 65))
    assert control.get("deck/1/stem/bass/mute") is True
    m.handle(cc(12, 63))
    assert control.get("deck/1/stem/bass/mute") is False


def test_14_bit_cc_pairs_and_nrpn():
    control, m, _out, _clock = rig(
        Binding("cc14", 1, 1, "deck/1/stem/vocals/level", takeover="jump"),
        Binding("nrpn", 3, 300, "deck/1/stem/drums/level", takeover="jump"),
        Binding("nrpn", 3, 5, "deck/1/stem/bass/level", takeover="jump", resolution=7),
    )
    m.handle(cc(1, 100))  # MSB alone: nothing yet
    assert control.get("deck/1/stem/vocals/level") == 0.8
    m.handle(cc(33, 17))  # LSB completes the pair
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(((100 << 7) | 17) / 16383)
    for msg in (cc(99, 300 >> 7, 3), cc(98, 300 & 127, 3), cc(6, 64, 3), cc(38, 1, 3)):
        m.handle(msg)
    assert control.get("deck/1/stem/drums/level") == pytest.approx(((64 << 7) | 1) / 16383)
    for msg in (cc(99, 0, 3), cc(98, 5, 3), cc(6, 127, 3)):
        m.handle(msg)
    assert control.get("deck/1/stem/bass/level") == 1.0
    m.handle(cc(97, 0, 3))  # data decrement steps the selected parameter
    assert control.get("deck/1/stem/bass/level") == pytest.approx(1.0 - 1 / 128)


def test_note_buttons_toggle_momentary_hold_and_velocity_zero_is_note_off():
    control, m, _out, clock = rig(
        Binding("note", 1, 36, "deck/1/stem/vocals/mute", mode="toggle"),
        Binding("note", 1, 37, "deck/1/stem/drums/mute", mode="momentary"),
        Binding("note", 1, 38, "deck/1/stem/bass/solo", mode="hold", hold_ms=300),
    )
    m.handle(note(36))
    m.handle(note(36, 0))  # note-on velocity 0 releases
    assert control.get("deck/1/stem/vocals/mute") is True
    m.handle(note(36))
    m.handle(note(36, off=True))
    assert control.get("deck/1/stem/vocals/mute") is False
    m.handle(note(37))
    assert control.get("deck/1/stem/drums/mute") is True
    m.handle(note(37, 0))
    assert control.get("deck/1/stem/drums/mute") is False
    m.handle(note(38))  # a tap latches
    clock.t += 0.1
    m.handle(note(38, 0))
    assert control.get("deck/1/stem/bass/solo") is True
    m.handle(note(38))  # a tap unlatches
    m.handle(note(38, 0))
    assert control.get("deck/1/stem/bass/solo") is False
    m.handle(note(38))  # held past hold_ms: momentary
    clock.t += 0.5
    assert control.get("deck/1/stem/bass/solo") is True
    m.handle(note(38, 0))
    assert control.get("deck/1/stem/bass/solo") is False


def test_a_button_on_a_float_parameter_and_two_bindings_on_one_pad_make_an_echo_throw():
    control = Controller(STEMS)
    control.load_chain(1, "vocals", "vocal_echo_out")
    cmap = ControllerMap(
        "t",
        bindings=[
            Binding("note", 1, 40, "deck/1/stem/vocals/mute", mode="toggle", feedback=True),
            Binding("note", 1, 40, "deck/1/stem/vocals/fx/delay/mix", mode="toggle", value_on=0.5, value_off=0.0),
        ],
    )
    m = control.add_midi(cmap)
    m.handle(note(40))
    assert control.get("deck/1/stem/vocals/mute") is True
    assert control.get("deck/1/stem/vocals/fx/delay/mix") == 0.5
    m.handle(note(40, 0))
    m.handle(note(40))
    assert control.get("deck/1/stem/vocals/mute") is False
    assert control.get("deck/1/stem/vocals/fx/delay/mix") == 0.0


def test_shift_layer_and_soft_takeover_after_a_layer_switch():
    shift = ShiftSpec("note", 1, 122, "hold", feedback=True, on_value=1, off_value=0)
    control, m, out, _clock = rig(
        Binding("cc", 1, 48, "deck/1/stem/vocals/level"),
        Binding("cc", 1, 48, "deck/1/stem/drums/level", layer="shift"),
        Binding("cc", 1, 49, "deck/1/stem/bass/level"),  # no shift binding: works in both layers
        shift=shift,
    )
    m.handle(cc(48, 102))  # 0.803: takes over vocals at once
    m.handle(cc(48, 90))
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(90 / 127)
    m.handle(note(122))  # shift down (its LED lights)
    assert m.shift_active and out.sent[-1] == note(122, 1)
    m.handle(cc(48, 20))  # far from drums' 0.8: soft takeover holds
    assert control.get("deck/1/stem/drums/level") == 0.8
    m.handle(cc(48, 102))
    m.handle(cc(48, 110))
    assert control.get("deck/1/stem/drums/level") == pytest.approx(110 / 127)
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(90 / 127)  # untouched
    m.handle(cc(49, 102))
    m.handle(cc(49, 50))
    assert control.get("deck/1/stem/bass/level") == pytest.approx(50 / 127)
    m.handle(note(122, 0))  # shift up: the fader (now at 110) must catch vocals (at 90) again
    m.handle(cc(48, 120))
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(90 / 127)
    m.handle(cc(48, 85))  # crossed 90
    assert control.get("deck/1/stem/vocals/level") == pytest.approx(85 / 127)


def test_leds_follow_mute_and_solo_whatever_changed_them():
    control, m, out, _clock = rig(
        Binding("note", 1, 100, "deck/1/stem/vocals/mute", mode="toggle", feedback=True, on_value=1, off_value=0),
        Binding("note", 1, 8, "deck/1/stem/vocals/solo", mode="hold", feedback=True, on_value=21, led_channel=7),
        Binding("cc", 1, 48, "deck/1/stem/bass/mute", mode="toggle", feedback=True),
        Binding("cc", 1, 16, "deck/1/stem/bass/level", feedback=True, takeover="jump"),
    )
    control.set("deck/1/stem/vocals/mute", True, source="osc")
    assert out.sent == [note(100, 1)]
    control.set("deck/1/stem/vocals/mute", True, source="osc")  # no change, no message
    control.store_scene("s")
    control.set("deck/1/stem/vocals/solo", True, source="api")
    assert out.sent[-1] == mido.Message("note_on", channel=6, note=8, velocity=21)
    control.recall_scene("s")  # a scene changes them back: the LEDs follow
    assert out.sent[-1] == mido.Message("note_on", channel=6, note=8, velocity=0)
    m.handle(cc(48, 127))  # a CC button's LED is a CC
    assert out.sent[-1] == cc(48, 127)
    control.set("deck/1/stem/bass/gain_db", 0.0)
    control.set("deck/1/stem/bass/level", 0.5)  # knob rings / motor faders follow too
    assert out.sent[-1] == cc(16, 64)
    out.sent.clear()
    m.send_state()  # on connect: every feedback control's state
    assert note(100, 1) in out.sent and len(out.sent) == 4


def test_midi_learn_infers_the_control_saves_it_and_uses_it(tmp_path):
    user_map = tmp_path / "user.toml"
    clock = Clock()
    control = Controller(STEMS, clock=clock, user_map=user_map)
    inp, out = FakeInput(), FakeOutput()
    control.add_midi(ControllerMap("empty"), inp, out)
    done = []
    control.learn("/stembridge/deck/1/stem/vocals/mute", on_done=lambda t, d: done.append((t, d)))
    inp.feed(note(60, channel=10), note(60, 0, channel=10))
    deadline = time.monotonic() + 2
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [("deck/1/stem/vocals/mute", "note 60 ch 10 toggle")]
    saved = load_controller_map(user_map)
    assert saved.bindings == [Binding("note", 10, 60, "deck/1/stem/vocals/mute", mode="toggle", feedback=True)]
    inp.feed(note(60, channel=10))  # the learned pad works at once, LED included
    deadline = time.monotonic() + 2
    while not control.get("deck/1/stem/vocals/mute") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert control.get("deck/1/stem/vocals/mute") is True and note(60, 127, 10) in out.sent
    # a knob learned for another parameter is added to the same file
    control.learn("deck/1/stem/vocals/level")
    mapper = control.midi[0]
    mapper.handle(cc(16, 40))
    mapper.handle(cc(16, 42))
    clock.t += 1.0
    control.tick()
    saved = load_controller_map(user_map)
    assert saved.bindings[-1] == Binding("cc", 1, 16, "deck/1/stem/vocals/level")
    assert len(saved.bindings) == 2 and not control.learning
    control.close()


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([cc(21, 1), cc(21, 1), cc(21, 2)], "relative_twos"),
        ([cc(21, 127), cc(21, 127)], "relative_twos"),
        ([cc(21, 65), cc(21, 65), cc(21, 66)], "relative_signmag"),
        ([cc(21, 63), cc(21, 62)], "relative_offset"),
        ([cc(21, 10), cc(21, 12), cc(21, 15), cc(21, 19)], "absolute"),
    ],
)
def test_learn_recognises_encoder_kinds(messages, expected):
    assert infer_binding(messages, "deck/1/stem/vocals/level", is_bool=False).mode == expected


def test_learn_recognises_14_bit_pairs_nrpn_and_cc_buttons():
    b = infer_binding([cc(7, 3), cc(39, 9), cc(7, 4)], "x", is_bool=False)
    assert (b.control, b.number) == ("cc14", 7)
    b = infer_binding([cc(99, 1, 2), cc(98, 2, 2), cc(6, 3, 2), cc(38, 4, 2)], "x", is_bool=False)
    assert (b.control, b.number, b.resolution, b.channel) == ("nrpn", 130, 14, 2)
    b = infer_binding([cc(48, 127), cc(48, 0)], "x", is_bool=True)
    assert (b.control, b.mode, b.feedback) == ("cc", "toggle", True)


def test_reader_thread_ports_and_a_broken_listener_do_not_stop_mapping():
    control = Controller(STEMS)
    control.tree.add_listener(lambda c: 1 / 0)  # a faulty listener elsewhere
    inp = FakeInput()
    control.add_midi(ControllerMap("t", bindings=[Binding("note", 1, 1, "deck/1/stem/other/mute")]), inp)
    inp.feed(note(1))
    deadline = time.monotonic() + 2
    while not control.get("deck/1/stem/other/mute") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert control.get("deck/1/stem/other/mute") is True
    control.close()


def test_no_midi_backend_gives_one_clear_message(monkeypatch):
    def broken(name, load=False):
        raise OSError(f"{name} unavailable")

    monkeypatch.setattr(mido, "Backend", broken)
    with pytest.raises(MidiUnavailable, match="No MIDI backend is available.*start JACK"):
        midi_backend()
    with pytest.raises(MidiUnavailable):
        open_ports("x", None, api="jack")


def test_cli_midi_learn_saves_into_the_map(monkeypatch, tmp_path):
    from stembridge.bridge import midi_map
    from stembridge.bridge.cli_control import midi_learn

    inp = FakeInput(name="Fake Controller")
    inp.feed(cc(70, 100), cc(70, 101), cc(70, 103))
    monkeypatch.setattr(midi_map, "open_ports", lambda *a, **k: (inp, None))
    target = tmp_path / "mine.toml"
    result = CliRunner().invoke(
        midi_learn, ["deck/1/stem/drums/fx/hpf/cutoff_frequency_hz", "--map", str(target), "--timeout", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "CC 70 ch 1 absolute -> deck/1/stem/drums/fx/hpf/cutoff_frequency_hz" in result.output
    assert load_controller_map(target).bindings[0].number == 70
    bad = CliRunner().invoke(midi_learn, ["deck/1/stem/kazoo/mute", "--map", str(target)])
    assert bad.exit_code == 2 and "no parameter" in bad.output


@pytest.fixture
def jack_server(monkeypatch):
    if shutil.which("jackd") is None:
        pytest.skip("jackd not installed (.ci/setup installs jackd2)")
    name = f"sbmidi{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    proc = subprocess.Popen(
        ["jackd", "-n", name, "-d", "dummy", "-r", "44100", "-p", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["jack_lsp"], capture_output=True, env=dict(os.environ)).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("jackd did not start")
    yield name
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.jack
def test_real_midi_ports_over_jack_midi(jack_server):
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    controller_out = backend.open_output("sb-fake-controller", virtual=True)
    got: list = []
    leds = backend.open_input("sb-fake-leds", virtual=True, callback=got.append)
    control = Controller(STEMS)
    try:
        inp, out = open_ports("sb-fake-controller", "sb-fake-leds", api="jack")
        cmap = ControllerMap(
            "t",
            bindings=[
                Binding("cc", 1, 7, "deck/1/stem/vocals/level", takeover="jump"),
                Binding("note", 1, 36, "deck/1/stem/vocals/mute", feedback=True),
            ],
        )
        mapper = control.add_midi(cmap, inp, out)
        deadline = time.monotonic() + 3
        while mapper.stats.messages == 0 and time.monotonic() < deadline:  # until JACK has made the connection
            controller_out.send(cc(99, 127))
            time.sleep(0.02)
        controller_out.send(cc(7, 64))
        controller_out.send(note(36))
        deadline = time.monotonic() + 3
        while not control.get("deck/1/stem/vocals/mute") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert control.get("deck/1/stem/vocals/level") == pytest.approx(64 / 127)
        assert control.get("deck/1/stem/vocals/mute") is True
        while not any(m.type == "note_on" and m.velocity == 127 for m in got) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(m.type == "note_on" and m.note == 36 and m.velocity == 127 for m in got)  # the LED lit
    finally:
        control.close()
        controller_out.close()
        leds.close()


def test_mapper_is_usable_without_ports():
    control = Controller(STEMS)
    m = MidiMapper(control.tree, ControllerMap("t", bindings=[Binding("pitchwheel", 1, 0, "deck/1/master/level")]))
    m.handle(mido.Message("pitchwheel", pitch=8191))
    assert control.get("deck/1/master/level") == 0.8  # soft takeover: far from 0.8
    m.handle(mido.Message("pitchwheel", pitch=5000))  # 0.805
    m.handle(mido.Message("pitchwheel", pitch=8191))
    assert control.get("deck/1/master/level") == 1.0
    m.handle(mido.Message("sysex", data=[1, 2, 3]))  # ignored, counted
    assert m.stats.unmapped == 1
