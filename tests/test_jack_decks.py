"""Headless on JACK's dummy backend: `stembridge live --decks 2` with per-deck and cue ports, tracks loaded over
OSC while another deck plays, recorded by a second JACK client.

Each test starts its own named server (`jackd -n <name> -d dummy -r <rate> -p 256`), so a JACK server already
running (at any rate) is left alone. Skipped (with the reason) where jackd or JACK-Client is not installed; CI
installs jackd2 (.ci/setup).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

jack = pytest.importorskip("jack", reason="JACK-Client (and libjack) is not installed")
if shutil.which("jackd") is None:
    pytest.skip("jackd is not installed (apt-get install jackd2)", allow_module_level=True)

pytestmark = pytest.mark.jack
ROOT = Path(__file__).resolve().parents[1]


def _client(server: str, name: str):
    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    return jack.Client(name, no_start_server=True, servername=server)


@pytest.fixture
def jack_at(request):
    """A function starting a dummy JACK server at a rate; returns its name. Stopped after the test."""
    procs = []

    def start(rate: int) -> str:
        name = f"sb28_{os.getpid()}_{rate}_{len(procs)}"
        proc = subprocess.Popen(
            ["jackd", "--no-realtime", "-n", name, "-d", "dummy", "-r", str(rate), "-p", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe = _client(name, "sb28-probe")
                probe.close()
                return name
            except jack.JackOpenError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"jackd -d dummy -r {rate} did not start here")
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortRecorder:
    """A JACK client recording some of our ports into a preallocated buffer (its callback only copies)."""

    def __init__(self, server: str, source: str, names: list[str], seconds: float, rate: int) -> None:
        self.client = _client(server, "sb28-recorder")
        self.names = names
        self.ports = [self.client.inports.register(name) for name in names]
        self.buffer = np.zeros((len(names), int(seconds * rate)), dtype=np.float32)
        self.frames = 0
        self.num_xruns = 0
        self.closed = False
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()
        for name, port in zip(names, self.ports, strict=True):
            self.client.connect(f"{source}:{name}", port)
        time.sleep(0.05)
        self.connected_at = self.frames  # what came before may predate the connections

    def _process(self, frames: int) -> None:
        a = self.frames
        b = min(a + frames, self.buffer.shape[1])
        for i, port in enumerate(self.ports):
            self.buffer[i, a:b] = port.get_array()[: b - a]
        self.frames = b

    def _xrun(self, delayed_usecs: float) -> None:
        self.num_xruns += 1

    def get(self, name: str) -> np.ndarray:
        k = self.names.index(name + "_L")
        return self.buffer[k : k + 2, : self.frames]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.deactivate()
            self.client.close()


def tone_song(seconds: float, freq: float, rate: int, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([x, 0.8 * x]).astype(np.float32)


def block_offsets(rec: np.ndarray, track: np.ndarray, period: int = 256) -> list[int]:
    """For each JACK period of ``rec`` (2, n), the position in ``track`` (looping) whose ``period`` frames it equals
    to 1e-4, or -1 where it equals no stretch of the track (a glitch, another track, silence)."""
    n = track.shape[1]
    tiled = np.concatenate([track, track[:, :period]], axis=1)
    spectrum = np.fft.rfft(tiled[0], 2 * n)
    offsets, expect = [], None
    for start in range(0, rec.shape[1] - period + 1, period):
        block = rec[:, start : start + period]
        candidates = [expect] if expect is not None else []
        if not candidates or not np.allclose(block, tiled[:, expect : expect + period], atol=1e-4):
            corr = np.fft.irfft(spectrum * np.conj(np.fft.rfft(block[0], 2 * n)), 2 * n)[:n]
            candidates = [int(np.argmax(corr))]
        k = candidates[0]
        ok = np.allclose(block, tiled[:, k : k + period], atol=1e-4)
        offsets.append(k if ok else -1)
        expect = (k + period) % n if ok else None
    return offsets


def discontinuities(offsets: list[int], n: int, period: int = 256) -> int:
    """How often consecutive matched periods do not follow each other in the track."""
    return sum(1 for a, b in zip(offsets, offsets[1:], strict=False) if a >= 0 and b >= 0 and b != (a + period) % n)


def start_live(server: str, name: str, osc_port: int, tiny_model, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "stembridge.bridge.cli", "live", "--backend", "jack", "--jack-server", server,
         "--model", str(tiny_model), "--client-name", name, "--osc-port", str(osc_port), "--osc-tcp-port", "-1",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def wait_for_port(server: str, live: subprocess.Popen, port: str, timeout_s: float = 30.0) -> None:
    probe = _client(server, "sb28-wait")
    try:
        deadline = time.monotonic() + timeout_s
        while not probe.get_ports(port):
            if live.poll() is not None:
                pytest.fail(f"stembridge live exited early:\n{live.stdout.read()}")
            assert time.monotonic() < deadline, f"stembridge live did not register {port} in {timeout_s} s"
            time.sleep(0.1)
    finally:
        probe.close()


def stop_live(live: subprocess.Popen) -> str:
    live.send_signal(signal.SIGINT)
    try:
        return live.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        live.kill()
        return live.communicate()[0]


def test_two_empty_decks_load_over_osc_while_one_plays_per_deck_ports_and_the_cue(jack_at, tmp_path, tiny_model):
    from pythonosc.udp_client import SimpleUDPClient

    rate = 44100
    server = jack_at(rate)
    a, b = tone_song(2.0, 220, rate, 1), tone_song(1.5, 550, rate, 2)
    sf.write(tmp_path / "a.wav", a.T, rate, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", b.T, rate, subtype="FLOAT")
    name, osc_port = f"sb28e{os.getpid()}", _free_udp_port()
    live = start_live(server, name, osc_port, tiny_model, "--decks", "2", "--scene", "none")  # no effects: exact
    recorder = None
    try:
        wait_for_port(server, live, f"{name}:cue_R")
        probe = _client(server, "sb28-list")
        ports = [p.shortname for p in probe.get_ports(f"{name}:")]
        probe.close()
        for pair in ("master", "vocals", "other", "deck1_master", "deck1_vocals", "deck2_master", "deck2_other", "cue"):
            assert f"{pair}_L" in ports and f"{pair}_R" in ports, ports
        osc = SimpleUDPClient("127.0.0.1", osc_port)
        osc.send_message("/stembridge/deck/1/load", str(tmp_path / "a.wav"))
        time.sleep(0.5)
        osc.send_message("/stembridge/deck/1/transport/loop", 1)
        osc.send_message("/stembridge/deck/1/transport/play", 1)
        time.sleep(0.5)
        recorded = ["deck1_master_L", "deck1_master_R", "deck2_master_L", "deck2_master_R", "cue_L", "cue_R"]
        recorder = PortRecorder(server, name, recorded, 5.0, rate)
        time.sleep(0.5)
        osc.send_message("/stembridge/deck/2/load", str(tmp_path / "b.wav"))  # while deck 1 plays
        time.sleep(0.5)
        osc.send_message("/stembridge/deck/2/transport/loop", 1)
        osc.send_message("/stembridge/deck/2/transport/play", 1)
        time.sleep(0.7)
        cue_at = recorder.frames
        osc.send_message("/stembridge/deck/2/pfl", 1)
        time.sleep(0.8)
        recorder.close()
        end = recorder.frames
    finally:
        if recorder is not None:
            recorder.close()
        output = stop_live(live)
    assert live.returncode == 0, output
    skip = recorder.connected_at
    deck1, deck2, cue = (recorder.get(pair)[:, skip:] for pair in ("deck1_master", "deck2_master", "cue"))
    end, cue_at = end - skip, cue_at - skip
    # deck 1 played its file, sample for sample, through the load into deck 2 and its start: every JACK period
    # of deck 1's port is a stretch of its file (a file deck's master is the file at its playhead, what a solo
    # render gives), each following the last; only a period JACK lost (an xrun on this loaded machine) may be
    # garbled or shift what follows
    p1 = block_offsets(deck1, a)
    lead = next(k for k, off in enumerate(p1) if off >= 0)
    assert lead <= 8  # a few periods while JACK re-sorts its graph after our recorder's connections
    p1 = p1[lead:]
    xruns = recorder.num_xruns  # JACK-wide, seen by our recorder
    assert p1.count(-1) <= xruns, f"deck 1 played something other than its file in period {p1.index(-1)}"
    assert discontinuities(p1, a.shape[1]) <= xruns
    # deck 2's ports carry the new track once it plays (after its fade-in period), and nothing before
    start = int(np.flatnonzero(np.abs(deck2).max(axis=0) > 0)[0])
    assert np.abs(deck2[:, :start]).max() == 0.0 and start > rate // 2
    first = (start // 256 + 2) * 256
    p2 = block_offsets(deck2[:, first:], b)
    assert p2.count(-1) <= xruns and discontinuities(p2, b.shape[1]) <= xruns
    # the cue pair follows the cue switch: silent until deck 2's pfl, then deck 2 exactly
    on = int(np.flatnonzero(np.abs(cue).max(axis=0) > 0)[0])
    assert np.abs(cue[:, :on]).max() == 0.0 and on >= cue_at
    after = slice(on + 2 * 256, end)
    # period by period (256 frames): only a period JACK lost may differ, as above (seen once on a loaded machine)
    diff = np.abs(cue[:, after] - deck2[:, after]).max(axis=0)
    periods = diff[: diff.size // 256 * 256].reshape(-1, 256).max(axis=1)
    assert int((periods > 1e-6).sum()) <= xruns, (
        f"the cue differs from deck 2 in periods {np.flatnonzero(periods > 1e-6)}"
    )
    assert np.abs(cue[:, after]).max() > 0.1


def _status(sock: socket.socket, address: bytes, seconds: float = 3.0) -> dict:
    from pythonosc.osc_message import OscMessage

    sock.settimeout(0.05)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            continue
        if data.startswith(address):
            params = OscMessage(data).params
            return dict(zip(params[0::2], params[1::2], strict=True))
    return {}


def test_live_runs_on_a_48_khz_jack_server_separates_and_reports_the_resampling_latency(jack_at, tmp_path, tiny_model):
    from pythonosc.osc_message_builder import OscMessageBuilder

    rate = 48000
    server = jack_at(rate)
    a = tone_song(2.0, 330, rate, 3)
    sf.write(tmp_path / "a.wav", a.T, rate, subtype="FLOAT")
    name, osc_port = f"sb28r{os.getpid()}", _free_udp_port()
    live = start_live(server, name, osc_port, tiny_model, "--deck", str(tmp_path / "a.wav"), "--loop",
                      "--scene", "none")  # fmt: skip
    recorder = None
    me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    me.bind(("127.0.0.1", 0))
    try:
        wait_for_port(server, live, f"{name}:cue_R")
        recorder = PortRecorder(server, name, ["master_L", "master_R", "vocals_L", "vocals_R"], 3.0, rate)
        time.sleep(1.5)
        me.sendto(OscMessageBuilder("/stembridge/status").build().dgram, ("127.0.0.1", osc_port))
        status = _status(me, b"/stembridge/status\0")
        recorder.close()
    finally:
        me.close()
        if recorder is not None:
            recorder.close()
        output = stop_live(live)
    assert live.returncode == 0, output
    assert "resampling: host 48000 Hz <-> model 44100 Hz" in output, output
    assert status.get("sample_rate") == rate and status.get("resample_latency_ms", 0) > 0, status
    assert status["latency_ms"] > status["resample_latency_ms"]
    master = recorder.get("master")[:, recorder.connected_at :]
    p = block_offsets(master, a)
    lead = next(k for k, off in enumerate(p) if off >= 0)
    assert lead <= 8 and p[lead:].count(-1) <= recorder.num_xruns  # the file, at the host's rate, unchanged
    vocals = recorder.get("vocals")[:, -rate // 2 :]
    assert np.sqrt(np.mean(vocals**2)) > 0.005  # and separated


def test_live_runs_on_pipewires_jack_headless_at_its_48_khz(tmp_path, tiny_model):
    """PipeWire (the Debian 12 desktop's sound server) with its JACK library, headless on its dummy driver (48 kHz,
    1024-frame quantum): `stembridge live` under `pw-jack` starts, separates, records and reports its latency."""
    if shutil.which("pipewire") is None or shutil.which("pw-jack") is None:
        pytest.skip("PipeWire's JACK is not installed (apt-get install pipewire pipewire-jack)")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PIPEWIRE_RUNTIME_DIR=str(runtime), PYTHONPATH=str(ROOT))
    server = subprocess.Popen(["pipewire"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not any(p.name.startswith("pipewire") for p in runtime.iterdir()):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip("pipewire did not start headless here")
            time.sleep(0.1)
        rate = 48000
        a = tone_song(4.0, 330, rate, 5)
        sf.write(tmp_path / "a.wav", a.T, rate, subtype="FLOAT")
        stats_path, rec_path = tmp_path / "stats.json", tmp_path / "rec.wav"
        command = [
            "pw-jack", sys.executable, "-m", "stembridge.bridge.cli", "live", "--backend", "jack", "--deck",
            str(tmp_path / "a.wav"), "--model", str(tiny_model), "--scene", "none", "--no-osc", "--duration", "3",
            "--record", str(rec_path), "--record-outputs", "summed", "--stats-json", str(stats_path),
        ]  # fmt: skip
        try:
            result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired as exc:
            # seen once in eight runs, on a machine loaded by a second test run: the client stayed in PipeWire's
            # JACK after --duration. Say so, and run it once more: the run itself is what this test checks.
            warnings.warn(f"live under pw-jack did not exit in 90 s, retried once: {exc.stderr!r}", stacklevel=1)
            result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resampling: host 48000 Hz <-> model 44100 Hz" in result.stderr, result.stderr
    import json

    stats = json.loads(stats_path.read_text())
    assert stats["sample_rate"] == rate and stats["resample_latency_ms"] > 0 and stats["latency_ms"] > 0
    assert stats["worker_calls"] > 10
    rec, rec_rate = sf.read(rec_path, dtype="float32", always_2d=True)
    assert rec_rate == rate and rec.shape[1] == 10
    rec = rec.T
    assert np.sqrt(np.mean(rec[2:4, -rate:] ** 2)) > 0.005  # the vocal bus: separated
    played = rec[0:2, np.flatnonzero(np.abs(rec[0]) > 0)[0] :]
    offsets = block_offsets(played[:, 2048:], a, period=1024)
    assert offsets.count(-1) <= stats.get("xruns", 0) + 1  # the master is the file at the host's rate
