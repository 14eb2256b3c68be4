"""examples/avatar_server.py: two callers over loopback TCP at once, each receiving exactly the
frames its speech makes offline (the example is a working server, not a sketch)."""
import asyncio
import importlib.util
from pathlib import Path

import numpy as np

from reference.model import RestModel
from rest_fast import StreamingGenerator
from tests.conftest import make_tiny_config, speech_like

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("avatar_server", ROOT / "examples" / "avatar_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_callers_at_once_get_their_own_frames():
    example = load_example()
    model = RestModel.random(make_tiny_config(), seed=1).eval()
    image = np.full((64, 64, 3), 90, np.uint8)
    speeches = [speech_like(2.2, seed=1), speech_like(1.6, seed=2)]

    async def scenario():
        gen = StreamingGenerator(model, capacity=2)
        server, batcher = await example.serve(gen, image, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            got = await asyncio.gather(*(example.talk("127.0.0.1", port, s, piece=1000, pace_s=0.001,
                                                      resolution=64) for s in speeches))
        batcher.cancel()
        return got

    received = asyncio.run(asyncio.wait_for(scenario(), timeout=300))
    for speech, frames in zip(speeches, received):
        # Seeds go to callers in the order they connect (1, 2): either is this caller's.
        matches = []
        for seed in (1, 2):
            alone = StreamingGenerator(model, capacity=1).generate(image, speech, seed=seed)
            diff = np.abs(frames.astype(int) - alone) if frames.shape == alone.shape else None
            matches.append(diff is not None and diff.max() <= 1 and (diff > 0).mean() < 0.01)
        assert sum(matches) == 1, matches   # its own frames, up to batched rounding
