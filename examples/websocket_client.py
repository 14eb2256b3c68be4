"""Another service talking to `rest-fast serve` over its WebSocket endpoint: send speech, get the
avatar's frames back, write them with the speech to an mp4.

    rest-fast serve &                                   # in another terminal
    python examples/websocket_client.py --audio speech.wav --out talk.mp4 [--url http://127.0.0.1:8080/]
        [--portrait face.png] [--realtime]

The protocol (docs/serve.md, "Protocols"): a JSON "start" text message, then binary messages of PCM in
the announced format (here float32 mono at 16 kHz, sent in 20 ms pieces as a microphone would),
then {"type": "end"}; the server sends {"type": "ready", ...}, one binary message per frame
(8-byte header: frame index u32, compute ms f32; then H*W*3 RGB bytes) and, after the last frame,
{"type": "end", "frames": n, "dropped_frames": d, "dropped_speech_s": s}.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from reference.media import Mp4Writer, load_audio  # noqa: E402
from rest_fast.serve.client import websocket_call  # noqa: E402


async def upload_portrait(url: str, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(url + "portraits", data=Path(path).read_bytes()) as r:
        if r.status != 200:
            raise SystemExit(f"the server refused the portrait: {(await r.text()).strip()}")
        return (await r.json())["portrait"]


async def talk(url: str, audio_path: str, out: str, portrait_path: str | None, realtime: bool) -> dict:
    speech = load_audio(audio_path, 16000)
    portrait = await upload_portrait(url, portrait_path) if portrait_path else "bundled"
    start = time.perf_counter()
    frames, end = await websocket_call(url, speech, 16000, portrait=portrait,
                                       pace=1.0 if realtime else None)
    elapsed = time.perf_counter() - start
    if end is None or end.get("type") != "end":
        raise SystemExit(f"the server ended the call: {end}")
    with Mp4Writer(out, 25, frames.shape[2], frames.shape[1], audio=speech, sample_rate=16000) as writer:
        writer.write(frames)
    return {"frames": len(frames), "seconds": elapsed, "dropped_frames": end["dropped_frames"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080/", help="the server (rest-fast serve)")
    p.add_argument("--audio", required=True, help="speech file (any format and rate)")
    p.add_argument("--out", required=True, help="mp4 to write")
    p.add_argument("--portrait", help="upload this image as the avatar (default: the server's own)")
    p.add_argument("--realtime", action="store_true", help="send the speech at its own pace")
    args = p.parse_args(argv)
    url = args.url if args.url.endswith("/") else args.url + "/"
    got = asyncio.run(talk(url, args.audio, args.out, args.portrait, args.realtime))
    print(f"wrote {args.out}: {got['frames']} frames in {got['seconds']:.1f} s "
          f"({got['dropped_frames']} dropped)")


if __name__ == "__main__":
    main()
