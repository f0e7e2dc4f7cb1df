"""NI STEM files (.stem.mp4): the mixture and four stems in one MP4, as Traktor, Mixxx 2.6 and NI's hardware load.

The format (Native Instruments' published STEM specification, as NI's stem creator writes it with MP4Box and as
Mixxx's ``SoundSourceSTEM`` / ``StemInfoImporter`` read it):

* five stereo audio tracks of one codec (AAC, usually 256 kb/s, or ALAC): track 1 the mixture (the one enabled track,
  what an ordinary player plays), tracks 2-5 the stems in NI's slot order: drums, bass, other (synths, melody),
  vocals. A reader takes the slots by position; the names in the metadata are labels to show, never a way to reorder.
* ``moov/udta/stem``: a JSON box, ``{"version": 1, "mastering_dsp": {"compressor": {...}, "limiter": {...}},
  "stems": [{"name": "Drums", "color": "#009E73"}, ...]}``. ``mastering_dsp`` is the master bus processing Traktor
  applies to the summed stems; the format has no per-stem DSP (each stem entry carries only its name and colour).
  The stems written here are the mixture's own parts, so both processors are written disabled: the stems then sum to
  the mixture in Traktor too.
* iTunes tags (title, artist, cover, ...) in ``moov/udta/meta/ilst`` as in any M4A.

``read_stem_file`` decodes all five streams in one pass (priming removed, so all five are sample-aligned), and
``write_stem_file`` encodes them with FFmpeg's ALAC or AAC encoder (PyAV), lays the file out as MP4Box does
(``engine.mp4_boxes``; Debian has no MP4Box) and copies tags and cover art from the input with mutagen. Written
atomically: a hidden temporary file beside the target is renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stembridge.engine.audio_io import AudioFileError

NI_SLOTS = ("drums", "bass", "other", "vocals")  # streams 1-4, in this order
NI_NAMES = {"drums": "Drums", "bass": "Bass", "other": "Other", "vocals": "Vocals"}
NI_COLOURS = {"drums": "#009E73", "bass": "#D55E00", "other": "#CC79A7", "vocals": "#56B4E9"}
# NI stem creator's master-bus settings, disabled (see the module docstring)
MASTERING_DSP = {
    "compressor": {
        "enabled": False,
        "ratio": 3,
        "output_gain": 0.5,
        "release": 0.3,
        "attack": 0.003,
        "input_gain": 0.5,
        "threshold": 0,
        "hp_cutoff": 300,
        "dry_wet": 50,
    },
    "limiter": {"enabled": False, "release": 0.05, "threshold": 0, "ceiling": -0.35},
}
CODECS = ("alac", "aac")
AAC_BIT_RATE = 256_000  # per stream, NI's stem creator's rate
STEM_SUFFIXES = (".stem.mp4", ".stem.m4a")
ENCODE_BLOCK = 8192
ENCODE_SPAN = 16 * ENCODE_BLOCK  # frames each encoder thread takes at a time
PCM24_SCALE = float(1 << 23)
EXACT_SUM_TOLERANCE = 1e-5  # stems this close to summing to the mixture are made to sum exactly (ALAC)


@dataclass
class StemFile:
    """A decoded stem file. mixture: float32 (num_channels, num_frames); stems: NI slot -> float32 array of the
    same shape, in slot order (drums, bass, other, vocals); names/colours: the file's own labels, in slot order."""

    path: Path
    sample_rate: int
    mixture: np.ndarray
    stems: dict[str, np.ndarray]
    names: list[str]
    colours: list[str]
    codec: str
    metadata: dict | None

    @property
    def num_frames(self) -> int:
        return self.mixture.shape[1]


@dataclass
class StemWriteResult:
    path: Path
    codec: str
    bit_rate: int | None  # per stream, AAC only
    num_clipped: int
    size_bytes: int
    elapsed_s: float


def stem_file_name(input_path: Path) -> str:
    """``<name>.stem.mp4`` for an input (``song.stem.mp4`` re-separated stays ``song.stem.mp4``)."""
    name = input_path.name
    for suffix in (*STEM_SUFFIXES, input_path.suffix):
        if suffix and name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}.stem.mp4"


