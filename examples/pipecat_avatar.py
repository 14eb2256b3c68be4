"""A voice agent with a face, all on this machine: Pipecat's SmallWebRTC transport (aiortc, no
cloud room), a local TTS (Debian's espeak-ng), the avatar (rest_fast's RestFastVideoService) and
a tiny agent that says back whatever line you type.

    sudo apt-get install espeak-ng
    pip install -e ".[pipecat]"
    python examples/pipecat_avatar.py [--port 7860] [--checkpoint low-latency] [--portrait me.png]
    # then open http://127.0.0.1:7860/, press Start, type a line and press Say

In your own agent, the avatar goes between the TTS and the output transport:

    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, avatar, transport.output(),
                         assistant_aggregator])

with the transport's video out enabled at the avatar's size and 25 fps (``video_params`` below).
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

from aiohttp import web
from pipecat.frames.frames import EndFrame, Frame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.pipeline.worker import PipelineWorker
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout

from reference.checkpoint import load_config  # noqa: E402
from rest_fast.integrations.pipecat import RestFastVideoService  # noqa: E402
from rest_fast.streaming import bundled_checkpoint  # noqa: E402

PAGE = Path(__file__).with_name("pipecat_avatar.html")


class EspeakTTSService(TTSService):
    """Text to speech with espeak-ng (a Debian package, its voices inside): WAV on its stdout."""

    def __init__(self, *, voice: str = "en-us", rate_wpm: int = 160, **kwargs):
        super().__init__(settings=TTSSettings(model=None, voice=voice, language=voice.split("-")[0]), **kwargs)
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed: sudo apt-get install espeak-ng")
        self._voice, self._rate_wpm = voice, rate_wpm

    async def run_tts(self, text: str, context_id: str):
        process = await asyncio.create_subprocess_exec(
            "espeak-ng", "--stdout", "-v", self._voice, "-s", str(self._rate_wpm), text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

        async def wav():
            while chunk := await process.stdout.read(8192):
                yield chunk
        async for frame in self._stream_audio_frames_from_iterator(wav(), strip_wav_header=True,
                                                                   context_id=context_id):
            yield frame
        await process.wait()


def video_params(size: int) -> TransportParams:
    return TransportParams(audio_in_enabled=False, audio_out_enabled=True, video_out_enabled=True,
                           video_out_is_live=True, video_out_width=size, video_out_height=size,
                           video_out_framerate=25)


class Bot:
    """One browser's call: its pipeline, and the lines it is asked to say."""

    def __init__(self, connection: SmallWebRTCConnection, args):
        self.avatar = RestFastVideoService(checkpoint=args.checkpoint, portrait=args.portrait, seed=args.seed)
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=video_params(args.resolution))
        pipeline = Pipeline([transport.input(), EspeakTTSService(), self.avatar, transport.output()])
        self.worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=24000))
        self.runner = WorkerRunner(handle_sigint=False)

        @transport.event_handler("on_client_disconnected")
        async def gone(transport, client):
            await self.worker.cancel()

    async def run(self) -> None:
        await self.runner.add_workers(self.worker)
        await self.runner.run()

    async def say(self, text: str) -> None:
        await self.worker.queue_frame(TTSSpeakFrame(text))

    async def stop(self) -> None:
        await self.worker.queue_frame(EndFrame())


def make_app(args) -> web.Application:
    bots: dict[str, Bot] = {}

    async def page(request):
        return web.FileResponse(PAGE)

    async def offer(request):
        body = await request.json()
        connection = SmallWebRTCConnection(ice_servers=[])         # loopback / LAN: no STUN
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        bot = Bot(connection, args)
        answer = connection.get_answer()
        bots[answer["pc_id"]] = bot
        task = asyncio.ensure_future(bot.run())
        task.add_done_callback(lambda _: bots.pop(answer["pc_id"], None))
        return web.json_response(answer)

    async def say(request):
        body = await request.json()
        bot = bots.get(body.get("pc_id"))
        text = str(body.get("text", "")).strip()[:500]
        if bot is None:
            raise web.HTTPNotFound(text="no such call: press Start first\n")
        if not text:
            raise web.HTTPBadRequest(text="nothing to say: type a line\n")
        await bot.say(text)
        return web.json_response({"said": text})

    async def stats(request):
        bot = bots.get(request.query.get("pc_id"))
        if bot is None:
            raise web.HTTPNotFound(text="no such call\n")
        return web.json_response({"frames_pushed": bot.avatar.frames_pushed})

    async def shutdown(app):
        for bot in list(bots.values()):
            await bot.worker.cancel()

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/offer", offer)
    app.router.add_post("/say", say)
    app.router.add_get("/stats", stats)
    app.on_shutdown.append(shutdown)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoint", default="low-latency", help="a bundled name or a checkpoint directory")
    p.add_argument("--portrait", default=None, help="the face (default: the demo portrait)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = Path(args.checkpoint) if Path(args.checkpoint).exists() else bundled_checkpoint(args.checkpoint)
    args.resolution = load_config(path).resolution           # the transport's video size
    print(f"pipecat avatar: open http://{args.host}:{args.port}/ in a browser (Ctrl-C stops)", flush=True)
    web.run_app(make_app(args), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
