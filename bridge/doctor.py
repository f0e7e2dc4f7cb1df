"""``stembridge doctor``: what stands between this machine and a clean live set, each finding with a fix.

Every check is two steps: a *probe* that gathers plain facts from the system (a JACK client, /sys, rlimits, an
ONNX Runtime session) and a *judge*, a pure function from those facts to a ``Check``. Tests give the judges made-up
facts for hardware this machine lacks. Statuses: ``ok``, ``info`` (nothing to act on), ``warn`` (a live set runs,
but less well) and ``fail`` (a blocker: the exit status is 1 only when a check fails).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

STATUSES = ("ok", "info", "warn", "fail")
# what `stembridge live` asks for by default (--worker-rt-priority 1, --thread-rt-priority 2)
RT_PRIORITY_NEEDED = 2
DISK_WARN_BYTES = 1 << 30  # the synthesis cache alone takes ~490 MB; a recorded set ~0.9 GB an hour (10 ch, 16 bit)
DISK_FAIL_BYTES = 100 << 20  # less than this: a recording or `separate` runs out of room within minutes
FIFO_PERIODS = 2  # `stembridge live`'s FIFO with a live input, for the latency shown
JACK_START = "jackd -d alsa -d hw:0 -r {rate} -p 256 &   (no sound card: jackd -d dummy -r {rate} -p 256 &)"


@dataclass
class Check:
    """One finding: ``summary`` says what was found, ``fix`` what to do about it (empty when nothing)."""

    name: str
    status: str
    summary: str
    fix: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")


# -- the audio server: JACK (or PipeWire's JACK) -------------------------------------------------------------


def probe_jack(server: str | None = None) -> dict[str, Any]:
    """{"library": bool, "running": bool, "sample_rate", "period", "error"} of the JACK server (none is started)."""
    from stembridge.engine.live.devices import quiet_stderr

    try:
        import jack
    except (ImportError, OSError) as exc:
        return {"library": False, "running": False, "error": str(exc)}
    jack.set_error_function(lambda msg: None)
    jack.set_info_function(lambda msg: None)
    try:
        with quiet_stderr():
            client = jack.Client("stembridge-doctor", no_start_server=True, servername=server)
    except jack.JackOpenError as exc:
        return {"library": True, "running": False, "error": str(exc)}
    try:
        return {"library": True, "running": True, "sample_rate": client.samplerate, "period": client.blocksize}
    finally:
        client.close()


def probe_pipewire(runtime_dir: str | None = None) -> dict[str, Any]:
    """{"running": bool, "socket", "rate", "quantum"}: PipeWire's socket, and its clock from ``pw-metadata``."""
    if runtime_dir is None and not hasattr(os, "getuid"):
        return {"running": False}  # not a POSIX system: no PipeWire
    runtime_dir = runtime_dir or os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    sock = Path(runtime_dir) / "pipewire-0"
    facts: dict[str, Any] = {"running": sock.exists(), "socket": str(sock)}
    if facts["running"] and shutil.which("pw-metadata"):
        try:
            out = subprocess.run(
                ["pw-metadata", "-n", "settings"], capture_output=True, text=True, timeout=3, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        facts.update(parse_pw_metadata(out))
    return facts


def parse_pw_metadata(text: str) -> dict[str, int]:
    """``pw-metadata -n settings`` lines -> {"rate", "quantum"}: the forced value where one is set, else the
    configured one (0 forced means not forced)."""
    values = {k: int(v) for k, v in re.findall(r"key:'(clock\.[a-z-]+)' value:'(\d+)'", text)}
    found = {}
    for name, key in (("rate", "clock.rate"), ("quantum", "clock.quantum")):
        forced = values.get(key.replace("clock.", "clock.force-"), 0)
        if forced or key in values:
            found[name] = forced or values[key]
    return found


def probe_portaudio() -> dict[str, Any]:
    """{"library": bool, "outputs": [device names with output channels], "error"}."""
    from stembridge.engine.live.devices import portaudio_devices

    section = portaudio_devices()
    if not section.available and "not available" in section.reason:
        return {"library": False, "outputs": [], "error": section.reason}
    return {"library": True, "outputs": [d["name"] for d in section.items if d["outputs"] >= 2]}


def live_latency_ms(period: int, rate: int, n_fft: int, hop_size: int) -> float:
    """A live input's latency in `stembridge live` at this period (see the README's latency table)."""
    return 1000.0 * (n_fft - math.gcd(period, hop_size) + FIFO_PERIODS * period) / rate


def judge_audio(jack: dict, pipewire: dict, portaudio: dict, model: dict) -> Check:
    """JACK's rate must be the model's (live refuses another); the period sets the latency and the xrun risk."""
    rate = model.get("sample_rate", 44100)
    start = JACK_START.format(rate=rate)
    facts = {"jack": jack, "pipewire": pipewire, "portaudio": portaudio}
    if jack.get("running"):
        sr, period = jack["sample_rate"], jack["period"]
        via = " (PipeWire's JACK)" if pipewire.get("running") else ""
        if sr != rate:
            fix = f"restart JACK at {rate} Hz: {start}"
            if pipewire.get("running"):
                fix = (
                    f"pw-metadata -n settings 0 clock.force-rate {rate}   (or set default.clock.rate in pipewire.conf)"
                )
            return Check(
                "audio server", "fail",
                f"JACK{via} runs at {sr} Hz but the model runs at {rate} Hz: `stembridge live` refuses to start on it",
                fix, facts,
            )  # fmt: skip
        latency = ""
        if "n_fft" in model:
            latency = (
                f"; a live input is heard {live_latency_ms(period, sr, model['n_fft'], model['hop_size']):.0f} ms late"
            )
        summary = f"JACK{via} at {sr} Hz, period {period}{latency}"
        if period < 128:
            fix = f"a period of {period} leaves the worker little slack on a small CPU; try -p 256"
            return Check("audio server", "warn", summary + " (small period: xruns likely)", fix, facts)
        if period > 1024:
            return Check("audio server", "warn", summary + " (large period: high latency)", "try -p 256 or 512", facts)
        return Check("audio server", "ok", summary, "", facts)
    if pipewire.get("running"):
        clock = ""
        if "rate" in pipewire:
            clock = f" at {pipewire['rate']} Hz, quantum {pipewire.get('quantum', '?')}"
        fix = (
            "run stembridge through PipeWire's JACK layer: pw-jack stembridge live ... (apt-get install pipewire-jack)"
        )
        if pipewire.get("rate") and pipewire["rate"] != rate:
            fix += f"; and set its rate to the model's: pw-metadata -n settings 0 clock.force-rate {rate}"
        return Check("audio server", "warn", f"PipeWire runs{clock}, but no JACK client could connect", fix, facts)
    if not jack.get("library") and not portaudio.get("library"):
        return Check(
            "audio server", "fail", "neither the JACK nor the PortAudio library loads: no audio backend can run",
            "apt-get install libjack-jackd2-0 jackd2 libportaudio2", facts,
        )  # fmt: skip
    if portaudio.get("outputs"):
        names = ", ".join(portaudio["outputs"][:3])
        return Check(
            "audio server", "warn",
            f"no JACK server; PortAudio sees {len(portaudio['outputs'])} output device(s) ({names}): "
            "`stembridge live --backend portaudio` plays there",
            f"for the stem busses as separate ports (a DAW, a mixer), start JACK: {start}", facts,
        )  # fmt: skip
    return Check(
        "audio server", "warn",
        "no JACK server is running and PortAudio sees no sound card (`--backend dummy` still rehearses a set)",
        f"start JACK: {start}" + ("" if jack.get("library") else "   (apt-get install jackd2)"), facts,
    )  # fmt: skip


# -- real-time priority ---------------------------------------------------------------------------------------


def _try_fifo(priority: int) -> str:
    """Try SCHED_FIFO at ``priority`` on a throwaway thread (on Linux the call acts on the calling thread only);
    returns "" when allowed, else why not."""
    result = {"error": "timed out"}

    def attempt() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            result["error"] = ""
        except (AttributeError, OSError) as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=attempt, name="stembridge-doctor-rt", daemon=True)
    thread.start()
    thread.join(2.0)
    return result["error"]


