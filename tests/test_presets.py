"""Every shipped preset loads, validates and builds; bad files are rejected naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import mido
import pytest
from click.testing import CliRunner
from stembridge.bridge.cli_control import presets
from stembridge.bridge.control import Controller
from stembridge.bridge.presets import (
    ChainPreset,
    PresetError,
    build_chain,
    check_preset,
    dump_controller_map,
    load_chain,
    load_controller_map,
    load_scene,
    shipped_files,
)
from stembridge.engine.commands import CommandQueue

STEMS = ("vocals", "drums", "bass", "other")
ALL = shipped_files()


def test_the_shipped_set_is_complete():
    names = {(p.parent.name, p.stem) for p in ALL}
    for chain in ("vocal_echo_out", "drum_filter_sweep", "bass_tightener"):
        assert ("chains", chain) in names
    for scene in ("karaoke", "default"):
        assert ("scenes", scene) in names
    controllers = {n for kind, n in names if kind == "controllers"}
    assert "generic_8x8" in controllers and len(controllers) >= 4


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_preset_starts_with_the_schema_version_loads_and_builds(path: Path):
    assert path.read_text().splitlines()[0] == "schema_version = 1"
    summary = check_preset(path)  # chains also push one block of audio through a StemMixer
    assert summary


@pytest.fixture(scope="module")
def loaded() -> Controller:
    """Two decks with the default scene (every shipped chain) loaded, as `stembridge live` starts."""
    control = Controller(STEMS, 2, queues={1: CommandQueue(10_000), 2: CommandQueue(10_000)})
    assert control.load_scene("default") == []
    return control


@pytest.mark.parametrize("path", shipped_files("controllers"), ids=lambda p: p.name)
def test_every_controller_map_targets_only_real_parameters_and_survives_every_control(path: Path, loaded):
    cmap = load_controller_map(path)
    mapper = loaded.add_midi(cmap)
    try:
        assert mapper.unknown_targets() == []
        scenes = {p.stem for p in shipped_files("scenes")}
        for b in cmap.bindings:
            if b.target.startswith("scene/"):
                name = b.target.split("/")[1]
                assert name in scenes or name.isdigit(), b.target
        assert len({(b.key, b.target) for b in cmap.bindings}) == len(cmap.bindings), "duplicate bindings"
        # every control, pressed and released / turned, in both layers
        for layer_on in (False, True):
            if cmap.shift and layer_on:
                mapper.shift_active = True
            for b in cmap.bindings:
                ch = b.channel - 1
                if b.control == "note":
                    msgs = [mido.Message("note_on", channel=ch, note=b.number, velocity=127),
                            mido.Message("note_on", channel=ch, note=b.number, velocity=0)]  # fmt: skip
                elif b.control == "cc":
                    msgs = [mido.Message("control_change", channel=ch, control=b.number, value=v) for v in (127, 0)]
                else:
                    continue
                for m in msgs:
                    mapper.handle(m)
        assert mapper.stats.unknown_target == 0
        # loading a map round-trips through the writer MIDI learn uses
        again = load_controller_map_from_text(dump_controller_map(cmap), path.parent.parent / "tmp.toml")
        assert again.bindings == cmap.bindings and again.shift == cmap.shift and again.init == cmap.init
    finally:
        loaded.midi.remove(mapper)
        mapper.close()
        loaded.recall_scene("default")


def load_controller_map_from_text(text: str, _hint: Path):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "map.toml"
        p.write_text(text)
        return load_controller_map(p)


@pytest.mark.parametrize("path", shipped_files("scenes"), ids=lambda p: p.name)
def test_every_scene_recalls_onto_a_loaded_engine_without_problems(path: Path, loaded):
    assert loaded.recall_scene(path.stem) == []
    scene = load_scene(path)
    for rel, value in scene.values.items():
        assert loaded.get(f"deck/2/{rel}") == pytest.approx(value)
    loaded.recall_scene("default")


@pytest.mark.parametrize("path", shipped_files("chains"), ids=lambda p: p.name)
def test_chain_presets_register_their_parameters_with_the_presets_ranges(path: Path):
    preset = load_chain(path)
    control = Controller(STEMS)
    paths = control.load_chain(1, preset.stem or "vocals", preset)
    for plugin in preset.plugins:
        assert f"deck/1/stem/{preset.stem}/fx/{plugin.name}/bypass" in paths
        for pname, (lo, hi) in plugin.ranges.items():
            spec = control.tree.param(f"deck/1/stem/{preset.stem}/fx/{plugin.name}/{pname}").spec
            assert (spec.minimum, spec.maximum) == (lo, hi)
        for pname, value in plugin.params.items():
            assert control.get(f"deck/1/stem/{preset.stem}/fx/{plugin.name}/{pname}") == pytest.approx(value)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("loader", "text", "line", "key", "words"),
    [
        (load_chain, 'schema_version = 1\nname = "c"\n\n[[plugin]]\ntype = "Delay"\nmixx = 0.3\n', 6, "plugin.mixx",
         "unknown key 'mixx'"),
        (load_chain, 'schema_version = 1\nname = "c"\n[[plugin]]\ntype = "Delay"\n[plugin.params]\nfeedbak = 0.1\n',
         6, "plugin.params.feedbak", "unknown parameter 'feedbak' for Delay"),
        (load_chain, 'schema_version = 1\nname = "c"\n[[plugin]]\ntype = "Delay"\n[plugin.params]\nmix = 3.0\n', 6,
         "plugin.params.mix", "outside"),
        (load_chain, 'schema_version = 1\nname = "c"\n[[plugin]]\ntype = "Flanger"\n', 4, "plugin.type", "one of"),
        (load_controller_map, 'schema_version = 1\nname = "m"\n[[binding]]\ncontrol = "cc"\nnumber = 1\n'
         'target = "deck/1/stem/vocals/level"\n\n[[binding]]\ncontrol = "cc"\nnumber = 2\n'
         'target = "deck/1/master/level"\ncurv = "cube"\n', 12, "binding.curv", "unknown key 'curv' in [[binding]] #2"),
        (load_controller_map, 'schema_version = 1\nname = "m"\n[[binding]]\ncontrol = "cc"\nnumber = 200\n'
         'target = "deck/1/stem/vocals/level"\n', 5, "binding.number", "0..127"),
        (load_controller_map, 'schema_version = 1\nname = "m"\n[[binding]]\ncontrol = "cc"\nnumber = 2\n'
         'target = "deck/1/stem/vocals/volume"\n', 6, "binding.target", "is not deck/<n>"),
        (load_scene, 'schema_version = 1\nname = "s"\n[stem.vocals]\nmute = true\nlevle = 0.5\n', 5,
         "stem.vocals.levle", "unknown key 'levle'"),
        (load_scene, 'schema_version = 1\nname = "s"\n[stem.vocals]\nmute = "yes"\n', 4, "stem.vocals.mute",
         "must be a boolean"),
        (load_scene, 'schema_version = 1\nname = "s"\ncolour = "red"\n', 3, "colour", "unknown key 'colour'"),
    ],
)  # fmt: skip
def test_bad_files_are_rejected_naming_file_line_and_key(tmp_path, loader, text, line, key, words):
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(PresetError) as info:
        loader(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line, key)
    assert words in str(err) and str(err).startswith(f"{path}:{line}: ")


def test_schema_version_must_come_first_and_be_1_and_toml_errors_have_lines(tmp_path):
    with pytest.raises(PresetError, match="first setting must be 'schema_version = 1'"):
        load_scene(write(tmp_path, "a.toml", 'name = "s"\nschema_version = 1\n'))
    with pytest.raises(PresetError, match="schema_version must be 1"):
        load_scene(write(tmp_path, "b.toml", 'schema_version = 2\nname = "s"\n'))
    with pytest.raises(PresetError) as info:
        load_scene(write(tmp_path, "c.toml", 'schema_version = 1\nname = "s"\nfade_s = \n'))
    assert info.value.line == 3 and "not valid TOML" in str(info.value)
    with pytest.raises(PresetError, match="cannot read"):
        load_scene(tmp_path / "missing.toml")


def test_a_chain_is_built_off_thread_as_a_pedalboard_with_its_names_and_bypass_state(tmp_path):
    path = write(tmp_path, "c.toml", 'schema_version = 1\nname = "c"\n[[plugin]]\ntype = "Reverb"\nbypass = true\n'
                 '[[plugin]]\ntype = "Gain"\nname = "trim"\n[plugin.params]\ngain_db = -3.0\n')  # fmt: skip
    preset = load_chain(path)
    assert isinstance(preset, ChainPreset)
    built = build_chain(preset)
    assert built.names == ("reverb", "trim") and built.bypassed == ("reverb",)
    assert built.board[1].gain_db == pytest.approx(-3.0)
    with pytest.raises(PresetError, match="VST3"):
        build_chain(load_chain(write(tmp_path, "v.toml", 'schema_version = 1\nname = "v"\n[[plugin]]\n'
                                     'type = "VST3"\nname = "x"\npath = "/nonexistent/x.vst3"\n')))  # fmt: skip


def test_cli_presets_check_and_list(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMBRIDGE_PRESETS", str(tmp_path / "user"))
    ok = CliRunner().invoke(presets, ["check"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("ok: ") == len(ALL)
    bad = write(tmp_path, "bad.toml", 'schema_version = 1\nname = "s"\n[stem.vocals]\nmuted = true\n')
    result = CliRunner().invoke(presets, ["check", str(bad)])
    assert result.exit_code == 1 and f"{bad}:4: unknown key 'muted'" in result.output
    listing = CliRunner().invoke(presets, ["list"])
    assert listing.exit_code == 0 and "vocal_echo_out" in listing.output and "karaoke" in listing.output


@pytest.mark.parametrize("path", shipped_files("chains"), ids=lambda p: p.name)
def test_every_shipped_chain_declares_a_macro_that_names_a_real_parameter(path: Path, loaded):
    chain = load_chain(path)
    assert chain.macro and chain.macro_label
    stem = chain.stem
    for target in chain.macro:
        assert f"deck/1/stem/{stem}/{target}" in loaded.tree


@pytest.mark.parametrize(
    ("macro", "message"),
    [
        ('"fx/nope/mix"', "no plugin named 'nope'"),
        ('"fx/delay/cutoff_hz"', "Delay has no parameter 'cutoff_hz'"),
        ('"fx/delay/bypass"', "has no parameter 'bypass'"),
        ('"delay.mix"', "must look like"),
        ("3", "must be a parameter path"),
        ('["fx/delay/mix", "fx/delay/mix"]', "listed twice"),
    ],
)
def test_a_bad_macro_is_rejected_naming_the_file_and_the_problem(tmp_path: Path, macro: str, message: str):
    path = tmp_path / "chains" / "bad.toml"
    path.parent.mkdir()
    path.write_text(
        f'schema_version = 1\nname = "bad"\nmacro = {macro}\n\n[[plugin]]\ntype = "Delay"\nname = "delay"\n'
    )
    with pytest.raises(PresetError, match=message) as info:
        load_chain(path)
    assert "bad.toml:3" in str(info.value)


def test_a_macro_list_drives_every_target(tmp_path: Path):
    path = tmp_path / "two.toml"
    path.write_text(
        'schema_version = 1\nname = "two"\nmacro = ["fx/lpf/cutoff_frequency_hz", "fx/delay/mix"]\n'
        'macro_label = "wash"\n\n[[plugin]]\ntype = "LowpassFilter"\nname = "lpf"\n\n[[plugin]]\ntype = "Delay"\n'
    )
    built = build_chain(load_chain(path))
    assert built.macro == ("fx/lpf/cutoff_frequency_hz", "fx/delay/mix") and built.macro_label == "wash"
