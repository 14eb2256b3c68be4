"""A live-avatar server: many callers stream speech in, talking-head frames stream back.

    python examples/avatar_server.py [--checkpoint DIR] [--image portrait.png] [--port 8765]

The transport here is plain asyncio TCP with a three-message framing, so the example runs with
the standard library alone; a websocket or WebRTC server drives the generator with the very same
calls (the marked lines), only its receive and send functions differ:

    client -> server   b"A" + u32 length + float32 mono 16 kHz PCM     speech, any piece size
                       b"E" + u32 0                                     end of speech
    server -> client   b"F" + u32 length + uint8 frames (n, H, W, 3)    frames as they are made
                       b"E" + u32 0                                     after the last frame

How it drives rest_fast: every connection opens a stream on one shared StreamingGenerator
(``gen.open``) and ``feed``s it what arrives. One batcher task calls ``gen.step()`` whenever any
stream has a chunk's audio complete: all ready streams advance together in one batched forward,
and each gets its frames back. The generator is not thread-safe and its calls block, so they all
run on one worker thread (``run``), keeping the event loop free for I/O.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from rest_fast import StreamingGenerator  # noqa: E402

HEADER = struct.Struct("<cI")


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    return kind, await reader.readexactly(length)


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class AvatarServer:
    def __init__(self, gen: StreamingGenerator, image, tick_s: float = 0.01):
        self.gen, self.image, self.tick_s = gen, image, tick_s
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # the generator's thread
        self.outboxes: dict[object, asyncio.Queue] = {}
        self.seeds = 0
        self.wake = asyncio.Event()

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seeds += 1
        stream = await self.run(self.gen.open, self.image, self.seeds)          # gen.open
        outbox: asyncio.Queue = asyncio.Queue()
        self.outboxes[stream] = outbox
        sender = asyncio.create_task(self.send(writer, outbox))
        try:
            while True:
                kind, payload = await read_message(reader)
                if kind == b"A":
                    pcm = np.frombuffer(payload, dtype=np.float32)
                    await self.run(stream.feed, pcm)                              # stream.feed
                    self.wake.set()
                elif kind == b"E":
                    del self.outboxes[stream]
                    rest = await self.run(stream.flush)                           # stream.flush
                    if len(rest):
                        outbox.put_nowait(rest)
                    outbox.put_nowait(None)
                    break
        except asyncio.IncompleteReadError:       # the caller hung up
            self.outboxes.pop(stream, None)
            outbox.put_nowait(None)
        finally:
            await sender
            await self.run(stream.close)                                          # stream.close
            writer.close()

    async def send(self, writer: asyncio.StreamWriter, outbox: asyncio.Queue) -> None:
        while (frames := await outbox.get()) is not None:
            writer.write(message(b"F", np.ascontiguousarray(frames).tobytes()))
            await writer.drain()
        writer.write(message(b"E"))
        await writer.drain()

    async def batcher(self) -> None:
        """Advance every stream with a complete chunk, all in one batched forward."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while True:
                streams = [s for s in self.outboxes if s._ready()]
                if not streams:
                    break
                made = await self.run(self.gen.step, streams)                     # gen.step
                for stream, frames in zip(streams, made):
                    if len(frames) and stream in self.outboxes:
                        self.outboxes[stream].put_nowait(frames)
            await asyncio.sleep(self.tick_s)


async def serve(gen: StreamingGenerator, image, host: str = "127.0.0.1", port: int = 8765):
    """Start the server; returns (asyncio server, batcher task)."""
    server = AvatarServer(gen, image)
    batcher = asyncio.create_task(server.batcher())
    return await asyncio.start_server(server.handle, host, port), batcher


async def talk(host: str, port: int, audio: np.ndarray, piece: int = 3200, pace_s: float = 0.0,
               resolution: int = 256) -> np.ndarray:
    """A caller: sends ``audio`` in pieces (``pace_s`` apart), returns every frame received."""
    reader, writer = await asyncio.open_connection(host, port)
    frames: list[np.ndarray] = []

    async def receive():
        while True:
            kind, payload = await read_message(reader)
            if kind == b"E":
                return
            frames.append(np.frombuffer(payload, np.uint8).reshape(-1, resolution, resolution, 3))

    receiving = asyncio.create_task(receive())
    for start in range(0, len(audio), piece):
        writer.write(message(b"A", audio[start:start + piece].astype(np.float32).tobytes()))
        await writer.drain()
        await asyncio.sleep(pace_s)
    writer.write(message(b"E"))
    await writer.drain()
    await receiving
    writer.close()
    return np.concatenate(frames) if frames else np.zeros((0, resolution, resolution, 3), np.uint8)


def main() -> None:
    from rest_fast.cli import demo_asset
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="checkpoint directory (default: the bundled cpu weights)")
    p.add_argument("--image", default=str(demo_asset("demo_portrait.png")), help="the avatar's portrait")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--capacity", type=int, default=8, help="concurrent callers")
    args = p.parse_args()
    gen = StreamingGenerator.from_pretrained(args.checkpoint, capacity=args.capacity)
    gen.warmup()   # on CUDA: every stream count's graph now, not mid-call

    async def forever():
        server, _ = await serve(gen, args.image, args.host, args.port)
        print(f"avatar server on {args.host}:{args.port} ({args.capacity} callers at most)")
        async with server:
            await server.serve_forever()
    asyncio.run(forever())


if __name__ == "__main__":
    main()