def probe_rt(etc: Path = Path("/etc/security")) -> dict[str, Any]:
    """rlimit, the real attempt, the audio group, limits.conf lines granting rtprio, and rtkit."""
    if not hasattr(os, "sched_setscheduler"):
        return {"supported": False}
    import resource  # POSIX only: imported here so the command loads on Windows

    soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    lines = []
    for path in [etc / "limits.conf", *sorted(etc.glob("limits.d/*.conf"))]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        lines += [
            f"{path}: {ln.strip()}" for ln in text.splitlines() if "rtprio" in ln and not ln.strip().startswith("#")
        ]
    try:
        import grp

        audio_gid = grp.getgrnam("audio").gr_gid
        in_audio = audio_gid in os.getgroups() or os.getgid() == audio_gid
    except (ImportError, KeyError):
        in_audio = False
    rtkit = any(Path(p).exists() for p in ("/usr/libexec/rtkit-daemon", "/usr/lib/rtkit/rtkit-daemon"))
    return {
        "supported": True,
        "root": os.geteuid() == 0,
        "rlimit_soft": "unlimited" if soft == resource.RLIM_INFINITY else soft,
        "rlimit_hard": "unlimited" if hard == resource.RLIM_INFINITY else hard,
        "error": _try_fifo(RT_PRIORITY_NEEDED),
        "audio_group": in_audio,
        "limits_lines": lines,
        "rtkit": rtkit,
    }


