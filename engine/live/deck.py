"""Decks: where a deck's audio comes from, block by block, on the audio thread.

A deck gives the engine two signals per block:

* ``feed``: what the separation worker gets for this block, and
* ``dry``: what the deck plays *now*, aligned with the stems the engine plays now.

A live input deck feeds its input as it arrives; its dry signal is that input delayed by the engine's latency
(a circular delay line), so dry and separated stems line up sample for sample.

A file deck reads ahead: it feeds the worker the file at ``playhead + latency_samples``, so the stems for the
playhead come out of the FIFO exactly when the playhead gets there, and the file deck adds no latency to what is
heard. Its dry signal is the file at the playhead. Play, pause, seek, loop and cue move the playhead at once (a seek
is heard at once): the dry signal takes over on the dry bus with a crossfade, the feed jumps to the new read-ahead
position, and separation fades back in after ``settle_blocks`` (the FIFO latency plus one analysis window, ~50 ms with
the default model) when its stems for the new position are clean. Loops are followed by the feed too, so the
separator hears the loop splice that is heard.

Control arrives as ``engine.commands.SetParam`` on the deck's command queue (see ``TRANSPORT_PATHS``).
Everything in ``begin_block``/``feed``/``dry``/``gain``/``end_block`` is real-time safe.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from stembridge.engine.commands import LoadTrack, SetParam
from stembridge.engine.mixer import Ramp, db_to_gain
from stembridge.engine.rt import add_rows_scaled, multiply_rows

# Deck parameters (SetParam paths on a deck's queue, besides the StemMixer's "stem/..." and "master/...").
TRANSPORT_PATHS = {
    "transport/play": "1 plays, 0 pauses (a short fade; play starts dry and separation fades in)",
    "transport/seek_s": "jump the playhead to this time in seconds (heard at once)",
    "transport/cue": "1 jumps to the cue point and pauses (the CDJ 'back to cue')",
    "transport/cue_s": "set the cue point in seconds (a negative value sets it at the playhead)",
    "transport/loop": "1 loops between loop_start_s and loop_end_s, 0 releases the loop",
    "transport/loop_start_s": "loop start in seconds (a negative value: at the playhead)",
    "transport/loop_end_s": "loop end in seconds (a negative value: at the playhead)",
    "level_db": "deck level in dB (-120 = silence), ramped; scales every bus this deck feeds",
    "pfl": "1 sends the deck to the headphone cue (cue_L/R), 0 takes it out (ramped)",
    "transport/tempo": "playback rate, 0.5..2 (1 = the track's tempo; 0.92 = -8 %), through Rubber Band",
    "transport/keylock": "1 keeps the pitch when the tempo changes (default), 0 lets it follow (a turntable)",
    "transport/key": "key shift in semitones, -12..12",
}
MIN_LOOP_FRAMES = 64


class Deck:
    """Base class: a deck's level and the interface the engine drives. Subclasses fill ``feed`` and ``dry``."""

    kind = "deck"
    num_inputs = 0  # input channels this deck takes from the backend

    def __init__(self, name: str, num_channels: int = 2) -> None:
        self.name = name
        self.num_channels = num_channels
        self.level_db = 0.0
        self.pfl = False  # the headphone cue switch
        self.num_rejected = 0
        self.block_size = 0
        self.latency_samples = 0
        self.settle_blocks = 0

    def prepare(self, *, sample_rate: int, block_size: int, latency_samples: int, settle_blocks: int) -> None:
        """Called once by the engine before streaming: the host period, the engine's total latency (how far a
        file deck reads ahead) and how many blocks separation needs to be clean after a jump."""
        self.sample_rate = int(sample_rate)
        self.block_size = block_size
        self.latency_samples = latency_samples
        self.settle_blocks = settle_blocks
        self._level = Ramp(1.0, block_size, block_size)
        self._pfl = Ramp(1.0 if self.pfl else 0.0, block_size, block_size)

    def apply(self, command: SetParam) -> bool:
        """Apply a deck command (``level_db`` and ``pfl`` here; transport in FileDeck). Real-time safe."""
        if command.path == "level_db":
            self.level_db = float(command.value)
            self._level.set(db_to_gain(self.level_db))
            return True
        if command.path == "pfl":
            self.pfl = float(command.value) >= 0.5
            self._pfl.set(1.0 if self.pfl else 0.0)
            return True
        self.num_rejected += 1
        return False

    def begin_block(self, block: int) -> None:
        """Start block ``block``: carry out transport changes queued by ``apply``. Real-time safe."""

    def feed(self, dst: np.ndarray, inp: np.ndarray) -> None:
        """Write this block's worker input. dst: float32 (num_channels, n); inp: the backend's input block
        float32 (num_inputs, n) for this deck. Real-time safe."""
        raise NotImplementedError

    def dry(self, dst: np.ndarray, inp: np.ndarray) -> None:
        """Write what the deck plays now, latency-aligned with the stems played now. dst: float32
        (num_channels, n). Real-time safe."""
        raise NotImplementedError

    def gain(self, n: int) -> np.ndarray | None:
        """This block's per-sample transport gain (play/pause fades) on the deck's stems before its mixer, float32
        (n,), or None when it is exactly 1. Real-time safe."""
        return None

    def level_gain(self, n: int) -> np.ndarray | None:
        """This block's per-sample deck level (the channel fader) after its mixer, float32 (n,), or None when it is
        exactly 1. The headphone cue taps the deck before it (pre-fader listening). Real-time safe."""
        level = self._level
        if level.is_still and level.value == 1.0:
            return None
        return level.next_block(n)

    def pfl_gain(self, n: int) -> np.ndarray | None:
        """This block's per-sample gain of the deck into the headphone cue float32 (n,), or None when it is out of
        the cue (settled). Real-time safe."""
        pfl = self._pfl
        if pfl.is_still and pfl.value == 0.0:
            return None
        return pfl.next_block(n)

    def sep_valid(self, block: int) -> bool:
        """Whether the separated stems played at ``block`` belong to what the deck plays then. Real-time safe."""
        return True

    @property
    def silent(self) -> bool:
        """True when the deck feeds nothing (a file deck paused). Real-time safe."""
        return False

    def end_block(self) -> None:
        """Finish the block. Real-time safe."""

    def status(self) -> dict:
        """A snapshot for the control side (not real-time)."""
        return {"name": self.name, "kind": self.kind, "level_db": self.level_db, "pfl": self.pfl}


