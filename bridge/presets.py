"""Preset files (TOML, data only): effect chains, controller maps and scenes, with strict validation.

Every file starts with ``schema_version = 1``. Unknown keys, wrong types and out-of-range values are rejected
with a ``PresetError`` naming the file, the line and the key (``presets/chains/x.toml:12: unknown key 'mixx'
in [[plugin]] #1 ...``). Loading builds nothing; ``build_chain`` makes the pedalboard off the audio thread.

Shipped presets live in the repository's ``presets/`` folder: ``chains/``, ``controllers/`` and ``scenes/``.
A name is looked up in the user's folder first (``$STEMBRIDGE_PRESETS`` or ``~/.config/stembridge/presets``),
then in the shipped one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from stembridge.bridge.params import ParamSpec

SCHEMA_VERSION = 1
# the presets shipped inside the package (importlib.resources), wherever it is installed
SHIPPED_DIR = Path(str(files("stembridge.presets")))
KINDS = ("chains", "controllers", "scenes")
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def user_dir() -> Path:
    """The user's preset folder: $STEMBRIDGE_PRESETS, else ~/.config/stembridge/presets."""
    env = os.environ.get("STEMBRIDGE_PRESETS")
    return Path(env) if env else Path.home() / ".config" / "stembridge" / "presets"


class PresetError(ValueError):
    """A preset file is invalid. ``str()`` reads ``file:line: message``."""

    def __init__(self, file: str | Path, line: int | None, key: str | None, message: str) -> None:
        self.file, self.line, self.key, self.message = str(file), line, key, message
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------------------------
# line numbers for keys (tomllib gives values only)