def judge_rt(rt: dict) -> Check:
    """SCHED_FIFO keeps the worker and the GIL-holding threads from being preempted by ordinary load."""
    if not rt.get("supported"):
        return Check("real-time priority", "info", "not Linux: stembridge does not set real-time priority here", "", rt)
    limit = rt["rlimit_soft"]
    if not rt["error"]:
        who = "as root" if rt["root"] else f"rtprio limit {limit}"
        return Check("real-time priority", "ok", f"SCHED_FIFO priority {RT_PRIORITY_NEEDED} allowed ({who})", "", rt)
    if rt["root"]:
        why = "even as root (a container without CAP_SYS_NICE, or cgroup real-time limits)"
        fix = "run the container with --cap-add SYS_NICE (docker) or on the host"
    elif not rt["audio_group"] and rt["limits_lines"]:
        why = f"ulimit -r is {limit}, and you are not in the audio group that limits.conf grants it to"
        fix = "sudo usermod -aG audio $USER, then log out and back in"
    elif rt["audio_group"] and rt["limits_lines"]:
        why = f"ulimit -r is {limit} although you are in the audio group (this session predates it?)"
        fix = "log out and back in (or reboot) so the new limits apply"
    else:
        why = f"ulimit -r is {limit} and no limits.conf line grants rtprio"
        fix = "sudo dpkg-reconfigure jackd2 (answer Yes) && sudo usermod -aG audio $USER, then log out and back in"
    if rt.get("rtkit") and not rt["root"]:
        fix += " (rtkit grants real time to PipeWire and JACK, not to stembridge's worker)"
    return Check(
        "real-time priority", "warn",
        f"SCHED_FIFO not allowed: {why}; the worker runs at normal priority, so ordinary load can cause dropouts",
        fix, rt,
    )  # fmt: skip


# -- CPU frequency governor -----------------------------------------------------------------------------------


def probe_governors(cpu_root: Path = Path("/sys/devices/system/cpu")) -> dict[str, str]:
    """{"cpu0": "performance", ...} from cpufreq; empty where the kernel exposes none (VMs, some ARM boards)."""
    found = {}
    for path in sorted(glob.glob(str(cpu_root / "cpu[0-9]*" / "cpufreq" / "scaling_governor"))):
        try:
            found[Path(path).parents[1].name] = Path(path).read_text().strip()
        except OSError:
            continue
    return found


