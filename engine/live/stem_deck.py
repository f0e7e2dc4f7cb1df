"""A deck that plays an NI stem file's own stems: no separation, the file's mixture as its dry signal.

``StemFileDeck`` is a ``FileDeck`` (play, pause, seek, loop, cue, level, crossfaded jumps: all of it) whose audio is
the mixture and the four stems stacked; every read moves through all of them at once, so the stems stay sample-aligned
with each other and with the dry signal through every jump and loop. The engine takes such a deck's stems from
``stems_block`` instead of from the separation worker (which is fed silence for it), so they are on the stem busses
from the first block, with no separation latency to settle.

The file's stems are put on the engine's busses by NI's slot order (stream 1 drums, 2 bass, 3 other, 4 vocals), never
by the names the file carries; those names and colours are kept in ``labels`` for display (``status()``).
``load_deck`` picks the deck for a path: a stem file gives a ``StemFileDeck``, anything else a ``FileDeck``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from stembridge.engine.audio_io import AudioFileError
from stembridge.engine.live.deck import FileDeck, load_deck_audio


class StemFileDeck(FileDeck):
    """Plays a stem file held in memory. mixture: float32 (num_channels, num_frames); stems: float32
    (num_stems, num_channels, num_frames) in the engine's stem order; labels: per engine stem, the file's own
    name and colour (for display)."""

    kind = "stem file"

    def __init__(
        self,
        mixture: np.ndarray,
        stems: np.ndarray,
        name: str = "deck",
        *,
        labels: dict[str, tuple[str, str]] | None = None,
        play: bool = True,
        loop: bool = False,
    ) -> None:
        num_channels, num_frames = mixture.shape
        if stems.ndim != 3 or stems.shape[1:] != mixture.shape:
            raise ValueError(f"stems must be (num_stems, {num_channels}, {num_frames}); got {stems.shape}")
        stacked = np.empty(((1 + stems.shape[0]) * num_channels, num_frames), dtype=np.float32)
        stacked[:num_channels] = mixture
        stacked[num_channels:] = stems.reshape(-1, num_frames)
        super().__init__(stacked, name, play=play, loop=loop)
        self.num_channels = num_channels  # FileDeck counted the stacked rows
        self.num_stems = stems.shape[0]
        self.labels = dict(labels or {})
        self.stems_block: np.ndarray | None = None  # (num_stems, num_channels, block_size), valid after dry()

    def prepare(self, **kwargs) -> None:
        super().prepare(**kwargs)
        rows, n = self.audio.shape[0], self.block_size
        self._old = np.zeros((rows, n), dtype=np.float32)  # FileDeck's crossfade buffer, for every stacked row
        self._all = np.zeros((rows, n), dtype=np.float32)
        self.stems_block = self._all[self.num_channels :].reshape(self.num_stems, self.num_channels, n)

    def feed(self, dst: np.ndarray, inp: np.ndarray) -> None:
        """Nothing to separate: the worker gets silence for this deck. Real-time safe."""
        dst.fill(0.0)

    def dry(self, dst: np.ndarray, inp: np.ndarray) -> None:
        """The mixture at the playhead into dst; the stems at the same frames into ``stems_block``. Real-time safe."""
        n = dst.shape[-1]
        block = self._all[:, :n]
        super().dry(block, inp)
        dst[:] = block[: self.num_channels]

    def sep_valid(self, block: int) -> bool:
        return True  # the stems are the file's: right from the first block and after every jump

    def status(self) -> dict:
        return super().status() | {"stems": {stem: {"name": n, "colour": c} for stem, (n, c) in self.labels.items()}}


def load_stem_deck(
    path: str | Path, sample_rate: int, stems: tuple[str, ...], name: str | None = None, **deck_kwargs
) -> StemFileDeck:
    """A ``StemFileDeck`` for an NI stem file, its slots put on the engine's ``stems`` (the model's stem names) by
    NI's slot order, resampled to ``sample_rate``. Raises ``AudioFileError`` when the file is not a stem file or the
    engine's stems are not NI's four."""
    from stembridge.engine.stem_file import NI_SLOTS, read_stem_file

    p = Path(path)
    if sorted(stems) != sorted(NI_SLOTS):
        raise AudioFileError(
            f"{p}: a stem file carries {', '.join(NI_SLOTS)}; the engine's stems are {', '.join(stems)}, "
            "so its stems cannot go on the stem busses"
        )
    stem_file = read_stem_file(p)
    mixture = _to_rate(_stereo(stem_file.mixture), stem_file.sample_rate, sample_rate)
    stacked = np.stack([_to_rate(_stereo(stem_file.stems[stem]), stem_file.sample_rate, sample_rate) for stem in stems])
    n = min(mixture.shape[1], stacked.shape[2])
    labels = {stem: (stem_file.names[NI_SLOTS.index(stem)], stem_file.colours[NI_SLOTS.index(stem)]) for stem in stems}
    return StemFileDeck(mixture[:, :n], stacked[:, :, :n], name or p.name, labels=labels, **deck_kwargs)


def load_deck(
    path: str | Path, sample_rate: int, stems: tuple[str, ...], name: str | None = None, **deck_kwargs
) -> FileDeck:
    """The deck for a file: a ``StemFileDeck`` for an NI stem file, a ``FileDeck`` (separated live) otherwise."""
    from stembridge.engine.stem_file import is_stem_file

    p = Path(path)
    if is_stem_file(p):
        return load_stem_deck(p, sample_rate, stems, name, **deck_kwargs)
    return FileDeck(load_deck_audio(p, sample_rate), name or p.name, **deck_kwargs)


def _stereo(audio: np.ndarray) -> np.ndarray:
    return np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio


def _to_rate(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(audio, to_rate // g, from_rate // g, axis=1).astype(np.float32)
