"""Production of synthetic songs: per-stem effect chains, silent sections, levels, pans and a mix bus that keeps
mixture == sum of stems.

Everything that acts on the mix (bus compressor, limiter, loudness gain) is a gain envelope computed on the mix and
applied to every stem, so the stems still sum exactly to the mixture. Non-linear colour (amp distortion, saturation)
only ever happens inside a stem's own chain. Audio is float32 (channels, frames) at SAMPLE_RATE.
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy.ndimage import minimum_filter1d
from stembridge.engine.training.synth_music import SAMPLE_RATE

STEMS = ("vocals", "drums", "bass", "other")
# target RMS (dB) of each stem over its active part: (mean, sd)
STEM_LEVEL_DB = {"vocals": (-18.0, 3.0), "drums": (-21.0, 3.0), "bass": (-22.0, 3.0), "other": (-21.0, 3.0)}
PAN_SD = {"vocals": 0.08, "drums": 0.1, "bass": 0.05, "other": 0.25}
ENVELOPE_BLOCK = 32  # samples per step of the mix-bus gain computers


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def pan_stereo(x: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power balance of stereo x (2, frames); pan in [-1, 1], 0 = unchanged."""
    a = (pan + 1) * math.pi / 4
    return np.stack([x[0] * math.cos(a) * math.sqrt(2), x[1] * math.sin(a) * math.sqrt(2)])


def stereo_width(x: np.ndarray, width: float) -> np.ndarray:
    """Scale the side signal of stereo x (2, frames) by `width` (1 = unchanged, 0 = mono)."""
    mid, side = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * width
    return np.stack([mid + side, mid - side])


def active_rms(x: np.ndarray, block: int = 4410) -> float:
    """RMS of x (channels, frames) over the 100 ms blocks within 40 dB of the loudest block."""
    n = x.shape[-1] // block
    if n == 0:
        return float(np.sqrt(np.mean(x**2)))
    e = (x[..., : n * block] ** 2).reshape(-1, n, block).mean(axis=(0, 2))
    if e.max() <= 0:
        return 0.0
    return float(np.sqrt(e[e > e.max() * 1e-4].mean()))


# ---------------------------------------------------------------------------------------------------------------------
# silent sections
# ---------------------------------------------------------------------------------------------------------------------
def silent_sections(rng: random.Random, stem: str, num_bars: int, bar_s: float, total_s: float) -> list[list[float]]:
    """Planned silences of one accompaniment stem as [start_s, end_s] spans on bar lines: with probability 0.3 a
    break of 1-4 bars, a late entry (intro without the stem) or an early stop."""
    if stem == "vocals" or rng.random() > 0.3 or num_bars < 4:
        return []
    visible_bars = max(int(total_s / bar_s), 2)
    kind = rng.choice(["break", "break", "late_entry", "early_stop"])
    length = rng.randint(1, min(4, visible_bars - 1))
    if kind == "late_entry":
        start = 0
    elif kind == "early_stop":
        start = visible_bars - length
    else:
        start = rng.randint(0, visible_bars - length)
    return [[start * bar_s, min((start + length) * bar_s, total_s)]]


def section_gain(spans: list[list[float]], num_frames: int, fade_s: float = 0.02) -> np.ndarray:
    """Gain (num_frames,) that is 0 inside `spans` (seconds) and 1 elsewhere, with linear fades of `fade_s`."""
    g = np.ones(num_frames, np.float32)
    fade = max(int(fade_s * SAMPLE_RATE), 1)
    for a_s, b_s in spans:
        a, b = int(a_s * SAMPLE_RATE), min(int(b_s * SAMPLE_RATE), num_frames)
        g[a:b] = 0
        if a > 0:
            lo = max(a - fade, 0)
            g[lo:a] = np.minimum(g[lo:a], np.linspace(1, 0, a - lo, endpoint=False))
        if b < num_frames:
            hi = min(b + fade, num_frames)
            g[b:hi] = np.minimum(g[b:hi], np.linspace(0, 1, hi - b, endpoint=False))
    return g


# ---------------------------------------------------------------------------------------------------------------------
# per-stem chains
# ---------------------------------------------------------------------------------------------------------------------
class _Chain:
    """A pedalboard chain plus the parameters of every plugin (for meta.json)."""

    def __init__(self) -> None:
        self.plugins: list = []
        self.params: dict[str, dict] = {}

    def add(self, name: str, plugin, **params) -> None:
        self.plugins.append(plugin)
        self.params[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in params.items()}

    def board(self):
        import pedalboard as pb

        return pb.Pedalboard(self.plugins)