class InputDeck(Deck):
    """A live stereo input (two backend input channels). Dry = the input delayed by the engine's latency."""

    kind = "input"

    def __init__(self, name: str = "input", num_channels: int = 2) -> None:
        super().__init__(name, num_channels)
        self.num_inputs = num_channels

    def prepare(self, **kwargs) -> None:
        super().prepare(**kwargs)
        self._line = np.zeros((self.num_channels, self.latency_samples + self.block_size), dtype=np.float32)
        self._write = 0

    def feed(self, dst: np.ndarray, inp: np.ndarray) -> None:
        dst[:] = inp

    def dry(self, dst: np.ndarray, inp: np.ndarray) -> None:
        line, size, n = self._line, self._line.shape[1], inp.shape[-1]
        w = self._write
        k = min(n, size - w)
        line[:, w : w + k] = inp[:, :k]
        line[:, : n - k] = inp[:, k:]
        r = (w - self.latency_samples) % size
        k = min(n, size - r)
        dst[:, :k] = line[:, r : r + k]
        dst[:, k:] = line[:, : n - k]
        self._write = (w + n) % size


class FileDeck(Deck):
    """Plays a track held in memory: play, pause, seek, loop, cue and level, with separation read ahead; takes a new
    track at run time (``LoadTrack``, see ``engine.live.loader``).

    audio: float32 (num_channels, num_frames) at the engine's sample rate (see ``load_deck_audio``), or None for an
    empty deck. A track that is still decoding plays what is decoded (``Track.num_frames``, re-read each block).
    """

    kind = "file"
    loadable = True

    def __init__(
        self,
        audio: np.ndarray | None = None,
        name: str = "deck",
        *,
        play: bool = True,
        loop: bool = False,
        num_channels: int = 2,
    ) -> None:
        from stembridge.engine.live.loader import Track

        if audio is None:
            track = Track.empty(num_channels)
        else:
            track = Track(np.ascontiguousarray(audio, dtype=np.float32), name)
        super().__init__(name, track.audio.shape[0])
        self.track = track
        self.audio = track.audio
        self.num_frames = track.num_frames
        self.playhead = 0
        self.playing = False
        self.cue_pos = 0
        self.loop_start = 0
        self.loop_end = self.num_frames
        self.loop_on = loop and self.num_frames >= MIN_LOOP_FRAMES
        self.num_jumps = 0
        self.num_loads = 0  # tracks swapped in at run time
        self.tempo = 1.0  # playback rate (1 = the track's own tempo)
        self.keylock = True
        self.semitones = 0.0
        self._stretch = None  # a DeckStretcher once prepared (pylibrb installed)
        self._stretching = False
        self._tempo_changed = False
        self._restart_at: int | None = None
        self._heard_pos = 0.0
        self.num_starved = 0  # blocks that played past the decoded part of a track still decoding
        self._autoplay = play and self.num_frames > 0
        self._feed_pos = 0
        self._valid_from = 0
        self._want_play: bool | None = None
        self._jump: int | None = None
        self._jump_at_end: int | None = None
        self._loop_changed = False
        self._stopping = False
        self._pending = None  # a Track waiting for the deck to fade out
        self._block = 0

    def prepare(self, **kwargs) -> None:
        super().prepare(**kwargs)
        n = self.block_size
        self._transport = Ramp(0.0, n, n)
        self._old = np.zeros((self.num_channels, n), dtype=np.float32)
        self._row = np.zeros(n, dtype=np.float32)
        self._fade_in = (np.arange(1, n + 1, dtype=np.float32) / n).astype(np.float32)
        self._fade_out = (1.0 - self._fade_in).astype(np.float32)
        self._xfade_from: int | None = None
        self._heard = np.zeros((self.num_channels, n), dtype=np.float32)
        if self._autoplay:
            self._want_play = True

    # -- control (drained on the audio thread) --
    def apply(self, command) -> bool:
        if isinstance(command, LoadTrack):
            self._pending = command.track
            return True
        path, value = command.path, float(command.value)
        if not path.startswith("transport/"):
            return super().apply(command)
        if not math.isfinite(value):
            self.num_rejected += 1
            return False
        leaf = path[len("transport/") :]
        if leaf in ("tempo", "keylock", "key"):
            return self._set_tempo(leaf, value)
        if leaf == "play":
            self._want_play = value >= 0.5
        elif leaf == "seek_s":
            self._jump = self._frames(value)
        elif leaf == "cue":
            if value >= 0.5:
                self._jump = self.cue_pos
                self._want_play = False
        elif leaf == "cue_s":
            self.cue_pos = self._at(value)
        elif leaf == "loop":
            self.loop_on = value >= 0.5 and self.loop_end - self.loop_start >= MIN_LOOP_FRAMES
            self._loop_changed = True
        elif leaf == "loop_start_s":
            self.loop_start = self._at(value)
            self._fix_loop()
        elif leaf == "loop_end_s":
            self.loop_end = self._at(value)
            self._fix_loop()
        else:
            self.num_rejected += 1
            return False
        return True

    def ensure_stretcher(self) -> bool:
        """Build the deck's Rubber Band stretcher (control side, before tempo or key commands are sent: it
        allocates). False when pylibrb is not installed. Not real-time."""
        from stembridge.engine.live.tempo import DeckStretcher, stretcher_available

        if self._stretch is None and stretcher_available():
            self._stretch = DeckStretcher(self.num_channels, self.sample_rate, self.block_size, self.latency_samples)
        return self._stretch is not None

    def release_stretcher(self) -> None:
        """Drop the stretcher (after the audio has stopped). Not real-time."""
        self._stretch = None
        self._stretching = False

    def _set_tempo(self, leaf: str, value: float) -> bool:
        """Tempo, keylock or key; applied at the next block once the deck has a stretcher. Real-time safe."""
        from stembridge.engine.live.tempo import MAX_SEMITONES, clamp_tempo

        if leaf == "tempo":
            self.tempo = clamp_tempo(value)
        elif leaf == "keylock":
            self.keylock = value >= 0.5
        else:
            self.semitones = min(max(value, -MAX_SEMITONES), MAX_SEMITONES)
        self._tempo_changed = True
        return True

    def _frames(self, seconds: float) -> int:
        return min(max(int(round(seconds * self.sample_rate)), 0), self.track.total_frames)

    def _at(self, seconds: float) -> int:
        return self.playhead if seconds < 0 else self._frames(seconds)

    def _fix_loop(self) -> None:
        if self.loop_end - self.loop_start < MIN_LOOP_FRAMES:
            self.loop_on = False
        self._loop_changed = True

    def _swap_track(self, block: int) -> None:
        """Put the pending track in (the deck is paused): at its start, no loop, cue at 0. Real-time safe (the old
        track is still referenced by the loader, so nothing is freed here)."""
        self.track, self._pending = self._pending, None
        self.playhead = self.cue_pos = self.loop_start = 0
        self.loop_end = self.track.total_frames
        self.loop_on = False
        self._jump = self._jump_at_end = None
        self.num_loads += 1
        self._feed_pos = self.latency_samples
        self._valid_from = block + self.settle_blocks

    # -- audio --
    def begin_block(self, block: int) -> None:
        self._block = block
        self._xfade_from = None
        if self._pending is not None:
            if self.playing and not self._stopping:  # loading into a playing deck: fade out first
                self._stopping = True
                self._transport.set(0.0)
            if self.playing:
                self._refresh()
                return  # the fade runs; transport commands wait for the new track
            self._swap_track(block)
        self._refresh()
        resync = False
        if self._jump is not None and self._want_play is False and self.playing:
            # cue while playing: fade out where we are, then land on the cue point (paused) at the block's end
            self._jump_at_end, self._jump = self._jump, None
        if self._jump is not None:
            if self.playing and not self._stopping:
                self._xfade_from = self.playhead
            self.playhead = self._jump
            self._jump = None
            self.num_jumps += 1
            resync = True
        want = self._want_play
        self._want_play = None
        if want is True and (not self.playing or self._stopping) and self.track.total_frames > 0:
            if self.playhead >= self.track.total_frames and not self.loop_on:
                self.playhead = 0  # play at the end starts over
            self.playing = True
            self._stopping = False
            self._transport.set(1.0)
            resync = True
        elif want is False and self.playing and not self._stopping:
            self._stopping = True
            self._transport.set(0.0)
        if self._loop_changed:
            self._loop_changed = False
            if self._advance(self.playhead, self.latency_samples) != self._feed_pos:
                resync = True  # the read-ahead already went the other way around the loop
        if self._tempo_changed and self._stretch is not None:
            self._tempo_changed = False
            self._stretch.configure(self.tempo, self.keylock, self.semitones)
            stretching = self.tempo != 1.0 or self.semitones != 0.0
            if stretching != self._stretching:
                self._stretching = stretching
                if self.playing and not self._stopping and self._xfade_from is None:
                    self._xfade_from = self.playhead  # into or out of the stretcher: a crossfade, as a jump
                resync = True
        if resync:
            self._feed_pos = self._advance(self.playhead, self.latency_samples)
            self._valid_from = block + self.settle_blocks
            if self._stretching:
                self._restart_at = self.playhead
                self._heard_pos = float(self.playhead)

    def _refresh(self) -> None:
        """Take the track's decoded length, then its buffer (the loader writes them in the other order, so the
        buffer read here always holds the frames counted). Real-time safe."""
        track = self.track
        self.num_frames = track.num_frames
        self.audio = track.audio

    def feed(self, dst: np.ndarray, inp: np.ndarray) -> None:
        if not self.playing:
            dst.fill(0.0)
        elif self._stretching:  # the stretched stream, read ahead; what is heard comes out of it later
            if self._restart_at is not None:
                self._stretch.restart(self._restart_at, self._read)
                self._restart_at = None
            self._stretch.feed(self._read, dst, self._heard)
        else:
            self._feed_pos = self._read(self._feed_pos, dst)

    def dry(self, dst: np.ndarray, inp: np.ndarray) -> None:
        if not self.playing:
            dst.fill(0.0)
            return
        if self._xfade_from is not None:  # a jump while playing: crossfade the old position into the new
            self._read(self._xfade_from, self._old)
            self._play_into(dst)
            self.blend_jump(dst, self._old)
        else:
            self._play_into(dst)

    # -- what the engine asks about the block being played (high-quality stems follow it). Real-time safe. --
    @property
    def jump_from(self) -> int | None:
        """Where this block's jump comes from (the block crossfades that position into the playhead), or None."""
        return self._xfade_from

    @property
    def stretching(self) -> bool:
        """Whether the deck plays its stretched stream (tempo or key): its samples are not the track's then."""
        return self._stretching

    def blend_jump(self, new: np.ndarray, old: np.ndarray) -> None:
        """new := new faded in + old faded out across the block, as a jump crossfades: new, old float32 (rows, n),
        any number of rows (the deck's channels, or stems of them). Real-time safe."""
        multiply_rows(new, self._fade_in, new)
        add_rows_scaled(old, self._fade_out, new, self._row)

    def position_after(self, pos: int, frames: int) -> int:
        """Where the playhead is ``frames`` after ``pos``, following the loop. Real-time safe."""
        return self._advance(pos, frames)

    def _play_into(self, dst: np.ndarray) -> None:
        """What is heard now, moving the playhead on. Real-time safe."""
        if self._stretching:
            dst[:] = self._heard
            self._heard_pos = self._advance_heard(self._heard_pos, dst.shape[-1] * self.tempo)
            self.playhead = int(self._heard_pos)
        else:
            self.playhead = self._read(self.playhead, dst)

    def _advance_heard(self, pos: float, frames: float) -> float:
        if self.loop_on and pos < self.loop_end:
            end = pos + frames
            if end >= self.loop_end:
                return self.loop_start + (end - self.loop_end) % (self.loop_end - self.loop_start)
            return end
        return pos + frames

    def gain(self, n: int) -> np.ndarray | None:
        transport = self._transport
        if transport.is_still and transport.value == 1.0:
            return None
        return transport.next_block(n)

    @property
    def silent(self) -> bool:
        return not self.playing

    def sep_valid(self, block: int) -> bool:
        return block >= self._valid_from

    def end_block(self) -> None:
        if self._stopping and self._transport.is_still:
            self._stopping = False
            self.playing = False
        if self._jump_at_end is not None:
            self.playhead, self._jump_at_end = self._jump_at_end, None
            self.num_jumps += 1
        if self.playing and self.playhead >= self.num_frames and not self.loop_on:
            if self.track.complete and self.playhead >= self.track.num_frames:
                self.playing = False  # the end of the file (its last block was already heard in full)
                self._transport.set(0.0)
                self._transport.next_block(self.block_size)
            else:
                self.num_starved += 1  # ahead of the decoder (zeros were played)

    def _read(self, pos: int, dst: np.ndarray) -> int:
        """Copy frames from ``pos`` into dst (num_channels, n), following the loop; zeros past the decoded end.
        Returns the position after them. Real-time safe."""
        n = dst.shape[-1]
        audio, length = self.audio, self.num_frames
        i = 0
        while i < n:
            if self.loop_on and pos == self.loop_end:
                pos = self.loop_start
            limit = self.loop_end if (self.loop_on and pos < self.loop_end) else length
            take = min(n - i, limit - pos, length - pos)
            if take <= 0:
                if self.loop_on and pos < self.loop_end:  # a loop reaching past what is decoded yet
                    take = min(n - i, self.loop_end - pos)
                    dst[:, i : i + take] = 0.0
                    i += take
                    pos += take
                    continue
                dst[:, i:] = 0.0
                return pos + (n - i)
            dst[:, i : i + take] = audio[:, pos : pos + take]
            i += take
            pos += take
        return pos

    def _advance(self, pos: int, frames: int) -> int:
        """Where the playhead is ``frames`` later, following the loop. Real-time safe."""
        if self.loop_on and pos < self.loop_end:
            if pos + frames < self.loop_end:
                return pos + frames
            rest = frames - (self.loop_end - pos)
            return self.loop_start + rest % (self.loop_end - self.loop_start)
        return pos + frames

    def status(self) -> dict:
        sr = float(self.sample_rate)
        track = self.track
        if self._want_play is not None:  # the intended state: a play or pause queued shows at once
            playing = self._want_play and track.total_frames > 0
        else:
            playing = self.playing and not self._stopping
        return super().status() | {
            "track": track.name,
            "playing": playing,
            "tempo": self.tempo,
            "keylock": self.keylock,
            "key": self.semitones,
            "tempo_latency_samples": self._stretch.latency_samples if self._stretching else 0,
            "hq": int(bool(getattr(track.hq, "complete", track.hq))),  # 1 once its high-quality stems are all ready
            "position_s": self.playhead / sr,
            "duration_s": track.total_frames / sr,
            "loaded": track.progress,
            "cue_s": self.cue_pos / sr,
            "loop": self.loop_on,
            "loop_start_s": self.loop_start / sr,
            "loop_end_s": self.loop_end / sr,
            "loads": self.num_loads,
        }


def load_deck_audio(path: str | Path, sample_rate: int, num_channels: int = 2) -> np.ndarray:
    """Read a file for a deck: float32 (num_channels, num_frames) at ``sample_rate`` (mono is doubled, other rates
    are resampled with a polyphase filter). Raises ``engine.audio_io.AudioFileError`` naming the file."""
    from stembridge.engine.audio_io import read_audio

    audio, rate = read_audio(path)
    if audio.shape[0] == 1 and num_channels == 2:
        audio = np.repeat(audio, 2, axis=0)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        audio = resample_poly(audio, sample_rate // g, rate // g, axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)
