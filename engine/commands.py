"""Commands from the control side to the audio thread, and the bounded queue that carries them.

Control threads ``push`` small immutable commands; the audio thread ``drain``s them at the start of each block
without blocking. A full queue refuses the command (and counts it) instead of blocking the sender or the audio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SetParam:
    """Set one parameter of a deck's mixer, e.g. ``SetParam("stem/vocals/mute", 1.0)``.

    Paths: ``stem/<stem>/gain_db``, ``stem/<stem>/mute``, ``stem/<stem>/solo``, ``stem/<stem>/fx/<plugin>/<param>``,
    ``stem/<stem>/fx/<plugin>/bypass``, ``master/gain_db``.
    """

    path: str
    value: float


@dataclass(frozen=True, slots=True)
class SwapChain:
    """Replace a stem's effect chain with a prepared ``pedalboard.Pedalboard`` (built off the audio thread).

    ``names`` gives each plugin its address name (``stem/<stem>/fx/<name>/...``); by default the lower-case class
    name, with ``_2``, ``_3``... for repeats.
    """

    stem: str
    board: Any
    names: tuple[str, ...] | None = None
    latencies: tuple[int, ...] | None = None  # per plugin, in samples at the engine's rate (mixer.chain_latencies)


@dataclass(frozen=True, slots=True)
class LoadTrack:
    """Give a file deck a new track (an ``engine.live.loader.Track``, decoded off the audio thread; an empty one
    ejects). A playing deck fades out first; the new track waits at its start, paused."""

    track: Any


@dataclass(frozen=True)
class SetHqStems:
    """Give a file deck the high-quality stems of its track (``engine.live.hq_stems.HqTrackStems``, computed ahead
    of the playhead off the audio thread), or None. ``track`` is the deck track (``engine.live.loader.Track``) they
    belong to: they are heard only while the deck plays that track."""

    stems: Any
    track: Any


class CommandQueue:
    """A bounded multi-producer, single-consumer queue. ``push`` never blocks; ``drain`` is real-time safe.

    Relies on ``collections.deque`` append/popleft being atomic under the GIL.
    """

    def __init__(self, maxlen: int = 1024) -> None:
        self.maxlen = maxlen
        self._items: deque = deque()
        self.num_dropped = 0

    def push(self, command: Any) -> bool:
        """Queue ``command``; returns False (and counts a drop) when the queue is full."""
        if len(self._items) >= self.maxlen:
            self.num_dropped += 1
            return False
        self._items.append(command)
        return True

    def drain(self, apply: Callable[[Any], None], max_items: int | None = None) -> int:
        """Apply queued commands in order, at most ``max_items``; returns how many. Real-time safe."""
        count = 0
        items = self._items
        limit = self.maxlen if max_items is None else max_items
        while items and count < limit:
            apply(items.popleft())
            count += 1
        return count

    def __len__(self) -> int:
        return len(self._items)
