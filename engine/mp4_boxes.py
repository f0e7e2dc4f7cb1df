"""Just enough of the ISO base media file format (MP4 boxes) to read and write NI's stem metadata.

Debian 12 has no MP4Box (gpac), which NI's stem creator and stempeg call to add the ``stem`` box; this module does the
same few things itself:

* find a box by path (``moov/udta/stem``, the way Mixxx's stem reader does) and tell a truncated MP4 from a bad one;
* ``finish_stem_mp4``: rewrite an FFmpeg-written MP4 the way MP4Box lays out a stem file: NI's ``ftyp`` brands
  (``M4A `` with ``isom``, ``M4A ``, ``mp42``), track 1 enabled and tracks 2-5 disabled in their ``tkhd`` flags, the
  JSON ``stem`` box appended to ``moov/udta``, and ``moov`` moved before ``mdat`` ("fast start"), every ``stco`` /
  ``co64`` chunk offset shifted by how far ``mdat`` moved. The media data is copied byte for byte.

Boxes: a 32-bit big-endian size (1: a 64-bit size follows the type; 0: to the end of the file), a 4-character type,
then the payload. Container boxes hold boxes; ``meta`` is kept as opaque bytes (mutagen writes the iTunes tags in it).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf"}
NI_FTYP = b"M4A " + struct.pack(">I", 1) + b"isom" + b"M4A " + b"mp42"


class Mp4Error(Exception):
    """A malformed MP4; the message says which box."""


@dataclass
class Box:
    type: bytes
    payload: bytes = b""  # leaf boxes
    children: list[Box] = field(default_factory=list)  # container boxes

    @property
    def is_container(self) -> bool:
        return self.type in CONTAINERS

    def find(self, kind: bytes) -> list[Box]:
        return [c for c in self.children if c.type == kind]

    def walk(self) -> Iterator[Box]:
        yield self
        for c in self.children:
            yield from c.walk()

    def to_bytes(self) -> bytes:
        body = b"".join(c.to_bytes() for c in self.children) if self.is_container else self.payload
        size = 8 + len(body)
        if size >= 1 << 32:
            return struct.pack(">I4sQ", 1, self.type, size + 8) + body
        return struct.pack(">I4s", size, self.type) + body


def iter_boxes(f, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, offset, header size, total size) of the boxes in f between start and end."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:
            if len(head) < 16:
                return
            size = struct.unpack(">Q", head[8:16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise Mp4Error(f"box {kind!r} at byte {pos} has an impossible size {size}")
        yield kind, pos, header, size
        pos += size


def parse_box(data: bytes, kind: bytes) -> Box:
    """A box tree from a box's payload bytes."""
    if kind not in CONTAINERS:
        return Box(kind, payload=data)
    box = Box(kind)
    pos = 0
    while pos + 8 <= len(data):
        size, child = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            raise Mp4Error(f"box {child!r} inside {kind!r} overruns its parent")
        box.children.append(parse_box(data[pos + header : pos + size], child))
        pos += size
    return box


