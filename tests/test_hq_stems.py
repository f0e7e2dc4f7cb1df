"""High-quality stems of file decks: ranges of a track, the ahead-of-playhead analysis, its joins, the crossfade
from the causal stems and the disk cache. The causal model is the tiny fixture; the look-ahead model is the shipped
one (its tiles are 8.9 s, so these few-second tracks are one tile)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stembridge.engine.hq import DEFAULT_HQ_MODEL, HighQualitySeparator
from stembridge.engine.live.hq_stems import HqTrackStems, StemCrossfade, join_ramp, lower_thread_priority
from stembridge.engine.stem_cache import StemCache

SR = 44100
TINY_MODEL = Path(__file__).resolve().parent / "fixtures" / "tiny.onnx"
CHUNK = 8192
JOIN = 512


def track(seconds: float, seed: int = 0) -> np.ndarray:
    """Tones and smoothed noise, float32 (2, n): low-pass enough that its own sample-to-sample steps are small."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    noise = np.cumsum(rng.standard_normal((2, n)), axis=1)
    noise -= np.convolve(noise[0], np.ones(512) / 512, mode="same")[None]  # keep the random walk near zero
    tones = np.sin(2 * np.pi * 110 * t) * 0.3 + np.sin(2 * np.pi * 330 * t + 1) * 0.2 * (np.sin(2 * np.pi * t) > 0)
    return (tones[None] + 0.001 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def hq() -> HighQualitySeparator:
    return HighQualitySeparator(DEFAULT_HQ_MODEL, TINY_MODEL, device="cpu", block_size=4096)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return track(3.0)


@pytest.fixture(scope="module")
def whole(hq, audio) -> np.ndarray:
    return hq.separate(audio)


def max_join_step_ratio(stems: np.ndarray, reference: np.ndarray, joins: list[int], join: int) -> float:
    """How much larger the largest sample-to-sample step of ``stems`` within ``join`` samples of a join is than the
    audio's own steps there, per stem and channel; the worst over joins. The audio's own: the largest step that
    the one-pass ``reference`` makes within 4 x ``join`` of the join, or that ``stems`` make in the flanks from 1 to
    4 x ``join`` away from it (each run is its own estimate of the same audio, so either may be the busier). A
    click at a join is a step well above both."""

    def steps(x: np.ndarray, a: int, b: int) -> np.ndarray:
        return np.abs(np.diff(x[..., max(0, a) : b], axis=-1)).max(axis=-1)

    worst = 0.0
    for e in joins:
        at = steps(stems, e - join, e + join)
        own = np.maximum(steps(reference, e - 4 * join, e + 4 * join), steps(stems, e - 4 * join, e - join))
        own = np.maximum(own, steps(stems, e + join, e + 4 * join))
        worst = max(worst, float((at / np.maximum(own, 1e-6)).max()))
    return worst


# ---------------------------------------------------------------------------------------------------- ranges


def test_range_from_the_start_equals_the_whole_track(hq, audio, whole):
    out = hq.separate_range(audio, 0, 40000)
    np.testing.assert_allclose(out, whole[..., :40000], atol=1e-6)


def test_range_warmed_up_from_the_start_equals_the_whole_track(hq, audio, whole):
    """With the warm-up reaching back to sample 0 the causal stream is the whole track's: so the look-ahead
    vocals (global tiles) and the joint mask of a range must equal the whole-track pass's exactly."""
    s, e = 70001, 101000
    out = hq.separate_range(audio, s, e, warmup_samples=s + 10000)
    np.testing.assert_allclose(out, whole[..., s:e], atol=1e-5)


def test_range_sums_to_the_mix_and_is_close_to_the_whole_track(hq, audio, whole):
    s, e = 80000, 120000
    out = hq.separate_range(audio, s, e, warmup_samples=20000)
    np.testing.assert_allclose(out.sum(axis=0), audio[:, s:e], atol=1e-6)
    err = ((out - whole[..., s:e]) ** 2).sum() / (whole[..., s:e] ** 2).sum()
    print("relative error", err)
    assert err < 1e-2  # the warm-up differs, the estimate is of the same audio


def test_range_outside_the_track_is_refused(hq, audio):
    with pytest.raises(ValueError, match="not inside"):
        hq.separate_range(audio, 100, audio.shape[1] + 1)
    with pytest.raises(ValueError, match="not inside"):
        hq.separate_range(audio, 500, 500)


# ---------------------------------------------------------------------------------------------- the analysis


def analysis(hq, audio, **kwargs) -> HqTrackStems:
    return HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN, autostart=False, **kwargs)


