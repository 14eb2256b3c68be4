"""examples/websocket_client.py against a server: an uploaded portrait, a speech file, an mp4."""
import asyncio

import numpy as np
import soundfile

from reference.media import read_mp4_info
from tests.conftest import load_script, speech_like
from tests.rest_fast.serve.conftest import run, tiny_server
from tests.rest_fast.serve.test_app import png_bytes


def test_the_example_writes_the_avatar_to_an_mp4(tmp_path):
    example = load_script("examples/websocket_client.py")
    audio, portrait, out = tmp_path / "speech.wav", tmp_path / "face.png", tmp_path / "talk.mp4"
    soundfile.write(audio, np.stack([speech_like(2.0, 44100)] * 2, 1), 44100)   # stereo 44.1 kHz
    portrait.write_bytes(png_bytes(np.full((90, 120, 3), 200, np.uint8)))

    async def scenario():
        async with tiny_server() as (url, _):
            return await example.talk(url, str(audio), str(out), str(portrait), realtime=False)

    got = run(scenario())
    info = read_mp4_info(out)
    assert got["frames"] == 50 and got["dropped_frames"] == 0
    assert info["frames"] == 50 and info["width"] == 64
