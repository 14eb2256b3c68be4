"""rest_fast.serve.client.webrtc_voice_to_face: a receiver's frames matched to the server's slots."""
import numpy as np
import pytest

from rest_fast.serve.client import webrtc_voice_to_face


def timeline(origin=4_000_000_000, receiver_clock_offset=0.0):
    """A server that sends slot s at 100 + 0.04 s (frames from slot 10 on; slots before show the
    portrait), each frame's speech 0.5-0.6 s before; a receiver that gets each slot 6 ms after it
    is sent and shows it 50 ms later, from slot 3 on, with RTP timestamps origin + 3600 s."""
    rng = np.random.default_rng(0)
    sent = []
    for slot in range(10, 200):
        at = 100 + 0.04 * slot
        sent.append((slot, slot - 10, at, at - 0.5 - 0.1 * rng.random()))
    shown = [((origin + 3600 * slot) % 2**32, 100 + 0.04 * slot + 0.006 + receiver_clock_offset,
              100 + 0.04 * slot + 0.056 + receiver_clock_offset) for slot in range(3, 200)]
    return sent, shown


def test_each_frame_is_matched_to_its_slot_across_an_rtp_wrap():
    sent, shown = timeline()
    parts = webrtc_voice_to_face(sent, shown)
    assert parts.shape == (190, 3)
    np.testing.assert_allclose(parts[:, 0], [1000 * (at - speech) for _, _, at, speech in sent], atol=1e-6)
    np.testing.assert_allclose(parts[:, 1:], [[6, 50]] * 190, atol=1e-6)


def test_a_receiver_on_another_clock_is_refused():
    sent, shown = timeline(receiver_clock_offset=10.0)
    with pytest.raises(ValueError, match="one machine"):
        webrtc_voice_to_face(sent, shown)
