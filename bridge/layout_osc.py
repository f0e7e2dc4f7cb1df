"""An Open Stage Control session (its JSON session file) generated from the parameter tree.

``stembridge layout open-stage-control -o stembridge.json`` builds the same ``Controller`` that ``stembridge live``
builds (the model's stems, the decks, a scene's chains and their macros) and writes one tab per deck: transport
(play, cue, loop), the deck level, and per stem a fader on ``.../level`` (the engine's fader curve is applied by
stembridge, so the widget sends 0..1), mute and solo toggles, the chain's macro knob and a meter; plus a tab of
scenes (recall with a fade, store). Every widget's address is the OSC address stembridge listens on, so it sets the
same parameters as the browser surface, MIDI and any other OSC client. The session subscribes to stembridge's
feedback when it opens (``/stembridge/subscribe``), so changes from anywhere move its widgets.

Load it: start Open Stage Control with ``--send 127.0.0.1:9000`` (stembridge's OSC port) and open the file
(docs/web-surface.md has the steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stembridge.bridge.params import level_to_gain_db

SESSION_VERSION = "1.26.2"  # the Open Stage Control release whose session format this follows
STEM_COLOURS = ("#4fb3ff", "#ff9f1a", "#3ddc84", "#c77dff", "#ff5a4f", "#ffc940")


def _fader_curve_range(lo_db: float, hi_db: float) -> dict[str, float]:
    """Open Stage Control's breakpoint range that follows stembridge's fader curve over [lo_db, hi_db] dB."""
    points: dict[str, float] = {"min": lo_db}
    for pct in (5, 10, 20, 30, 40, 50, 60, 70, 80, 90):
        db = level_to_gain_db(pct / 100)
        if lo_db < db < hi_db:
            points[f"{pct}%"] = round(db, 2)
    points["max"] = min(hi_db, round(level_to_gain_db(1.0), 2))
    return points


def _widget(kind: str, wid: str, address: str, label: str, **props: Any) -> dict[str, Any]:
    w = {"type": kind, "id": wid, "label": label, "address": address, "preArgs": [], "target": []}
    w.update(props)
    return w


def _panel(wid: str, widgets: list[dict], layout: str = "horizontal", **props: Any) -> dict[str, Any]:
    p = {"type": "panel", "id": wid, "layout": layout, "widgets": widgets, "innerPadding": True, "padding": 4}
    p.update(props)
    return p


def open_stage_control_session(controller: Any) -> dict[str, Any]:
    """The session (a dict ready for ``json.dumps``) for a Controller's decks, stems, chains and scenes."""
    from stembridge.bridge.presets import SHIPPED_DIR, user_dir

    tree = controller.tree
    tabs = []
    for deck in range(1, tree.num_decks + 1):
        base = f"/stembridge/deck/{deck}"
        level = tree.param(f"deck/{deck}/level_db").spec
        transport = _panel(
            f"transport_{deck}",
            [
                _widget("button", f"play_{deck}", f"{base}/transport/play", "play", mode="toggle", on=1, off=0),
                _widget("button", f"cue_{deck}", f"{base}/transport/cue", "cue", mode="tap", on=1, off=0),
                _widget("button", f"loop_{deck}", f"{base}/transport/loop", "loop", mode="toggle", on=1, off=0),
                _widget(
                    "fader", f"level_{deck}", f"{base}/level_db", "deck level", horizontal=True,
                    range=_fader_curve_range(level.minimum, level.maximum), value=0, typeTags="f", unit="dB",
                    doubleTap=True, default=0,
                ),
            ],
            height=90,
        )  # fmt: skip
        strips = []
        for k, stem in enumerate(tree.stems):
            path = f"{base}/stem/{stem}"
            colour = STEM_COLOURS[k % len(STEM_COLOURS)]
            meter_id = f"meter_{deck}_{stem}"
            widgets = [
                _widget(
                    "fader", f"level_{deck}_{stem}", f"{path}/level", stem, range={"min": 0, "max": 1}, value=0.8,
                    default=0.8, doubleTap=True, typeTags="f", colorWidget=colour, expand=True,
                ),
                _widget(
                    "fader", meter_id, "", "", design="compact", interaction=False, range={"min": -60, "max": 6},
                    width=24, colorWidget=colour, bypass=True,
                ),
                _widget(
                    "script", f"meter_in_{deck}_{stem}", f"{path}/meter", "",
                    onValue=f"set('{meter_id}', 20 * Math.log10(Math.max(value[0], 1e-6)), {{send: false}})",
                ),  # stembridge sends "meter f <peak> f <rms>" at up to 30 Hz; the meter shows the peak in dB
            ]  # fmt: skip
            buttons = [
                _widget("button", f"mute_{deck}_{stem}", f"{path}/mute", "M", mode="toggle", on=1, off=0,
                        colorWidget="#ff5a4f"),
                _widget("button", f"solo_{deck}_{stem}", f"{path}/solo", "S", mode="toggle", on=1, off=0,
                        colorWidget="#ffc940"),
            ]  # fmt: skip
            column = [_panel(f"strip_{deck}_{stem}", widgets, expand=True), _panel(f"ms_{deck}_{stem}", buttons)]
            chain = controller.chains.get((deck, stem))
            macro = getattr(chain[1], "macro", ()) if chain else ()
            if macro:
                target = tree.param(f"deck/{deck}/stem/{stem}/{macro[0]}").spec
                label = getattr(chain[1], "macro_label", "") or "macro"
                knob = _widget(
                    "knob", f"macro_{deck}_{stem}", f"{path}/{macro[0]}", label,
                    range={"min": target.minimum, "max": target.maximum}, logScale=target.scale == "log",
                    value=target.default, default=target.default, doubleTap=True, typeTags="f", height=90,
                )  # fmt: skip
                column.append(knob)
                for extra in macro[1:]:  # further targets follow the first knob's position
                    spec = tree.param(f"deck/{deck}/stem/{stem}/{extra}").spec
                    knob.setdefault("onValue", "")
                    knob["onValue"] += (
                        f"send('{path}/{extra}', {spec.minimum} + (value - {target.minimum}) / "
                        f"({target.maximum} - {target.minimum}) * ({spec.maximum} - {spec.minimum}));"
                    )
            strips.append(_panel(f"stem_{deck}_{stem}", column, layout="vertical", expand=True, colorWidget=colour))
        tabs.append(
            {
                "type": "tab", "id": f"deck_{deck}", "label": f"deck {deck}", "layout": "vertical",
                "widgets": [transport, _panel(f"stems_{deck}", strips, expand=True)],
            }
        )  # fmt: skip
    scenes = sorted(
        set(controller.scenes)
        | {p.stem for folder in (user_dir() / "scenes", SHIPPED_DIR / "scenes") for p in folder.glob("*.toml")}
    )
    scene_widgets = [
        _widget(
            "button", f"recall_{name}", f"/stembridge/scene/{name}/recall", name, mode="tap", on=2, off=2, typeTags="f"
        )
        for name in scenes
    ]  # fmt: skip  (on = 2: recall with a 2 s fade)
    store = [
        _widget("button", f"store_{k}", f"/stembridge/scene/slot{k}/store", f"store slot{k}", mode="tap", on=1, off=1)
        for k in range(1, 5)
    ]
    tabs.append(
        {
            "type": "tab", "id": "scenes", "label": "scenes", "layout": "vertical",
            "widgets": [
                _panel("scene_recall", scene_widgets, layout="grid", gridTemplate=4),
                _panel("scene_store", store),
                _widget("button", "subscribe", "/stembridge/subscribe", "re-sync feedback", mode="tap",
                        onValue="send('/stembridge/subscribe')", bypass=True),
            ],
        }
    )  # fmt: skip
    root = {
        "type": "root",
        "id": "root",
        "tabs": tabs,
        "onCreate": "send('/stembridge/subscribe')",  # feedback (every change, meters) to this session's port
    }
    return {"createdWith": "stembridge", "version": SESSION_VERSION, "type": "session", "content": root}


