"""The OSC server over real loopback sockets: python-osc and liblo (oscsend/oscdump) as clients, UDP and TCP,
feedback, meters, scenes, error reporting, the allowlist, and a fuzz of 10,000+ packets after which it still answers.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.tcp_client import SimpleTCPClient
from stembridge.bridge.control import Controller
from stembridge.bridge.osc_codec import encode_message
from stembridge.bridge.osc_server import MAX_PACKET_BYTES, OscServer
from stembridge.engine.commands import CommandQueue, SetParam

STEMS = ("vocals", "drums", "bass", "other")


def build(address: str, *args) -> bytes:
    """A packet built by python-osc (an independent encoder)."""
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


class Client:
    """A UDP OSC client on loopback that can wait for replies."""

    def __init__(self, server_address: tuple[str, int]) -> None:
        self.server = server_address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.pending: list[tuple[str, list]] = []

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, address: str, *args) -> None:
        self.sock.sendto(build(address, *args), self.server)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float = 2.0) -> tuple[str, list]:
        """The next message; feedback caused by one incoming packet arrives as one bundle (parsed by python-osc)."""
        if not self.pending:
            self.sock.settimeout(timeout)
            data, _ = self.sock.recvfrom(65536)
            self.pending = [(m.message.address, list(m.message.params)) for m in OscPacket(data).messages]
        return self.pending.pop(0)

    def recv_until(self, address: str, timeout: float = 2.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            a, args = self.recv(max(0.01, deadline - time.monotonic()))
            if a == address:
                return args

    def get(self, address: str):
        self.send("/stembridge/get", address)
        return self.recv_until(address)[0]

    def drain(self) -> list[tuple[str, list]]:
        out = []
        while True:
            try:
                out.append(self.recv(0.05))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def rig():
    """(controller, server, deck-1 queue, client) with the shipped default scene loaded on 2 decks."""
    q1, q2 = CommandQueue(100_000), CommandQueue(100_000)
    control = Controller(STEMS, 2, queues={1: q1, 2: q2})
    control.load_scene("default")
    server = control.serve_osc("127.0.0.1", 0)
    client = Client(server.address)
    yield control, server, q1, client
    client.close()
    control.close()


def setparams(q: CommandQueue) -> list[SetParam]:
    out: list = []
    q.drain(out.append)
    return [c for c in out if isinstance(c, SetParam)]


def test_the_issue_examples_set_values_and_reach_the_engine_queue(rig):
    control, _server, q, client = rig
    client.send("/stembridge/deck/1/stem/drums/chain", "vocal_echo_out")  # a delay on the drums, as in the issue
    client.send("/stembridge/deck/1/stem/drums/chain", "../../etc/passwd")  # only preset names are looked up
    assert "chain preset name" in client.recv_until("/stembridge/warning")[1]
    setparams(q)
    client.send("/stembridge/deck/1/stem/vocals/mute", 1)
    client.send("/stembridge/deck/1/stem/vocals/gain_db", -6.0)
    client.send("/stembridge/deck/1/stem/drums/fx/delay/mix", 0.3)
    assert client.get("/stembridge/deck/1/stem/drums/fx/delay/mix") == pytest.approx(0.3)
    assert control.get("deck/1/stem/vocals/mute") is True
    assert control.get("deck/1/stem/vocals/gain_db") == -6.0
    cmds = setparams(q)
    assert SetParam("stem/vocals/mute", 1.0) in cmds and SetParam("stem/vocals/gain_db", -6.0) in cmds
    assert any(c.path == "stem/drums/fx/delay/mix" and c.value == pytest.approx(0.3) for c in cmds)


def test_patterns_and_true_false_bools(rig):
    control, _server, _q, client = rig
    client.send("/stembridge/deck/*/stem/vocals/mute", True)  # python-osc sends True as the T type tag
    client.send("/stembridge/deck/1/stem/{drums,bass}/solo", 1.0)
    assert client.get("/stembridge/deck/2/stem/vocals/mute") == 1
    assert control.get("deck/1/stem/vocals/mute") and control.get("deck/2/stem/vocals/mute")
    assert control.get("deck/1/stem/drums/solo") and control.get("deck/1/stem/bass/solo")
    assert not control.get("deck/1/stem/other/solo")
    client.send("/stembridge/deck/[1-2]/stem/vocals/mute", False)
    client.send("/stembridge/get", "/stembridge/deck/*/stem/vocals/mute")
    replies = {client.recv()[0]: None for _ in range(2)}
    assert set(replies) == {"/stembridge/deck/1/stem/vocals/mute", "/stembridge/deck/2/stem/vocals/mute"}
    assert control.get("deck/2/stem/vocals/mute") is False


def test_out_of_range_unknown_bad_and_malformed_input_is_counted_and_reported(rig):
    control, server, _q, client = rig
    client.send("/stembridge/deck/1/stem/vocals/gain_db", 99.0)
    assert client.recv_until("/stembridge/warning")[0] == "/stembridge/deck/1/stem/vocals/gain_db"
    assert control.get("deck/1/stem/vocals/gain_db") == 12.0
    client.send("/stembridge/deck/1/stem/kazoo/mute", 1)
    assert "no such parameter" in client.recv_until("/stembridge/warning")[1]
    client.send("/stembridge/deck/1/stem/vocals/gain_db", "loud")
    assert "not a number" in client.recv_until("/stembridge/warning")[1]
    client.send("/stembridge/deck/1/stem/vocals/gain_db")
    client.recv_until("/stembridge/warning")
    client.send_raw(b"\x00garbage!")
    client.send_raw(build("/stembridge/deck/1/stem/vocals/gain_db", 1.0)[:-2])  # truncated
    client.send_raw(build("/x", "a" * (MAX_PACKET_BYTES + 100)))
    assert client.get("/stembridge/deck/1/stem/vocals/gain_db") == 12.0
    stats = server.stats
    assert stats["clamped"] == 1 and stats["unknown"] == 1 and stats["bad_args"] == 2
    assert stats["malformed"] == 2 and stats["oversized"] == 1 and stats["errors"] == 0
    client.send("/stembridge/status")
    status = client.recv_until("/stembridge/status")
    assert dict(zip(status[::2], status[1::2], strict=True))["oversized"] == 1


def test_subscribers_get_every_change_from_any_source_and_meters_at_most_30_hz(rig):
    control, _server, _q, client = rig
    other = Client(client.server)
    try:
        client.send("/stembridge/subscribe")  # feedback to this socket
        dump = {}
        while "/stembridge/subscribed" not in dump:
            address, args = client.recv()
            dump[address] = args
        assert dump["/stembridge/subscribed"] == [client.port]
        assert dump["/stembridge/deck/1/stem/vocals/level"] == [pytest.approx(0.8)]  # the full state on subscribe
        control.set("deck/1/stem/bass/mute", True, source="api")
        other.send("/stembridge/deck/1/stem/drums/gain_db", -3.0)
        got = dict(client.drain())
        assert got["/stembridge/deck/1/stem/bass/mute"] == [1]
        assert got["/stembridge/deck/1/stem/drums/gain_db"] == [-3.0]
        assert "/stembridge/deck/1/stem/drums/level" in got
        control.start()
        stop = time.monotonic() + 0.6
        while time.monotonic() < stop:  # the engine publishes meters far faster than 30 Hz
            control.publish_meters(1, {**{s: (0.5, 0.25) for s in STEMS}, "bass": (-0.0, -0.0)})  # a silent stem
            time.sleep(0.001)
        drained = client.drain()
        meters = [a for a, args in drained if a == "/stembridge/deck/1/stem/vocals/meter"]
        assert 5 <= len(meters) <= 0.6 * 30 + 2
        silent = [args for a, args in drained if a == "/stembridge/deck/1/stem/bass/meter"]
        assert silent and all(math.copysign(1.0, x) == 1.0 for args in silent for x in args)  # 0.0, never -0.0
        client.send("/stembridge/unsubscribe")
        client.get("/stembridge/deck/1/stem/bass/mute")
        client.drain()
        control.set("deck/1/stem/bass/mute", False)
        assert client.drain() == []
    finally:
        other.close()


def test_scene_store_and_recall_with_fade_over_osc(rig):
    control, _server, _q, client = rig
    control.start()
    client.send("/stembridge/deck/1/stem/vocals/gain_db", -10.0)
    client.send("/stembridge/scene/7/store")
    client.send("/stembridge/deck/1/stem/vocals/gain_db", 0.0)
    client.send("/stembridge/scene/7/recall", 0.05)
    assert client.get("/stembridge/deck/1/stem/vocals/gain_db") == -10.0
    client.send("/stembridge/deck/2/scene/karaoke/recall")  # a shipped scene preset, one deck, its own fade
    assert client.get("/stembridge/deck/2/stem/vocals/mute") == 1
    assert control.get("deck/1/stem/vocals/mute") is False
    client.send("/stembridge/scene/nope/recall")
    assert client.recv_until("/stembridge/warning")[0] == "/stembridge/scene/nope/recall"


def test_tcp_in_both_framings_sets_and_answers(rig):
    control, server, _q, _client = rig
    host, port = server.tcp_address
    for mode in ("1.1", "1.0"):
        tcp = SimpleTCPClient(host, port, mode=mode)
        try:
            tcp.send_message("/stembridge/deck/1/stem/other/gain_db", -4.5 if mode == "1.1" else -5.5)
            tcp.send_message("/stembridge/get", "/stembridge/deck/1/stem/other/gain_db")
            replies = [OscMessage(m) for m in tcp.receive(timeout=2.0)]
            assert replies[0].params == [-4.5 if mode == "1.1" else -5.5]
        finally:
            tcp.close()
    assert control.get("deck/1/stem/other/gain_db") == -5.5
    tcp = SimpleTCPClient(host, port, mode="1.1")  # a subscription without a port: feedback on this connection
    try:
        tcp.send_message("/stembridge/subscribe", [])
        deadline = time.monotonic() + 3
        seen: set[str] = set()
        while "/stembridge/subscribed" not in seen and time.monotonic() < deadline:
            seen |= {OscMessage(m).address for m in tcp.receive(timeout=2.0)}
        control.set("deck/1/stem/drums/solo", True, source="midi")
        got = []
        while not any(m.address == "/stembridge/deck/1/stem/drums/solo" for m in got) and time.monotonic() < deadline:
            got += [OscMessage(m) for m in tcp.receive(timeout=2.0)]
        assert [m.params for m in got if m.address == "/stembridge/deck/1/stem/drums/solo"] == [[1]]
    finally:
        tcp.close()


def test_binding_beyond_loopback_needs_an_allowlist_and_others_are_refused():
    control = Controller(STEMS)
    with pytest.raises(ValueError, match="allowlist"):
        OscServer(control, "0.0.0.0", 0)
    with pytest.raises(ValueError, match="bad OSC allowlist entry"):
        OscServer(control, "0.0.0.0", 0, allow=["not-an-ip"])
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.123", 9))  # no traffic: only asks which local address routes outward
        own_ip = probe.getsockname()[0]
    except OSError:
        own_ip = "127.0.0.1"
    finally:
        probe.close()
    if ipaddress_is_loopback(own_ip):
        pytest.skip("no non-loopback IPv4 address here to send from")
    server = control.serve_osc("0.0.0.0", 0, tcp_port=-1, allow=["203.0.113.0/24"])
    try:
        port = server.address[1]
        outsider = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        outsider.bind((own_ip, 0))
        outsider.sendto(build("/stembridge/deck/1/stem/vocals/mute", 1), (own_ip, port))
        local = Client(("127.0.0.1", port))
        assert local.get("/stembridge/deck/1/stem/vocals/mute") == 0  # loopback is always allowed
        local.close()
        outsider.close()
        assert server.stats["refused"] == 1 and control.get("deck/1/stem/vocals/mute") is False
    finally:
        control.close()


def ipaddress_is_loopback(ip: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip).is_loopback


# ------------------------------------------------------------------------------------------------- fuzz

VALID = [
    build("/stembridge/deck/1/stem/vocals/gain_db", -3.0),
    build("/stembridge/deck/1/stem/drums/mute", 1),
    build("/stembridge/deck/2/stem/bass/fx/comp/threshold_db", -12.0),
    build("/stembridge/get", "/stembridge/deck/*/stem/*/level"),
    build("/stembridge/deck/*/stem/{vocals,other}/solo", False),
    build("/stembridge/scene/1/store"),
    build("/stembridge/scene/1/recall", 0.0),
    build("/stembridge/deck/1/stem/vocals/level", 0.5),
]


def _bundle(*packets: bytes) -> bytes:
    b = OscBundleBuilder(IMMEDIATELY)
    for p in packets:
        b.add_content(OscMessage(p))
    return b.build().dgram


VALID.append(_bundle(VALID[0], VALID[1]))


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and data:  # flip bits
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op == 2:  # insert junk
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and len(data) > 8:  # swap a type tag
            comma = data.find(b",")
            if 0 <= comma < len(data) - 1:
                data[comma + 1] = rng.choice(b"ifsbhdtTFNI[]mcrSxyz\x00")
        elif op == 4:  # a huge blob or bundle size
            i = rng.randrange(len(data) + 1)
            data[i:i] = struct.pack(">i", rng.choice([-1, 0x7FFFFFFF, 3, 1 << 20]))
        else:  # duplicate a slice
            if data:
                a = rng.randrange(len(data))
                data += data[a : a + rng.randint(1, 16)]
    return bytes(data)


def wait_for_packets(server: OscServer, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while server.stats["packets"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats["packets"] == count, f"{server.stats['packets']} of {count} packets arrived"


def test_fuzz_ten_thousand_random_and_mutated_packets_then_the_server_still_answers(rig):
    control, server, _q, client = rig
    control.start()
    sent = 0
    rng = random.Random(1234)

    # plain random: 9,000 packets, half mutations of valid ones, in paced bursts so none are lost in the socket
    for _burst in range(18):
        for _ in range(500):
            r = rng.random()
            if r < 0.5:
                packet = mutate(rng, rng.choice(VALID))
            elif r < 0.8:
                packet = rng.randbytes(rng.randint(0, 200))
            elif r < 0.9:
                packet = b"/" + rng.randbytes(rng.randint(0, 60))
            else:
                packet = b"#bundle\x00" + rng.randbytes(rng.randint(0, 80))
            client.send_raw(packet[:65000])
            sent += 1
        wait_for_packets(server, sent)

    # property-based: 1,200 hypothesis examples of random bytes and of well-formed messages with random content
    sock = client.sock
    counter = [0]

    @settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300))
    def random_bytes(data):
        sock.sendto(data, server.address)
        counter[0] += 1
        if counter[0] % 400 == 0:
            wait_for_packets(server, sent + counter[0])

    atoms = st.one_of(
        st.integers(-(2**31), 2**31 - 1),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.booleans(),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    addresses = st.one_of(
        st.sampled_from([p for p in control.tree.paths()]).map(lambda p: "/stembridge/" + p),
        st.text(alphabet="/abcdeklmstv*?[]{},!-0123456789", min_size=1, max_size=40).map(lambda s: "/" + s),
        st.sampled_from(["/stembridge/get", "/stembridge/subscribe", "/stembridge/scene/2/recall", "/stembridge/"]),
    )

    @settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(addresses, st.lists(atoms, max_size=3))
    def random_messages(address, args):
        sock.sendto(encode_message(address, args), server.address)
        counter[0] += 1
        if counter[0] % 400 == 0:
            wait_for_packets(server, sent + counter[0])

    random_bytes()
    random_messages()
    sent += counter[0]
    wait_for_packets(server, sent)
    assert sent >= 10_000
    client.drain()  # replies to the fuzz (gets, warnings, subscription feedback)
    stats = server.stats
    assert stats["errors"] == 0, "a packet raised an unexpected exception"
    assert stats["malformed"] > 5000 and stats["messages"] > 500
    # the server still answers, promptly, and still applies changes
    client.send("/stembridge/deck/1/stem/vocals/gain_db", -7.0)
    t0 = time.monotonic()
    assert client.get("/stembridge/deck/1/stem/vocals/gain_db") == -7.0
    assert time.monotonic() - t0 < 1.0


# ------------------------------------------------------------------------------------------------- liblo

needs_liblo = pytest.mark.skipif(
    shutil.which("oscsend") is None or shutil.which("oscdump") is None,
    reason="liblo-tools (oscsend, oscdump) not installed; .ci/setup installs it",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_liblo
def test_liblo_oscsend_sets_values_over_udp_and_tcp(rig):
    control, server, _q, client = rig
    port = str(server.address[1])
    run = lambda *args: subprocess.run(["oscsend", *args], check=True, timeout=10, capture_output=True)  # noqa: E731
    run("localhost", port, "/stembridge/deck/1/stem/vocals/mute", "i", "1")
    run("localhost", port, "/stembridge/deck/1/stem/drums/solo", "T")
    run("localhost", port, "/stembridge/deck/1/stem/bass/gain_db", "f", "-6.0")
    run("localhost", port, "/stembridge/deck/*/stem/other/mute", "F")
    run(f"osc.tcp://localhost:{server.tcp_address[1]}", "/stembridge/deck/2/stem/other/gain_db", "f", "-2.5")
    assert client.get("/stembridge/deck/1/stem/bass/gain_db") == -6.0
    deadline = time.monotonic() + 2
    while control.get("deck/2/stem/other/gain_db") != -2.5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert control.get("deck/1/stem/vocals/mute") is True and control.get("deck/1/stem/drums/solo") is True
    assert control.get("deck/2/stem/other/gain_db") == -2.5
    assert server.stats["malformed"] == 0 and server.stats["unknown"] == 0


@needs_liblo
def test_liblo_oscdump_receives_feedback_as_a_subscriber(rig, tmp_path: Path):
    control, _server, _q, client = rig
    port = free_udp_port()
    out = tmp_path / "oscdump.txt"
    with out.open("w") as f:
        dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=f, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.3)  # let oscdump bind
        client.send("/stembridge/subscribe", port)  # feedback to this host at oscdump's port
        client.recv_until("/stembridge/subscribed")
        control.set("deck/1/stem/vocals/mute", True, source="midi")
        threading.Event().wait(0.3)
    finally:
        dump.send_signal(signal.SIGINT)  # SIGINT flushes; SIGTERM can lose lines
        dump.wait(timeout=5)
    lines = [line.split(" ", 1)[1] for line in out.read_text().splitlines() if " /" in line]  # drop time tags
    assert "/stembridge/deck/1/stem/vocals/level f 0.800000" in lines  # the state dump on subscribe
    assert lines[-1] == "/stembridge/deck/1/stem/vocals/mute i 1"  # then the change