def test_one_pass_from_the_start_equals_separate(hq, audio, whole):
    a = HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN)
    a.wait(timeout=60)
    assert a.complete and a.error is None and a.num_runs == 1
    np.testing.assert_allclose(a.stems, whole, atol=1e-5)
    assert a.progress == 1.0


def test_work_starts_at_the_requested_chunk_then_wraps(hq, audio):
    a = analysis(hq, audio, start=0)
    a.request(5 * CHUNK + 100)
    assert a.step()
    assert a.ready_at(5 * CHUNK, CHUNK) and not a.ready_at(0, 1) and not a.ready_at(6 * CHUNK, 1)
    assert a.step()
    assert a.ready_at(6 * CHUNK, CHUNK) and a.num_runs == 1  # forward, the same run
    while a.step():
        pass
    assert a.complete and a.num_runs == 2  # the wrap to the start is a second run


def test_read_fills_only_ready_stems(hq, audio):
    a = analysis(hq, audio)
    dst = np.full((4, 2, 256), 7.0, dtype=np.float32)
    assert not a.read(0, dst)
    assert (dst == 7.0).all()
    a.request(2 * CHUNK)
    a.step()
    assert not a.read(2 * CHUNK - 100, dst)  # straddles a chunk that is not ready
    assert (dst == 7.0).all()
    assert a.read(2 * CHUNK + 1000, dst)
    np.testing.assert_array_equal(dst, a.stems[:, :, 2 * CHUNK + 1000 : 2 * CHUNK + 1256])
    np.testing.assert_allclose(dst.sum(axis=0), audio[:, 2 * CHUNK + 1000 : 2 * CHUNK + 1256], atol=1e-6)
    assert not a.ready_at(audio.shape[1] - 10, 256) and not a.ready_at(-5, 256)


def test_joins_of_runs_started_at_different_positions_do_not_click():
    """Seeks while analysing: runs start at 7 chunks and stop at others. The default causal model (it has a long
    memory: the fixture model has none) with no warm-up, so neighbouring runs' high-band vocals differ the most.
    Everywhere the stems sum to the mix; drums and bass (the look-ahead stems model's alone) are the whole-track
    pass's wherever a run started; at every join no step exceeds the audio's own (the one-pass stems') by more than
    half, and the runs' own estimates differ there (what the join crossfades)."""
    hq = HighQualitySeparator(device="cpu")
    audio = track(2.0, seed=5)
    whole = hq.separate(audio)
    warmup = 0
    a = analysis(hq, audio, warmup_samples=warmup)
    for pos, steps in ((6 * CHUNK + 5, 3), (2 * CHUNK, 2), (9 * CHUNK, 1), (4 * CHUNK + 77, 1), (0, 1)):
        a.request(pos)
        for _ in range(steps):
            assert a.step()
    while a.step():
        pass
    starts = (0, 2, 4, 5, 6, 9, 10)  # the five requests, then forward from each ready chunk met
    assert a.complete and a.num_runs == len(starts)
    np.testing.assert_allclose(a.stems.sum(axis=0), audio, atol=2e-6)
    joins = [c * CHUNK for c in range(1, a.num_chunks)]
    assert max_join_step_ratio(a.stems, whole, joins, JOIN) < 1.5
    # the same runs butted without the join crossfades: the check above is one that clicks fail
    butted = np.empty_like(a.stems)
    mix, masks = hq.prepare(audio)
    for c in range(a.num_chunks):
        s = max(x for x in starts if x <= c) * CHUNK  # the run that computed chunk c started there
        e = min(audio.shape[1], (c + 1) * CHUNK)
        part = hq.separate_range(audio, s, e, warmup_samples=warmup, masks=masks)
        butted[..., c * CHUNK : e] = part[..., c * CHUNK - s :]
    np.testing.assert_allclose(butted[..., : 2 * CHUNK - JOIN], a.stems[..., : 2 * CHUNK - JOIN], atol=1e-5)
    np.testing.assert_allclose(a.stems[1:3], whole[1:3], atol=1e-5)
    np.testing.assert_allclose(butted[1:3], whole[1:3], atol=1e-5)
    near = np.concatenate([np.arange(c * CHUNK - JOIN, c * CHUNK + JOIN) for c in starts if c])
    assert np.abs(butted[0][..., near] - a.stems[0][..., near]).max() > 1e-4


