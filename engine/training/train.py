"""Train the causal separation model; resumable, checkpointed, logged.

    python3 -m stembridge.engine.training.train --data data/synth --run runs/default [--steps N] [--threads 1]

Resumes by itself: from ``<run>/last.pt`` when it exists (model, optimizer, step, sampler seed), otherwise from the
committed weights-only checkpoint ``engine/models/checkpoint/default_fp16.pt`` (shipped in the package) when it
exists (a fresh machine: weights and step carry over, the optimizer starts anew), otherwise from scratch. A full
checkpoint is written every ``--checkpoint-minutes`` and on SIGTERM/SIGINT (at the end of the current step),
atomically (temp file + rename).

Each step draws a batch of random segments from the train split with augmentations (``dataset.py``), runs the model
on the mixture's host-framed STFT magnitude, applies the masks to the complex mixture STFT and compares the result
with each stem's STFT (``--loss``: the negative SDR, or an L1 distance normalised by the mixture level);
``--spatial-filter on`` compares what the engine plays instead, the masks turned into stems by its spatial filter
(``spatial_filter.py``, the same arithmetic as ``engine/spatial.py`` in torch). Every
``--validate-every`` steps the validation split's first seconds are separated and scored with a global SDR per stem
(10 log10 |s|^2 / |s - s_hat|^2 on the overlap-added estimates). Lines in ``<run>/log.jsonl``:
``{"kind": "train", "step", "loss", "lr", "sec_per_step", ...}`` and ``{"kind": "validation", "step", "sdr": {...}}``.
The data folder is rescanned every ``--rescan-every`` steps, so songs that synthesis adds later join the training.

An exponential moving average of the weights (``--ema-decay``, horizon about 1 / (1 - decay) steps) is kept beside
them: it averages out the noise of the last steps' updates, the way a decaying learning rate would, without stopping
the run from learning further. Validation scores both (``sdr`` for the average, ``raw_sdr_mean`` for the weights
being trained), ``best.pt`` follows the average, and export takes the average when a checkpoint has one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from stembridge.engine.spatial import DEFAULT_SETTINGS
from stembridge.engine.stft import WINDOWS
from stembridge.engine.training.dataset import (
    AUGMENT_PRESETS,
    Augment,
    BatchPrefetcher,
    SegmentSampler,
    SongBank,
    validation_excerpts,
)
from stembridge.engine.training.model import (
    RESIDUAL_STEM,
    ModelConfig,
    SeparatorModel,
    build_model,
    chosen_weights,
    count_parameters,
    istft,
    magnitude,
    reframed,
    stft,
    stft_frames,
    widened,
)
from stembridge.engine.training.real_material import RealPool
from stembridge.engine.training.spatial_filter import frame_decay, spatial_estimates

# the shipped model's weights-only checkpoint, inside the package (importlib.resources), wherever it is installed
COMMITTED_CHECKPOINT = Path(str(files("stembridge.engine").joinpath("models", "checkpoint", "default_fp16.pt")))


def spectra(audio: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """audio (..., channels, n) -> complex (..., frames, channels, bins) host-framed STFT."""
    spec = stft(audio, config.n_fft, config.hop_size, config.window)  # (..., channels, frames, bins)
    return spec.transpose(-3, -2)


LOSSES = ("sdr", "l1")
UNNAMED_LOSS = "l1"  # the loss of checkpoints from before they named theirs
CLIP = {"sdr": 250.0, "l1": 5.0}  # gradient norm clips, ~25x the norms seen while fine-tuning the default
SDR_FLOOR_DB = -40.0  # dB relative to the mixture: the sdr loss's energy floor, below which a stem is silent


def separation_loss(
    model: SeparatorModel,
    mix: torch.Tensor,
    stems: torch.Tensor,
    frame_fraction: float = 1.0,
    skip_frames: int = 8,
    kind: str = "sdr",
    spatial: dict[str, float] | None = None,
    stem_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """mix (batch, channels, n), stems (batch, num_stems, channels, n) -> (loss, per-stem loss figures).
    ``stem_weights`` (num_stems,) of 0 or 1: the stems the loss counts (default: all; the figures only show those).

    The GRU runs over every frame; the mask head and the loss only over a random ``frame_fraction`` of the frames
    after the first ``skip_frames`` (neighbouring frames are nearly redundant and the per-bin head dominates the cost).
    Everything is real-valued: masks are real and non-negative, so the estimate is (m Re X, m Im X) and its
    magnitude is m |X|. Per stem, ``kind``:

    * ``l1``: mean of |Re d| + |Im d| + ||est| - |target|| over the mixture's RMS level. A stem's weight follows its
      share of the mixture, so quiet stems (and bass, whose energy sits in few bins) pull little.
    * ``sdr``: the negative SDR of the example, 10 log10 (|d|^2 + e) / (|s|^2 + e) summed over the frames' complex
      bins (the STFT-domain form of the evaluation's SDR), averaged over the examples where the stem sounds. Every
      stem weighs the same whatever its level. ``e`` is the mixture's energy at ``SDR_FLOOR_DB``; a stem below it
      is silent in that example and left out, as the evaluation leaves out silent windows (what leaks into it
      still costs, as error in the stems it was taken from, because the masks sum to 1). Stems silent in every
      example are missing from the per-stem figures.

    ``spatial`` (settings like a card's ``spatial_filter``): the estimates are what the engine plays with its spatial
    filter on, not the masked mix: the filter's output for every stem but the residual one, which takes the rest
    (``residual_stem``), as ``engine.separator`` makes it. The filter's averages need evenly spaced frames, so the
    mask head then runs on every ``round(1 / frame_fraction)``-th frame (from a random offset) instead of a random
    share.
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r} (choose from {', '.join(LOSSES)})")
    cfg = model.config
    x = spectra(mix, cfg)  # (b, t, c, f)
    num_frames = x.shape[1]
    if spatial is None:
        count = max(1, int(round((num_frames - skip_frames) * frame_fraction)))
        frames = torch.sort(torch.randperm(num_frames - skip_frames)[:count]).values + skip_frames
    else:
        stride = max(1, int(round(1.0 / frame_fraction)))
        frames = torch.arange(skip_frames + int(torch.randint(stride, ())), num_frames, stride)
    mag = magnitude(x)
    h, lvl = model.initial_state(mix.shape[0])
    masks, _, _ = model(mag, h, lvl, frames)  # (b, k, s, c, f)
    xs = x[:, frames].unsqueeze(2)  # (b, k, 1, c, f)
    target = stft_frames(stems, cfg.n_fft, cfg.hop_size, frames, cfg.window).permute(0, 3, 1, 2, 4)  # (b, k, s, c, f)
    if spatial is None:
        est_re, est_im = masks * xs.real, masks * xs.imag
        est_mag = masks * magnitude(xs)
    else:
        est_re, est_im = filtered(xs[:, :, 0], masks, cfg, spatial, stride)
        est_mag = torch.sqrt(est_re.square() + est_im.square() + 1e-20)  # the floor keeps the gradient finite at 0
    d_re, d_im = est_re - target.real, est_im - target.imag  # the estimate's error
    if kind == "sdr":
        error = (d_re.square() + d_im.square()).sum(dim=(1, 3, 4))  # (b, s)
        energy = (target.real.square() + target.imag.square()).sum(dim=(1, 3, 4))
        floor = (xs.real.square() + xs.imag.square()).sum(dim=(1, 2, 3, 4)).clamp_min(1e-8) * 10 ** (SDR_FLOOR_DB / 10)
        sounds = (energy > floor[:, None]).float()
        if stem_weights is not None:
            sounds = sounds * stem_weights[None, :]
        sdr = 10.0 * torch.log10((error + floor[:, None]) / (energy + floor[:, None])) * sounds
        counts = sounds.sum(dim=0)
        figures = {s: float(v / n) for s, v, n in zip(cfg.stems, sdr.detach().sum(dim=0), counts, strict=True) if n}
        return sdr.sum() / sounds.sum().clamp_min(1.0), figures
    level = mag.pow(2).mean(dim=(1, 2, 3)).sqrt().clamp_min(1e-4).reshape(-1, 1, 1, 1, 1)
    diff = d_re.abs() + d_im.abs() + (est_mag - magnitude(target)).abs()
    per_stem = (diff / level).mean(dim=(0, 1, 3, 4))
    if stem_weights is not None:
        per_stem = per_stem * stem_weights
    return per_stem.sum(), {s: float(v) for s, v in zip(cfg.stems, per_stem.detach(), strict=True)}


def filtered(
    x: torch.Tensor, masks: torch.Tensor, config: ModelConfig, spatial: dict[str, float], stride: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stems the engine plays with its spatial filter: x complex (b, k, c, f), the mix at frames ``stride`` hops
    apart; masks (b, k, s, c, f). The residual stem (``RESIDUAL_STEM``, when the model has it) is the mix minus the
    other stems' estimates. Returns (real, imaginary), each (b, k, s, c, f)."""
    decay = frame_decay(spatial["time_constant_s"], config.hop_size, config.sample_rate, stride)
    est_re, est_im = spatial_estimates(x.real, x.imag, masks, decay, spatial["regularization"])
    if RESIDUAL_STEM in config.stems:
        r = config.stems.index(RESIDUAL_STEM)
        others = [i for i in range(len(config.stems)) if i != r]
        rest_re = x.real - est_re[:, :, others].sum(dim=2)
        rest_im = x.imag - est_im[:, :, others].sum(dim=2)
        est_re = torch.cat([est_re[:, :, :r], rest_re.unsqueeze(2), est_re[:, :, r + 1 :]], dim=2)
        est_im = torch.cat([est_im[:, :, :r], rest_im.unsqueeze(2), est_im[:, :, r + 1 :]], dim=2)
    return est_re, est_im


@torch.no_grad()
def separate(model: SeparatorModel, mix: torch.Tensor, spatial: dict[str, float] | None = None) -> torch.Tensor:
    """mix (channels, n) -> stems (num_stems, channels, frames * hop) aligned with the input (one causal pass), with
    the spatial filter of these settings when ``spatial`` is given."""
    cfg = model.config
    x = spectra(mix, cfg)  # (t, c, f)
    h, lvl = model.initial_state(1)
    masks, _, _ = model(magnitude(x).unsqueeze(0), h, lvl)
    if spatial is None:
        est = masks[0] * x.unsqueeze(1)  # (t, s, c, f)
    else:
        est_re, est_im = filtered(x.unsqueeze(0), masks, cfg, spatial)
        est = torch.complex(est_re[0], est_im[0])
    return istft(est.permute(1, 2, 0, 3), cfg.n_fft, cfg.hop_size, cfg.window)


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Global SDR in dB of one stem: 10 log10(|s|^2 / |s - s_hat|^2), arrays of the same shape."""
    num = float((reference.astype(np.float64) ** 2).sum())
    den = float(((reference - estimate).astype(np.float64) ** 2).sum())
    return 10.0 * np.log10((num + 1e-9) / (den + 1e-9))


def validate(
    model: SeparatorModel, excerpts: list[tuple[str, np.ndarray]], spatial: dict[str, float] | None = None
) -> dict:
    """Mean global SDR per stem over the excerpts (stems silent in an excerpt are left out), plus mixture/4; with the
    spatial filter of these settings when ``spatial`` is given."""
    cfg = model.config
    model.eval()
    scores: dict[str, list[float]] = {s: [] for s in cfg.stems}
    baseline: dict[str, list[float]] = {s: [] for s in cfg.stems}
    for _, stems in excerpts:
        mix = stems.sum(axis=0)
        est = separate(model, torch.from_numpy(mix), spatial).numpy()
        n = est.shape[-1] - (cfg.n_fft - cfg.hop_size)  # the tail is incomplete in one-shot overlap-add
        for i, s in enumerate(cfg.stems):
            ref = stems[i, :, :n]
            if np.sqrt((ref**2).mean()) < 1e-4:
                continue
            scores[s].append(sdr_db(ref, est[i, :, :n]))
            baseline[s].append(sdr_db(ref, mix[:, :n] / len(cfg.stems)))
    model.train()
    sdr = {s: round(float(np.mean(v)), 3) for s, v in scores.items() if v}
    base = {s: round(float(np.mean(v)), 3) for s, v in baseline.items() if v}
    return {
        "sdr": sdr,
        "sdr_mean": round(float(np.mean(list(sdr.values()))), 3) if sdr else None,
        "mix4_sdr_mean": round(float(np.mean(list(base.values()))), 3) if base else None,
        "num_songs": len(excerpts),
        "spatial_filter": spatial is not None,
    }


def learning_rate(step: int, base: float, warmup: int, half_life: int, floor: float) -> float:
    """Linear warm-up, then exponential decay halving every ``half_life`` steps, never below ``floor``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return max(base * 0.5 ** ((step - warmup) / half_life), floor)


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _half(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}


def save_fp16(checkpoint: dict, path: Path) -> None:
    """The weights-only fp16 checkpoint committed to the repo: config, fp16 weights (and their average), step, the
    run's settings (so a run resumed from it notes only real changes in its history), provenance."""
    small = {
        "config": checkpoint["config"],
        "model": _half(checkpoint["model"]),
        "step": checkpoint["step"],
        "loss": checkpoint.get("loss", UNNAMED_LOSS),
        "augment": checkpoint.get("augment", "default"),
        "provenance": checkpoint.get("provenance", {}),
    }
    for key in ("spatial_filter", "real"):
        if key in checkpoint:
            small[key] = checkpoint[key]
    if checkpoint.get("ema") is not None:
        small["ema"] = _half(checkpoint["ema"])
        small["ema_decay"] = checkpoint["ema_decay"]
    save_atomic(small, path)


class WeightAverage:
    """Exponential moving average of a model's floating-point state: avg = decay * avg + (1 - decay) * weights."""

    def __init__(self, model: torch.nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        live = model.state_dict()
        self.names = [k for k, v in live.items() if v.is_floating_point()]
        self.live = [live[k] for k in self.names]  # views of the parameters; the optimizer updates them in place
        source = state if state is not None else live
        self.average = [source[k].detach().float().clone() for k in self.names]

    def update(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.average, self.live, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average, strict=True))

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the model holds the average; after it, its own weights again."""
        saved = [t.clone() for t in self.live]
        with torch.no_grad():
            torch._foreach_copy_(self.live, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, saved)


def restarted(state: dict, weights: dict[str, torch.Tensor]) -> dict:
    """``state`` with new ``weights`` of another shape: no optimizer state or weight average carries over to them."""
    return {k: v for k, v in state.items() if k not in ("optimizer", "ema")} | {"model": weights}


def data_description(train: SongBank, augment: Augment, real: RealPool | None = None) -> str:
    bank = Path(train.root) / "bank.json"  # a song bank of real multitracks says what it is (training/musdb.py)
    if bank.is_file():
        songs = f"{json.loads(bank.read_text())['description']}; {len(train)} songs read from {train.split}"
    else:
        songs = (
            f"{len(train)} synthetic songs ({train.root}/{train.split}: engine/training/synth.py, regenerated from "
            "seeds)"
        )
    text = (
        f"{songs}, random segments with stems remixed across songs, resampling (pitch+tempo), EQ, saturation, gain, "
        f"channel swap, polarity, mono and silence augmentations ({json.dumps(augment.__dict__)})"
    )
    if real is not None and augment.p_real > 0:
        text += f"; with probability {augment.p_real} per stem, {real.describe()} (engine/training/real_material.py)"
    return text


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = Path(args.run)
        self.run.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run / "log.jsonl"
        self.stop = False
        stft_overrides = {k: v for k, v in (("hop_size", args.hop_size), ("window", args.window)) if v is not None}
        framing = {"n_fft": args.n_fft} if args.n_fft is not None else {}
        config = ModelConfig(hidden=args.hidden, num_layers=args.layers, **framing, **stft_overrides)
        self.step = 0
        self.sampler_seed = args.seed
        self.history: list[str] = []  # how the weights came to be, beyond plain training (kept in checkpoints)
        state = None
        last = self.run / "last.pt"
        if last.exists():
            state = torch.load(last, map_location="cpu", weights_only=False)
            source = str(last)
        elif args.init is not None and Path(args.init).exists():
            state = torch.load(args.init, map_location="cpu", weights_only=True)
            source = shown_path(args.init)
        if state is not None:
            config = ModelConfig.from_dict(state["config"])
            self.history = list(state.get("provenance", {}).get("history", []))
        warm_start = state is not None and source != str(last)  # a new run from other weights, not a resume
        new_n_fft = bool(framing) and args.n_fft != config.n_fft
        if warm_start and (stft_overrides or new_n_fft):
            # another STFT framing: the weights' shapes depend on the number of bands only, and another n_fft keeps
            # the bands (at the same frequencies); the filterbank buffers follow the new framing
            old = config
            config = ModelConfig.from_dict({**config.to_dict(), **stft_overrides})
            if new_n_fft:
                config = reframed(config, args.n_fft)
                state = restarted(state, chosen_weights(state)[0])
            self.history.append(
                f"step {state.get('step', 0)}: warm start from {source} (n_fft {old.n_fft}, hop {old.hop_size}, "
                f"{old.window} window) with n_fft {config.n_fft}, hop {config.hop_size}, {config.window} window"
            )
        self.note_change(state, "loss", UNNAMED_LOSS, args.loss)
        if warm_start and args.widen > 1:
            # grow the GRU from the weights it starts from (their average where kept): the same function, more units
            old = config
            state = restarted(state, widened(chosen_weights(state)[0], old, args.widen, seed=args.seed))
            config = replace(config, hidden=old.hidden * args.widen)
            self.history.append(
                f"step {state.get('step', 0)}: widened from {source} ({old.hidden} to {config.hidden} GRU units, "
                "each unit copied with its outgoing weights split in random shares: the same function)"
            )
        if args.bidirectional and not config.bidirectional:
            # the look-ahead variant (training/model.py): a backward GRU layer whose projection starts at zero, so a
            # warm start begins as the causal model it comes from
            config = replace(config, bidirectional=True)
            if warm_start:
                state = restarted(state, chosen_weights(state)[0])
                self.history.append(
                    f"step {state.get('step', 0)}: made bidirectional from {source} (a backward GRU layer over the "
                    "causal one, its projection starting at zero: the same function to begin with)"
                )
        self.model = build_model(config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.ema: WeightAverage | None = None
        self.lr_origin = 0  # the step the learning-rate schedule (warm-up, decay) counts from
        if state is not None:
            # the fixed filterbank buffers come from the config, never from a checkpoint (another n_fft rebuilds them)
            params = {name for name, _ in self.model.named_parameters()}
            weights = {k: v.float() for k, v in state["model"].items() if k in params}
            self.model.load_state_dict({**self.model.state_dict(), **weights})
            self.step = int(state.get("step", 0))
            if args.ema_decay > 0 and state.get("ema") is None:
                self.history.append(f"step {self.step}: weight average (decay {args.ema_decay}) started")
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
                self.lr_origin = int(state.get("lr_origin", 0))
            else:  # a fresh optimizer warms up again
                self.lr_origin = self.step
            self.sampler_seed = int(state.get("sampler_seed", args.seed)) + 1  # fresh draws after a resume
            self.log({"kind": "resume", "step": self.step, "source": source})
        if args.ema_decay > 0:
            self.ema = WeightAverage(self.model, args.ema_decay, state.get("ema") if state is not None else None)
        # a warm start is scored on its own validation songs: the best figure of the weights' earlier run (on other
        # songs) does not carry over
        self.best = state.get("best_sdr", -1e9) if state is not None and not warm_start else -1e9
        self.model.train()
        self.augment = replace(Augment.preset(args.augment), p_real=args.p_real if args.real else 0.0)
        self.real = RealPool(args.real, config.sample_rate, config.stems) if args.real else None
        real_setting = f"{args.real} (p {args.p_real})" if args.real else "none"
        self.note_change(state, "real", "none", real_setting, "real recordings")
        self.note_change(state, "augment", "default", args.augment, "augmentation")
        self.note_change(state, "spatial_filter", "off", args.spatial_filter, "training through the spatial filter")
        self.note_change(state, "loss_stems", "all", args.loss_stems, "the stems the loss counts")
        unknown = sorted(set(args.loss_stems.split(",")) - set(config.stems)) if args.loss_stems != "all" else []
        if unknown:
            stems = ", ".join(config.stems)
            raise SystemExit(f"--loss-stems: {', '.join(unknown)} not among the model's stems {stems}")
        self.loss_stems = list(config.stems) if args.loss_stems == "all" else args.loss_stems.split(",")
        if state is not None and state.get("loss_stems", "all") != args.loss_stems:
            self.best = -1e9  # best.pt was chosen on other stems
        self.stem_weights = (
            None
            if args.loss_stems == "all"
            else torch.tensor([float(s in self.loss_stems) for s in config.stems], dtype=torch.float32)
        )
        self.spatial = DEFAULT_SETTINGS if args.spatial_filter == "on" else None
        self.train_bank = SongBank(args.data, "train", config.stems, config.sample_rate)
        self.val_bank = SongBank(args.data, "validation", config.stems, config.sample_rate)
        segment = int(args.segment_seconds * config.sample_rate)
        self.sampler = SegmentSampler(self.train_bank, segment, self.augment, self.sampler_seed, real=self.real)
        self.prefetch: BatchPrefetcher | None = None
        if args.workers:
            self.prefetch = BatchPrefetcher(
                args.data,
                "train",
                segment,
                args.batch,
                self.augment,
                self.sampler_seed,
                config.stems,
                config.sample_rate,
                real=args.real,
            )

    def log(self, record: dict) -> None:
        record = {"time": round(time.time(), 1), **record}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    def note_change(self, state: dict | None, key: str, unnamed: str, value: str, what: str | None = None) -> None:
        """Record in the history when a run goes on from ``state`` with another ``--key`` setting than it was trained
        with (``unnamed``: the setting of checkpoints from before they recorded it)."""
        if state is not None and state.get(key, unnamed) != value:
            self.history.append(
                f"step {state.get('step', 0)}: {what or key} {state.get(key, unnamed)} changed to {value} "
                f"(--{key.replace('_', '-')})"
            )

    def checkpoint(self) -> dict:
        return {
            "config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "ema_decay": self.ema.decay if self.ema else None,
            "step": self.step,
            "loss": self.args.loss,
            "augment": self.args.augment,
            "spatial_filter": self.args.spatial_filter,
            "loss_stems": self.args.loss_stems,
            "real": f"{self.args.real} (p {self.args.p_real})" if self.args.real else "none",
            "lr_origin": self.lr_origin,
            "sampler_seed": self.sampler_seed + self.step,
            "best_sdr": self.best,
            "provenance": {
                "training_data": data_description(self.train_bank, self.augment, self.real),
                "trained_steps": self.step,
                "batch": f"{self.args.batch} x {self.args.segment_seconds} s",
                "history": self.history,
            },
        }

    def save(self) -> None:
        ckpt = self.checkpoint()
        save_atomic(ckpt, self.run / "last.pt")
        save_fp16(ckpt, self.run / "last_fp16.pt")
        self.log({"kind": "checkpoint", "step": self.step})

    def wait_for_data(self) -> None:
        while len(self.train_bank) < self.args.min_songs and not self.stop:
            print(f"waiting for songs: {len(self.train_bank)}/{self.args.min_songs} in train", flush=True)
            time.sleep(30)
            self.train_bank.rescan()
            self.val_bank.rescan()

    def train(self) -> None:
        args = self.args
        self.wait_for_data()
        self.log(
            {
                "kind": "start",
                "step": self.step,
                "parameters": count_parameters(self.model),
                "config": self.model.config.to_dict(),
                "train_songs": len(self.train_bank),
                "validation_songs": len(self.val_bank),
                "threads": torch.get_num_threads(),
            }
        )
        last_save = time.monotonic()
        window: list[float] = []
        per_stem_window: dict[str, list[float]] = {}  # a stem silent in a whole batch has no figure for that step
        t0 = time.monotonic()
        while self.step < args.steps and not self.stop:
            lr = learning_rate(self.step - self.lr_origin, args.lr, args.warmup, args.half_life, args.lr_floor)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            mix, stems = self.prefetch.get() if self.prefetch else self.sampler.batch(args.batch)
            loss, per_stem = separation_loss(
                self.model,
                torch.from_numpy(mix),
                torch.from_numpy(stems),
                args.frame_fraction,
                kind=args.loss,
                spatial=self.spatial,
                stem_weights=self.stem_weights,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip))
            self.optimizer.step()
            if self.ema:
                self.ema.update()
            self.step += 1
            window.append(float(loss.detach()))
            for k, v in per_stem.items():
                per_stem_window.setdefault(k, []).append(v)
            if self.step % args.log_every == 0:
                n = len(window)
                self.log(
                    {
                        "kind": "train",
                        "step": self.step,
                        "loss": round(float(np.mean(window)), 5),
                        "per_stem": {k: round(float(np.mean(v)), 5) for k, v in per_stem_window.items()},
                        "lr": lr,
                        "grad_norm": round(grad_norm, 4),
                        "sec_per_step": round((time.monotonic() - t0) / n, 3),
                        "train_songs": len(self.train_bank),
                    }
                )
                window, per_stem_window, t0 = [], {}, time.monotonic()
            if self.step % args.rescan_every == 0:
                self.train_bank.rescan()
                self.val_bank.rescan()
            if self.step % args.validate_every == 0 and len(self.val_bank):
                excerpts = validation_excerpts(self.val_bank, args.val_songs, args.val_seconds)
                result = validate(self.model, excerpts, self.spatial)
                if self.ema:
                    raw = result["sdr_mean"]
                    with self.ema.swapped_in():
                        result = validate(self.model, excerpts, self.spatial)
                    result = {**result, "weights": "average", "raw_sdr_mean": raw}
                if self.stem_weights is not None:  # chosen on the stems the loss counts
                    kept = [result["sdr"][s] for s in self.loss_stems if s in result["sdr"]]
                    result["loss_stems_sdr_mean"] = round(float(np.mean(kept)), 3) if kept else None
                self.log({"kind": "validation", "step": self.step, **result})
                score = result["sdr_mean"] if self.stem_weights is None else result["loss_stems_sdr_mean"]
                if score is not None and score > self.best:
                    self.best = score
                    save_atomic(self.checkpoint(), self.run / "best.pt")
                t0 = time.monotonic()
            if time.monotonic() - last_save > 60.0 * args.checkpoint_minutes:
                self.save()
                last_save = time.monotonic()
        self.save()
        if self.prefetch:
            self.prefetch.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the causal stem separation model (resumes from <run>/last.pt).")
    p.add_argument("--data", default="data/synth", help="folder with <split>/<song>/{vocals,drums,bass,other}.wav")
    p.add_argument("--run", default="runs/default", help="run folder: last.pt, best.pt, log.jsonl")
    p.add_argument("--steps", type=int, default=10**9, help="stop after this many steps in total (default: never)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=16, help="segments per step (the GRU cost grows slowly with it)")
    p.add_argument("--segment-seconds", type=float, default=3.0)
    p.add_argument("--frame-fraction", type=float, default=0.2, help="share of frames the mask head and loss see")
    p.add_argument(
        "--loss", choices=LOSSES, default="sdr", help="sdr: negative SDR per stem; l1: complex and magnitude L1"
    )
    p.add_argument(
        "--augment",
        choices=tuple(AUGMENT_PRESETS),
        default="default",
        help="augmentation preset (engine/training/dataset.py): timbre, stronger EQ, resampling and saturation; "
        "quiet_vocals, the vocal stem 0-6 dB further down; rest, 0-24 dB down (the high-quality stems model's "
        "input); coherent / whole_songs, 20 %% / none of the examples "
        "remixed across songs instead of 60 %%",
    )
    p.add_argument(
        "--spatial-filter",
        choices=("off", "on"),
        default="off",
        help="on: the loss and validation score the stems the engine plays with its spatial filter (engine/spatial.py, "
        "the settings export writes into a stereo model's card) instead of the masked mix",
    )
    p.add_argument(
        "--loss-stems",
        default="all",
        help="comma-separated stems the loss counts and best.pt is chosen on (e.g. drums,bass for the high-quality "
        "path's stems model, which gives only those); default all",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--half-life", type=int, default=40000, help="steps per halving of the learning rate")
    p.add_argument("--lr-floor", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=None, help="gradient norm clip (default: 250 for sdr, 5 for l1)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="weight average kept beside the weights (0: none)")
    p.add_argument("--hidden", type=int, default=ModelConfig.hidden, help="GRU hidden size (new runs only)")
    p.add_argument(
        "--widen", type=int, default=1, help="warm starts from --init: times the GRU hidden size (the same function)"
    )
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="the look-ahead variant for the high-quality path (training/model.py): a backward GRU layer; warm starts "
        "from causal weights begin as that causal model",
    )
    p.add_argument("--layers", type=int, default=ModelConfig.num_layers, help="GRU layers (new runs only)")
    p.add_argument(
        "--n-fft",
        type=int,
        default=None,
        help="STFT size (new runs; warm starts from --init keep their bands at the same frequencies)",
    )
    p.add_argument("--hop-size", type=int, default=None, help="STFT hop (new runs and warm starts from --init)")
    p.add_argument("--window", choices=WINDOWS, default=None, help="STFT window (new runs and warm starts from --init)")
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        help="pool of real single-stem recordings, <dir>/<stem>/<source>/* (engine/training/real_material.py)",
    )
    p.add_argument("--p-real", type=float, default=0.3, help="with --real: chance per stem of a real segment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, choices=(0, 1), help="1: augment batches in a second process")
    p.add_argument("--min-songs", type=int, default=1, help="wait until the train split has this many songs")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rescan-every", type=int, default=200)
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument("--val-songs", type=int, default=12)
    p.add_argument("--val-seconds", type=float, default=12.0)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument(
        "--init",
        type=Path,
        default=COMMITTED_CHECKPOINT,
        help="weights to start from when the run has no last.pt (default: the committed fp16 checkpoint)",
    )
    args = p.parse_args(argv)
    if args.clip is None:
        args.clip = CLIP[args.loss]
    if args.widen < 1:
        p.error(f"--widen must be a whole factor >= 1, got {args.widen}")
    if not 0.0 <= args.p_real <= 1.0:
        p.error(f"--p-real is a probability between 0 and 1, got {args.p_real}")
    return args


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it (histories should not name one machine's
    folders); the shipped checkpoint by its place in the package."""
    resolved = Path(path).resolve()
    if resolved == COMMITTED_CHECKPOINT.resolve():
        return "engine/models/checkpoint/default_fp16.pt"
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    trainer = Trainer(args)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def request_stop(signum, frame):  # noqa: ARG001
        # Python runs this on the main thread between bytecodes: note it, stop after the step, checkpoint, exit 0.
        # (The sender cannot be named: torch's threads exist before main() runs, so the signal cannot be blocked
        # everywhere and taken with sigwaitinfo.)
        if not trainer.stop:
            trainer.log({"kind": "signal", "step": trainer.step, "signal": signal.Signals(signum).name})
        trainer.stop = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    try:
        trainer.train()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
