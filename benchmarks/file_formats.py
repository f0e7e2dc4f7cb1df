"""File formats: decode speed of a 5-minute MP3 and M4A, and writing a 5-minute NI stem file against WAV stems.

The audio is synthesized here (no MUSDB): five minutes of four stems (kick and snare, bass, chords, a sung tone with
vibrato, changing every 8 bars) at 44.1 kHz stereo, and their sum as the mixture. The stems are those synthetic parts
themselves, not a model's output: what is measured is the file path, not separation.

* decode: the mixture encoded with FFmpeg's encoders through PyAV (MP3: LAME 320 kb/s CBR; M4A: AAC 256 kb/s; M4A
  ALAC; plus 24-bit WAV and FLAC for reference), then ``read_audio`` (whole file) and the time until
  ``iter_audio_blocks`` hands over its first 4096-frame block (when a deck could start playing). Median of 3 runs.
* write: ``write_stem_file`` with ALAC and AAC (256 kb/s per stream) against the four 24-bit WAV stems that
  ``separate --format wav`` writes (``AtomicStemWriter``): time and size; and ``read_stem_file`` of each stem file.

    python benchmarks/file_formats.py [--seconds 300]

Writes benchmarks/results/file_formats/file_formats.json and file_formats.md. 2-core shared machine: timings
drift 30-100 % between runs; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stembridge.engine.audio_io import AtomicStemWriter, iter_audio_blocks, read_audio  # noqa: E402
from stembridge.engine.stem_file import NI_SLOTS, read_stem_file, write_stem_file  # noqa: E402

SR = 44100
RESULTS = ROOT / "benchmarks" / "results" / "file_formats"


def synth_stems(seconds: float) -> dict[str, np.ndarray]:
    """Four stems, float32 (2, n) each, in NI's slot order."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(0)
    section = (t // 16).astype(int)  # 8 bars at 120 bpm
    roots = np.array([55.0, 49.0, 41.2, 46.25])[section % 4]
    beat = t % 0.5
    snare = np.convolve(rng.standard_normal(n), np.ones(6) / 6, mode="same") * np.exp(-((t + 0.25) % 0.5) * 35)
    hats = np.diff(rng.standard_normal(n + 1)) * np.exp(-(t % 0.125) * 120)
    kick = np.sin(2 * np.pi * (50 * beat + 2.5 * (1 - np.exp(-beat * 40))))  # 150 Hz falling to 50 Hz, per beat
    drums = 0.5 * np.exp(-beat * 9) * kick + 0.12 * snare + 0.03 * hats
    bass_phase = np.cumsum(2 * np.pi * roots / SR)
    bass = 0.22 * np.tanh(2 * np.sin(bass_phase)) * (0.7 + 0.3 * np.exp(-(t % 0.25) * 10))
    other = sum(0.05 * np.sin(2 * np.pi * roots * 4 * r * t) for r in (1.0, 1.26, 1.5)) * (1 + 0.3 * np.sin(t))
    melody = roots * 4 * np.array([1.0, 1.125, 1.26, 1.5, 1.335, 1.125, 1.0, 0.89])[(t // 0.5).astype(int) % 8]
    phase = np.cumsum(2 * np.pi * melody * (1 + 0.012 * np.sin(2 * np.pi * 5.5 * t)) / SR)
    vocals = sum(0.07 / k * np.sin(k * phase) for k in range(1, 12)) * (0.5 + 0.5 * np.sin(np.pi * t / 4) ** 2)
    return {
        s: np.stack([a, g * a]).astype(np.float32)
        for s, a, g in zip(NI_SLOTS, (drums, bass, other, vocals), (0.92, 1.0, 0.7, 0.97), strict=True)
    }


def encode(path: Path, audio: np.ndarray, codec: str, bit_rate: int | None, fmt: str) -> float:
    """Encode audio (2, n) float32 with PyAV; returns seconds."""
    start = time.perf_counter()
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=SR, layout="stereo")
        sample_fmt = "s32p" if codec == "alac" else "fltp"
        st.codec_context.format = sample_fmt
        if bit_rate:
            st.codec_context.bit_rate = bit_rate
        step = 8192
        for a in range(0, audio.shape[1], step):
            block = np.clip(audio[:, a : a + step], -1, 1)
            if codec == "alac":
                block = np.round(block * (2**23 - 1)).astype(np.int32) << 8
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), sample_fmt, "stereo")
            frame.sample_rate, frame.pts = SR, a
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return time.perf_counter() - start