def _amp(chain: _Chain, rng: random.Random, prefix: str, drive_db: tuple[float, float], cab_hz: tuple[float, float]):
    """Amp simulation: pre-emphasis, drive (tanh distortion or hard clipping), cabinet low-pass and mid notch."""
    import pedalboard as pb

    pre_hz, pre_db = rng.uniform(500, 1500), rng.uniform(0, 8)
    chain.add(f"{prefix}_pre", pb.PeakFilter(cutoff_frequency_hz=pre_hz, gain_db=pre_db, q=0.7), hz=pre_hz, db=pre_db)
    drive = rng.uniform(*drive_db)
    if rng.random() < 0.75:
        chain.add(f"{prefix}_drive", pb.Distortion(drive_db=drive), drive_db=drive)
    else:
        thr = -rng.uniform(0.5, 1.0) * drive
        chain.add(f"{prefix}_gain", pb.Gain(gain_db=drive), db=drive)
        chain.add(f"{prefix}_clip", pb.Clipping(threshold_db=thr), threshold_db=thr)
    cab = rng.uniform(*cab_hz)
    chain.add(f"{prefix}_cab", pb.LowpassFilter(cutoff_frequency_hz=cab), hz=cab)
    notch_hz, notch_db = rng.uniform(300, 900), -rng.uniform(0, 6)
    chain.add(
        f"{prefix}_cab_eq",
        pb.PeakFilter(cutoff_frequency_hz=notch_hz, gain_db=notch_db, q=1.2),
        hz=notch_hz,
        db=notch_db,
    )


def _reverb(chain: _Chain, rng: random.Random, room: tuple[float, float], wet: tuple[float, float]) -> None:
    import pedalboard as pb

    p = {
        "room_size": rng.uniform(*room),
        "damping": rng.uniform(0.2, 0.8),
        "wet_level": rng.uniform(*wet),
        "width": rng.uniform(0.4, 1.0),
    }
    chain.add("reverb", pb.Reverb(dry_level=1.0, **p), **p)