def judge_governor(governors: dict[str, str]) -> Check:
    """A governor that drops the clock between bursts makes the periods after a quiet moment run late."""
    facts = {"governors": governors}
    if not governors:
        return Check(
            "CPU governor", "info", "CPU frequency scaling is not exposed here (a VM?): nothing to set", "", facts
        )
    slow = sorted({g for g in governors.values() if g != "performance"})
    if not slow:
        return Check("CPU governor", "ok", f"performance on all {len(governors)} CPUs", "", facts)
    cpus = [c for c, g in governors.items() if g != "performance"]
    return Check(
        "CPU governor", "warn",
        f"{', '.join(slow)} on {len(cpus)} of {len(governors)} CPUs: the clock drops between bursts and the first "
        "periods after a quiet moment can miss their deadline",
        "sudo cpupower frequency-set -g performance   (apt-get install linux-cpupower), or "
        "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor",
        facts,
    )  # fmt: skip


# -- MIDI -----------------------------------------------------------------------------------------------------


def probe_midi(jack_running: bool) -> dict[str, Any]:
    """The ALSA sequencer's and (with JACK running) JACK MIDI's ports, as `stembridge devices` lists them."""
    from stembridge.engine.live.devices import midi_ports

    facts = {}
    for api in ("alsa", "jack"):
        if api == "jack" and not jack_running:
            facts[api] = {"available": False, "ports": [], "reason": "no JACK server is running"}
            continue
        section = midi_ports(api)
        facts[api] = {
            "available": section.available,
            "ports": sorted({i["port"] for i in section.items}),
            "reason": section.reason,
        }
    return facts


def judge_midi(midi: dict) -> Check:
    """A controller is optional (OSC works without one), so missing MIDI is a warning, never a blocker."""
    alsa, jack = midi["alsa"], midi["jack"]
    hardware = [p for p in alsa["ports"] if "Midi Through" not in p]
    if hardware:
        return Check("MIDI", "ok", f"ALSA sequencer ports: {', '.join(hardware)}", "", midi)
    if jack["ports"]:
        return Check(
            "MIDI", "ok", f"JACK MIDI ports: {', '.join(jack['ports'])}",
            "" if alsa["available"] else "no ALSA sequencer: use --midi-api jack", midi,
        )  # fmt: skip
    if alsa["available"]:
        return Check(
            "MIDI", "warn", "the ALSA sequencer runs but no controller is connected",
            "plug the controller in (USB class-compliant ones need no driver), then `stembridge devices`", midi,
        )  # fmt: skip
    return Check(
        "MIDI", "warn",
        f"no MIDI: {alsa['reason'] or 'no ALSA sequencer'}; JACK MIDI: {jack['reason'] or 'no ports'}",
        "sudo modprobe snd-seq (a machine with a sound card has it), or start JACK and use --midi-api jack; "
        "OSC control works without MIDI",
        midi,
    )  # fmt: skip


# -- ONNX Runtime ---------------------------------------------------------------------------------------------


