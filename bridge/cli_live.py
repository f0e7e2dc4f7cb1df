"""CLI commands ``stembridge live`` (the engine with its control bridge) and ``stembridge devices``.

Registered in bridge/cli.py with ``main.add_command`` (objects ``live`` and ``devices``).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click
from stembridge.bridge.cli_options import device_option, model_option, spatial_filter_option
from stembridge.bridge.web_server import web_option

log = logging.getLogger("stembridge.live")

ENGINE_STATUS_ADDRESS = "/stembridge/engine/status"
STATUS_KEYS = (
    "xruns", "deadline_misses", "dry_blocks", "skipped_blocks", "backend_errors", "commands_dropped",
    "callback_ms_p99", "worker_ms_p99", "cpu_pct", "latency_ms", "resample_latency_ms", "sample_rate",
    "fx_latency_samples",
)  # fmt: skip


@click.command("live")
@click.option(
    "--backend",
    type=click.Choice(["jack", "portaudio", "dummy"]),
    default="jack",
    show_default=True,
    help="Audio system: JACK ports, a PortAudio device, or dummy (a real-time clock, no device: for rehearsing "
    "mappings and for tests).",
)
@click.option(
    "--deck",
    "deck_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Play an audio file on a deck (repeatable: one deck each). Decks are numbered 1, 2, ... in order.",
)
@click.option(
    "--decks",
    "num_decks",
    type=click.IntRange(1, 8),
    help="File decks: the --deck files first, the rest start empty; load tracks into any of them while running "
    "(OSC /stembridge/deck/<n>/load s <path>, /eject, /load_next and /load_prev with --crate). Default: one per "
    "--deck file.",
)
@click.option(
    "--crate",
    type=click.Path(path_type=Path, file_okay=False),
    help="A folder of tracks for load_next/load_prev (OSC or a MIDI button) and /stembridge/crate/list; a load "
    "request may also name a file in it.",
)
@click.option(
    "--inputs",
    "num_inputs",
    type=click.IntRange(0, 8),
    help="Live stereo input decks, numbered after the file decks (JACK ports in<N>_L/R, or device input channels "
    "1-2, 3-4, ...). Default: 1 when neither --deck nor --decks is given, else 0.",
)
@model_option()
@device_option()
@spatial_filter_option()
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="ONNX Runtime threads.")
@click.option(
    "--period",
    type=click.IntRange(16, 8192),
    default=256,
    show_default=True,
    help="Frames per period for portaudio and dummy (JACK uses its server's period).",
)
@click.option(
    "--sample-rate",
    type=click.IntRange(8000, 192000),
    help="Sample rate for portaudio and dummy. Default: the model's (JACK uses its server's). Any rate works: the "
    "separation worker resamples to the model's rate and back (the latency this adds is reported).",
)
@click.option(
    "--resample-quality",
    type=click.Choice(["lq", "mq", "hq", "vhq"], case_sensitive=False),
    help="When the host runs at another rate than the model (48, 88.2, 96 kHz...), the worker resamples with soxr "
    "at this quality. Default: hq (adds ~46 ms at 48 kHz) with file decks only, lq (~17 ms) with a live input.",
)
@click.option(
    "--hq-stems/--no-hq-stems",
    "hq_stems",
    default=True,
    show_default=True,
    help="File decks also compute high-quality stems (the `separate` path) ahead of the playhead, in a low-priority "
    "process per deck, cached on disk (~/.cache/stembridge/stems), and crossfade to them when ready. Needs the host "
    "at the model's rate.",
)
@click.option("--audio-device", help="PortAudio device name or index (see `stembridge devices`). Default: the default.")
@click.option("--client-name", default="stembridge", show_default=True, help="JACK client name (port prefix).")
@click.option("--jack-server", help="JACK server name, if not the default one.")
@click.option(
    "--connect",
    "connections",
    multiple=True,
    metavar="OURS=THEIRS",
    help="JACK: connect ports (repeatable). OURS: master, vocals, drums, bass, other, a port like vocals_L, an "
    "input deck like in1, or all. THEIRS: a port, a client, or a regular expression; matching ports are taken in "
    "order. E.g. --connect master=system:playback --connect all=ardour.",
)
@click.option(
    "--auto-connect",
    is_flag=True,
    help="JACK: connect master to the first physical playback ports and the first physical capture ports to the "
    "first input deck.",
)
@click.option(
    "--fifo-periods",
    type=click.IntRange(2, 16),
    help="Periods the separation worker may take (latency of a live input = model latency + this many periods). "
    "Default: 2 with a live input deck, 4 with file decks only (their read-ahead hides it).",
)
@click.option(
    "--worker",
    type=click.Choice(["process", "thread"]),
    default="process",
    show_default=True,
    help="Run the model in a worker process (its Python never competes with the audio callback for the GIL) or a "
    "thread (less memory; fine on an idle machine).",
)
@click.option(
    "--worker-rt-priority",
    type=click.IntRange(0, 99),
    default=1,
    show_default=True,
    help="Real-time (SCHED_FIFO) priority of the worker process, below JACK's audio threads, when the system "
    "permits it (root or JACK's audio group); 0 keeps it an ordinary process.",
)
@click.option(
    "--thread-rt-priority",
    type=click.IntRange(0, 99),
    default=2,
    show_default=True,
    help="Real-time priority for stembridge's other threads (control, OSC, MIDI, meters), when permitted: a thread "
    "holding Python's GIL is then not preempted by ordinary load while the audio callback waits for the GIL. "
    "Keep it below JACK's audio threads; 0 leaves them ordinary.",
)
@click.option("--osc-host", default="127.0.0.1", show_default=True, help="OSC bind address.")
@click.option("--osc-port", type=click.IntRange(0, 65535), default=9000, show_default=True, help="OSC UDP port.")
@click.option(
    "--osc-tcp-port",
    type=click.IntRange(-1, 65535),
    help="OSC TCP port (default: the UDP port's number; -1: no TCP).",
)
@click.option(
    "--osc-allow",
    multiple=True,
    metavar="NET",
    help="Client addresses or networks allowed when --osc-host is not loopback (repeatable).",
)
@click.option("--no-osc", is_flag=True, help="Do not start the OSC server.")
@web_option
@click.option("--midi-in", help="MIDI input port (exact or partial name) for a controller.")
@click.option("--midi-out", help="MIDI output port for LED feedback.")
@click.option(
    "--midi-map",
    help="Controller map preset (name or .toml), e.g. akai_apc_mini_mk2. Needed with --midi-in.",
)
@click.option(
    "--midi-api",
    type=click.Choice(["auto", "alsa", "jack"]),
    default="auto",
    show_default=True,
    help="MIDI system for --midi-in/--midi-out.",
)
@click.option(
    "--scene",
    default="default",
    show_default=True,
    help="Scene preset to load at start (chains and levels), e.g. karaoke. The default scene loads every stem's "
    "shipped chain (vocal echo-out, drum filter sweep, bass tightener, DJ filter), so the effect addresses in the "
    "docs and the shipped MIDI maps work as written; 'none' starts with no effects.",
)
@click.option("--paused", is_flag=True, help="File decks start paused (play them over OSC or MIDI).")
@click.option("--loop", is_flag=True, help="File decks loop the whole file.")
@click.option(
    "--outputs",
    type=click.Choice(["summed", "per-deck", "both"]),
    default="both",
    show_default=True,
    help="Output pairs: summed (master_L/R and <stem>_L/R over all decks), per-deck (deck<n>_master_L/R and "
    "deck<n>_<stem>_L/R for each deck, for a DJ mixer or a DAW), or both (summed first).",
)
@click.option(
    "--cue/--no-cue",
    default=True,
    show_default=True,
    help="A headphone pair cue_L/R: the decks whose deck/<n>/pfl is on (pre-fader), blended with the master by "
    "cue/mix (0 cue .. 1 master). JACK: after the other ports; PortAudio: on channels 3-4, right after master.",
)
@click.option(
    "--record",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also record output channels to this WAV file (their names go to <file>.channels.txt).",
)
@click.option(
    "--record-outputs",
    default="all",
    show_default=True,
    metavar="LAYOUT",
    help="What --record takes: all (every output channel, in port order), summed, per-deck, cue, or a "
    "comma-separated list of pairs such as master,deck2_master,cue.",
)
@click.option("--duration", type=click.FloatRange(0.1, None), help="Stop after this many seconds (default: Ctrl-C).")
@click.option(
    "--stats-json",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the final counters and timings (xruns, misses, callback p99, CPU) to this JSON file.",
)
@click.option(
    "--status-every",
    type=click.FloatRange(0, None),
    default=0.0,
    help="Print a status line to stderr every this many seconds (0: only warnings).",
)
def live(**opts) -> None:
    """Run the live engine: decks in, four stereo stem busses and a stereo master out, controlled over OSC/MIDI.

    JACK ports: stembridge:master_L/R and stembridge:<stem>_L/R for vocals, drums, bass and other (all decks
    summed), deck<n>_master_L/R and deck<n>_<stem>_L/R per deck, and the headphone pair cue_L/R (see --outputs,
    --cue). A PortAudio device gets master on channels 1-2, cue on 3-4, then the rest in that order. Separation
    runs in a worker behind a FIFO of fixed latency; when it falls behind, the dry mix plays on the "other" bus
    (scaled so a muted stem stays muted) and separation fades back in. Control: OSC on --osc-port
    (/stembridge/deck/1/stem/vocals/mute 1, ...); deck transport under /stembridge/deck/<n>/transport/
    play|seek_s|cue|cue_s|loop|loop_start_s|loop_end_s|tempo|keylock|key, /stembridge/deck/<n>/level_db and pfl,
    /stembridge/cue/mix, tracks with
    /stembridge/deck/<n>/load s <file>, eject, load_next, load_prev (docs/live.md).

    Examples:

      stembridge live --deck song.wav --connect master=system:playback

      stembridge live --decks 2 --crate ~/Music/set --connect master=system:playback --connect cue=system:playback_3

      stembridge live --inputs 1 --auto-connect --midi-in "APC mini" --midi-map akai_apc_mini_mk2
    """
    session = LiveSession(opts)
    try:
        session.open()
        session.run()
    except LiveError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        session.close()
    if session.failed:
        raise click.ClickException(session.failed)


def record_rows(names: list[str], layout: str, num_decks: int) -> list[int]:
    """Output channel indices for ``--record-outputs``: all, summed, per-deck, cue, or pairs like master,cue.
    Raises LiveError naming a pair that is not among the outputs."""
    pairs = list(dict.fromkeys(name.rsplit("_", 1)[0] for name in names))
    if layout == "all":
        wanted = pairs
    elif layout == "summed":
        wanted = [p for p in pairs if not p.startswith("deck") and p != "cue"]
    elif layout == "per-deck":
        wanted = [p for p in pairs if p.startswith("deck")]
    else:
        wanted = [w.strip() for w in layout.split(",") if w.strip()]
    missing = [w for w in wanted if w not in pairs]
    if missing or not wanted:
        raise LiveError(
            f"--record-outputs {layout}: {', '.join(missing) or 'nothing'} not among the outputs "
            f"({', '.join(pairs)}); --outputs both gives summed and per-deck pairs"
        )
    return [k for k, name in enumerate(names) if name.rsplit("_", 1)[0] in wanted]


class LiveError(Exception):
    """A start-up problem with a message for the user."""


class LiveSession:
    """Everything ``stembridge live`` owns, opened in order and closed in reverse."""

    def __init__(self, opts: dict) -> None:
        self.opts = opts
        self.backend = None
        self.engine = None
        self.control = None
        self.monitor = None
        self.recorder = None
        self.web = None
        self.loader = None
        self.crate = None
        self.feedback = None
        self.failed: str | None = None
        self._stop = threading.Event()
        self.stop_reason = ""  # what stopped the run, for the closing summary
        self._started = 0.0
        self._cpu0 = 0.0
        self._promoted: list[int] = []

    # -- start-up --
    def open(self) -> None:
        from stembridge.engine.live.backends import BackendError, open_backend
        from stembridge.engine.live.monitor import Monitor, Recorder
        from stembridge.engine.model_card import ModelError
        from stembridge.engine.separator import StreamingSeparator

        o = self.opts
        files = list(o["deck_files"])
        num_file_decks = o.get("num_decks") or len(files)
        if num_file_decks < len(files):
            raise LiveError(f"--decks {num_file_decks} is fewer than the {len(files)} --deck files given")
        num_inputs = o["num_inputs"] if o["num_inputs"] is not None else (0 if num_file_decks else 1)
        if not num_file_decks and not num_inputs:
            raise LiveError("no decks: give --deck FILE, --decks N and/or --inputs N")
        num_decks = num_file_decks + num_inputs
        if o.get("crate"):
            from stembridge.engine.audio_io import AudioFileError
            from stembridge.engine.live.loader import Crate

            try:
                self.crate = Crate(o["crate"], num_decks)
            except AudioFileError as exc:
                raise LiveError(str(exc)) from exc
        try:
            separator = StreamingSeparator(
                o["model_path"], device=o["device"], num_streams=num_decks, intra_op_threads=o["threads"], max_hops=64,
                spatial_filter=o["spatial_filter"],
            )  # fmt: skip
        except ModelError as exc:
            raise LiveError(str(exc)) from exc
        card = separator.card
        self.backend = open_backend(o["backend"], client_name=o["client_name"], device=o["audio_device"],
                                    server=o["jack_server"])  # fmt: skip
        try:
            rate, period = self.backend.open(o["sample_rate"] or card.sample_rate, o["period"])
        except BackendError as exc:
            raise LiveError(str(exc)) from exc
        if rate != card.sample_rate:  # the worker resamples to the model's rate and back (engine.live.resample)
            from stembridge.engine.live.resample import ResampledSeparator

            quality = o.get("resample_quality") or ("LQ" if num_inputs else "HQ")
            separator = ResampledSeparator(separator, rate, period, quality=quality.upper())
        decks = self._make_decks(files, num_file_decks - len(files), num_inputs, rate, tuple(card.stems))
        from stembridge.engine.live.engine import LiveEngine
        from stembridge.engine.rt import freeze_heap

        sys.setswitchinterval(0.001)  # the audio thread waits at most ~1 ms for the GIL (default 5 ms)
        self.engine = LiveEngine(
            separator,
            decks,
            period,
            fifo_periods=o["fifo_periods"],
            worker_mode=o["worker"],
            worker_rt_priority=o["worker_rt_priority"],
            outputs=o.get("outputs", "summed"),
            cue=o.get("cue", False),
            cue_first=o["backend"] == "portaudio",
        )
        from stembridge.engine.live.loader import TrackLoader

        self.hq_decks = None
        if o.get("hq_stems") and rate == card.sample_rate and any(h is not None for h in self.engine.hq):
            from stembridge.engine.live.hq_decks import HqDecks

            self.hq_decks = HqDecks(self.engine, causal_path=card.path, device=o["device"])
            for i, deck in enumerate(self.engine.decks):
                track = getattr(deck, "track", None)
                if track is not None and track.complete and track.num_frames:
                    self.hq_decks.track_loaded(i, track)
        self.loader = TrackLoader(
            self.engine.decks, self.engine.queues, rate, self.engine.num_channels, on_warning=self._load_warning
        )
        if self.hq_decks is not None:
            self.loader.on_loaded = lambda deck, track: self.hq_decks.track_loaded(deck - 1, track)
        self.loader.start()
        self.monitor = Monitor(self.engine, self.backend)
        if o["record"]:
            names = self.engine.output_names()
            rows = record_rows(names, o.get("record_outputs", "all"), len(self.engine.decks))
            self.recorder = Recorder(
                o["record"], self.engine.num_outputs, rate, period, rows=rows, channel_names=[names[r] for r in rows]
            )
            self.engine.taps.append(self.recorder)
        self._open_control(num_decks)
        self._open_web()
        self.engine.start()
        freeze_heap()  # from here on a garbage collection cannot stall the audio thread for a full heap scan
        try:
            self.backend.start(self.engine.process_block, self.engine.input_names(), self.engine.output_names())
            made = []
            if o["auto_connect"]:
                made += self.backend.auto_connect()
            for spec in o["connections"]:
                made += self.backend.connect(spec)
        except BackendError as exc:
            raise LiveError(str(exc)) from exc
        self.monitor.start()
        if o["thread_rt_priority"]:
            from stembridge.engine.live.worker import promote_threads

            self._promoted = promote_threads(o["thread_rt_priority"])
        for sig in (signal.SIGINT, signal.SIGTERM):  # from here on Ctrl-C stops cleanly, with the closing summary
            signal.signal(sig, self._on_signal)
        self._announce(card, made)

    def _make_decks(
        self, files: list[Path], num_empty: int, num_inputs: int, rate: int, stems: tuple[str, ...]
    ) -> list:
        from stembridge.engine.audio_io import AudioFileError
        from stembridge.engine.live.deck import FileDeck, InputDeck
        from stembridge.engine.live.stem_deck import load_deck

        decks = []
        for path in files:
            try:  # an NI stem file plays its own stems; any other file is separated live
                deck = load_deck(path, rate, stems, play=not self.opts["paused"], loop=self.opts["loop"])
            except AudioFileError as exc:
                raise LiveError(str(exc)) from exc
            decks.append(deck)
        decks += [FileDeck(None, f"deck {len(decks) + i + 1}") for i in range(num_empty)]
        decks += [InputDeck(f"input {i + 1}") for i in range(num_inputs)]
        return decks

    # -- loading tracks (control side) --
    def load(self, deck: int, path: str) -> None:
        """Load ``path`` (a file, or a name in the crate) into deck ``deck``. Raises KeyError for a bad deck."""
        self.loader.load(deck, self.crate.resolve(path) if self.crate is not None else Path(path).expanduser())

    def load_step(self, deck: int, delta: int) -> Path:
        """Load the crate's next (+1) or previous (-1) track into ``deck``. Raises LookupError (no crate, empty
        crate, bad deck)."""
        if self.crate is None:
            raise LookupError("no crate: start stembridge live with --crate DIR")
        self.loader._check(deck)
        path = self.crate.step(deck, delta)
        self.loader.load(deck, path)
        return path

    def _load_warning(self, deck: int, path: str, reason: str) -> None:
        osc = self.control.osc if self.control is not None else None
        if osc is not None:
            osc.broadcast("/stembridge/warning", [f"/stembridge/deck/{deck}/load", reason])

    def _on_change(self, change) -> None:
        """Tree listener: the crate's load_next/load_prev buttons (from MIDI; OSC calls ``load_step`` itself), and
        a deck's first tempo or key change (its stretcher is built here, off the audio thread)."""
        leaf = change.path.rsplit("/", 1)[-1]
        if leaf in ("tempo", "keylock", "key") and change.source != "engine":
            deck = self.engine.decks[int(change.path.split("/")[1]) - 1]
            if hasattr(deck, "ensure_stretcher") and not deck.ensure_stretcher():
                log.warning("tempo and key need pylibrb (pip install pylibrb)")
            return
        if leaf not in ("load_next", "load_prev") or change.value is not True:
            return
        deck = int(change.path.split("/")[1])
        try:
            self.load_step(deck, 1 if leaf == "load_next" else -1)
        except LookupError as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            log.warning("deck %d %s: %s", deck, leaf, reason)
            self._load_warning(deck, "", reason)

    def _open_control(self, num_decks: int) -> None:
        o = self.opts
        from stembridge.bridge.control import Controller

        self.control = Controller(self.engine.stems, num_decks)
        self.control.sample_rate, self.control.block_size = float(self.engine.sample_rate), self.engine.block_size
        for deck, queue in enumerate(self.engine.queues, start=1):
            self.control.attach_queue(deck, queue)
        self.control.attach_queue(0, self.engine.engine_queue)  # engine-wide: cue/mix, cue/gain_db
        try:
            if o["scene"] and o["scene"] != "none":
                self.control.load_scene(o["scene"])
            if o["midi_in"] or o["midi_out"]:
                self._open_midi()
            if not o["no_osc"]:
                server = self.control.serve_osc(
                    o["osc_host"], o["osc_port"], tcp_port=o["osc_tcp_port"], allow=o["osc_allow"]
                )
                route_deck_commands(server, self.engine, self)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LiveError(str(exc)) from exc
        self.control.tree.add_listener(self._on_change)
        from stembridge.bridge.deck_feedback import DeckFeedback

        self.feedback = DeckFeedback(self.engine, self.control).start()
        self.control.start()
        self.monitor.meter_listeners.append(self.control.publish_meters)
        self.monitor.stats_listeners.append(self._push_stats)

    def _open_web(self) -> None:
        from stembridge.bridge.web_server import open_for_live

        try:
            self.web = open_for_live(self)
        except (OSError, ValueError, RuntimeError) as exc:
            raise LiveError(str(exc)) from exc

    def _open_midi(self) -> None:
        o = self.opts
        from stembridge.bridge.midi_map import MidiUnavailable, open_ports
        from stembridge.bridge.presets import PresetError, find_preset, load_controller_map

        if not o["midi_map"]:
            raise LiveError("--midi-in/--midi-out need --midi-map (a controller map preset)")
        try:
            cmap = load_controller_map(find_preset("controllers", o["midi_map"]))
            inp, out = open_ports(o["midi_in"], o["midi_out"], api=o["midi_api"])
        except (PresetError, MidiUnavailable) as exc:
            raise LiveError(str(exc)) from exc
        self.control.add_midi(cmap, inp, out)

    def _push_stats(self, stats: dict) -> None:
        osc = self.control.osc if self.control is not None else None
        if osc is None:
            return
        status = {}
        for key in STATUS_KEYS:
            if key in stats:
                value = stats[key]
                status[key] = int(value) if isinstance(value, int) else float(value)
        osc.set_engine_status(status)
        osc.broadcast(ENGINE_STATUS_ADDRESS, [x for pair in status.items() for x in pair])

    def _announce(self, card, made: list) -> None:
        e, b = self.engine, self.backend
        decks = ", ".join(f"{i}: {d.name}" for i, d in enumerate(e.decks, start=1))
        sep = e.worker.separation_latency
        fill = sep - e.separator.latency_samples
        hop_fill = f" + {fill} to fill a hop of {e.separator.hop_size}" if fill else ""
        lines = [
            f"stembridge live: {b.describe()}; model {card.name}{' + spatial filter' if e.separator.spatial else ''} "
            f"on {e.separator.active_provider}",
        ]
        inner = getattr(e.separator, "inner", None)
        if inner is not None:
            added = e.separator.resampler_latency_samples
            lines.append(
                f"resampling: host {e.sample_rate} Hz <-> model {card.sample_rate} Hz (soxr {e.separator.quality}), "
                f"adding {added} samples ({1000.0 * added / e.sample_rate:.1f} ms) to the separation latency"
            )
        lines += [
            f"decks: {decks}",
            f"latency: live input {e.latency_samples} samples ({e.latency_ms:.1f} ms) = separation {sep} "
            f"(model{' + resampling' if inner is not None else ''} {e.separator.latency_samples}{hop_fill}) + "
            f"{e.fifo_periods} periods of {e.block_size}; file decks read ahead (nothing added)",
        ]
        if self.control is not None and self.control.latencies:
            fx = max(sum(v) for v in self.control.latencies.values())
            lines.append(
                f"effect chains: latency {fx} samples ({1000.0 * fx / e.sample_rate:.1f} ms); every stem is delayed to "
                "match the slowest chain"
                if fx
                else "effect chains: no latency"
            )
        if b.name == "jack":
            lines.append(f"ports: {b.client_name}:" + f", {b.client_name}:".join(e.output_names() + e.input_names()))
        for src, dst in made:
            lines.append(f"connected {src} -> {dst}")
        if self.control is not None and self.control.osc is not None:
            host, port = self.control.osc.address
            lines.append(f"OSC: udp://{host}:{port} (status pushed to subscribers at {ENGINE_STATUS_ADDRESS})")
        if self.recorder is not None:
            lines.append(f"recording to {self.recorder.path}")
        for line in lines:
            click.echo(line, err=True)
        click.echo("running (Ctrl-C stops)", err=True)

    # -- running --
    def run(self) -> None:
        from stembridge.engine.live.monitor import engine_cpu_s

        o = self.opts
        self._started, self._cpu0 = time.monotonic(), engine_cpu_s(self.engine)
        deadline = self._started + o["duration"] if o["duration"] else None
        next_status = self._started + (o["status_every"] or 1e18)
        while not self._stop.wait(0.1):
            now = time.monotonic()
            if self.backend.failed:
                self.failed = self.backend.failed
                break
            if deadline is not None and now >= deadline:
                self.stop_reason = f"--duration {o['duration']:g} s"
                break
            if now >= next_status:
                self._status_line(self.monitor.check())
                next_status = now + o["status_every"]

    def _on_signal(self, signum: int, _frame) -> None:
        self.stop_reason = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self._stop.set()

    def _summary(self, s: dict) -> None:
        """The closing lines: why and after how long it stopped, then the run's counters."""
        how = f" ({self.stop_reason})" if self.stop_reason else ""
        click.echo(f"stopped after {s.get('duration_s', 0.0):.1f} s{how}; the whole run:", err=True)
        self._status_line(s)
        for deck, hq in (s.get("hq_stems") or {}).items():
            where = "from the cache" if hq.get("source") == "cache" else f"analysed in {hq.get('seconds', 0):.1f} s"
            click.echo(
                f"deck {deck}: high-quality stems {100 * hq.get('progress', 0):.0f}% ready ({where}); "
                f"{s.get('hq_blocks', 0)} deck blocks played them",
                err=True,
            )

    def _status_line(self, s: dict) -> None:
        click.echo(
            f"xruns {s.get('xruns', 0)}  misses {s['deadline_misses']}  dry blocks {s['dry_blocks']}  "
            f"callback p99 {s['callback_ms_p99']:.2f} ms  worker p99 {s['worker_ms_p99']:.2f} ms  "
            f"cpu {s.get('cpu_pct', 0):.0f}%",
            err=True,
        )

    def final_stats(self) -> dict:
        from stembridge.engine.live.monitor import engine_cpu_s

        stats = self.monitor.check() if self.monitor is not None else {}
        wall = time.monotonic() - self._started if self._started else 0.0
        if wall > 0:
            stats["duration_s"] = wall
            stats["cpu_pct"] = 100.0 * (engine_cpu_s(self.engine) - self._cpu0) / wall  # whole run, with the worker
        stats["decks"] = len(self.engine.decks) if self.engine is not None else 0
        stats["backend"] = self.backend.name if self.backend is not None else None
        stats["period"] = self.engine.block_size if self.engine is not None else None
        stats["fifo_periods"] = self.engine.fifo_periods if self.engine is not None else None
        if self.engine is not None:
            stats["model"] = self.engine.card.name
            stats["provider"] = self.engine.separator.active_provider
            stats["hq_blocks"] = self.engine.num_hq_blocks
        if getattr(self, "hq_decks", None) is not None:
            stats["hq_stems"] = self.hq_decks.status()
        if self.recorder is not None:
            stats["recorder_dropped"] = self.recorder.num_dropped
        if self.control is not None:
            stats["control"] = self.control.stats()
        return stats

    def close(self) -> None:
        stats = None
        if self.engine is not None and self._started:
            stats = self.final_stats()
        if self._promoted:  # this thread (and others) leave real time: matters when live runs inside another program
            from stembridge.engine.live.worker import demote_threads

            demote_threads(self._promoted)
        if self.feedback is not None:
            self.feedback.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.backend is not None:
            self.backend.close()
        if self.engine is not None:
            self.engine.close()
            for deck in self.engine.decks:
                if hasattr(deck, "release_stretcher"):
                    deck.release_stretcher()
        if self.loader is not None:
            self.loader.close()
        if getattr(self, "hq_decks", None) is not None:
            self.hq_decks.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.web is not None:
            self.web.close()
        if self.control is not None:
            self.control.close()
        if stats is not None:
            self._summary(stats)
            if self.opts.get("stats_json"):
                path = Path(self.opts["stats_json"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(stats, indent=2, default=str) + "\n")


def route_deck_commands(server, engine, session=None) -> None:
    """Route deck addresses the parameter tree does not hold straight to the decks (and, with a ``LiveSession``,
    to its track loader and crate):

        /stembridge/deck/<n>/transport/<play|seek_s|cue|cue_s|loop|loop_start_s|loop_end_s> <value>
        /stembridge/deck/<n>/level_db <value>
        /stembridge/deck/<n>/load s <path>        decode off the audio thread, then swap in (a crate name works)
        /stembridge/deck/<n>/eject
        /stembridge/deck/<n>/load_next, load_prev  the crate's next/previous track (--crate)
        /stembridge/crate/list                    reply /stembridge/crate/list i <count> s <folder>, then
                                                  /stembridge/crate/entry i <index> s <name> per track

    (A trigger such as play or cue without an argument means 1.) Wraps the OSC router's dispatch; every other
    address, and any of these the parameter tree holds itself, goes on to the router unchanged.
    """
    from stembridge.engine.commands import SetParam
    from stembridge.engine.live.deck import TRANSPORT_PATHS

    router = server.router
    dispatch = router._dispatch
    tree = router.controller.tree

    def loading(deck: int, leaf: str, args: list, reply, address: str) -> None:
        if session is None or session.loader is None:
            router._warn(reply, "unknown", address, "track loading needs stembridge live")
            return
        try:
            if leaf == "load":
                if len(args) != 1 or not isinstance(args[0], str) or not args[0]:
                    router._warn(reply, "bad_args", address, "expected s <path of an audio file>")
                    return
                session.load(deck, args[0])
            elif leaf == "eject":
                session.loader.eject(deck)
            elif not args or args[0]:  # load_next/load_prev: a button release (0) does nothing
                session.load_step(deck, 1 if leaf == "load_next" else -1)
        except LookupError as exc:
            router._warn(reply, "bad_args", address, str(exc.args[0]) if exc.args else str(exc))
            return
        router.count("applied")

    def crate_list(reply, address: str) -> None:
        crate = session.crate if session is not None else None
        if crate is None:
            router._warn(reply, "unknown", address, "no crate: start stembridge live with --crate DIR")
            return
        entries = crate.rescan()
        router._send(reply, "/stembridge/crate/list", [len(entries), str(crate.folder)])
        for k, entry in enumerate(entries):
            router._send(reply, "/stembridge/crate/entry", [k, entry.name])
        router.count("applied")

    def deck_dispatch(address: str, args: list, client, reply, connection) -> None:
        parts = address.split("/")
        if parts[:3] == ["", "stembridge", "crate"] and parts[3:] == ["list"]:
            return crate_list(reply, address)
        if len(parts) < 5 or parts[1] != "stembridge" or parts[2] != "deck":
            return dispatch(address, args, client, reply, connection)
        path = "/".join(parts[4:])
        actions = ("load", "eject", "load_next", "load_prev")
        if path not in actions and (path not in TRANSPORT_PATHS or address in tree):
            return dispatch(address, args, client, reply, connection)  # the tree's own parameters keep feedback
        if not parts[3].isdigit() or not 1 <= int(parts[3]) <= len(engine.decks):
            router._warn(reply, "unknown", address, f"no deck {parts[3]} (decks 1..{len(engine.decks)})")
            return None
        if path in actions:
            return loading(int(parts[3]), path, args, reply, address)
        try:
            value = 1.0 if not args else float(args[0])
        except (TypeError, ValueError):
            router._warn(reply, "bad_args", address, f"expected a number, got {args[0]!r}")
            return None
        if engine.push(int(parts[3]), SetParam(path, value)):
            router.count("applied")
        else:
            router._warn(reply, "errors", address, "the deck's command queue is full")
        return None

    router._dispatch = deck_dispatch


@click.command("devices")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--jack-server", help="JACK server name, if not the default one.")
def devices(as_json: bool, jack_server: str | None) -> None:
    """List audio devices and ports (JACK, PortAudio) and MIDI ports (ALSA, JACK) that `stembridge live` can use.

    JACK ports are listed only while a JACK server runs; none is started. Use a JACK port or client name with
    `stembridge live --connect`, a PortAudio device name or index with --audio-device, and a MIDI port name
    with --midi-in/--midi-out.
    """
    from stembridge.engine.live.devices import list_devices, sections_as_dicts

    sections = list_devices(jack_server)
    if as_json:
        click.echo(json.dumps(sections_as_dicts(sections), indent=2))
        return
    for section in sections:
        click.echo(f"{section.name}:")
        if not section.available:
            click.echo(f"  (unavailable: {section.reason})")
            continue
        if not section.items:
            click.echo(f"  ({section.reason or 'none'})")
        for item in section.items:
            click.echo("  " + _describe(item))


def _describe(item: dict) -> str:
    if "server" in item:
        return f"server: {item['server']}"
    if "index" in item:
        return (
            f"[{item['index']}] {item['name']} ({item['host_api']}): {item['inputs']} in, {item['outputs']} out, "
            f"{item['default_rate']} Hz"
        )
    extra = []
    if "type" in item:
        extra.append(item["type"])
    extra.append(item["direction"])
    if item.get("physical"):
        extra.append("physical")
    return f"{item['port']} ({', '.join(extra)})"
