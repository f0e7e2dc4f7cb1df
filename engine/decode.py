"""Decoding audio files: libsndfile where it is exact, FFmpeg (through PyAV) for everything else.

Two decoders, one contract: float32 ``(num_channels, num_frames)`` blocks, sample-aligned with what FFmpeg and other
players decode, and an ``AudioFileError`` naming the file and where it broke instead of a silently shortened result.

* soundfile (libsndfile) reads WAV (also WAVE_FORMAT_EXTENSIBLE, RF64, W64), AIFF, FLAC and Ogg Vorbis: PCM is copied
  exactly and it is the fastest path. libsndfile quietly shortens a WAV or AIFF whose data was cut off, so their headers
  are read here (the frame count the header declares) and compared with what is there.
* PyAV (FFmpeg's libraries, shipped in its wheel) reads the rest: AAC/M4A, ALAC, MP3, Opus, anything FFmpeg reads.
  Encoder priming is honoured the way FFmpeg's own command line honours it: the MP4 edit list (or an ``iTunSMPB`` tag)
  and the MP3 LAME/Xing header say how many samples of encoder delay to skip, FFmpeg's decoder drops them and
  timestamps the first kept sample as 0. The padding after the end is cut here: an MP4's last packet states how many of
  its samples are real (FFmpeg itself decodes the whole last AAC frame), and an ``iTunSMPB`` tag states the length.

Damage is reported, not concealed: a packet FFmpeg cannot decode, a hole in the timestamps (an Ogg page or an MP4
sample that did not decode), or audio that ends before the length its header declares (an MP4 index, a FLAC
STREAMINFO, an AIFF COMM chunk, a WAV data chunk, an MP3 Xing/Info/VBRI frame) raise ``AudioFileError`` with the time
where the audio breaks. Formats that declare no length (Ogg, MP3 without a Xing frame, ADTS AAC) cannot reveal a clean
cut at a page or frame boundary; those are decoded as far as they go.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from stembridge.engine.audio_io import AudioFileError

SOUNDFILE_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "FLAC"}  # plus OGG when the codec is Vorbis
SOUNDFILE_BLOCK = 65536
MP4_FORMAT_NAMES = ("mov", "mp4", "m4a")


def check_readable(path: str | Path) -> Path:
    """The file exists, is a readable, non-empty regular file; returns it as a Path."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: file not found")
    if p.is_dir():
        raise AudioFileError(f"{p}: is a folder, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioFileError(f"{p}: permission denied (cannot read)")
    if p.stat().st_size == 0:
        raise AudioFileError(f"{p}: file is empty (0 bytes)")
    return p


class DamagedAudioError(AudioFileError):
    """A file that decodes up to a point: ``where`` says where it breaks ("at 2.93 s, byte 688406")."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass
class AudioSource:
    """An opened audio file: its rate, channels, declared length and a generator of decoded blocks.

    ``chunks()`` yields float32 (num_channels, n) blocks of varying n in file order; it raises ``AudioFileError`` when
    the file turns out to be damaged (after yielding the audio before the damage). Single use.
    """

    path: Path
    sample_rate: int
    num_channels: int
    num_frames: int | None  # what the header declares, None when the format declares nothing
    backend: str  # "soundfile" or "ffmpeg"
    codec: str
    _chunks: Iterator[np.ndarray] = field(repr=False)
    _close: Callable[[], None] | None = field(repr=False, default=None)

    def chunks(self) -> Iterator[np.ndarray]:
        return self._chunks

    def close(self) -> None:
        """Release the file without decoding (or before decoding to the end)."""
        self._chunks.close()
        if self._close is not None:
            self._close()


def open_audio(path: str | Path) -> AudioSource:
    """Open a file for decoding (soundfile where it is exact, else FFmpeg). Raises ``AudioFileError``."""
    p = check_readable(path)
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        info = None
    if info is not None and (info.format in SOUNDFILE_FORMATS or (info.format == "OGG" and info.subtype == "VORBIS")):
        return _open_soundfile(p, info)
    return _open_ffmpeg(p)


# -- soundfile --


def _open_soundfile(p: Path, info) -> AudioSource:
    declared = _declared_pcm_frames(p, info.format)
    if declared is not None and declared > info.frames:
        rate = info.samplerate
        raise AudioFileError(
            f"{p}: truncated: its header declares {declared / rate:.2f} s of audio but the file holds only "
            f"{info.frames / rate:.2f} s (it breaks at {info.frames / rate:.2f} s)"
        )
    return AudioSource(
        p, int(info.samplerate), int(info.channels), int(info.frames), "soundfile", info.subtype, _sf_chunks(p, info)
    )


def _sf_chunks(p: Path, info) -> Iterator[np.ndarray]:
    rate, done = info.samplerate, 0
    try:
        with sf.SoundFile(str(p)) as f:
            while True:
                block = f.read(SOUNDFILE_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                done += block.shape[0]
                yield np.ascontiguousarray(block.T)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        where = _locate_damage(p)
        raise AudioFileError(
            f"{p}: cannot decode audio {where or f'after {done / rate:.2f} s'} (corrupt or truncated data): {exc}"
        ) from exc
    if done < info.frames:  # e.g. an Ogg Vorbis file with damaged pages: libsndfile skips them
        raise AudioFileError(
            f"{p}: damaged: {info.frames / rate:.2f} s of audio declared but only {done / rate:.2f} s decode "
            f"(corrupt or missing data; it breaks at or before {done / rate:.2f} s)"
        )


def _declared_pcm_frames(p: Path, fmt: str) -> int | None:
    """The frame count a WAV data chunk or an AIFF COMM chunk declares (None when unknown or not applicable)."""
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if fmt in ("WAV", "WAVEX") and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        block_align, data_size = None, None
        for cid, off, size in _riff_chunks(head, 12, "<"):
            if cid == b"fmt " and size >= 14:
                block_align = struct.unpack_from("<H", head, off + 12)[0]
            elif cid == b"data":
                data_size = size
                break
        if block_align and data_size not in (None, 0, 0xFFFFFFFF):
            return data_size // block_align
    if fmt == "AIFF" and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        for cid, off, size in _riff_chunks(head, 12, ">"):
            if cid == b"COMM" and size >= 6:
                return struct.unpack_from(">I", head, off + 2)[0]
    return None


def _locate_damage(p: Path) -> str | None:
    """Where FFmpeg's decoder finds a file damaged ("at 2.93 s, byte 688406"), to say where libsndfile gave up."""
    try:
        source = _open_ffmpeg(p)
        for _ in source.chunks():
            pass
    except DamagedAudioError as exc:
        return exc.where
    except AudioFileError:
        return None
    return None


def _riff_chunks(head: bytes, pos: int, endian: str) -> Iterator[tuple[bytes, int, int]]:
    """(chunk id, data offset, declared size) of the chunks that start within ``head``."""
    while pos + 8 <= len(head):
        cid = head[pos : pos + 4]
        size = struct.unpack_from(endian + "I", head, pos + 4)[0]
        yield cid, pos + 8, size
        pos += 8 + size + (size & 1)


# -- FFmpeg (PyAV) --


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise AudioFileError("decoding this format needs PyAV: pip install av") from exc
    return av


def open_container(p: Path):
    """An opened PyAV input container, with FFmpeg's failure turned into a message a user can act on."""
    av = _av()
    av.logging.set_level(av.logging.FATAL)  # failures become AudioFileErrors; FFmpeg's own lines would repeat them
    try:
        return av.open(str(p), "r")
    except av.error.FFmpegError as exc:
        from stembridge.engine.mp4_boxes import mp4_problem

        problem = mp4_problem(p)
        if problem:
            raise AudioFileError(f"{p}: {problem}") from exc
        raise AudioFileError(
            f"{p}: cannot decode audio: not a format FFmpeg reads, or the file is corrupt ({exc.strerror or exc})"
        ) from exc


class StreamDecoder:
    """Decodes one audio stream of a PyAV container packet by packet, with priming, padding and damage checks.

    ``decode(packet)`` / ``flush()`` return a list of float32 (num_channels, n) blocks that continue the stream without
    gaps; ``finish()`` checks the length against the header's. Not thread-safe; one per stream.
    """

    def __init__(self, p: Path, container, stream) -> None:
        self.path = p
        self.stream = stream
        ctx = stream.codec_context
        self.sample_rate = int(ctx.sample_rate)
        self.num_channels = int(ctx.channels)
        self.codec = ctx.name
        self.time_base = stream.time_base
        self.num_done = 0  # frames returned so far
        self._origin: float | None = None  # time (s) of the first decoded sample
        self._end_s: float | None = None  # end of the latest packet (s)
        self._cap = _itunsmpb_length(container)
        self._tolerance = max(2 * (ctx.frame_size or 1024), self.sample_rate // 100)
        self.num_frames = self._declared_frames(container)

    def _declared_frames(self, container) -> int | None:
        s, fmt = self.stream, container.format.name
        if s.duration is None or s.duration <= 0:
            return None
        declared = int(round(float(s.duration * self.time_base) * self.sample_rate))
        if any(name in fmt for name in MP4_FORMAT_NAMES) or fmt in ("flac", "aiff"):
            return min(declared, self._cap) if self._cap else declared
        if fmt == "mp3" and _has_mp3_length_frame(self.path):
            return declared
        return None

    def _where(self, packet) -> str:
        t = self.num_done / self.sample_rate
        if packet is not None and packet.pts is not None:
            t = float(packet.pts * self.time_base) - (self._origin or 0.0)
        pos = f", byte {packet.pos}" if packet is not None and packet.pos is not None and packet.pos >= 0 else ""
        return f"at {max(t, 0.0):.2f} s{pos}"

    def decode(self, packet) -> list[np.ndarray]:
        if packet.pts is not None and packet.duration:
            end = float((packet.pts + packet.duration) * self.time_base)
            self._end_s = end if self._end_s is None else max(self._end_s, end)
        return self._run(packet)

    def flush(self) -> list[np.ndarray]:
        return self._run(None)

    def _run(self, packet) -> list[np.ndarray]:
        av = _av()
        try:
            frames = self.stream.decode(packet)
        except av.error.FFmpegError as exc:
            from stembridge.engine.mp4_boxes import mp4_problem

            problem = mp4_problem(self.path)
            where = self._where(packet)
            raise DamagedAudioError(
                f"{self.path}: corrupt or missing audio data {where} (stream {self.stream.index}, "
                f"{self.codec}): {exc.strerror or exc}" + (f"; {problem}" if problem else ""),
                where,
            ) from exc
        out = []
        for frame in frames:
            block = frame_to_float(frame)
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            if self._origin is None:
                self._origin = t if t is not None else 0.0
            elif t is not None:
                gap = t - self._origin - self.num_done / self.sample_rate
                if gap * self.sample_rate > self._tolerance:
                    where = f"at {self.num_done / self.sample_rate:.2f} s"
                    raise DamagedAudioError(
                        f"{self.path}: {gap:.3f} s of audio missing {where} "
                        f"(corrupt or damaged data in stream {self.stream.index})",
                        where,
                    )
            limit = self._limit()
            if limit is not None and self.num_done + block.shape[1] > limit:
                block = block[:, : max(0, limit - self.num_done)]
            if block.shape[1]:
                self.num_done += block.shape[1]
                out.append(block)
        return out

    def _limit(self) -> int | None:
        limits = [self._cap] if self._cap else []
        if self._end_s is not None and self._origin is not None:
            limits.append(int(round((self._end_s - self._origin) * self.sample_rate)))
        return min(limits) if limits else None

    def finish(self) -> None:
        """Raise ``AudioFileError`` when the stream ended well before the length its header declares."""
        if self.num_done == 0:
            raise AudioFileError(f"{self.path}: contains no audio frames (stream {self.stream.index})")
        if self.num_frames is not None and self.num_done < self.num_frames - self._tolerance:
            rate = self.sample_rate
            where = f"at {self.num_done / rate:.2f} s"
            raise DamagedAudioError(
                f"{self.path}: truncated or damaged: the audio ends at {self.num_done / rate:.2f} s but the file "
                f"declares {self.num_frames / rate:.2f} s (it breaks {where})",
                where,
            )


def frame_to_float(frame) -> np.ndarray:
    """A PyAV AudioFrame as float32 (num_channels, n): integer PCM scaled by its full range (24-bit ALAC in s32 stays
    exact), packed layouts deinterleaved."""
    a = frame.to_ndarray()
    if not frame.format.is_planar:
        a = a.reshape(-1, len(frame.layout.channels)).T
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return ((a.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    scale = np.float32(1.0 / (1 << (8 * a.dtype.itemsize - 1)))
    return a.astype(np.float32) * scale


def audio_streams(container) -> list:
    return [s for s in container.streams if s.type == "audio"]


def _open_ffmpeg(p: Path) -> AudioSource:
    container = open_container(p)
    streams = audio_streams(container)
    if not streams:
        container.close()
        raise AudioFileError(f"{p}: contains no audio stream")
    dec = StreamDecoder(p, container, streams[0])
    return AudioSource(
        p,
        dec.sample_rate,
        dec.num_channels,
        dec.num_frames,
        "ffmpeg",
        dec.codec,
        _ffmpeg_chunks(container, dec),
        container.close,
    )


def _ffmpeg_chunks(container, dec: StreamDecoder) -> Iterator[np.ndarray]:
    av = _av()
    try:
        packets = container.demux(dec.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise AudioFileError(
                    f"{dec.path}: cannot read past {dec.num_done / dec.sample_rate:.2f} s (damaged file): "
                    f"{exc.strerror or exc}"
                ) from exc
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            yield from dec.decode(packet)
        yield from dec.flush()
        dec.finish()
    finally:
        container.close()


def decode_all_streams(p: Path, container, streams: list) -> list[np.ndarray]:
    """Decode several audio streams of one container in one pass: one float32 (num_channels, n) array each.
    The container is closed afterwards."""
    av = _av()
    order = [s.index for s in streams]  # read before closing: a closed container's streams are gone
    decoders = {s.index: StreamDecoder(p, container, s) for s in streams}
    parts: dict[int, list[np.ndarray]] = {i: [] for i in decoders}
    try:
        packets = container.demux(*streams)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise AudioFileError(f"{p}: cannot read the file to its end (damaged): {exc.strerror or exc}") from exc
            if packet.size == 0:
                continue
            parts[packet.stream.index] += decoders[packet.stream.index].decode(packet)
        for i, dec in decoders.items():
            parts[i] += dec.flush()
            dec.finish()
    finally:
        container.close()
    return [np.concatenate(parts[i], axis=1) for i in order]


def _itunsmpb_length(container) -> int | None:
    """The real length in frames from an iTunes gapless tag ('iTunSMPB': priming, padding, length in hex)."""
    value = container.metadata.get("iTunSMPB") or container.metadata.get("itunsmpb")
    if not value:
        return None
    try:
        fields = [int(x, 16) for x in value.split()]
    except ValueError:
        return None
    return fields[3] if len(fields) >= 4 and fields[3] > 0 else None


def _has_mp3_length_frame(p: Path) -> bool:
    """Whether an MP3 starts with a Xing/Info/VBRI frame (its frame count is then the file's real length)."""
    try:
        with open(p, "rb") as f:
            head = f.read(10)
            start = 0
            if head[:3] == b"ID3" and len(head) == 10:
                start = 10 + ((head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9])
            f.seek(start)
            first = f.read(4096)
    except OSError:
        return False
    return any(tag in first[:200] for tag in (b"Xing", b"Info", b"VBRI"))
