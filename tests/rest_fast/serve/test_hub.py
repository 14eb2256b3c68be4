"""rest_fast.serve.hub: callers' streams on one generator, their speech beside their frames,
and every queue bounded."""
import asyncio

import numpy as np
import pytest

from reference.pipeline import frames_for_samples
from rest_fast.serve.hub import AvatarHub, CapacityError
from tests.conftest import assert_frames_close, speech_like
from tests.rest_fast.serve.conftest import PORTRAIT, run, tiny_generator


async def drain(session):
    chunks = []
    while (chunk := await session.next_chunk()) is not None:
        chunks.append(chunk)
    return chunks


def test_two_callers_get_their_own_frames_and_speech_back():
    speeches = [speech_like(2.2, seed=1), speech_like(1.6, seed=2)]

    async def scenario():
        hub = AvatarHub(tiny_generator(2), max_queued_chunks=8)
        sessions = [await hub.open(PORTRAIT, seed=s) for s in (7, 8)]
        for start in range(0, 40000, 700):               # pieces, interleaved between callers
            for session, speech in zip(sessions, speeches):
                session.feed(speech[start:start + 700])
            await asyncio.sleep(0)
        for session in sessions:
            session.end()
        got = await asyncio.gather(*(drain(s) for s in sessions))
        await hub.stop()
        return got

    got = run(scenario())
    alone = tiny_generator(1)
    for chunks, speech, seed in zip(got, speeches, (7, 8)):
        frames = np.concatenate([c.frames for c in chunks])
        assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [len(c.frames) for c in chunks])[:-1])
        assert_frames_close(frames, alone.generate(PORTRAIT, speech, seed=seed))
        assert len(frames) == frames_for_samples(len(speech), alone.cfg)
        back = np.concatenate([c.speech for c in chunks])    # the speech each frame shows
        assert len(back) == len(frames) * 640
        np.testing.assert_array_equal(back[:len(speech)], speech)
        assert not back[len(speech):].any()


def test_capacity_is_refused_then_freed():
    async def scenario():
        hub = AvatarHub(tiny_generator(2))
        first = await hub.open(PORTRAIT)
        await hub.open(PORTRAIT)
        with pytest.raises(CapacityError, match="all 2 streams"):
            await hub.open(PORTRAIT)
        await hub.close(first)
        await hub.close(first)                                 # idempotent
        third = await hub.open(PORTRAIT)
        assert hub.stats["open_streams"] == 2 and len(hub.gen.streams) == 2
        await hub.stop()
        return third

    run(scenario())


def test_a_receiver_that_does_not_read_loses_old_chunks_not_memory():
    async def scenario():
        hub = AvatarHub(tiny_generator(1), max_queued_chunks=1)
        session = await hub.open(PORTRAIT)
        speech = speech_like(6.0, seed=3)
        for start in range(0, len(speech), 1600):
            session.feed(speech[start:start + 1600])
            await asyncio.sleep(0.01)
        session.end()
        while not session.finished:
            await asyncio.sleep(0.05)
        stats = session.stats
        await hub.stop()
        return session, stats

    session, stats = run(scenario())
    assert len(session.outbox) == 0                             # closed: nothing kept
    assert stats["frames_made"] == frames_for_samples(6 * 16000, session.stream.cfg)
    assert 0 < stats["frames_made"] - stats["dropped_frames"] <= 24   # only the newest chunk kept
    assert len(session._speech) <= 24 * 640


def test_speech_beyond_the_backlog_is_dropped_and_counted():
    async def scenario():
        hub = AvatarHub(tiny_generator(1), max_backlog_s=1.0)
        session = await hub.open(PORTRAIT)
        for _ in range(200):                                    # 10 s, no chance to tick
            session.feed(np.zeros(800, np.float32))
        held = session.pending_samples
        await hub.stop()
        return session, held

    session, held = run(scenario())
    assert held <= session.hub.max_backlog_samples and session.dropped_samples == 200 * 800 - held


def test_each_frame_is_timed_from_the_arrival_of_its_own_speech():
    """Frame f shows samples f*640 .. (f+1)*640 - 1: its voice to face runs from the arrival of the
    piece that held the last of them (given here as that piece's number), and the flush after
    "end" makes frames whose speech never came (NaN)."""
    speech = speech_like(2.01, seed=4)                          # the last frame's speech ends early
    piece = 300                                                 # pieces that straddle frames

    async def scenario():
        hub = AvatarHub(tiny_generator(1), max_queued_chunks=16)
        session = await hub.open(PORTRAIT)
        for n, start in enumerate(range(0, len(speech), piece)):
            session.feed(speech[start:start + piece], arrived_at=float(n))
            await asyncio.sleep(0)
        session.end()
        chunks = await drain(session)
        await hub.stop()
        return chunks

    chunks = run(scenario())
    arrived = np.concatenate([c.speech_arrived_at for c in chunks])
    frames = np.arange(len(arrived))
    last_sample = (frames + 1) * 640 - 1
    spoken = last_sample < len(speech)
    np.testing.assert_array_equal(arrived[spoken], last_sample[spoken] // piece)
    assert np.isnan(arrived[~spoken]).all() and (~spoken).any()