def test_join_ramp_sums_to_one_and_is_smooth():
    r = join_ramp(JOIN)
    assert 0.0 < r[0] < 1e-4 and 1.0 - 1e-4 < r[-1] < 1.0
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)  # a fade-in and its mirror fade-out sum to one
    assert np.abs(np.diff(r)).max() < 2.0 / JOIN


def test_stop_ends_the_worker_and_caches_nothing(hq, tmp_path):
    long_audio = track(8.0, seed=3)
    cache = StemCache(tmp_path)
    a = HqTrackStems(long_audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
    a.stop(timeout=30)
    assert not a.running
    assert not a.complete
    assert not list(tmp_path.glob("*.flac"))


def test_a_bad_track_is_refused(hq):
    with pytest.raises(ValueError, match="float32"):
        HqTrackStems(np.zeros((2, 1000)), hq, autostart=False)
    with pytest.raises(ValueError, match="join_samples"):
        HqTrackStems(np.zeros((2, 1000), np.float32), hq, chunk_samples=1024, join_samples=512, autostart=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are lowered on Linux only")
def test_worker_thread_runs_below_normal_priority():
    seen = {}

    def probe():
        seen["done"] = lower_thread_priority(12)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen["nice"] >= 12 and seen["policy"] == os.SCHED_BATCH
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 12  # the calling thread is untouched


# ---------------------------------------------------------------------------------------------- the crossfade


def test_crossfade_is_sample_aligned_and_keeps_the_sum_in_both_directions():
    rng = np.random.default_rng(1)
    n = 256
    mix = rng.standard_normal((2, n)).astype(np.float32)
    causal = rng.standard_normal((4, 2, n)).astype(np.float32)
    causal[3] = mix - causal[:3].sum(axis=0)
    hq_stems = rng.standard_normal((4, 2, n)).astype(np.float32)
    hq_stems[3] = mix - hq_stems[:3].sum(axis=0)
    x = StemCrossfade(n)
    dst = np.empty_like(causal)
    x.process(causal, hq_stems, True, False, dst)  # ready now but not next block: no point fading in
    np.testing.assert_array_equal(dst, causal)
    x.process(causal, hq_stems, True, True, dst)  # fade in over this block
    assert x.on_hq
    ramp = np.arange(1, n + 1) / n
    np.testing.assert_allclose(dst, causal + (hq_stems - causal) * ramp, atol=1e-6)
    np.testing.assert_allclose(dst[..., -1], hq_stems[..., -1], atol=1e-6)
    np.testing.assert_allclose(dst.sum(axis=0), mix, atol=1e-5)  # during the fade
    x.process(causal, hq_stems, True, True, dst)
    np.testing.assert_array_equal(dst, hq_stems)
    x.process(causal, hq_stems, True, False, dst)  # the next block has none: fade out while this one has them
    assert not x.on_hq
    np.testing.assert_allclose(dst, hq_stems + (causal - hq_stems) * ramp, atol=1e-6)
    np.testing.assert_allclose(dst[..., -1], causal[..., -1], atol=1e-6)
    np.testing.assert_allclose(dst.sum(axis=0), mix, atol=1e-5)
    x.process(causal, hq_stems, False, False, dst)
    np.testing.assert_array_equal(dst, causal)


# ---------------------------------------------------------------------------------------------------- cache


def test_a_track_loaded_again_comes_from_the_cache(hq, audio, tmp_path):
    cache = StemCache(tmp_path)
    first = HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
    first.wait(timeout=60)
    assert first.complete and first.source == "analysis" and first.cache_path
    assert len(list(tmp_path.glob("*.flac"))) == 1 and not list(tmp_path.glob(".*"))
    again = HqTrackStems(audio.copy(), hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache, start=3 * CHUNK)
    again.wait(timeout=60)
    assert again.complete and again.source == "cache" and again.num_runs == 0
    np.testing.assert_allclose(again.stems, first.stems, atol=3.0 / 32768 * max(1.0, np.abs(first.stems).max()))
    np.testing.assert_allclose(again.stems.sum(axis=0), audio, atol=2e-6)
    other_audio = audio.copy()
    other_audio[0, 1000] += 1e-3
    third = HqTrackStems(other_audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
    third.wait(timeout=60)
    assert third.source == "analysis"  # other audio, another key


def test_a_corrupt_or_mismatched_cache_file_is_ignored_and_recomputed(hq, audio, tmp_path, caplog):
    cache = StemCache(tmp_path)
    first = HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
    first.wait(timeout=60)
    path = tmp_path / os.path.basename(first.cache_path)
    path.write_bytes(path.read_bytes()[:200] + b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="stembridge.engine.stem_cache"):
        again = HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
        again.wait(timeout=60)
    assert again.source == "analysis" and again.complete and again.error is None
    assert "ignoring" in caplog.text and str(path) in caplog.text
    np.testing.assert_allclose(again.stems, first.stems, atol=1e-6)
    # a file under this name made for other audio is ignored too
    from stembridge.engine.stem_cache import audio_hash

    other = track(1.0, seed=9)
    cache.store(audio_hash(other), "0" * 64, hq.separate(other)[:3], SR)
    wrong = cache.path_for(audio_hash(other), "0" * 64)
    os.replace(wrong, path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stembridge.engine.stem_cache"):
        third = HqTrackStems(audio, hq, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
        third.wait(timeout=60)
    assert third.source == "analysis" and "other audio" in caplog.text


def test_cache_evicts_the_least_recently_used_files(tmp_path):
    cache = StemCache(tmp_path, max_bytes=10**9)
    stems = np.random.default_rng(0).standard_normal((3, 2, 20000)).astype(np.float32) * 0.1
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    paths = [cache.store(keys[i], "f" * 64, stems, SR) for i in range(3)]
    size = paths[0].stat().st_size
    os.utime(paths[0], (1, 1))  # the oldest use
    os.utime(paths[1], (2, 2))
    cache.max_bytes = int(2.5 * size)
    newest = cache.store(keys[3], "f" * 64, stems, SR)
    left = set(tmp_path.glob("*.flac"))
    assert newest in left and paths[2] in left and paths[0] not in left and paths[1] not in left
    assert cache.clear() == 2 and not list(tmp_path.glob("*.flac"))


def test_a_cache_write_told_to_stop_leaves_nothing(tmp_path):
    cache = StemCache(tmp_path)
    stems = np.zeros((3, 2, 3000), dtype=np.float32)
    assert cache.store("a" * 64, "b" * 64, stems, SR, block=1000, should_stop=lambda: True) is None
    assert not list(tmp_path.iterdir())


def test_cache_settings_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="PCM_16"):
        StemCache(tmp_path, subtype="FLOAT")
    monkeypatch.setenv("STEMBRIDGE_CACHE", str(tmp_path / "x"))
    monkeypatch.setenv("STEMBRIDGE_CACHE_MAX_GB", "lots")
    with pytest.raises(ValueError, match="STEMBRIDGE_CACHE_MAX_GB"):
        StemCache()
    monkeypatch.setenv("STEMBRIDGE_CACHE_MAX_GB", "1.5")
    cache = StemCache()
    assert cache.directory == tmp_path / "x" and cache.max_bytes == 1_500_000_000


# ------------------------------------------------------------------------------------------ the child process


@pytest.fixture(scope="module")
def process():
    from stembridge.engine.live.hq_stems import HqAnalysisProcess

    proc = HqAnalysisProcess(DEFAULT_HQ_MODEL, TINY_MODEL)
    yield proc
    proc.close()
    assert not proc.alive


def test_a_child_process_analyses_into_shared_memory(process, audio, whole, tmp_path):
    cache = StemCache(tmp_path)
    a = HqTrackStems(audio, process, chunk_samples=CHUNK, join_samples=JOIN, cache=cache, start=4 * CHUNK)
    assert a.wait(timeout=60) and a.error is None and a.source == "analysis"
    np.testing.assert_allclose(a.stems.sum(axis=0), audio, atol=2e-6)
    # the runs started at chunk 4, then wrapped to 0 with a 3 s warm-up, which here reaches the start: the whole
    # track's stems, at the join too (blended between two equal estimates)
    np.testing.assert_allclose(a.stems, whole, atol=1e-5)
    dst = np.zeros((4, 2, 256), dtype=np.float32)
    assert a.read(5000, dst)
    np.testing.assert_array_equal(dst, whole[..., 5000:5256])
    b = HqTrackStems(audio, process, chunk_samples=CHUNK, join_samples=JOIN, cache=cache)
    assert b.wait(timeout=60) and b.source == "cache" and b.num_runs == 0
    a.close()
    b.close()
    assert a.stems is None  # its shared memory is gone


def test_a_new_track_on_the_process_stops_the_previous_one(process, audio):
    long_audio = track(15.0, seed=4)
    first = HqTrackStems(long_audio, process, chunk_samples=CHUNK, join_samples=JOIN)
    second = HqTrackStems(audio, process, chunk_samples=CHUNK, join_samples=JOIN)
    assert second.wait(timeout=60) and second.error is None
    assert first.wait(timeout=10) is False and not first.running  # stopped part way
    first.close()
    second.close()


def test_close_does_not_wait_for_the_work(process):
    a = HqTrackStems(track(10.0, seed=6), process, chunk_samples=CHUNK, join_samples=JOIN)
    time.sleep(0.5)
    t0 = time.perf_counter()
    a.close()  # on eject, from the control thread: returns at once, the memory goes when the child lets go
    assert time.perf_counter() - t0 < 0.1
    assert a._finished.wait(timeout=30)
    assert a.stems is None and not a.read(0, np.zeros((4, 2, 64), dtype=np.float32))


def test_a_track_on_a_closed_process_reports_an_error(audio):
    from stembridge.engine.live.hq_stems import HqAnalysisProcess

    proc = HqAnalysisProcess(DEFAULT_HQ_MODEL, TINY_MODEL)
    proc.close()
    a = HqTrackStems(audio, proc, chunk_samples=CHUNK, join_samples=JOIN)
    assert a.wait(timeout=5) is False and "not running" in a.error
    dst = np.zeros((4, 2, 64), dtype=np.float32)
    assert not a.read(0, dst)  # the deck keeps the causal stems
    a.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_too_little_shared_memory_is_a_clear_error(process, audio, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 16, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny())
    with pytest.raises(MemoryError, match="/dev/shm"):
        HqTrackStems(audio, process, chunk_samples=CHUNK, join_samples=JOIN)


def test_playback_fades_to_hq_stems_where_ready_and_back(hq, audio):
    from stembridge.engine.live.hq_stems import HqPlayback

    n = 256
    a = analysis(hq, audio)
    a.request(4 * CHUNK)
    a.step()  # chunk 4 only
    play = HqPlayback(n)
    play.set_track(a)
    causal = np.zeros((4, 2, n), dtype=np.float32)
    heard = []
    for pos in range(4 * CHUNK - 2 * n, 5 * CHUNK + 2 * n, n):
        causal[:] = 0.0
        causal[3] = audio[:, pos : pos + n]  # a causal estimate: everything in "other"
        hq_heard = play.process(pos, pos + n, causal)
        np.testing.assert_allclose(causal.sum(axis=0), audio[:, pos : pos + n], atol=1e-6)
        heard.append((pos, hq_heard, float(np.abs(causal[0]).max())))
    first_hq = next(p for p, h, _ in heard if h)
    assert first_hq == 4 * CHUNK  # the first block inside the ready chunk fades in
    last = max(p for p, h, _ in heard if h)
    assert last == 5 * CHUNK - n  # the last block before the chunk that is not ready fades out
    assert all(v == 0.0 for p, h, v in heard if not h)  # outside: the causal stems untouched
    play.set_track(None)
    assert play.process(4 * CHUNK, 4 * CHUNK + n, causal) is False