def probe_onnx(model_path: Path | None, device: str = "auto") -> dict[str, Any]:
    """The providers this onnxruntime build lists, and those a session on the model really runs on."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"error": f"onnxruntime does not import: {exc}"}
    from stembridge.engine.model_card import ModelError, load_card, resolve_model_path
    from stembridge.engine.separator import create_session, default_model_path

    facts: dict[str, Any] = {"version": ort.__version__, "available": ort.get_available_providers(), "device": device}
    try:
        card = load_card(resolve_model_path(model_path) if model_path else default_model_path())
        session, _active = create_session(card, device)
    except ModelError as exc:
        facts["error"] = str(exc)
        return facts
    facts.update(
        model=str(card.path), active=session.get_providers(), sample_rate=card.sample_rate, n_fft=card.n_fft,
        hop_size=card.hop_size,
    )  # fmt: skip
    return facts


def judge_onnx(onnx: dict) -> Check:
    """The model must load; which provider runs it is reported as ONNX Runtime itself says (get_providers)."""
    if "error" in onnx:
        return Check(
            "ONNX Runtime", "fail", onnx["error"],
            "pip install --force-reinstall stembridge (the package ships its default model), or pass --model", onnx,
        )  # fmt: skip
    active, available = onnx["active"], onnx["available"]
    summary = f"onnxruntime {onnx['version']} runs the model on {active[0]}"
    if active[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        return Check("ONNX Runtime", "ok", summary, "", onnx)
    if "CUDAExecutionProvider" in available:
        return Check(
            "ONNX Runtime", "ok", summary + " (CUDA is built in but no GPU answered: the CPU is what runs)",
            "for a GPU: an NVIDIA driver and the CUDA 12 libraries (pip install 'onnxruntime-gpu[cuda,cudnn]'); "
            "without one, the CPU carries several decks (see the README's speed table)",
            onnx,
        )  # fmt: skip
    return Check("ONNX Runtime", "ok", summary, "", onnx)


# -- disk -----------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where stembridge keeps derived files: $STEMBRIDGE_CACHE, else $XDG_CACHE_HOME/stembridge or ~/.cache."""
    if os.environ.get("STEMBRIDGE_CACHE"):
        return Path(os.environ["STEMBRIDGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stembridge"


def probe_disk(path: Path) -> dict[str, Any]:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}


def judge_disk(disk: dict) -> Check:
    free_gb = disk["free_bytes"] / (1 << 30)
    summary = f"{free_gb:.1f} GiB free for {disk['path']}"
    fix = "free some space, or point STEMBRIDGE_CACHE at a larger disk"
    if disk["free_bytes"] < DISK_FAIL_BYTES:
        return Check("disk space", "fail", summary + ": recordings and separated stems will not fit", fix, disk)
    if disk["free_bytes"] < DISK_WARN_BYTES:
        return Check(
            "disk space", "warn", summary + ": under 1 GiB (about an hour of a 10-channel recording)", fix, disk
        )
    return Check("disk space", "ok", summary, "", disk)


# -- all together ---------------------------------------------------------------------------------------------


def run_checks(model_path: Path | None = None, device: str = "auto", jack_server: str | None = None) -> list[Check]:
    """Probe this machine and judge every finding, in the order they are printed."""
    onnx = probe_onnx(model_path, device)
    jack = probe_jack(jack_server)
    return [
        judge_audio(jack, probe_pipewire(), probe_portaudio(), onnx),
        judge_rt(probe_rt()),
        judge_governor(probe_governors()),
        judge_midi(probe_midi(bool(jack.get("running")))),
        judge_onnx(onnx),
        judge_disk(probe_disk(cache_dir())),
    ]


def exit_status(checks: list[Check]) -> int:
    """1 when any check is a blocker, else 0 (warnings do not fail)."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def report(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    lines = [
        f"stembridge doctor: {counts['fail']} blocker(s), {counts['warn']} warning(s), {counts['ok']} ok"
        + (f", {counts['info']} not applicable" if counts["info"] else "")
    ]
    for c in checks:
        lines.append(f"[{c.status:^4}] {c.name}: {c.summary}")
        if c.fix:
            lines.append(f"       {'fix' if c.status in ('warn', 'fail') else 'hint'}: {c.fix}")
    return "\n".join(lines)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (name, status, summary, fix, facts).")
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="Check this model. Default: the built-in.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Check the model on this device, as `live --device` would run it.",
)  # fmt: skip
@click.option("--jack-server", help="JACK server name, if not the default one.")
def doctor(as_json: bool, model_path: Path | None, device: str, jack_server: str | None) -> None:
    """Check this machine for a clean live set and say how to fix what stands in the way.

    Checks the audio server (JACK or PipeWire, its rate against the model's and its period), real-time priority,
    the CPU frequency governor, MIDI ports (ALSA sequencer, JACK MIDI), the ONNX Runtime provider that really runs
    the model, and free disk space for caches and recordings. Exit status 1 only for a blocker (a check marked
    fail); warnings leave it 0.
    """
    checks = run_checks(model_path, device, jack_server)
    if as_json:
        payload = {"blockers": sum(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        click.echo(report(checks))
    sys.exit(exit_status(checks))