def write_open_stage_control(controller: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(open_stage_control_session(controller), indent=2) + "\n")
    return path


def layout_command() -> Any:
    """The ``stembridge layout`` command group."""
    import click
    from stembridge.bridge.cli_options import model_option

    @click.group("layout")
    def layout() -> None:
        """Generate control-surface layouts from stembridge's parameter tree."""

    @layout.command("open-stage-control")
    @click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
                  help="Session file to write (.json).")  # fmt: skip
    @click.option("--decks", type=click.IntRange(1, 8), default=2, show_default=True, help="Number of decks.")
    @click.option("--scene", default="default", show_default=True,
                  help="Scene preset whose chains (and their macros) the layout shows.")  # fmt: skip
    @model_option("Model whose stems the layout shows (default: the shipped model).")
    def open_stage_control(output: Path, decks: int, scene: str, model_path: Path | None) -> None:
        """Write an Open Stage Control session: a tab per deck (transport, level, per stem a fader, mute, solo,
        the chain's macro, a meter) and a scenes tab, addressed to stembridge's OSC server.

        Start Open Stage Control with --send 127.0.0.1:9000 (stembridge live's --osc-port) and open the file;
        it subscribes to stembridge's feedback when it loads.
        """
        from stembridge.bridge.control import Controller
        from stembridge.bridge.presets import PresetError
        from stembridge.engine.model_card import ModelError, load_card, resolve_model_path
        from stembridge.engine.separator import NoDefaultModelError, default_model_path

        try:
            card = load_card(resolve_model_path(model_path) if model_path else default_model_path())
        except (ModelError, NoDefaultModelError) as exc:
            raise click.ClickException(str(exc)) from exc
        control = Controller(card.stems, decks)
        try:
            control.load_scene(scene)
        except (KeyError, PresetError) as exc:
            raise click.ClickException(str(exc)) from exc
        write_open_stage_control(control, output)
        click.echo(f"wrote {output}: {decks} deck tab(s) x {len(card.stems)} stems ({', '.join(card.stems)}) + scenes")

    return layout
