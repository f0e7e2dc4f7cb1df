"""OSC 1.0 packets: a strict parser that never raises anything but ``OscError``, and a small encoder.

The parser accepts messages and (nested) bundles, the type tags i f d h s S b T F N I c r m t and arrays.
Anything else (bad padding, missing NUL, unknown tags, trailing bytes, bundle elements that overrun) is an
``OscError``. Bundle time tags are read but not honoured: their messages apply at once, in order.
"""

from __future__ import annotations

import struct
from typing import Any

MAX_BUNDLE_DEPTH = 8
_BUNDLE = b"#bundle\x00"


class OscError(ValueError):
    """A malformed OSC packet."""


def _string(data: bytes, start: int) -> tuple[str, int]:
    end = data.find(b"\x00", start)
    if end < 0:
        raise OscError("string without a terminating NUL")
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise OscError("string is not UTF-8") from None
    nxt = (end + 4) & ~3
    if nxt > len(data) or data.count(0, end, nxt) != nxt - end:
        raise OscError("string padding is wrong")
    return text, nxt


def _blob(data: bytes, start: int) -> tuple[bytes, int]:
    if start + 4 > len(data):
        raise OscError("blob size overruns the packet")
    (size,) = struct.unpack_from(">i", data, start)
    start += 4
    nxt = start + ((size + 3) & ~3)
    if size < 0 or nxt > len(data):
        raise OscError("blob overruns the packet")
    return data[start : start + size], nxt


_FIXED = {
    "i": (">i", 4),
    "f": (">f", 4),
    "d": (">d", 8),
    "h": (">q", 8),
    "t": (">Q", 8),
    "r": (">I", 4),
    "c": (">I", 4),
}


def parse_message(data: bytes) -> tuple[str, list[Any]]:
    """(address, arguments) of one OSC message. Arrays come back as lists. Raises OscError."""
    address, index = _string(data, 0)
    if not address.startswith("/"):
        raise OscError("address does not start with '/'")
    if index == len(data):
        return address, []  # no type tag string (old OSC): no arguments
    tags, index = _string(data, index)
    if not tags.startswith(","):
        raise OscError("type tag string does not start with ','")
    args: list[Any] = []
    stack = [args]
    for tag in tags[1:]:
        if tag in _FIXED:
            fmt, size = _FIXED[tag]
            if index + size > len(data):
                raise OscError(f"argument '{tag}' overruns the packet")
            (value,) = struct.unpack_from(fmt, data, index)
            index += size
            if tag == "c":
                value = chr(value) if value < 0x110000 else "?"
        elif tag in "sS":
            value, index = _string(data, index)
        elif tag == "b":
            value, index = _blob(data, index)
        elif tag == "m":
            if index + 4 > len(data):
                raise OscError("MIDI argument overruns the packet")
            value, index = tuple(data[index : index + 4]), index + 4
        elif tag == "T":
            value = True
        elif tag == "F":
            value = False
        elif tag == "N":
            value = None
        elif tag == "I":
            value = float("inf")
        elif tag == "[":
            inner: list[Any] = []
            stack[-1].append(inner)
            stack.append(inner)
            continue
        elif tag == "]":
            if len(stack) < 2:
                raise OscError("']' without '['")
            stack.pop()
            continue
        else:
            raise OscError(f"unknown type tag {tag!r}")
        stack[-1].append(value)
    if len(stack) != 1:
        raise OscError("'[' without ']'")
    if index != len(data):
        raise OscError("bytes after the last argument")
    return address, args


def parse_packet(data: bytes, depth: int = 0) -> list[tuple[str, list[Any]]]:
    """All messages in a packet (a message, or a bundle of messages and bundles), in order. Raises OscError."""
    if data.startswith(_BUNDLE):
        if depth >= MAX_BUNDLE_DEPTH:
            raise OscError("bundles nested too deep")
        if len(data) < 16:
            raise OscError("bundle without a time tag")
        messages: list[tuple[str, list[Any]]] = []
        index = 16
        while index < len(data):
            if index + 4 > len(data):
                raise OscError("bundle element size overruns the packet")
            (size,) = struct.unpack_from(">i", data, index)
            index += 4
            if size <= 0 or size % 4 or index + size > len(data):
                raise OscError("bad bundle element size")
            messages.extend(parse_packet(data[index : index + size], depth + 1))
            index += size
        return messages
    if data[:1] != b"/" or len(data) % 4:
        raise OscError("not an OSC message or bundle")
    return [parse_message(data)]


def _pad(b: bytes) -> bytes:
    return b + b"\x00" * (4 - len(b) % 4)


def encode_message(address: str, args: list[Any] | tuple = ()) -> bytes:
    """An OSC message: bool -> T/F, int -> i (h beyond 32 bits), float -> f, str -> s, bytes -> b, None -> N."""
    tags, payload = [","], []
    for arg in args:
        if isinstance(arg, bool):
            tags.append("T" if arg else "F")
        elif isinstance(arg, int):
            if -(2**31) <= arg < 2**31:
                tags.append("i")
                payload.append(struct.pack(">i", arg))
            else:
                tags.append("h")
                payload.append(struct.pack(">q", arg))
        elif isinstance(arg, float):
            tags.append("f")
            payload.append(struct.pack(">f", arg))
        elif isinstance(arg, str):
            tags.append("s")
            payload.append(_pad(arg.encode("utf-8")))
        elif isinstance(arg, (bytes, bytearray)):
            tags.append("b")
            blob = bytes(arg)
            payload.append(struct.pack(">i", len(blob)) + blob + b"\x00" * (-len(blob) % 4))
        elif arg is None:
            tags.append("N")
        else:
            raise TypeError(f"cannot encode {type(arg).__name__} in OSC")
    return _pad(address.encode("utf-8")) + _pad("".join(tags).encode("ascii")) + b"".join(payload)


def encode_bundle(elements: list[bytes], timetag: int = 1) -> bytes:
    """An OSC bundle of encoded messages/bundles; time tag 1 means "immediately"."""
    body = b"".join(struct.pack(">i", len(e)) + e for e in elements)
    return _BUNDLE + struct.pack(">Q", timetag) + body


# SLIP framing (OSC 1.1 over TCP)
SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD


def slip_encode(packet: bytes) -> bytes:
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def slip_decode(frame: bytes) -> bytes:
    """Undo SLIP escaping of one frame (without its END bytes). Raises OscError on a bad escape."""
    if b"\xdb" not in frame:
        return frame
    out = bytearray()
    it = iter(frame)
    for b in it:
        if b == SLIP_ESC:
            nxt = next(it, None)
            if nxt == SLIP_ESC_END:
                out.append(SLIP_END)
            elif nxt == SLIP_ESC_ESC:
                out.append(SLIP_ESC)
            else:
                raise OscError("bad SLIP escape")
        else:
            out.append(b)
    return bytes(out)