def stem_chain(stem: str, rng: random.Random, style: str) -> _Chain:
    """Random effect chain of one stem ("vocals", "drums", "bass", "guitars" or "other")."""
    import pedalboard as pb

    c = _Chain()
    u = rng.uniform
    if stem == "vocals":
        c.add("hpf", pb.HighpassFilter(cutoff_frequency_hz=(f := u(70, 160))), hz=f)
        if rng.random() < 0.85:  # hide the TTS band edge (16 kHz slt, 8 kHz kal) behind a random low-pass
            c.add("lpf", pb.LowpassFilter(cutoff_frequency_hz=(f := u(6500, 19000))), hz=f)
        if rng.random() < 0.5:
            c.add(
                "air",
                pb.HighShelfFilter(cutoff_frequency_hz=(f := u(6000, 12000)), gain_db=(g := u(-6, 6))),
                hz=f,
                db=g,
            )
        c.add(
            "presence",
            pb.PeakFilter(cutoff_frequency_hz=(f := u(1500, 5000)), gain_db=(g := u(-3, 6)), q=1.0),
            hz=f,
            db=g,
        )
        if rng.random() < 0.35:
            c.add("saturation", pb.Distortion(drive_db=(d := u(2, 14))), drive_db=d)
        c.add(
            "comp",
            pb.Compressor(
                threshold_db=(t := u(-30, -12)),
                ratio=(r := u(2, 8)),
                attack_ms=(a := u(1, 12)),
                release_ms=(rel := u(50, 250)),
            ),
            threshold_db=t,
            ratio=r,
            attack_ms=a,
            release_ms=rel,
        )
        if rng.random() < 0.4:
            c.add(
                "delay",
                pb.Delay(delay_seconds=(d := u(0.12, 0.5)), feedback=(fb := u(0.1, 0.4)), mix=(m := u(0.05, 0.25))),
                seconds=d,
                feedback=fb,
                mix=m,
            )
        if rng.random() < 0.9:
            _reverb(c, rng, (0.2, 0.9), (0.03, 0.35))
    elif stem == "drums":
        if rng.random() < 0.8:
            c.add(
                "limiter",
                pb.Limiter(threshold_db=(t := u(-12, -2)), release_ms=(r := u(30, 150))),
                threshold_db=t,
                release_ms=r,
            )
        c.add("lowshelf", pb.LowShelfFilter(cutoff_frequency_hz=(f := u(80, 200)), gain_db=(g := u(-3, 6))), hz=f, db=g)
        c.add(
            "highshelf",
            pb.HighShelfFilter(cutoff_frequency_hz=(f := u(4000, 9000)), gain_db=(g := u(-5, 5))),
            hz=f,
            db=g,
        )
        if rng.random() < 0.25:
            c.add("saturation", pb.Distortion(drive_db=(d := u(2, 12))), drive_db=d)
        c.add(
            "comp",
            pb.Compressor(
                threshold_db=(t := u(-26, -8)),
                ratio=(r := u(2, 8)),
                attack_ms=(a := u(2, 30)),
                release_ms=(rel := u(40, 200)),
            ),
            threshold_db=t,
            ratio=r,
            attack_ms=a,
            release_ms=rel,
        )
        if rng.random() < 0.8:
            _reverb(c, rng, (0.05, 0.6), (0.02, 0.2))
    elif stem == "bass":
        c.add("hpf", pb.HighpassFilter(cutoff_frequency_hz=(f := u(25, 50))), hz=f)
        c.add("lpf", pb.LowpassFilter(cutoff_frequency_hz=(f := u(1500, 10000))), hz=f)
        if rng.random() < 0.45:
            _amp(c, rng, "amp", (3, 22), (1500, 6000))
        c.add(
            "comp",
            pb.Compressor(
                threshold_db=(t := u(-28, -10)),
                ratio=(r := u(3, 10)),
                attack_ms=(a := u(3, 30)),
                release_ms=(rel := u(60, 250)),
            ),
            threshold_db=t,
            ratio=r,
            attack_ms=a,
            release_ms=rel,
        )
    elif stem == "guitars":
        c.add("hpf", pb.HighpassFilter(cutoff_frequency_hz=(f := u(60, 160))), hz=f)
        p_drive = 0.75 if style in ("rock", "blues") else 0.35
        if rng.random() < p_drive:
            _amp(c, rng, "amp", (6, 38), (2500, 7000))
        if rng.random() < 0.3:
            c.add(
                "chorus", pb.Chorus(rate_hz=(r := u(0.3, 1.5)), depth=(d := u(0.1, 0.4)), mix=0.3), rate_hz=r, depth=d
            )
        c.add("comp", pb.Compressor(threshold_db=(t := u(-24, -10)), ratio=(r := u(1.5, 5))), threshold_db=t, ratio=r)
    else:
        c.add("hpf", pb.HighpassFilter(cutoff_frequency_hz=(f := u(60, 250))), hz=f)
        c.add(
            "peak", pb.PeakFilter(cutoff_frequency_hz=(f := u(300, 5000)), gain_db=(g := u(-5, 5)), q=0.8), hz=f, db=g
        )
        if rng.random() < 0.25:
            c.add(
                "chorus", pb.Chorus(rate_hz=(r := u(0.3, 1.5)), depth=(d := u(0.1, 0.4)), mix=0.3), rate_hz=r, depth=d
            )
        if rng.random() < 0.2:
            c.add("saturation", pb.Distortion(drive_db=(d := u(2, 12))), drive_db=d)
        if rng.random() < 0.2:
            c.add("phaser", pb.Phaser(rate_hz=(r := u(0.2, 1.5)), mix=(m := u(0.2, 0.5))), rate_hz=r, mix=m)
        c.add("comp", pb.Compressor(threshold_db=(t := u(-24, -10)), ratio=(r := u(1.5, 4))), threshold_db=t, ratio=r)
        if rng.random() < 0.85:
            _reverb(c, rng, (0.2, 0.85), (0.04, 0.3))
    return c


def vocal_eq_chain(rng: random.Random) -> _Chain:
    """A mix engineer's corrective vocal EQ, run before the vocal chain: a steeper low cut (one to three more
    first-order high-passes), a low-mid ("mud") cut, a presence boost and often an air shelf. Real produced vocals
    are thin below 200 Hz and bright at 1-8 kHz; the TTS voices sung raw are boomy and dull, and the default model,
    trained on them, gives a real vocal more to "other" the brighter it is (benchmarks/results/vocal_contexts/; a
    run on EQ'd vocals did not change that: see the README's "Brightness")."""
    import pedalboard as pb

    c = _Chain()
    u = rng.uniform
    low_cut = u(80, 200)
    for k in range(rng.randint(1, 3)):
        c.add(f"hpf{k}", pb.HighpassFilter(cutoff_frequency_hz=low_cut), hz=low_cut)
    for name, hz, db, q in (("mud", (200, 500), (-6, 0), (0.7, 1.4)), ("presence", (2000, 6000), (0, 7), (0.5, 1.2))):
        f, g, width = u(*hz), u(*db), u(*q)
        c.add(name, pb.PeakFilter(cutoff_frequency_hz=f, gain_db=g, q=width), hz=f, db=g, q=width)
    if rng.random() < 0.7:
        c.add("air", pb.HighShelfFilter(cutoff_frequency_hz=(f := u(7000, 12000)), gain_db=(g := u(0, 6))), hz=f, db=g)
    return c