def read_box(path: str | Path, box_path: list[bytes]) -> bytes | None:
    """The payload of the box at ``box_path`` (e.g. [b"moov", b"udta", b"stem"]), or None when absent or the file
    is not an MP4."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            end = p.stat().st_size
            start = 0
            for depth, kind in enumerate(box_path):
                for found, pos, header, size in iter_boxes(f, start, end):
                    if found == kind:
                        start, end = pos + header, min(pos + size, end)
                        break
                else:
                    return None
                if depth == len(box_path) - 1:
                    f.seek(start)
                    return f.read(end - start)
    except (OSError, Mp4Error):
        return None
    return None


def is_mp4(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp"


def mp4_problem(path: str | Path) -> str | None:
    """What is wrong with an MP4 FFmpeg could not open (a missing index, a box cut off), or None."""
    p = Path(path)
    if not is_mp4(p):
        return None
    size = p.stat().st_size
    kinds = []
    try:
        with open(p, "rb") as f:
            for kind, pos, _header, box_size in iter_boxes(f, 0, size):
                kinds.append(kind)
                if pos + box_size > size:
                    return (
                        f"truncated MP4: its {kind.decode('latin-1')!r} box declares {box_size} bytes at byte {pos} "
                        f"but the file ends {pos + box_size - size} bytes short"
                        + ("" if b"moov" in kinds else "; its 'moov' index is missing, so nothing can be decoded")
                    )
    except Mp4Error as exc:
        return f"damaged MP4: {exc}"
    if b"moov" not in kinds:
        return "incomplete MP4: it has no 'moov' index box (a truncated file or an unfinished download)"
    return None


def finish_stem_mp4(src: Path, dst: Path, stem_json: bytes) -> None:
    """Write ``dst``: ``src`` (an FFmpeg-written MP4 with the five stem tracks) laid out as NI's stem files are.

    See the module docstring. Raises ``Mp4Error`` if ``src`` is not a single-``mdat`` MP4."""
    size = src.stat().st_size
    with open(src, "rb") as f:
        top = list(iter_boxes(f, 0, size))
        kinds = [k for k, *_ in top]
        if kinds.count(b"moov") != 1 or kinds.count(b"mdat") != 1:
            raise Mp4Error(f"{src}: expected one moov and one mdat box, found {[k.decode('latin-1') for k in kinds]}")
        _, moov_pos, moov_header, moov_size = top[kinds.index(b"moov")]
        _, mdat_pos, _mdat_header, mdat_size = top[kinds.index(b"mdat")]
        f.seek(moov_pos + moov_header)
        moov = parse_box(f.read(moov_size - moov_header), b"moov")
    for i, trak in enumerate(moov.find(b"trak")):
        for tkhd in trak.find(b"tkhd"):  # version (1 byte) + flags (3 bytes): NI enables track 1 only
            tkhd.payload = tkhd.payload[:1] + (1 if i == 0 else 0).to_bytes(3, "big") + tkhd.payload[4:]
    udtas = moov.find(b"udta")
    udta = udtas[0] if udtas else Box(b"udta")
    if not udtas:
        moov.children.append(udta)
    udta.children = [c for c in udta.children if c.type != b"stem"] + [Box(b"stem", payload=stem_json)]
    ftyp = Box(b"ftyp", payload=NI_FTYP).to_bytes()
    # moov's size does not depend on the offsets (stco entries are fixed-width), so lay out once, then patch
    new_mdat_pos = len(ftyp) + len(moov.to_bytes())
    _shift_chunk_offsets(moov, new_mdat_pos - mdat_pos)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(ftyp)
        fout.write(moov.to_bytes())
        fin.seek(mdat_pos)
        _copy_range(fin, fout, mdat_size)


def _shift_chunk_offsets(moov: Box, delta: int) -> None:
    for box in moov.walk():
        if box.type == b"stco":
            (count,) = struct.unpack_from(">I", box.payload, 4)
            offsets = [o + delta for o in struct.unpack_from(f">{count}I", box.payload, 8)]
            if offsets and (min(offsets) < 0 or max(offsets) >= 1 << 32):
                raise Mp4Error("chunk offsets beyond 4 GiB need co64 boxes; the stem file is too large")
            box.payload = box.payload[:8] + struct.pack(f">{count}I", *offsets)
        elif box.type == b"co64":
            (count,) = struct.unpack_from(">I", box.payload, 4)
            offsets = [o + delta for o in struct.unpack_from(f">{count}Q", box.payload, 8)]
            box.payload = box.payload[:8] + struct.pack(f">{count}Q", *offsets)


def _copy_range(fin, fout, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = fin.read(min(remaining, 1 << 22))
        if not chunk:
            raise Mp4Error("the source MP4 ended inside its mdat box")
        fout.write(chunk)
        remaining -= len(chunk)


__all__ = ["Box", "Mp4Error", "finish_stem_mp4", "is_mp4", "iter_boxes", "mp4_problem", "parse_box", "read_box"]
