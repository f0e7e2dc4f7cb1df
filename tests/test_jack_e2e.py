"""Headless end to end on JACK's dummy backend: `stembridge live` with a file deck, its busses recorded by another
JACK client, the vocals muted over OSC, and the recording checked.

Uses the running JACK server, or starts `jackd -d dummy -r 44100 -p 256` for the test and stops it after. Skipped
(with the reason) where jackd or JACK-Client is not installed; CI installs jackd2 (.ci/setup).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

jack = pytest.importorskip("jack", reason="JACK-Client (and libjack) is not installed")
if shutil.which("jackd") is None:
    pytest.skip("jackd is not installed (apt-get install jackd2)", allow_module_level=True)

pytestmark = pytest.mark.jack

SR = 44100
BUSSES = ["master_L", "master_R", "vocals_L", "vocals_R", "drums_L", "drums_R", "bass_L", "bass_R", "other_L",
          "other_R"]  # fmt: skip
RAMP = int(0.010 * SR)  # the stem mixer's gain ramp


def _server_running() -> bool:
    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    try:
        client = jack.Client("stembridge-probe", no_start_server=True)
    except jack.JackOpenError:
        return False
    rate = client.samplerate
    client.close()
    if rate != SR:
        pytest.skip(f"a JACK server runs at {rate} Hz; this test needs {SR} Hz")
    return True


@pytest.fixture(scope="module")
def jack_server():
    if _server_running():
        yield None
        return
    proc = subprocess.Popen(
        ["jackd", "--no-realtime", "-d", "dummy", "-r", str(SR), "-p", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _server_running():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip("jackd -d dummy did not start here")
        time.sleep(0.1)
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BusRecorder:
    """A JACK client recording our busses into a preallocated buffer (its callback only copies)."""

    def __init__(self, source_client: str, seconds: float) -> None:
        self.client = jack.Client("stembridge-e2e-recorder", no_start_server=True)
        self.ports = [self.client.inports.register(name) for name in BUSSES]
        self.buffer = np.zeros((len(BUSSES), int(seconds * SR)), dtype=np.float32)
        self.frames = 0
        self.num_xruns = 0
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()
        for name, port in zip(BUSSES, self.ports, strict=True):
            self.client.connect(f"{source_client}:{name}", port)

    def _process(self, frames: int) -> None:
        a = self.frames
        b = min(a + frames, self.buffer.shape[1])
        for i, port in enumerate(self.ports):
            self.buffer[i, a:b] = port.get_array()[: b - a]
        self.frames = b

    def _xrun(self, delayed_usecs: float) -> None:
        self.num_xruns += 1

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_live_on_jack_mutes_the_vocal_bus_over_osc(jack_server, tmp_path, tiny_model):
    from pythonosc.osc_message_builder import OscMessageBuilder
    from pythonosc.udp_client import SimpleUDPClient

    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(3)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1760 * t) + 0.05 * rng.standard_normal(t.size)
    song = tmp_path / "song.wav"
    sf.write(song, np.stack([x, 0.8 * x], axis=1).astype(np.float32), SR)
    name = f"sbe2e{os.getpid()}"
    osc_port = _free_udp_port()
    live = subprocess.Popen(
        [sys.executable, "-m", "stembridge.bridge.cli", "live", "--backend", "jack", "--deck", str(song), "--loop",
         "--model", str(tiny_model), "--client-name", name, "--osc-port", str(osc_port), "--osc-tcp-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    recorder = None
    try:
        probe = jack.Client("stembridge-e2e-probe", no_start_server=True)
        deadline = time.monotonic() + 30
        while not probe.get_ports(f"{name}:other_R"):
            if live.poll() is not None:
                pytest.fail(f"stembridge live exited early:\n{live.stdout.read()}")
            assert time.monotonic() < deadline, "stembridge live did not register its JACK ports in 30 s"
            time.sleep(0.1)
        probe.close()
        recorder = BusRecorder(name, seconds=4.0)
        feedback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # our subscription: engine status pushes
        feedback.bind(("127.0.0.1", 0))
        feedback.settimeout(0.05)
        osc = SimpleUDPClient("127.0.0.1", osc_port)
        osc.send_message("/stembridge/subscribe", feedback.getsockname()[1])
        time.sleep(2.0)  # separation settles, the ramps are done
        sent_at = recorder.frames
        osc.send_message("/stembridge/deck/1/stem/vocals/mute", 1)
        time.sleep(1.5)
        end = recorder.frames
        status = _last_status(feedback, b"/stembridge/engine/status")
        feedback.sendto(OscMessageBuilder("/stembridge/status").build().dgram, ("127.0.0.1", osc_port))
        asked = _last_status(feedback, b"/stembridge/status\0")
        feedback.close()
    finally:
        if recorder is not None:
            recorder.close()
        live.send_signal(signal.SIGINT)
        try:
            output = live.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            live.kill()
            output = live.communicate()[0]
    assert live.returncode == 0, output
    rec = recorder.buffer[:, :end]
    master, vocals, drums, bass, other = rec[0:2], rec[2:4], rec[4:6], rec[6:8], rec[8:10]
    before = slice(sent_at - SR // 2, sent_at)
    assert _rms(vocals[:, before]) > 0.01, "the vocal bus carried no signal before the mute"
    # the vocal bus went silent within the ramp of the mute arriving: the last non-zero sample is at most the
    # ramp plus block granularity (two periods) plus OSC/scheduling slack (50 ms) after the message was sent
    nonzero = np.flatnonzero(np.abs(vocals).max(axis=0) > 0)
    last = int(nonzero[-1])
    assert last > sent_at - SR // 10, "the vocal bus was silent before the mute was sent"
    assert last - sent_at <= RAMP + 2 * 256 + int(0.05 * SR), f"vocals still sounding {last - sent_at} frames later"
    after = slice(last + 1, end)
    assert end - last > SR, "too little recording after the mute"
    assert np.abs(vocals[:, after]).max() == 0.0
    # the other busses continued, and the master never went silent
    for bus in (drums, bass, other):
        assert _rms(bus[:, after]) > 0.3 * _rms(bus[:, before]) > 0
    window = 256
    frames = master[:, sent_at - SR // 2 : end]
    blocks = np.abs(frames[:, : frames.shape[1] // window * window]).reshape(2, -1, window).max(axis=(0, 2))
    assert blocks.min() > 0.05, "the master went silent"
    assert "running" in output
    # the engine's counters reached the OSC subscriber
    assert {"xruns", "deadline_misses", "callback_ms_p99", "latency_ms"} <= set(status), status
    assert status["latency_ms"] > 0
    # and /stembridge/status answers with the OSC counters and the engine's
    assert {"messages", "xruns", "deadline_misses", "callback_ms_p99"} <= set(asked), asked


def _last_status(sock: socket.socket, address: bytes) -> dict:
    """The last message to ``address`` (a status push or reply) that reached our socket: {counter: value}. Reads
    what has arrived (feedback keeps coming: meters at 30 Hz), for at most a second."""
    from pythonosc.osc_message import OscMessage

    status: dict = {}
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return status
        if not data.startswith(address):
            continue
        params = OscMessage(data).params
        status = dict(zip(params[0::2], params[1::2], strict=True))
    return status
