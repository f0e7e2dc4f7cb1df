"""The live engine: decks -> batched separation worker -> per-deck stem mixers -> stem busses + master -> backends.

See ``engine.live.engine`` for the block flow, the deadline-miss fallback and the output layouts,
``engine.live.worker`` for the FIFO and its fixed latency, ``engine.live.deck`` for file and input decks,
``engine.live.loader`` for loading tracks while running, ``engine.live.resample`` for host rates other than the
model's, ``engine.live.tempo`` for tempo and key, ``engine.live.backends`` for JACK, PortAudio and the dummy clock.
"""

from stembridge.engine.live.deck import FileDeck, InputDeck, load_deck_audio
from stembridge.engine.live.engine import LiveEngine
from stembridge.engine.live.loader import Crate, Track, TrackLoader
from stembridge.engine.live.worker import SeparationWorker

__all__ = [
    "Crate",
    "FileDeck",
    "InputDeck",
    "LiveEngine",
    "SeparationWorker",
    "Track",
    "TrackLoader",
    "load_deck_audio",
]
