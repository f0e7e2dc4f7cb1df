"""High-quality stems for a live session's file decks: which track gets them, when, and their clean-up.

``HqDecks`` runs on the control side (never the audio thread). For every file deck it owns one analysis child
process (``hq_stems.HqAnalysisProcess``, started with the session before the audio, at low priority) and, per
loaded track, one ``HqTrackStems`` computing that track's high-quality stems ahead of the playhead (or loading them
from the disk cache). They reach the audio thread by reference through the deck's command queue (``SetHqStems``),
tagged with the deck track they belong to, so they are heard only while the deck plays that very track; the engine
crossfades between them and the causal stems (``LiveEngine._apply_hq``).

- ``track_loaded(deck, track)``: a deck's track is fully decoded (at start, or the loader's ``on_loaded``).
- ``jumped(deck, position)``: a seek, cue or loop jump: analysis moves to the new playhead first.
- ``close()``: stops every analysis and child process.

High-quality stems need the host to run at the model's rate (otherwise the decks' samples are not the model's; the
causal path resamples on its own) and a file deck playing at tempo 1 with no key shift (the engine checks that).
"""

from __future__ import annotations

import logging

from stembridge.engine.commands import SetHqStems

log = logging.getLogger(__name__)


class HqDecks:
    def __init__(self, engine, *, lookahead_path=None, causal_path=None, device: str = "auto") -> None:
        from stembridge.engine.stem_cache import StemCache

        self.engine = engine
        self.lookahead_path = lookahead_path
        self.causal_path = causal_path if causal_path is not None else engine.card.path
        self.device = device
        self.cache = StemCache()
        self._processes: dict[int, object] = {}  # deck index -> HqAnalysisProcess
        self._current: dict[int, object] = {}  # deck index -> its HqTrackStems
        self._retired: list = []  # stems the audio thread may still hold for a block: closed on the next change
        # the analysis processes start now, before the audio does: a process's start (an interpreter importing
        # numpy and ONNX Runtime, at normal priority until it lowers its own) must not land in the middle of a set
        for i in range(len(engine.decks)):
            if self.available(i):
                self._process(i)

    def _process(self, i: int):
        from stembridge.engine.live.hq_stems import HqAnalysisProcess

        process = self._processes.get(i)
        if process is None or not process.alive:
            process = HqAnalysisProcess(self.lookahead_path, self.causal_path, device=self.device)
            self._processes[i] = process
        return process

    def available(self, i: int) -> bool:
        return self.engine.hq[i] is not None

    def track_loaded(self, i: int, track) -> None:
        """Deck ``i`` (0-based) holds ``track`` (an ``engine.live.loader.Track``), decoded in full: start its
        high-quality stems. Replaces the deck's previous ones."""
        from stembridge.engine.live.hq_stems import HqTrackStems

        if not self.available(i) or track.num_frames == 0:
            return
        self._drop(i)
        try:
            process = self._process(i)
            audio = track.audio[:, : track.num_frames]
            deck = self.engine.decks[i]
            start = getattr(deck, "playhead", 0)
            stems = HqTrackStems(audio, process, start=start, cache=self.cache, name=track.name)
        except (MemoryError, OSError, RuntimeError, ValueError) as exc:
            # e.g. /dev/shm too small for the track's stems: the deck plays its causal stems, as without --hq-stems
            log.warning("deck %d: no high-quality stems for %s: %s", i + 1, track.name, exc)
            return
        self._current[i] = stems
        track.hq = stems  # deck feedback reports hq 1 once it is complete
        if not self.engine.queues[i].push(SetHqStems(stems, track)):
            log.warning("deck %d: command queue full, high-quality stems not given", i + 1)

    def jumped(self, i: int, position: int) -> None:
        stems = self._current.get(i)
        if stems is not None:
            stems.request(position)

    def status(self) -> dict:
        return {str(i + 1): s.status() for i, s in self._current.items()}

    def _drop(self, i: int) -> None:
        for stems in self._retired:
            stems.close()
        self._retired.clear()
        old = self._current.pop(i, None)
        if old is not None:
            self._retired.append(old)

    def close(self) -> None:
        for i in list(self._current):
            self._drop(i)
        for stems in self._retired:
            stems.close()
        self._retired.clear()
        for process in self._processes.values():
            process.close()
        self._processes.clear()
