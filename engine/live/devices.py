"""Lists what the live engine can talk to: JACK ports, PortAudio devices and MIDI ports (ALSA and JACK).

Each probe answers with what it found or why it found nothing (no server, no library, no sequencer), never an
exception: ``stembridge devices`` shows every section.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Section:
    """One probe's result: ``items`` (dicts) when ``available``, else ``reason``."""

    name: str
    available: bool
    items: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C libraries (ALSA, JACK, PortAudio) print on file descriptor 2 while probing."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def jack_ports(server: str | None = None) -> Section:
    """Audio and MIDI ports of a running JACK server (none is started)."""
    try:
        import jack
    except (ImportError, OSError) as exc:
        return Section("JACK", False, reason=f"JACK-Client cannot load ({exc}); install jackd2 / libjack")
    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    try:
        with quiet_stderr():
            client = jack.Client("stembridge-devices", no_start_server=True, servername=server)
    except jack.JackOpenError:
        hint = "start one, e.g. `jackd -d dummy -r 44100 -p 256`"
        return Section("JACK", False, reason=f"no JACK server is running ({hint})")
    try:
        items = [{"server": f"{client.samplerate} Hz, period {client.blocksize}"}]
        for port in client.get_ports():
            if port.name.startswith(client.name + ":"):
                continue
            items.append(
                {
                    "port": port.name,
                    "type": "midi" if port.is_midi else "audio",
                    "direction": "in" if port.is_input else "out",
                    "physical": bool(port.is_physical),
                }
            )
        return Section("JACK", True, items)
    finally:
        client.close()


def portaudio_devices() -> Section:
    """PortAudio devices (with JACK running, its "system" device shows here too)."""
    try:
        with quiet_stderr():
            import sounddevice as sd

            devices = sd.query_devices()
            apis = sd.query_hostapis()
    except OSError as exc:
        return Section("PortAudio", False, reason=f"PortAudio is not available ({exc}); apt-get install libportaudio2")
    items = [
        {
            "index": i,
            "name": d["name"],
            "host_api": apis[d["hostapi"]]["name"],
            "inputs": int(d["max_input_channels"]),
            "outputs": int(d["max_output_channels"]),
            "default_rate": int(d["default_samplerate"]),
        }
        for i, d in enumerate(devices)
    ]
    if not items:
        return Section("PortAudio", False, reason="PortAudio sees no device (no sound card, no JACK server)")
    return Section("PortAudio", True, items)


def midi_ports(api: str) -> Section:
    """MIDI ports through python-rtmidi's ALSA ("alsa") or JACK ("jack") API."""
    title = f"MIDI ({api.upper()})"
    try:
        import mido
    except ImportError as exc:
        return Section(title, False, reason=f"mido is not installed ({exc})")
    name = {"alsa": "mido.backends.rtmidi/LINUX_ALSA", "jack": "mido.backends.rtmidi/UNIX_JACK"}[api]
    try:
        with quiet_stderr():
            backend = mido.Backend(name, load=True)
            inputs, outputs = backend.get_input_names(), backend.get_output_names()
    except Exception as exc:  # rtmidi raises its own SystemError types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        why = "no ALSA sequencer (/dev/snd/seq)" if api == "alsa" else "no JACK server"
        return Section(title, False, reason=f"{why}: {first}")
    items = [{"port": n, "direction": "in"} for n in inputs] + [{"port": n, "direction": "out"} for n in outputs]
    return Section(title, True, items, reason="" if items else "no ports")


def list_devices(server: str | None = None) -> list[Section]:
    """Every section, in the order ``stembridge devices`` prints them."""
    jack_section = jack_ports(server)
    sections = [jack_section, portaudio_devices(), midi_ports("alsa")]
    if jack_section.available:
        sections.append(midi_ports("jack"))
    else:
        sections.append(Section("MIDI (JACK)", False, reason="no JACK server is running"))
    return sections


def sections_as_dicts(sections: list[Section]) -> list[dict[str, Any]]:
    return [asdict(s) for s in sections]