def run_chain(chain: _Chain, x: np.ndarray) -> np.ndarray:
    """Process x (2, frames) through a chain at -20 dBFS active RMS (so thresholds mean the same for every song).
    Returns float32 (2, frames)."""
    r0 = active_rms(x)
    if r0 <= 1e-7:
        return np.zeros_like(x, dtype=np.float32)
    x = (x * (db_to_gain(-20.0) / r0)).astype(np.float32)
    y = chain.board()(np.ascontiguousarray(x), SAMPLE_RATE)
    return np.ascontiguousarray(y[:, : x.shape[1]], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# mix bus: gain envelopes computed on the mix, applied to every stem
# ---------------------------------------------------------------------------------------------------------------------
def _block_peak(mix: np.ndarray, block: int) -> np.ndarray:
    n = -(-mix.shape[-1] // block)
    a = np.abs(mix).max(axis=0)
    a = np.pad(a, (0, n * block - len(a)))
    return a.reshape(n, block).max(axis=1)


def _to_samples(g_blocks: np.ndarray, block: int, num_frames: int) -> np.ndarray:
    centres = (np.arange(len(g_blocks)) + 0.5) * block
    return np.interp(np.arange(num_frames), centres, g_blocks).astype(np.float32)


def compressor_gain(
    mix: np.ndarray, threshold_db: float, ratio: float, attack_ms: float, release_ms: float, knee_db: float = 6.0
) -> np.ndarray:
    """Gain envelope (num_frames,) of a feed-forward peak compressor with a soft knee, driven by mix
    (channels, num_frames). Multiply every stem by it to compress the bus while keeping the sum of stems exact."""
    level_db = 20 * np.log10(_block_peak(mix, ENVELOPE_BLOCK) + 1e-9)
    over = level_db - threshold_db
    slope = 1.0 - 1.0 / ratio
    gr_db = np.where(
        over <= -knee_db / 2,
        0.0,
        np.where(over >= knee_db / 2, slope * over, slope * (over + knee_db / 2) ** 2 / (2 * knee_db)),
    )
    dt_ms = ENVELOPE_BLOCK / SAMPLE_RATE * 1000
    a_att, a_rel = math.exp(-dt_ms / attack_ms), math.exp(-dt_ms / release_ms)
    smooth = np.empty_like(gr_db)
    s = 0.0
    for i, g in enumerate(gr_db.tolist()):
        s = a_att * s + (1 - a_att) * g if g > s else a_rel * s + (1 - a_rel) * g
        smooth[i] = s
    return _to_samples(10 ** (-smooth / 20), ENVELOPE_BLOCK, mix.shape[-1])


def limiter_gain(mix: np.ndarray, ceiling: float, release_ms: float, lookahead_ms: float = 3.0) -> np.ndarray:
    """Gain envelope (num_frames,) of a look-ahead peak limiter on mix (channels, num_frames): the gain has already
    fallen when a peak arrives, then recovers with `release_ms`. Sample peaks may pass the ceiling by a little (the
    envelope is interpolated between blocks)."""
    need = np.minimum(1.0, ceiling / (_block_peak(mix, ENVELOPE_BLOCK) + 1e-12))
    width = max(int(lookahead_ms / 1000 * SAMPLE_RATE / ENVELOPE_BLOCK), 1) * 2 + 1
    need = minimum_filter1d(need, size=width, mode="nearest")
    a_rel = math.exp(-ENVELOPE_BLOCK / SAMPLE_RATE * 1000 / release_ms)
    out = np.empty_like(need)
    g = 1.0
    for i, n in enumerate(need.tolist()):
        g = n if n < g else a_rel * g + (1 - a_rel) * n
        out[i] = g
    return _to_samples(out, ENVELOPE_BLOCK, mix.shape[-1])


def produce(
    stems: dict[str, np.ndarray],
    rng: random.Random,
    style: str,
    silences: dict[str, list[list[float]]],
    vocal_eq_rng: random.Random | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Mix dry stems into produced stems and their mixture.

    stems: float32 (2, num_frames) each for "vocals", "drums", "bass", "other" and optionally "guitars" (which gets an
    amp chain and joins "other"). silences: planned silent spans per stem (applied before the chains, so reverb tails
    ring out naturally). vocal_eq_rng: where given, the vocals first get a ``vocal_eq_chain`` drawn from it (its own
    stream: the other draws stay as they are). Returns (stems {name: float32 (2, num_frames)} for STEMS, mixture =
    exact sum of them, meta). No file clips (peak <= 0.98).
    """
    num_frames = next(iter(stems.values())).shape[1]
    wet: dict[str, np.ndarray] = {}
    meta: dict = {}
    for name in ("vocals", "drums", "bass", "guitars", "other"):
        if name not in stems:
            continue
        x = stems[name]
        if silences.get(name):
            x = x * section_gain(silences[name], num_frames)
        chain = stem_chain(name, rng, style)
        meta[name] = {}
        if name == "vocals" and vocal_eq_rng is not None:
            eq = vocal_eq_chain(vocal_eq_rng)
            x = eq.board()(np.ascontiguousarray(x, dtype=np.float32), SAMPLE_RATE)
            meta[name]["eq"] = eq.params
        y = run_chain(chain, x)
        meta[name]["fx"] = chain.params
        if name == "guitars":
            level_db = rng.uniform(-4, 4)
            meta[name]["level_vs_other_db"] = level_db
            wet[name] = y * db_to_gain(level_db)
        else:
            wet[name] = y
    if "guitars" in wet:  # guitars belong to the "other" stem
        wet["other"] = wet.get("other", np.zeros_like(wet["guitars"])) + wet.pop("guitars")
    out: dict[str, np.ndarray] = {}
    for name in STEMS:
        y = wet.get(name, np.zeros((2, num_frames), np.float32))
        pan = float(np.clip(rng.gauss(0, PAN_SD[name]), -0.8, 0.8))
        width = rng.uniform(0.6, 1.3) if name in ("drums", "other") else 1.0
        y = stereo_width(pan_stereo(y, pan), width)
        rms = active_rms(y)
        meta.setdefault(name, {})
        if rms < 1e-6:  # e.g. a drumless groove
            out[name] = np.zeros((2, num_frames), np.float32)
            meta[name]["silent"] = True
            continue
        level_db = rng.gauss(*STEM_LEVEL_DB[name])
        out[name] = (y * (db_to_gain(level_db) / rms)).astype(np.float32)
        meta[name].update({"pan": pan, "width": width, "level_db_rms": level_db})
    mix = sum(out.values())
    bus: dict = {}
    pre = db_to_gain(-16.0) / (np.sqrt(np.mean(mix**2)) + 1e-12)  # bus thresholds relative to a -16 dB RMS mix
    g = np.full(num_frames, pre, np.float32)
    if rng.random() < 0.6:
        p = {
            "threshold_db": rng.uniform(-16, -4),
            "ratio": rng.uniform(1.5, 4),
            "attack_ms": rng.uniform(1, 30),
            "release_ms": rng.uniform(50, 400),
        }
        g *= compressor_gain(mix * pre, **p)
        bus["compressor"] = p
    loud_db = rng.uniform(-18, -12)
    if rng.random() < 0.5:  # "mastered": pushed into a limiter
        loud_db = rng.uniform(-13, -8)
        cur = np.sqrt(np.mean((mix * g) ** 2)) + 1e-12
        g *= db_to_gain(loud_db) / cur
        p = {"ceiling": db_to_gain(-0.5), "release_ms": rng.uniform(20, 300)}
        g *= limiter_gain(mix * g, **p)
        bus["limiter"] = p
    else:
        g *= db_to_gain(loud_db) / (np.sqrt(np.mean((mix * g) ** 2)) + 1e-12)
        if np.abs(mix * g).max() > 1.96:  # a few wild peaks would force the whole song 6+ dB down: limit them
            p = {"ceiling": 0.98, "release_ms": rng.uniform(20, 300)}
            g *= limiter_gain(mix * g, **p)
            bus["limiter"] = p
    for k in out:
        out[k] = (out[k] * g).astype(np.float32)
    mix = sum(out.values())
    peak = max([float(np.abs(mix).max())] + [float(np.abs(v).max()) for v in out.values()])
    if peak > 0.98:  # one common gain: no file may clip
        for k in out:
            out[k] *= np.float32(0.98 / peak)
    mix = sum(out.values()).astype(np.float32)
    bus["loudness_db_rms"] = loud_db
    meta["bus"] = bus
    return out, mix, meta
