"""`stembridge doctor`: each judge on made-up facts for hardware this machine lacks, the probes on what it has, and
the command's exit status and JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from stembridge.bridge import doctor as d
from stembridge.bridge.cli import main

MODEL = {"sample_rate": 44100, "n_fft": 1024, "hop_size": 512}
NO_PIPEWIRE = {"running": False}
PORTAUDIO_NONE = {"library": True, "outputs": []}


def test_jack_at_the_models_rate_is_ok_and_reports_the_live_input_latency():
    check = d.judge_audio({"running": True, "sample_rate": 44100, "period": 256}, NO_PIPEWIRE, PORTAUDIO_NONE, MODEL)
    assert check.status == "ok"
    assert "44100 Hz, period 256" in check.summary and "29 ms" in check.summary  # 768 + 2 x 256 samples


def test_jack_at_another_rate_is_a_blocker_with_the_command_that_fixes_it():
    check = d.judge_audio({"running": True, "sample_rate": 48000, "period": 256}, NO_PIPEWIRE, PORTAUDIO_NONE, MODEL)
    assert check.status == "fail" and "48000 Hz" in check.summary and "-r 44100" in check.fix
    on_pipewire = d.judge_audio(
        {"running": True, "sample_rate": 48000, "period": 1024}, {"running": True}, PORTAUDIO_NONE, MODEL
    )
    assert on_pipewire.status == "fail" and "PipeWire" in on_pipewire.summary
    assert "clock.force-rate 44100" in on_pipewire.fix


@pytest.mark.parametrize(("period", "word"), [(32, "small"), (2048, "large")])
def test_an_extreme_period_is_a_warning(period, word):
    check = d.judge_audio({"running": True, "sample_rate": 44100, "period": period}, NO_PIPEWIRE, PORTAUDIO_NONE, MODEL)
    assert check.status == "warn" and word in check.summary


def test_pipewire_without_its_jack_layer_says_pw_jack_and_a_wrong_graph_rate():
    check = d.judge_audio(
        {"library": True, "running": False}, {"running": True, "rate": 48000, "quantum": 1024}, PORTAUDIO_NONE, MODEL
    )
    assert check.status == "warn" and "48000 Hz, quantum 1024" in check.summary
    assert "pw-jack" in check.fix and "clock.force-rate 44100" in check.fix


def test_no_audio_library_at_all_is_a_blocker_but_no_running_server_is_not():
    none = d.judge_audio({"library": False, "running": False}, NO_PIPEWIRE, {"library": False, "outputs": []}, MODEL)
    assert none.status == "fail" and "libportaudio2" in none.fix
    idle = d.judge_audio({"library": True, "running": False}, NO_PIPEWIRE, PORTAUDIO_NONE, MODEL)
    assert idle.status == "warn" and "jackd -d" in idle.fix
    card = d.judge_audio({"library": True, "running": False}, NO_PIPEWIRE, {"library": True, "outputs": ["hw"]}, MODEL)
    assert card.status == "warn" and "--backend portaudio" in card.summary


def test_pw_metadata_output_gives_the_forced_rate_over_the_configured_one():
    text = (
        'Found "settings" metadata 31\n'
        "update: id:0 key:'clock.rate' value:'48000' type:''\n"
        "update: id:0 key:'clock.force-rate' value:'44100' type:''\n"
        "update: id:0 key:'clock.quantum' value:'1024' type:''\n"
        "update: id:0 key:'clock.force-quantum' value:'0' type:''\n"
    )
    assert d.parse_pw_metadata(text) == {"rate": 44100, "quantum": 1024}
    assert d.parse_pw_metadata("") == {}


def rt_facts(**kw):
    facts = {"supported": True, "root": False, "rlimit_soft": 0, "rlimit_hard": 0, "error": "Operation not permitted",
             "audio_group": False, "limits_lines": [], "rtkit": False}  # fmt: skip
    return {**facts, **kw}


def test_real_time_priority_findings_point_at_the_step_that_is_missing():
    assert d.judge_rt(rt_facts(error="", rlimit_soft=95)).status == "ok"
    nothing = d.judge_rt(rt_facts())
    assert nothing.status == "warn" and "dpkg-reconfigure jackd2" in nothing.fix and "ulimit -r is 0" in nothing.summary
    granted = ["/etc/security/limits.d/audio.conf: @audio - rtprio 95"]
    not_member = d.judge_rt(rt_facts(limits_lines=granted))
    assert "usermod -aG audio" in not_member.fix and "dpkg-reconfigure" not in not_member.fix
    stale = d.judge_rt(rt_facts(limits_lines=granted, audio_group=True))
    assert "log out" in stale.fix and "usermod" not in stale.fix
    container = d.judge_rt(rt_facts(root=True))
    assert "SYS_NICE" in container.fix
    assert d.judge_rt({"supported": False}).status == "info"


def test_this_machines_real_time_probe_agrees_with_an_actual_attempt():
    facts = d.probe_rt()
    if not facts["supported"]:
        pytest.skip("not Linux")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(d.RT_PRIORITY_NEEDED))
        allowed = True
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except PermissionError:
        allowed = False
    assert (facts["error"] == "") is allowed
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the probe ran on its own thread and left this one alone


def test_governors_are_read_from_sysfs_and_anything_but_performance_is_a_warning(tmp_path):
    for cpu, governor in (("cpu0", "performance"), ("cpu1", "powersave"), ("cpu10", "performance")):
        (tmp_path / cpu / "cpufreq").mkdir(parents=True)
        (tmp_path / cpu / "cpufreq" / "scaling_governor").write_text(governor + "\n")
    (tmp_path / "cpufreq").mkdir()  # the policy folder beside the cpus is not a cpu
    governors = d.probe_governors(tmp_path)
    assert governors == {"cpu0": "performance", "cpu1": "powersave", "cpu10": "performance"}
    check = d.judge_governor(governors)
    assert check.status == "warn" and "powersave on 1 of 3 CPUs" in check.summary and "cpupower" in check.fix
    assert d.judge_governor({"cpu0": "performance"}).status == "ok"
    assert d.judge_governor(d.probe_governors(tmp_path / "none")).status == "info"


def midi(alsa_ports=(), alsa=True, jack_ports=(), jack=False):
    return {
        "alsa": {"available": alsa, "ports": list(alsa_ports), "reason": "" if alsa else "no ALSA sequencer"},
        "jack": {"available": jack, "ports": list(jack_ports), "reason": "" if jack else "no JACK server is running"},
    }


def test_midi_ports_found_or_missing_are_never_a_blocker():
    found = d.judge_midi(midi(["Midi Through:Midi Through Port-0 14:0", "nanoKONTROL2:nanoKONTROL2 MIDI 1 20:0"]))
    assert found.status == "ok" and "nanoKONTROL2" in found.summary and "Midi Through" not in found.summary
    through_only = d.judge_midi(midi(["Midi Through:Midi Through Port-0 14:0"]))
    assert through_only.status == "warn" and "no controller" in through_only.summary
    jack_only = d.judge_midi(midi(alsa=False, jack_ports=["a2j:nanoKONTROL2"], jack=True))
    assert jack_only.status == "ok" and "--midi-api jack" in jack_only.fix
    none = d.judge_midi(midi(alsa=False))
    assert none.status == "warn" and "snd-seq" in none.fix


def test_onnx_reports_the_provider_the_session_really_runs(tiny_model):
    facts = d.probe_onnx(tiny_model, "cpu")
    assert facts["active"][0] == "CPUExecutionProvider" and facts["sample_rate"] > 0
    check = d.judge_onnx(facts)
    assert check.status == "ok" and "CPUExecutionProvider" in check.summary
    gpu = d.judge_onnx({**facts, "active": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    assert gpu.status == "ok" and "CUDAExecutionProvider" in gpu.summary and not gpu.fix


def test_a_model_that_does_not_load_is_a_blocker(tmp_path):
    facts = d.probe_onnx(tmp_path / "missing.onnx")
    assert "error" in facts
    assert d.judge_onnx(facts).status == "fail"


def test_disk_space_thresholds_and_the_nearest_existing_parent(tmp_path):
    facts = d.probe_disk(tmp_path / "not" / "yet" / "made")
    assert facts["path"] == str(tmp_path / "not" / "yet" / "made")
    assert abs(facts["free_bytes"] - shutil.disk_usage(tmp_path).free) < 100 << 20  # measured on tmp_path's disk
    assert d.judge_disk({"path": "x", "free_bytes": 50 << 20}).status == "fail"
    assert d.judge_disk({"path": "x", "free_bytes": 500 << 20}).status == "warn"
    assert d.judge_disk({"path": "x", "free_bytes": 20 << 30}).status == "ok"


def test_cache_dir_follows_stembridge_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("STEMBRIDGE_CACHE", str(tmp_path / "c"))
    assert d.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STEMBRIDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert d.cache_dir() == tmp_path / "x" / "stembridge"


def test_the_command_exits_1_only_for_a_blocker_and_prints_json(tiny_model, tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--json", "--model", str(tiny_model), "--device", "cpu"])
    payload = json.loads(result.output)
    names = [c["name"] for c in payload["checks"]]
    assert names == ["audio server", "real-time priority", "CPU governor", "MIDI", "ONNX Runtime", "disk space"]
    assert all(c["status"] in d.STATUSES for c in payload["checks"])
    blockers = [c for c in payload["checks"] if c["status"] == "fail"]
    assert payload["blockers"] == len(blockers) and result.exit_code == (1 if blockers else 0)
    broken = CliRunner().invoke(main, ["doctor", "--model", str(tmp_path / "missing.onnx")])
    assert broken.exit_code == 1 and "[fail] ONNX Runtime" in broken.output and "fix:" in broken.output


@pytest.mark.jack
@pytest.mark.skipif(shutil.which("jackd") is None, reason="jackd is not installed (apt-get install jackd2)")
def test_a_running_jack_server_at_the_wrong_rate_is_found(tmp_path):
    # in a child process: a JACK client opened after PortAudio started in the same process (an earlier test) crashes
    name = f"sbdoctor{os.getpid()}"
    server = subprocess.Popen(
        ["jackd", "-n", name, "-d", "dummy", "-r", "48000", "-p", "512"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        subprocess.run(["jack_wait", "-w", "-s", name, "-t", "15"], check=True, capture_output=True, timeout=30)
        doctor = [sys.executable, "-m", "stembridge.bridge.cli", "doctor", "--json", "--jack-server", name]
        result = subprocess.run(doctor, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        audio = json.loads(result.stdout)["checks"][0]
        assert audio["facts"]["jack"] == {"library": True, "running": True, "sample_rate": 48000, "period": 512}
        assert audio["status"] == "fail" and "48000 Hz" in audio["summary"] and result.returncode == 1
    finally:
        server.terminate()
        server.wait(10)