def read_stem_metadata(path: str | Path) -> dict | None:
    """The JSON of a file's ``moov/udta/stem`` box, None when it has none. Raises ``AudioFileError`` when the box
    is there but is not valid JSON."""
    from stembridge.engine.mp4_boxes import read_box

    raw = read_box(path, [b"moov", b"udta", b"stem"])
    if raw is None:
        return None
    try:
        meta = json.loads(raw.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioFileError(f"{path}: its NI stem metadata box is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise AudioFileError(f"{path}: its NI stem metadata box is not a JSON object")
    return meta


def is_stem_file(path: str | Path) -> bool:
    """An MP4 with NI's stem box (how Mixxx tells), or a ``.stem.mp4``/``.stem.m4a`` with five audio streams."""
    from stembridge.engine.mp4_boxes import is_mp4, read_box

    p = Path(path)
    if not p.is_file() or not is_mp4(p):
        return False
    if read_box(p, [b"moov", b"udta", b"stem"]) is not None:
        return True
    if not p.name.lower().endswith(STEM_SUFFIXES):
        return False
    from stembridge.engine.decode import audio_streams, open_container

    try:
        container = open_container(p)
    except AudioFileError:
        return False
    try:
        return len(audio_streams(container)) == 1 + len(NI_SLOTS)
    finally:
        container.close()


def read_stem_file(path: str | Path) -> StemFile:
    """Decode a stem file: mixture (stream 0) and the four stems (streams 1-4, NI's slot order). Raises
    ``AudioFileError`` for files that are not stem files, have mismatched streams, or are damaged."""
    from stembridge.engine.decode import audio_streams, check_readable, decode_all_streams, open_container

    p = check_readable(path)
    meta = read_stem_metadata(p)
    container = open_container(p)
    streams = audio_streams(container)
    if len(streams) != 1 + len(NI_SLOTS):
        container.close()
        raise AudioFileError(
            f"{p}: not an NI stem file: it has {len(streams)} audio stream(s); a stem file has 5 "
            "(the mixture, then drums, bass, other, vocals)"
        )
    rates = {s.codec_context.sample_rate for s in streams}
    channels = {s.codec_context.channels for s in streams}
    if len(rates) != 1 or len(channels) != 1 or max(channels) > 2:
        container.close()
        raise AudioFileError(
            f"{p}: its five streams differ in rate or channels, or have more than two channels "
            f"(rates {sorted(rates)}, channels {sorted(channels)})"
        )
    codec = streams[0].codec_context.name
    arrays = decode_all_streams(p, container, streams)
    lengths = [a.shape[1] for a in arrays]
    rate = rates.pop()
    if max(lengths) - min(lengths) > max(2048, rate // 100):
        raise AudioFileError(f"{p}: its five streams have different lengths ({lengths} frames); the file is damaged")
    n = min(lengths)
    arrays = [np.ascontiguousarray(a[:, :n]) for a in arrays]
    names, colours = _labels(meta)
    return StemFile(p, int(rate), arrays[0], dict(zip(NI_SLOTS, arrays[1:], strict=True)), names, colours, codec, meta)


def _labels(meta: dict | None) -> tuple[list[str], list[str]]:
    entries = meta.get("stems") if isinstance(meta, dict) else None
    names, colours = [], []
    for i, slot in enumerate(NI_SLOTS):
        entry = entries[i] if isinstance(entries, list) and i < len(entries) and isinstance(entries[i], dict) else {}
        name, colour = entry.get("name"), entry.get("color")
        names.append(name if isinstance(name, str) and name else NI_NAMES[slot])
        colours.append(colour if isinstance(colour, str) and colour.startswith("#") else NI_COLOURS[slot])
    return names, colours


def stem_metadata_json(names: list[str] | None = None, colours: list[str] | None = None) -> bytes:
    """The ``stem`` box's JSON: version 1, NI's mastering_dsp (disabled), one name/colour entry per slot."""
    names = names or [NI_NAMES[s] for s in NI_SLOTS]
    colours = colours or [NI_COLOURS[s] for s in NI_SLOTS]
    meta = {
        "version": 1,
        "mastering_dsp": MASTERING_DSP,
        "stems": [{"name": n, "color": c} for n, c in zip(names, colours, strict=True)],
    }
    return json.dumps(meta).encode("utf-8")


def write_stem_file(
    target: str | Path,
    mixture: np.ndarray,
    stems: dict[str, np.ndarray],
    sample_rate: int,
    *,
    codec: str = "alac",
    bit_rate: int = AAC_BIT_RATE,
    tags_from: str | Path | None = None,
    residual: str | None = None,
    overwrite: bool = False,
) -> StemWriteResult:
    """Write an NI stem file. mixture: float32 (num_channels, n), mono or stereo (mono is written as stereo, as the
    format requires); stems: one array of the same shape per NI slot (drums, bass, other, vocals).

    codec "alac": 24-bit lossless; each stream decodes to exactly its 24-bit quantised input. With ``residual`` (the
    stem that is the mixture minus the others, e.g. "other") and stems that sum to the mixture within 1e-5, that stem
    takes the rounding, so the decoded stems sum to the decoded mixture exactly. codec "aac": FFmpeg's AAC encoder at
    ``bit_rate`` b/s per stream (256 kb/s as NI's stem creator), priming recorded in each track's edit list so all five
    decode sample-aligned. Samples beyond +-1 are clipped and counted. ``tags_from``: copy title, artist, album, date,
    genre, track, BPM, key and cover art from this file. Raises ``AudioFileError`` (bad input, existing target
    without ``overwrite``); nothing is left behind on failure.
    """
    from stembridge.engine.mp4_boxes import Mp4Error, finish_stem_mp4

    start = time.perf_counter()
    target = Path(target)
    if codec not in CODECS:
        raise AudioFileError(f"unknown stem file codec {codec!r} (choose from {', '.join(CODECS)})")
    if residual is not None and residual not in NI_SLOTS:
        raise AudioFileError(f"residual stem {residual!r} is not one of {', '.join(NI_SLOTS)}")
    if target.exists() and not overwrite:
        raise AudioFileError(f"output exists (use --overwrite to replace): {target}")
    streams, num_clipped = _prepare_streams(mixture, stems, codec, residual)
    target.parent.mkdir(parents=True, exist_ok=True)
    encoded = target.with_name(f".{target.name}.{os.getpid()}.encode.partial")
    finished = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        _encode(encoded, streams, sample_rate, codec, bit_rate)
        names = [NI_NAMES[s] for s in NI_SLOTS]
        finish_stem_mp4(encoded, finished, stem_metadata_json(names))
        if tags_from is not None:
            copy_tags(Path(tags_from), finished)
        os.replace(finished, target)
    except Mp4Error as exc:
        raise AudioFileError(f"{target}: could not lay out the stem file: {exc}") from exc
    finally:
        encoded.unlink(missing_ok=True)
        finished.unlink(missing_ok=True)
    return StemWriteResult(
        target,
        codec,
        bit_rate if codec == "aac" else None,
        num_clipped,
        target.stat().st_size,
        time.perf_counter() - start,
    )


def _prepare_streams(
    mixture: np.ndarray, stems: dict[str, np.ndarray], codec: str, residual: str | None
) -> tuple[list[np.ndarray], int]:
    """The five streams, stereo, clipped: int32 24-bit values for ALAC (the residual stem absorbing the rounding),
    float32 for AAC. Returns (streams, number of clipped samples)."""
    missing = [s for s in NI_SLOTS if s not in stems]
    if missing:
        raise AudioFileError(f"a stem file needs all four stems ({', '.join(NI_SLOTS)}); missing {', '.join(missing)}")
    if mixture.ndim != 2 or mixture.shape[0] not in (1, 2) or mixture.shape[1] == 0:
        raise AudioFileError(f"the mixture must be (1 or 2 channels, frames) with audio; got shape {mixture.shape}")
    arrays = [mixture] + [stems[s] for s in NI_SLOTS]
    for slot, a in zip(("mixture", *NI_SLOTS), arrays, strict=True):
        if a.shape != mixture.shape:
            raise AudioFileError(f"stem {slot} has shape {a.shape}; the mixture has {mixture.shape}")
    arrays = [np.repeat(a, 2, axis=0) if a.shape[0] == 1 else a for a in arrays]
    num_clipped = sum(int((np.abs(a) > 1.0).sum()) for a in arrays)
    if codec == "aac":
        return [np.clip(a, -1.0, 1.0).astype(np.float32) for a in arrays], num_clipped
    ints = [np.clip(np.round(a.astype(np.float64) * PCM24_SCALE), -PCM24_SCALE, PCM24_SCALE - 1) for a in arrays]
    if residual is not None and _sums_to_mixture(mixture, stems):
        k = 1 + NI_SLOTS.index(residual)
        exact = ints[0] - sum(ints[i] for i in range(1, 5) if i != k)
        if np.abs(exact).max() < PCM24_SCALE:
            ints[k] = exact
    return [i.astype(np.int32) for i in ints], num_clipped


def _sums_to_mixture(mixture: np.ndarray, stems: dict[str, np.ndarray]) -> bool:
    total = sum(stems[s].astype(np.float64) for s in NI_SLOTS)
    return float(np.abs(mixture.astype(np.float64) - total).max()) <= EXACT_SUM_TOLERANCE


def _encode(path: Path, streams: list[np.ndarray], sample_rate: int, codec: str, bit_rate: int) -> None:
    """Five stereo streams (int32 24-bit values for ALAC, float32 for AAC) into one MP4 with PyAV.

    Each stream's encoder runs on its own worker thread (PyAV releases the GIL inside FFmpeg's encoder), a few
    seconds of audio at a time; this thread muxes the packets in order."""
    import av

    av.logging.set_level(av.logging.FATAL)
    fmt = "s32p" if codec == "alac" else "fltp"
    try:
        out = av.open(str(path), "w", format="mp4")
    except av.error.FFmpegError as exc:
        raise AudioFileError(f"{path}: cannot create ({exc.strerror or exc})") from exc

    def encode_span(st, data: np.ndarray, a: int) -> list:
        packets = []
        for b in range(a, min(a + ENCODE_SPAN, data.shape[1]), ENCODE_BLOCK):
            block = data[:, b : b + ENCODE_BLOCK]
            if codec == "alac":
                block = block << 8  # 24-bit values in the top bits of s32, as FFmpeg's ALAC encoder expects
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt, layout="stereo")
            frame.sample_rate = sample_rate
            frame.pts = b
            packets += st.encode(frame)
        return packets

    try:
        encoders = []
        for _ in streams:
            st = out.add_stream(codec, rate=sample_rate, layout="stereo")
            st.codec_context.format = fmt
            if codec == "aac":
                st.codec_context.bit_rate = bit_rate
            encoders.append(st)
        workers = max(1, min(len(streams), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="stembridge-encode") as pool:
            for a in range(0, streams[0].shape[1], ENCODE_SPAN):
                spans = [pool.submit(encode_span, st, d, a) for st, d in zip(encoders, streams, strict=True)]
                for span in spans:
                    for packet in span.result():
                        out.mux(packet)
        for st in encoders:
            for packet in st.encode(None):
                out.mux(packet)
    except av.error.FFmpegError as exc:
        raise AudioFileError(f"{path}: encoding the stem file failed ({exc.strerror or exc})") from exc
    finally:
        out.close()


# FFmpeg's metadata keys (lower-cased) -> MP4 (iTunes) atoms
_TEXT_TAGS = {
    "title": "\xa9nam",
    "artist": "\xa9ART",
    "album": "\xa9alb",
    "album_artist": "aART",
    "date": "\xa9day",
    "genre": "\xa9gen",
    "composer": "\xa9wrt",
    "comment": "\xa9cmt",
    "copyright": "cprt",
}
_BPM_KEYS = ("tbpm", "bpm", "tmpo")
_KEY_KEYS = ("tkey", "initialkey", "key")
_LABEL_KEYS = ("publisher", "label", "organization")


def read_tags(path: Path) -> tuple[dict[str, str], bytes | None]:
    """(FFmpeg's tags with lower-cased keys, the cover picture's bytes or None) of any file FFmpeg reads."""
    import av
    from stembridge.engine.decode import open_container

    container = open_container(path)
    try:
        tags = {str(k).lower(): str(v) for k, v in container.metadata.items()}
        cover = None
        for s in container.streams:
            if s.type == "audio" and s.index == 0:
                tags = {**{str(k).lower(): str(v) for k, v in s.metadata.items()}, **tags}
            if s.type == "video" and s.disposition & av.stream.Disposition.attached_pic:
                for packet in container.demux(s):
                    if packet.size:
                        cover = bytes(packet)
                        break
                break
    finally:
        container.close()
    return tags, cover


def copy_tags(source: Path, mp4: Path) -> None:
    """Copy title, artist, album, date, genre, composer, track/disc, BPM, key, label and cover art from ``source``
    into the MP4 ``mp4`` (mutagen). Tags the source lacks are left out."""
    from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

    tags, cover = read_tags(source)
    out = MP4(str(mp4))
    if out.tags is None:
        out.add_tags()
    for key, atom in _TEXT_TAGS.items():
        if tags.get(key):
            out.tags[atom] = [tags[key]]
    for key, atom in (("track", "trkn"), ("disc", "disk")):
        pair = _number_pair(tags.get(key))
        if pair:
            out.tags[atom] = [pair]
    bpm = next((tags[k] for k in _BPM_KEYS if tags.get(k)), None)
    if bpm:
        try:
            out.tags["tmpo"] = [int(round(float(bpm)))]
        except ValueError:
            pass
    for keys, name in ((_KEY_KEYS, "initialkey"), (_LABEL_KEYS, "LABEL")):
        value = next((tags[k] for k in keys if tags.get(k)), None)
        if value:
            out.tags[f"----:com.apple.iTunes:{name}"] = [MP4FreeForm(value.encode("utf-8"))]
    if cover:
        if cover.startswith(b"\x89PNG"):
            out.tags["covr"] = [MP4Cover(cover, imageformat=MP4Cover.FORMAT_PNG)]
        elif cover.startswith(b"\xff\xd8"):
            out.tags["covr"] = [MP4Cover(cover, imageformat=MP4Cover.FORMAT_JPEG)]
    out.save()


def _number_pair(value: str | None) -> tuple[int, int] | None:
    """ "3/12" -> (3, 12), "3" -> (3, 0); None when absent or not a number."""
    if not value:
        return None
    parts = value.split("/")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError:
        return None