_BARE = r"[A-Za-z0-9_\-]+"
_KEY = rf'(?:{_BARE}|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY})\s*=")


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(_KEY, dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


class _Lines:
    """Maps key paths like ("binding", 3, "target") to the line they are written on."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        counters: dict[tuple, int] = {}
        table: tuple = ()
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            header = _HEADER.match(line)
            if header:
                keys = tuple(_split_key(header.group(2)))
                base = self._resolve(keys, counters)
                if header.group(1) == "[[":
                    index = counters.get(base, -1) + 1
                    counters[base] = index
                    table = base + (index,)
                else:
                    table = base
                self.lines.setdefault(table, number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                path = table + tuple(_split_key(assign.group(1)))
                self.lines.setdefault(path, number)
                rest = line[assign.end() :]
                for inner in _INLINE_KEY.finditer(rest):
                    self.lines.setdefault(path + tuple(_split_key(inner.group(1))), number)

    @staticmethod
    def _resolve(keys: tuple, counters: dict[tuple, int]) -> tuple:
        """Insert array-of-tables indices: [[plugin]] then [plugin.params] means plugin.<last>.params."""
        out: tuple = ()
        for key in keys:
            out = out + (key,)
            if out in counters and len(out) < len(keys):
                out = out + (counters[out],)
        return out

    def line_of(self, path: tuple) -> int | None:
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return None


@dataclass
class _Ctx:
    file: Path
    lines: _Lines

    def error(self, path: tuple, message: str) -> PresetError:
        key = ".".join(str(p) for p in path if not isinstance(p, int)) or None
        return PresetError(self.file, self.lines.line_of(path), key, message)


def _where(path: tuple) -> str:
    if not path:
        return "the top level"
    parts, out = list(path), []
    for i, p in enumerate(parts):
        if isinstance(p, int):
            out[-1] = f"[[{'.'.join(str(x) for x in parts[:i] if not isinstance(x, int))}]] #{p + 1}"
        else:
            out.append(str(p))
    text = ".".join(out)
    return text if text.startswith("[[") else f"[{text}]"


def _check_keys(ctx: _Ctx, table: dict, path: tuple, allowed: set[str] | dict, required: tuple = ()) -> None:
    for key in table:
        if key not in allowed:
            raise ctx.error(
                path + (key,), f"unknown key {key!r} in {_where(path)} (allowed: {', '.join(sorted(allowed))})"
            )
    for key in required:
        if key not in table:
            raise ctx.error(path, f"missing key {key!r} in {_where(path)}")


def _get(ctx: _Ctx, table: dict, path: tuple, key: str, kind: type | tuple, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        names = " or ".join(
            {
                bool: "a boolean",
                int: "an integer",
                float: "a number",
                str: "a string",
                list: "an array",
                dict: "a table",
            }[k]
            for k in kinds
        )
        raise ctx.error(path + (key,), f"{key!r} in {_where(path)} must be {names}, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.error(path + (key,), f"{key!r} in {_where(path)} must be finite")
    return value


def _int_in(ctx: _Ctx, table: dict, path: tuple, key: str, lo: int, hi: int, default: Any = None) -> Any:
    value = _get(ctx, table, path, key, int, default)
    if value is not None and not lo <= value <= hi:
        raise ctx.error(path + (key,), f"{key!r} in {_where(path)} must be {lo}..{hi}, not {value}")
    return value


def _choice(ctx: _Ctx, table: dict, path: tuple, key: str, choices: tuple, default: Any = None) -> Any:
    value = _get(ctx, table, path, key, str, default)
    if value is not None and value not in choices:
        raise ctx.error(path + (key,), f"{key!r} in {_where(path)} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _name(ctx: _Ctx, table: dict, path: tuple, key: str, default: Any = None) -> Any:
    value = _get(ctx, table, path, key, str, default)
    if value is not None and not _NAME.match(value):
        raise ctx.error(path + (key,), f"{key!r} in {_where(path)} must be letters, digits, '_' or '-', not {value!r}")
    return value


def _read(path: str | Path) -> tuple[dict, _Ctx]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(path, None, None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PresetError(path, None, None, f"not UTF-8 text: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _lineno_from_message(str(exc))
        raise PresetError(path, line, None, f"not valid TOML: {exc}") from exc
    ctx = _Ctx(path, _Lines(text))
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    if not re.match(r"^\s*schema_version\s*=", first):
        raise PresetError(path, 1, "schema_version", "the first setting must be 'schema_version = 1'")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ctx.error(
            ("schema_version",), f"schema_version must be {SCHEMA_VERSION}, not {data.get('schema_version')!r}"
        )
    return data, ctx


def _lineno_from_message(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------------------------
# effect chains

# (minimum, maximum, unit, scale) of the built-in pedalboard plugins' parameters: the widest range each accepts
# that also makes sense live (cutoffs stop at 20 kHz, delays at 2 s). Chain presets can narrow these.
BUILTIN_PARAMS: dict[str, dict[str, tuple[float, float, str, str]]] = {
    "Bitcrush": {"bit_depth": (1.0, 32.0, "bits", "linear")},
    "Chorus": {
        "rate_hz": (0.01, 20.0, "Hz", "log"),
        "depth": (0.0, 1.0, "", "linear"),
        "centre_delay_ms": (1.0, 100.0, "ms", "log"),
        "feedback": (-0.95, 0.95, "", "linear"),
        "mix": (0.0, 1.0, "", "linear"),
    },
    "Clipping": {"threshold_db": (-60.0, 0.0, "dB", "linear")},
    "Compressor": {
        "threshold_db": (-60.0, 0.0, "dB", "linear"),
        "ratio": (1.0, 20.0, "", "log"),
        "attack_ms": (0.1, 200.0, "ms", "log"),
        "release_ms": (1.0, 2000.0, "ms", "log"),
    },
    "Delay": {
        "delay_seconds": (0.001, 2.0, "s", "log"),
        "feedback": (0.0, 0.99, "", "linear"),
        "mix": (0.0, 1.0, "", "linear"),
    },
    "Distortion": {"drive_db": (0.0, 60.0, "dB", "linear")},
    "Gain": {"gain_db": (-60.0, 24.0, "dB", "linear")},
    "HighpassFilter": {"cutoff_frequency_hz": (20.0, 20000.0, "Hz", "log")},
    "LowpassFilter": {"cutoff_frequency_hz": (20.0, 20000.0, "Hz", "log")},
    "HighShelfFilter": {
        "cutoff_frequency_hz": (20.0, 20000.0, "Hz", "log"),
        "gain_db": (-24.0, 24.0, "dB", "linear"),
        "q": (0.1, 10.0, "", "log"),
    },
    "LowShelfFilter": {
        "cutoff_frequency_hz": (20.0, 20000.0, "Hz", "log"),
        "gain_db": (-24.0, 24.0, "dB", "linear"),
        "q": (0.1, 10.0, "", "log"),
    },
    "PeakFilter": {
        "cutoff_frequency_hz": (20.0, 20000.0, "Hz", "log"),
        "gain_db": (-24.0, 24.0, "dB", "linear"),
        "q": (0.1, 10.0, "", "log"),
    },
    "LadderFilter": {
        "cutoff_hz": (20.0, 20000.0, "Hz", "log"),
        "resonance": (0.0, 1.0, "", "linear"),
        "drive": (1.0, 10.0, "", "log"),
    },
    "Limiter": {"threshold_db": (-60.0, 0.0, "dB", "linear"), "release_ms": (1.0, 2000.0, "ms", "log")},
    "NoiseGate": {
        "threshold_db": (-100.0, 0.0, "dB", "linear"),
        "ratio": (1.0, 20.0, "", "log"),
        "attack_ms": (0.1, 200.0, "ms", "log"),
        "release_ms": (1.0, 2000.0, "ms", "log"),
    },
    "Phaser": {
        "rate_hz": (0.01, 20.0, "Hz", "log"),
        "depth": (0.0, 1.0, "", "linear"),
        "centre_frequency_hz": (20.0, 20000.0, "Hz", "log"),
        "feedback": (-0.95, 0.95, "", "linear"),
        "mix": (0.0, 1.0, "", "linear"),
    },
    "Reverb": {
        "room_size": (0.0, 1.0, "", "linear"),
        "damping": (0.0, 1.0, "", "linear"),
        "wet_level": (0.0, 1.0, "", "linear"),
        "dry_level": (0.0, 1.0, "", "linear"),
        "width": (0.0, 1.0, "", "linear"),
        "freeze_mode": (0.0, 1.0, "", "linear"),
    },
    "Invert": {},
}
PLUGIN_TYPES = tuple(BUILTIN_PARAMS) + ("VST3",)


def plugin_param_specs(plugin: Any) -> dict[str, ParamSpec]:
    """The controllable parameters of a pedalboard plugin: built-ins from ``BUILTIN_PARAMS``; hosted plugins
    (VST3) from their own ``parameters`` (range and unit as the plugin reports them)."""
    cls = type(plugin).__name__
    known = BUILTIN_PARAMS.get(cls)
    if known is None:
        for base in type(plugin).__mro__:
            known = BUILTIN_PARAMS.get(base.__name__)
            if known is not None:
                break
    if known is not None:
        return {
            name: ParamSpec("float", lo, hi, float(getattr(plugin, name)), unit, scale)
            for name, (lo, hi, unit, scale) in known.items()
        }
    specs: dict[str, ParamSpec] = {}
    for name, info in getattr(plugin, "parameters", {}).items():
        lo, hi, _step = getattr(info, "range", (0.0, 1.0, None))
        if getattr(info, "type", float) is bool:
            specs[name] = ParamSpec("bool", default=bool(getattr(plugin, name)))
        elif lo is not None and hi is not None and float(lo) < float(hi):
            specs[name] = ParamSpec(
                "float", float(lo), float(hi), float(getattr(plugin, name)), getattr(info, "label", "") or ""
            )
    return specs


@dataclass
class PluginPreset:
    """One plugin of a chain preset: pedalboard class name, address name, initial values and overrides."""

    type: str
    name: str
    bypass: bool = False
    params: dict[str, float | bool] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    smoothing_ms: dict[str, float] = field(default_factory=dict)
    scales: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # VST3 file


@dataclass
class ChainPreset:
    """An effect chain for one stem (e.g. a vocal echo-out throw). Build it with ``build_chain``."""

    name: str
    file: Path
    description: str = ""
    stem: str | None = None  # the stem it is written for (a suggestion; any stem can load it)
    plugins: list[PluginPreset] = field(default_factory=list)
    macro: tuple[str, ...] = ()  # parameters the stem's macro control drives, relative to the stem: "fx/delay/mix"
    macro_label: str = ""


@dataclass
class BuiltChain:
    """A chain ready to swap in: the board, its address names, the tree overrides and initially bypassed names."""

    board: Any
    names: tuple[str, ...]
    overrides: dict[tuple[str, str], dict[str, Any]]
    bypassed: tuple[str, ...]
    macro: tuple[str, ...] = ()
    macro_label: str = ""


def load_chain(path: str | Path) -> ChainPreset:
    """Load and validate an effect-chain preset. Raises PresetError."""
    data, ctx = _read(path)
    _check_keys(
        ctx, data, (), {"schema_version", "name", "description", "stem", "plugin", "macro", "macro_label"},
        ("name", "plugin"),
    )  # fmt: skip
    preset = ChainPreset(
        name=_name(ctx, data, (), "name"),
        file=ctx.file,
        description=_get(ctx, data, (), "description", str, ""),
        stem=_name(ctx, data, (), "stem"),
    )
    plugins = _get(ctx, data, (), "plugin", list)
    if not plugins:
        raise ctx.error(("plugin",), "a chain needs at least one [[plugin]]")
    seen: set[str] = set()
    for i, table in enumerate(plugins):
        where = ("plugin", i)
        if not isinstance(table, dict):
            raise ctx.error(("plugin",), "'plugin' must be an array of tables ([[plugin]])")
        _check_keys(
            ctx, table, where, {"type", "name", "bypass", "path", "params", "range", "smoothing_ms", "scale"}, ("type",)
        )
        kind = _choice(ctx, table, where, "type", PLUGIN_TYPES)
        name = _name(ctx, table, where, "name", kind.lower() if kind != "VST3" else None)
        if name is None:
            raise ctx.error(where, "a VST3 plugin needs a 'name'")
        if name in seen:
            raise ctx.error(where + ("name",), f"plugin name {name!r} is used twice in this chain")
        seen.add(name)
        plugin = PluginPreset(kind, name, _get(ctx, table, where, "bypass", bool, False))
        if kind == "VST3":
            plugin.path = _get(ctx, table, where, "path", str)
            if not plugin.path:
                raise ctx.error(where, "a VST3 plugin needs a 'path' to its .vst3 bundle")
        elif "path" in table:
            raise ctx.error(where + ("path",), "'path' is only for type = \"VST3\"")
        known = BUILTIN_PARAMS.get(kind)
        for sub in ("params", "range", "smoothing_ms", "scale"):
            sub_table = _get(ctx, table, where, sub, dict, {})
            for pname, value in sub_table.items():
                p_where = where + (sub, pname)
                if known is not None and pname not in known:
                    raise ctx.error(
                        p_where,
                        f"unknown parameter {pname!r} for {kind} in {_where(where + (sub,))} "
                        f"(parameters: {', '.join(known) or 'none'})",
                    )
                if sub == "params":
                    plugin.params[pname] = _param_value(ctx, p_where, value, known and known[pname])
                elif sub == "range":
                    plugin.ranges[pname] = _range(ctx, p_where, value, known and known[pname])
                elif sub == "smoothing_ms":
                    ms = _number(ctx, p_where, value)
                    if not 0.0 <= ms <= 10000.0:
                        raise ctx.error(p_where, f"smoothing_ms for {pname!r} must be 0..10000")
                    plugin.smoothing_ms[pname] = ms
                else:
                    if value not in ("linear", "log"):
                        raise ctx.error(p_where, f"scale for {pname!r} must be 'linear' or 'log', not {value!r}")
                    plugin.scales[pname] = value
        for pname, (lo, hi) in plugin.ranges.items():
            v = plugin.params.get(pname)
            if isinstance(v, float) and not lo <= v <= hi:
                raise ctx.error(where + ("params", pname), f"{pname} = {v} is outside its range [{lo}, {hi}]")
        preset.plugins.append(plugin)
    preset.macro = _macro(ctx, data, preset.plugins)
    preset.macro_label = _get(ctx, data, (), "macro_label", str, "")
    if preset.macro_label and not preset.macro:
        raise ctx.error(("macro_label",), "'macro_label' needs a 'macro'")
    if len(preset.macro_label) > 32:
        raise ctx.error(("macro_label",), "'macro_label' must be at most 32 characters")
    return preset


_MACRO_TARGET = re.compile(r"^fx/([A-Za-z0-9_\-]+)/([A-Za-z0-9_\-]+)$")


def _macro(ctx: _Ctx, data: dict, plugins: list[PluginPreset]) -> tuple[str, ...]:
    """The ``macro`` key: one parameter path ("fx/delay/mix") or a list of them, each naming a plugin of this
    chain and one of its continuous parameters (not ``bypass``)."""
    raw = data.get("macro")
    if raw is None:
        return ()
    entries = [raw] if isinstance(raw, str) else raw
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise ctx.error(("macro",), "'macro' must be a parameter path like \"fx/delay/mix\" or a list of them")
    by_name = {p.name: p for p in plugins}
    seen: list[str] = []
    for entry in entries:
        m = _MACRO_TARGET.match(entry)
        if m is None:
            raise ctx.error(("macro",), f'macro target {entry!r} must look like "fx/<plugin name>/<parameter>"')
        name, pname = m.groups()
        plugin = by_name.get(name)
        if plugin is None:
            raise ctx.error(
                ("macro",), f"macro target {entry!r}: no plugin named {name!r} in this chain ({', '.join(by_name)})"
            )
        known = BUILTIN_PARAMS.get(plugin.type)
        if pname == "bypass" or (known is not None and pname not in known):
            choices = ", ".join(known) if known is not None else "the plugin's own parameters"
            raise ctx.error(("macro",), f"macro target {entry!r}: {plugin.type} has no parameter {pname!r} ({choices})")
        if entry in seen:
            raise ctx.error(("macro",), f"macro target {entry!r} is listed twice")
        seen.append(entry)
    return tuple(seen)


def _number(ctx: _Ctx, path: tuple, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ctx.error(path, f"{path[-1]!r} must be a finite number, not {value!r}")
    return float(value)


def _param_value(ctx: _Ctx, path: tuple, value: Any, known: tuple | None) -> float | bool:
    if isinstance(value, bool):
        return value
    v = _number(ctx, path, value)
    if known:
        lo, hi, unit, _scale = known
        if not lo <= v <= hi:
            raise ctx.error(path, f"{path[-1]} = {v} is outside [{lo}, {hi}] {unit}".rstrip())
    return v


def _range(ctx: _Ctx, path: tuple, value: Any, known: tuple | None) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise ctx.error(path, f"range for {path[-1]!r} must be [min, max]")
    lo, hi = (_number(ctx, path, v) for v in value)
    if not lo < hi:
        raise ctx.error(path, f"range for {path[-1]!r} must have min < max, not [{lo}, {hi}]")
    if known and not (known[0] <= lo and hi <= known[1]):
        raise ctx.error(path, f"range for {path[-1]!r} must lie within [{known[0]}, {known[1]}]")
    return lo, hi


def build_chain(preset: ChainPreset) -> BuiltChain:
    """Make the pedalboard for a chain preset (off the audio thread). Raises PresetError if a plugin fails."""
    import pedalboard

    plugins = []
    overrides: dict[tuple[str, str], dict[str, Any]] = {}
    for p in preset.plugins:
        try:
            if p.type == "VST3":
                plugin = pedalboard.load_plugin(p.path)
            else:
                plugin = getattr(pedalboard, p.type)()
            for pname, value in p.params.items():
                setattr(plugin, pname, value)
        except (ImportError, OSError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            raise PresetError(preset.file, None, p.name, f"cannot build plugin {p.name!r} ({p.type}): {exc}") from exc
        plugins.append(plugin)
        for pname in set(p.ranges) | set(p.smoothing_ms) | set(p.scales):
            fields: dict[str, Any] = {}
            if pname in p.ranges:
                fields["minimum"], fields["maximum"] = p.ranges[pname]
            if pname in p.smoothing_ms:
                fields["smoothing_ms"] = p.smoothing_ms[pname]
                fields["smoothed_by"] = "control"
            if pname in p.scales:
                fields["scale"] = p.scales[pname]
            overrides[(p.name, pname)] = fields
    board = pedalboard.Pedalboard(plugins)
    names = tuple(p.name for p in preset.plugins)
    bypassed = tuple(p.name for p in preset.plugins if p.bypass)
    return BuiltChain(board, names, overrides, bypassed, preset.macro, preset.macro_label)


# ---------------------------------------------------------------------------------------------------------------
# controller maps

CONTROLS = ("cc", "cc14", "nrpn", "note", "pitchwheel")
CONTINUOUS_MODES = ("absolute", "relative_twos", "relative_signmag", "relative_offset")
BUTTON_MODES = ("toggle", "momentary", "hold")
CURVES = ("linear", "square", "cube", "sqrt", "scurve")
_TARGET = re.compile(
    r"^(?:deck/(?P<deck>[1-9][0-9]*)/(?:stem/(?P<stem>[A-Za-z0-9_\-]+)/"
    r"(?:(?P<leaf>gain_db|level|mute|solo)|fx/(?P<plugin>[A-Za-z0-9_\-]+)/(?P<param>[A-Za-z0-9_\-]+))"
    r"|master/(?:gain_db|level)"
    r"|(?P<deck_leaf>level_db|pfl|transport/(?:play|cue|loop|tempo|keylock|key)|load_next|load_prev))"
    r"|cue/(?:mix|gain_db)"
    r"|scene/(?P<scene>[A-Za-z0-9_\-]+)/(?P<action>recall|store))$"
)


@dataclass(frozen=True)
class Binding:
    """One control bound to one target (a tree path, or ``scene/<k>/recall|store``). See docs for every field."""

    control: str
    channel: int  # 1..16
    number: int  # CC/note number, NRPN parameter number; 0 for pitchwheel
    target: str
    mode: str = "absolute"
    layer: str = "main"
    curve: str = "linear"
    invert: bool = False
    range: tuple[float, float] | None = None
    step: float = 1.0 / 128.0
    takeover: str = "soft"
    feedback: bool = False
    on_value: int = 127
    off_value: int = 0
    led_channel: int | None = None
    value_on: float | None = None
    value_off: float | None = None
    hold_ms: float = 300.0
    fade_s: float | None = None
    resolution: int = 14
    label: str = ""

    def __post_init__(self) -> None:
        if self.control == "note" and self.mode not in BUTTON_MODES:  # notes are always buttons
            object.__setattr__(self, "mode", "toggle")

    @property
    def is_button(self) -> bool:
        return self.mode in BUTTON_MODES

    @property
    def key(self) -> tuple[str, int, int, str]:
        """(control, channel, number, layer): what identifies the physical control in one layer."""
        return (self.control, self.channel, self.number, self.layer)


@dataclass(frozen=True)
class ShiftSpec:
    """The shift button: while held ("hold") or after a press ("toggle"), shift-layer bindings win."""

    control: str
    channel: int
    number: int
    mode: str = "hold"
    feedback: bool = False
    on_value: int = 127
    off_value: int = 0


@dataclass
class ControllerMap:
    """A controller map: port names to look for, raw init messages, a shift button and bindings."""

    name: str
    file: Path | None = None
    description: str = ""
    input_port: str | None = None
    output_port: str | None = None
    init: list[list[int]] = field(default_factory=list)
    shift: ShiftSpec | None = None
    bindings: list[Binding] = field(default_factory=list)


_BINDING_KEYS = {
    "control", "channel", "number", "target", "mode", "layer", "curve", "invert", "range", "step", "takeover",
    "feedback", "on_value", "off_value", "led_channel", "value_on", "value_off", "hold_ms", "fade_s", "resolution",
    "label",
}  # fmt: skip


def parse_binding(ctx: _Ctx, table: dict, where: tuple) -> Binding:
    """Validate one [[binding]] table."""
    _check_keys(ctx, table, where, _BINDING_KEYS, ("control", "target"))
    control = _choice(ctx, table, where, "control", CONTROLS)
    channel = _int_in(ctx, table, where, "channel", 1, 16, 1)
    max_number = {"cc": 127, "cc14": 31, "nrpn": 16383, "note": 127, "pitchwheel": 0}[control]
    if control == "pitchwheel":
        number = _int_in(ctx, table, where, "number", 0, 0, 0)
    else:
        if "number" not in table:
            raise ctx.error(where, f"missing key 'number' in {_where(where)}")
        number = _int_in(ctx, table, where, "number", 0, max_number)
    target = _get(ctx, table, where, "target", str)
    m = _TARGET.match(target)
    if not m:
        raise ctx.error(
            where + ("target",),
            f"target {target!r} is not deck/<n>/stem/<stem>/<gain_db|level|mute|solo>, "
            "deck/<n>/stem/<stem>/fx/<plugin>/<param>, deck/<n>/master/<gain_db|level>, "
            "deck/<n>/<level_db|pfl|transport/play|transport/cue|transport/loop|load_next|load_prev>, "
            "cue/<mix|gain_db> or scene/<k>/<recall|store>",
        )
    is_action = m.group("scene") is not None
    modes = (
        BUTTON_MODES
        if control == "note" or is_action
        else (BUTTON_MODES + CONTINUOUS_MODES if control == "cc" else ("absolute",))
    )
    default_mode = "toggle" if control == "note" else ("momentary" if is_action else "absolute")
    if is_action and control not in ("note", "cc"):
        raise ctx.error(where + ("control",), 'scene actions need a button (control = "note" or "cc")')
    mode = _choice(ctx, table, where, "mode", modes, default_mode)
    is_button = mode in BUTTON_MODES
    rng = None
    if "range" in table:
        rng = _range(ctx, where + ("range",), table["range"], None)
    step = _get(ctx, table, where, "step", float, 1.0 / 128.0)
    if not 0.0 < step <= 1.0:
        raise ctx.error(where + ("step",), "'step' must be in (0, 1] (a fraction of the range per encoder tick)")
    hold_ms = _get(ctx, table, where, "hold_ms", float, 300.0)
    if not 0.0 < hold_ms <= 10000.0:
        raise ctx.error(where + ("hold_ms",), "'hold_ms' must be in (0, 10000]")
    fade_s = _get(ctx, table, where, "fade_s", float)
    if fade_s is not None and not (is_action and 0.0 <= fade_s <= 600.0):
        raise ctx.error(where + ("fade_s",), "'fade_s' (0..600) is only for scene/<k>/recall targets")
    resolution = _int_in(ctx, table, where, "resolution", 7, 14, 14)
    if resolution not in (7, 14):
        raise ctx.error(where + ("resolution",), "'resolution' must be 7 or 14")
    if "resolution" in table and control != "nrpn":
        raise ctx.error(where + ("resolution",), "'resolution' is only for control = \"nrpn\"")
    return Binding(
        control=control,
        channel=channel,
        number=number,
        target=target,
        mode=mode,
        layer=_choice(ctx, table, where, "layer", ("main", "shift"), "main"),
        curve=_choice(ctx, table, where, "curve", CURVES, "linear"),
        invert=_get(ctx, table, where, "invert", bool, False),
        range=rng,
        step=step,
        takeover=_choice(ctx, table, where, "takeover", ("soft", "jump"), "soft"),
        feedback=_get(ctx, table, where, "feedback", bool, is_button and not is_action),
        on_value=_int_in(ctx, table, where, "on_value", 0, 127, 127),
        off_value=_int_in(ctx, table, where, "off_value", 0, 127, 0),
        led_channel=_int_in(ctx, table, where, "led_channel", 1, 16),
        value_on=_get(ctx, table, where, "value_on", float),
        value_off=_get(ctx, table, where, "value_off", float),
        hold_ms=hold_ms,
        fade_s=fade_s,
        resolution=resolution,
        label=_get(ctx, table, where, "label", str, ""),
    )


def load_controller_map(path: str | Path) -> ControllerMap:
    """Load and validate a controller map. Raises PresetError."""
    data, ctx = _read(path)
    _check_keys(
        ctx, data, (), {"schema_version", "name", "description", "device", "init", "shift", "binding"}, ("name",)
    )
    cmap = ControllerMap(
        name=_get(ctx, data, (), "name", str), file=ctx.file, description=_get(ctx, data, (), "description", str, "")
    )
    device = _get(ctx, data, (), "device", dict, {})
    _check_keys(ctx, device, ("device",), {"input", "output"})
    cmap.input_port = _get(ctx, device, ("device",), "input", str)
    cmap.output_port = _get(ctx, device, ("device",), "output", str)
    for raw in _get(ctx, data, (), "init", list, []):
        if not isinstance(raw, list) or not raw or not all(isinstance(b, int) and 0 <= b <= 255 for b in raw):
            raise ctx.error(("init",), "'init' must be a list of MIDI messages, each a list of bytes 0..255")
        _check_midi_bytes(ctx, raw)
        cmap.init.append(list(raw))
    shift = _get(ctx, data, (), "shift", dict)
    if shift is not None:
        w = ("shift",)
        _check_keys(ctx, shift, w, {"control", "channel", "number", "mode", "feedback", "on_value", "off_value"},
                    ("control", "number"))  # fmt: skip
        cmap.shift = ShiftSpec(
            control=_choice(ctx, shift, w, "control", ("note", "cc")),
            channel=_int_in(ctx, shift, w, "channel", 1, 16, 1),
            number=_int_in(ctx, shift, w, "number", 0, 127),
            mode=_choice(ctx, shift, w, "mode", ("hold", "toggle"), "hold"),
            feedback=_get(ctx, shift, w, "feedback", bool, False),
            on_value=_int_in(ctx, shift, w, "on_value", 0, 127, 127),
            off_value=_int_in(ctx, shift, w, "off_value", 0, 127, 0),
        )
    tables = _get(ctx, data, (), "binding", list, [])
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ctx.error(("binding",), "'binding' must be an array of tables ([[binding]])")
        binding = parse_binding(ctx, table, ("binding", i))
        if cmap.shift and (binding.control, binding.channel, binding.number) == (
            cmap.shift.control,
            cmap.shift.channel,
            cmap.shift.number,
        ):
            raise ctx.error(("binding", i), "this control is the shift button; it cannot also be bound")
        cmap.bindings.append(binding)
    return cmap


def _check_midi_bytes(ctx: _Ctx, raw: list[int]) -> None:
    import mido

    try:
        mido.Message.from_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise ctx.error(("init",), f"init message {raw} is not a MIDI message: {exc}") from exc


def dump_controller_map(cmap: ControllerMap) -> str:
    """TOML text for a controller map (used by MIDI learn to save the user's map). Loads back equal."""
    lines = [f"schema_version = {SCHEMA_VERSION}", f"name = {_toml_str(cmap.name)}"]
    if cmap.description:
        lines.append(f"description = {_toml_str(cmap.description)}")
    if cmap.init:
        lines.append("init = [" + ", ".join("[" + ", ".join(str(b) for b in m) + "]" for m in cmap.init) + "]")
    if cmap.input_port or cmap.output_port:
        lines += ["", "[device]"]
        if cmap.input_port:
            lines.append(f"input = {_toml_str(cmap.input_port)}")
        if cmap.output_port:
            lines.append(f"output = {_toml_str(cmap.output_port)}")
    if cmap.shift:
        s = cmap.shift
        lines += ["", "[shift]", f'control = "{s.control}"', f"channel = {s.channel}", f"number = {s.number}",
                  f'mode = "{s.mode}"']  # fmt: skip
        if s.feedback:
            lines += ["feedback = true", f"on_value = {s.on_value}", f"off_value = {s.off_value}"]
    defaults = Binding("cc", 1, 0, "")
    for b in cmap.bindings:
        lines += ["", "[[binding]]"]
        for key in ("control", "channel", "number", "target", "mode"):
            lines.append(f"{key} = {_toml_value(getattr(b, key))}")
        is_button = b.mode in BUTTON_MODES
        for key in sorted(_BINDING_KEYS - {"control", "channel", "number", "target", "mode"}):
            value = getattr(b, key)
            default = (is_button and not b.target.startswith("scene/")) if key == "feedback" else getattr(defaults, key)
            if value != default and value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


# ---------------------------------------------------------------------------------------------------------------
# scenes

STEM_SCENE_KEYS = ("gain_db", "level", "mute", "solo", "chain", "fx")


@dataclass
class ScenePreset:
    """A scene: values relative to a deck (``stem/vocals/mute`` -> True), chains to load, and a default fade."""

    name: str
    file: Path | None = None
    description: str = ""
    fade_s: float = 0.0
    values: dict[str, float | bool] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)  # stem -> chain preset name


def load_scene(path: str | Path) -> ScenePreset:
    """Load and validate a scene preset. Raises PresetError."""
    data, ctx = _read(path)
    _check_keys(ctx, data, (), {"schema_version", "name", "description", "fade_s", "stem", "master"}, ("name",))
    fade = _get(ctx, data, (), "fade_s", float, 0.0)
    if not 0.0 <= fade <= 600.0:
        raise ctx.error(("fade_s",), "'fade_s' must be 0..600 seconds")
    scene = ScenePreset(_name(ctx, data, (), "name"), ctx.file, _get(ctx, data, (), "description", str, ""), fade)
    stems = _get(ctx, data, (), "stem", dict, {})
    for stem, table in stems.items():
        where = ("stem", stem)
        if not _NAME.match(stem) or not isinstance(table, dict):
            raise ctx.error(where, f"[stem.{stem}] must be a table named after a stem")
        _check_keys(ctx, table, where, set(STEM_SCENE_KEYS))
        _scene_levels(ctx, table, where, f"stem/{stem}", scene)
        for key in ("mute", "solo"):
            value = _get(ctx, table, where, key, bool)
            if value is not None:
                scene.values[f"stem/{stem}/{key}"] = value
        chain = _name(ctx, table, where, "chain")
        if chain is not None:
            scene.chains[stem] = chain
        for plugin, params in _get(ctx, table, where, "fx", dict, {}).items():
            p_where = where + ("fx", plugin)
            if not _NAME.match(plugin) or not isinstance(params, dict):
                raise ctx.error(p_where, f"[stem.{stem}.fx.{plugin}] must be a table of parameter values")
            for pname, value in params.items():
                if not _NAME.match(pname):
                    raise ctx.error(p_where + (pname,), f"bad parameter name {pname!r}")
                if isinstance(value, bool):
                    scene.values[f"stem/{stem}/fx/{plugin}/{pname}"] = value
                else:
                    scene.values[f"stem/{stem}/fx/{plugin}/{pname}"] = _number(ctx, p_where + (pname,), value)
    master = _get(ctx, data, (), "master", dict, {})
    _check_keys(ctx, master, ("master",), {"gain_db", "level"})
    _scene_levels(ctx, master, ("master",), "master", scene)
    return scene


def _scene_levels(ctx: _Ctx, table: dict, where: tuple, base: str, scene: ScenePreset) -> None:
    from stembridge.bridge.params import MAX_GAIN_DB, MIN_GAIN_DB, level_to_gain_db

    if "gain_db" in table and "level" in table:
        raise ctx.error(where + ("level",), f"give either gain_db or level in {_where(where)}, not both")
    gain = _get(ctx, table, where, "gain_db", float)
    if gain is not None:
        if not MIN_GAIN_DB <= gain <= MAX_GAIN_DB:
            raise ctx.error(where + ("gain_db",), f"gain_db must be {MIN_GAIN_DB}..{MAX_GAIN_DB}")
        scene.values[f"{base}/gain_db"] = gain
    level = _get(ctx, table, where, "level", float)
    if level is not None:
        if not 0.0 <= level <= 1.0:
            raise ctx.error(where + ("level",), "level must be 0..1")
        scene.values[f"{base}/gain_db"] = level_to_gain_db(level)


# ---------------------------------------------------------------------------------------------------------------
# finding and checking presets

LOADERS = {"chains": load_chain, "controllers": load_controller_map, "scenes": load_scene}


def kind_of(path: str | Path) -> str:
    """ "chains", "controllers" or "scenes", from the folder the file is in, else from its keys."""
    path = Path(path)
    if path.parent.name in KINDS:
        return path.parent.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "chains"  # the loader reports the real problem
    if "plugin" in data:
        return "chains"
    if "binding" in data or "shift" in data or "device" in data:
        return "controllers"
    return "scenes"


def load_preset(path: str | Path) -> ChainPreset | ControllerMap | ScenePreset:
    """Load any preset file, choosing the loader by ``kind_of``."""
    return LOADERS[kind_of(path)](path)


def shipped_files(kind: str | None = None) -> list[Path]:
    """Every shipped preset file (of one kind, or all), sorted."""
    kinds = (kind,) if kind else KINDS
    return sorted(p for k in kinds for p in (SHIPPED_DIR / k).glob("*.toml"))


def find_preset(kind: str, name_or_path: str | Path) -> Path:
    """A preset file by path, or by name in the user's folder then the shipped one. Raises PresetError."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or os.sep in text:
        candidate = Path(name_or_path)
        if candidate.is_file():
            return candidate
        raise PresetError(candidate, None, None, "no such file")
    if not _NAME.match(text):
        raise PresetError(f"{kind}/{text}", None, None, f"{text!r} is not a preset name (letters, digits, '_', '-')")
    for folder in (user_dir() / kind, SHIPPED_DIR / kind):
        path = folder / f"{name_or_path}.toml"
        if path.exists():
            return path
    available = sorted({p.stem for folder in (user_dir() / kind, SHIPPED_DIR / kind) for p in folder.glob("*.toml")})
    raise PresetError(
        f"{kind}/{name_or_path}",
        None,
        None,
        f"no {kind[:-1]} preset named {str(name_or_path)!r} (available: {', '.join(available) or 'none'})",
    )


def check_preset(path: str | Path, stems: tuple[str, ...] = ("vocals", "drums", "bass", "other")) -> str:
    """Load, validate and build one preset file; for chains also push one block of audio through the chain in a
    ``StemMixer``. Returns a one-line summary. Raises PresetError."""
    import numpy as np

    kind = kind_of(path)
    preset = LOADERS[kind](path)
    if isinstance(preset, ChainPreset):
        from stembridge.engine.commands import SwapChain
        from stembridge.engine.mixer import StemMixer

        built = build_chain(preset)
        mixer = StemMixer(stems, sample_rate=44100, max_block_size=512)
        stem = preset.stem if preset.stem in stems else stems[0]
        if not mixer.apply(SwapChain(stem, built.board, built.names)):
            raise PresetError(preset.file, None, None, "the mixer refused the chain")
        block = (np.random.default_rng(0).standard_normal((len(stems), 2, 512)) * 0.1).astype(np.float32)
        _busses, master = mixer.process(block)
        if not np.all(np.isfinite(master)):
            raise PresetError(preset.file, None, None, "the chain produced non-finite audio")
        return f"chain {preset.name}: {len(preset.plugins)} plugin(s) ({', '.join(built.names)}), 512 frames ok"
    if isinstance(preset, ControllerMap):
        _check_map_targets(path, preset, stems)
        return f"controller map {preset.name}: {len(preset.bindings)} binding(s)" + (
            ", shift layer" if preset.shift else ""
        )
    for chain in preset.chains.values():
        load_chain(find_preset("chains", chain))
    _check_scene_targets(path, preset, stems)
    return f"scene {preset.name}: {len(preset.values)} value(s), {len(preset.chains)} chain(s), fade {preset.fade_s} s"


def chain_parameters(chain: str | Path | None = None) -> dict[str, set[str]]:
    """{plugin address name: its parameter names (with ``bypass``)} of one chain preset, or of every chain preset
    (shipped and the user's) when ``chain`` is None: what ``fx/<plugin>/<param>`` can name."""
    if chain is None:
        files = shipped_files("chains") + sorted((user_dir() / "chains").glob("*.toml"))
    else:
        files = [find_preset("chains", chain)]
    found: dict[str, set[str]] = {}
    for file in files:
        try:
            built = build_chain(load_chain(file))
        except PresetError:
            continue  # reported on its own line by `presets check`
        for name, plugin in zip(built.names, built.board, strict=True):
            found.setdefault(name, {"bypass"}).update(plugin_param_specs(plugin))
    return found


def _fx_problem(plugin: str, param: str, known: dict[str, set[str]], where: str) -> str | None:
    if plugin not in known:
        return f"no plugin named {plugin!r} in {where} (plugins: {', '.join(sorted(known)) or 'none'})"
    if param not in known[plugin]:
        return f"plugin {plugin!r} has no parameter {param!r} (parameters: {', '.join(sorted(known[plugin]))})"
    return None


def _check_map_targets(path: str | Path, cmap: ControllerMap, stems: tuple[str, ...]) -> None:
    """Every binding's stem is one of ``stems`` and every effect target names a plugin parameter some chain preset
    has. Raises PresetError at the binding's target line."""
    _data, ctx = _read(path)
    known: dict[str, set[str]] | None = None
    for i, binding in enumerate(cmap.bindings):
        m = _TARGET.match(binding.target)
        stem = m.group("stem") if m else None
        where = ("binding", i, "target")
        if stem is not None and stem not in stems:
            raise ctx.error(where, f"target {binding.target!r}: no stem {stem!r} (stems: {', '.join(stems)})")
        if m and m.group("plugin"):
            known = chain_parameters() if known is None else known
            problem = _fx_problem(m.group("plugin"), m.group("param"), known, "any chain preset")
            if problem:
                raise ctx.error(where, f"target {binding.target!r}: {problem}")


def _check_scene_targets(path: str | Path, scene: ScenePreset, stems: tuple[str, ...]) -> None:
    """Every stem the scene names is one of ``stems``; effect values name parameters of the chain the scene loads
    on that stem (or of some chain preset, when it loads none). Raises PresetError at the offending line."""
    _data, ctx = _read(path)
    known_by_stem: dict[str, dict[str, set[str]]] = {}
    for rel in scene.values:
        parts = rel.split("/")
        if parts[0] != "stem":
            continue
        stem = parts[1]
        if stem not in stems:
            raise ctx.error(("stem", stem), f"[stem.{stem}]: no stem {stem!r} (stems: {', '.join(stems)})")
        if len(parts) == 5 and parts[2] == "fx":
            chain = scene.chains.get(stem)
            if stem not in known_by_stem:
                known_by_stem[stem] = chain_parameters(chain)
            where = f"chain {chain}" if chain else "any chain preset"
            problem = _fx_problem(parts[3], parts[4], known_by_stem[stem], where)
            if problem:
                raise ctx.error(("stem", stem, "fx", parts[3], parts[4]), f"[stem.{stem}.fx]: {problem}")
    for stem in scene.chains:
        if stem not in stems:
            raise ctx.error(("stem", stem), f"[stem.{stem}]: no stem {stem!r} (stems: {', '.join(stems)})")
