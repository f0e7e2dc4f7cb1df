"""CLI commands for the control side: ``stembridge midi-learn`` and ``stembridge presets check|list``.

Registered in bridge/cli.py with ``main.add_command`` (objects ``midi_learn`` and ``presets``).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import click
from stembridge.bridge.presets import KINDS, PresetError, check_preset, kind_of, shipped_files, user_dir

DEFAULT_STEMS = ("vocals", "drums", "bass", "other")


@click.command("midi-learn")
@click.argument("target")
@click.option(
    "--map",
    "map_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Controller map TOML to save the binding in (created if missing). Default: "
    "~/.config/stembridge/presets/controllers/user.toml.",
)
@click.option("--port", "port_name", help="MIDI input port (exact or partial name). Default: the first one.")
@click.option(
    "--midi-api",
    type=click.Choice(["auto", "alsa", "jack"]),
    default="auto",
    show_default=True,
    help="MIDI system: ALSA, JACK MIDI, or whichever works (ALSA first).",
)
@click.option(
    "--mode",
    type=click.Choice(
        ["toggle", "momentary", "hold", "absolute", "relative_twos", "relative_signmag", "relative_offset"]
    ),
    help="Force how the control acts; by default it is inferred from what the control sends.",
)
@click.option("--shift", "shift_layer", is_flag=True, help="Bind in the shift layer (active while Shift is held).")
@click.option(
    "--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True, help="Seconds to wait for a move."
)
@click.option(
    "--osc",
    "osc_target",
    metavar="HOST:PORT",
    help="Ask a running `stembridge live` (its OSC address, e.g. 127.0.0.1:9000) to learn instead; it saves the "
    "binding into its own user map and uses it at once.",
)
@click.option("--stems", default=",".join(DEFAULT_STEMS), show_default=True, help="Stem names of your model.")
def midi_learn(target, map_path, port_name, midi_api, mode, shift_layer, timeout, osc_target, stems) -> None:
    """Bind the next control you move on a MIDI controller to TARGET and save it in your map.

    TARGET is a parameter path or OSC address, e.g. deck/1/stem/vocals/mute,
    /stembridge/deck/1/stem/drums/fx/hpf/cutoff_frequency_hz, or scene/karaoke/recall.
    Run it, then move a knob, fader or pad: notes become buttons, CCs become knobs (relative encoders, 14-bit pairs
    and NRPN are recognised). Load the saved map with `stembridge live --midi-map PATH`.

    Example: stembridge midi-learn deck/1/stem/vocals/level --port "nanoKONTROL2"
    """
    if osc_target:
        _learn_over_osc(osc_target, target, mode, timeout)
        return
    from stembridge.bridge.control import Controller
    from stembridge.bridge.midi_map import MidiUnavailable, open_ports
    from stembridge.bridge.params import UnknownParam, normalize_path

    path = normalize_path(target)
    decks = 2
    parts = path.split("/")
    if len(parts) > 1 and parts[0] == "deck" and parts[1].isdigit():
        decks = max(decks, int(parts[1]))
    stem_names = tuple(s.strip() for s in stems.split(",") if s.strip())
    control = Controller(stem_names, decks, user_map=map_path)
    try:
        control.load_scene("default")  # so effect parameters of the shipped chains can be learned
    except (KeyError, PresetError, ValueError):
        pass
    if not path.startswith("scene/") and path not in control.tree:
        raise click.BadParameter(
            f"no parameter {path!r}; e.g. deck/1/stem/vocals/level, deck/1/stem/drums/mute, "
            "deck/1/stem/vocals/fx/delay/mix, deck/1/master/level, scene/karaoke/recall",
            param_hint="TARGET",
        )
    try:
        inp, _ = open_ports(port_name, None, api=midi_api)
    except MidiUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    from stembridge.bridge.presets import ControllerMap

    result: list[tuple[str, str]] = []
    mapper = control.add_midi(ControllerMap(name="learn"))
    try:
        control.learn(
            path,
            mode=mode,
            layer="shift" if shift_layer else "main",
            on_done=lambda t, d: result.append((t, d)),
            timeout_s=timeout,
        )
    except (UnknownParam, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    mapper.attach_input(inp)  # after arming, so the first move is the one learned
    click.echo(f"move a control on {inp.name} to bind it to {path} (Ctrl-C to give up)...", err=True)
    deadline = time.monotonic() + timeout
    try:
        while not result and time.monotonic() < deadline:
            control.tick()
            time.sleep(0.02)
    finally:
        control.close()
    if not result:
        raise click.ClickException(f"no control moved within {timeout:g} s; nothing saved")
    click.echo(f"{result[0][1]} -> {result[0][0]} (saved in {control.user_map})")


def _learn_over_osc(address: str, target: str, mode: str | None, timeout: float) -> None:
    from stembridge.bridge.osc_codec import OscError, encode_message, parse_packet

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("give HOST:PORT, e.g. 127.0.0.1:9000", param_hint="--osc")
    args = [target] + ([mode] if mode else [])
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(encode_message("/stembridge/learn", args), (host, int(port)))
        deadline = time.monotonic() + timeout
        armed = False
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                if not armed and time.monotonic() > deadline - timeout + 3:
                    raise click.ClickException(f"no answer from stembridge at {address}") from None
                continue
            try:
                messages = parse_packet(data)
            except OscError:
                continue
            for addr, margs in messages:
                if addr == "/stembridge/learn/armed":
                    armed = True
                    click.echo(f"move a control to bind it to {margs[0]}...", err=True)
                elif addr == "/stembridge/learn/done":
                    click.echo(f"{margs[1]} -> {margs[0]} (saved by the running stembridge)")
                    return
                elif addr == "/stembridge/warning":
                    raise click.ClickException(f"{margs[0]}: {margs[1]}")
    sock_msg = "no control moved" if armed else f"no answer from stembridge at {address}"
    raise click.ClickException(f"{sock_msg} within {timeout:g} s")


@click.group("presets")
def presets() -> None:
    """Check and list effect-chain, controller-map and scene presets (TOML files in presets/)."""


@presets.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--stems",
    default=",".join(DEFAULT_STEMS),
    show_default=True,
    help="Stem names of your model: targets and scene stems must name one of them.",
)
def presets_check(paths, stems: str) -> None:
    """Validate preset files and build them (chains also process one block of audio).

    With no PATHS, checks every shipped preset and every file in your preset folder
    (~/.config/stembridge/presets or $STEMBRIDGE_PRESETS). Prints one line per file and exits with status 1 if
    any file is invalid; errors name the file, line and key.

    Example: stembridge presets check my_map.toml
    """
    files = list(paths)
    if not files:
        files = shipped_files() + sorted(p for k in KINDS for p in (user_dir() / k).glob("*.toml"))
    failures = 0
    for path in files:
        try:
            summary = check_preset(path, tuple(x.strip() for x in stems.split(",") if x.strip()))
        except PresetError as exc:
            failures += 1
            click.echo(f"error: {exc}", err=True)
            continue
        click.echo(f"ok: {path}: {summary}")
    if failures:
        click.echo(f"{failures} of {len(files)} preset file(s) invalid", err=True)
        sys.exit(1)


@presets.command("list")
def presets_list() -> None:
    """List the shipped and user presets by kind, with the first line of each description."""
    from stembridge.bridge.presets import LOADERS

    for kind in KINDS:
        click.echo(f"{kind}:")
        for path in shipped_files(kind) + sorted((user_dir() / kind).glob("*.toml")):
            try:
                preset = LOADERS[kind_of(path)](path)
                text = (preset.description or "").split(". ")[0].replace("\n", " ")
                click.echo(f"  {path.stem:28s} {text[:90]}")
            except PresetError as exc:
                click.echo(f"  {path.stem:28s} INVALID: {exc.message}")
