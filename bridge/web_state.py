"""What the web surface tells a page: the schema, the values, deck transport, waveform overviews and the status.

All of it is read from the ``Controller`` (its parameter tree, chains and scenes) and, when there is one, the live
engine (decks and counters). Nothing here runs on the audio thread; ``waveform_overview`` runs on a worker thread.
"""

from __future__ import annotations

import time
from typing import Any

from stembridge.bridge.params import UNITY_LEVEL, UnknownParam

OVERVIEW_BINS = 1000
KEYMAP = (
    ("1 2 3 4", "mute deck 1's stems (in order)"),
    ("5 6 7 8", "mute deck 2's stems"),
    ("Q W E R", "solo deck 1's stems"),
    ("T Y U I", "solo deck 2's stems"),
    ("Z / X", "deck 1 play-pause / cue"),
    ("N / M", "deck 2 play-pause / cue"),
    ("F1 ... F8", "recall scene 1-8 of the list (with the fade set)"),
    ("Esc", "clear every solo"),
)
STATUS_KEYS = (
    "xruns", "deadline_misses", "dry_blocks", "skipped_blocks", "backend_errors", "commands_dropped",
    "callback_ms_p99", "worker_ms_p99", "cpu_pct", "latency_ms", "blocks", "period_ms", "worker_failures",
)  # fmt: skip
TIME_KEYS = ("position_s", "duration_s", "cue_s", "loop_start_s", "loop_end_s")


def waveform_overview(audio: Any, num_bins: int = OVERVIEW_BINS) -> tuple[list[int], list[int]]:
    """Peak and RMS per bin, 0..255, of ``audio``: float32 (num_channels, num_frames). Runs on a worker thread."""
    import numpy as np

    n = int(audio.shape[-1])
    if n == 0:
        return [], []
    bins = min(num_bins, n)
    edges = np.linspace(0, n, bins + 1).astype(np.int64)
    mono = np.abs(audio).max(axis=0) if audio.ndim == 2 else np.abs(audio)
    peak = np.maximum.reduceat(mono, edges[:-1])
    sq = np.add.reduceat((mono.astype(np.float64)) ** 2, edges[:-1])
    rms = np.sqrt(sq / np.maximum(np.diff(edges), 1))
    scale = 255.0 / max(float(peak.max()), 1e-9)
    return (np.minimum(255, peak * scale).astype(int).tolist(), np.minimum(255, rms * scale).astype(int).tolist())


def all_values(tree: Any) -> dict[str, Any]:
    """Every parameter's current value (a full dump for a page that just connected)."""
    out = {}
    for path in tree.paths():
        try:
            out[path] = tree.get(path)
        except UnknownParam:  # removed meanwhile (a chain swap)
            continue
    return out


def schema_key(controller: Any, engine: Any, crate: list[str]) -> tuple:
    """What the schema depends on: when this changes, pages get a new schema."""
    chains = tuple(sorted((k, v[0]) for k, v in controller.chains.items()))
    decks = tuple(getattr(d, "name", "") for d in (engine.decks if engine is not None else ()))
    return (chains, tuple(sorted(controller.scenes)), decks, tuple(crate), len(controller.tree.paths()))


def scene_names(controller: Any) -> list[str]:
    """Stored scenes plus the scene presets in the user's and the shipped folders."""
    from stembridge.bridge.presets import SHIPPED_DIR, user_dir

    names = set(controller.scenes)
    for folder in (user_dir() / "scenes", SHIPPED_DIR / "scenes"):
        try:
            names |= {p.stem for p in folder.glob("*.toml")}
        except OSError:
            continue
    return sorted(names)


def build_schema(controller: Any, engine: Any, *, features: dict, crate: list[str], limits: dict) -> dict:
    """The ``schema`` message: decks, stems, every parameter (kind, range, unit, scale), each stem's macro as its
    chain declares it, scenes, features (deck loading, crate), the fader curve and the keyboard map."""
    tree = controller.tree
    params = {}
    for path in tree.paths():
        try:
            s = tree.param(path).spec
        except UnknownParam:
            continue
        params[path] = {
            "kind": s.kind, "min": s.minimum, "max": s.maximum, "default": s.default, "unit": s.unit,
            "scale": s.scale, "stateful": s.stateful,
        }  # fmt: skip
    macros, chains = {}, {}
    for (deck, stem), (name, built) in controller.chains.items():
        chains[f"{deck}/{stem}"] = name
        targets = [f"deck/{deck}/stem/{stem}/{t}" for t in getattr(built, "macro", ())]
        targets = [t for t in targets if t in params]
        if targets:
            macros[f"{deck}/{stem}"] = {"label": getattr(built, "macro_label", "") or "macro", "targets": targets}
    decks = []
    for n in range(1, tree.num_decks + 1):
        d = engine.decks[n - 1] if engine is not None and n <= len(engine.decks) else None
        decks.append({"n": n, "name": getattr(d, "name", f"deck {n}"), "kind": getattr(d, "kind", "deck")})
    return {
        "t": "schema",
        "stems": list(tree.stems),
        "decks": decks,
        "params": params,
        "macros": macros,
        "chains": chains,
        "scenes": scene_names(controller),
        "features": features,
        "crate": crate,
        "fader": {"unity_level": UNITY_LEVEL, "db_per_decade": 60.0, "silence_db": -120.0},
        "keymap": [list(k) for k in KEYMAP],
        "limits": limits,
    }


def deck_states(engine: Any) -> list[dict]:
    """Each deck's transport state from ``Deck.status()`` (name, kind, playing, position, duration, loop, ...),
    times rounded to 10 ms so an unchanged deck gives an unchanged message."""
    if engine is None:
        return []
    out = []
    for n, deck in enumerate(engine.decks, start=1):
        try:
            status = dict(deck.status())
        except Exception:  # a deck being swapped: show its name only
            status = {"name": getattr(deck, "name", f"deck {n}")}
        for key in TIME_KEYS:
            if isinstance(status.get(key), float):
                status[key] = round(status[key], 2)
        status["n"] = n
        out.append({k: v for k, v in status.items() if isinstance(v, (str, int, float, bool)) or v is None})
    return out


class StatusView:
    """The ``status`` message: the engine's latest counters, plus how many deadline misses (separation falling
    back to the dry mix) happened since a checkpoint about a second ago, for the page's warning."""

    def __init__(self) -> None:
        self._checkpoint: tuple[float, int] | None = None

    def build(self, engine_status: dict, dry_stem: str | None) -> dict[str, Any]:
        status: dict[str, Any] = {}
        for key in STATUS_KEYS:
            value = engine_status.get(key)
            if isinstance(value, (int, float)):
                status[key] = round(value, 3) if isinstance(value, float) else value
        misses_now = 0
        if "deadline_misses" in status:
            now, misses = time.monotonic(), status["deadline_misses"]
            last = self._checkpoint
            if last is not None and misses > last[1]:
                misses_now = misses - last[1]
            if last is None or now - last[0] >= 1.0:
                self._checkpoint = (now, misses)
        status["misses_now"] = misses_now
        if dry_stem:
            status["dry_stem"] = dry_stem
        return status
