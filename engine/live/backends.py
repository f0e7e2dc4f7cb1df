"""Audio backends: JACK (JACK-Client), PortAudio (sounddevice) and ``dummy`` (a real-time clock, no device).

Every backend drives one callback, ``process(inp, out)`` with inp float32 (num_inputs, n) and out float32
(num_outputs, n), from its audio thread, and counts xruns. The life cycle is

    backend = open_backend("jack")                     # or "portaudio", "dummy"
    sample_rate, block_size = backend.open(44100, 256)  # JACK answers with the server's rate and period
    backend.start(engine.process_block, engine.input_names(), engine.output_names())
    backend.connect("master=system:playback")           # JACK only: wire ports (see ``JackBackend.connect``)
    ...
    backend.close()

The callbacks only copy between the device buffers and preallocated arrays around ``process``; an exception in
``process`` is kept (not printed on the audio thread) for the control side to log, and the block is answered with
silence.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

Process = Callable[[np.ndarray, np.ndarray], None]
BACKENDS = ("jack", "portaudio", "dummy")


class BackendError(Exception):
    """The backend cannot start (no server, no device, wrong sample rate); the message says what to do."""


class Backend:
    """Common state: xrun and error counters, the preallocated callback buffers."""

    name = "backend"

    def __init__(self) -> None:
        self.sample_rate = 0
        self.block_size = 0
        self.num_xruns = 0
        self.num_errors = 0
        self.last_error: BaseException | None = None
        self.running = False
        self.failed: str | None = None  # set when the backend stopped by itself (server gone)
        self.period_changed_to: int | None = None

    def _buffers(self, num_inputs: int, num_outputs: int, frames: int) -> None:
        self._in = np.zeros((num_inputs, frames), dtype=np.float32)
        self._out = np.zeros((num_outputs, frames), dtype=np.float32)

    def _run(self, process: Process, inp: np.ndarray, out: np.ndarray) -> None:
        try:
            process(inp, out)
        except Exception as exc:  # logged off the audio thread by whoever watches num_errors
            self.num_errors += 1
            self.last_error = exc
            out.fill(0.0)

    def stats(self) -> dict:
        return {"xruns": self.num_xruns, "backend_errors": self.num_errors}

    def describe(self) -> str:
        return f"{self.name} at {self.sample_rate} Hz, period {self.block_size}"

    def open(self, sample_rate: int, block_size: int) -> tuple[int, int]:
        raise NotImplementedError

    def start(self, process: Process, input_names: list[str], output_names: list[str]) -> None:
        raise NotImplementedError

    def connect(self, spec: str) -> list[tuple[str, str]]:
        raise BackendError(f"the {self.name} backend has no ports to connect")

    def auto_connect(self) -> list[tuple[str, str]]:
        return []

    def close(self) -> None:
        self.running = False


# -- JACK --
class JackBackend(Backend):
    """A JACK client named ``client_name`` with one port per engine channel (``stembridge:vocals_L``...)."""

    name = "jack"

    def __init__(self, client_name: str = "stembridge", server: str | None = None) -> None:
        super().__init__()
        self.client_name = client_name
        self.server = server
        self.client = None
        self.inports: list = []
        self.outports: list = []

    def open(self, sample_rate: int, block_size: int) -> tuple[int, int]:
        import jack

        jack.set_error_function(lambda msg: log.debug("jack: %s", msg))
        jack.set_info_function(lambda msg: log.debug("jack: %s", msg))
        try:
            self.client = jack.Client(self.client_name, no_start_server=True, servername=self.server)
        except jack.JackOpenError as exc:
            raise BackendError(
                "cannot connect to a JACK server (is jackd running?). Start one, e.g. "
                "`jackd -d alsa -r 44100 -p 256` for a sound card or `jackd -d dummy -r 44100 -p 256` without one"
            ) from exc
        self.client_name = self.client.name  # JACK may have renamed it (stembridge-01) if the name was taken
        self.sample_rate, self.block_size = int(self.client.samplerate), int(self.client.blocksize)
        return self.sample_rate, self.block_size

    def start(self, process: Process, input_names: list[str], output_names: list[str]) -> None:
        client = self.client
        self.inports = [client.inports.register(name) for name in input_names]
        self.outports = [client.outports.register(name) for name in output_names]
        self._buffers(len(self.inports), len(self.outports), self.block_size)
        inports, outports = self.inports, self.outports
        inp_all, out_all = self._in, self._out

        def on_process(frames: int) -> None:
            if frames != self.block_size:
                for port in outports:
                    port.get_array().fill(0.0)
                return
            inp, out = inp_all[:, :frames], out_all[:, :frames]
            for i, port in enumerate(inports):
                inp[i] = port.get_array()
            self._run(process, inp, out)
            for i, port in enumerate(outports):
                port.get_array()[:] = out[i]

        def on_xrun(delayed_usecs: float) -> None:
            self.num_xruns += 1

        def on_blocksize(blocksize: int) -> None:
            if blocksize != self.block_size:
                self.period_changed_to = blocksize  # the engine answers with silence; the control side says why

        def on_shutdown(status, reason: str) -> None:
            self.failed = f"the JACK server shut down: {reason}"
            self.running = False

        client.set_process_callback(on_process)
        client.set_xrun_callback(on_xrun)
        client.set_blocksize_callback(on_blocksize)
        client.set_shutdown_callback(on_shutdown)
        client.activate()
        self.running = True

    def _our_ports(self, name: str) -> list:
        """Our ports for a bus or port name: "master", "vocals", "vocals_L", "in1", "all" (every output)."""
        ours = self.outports + self.inports
        if name == "all":
            return list(self.outports)
        exact = [p for p in ours if p.shortname == name]
        if exact:
            return exact
        return [p for p in ours if re.fullmatch(re.escape(name) + r"_[LR]", p.shortname)]

    def connect(self, spec: str) -> list[tuple[str, str]]:
        """Wire ports by a spec ``OURS=THEIRS``. OURS: a bus (``master``, ``vocals``...), one of our ports
        (``vocals_L``), an input deck (``in1``) or ``all`` (every output, master first). THEIRS: a full port name,
        or a client name or regular expression whose matching ports are taken in order; e.g.
        ``master=system:playback`` connects master_L/R to system:playback_1/2. Returns the (source, destination)
        pairs connected; raises BackendError when either side matches nothing."""
        if "=" not in spec:
            raise BackendError(f"bad connection {spec!r}: write OURS=THEIRS, e.g. master=system:playback")
        ours_name, theirs = (s.strip() for s in spec.split("=", 1))
        ours = self._our_ports(ours_name)
        if not ours:
            names = ", ".join(p.shortname for p in self.outports + self.inports)
            raise BackendError(f"connection {spec!r}: no port of ours is called {ours_name!r} (ports: {names}, all)")
        made = []
        for direction_out in (True, False):
            mine = [p for p in ours if (p in self.outports) == direction_out]
            if not mine:
                continue
            targets = self._their_ports(theirs, want_input=direction_out)
            if not targets:
                kind = "input" if direction_out else "output"
                raise BackendError(f"connection {spec!r}: no JACK audio {kind} port matches {theirs!r}")
            for port, target in zip(mine, targets, strict=False):
                src, dst = (port.name, target) if direction_out else (target, port.name)
                if dst not in [c.name for c in self.client.get_all_connections(src)]:
                    self.client.connect(src, dst)
                made.append((src, dst))
        return made

    def _their_ports(self, pattern: str, want_input: bool) -> list[str]:
        own = self.client_name + ":"
        kwargs = {"is_audio": True, "is_input": want_input, "is_output": not want_input}
        ports = [p.name for p in self.client.get_ports(**kwargs) if not p.name.startswith(own)]
        if pattern in ports:
            return [pattern]
        prefix = [p for p in ports if p.startswith(pattern if ":" in pattern else pattern + ":")]
        if prefix:
            return prefix
        try:
            rx = re.compile(pattern)
        except re.error:
            return []
        return [p for p in ports if rx.search(p)]

    def auto_connect(self) -> list[tuple[str, str]]:
        """Master to the first physical playback ports (and the headphone cue pair to the next two, where the
        device has them); the first physical capture ports to the first input deck."""
        made = []
        playback = [p.name for p in self.client.get_ports(is_audio=True, is_input=True, is_physical=True)]
        for port, target in zip(self.outports[:2], playback, strict=False):
            self.client.connect(port, target)
            made.append((port.name, target))
        cue = [p for p in self.outports if p.shortname in ("cue_L", "cue_R")]
        for port, target in zip(cue, playback[2:4] if len(playback) >= 4 else [], strict=False):
            self.client.connect(port, target)
            made.append((port.name, target))
        capture = [p.name for p in self.client.get_ports(is_audio=True, is_output=True, is_physical=True)]
        for port, source in zip(self.inports[:2], capture, strict=False):
            self.client.connect(source, port)
            made.append((source, port.name))
        return made

    def stats(self) -> dict:
        out = super().stats()
        if self.client is not None and self.running:
            try:
                out["jack_dsp_load_pct"] = float(self.client.cpu_load())
            except Exception:  # the server may be going away
                pass
        return out

    def close(self) -> None:
        if self.client is not None:
            try:
                if self.running:
                    self.client.deactivate()
                self.client.close()
            finally:
                self.client = None
        super().close()


# -- PortAudio --
class PortAudioBackend(Backend):
    """A PortAudio stream (sounddevice): engine channels map onto device channels in order (master on 1-2, then
    the stems), truncated to what the device has; live input decks take input channels 1-2, 3-4, ..."""

    name = "portaudio"

    def __init__(self, device: str | int | None = None) -> None:
        super().__init__()
        self.device = device
        self.stream = None
        self.num_device_outputs = 0

    def open(self, sample_rate: int, block_size: int) -> tuple[int, int]:
        sd = import_sounddevice()
        device = _device_arg(self.device)
        try:
            info = sd.query_devices(device, "output") if device is not None else sd.query_devices(kind="output")
        except (ValueError, sd.PortAudioError) as exc:
            raise BackendError(f"no PortAudio output device {self.device!r}: {exc} (see `stembridge devices`)") from exc
        self.device_info = dict(info)
        self.sample_rate, self.block_size = int(sample_rate), int(block_size)
        return self.sample_rate, self.block_size

    def start(self, process: Process, input_names: list[str], output_names: list[str]) -> None:
        sd = import_sounddevice()
        device = _device_arg(self.device)
        num_out = min(len(output_names), int(self.device_info["max_output_channels"]))
        num_in = len(input_names)
        if num_in:
            in_info = sd.query_devices(device, "input") if device is not None else sd.query_devices(kind="input")
            if int(in_info["max_input_channels"]) < num_in:
                raise BackendError(f"the input device has {in_info['max_input_channels']} channels; {num_in} needed")
        if num_out < len(output_names):
            log.warning("the device has %d output channels: only %s go out", num_out, ", ".join(output_names[:num_out]))
        self.num_device_outputs = num_out
        self._buffers(num_in, len(output_names), self.block_size)
        inp_all, out_all = self._in, self._out

        def callback(indata, outdata, frames, when, status) -> None:
            if status.output_underflow or status.input_overflow or status.output_overflow or status.input_underflow:
                self.num_xruns += 1
            if frames != self.block_size:
                outdata.fill(0.0)
                return
            inp, out = inp_all[:, :frames], out_all[:, :frames]
            if num_in:
                np.copyto(inp, indata.T)
            self._run(process, inp, out)
            outdata[:] = out[:num_out].T

        def output_only(outdata, frames, when, status) -> None:
            callback(None, outdata, frames, when, status)

        kwargs = dict(samplerate=self.sample_rate, blocksize=self.block_size, dtype="float32", latency="low")
        try:
            if num_in:
                self.stream = sd.Stream(device=device, channels=(num_in, num_out), callback=callback, **kwargs)
            else:
                self.stream = sd.OutputStream(device=device, channels=num_out, callback=output_only, **kwargs)
            self.stream.start()
        except sd.PortAudioError as exc:
            raise BackendError(f"PortAudio cannot open the device at {self.sample_rate} Hz: {exc}") from exc
        self.running = True

    def describe(self) -> str:
        return f"portaudio device {self.device_info.get('name')!r} at {self.sample_rate} Hz, period {self.block_size}"

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None
        super().close()


def import_sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there, the PortAudio library is not
        hint = "install it, e.g. apt-get install libportaudio2"
        raise BackendError(f"PortAudio is not available ({exc}); {hint}") from exc
    return sounddevice


def _device_arg(device: str | int | None) -> str | int | None:
    if isinstance(device, str) and device.isdigit():
        return int(device)
    return device


# -- dummy --
class DummyBackend(Backend):
    """No device: a thread calls ``process`` once per period on a real-time clock; the output goes to ``taps``.

    Input is silence unless ``input_fn(inp, block)`` fills it. A block that ends after the next period's deadline
    counts as an xrun (the clock then catches up instead of bursting).
    """

    name = "dummy"

    def __init__(self, input_fn: Callable[[np.ndarray, int], None] | None = None) -> None:
        super().__init__()
        self.input_fn = input_fn
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def open(self, sample_rate: int, block_size: int) -> tuple[int, int]:
        self.sample_rate, self.block_size = int(sample_rate), int(block_size)
        return self.sample_rate, self.block_size

    def start(self, process: Process, input_names: list[str], output_names: list[str]) -> None:
        self._buffers(len(input_names), len(output_names), self.block_size)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(process,), name="stembridge-dummy", daemon=True)
        self.running = True
        self._thread.start()

    def _loop(self, process: Process) -> None:
        period = self.block_size / self.sample_rate
        deadline = time.perf_counter()
        block = 0
        while not self._stop.is_set():
            if self.input_fn is not None:
                self.input_fn(self._in, block)
            self._run(process, self._in, self._out)
            block += 1
            deadline += period
            now = time.perf_counter()
            if now > deadline:
                self.num_xruns += 1
                if now - deadline > 4 * period:
                    deadline = now  # far behind: restart the clock rather than rushing blocks out
                continue
            time.sleep(deadline - now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        super().close()


def open_backend(name: str, *, client_name: str = "stembridge", device: str | None = None, **kwargs) -> Backend:
    """A backend by name: "jack", "portaudio" or "dummy"."""
    if name == "jack":
        return JackBackend(client_name, server=kwargs.get("server"))
    if name == "portaudio":
        return PortAudioBackend(device)
    if name == "dummy":
        return DummyBackend(kwargs.get("input_fn"))
    raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