def median_time(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_block_s(path: Path) -> float:
    start = time.perf_counter()
    blocks = iter_audio_blocks(path, 4096)
    next(blocks)
    elapsed = time.perf_counter() - start
    blocks.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    args = ap.parse_args()
    stems = synth_stems(args.seconds)
    mix = sum(stems.values()).astype(np.float32)
    peak = float(np.abs(mix).max())
    if peak > 0.98:
        scale = 0.98 / peak
        stems = {s: (a * scale).astype(np.float32) for s, a in stems.items()}
        mix = (mix * scale).astype(np.float32)
    duration = mix.shape[1] / SR
    load_start = os.getloadavg()[0]
    decode_rows, write_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sources = {
            "MP3 (LAME 320 kb/s)": (d / "mix.mp3", "libmp3lame", 320_000, "mp3"),
            "M4A (AAC 256 kb/s)": (d / "mix.m4a", "aac", 256_000, "ipod"),
            "M4A (ALAC 24-bit)": (d / "alac.m4a", "alac", None, "ipod"),
        }
        for path, codec, rate, fmt in sources.values():
            encode(path, mix, codec, rate, fmt)
        sf.write(d / "mix.wav", mix.T, SR, subtype="PCM_24")
        sf.write(d / "mix.flac", mix.T, SR, subtype="PCM_24")
        sources["WAV (24-bit)"] = (d / "mix.wav", None, None, None)
        sources["FLAC (24-bit)"] = (d / "mix.flac", None, None, None)
        for label, (path, *_rest) in sources.items():
            audio, _ = read_audio(path)
            assert abs(audio.shape[1] - mix.shape[1]) <= 1, (label, audio.shape)
            t = median_time(lambda p=path: read_audio(p))
            decode_rows.append(
                {
                    "file": label,
                    "size_mb": round(path.stat().st_size / 1e6, 1),
                    "decode_s": round(t, 3),
                    "x_real_time": round(duration / t, 1),
                    "first_block_ms": round(1000 * median_time(lambda p=path: first_block_s(p)), 1),
                }
            )
            print(decode_rows[-1], flush=True)

        start, cpu_start = time.perf_counter(), time.process_time()
        out_dir = d / "wav_stems"
        with AtomicStemWriter(out_dir, list(NI_SLOTS), SR, 2) as writer:
            for s in NI_SLOTS:
                writer.write(s, stems[s])
        wav_s, wav_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        wav_bytes = sum(p.stat().st_size for p in out_dir.iterdir())
        write_rows.append(
            {
                "output": "4 WAV stems (24-bit)",
                "write_s": round(wav_s, 2),
                "write_cpu_s": round(wav_cpu_s, 2),
                "size_mb": round(wav_bytes / 1e6, 1),
                "vs_wav_stems": 1.0,
                "read_s": round(median_time(lambda: [read_audio(out_dir / f"{s}.wav") for s in NI_SLOTS], 1), 2),
                "sum_vs_mixture_snr_db": None,
            }
        )
        for codec, label in (("alac", "stem file, ALAC 24-bit"), ("aac", "stem file, AAC 256 kb/s per stream")):
            target = d / f"song_{codec}.stem.mp4"
            cpu_start = time.process_time()
            result = write_stem_file(target, mix, stems, SR, codec=codec, residual="other")
            cpu_s = time.process_time() - cpu_start
            start = time.perf_counter()
            back = read_stem_file(target)
            read_s = time.perf_counter() - start
            total = sum(back.stems.values())
            err = float(((back.mixture - total) ** 2).sum())
            snr = None if err == 0 else round(10 * np.log10(float((back.mixture**2).sum()) / err), 1)
            write_rows.append(
                {
                    "output": label,
                    "write_s": round(result.elapsed_s, 2),
                    "write_cpu_s": round(cpu_s, 2),
                    "size_mb": round(result.size_bytes / 1e6, 1),
                    "vs_wav_stems": round(result.size_bytes / wav_bytes, 3),
                    "read_s": round(read_s, 2),
                    "sum_vs_mixture_snr_db": "exact" if snr is None else snr,
                }
            )
            print(write_rows[-1], flush=True)
    results = {
        "audio_seconds": round(duration, 1),
        "sample_rate": SR,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "num_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at start, at end
        },
        "pyav": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "decode": decode_rows,
        "write": write_rows,
        "note": "synthetic audio; stems are the synthesized parts, not a model's output",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "file_formats.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [
        "# File formats",
        "",
        f"{duration:.0f} s of synthesized 44.1 kHz stereo (four synthetic stems and their sum; no MUSDB audio), "
        f"{os.cpu_count()}-core CPU shared with other jobs (1-minute load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end: times are inflated accordingly), PyAV {av.__version__} "
        f"(libavcodec {results['ffmpeg_libavcodec']}). Median of 3 runs. "
        "`first block`: time until `iter_audio_blocks` yields its first 4096 frames (when a deck can start).",
        "",
        "| file | MB | decode s | x real time | first block ms |",
        "|---|---|---|---|---|",
        *[
            f"| {r['file']} | {r['size_mb']} | {r['decode_s']} | {r['x_real_time']} | {r['first_block_ms']} |"
            for r in decode_rows
        ],
        "",
        "Writing the mixture and four stems: the stem files hold the mixture plus four stems (five streams); the WAV "
        "row is the four stems only, as `separate --format wav` writes them. `write CPU s`: CPU time of all threads "
        "(stem files encode their five streams on parallel threads), less affected by the machine's load than the "
        "wall time. `read s`: decoding it all back.",
        "",
        "| output | write s | write CPU s | MB | size vs WAV stems | read s | stems' sum vs mixture stream |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['output']} | {r['write_s']} | {r['write_cpu_s']} | {r['size_mb']} | {r['vs_wav_stems']} | "
            f"{r['read_s']} | "
            f"{'-' if r['sum_vs_mixture_snr_db'] is None else r['sum_vs_mixture_snr_db']} "
            f"{'dB' if isinstance(r['sum_vs_mixture_snr_db'], float) else ''} |"
            for r in write_rows
        ],
        "",
    ]
    (RESULTS / "file_formats.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
