"""The live engine: decks -> batched separation worker -> per-deck stem mixers -> stem busses + master -> backends.

See ``engine.live.engine`` for the block flow and the deadline-miss fallback, ``engine.live.worker`` for the FIFO and
its fixed latency, ``engine.live.deck`` for file and input decks, ``engine.live.backends`` for JACK, PortAudio and the
dummy clock.
"""

from stembridge.engine.live.deck import FileDeck, InputDeck, load_deck_audio
from stembridge.engine.live.engine import LiveEngine
from stembridge.engine.live.worker import SeparationWorker

__all__ = ["FileDeck", "InputDeck", "LiveEngine", "SeparationWorker", "load_deck_audio"]
