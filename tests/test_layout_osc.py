"""The Open Stage Control session generated from the parameter tree: every widget talks to an address stembridge
serves, the fader curve and the chains' macros carry over, and the CLI writes it."""

from __future__ import annotations

import json

from click.testing import CliRunner
from stembridge.bridge.cli import main
from stembridge.bridge.control import Controller
from stembridge.bridge.layout_osc import open_stage_control_session
from stembridge.bridge.params import level_to_gain_db

STEMS = ("vocals", "drums", "bass", "other")


def widgets(node):
    for child in node.get("widgets", []) + node.get("tabs", []):
        yield child
        yield from widgets(child)


def test_every_widget_address_is_one_stembridge_serves_and_macros_follow_the_chains():
    control = Controller(STEMS, 2)
    control.load_scene("default")
    session = open_stage_control_session(control)
    assert session["type"] == "session" and session["content"]["type"] == "root"
    assert "/stembridge/subscribe" in session["content"]["onCreate"]
    assert [t["label"] for t in session["content"]["tabs"]] == ["deck 1", "deck 2", "scenes"]
    seen = {}
    for w in widgets(session["content"]):
        address = w.get("address")
        if not address:
            continue
        seen[w["id"]] = w
        path = address.removeprefix("/stembridge/")
        served = (
            path in control.tree
            or path.endswith("/meter")
            or path == "subscribe"
            or (path.startswith("scene/") and path.rsplit("/", 1)[1] in ("recall", "store"))
        )
        assert served, address
    assert len({w["id"] for w in widgets(session["content"])}) == sum(1 for _ in widgets(session["content"]))
    fader = seen["level_1_vocals"]
    assert fader["address"] == "/stembridge/deck/1/stem/vocals/level" and fader["range"] == {"min": 0, "max": 1}
    knob = seen["macro_2_vocals"]
    assert knob["address"] == "/stembridge/deck/2/stem/vocals/fx/delay/mix" and knob["label"] == "echo"
    assert seen["macro_1_other"]["logScale"] is True  # a filter cutoff on its log scale
    level = seen["level_1"]["range"]
    assert level["50%"] == round(level_to_gain_db(0.5), 2) and level["80%"] == 0.0  # the fader curve
    assert {"recall_karaoke", "recall_default", "mute_2_bass", "solo_1_drums", "play_2"} <= set(seen)


def test_the_cli_writes_a_session_for_the_models_stems(tmp_path, tiny_model):
    out = tmp_path / "osc" / "stembridge.json"
    result = CliRunner().invoke(
        main, ["layout", "open-stage-control", "-o", str(out), "--decks", "3", "--model", str(tiny_model)]
    )
    assert result.exit_code == 0, result.output
    session = json.loads(out.read_text())
    assert len(session["content"]["tabs"]) == 4 and "3 deck tab(s)" in result.output
    bad = CliRunner().invoke(main, ["layout", "open-stage-control", "-o", str(out), "--scene", "nope"])
    assert bad.exit_code != 0 and "no scene" in bad.output
