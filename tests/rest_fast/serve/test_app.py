"""rest_fast.serve.app on a tiny model: the page, the WebSocket endpoint end to end, and every
refusal (one line, the right status) while the other callers go on."""
import asyncio
import io
import json

import aiohttp
import av
import numpy as np
import pytest

from reference.pipeline import frames_for_samples
from reference.speech import samples_needed
from rest_fast.serve.client import Refused, WebSocketTimeline, websocket_call
from tests.conftest import assert_frames_close, speech_like
from tests.rest_fast.serve.conftest import PORTRAIT, run, tiny_generator, tiny_server


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    return buffer.getvalue()


async def post(url, path, **kwargs):
    async with aiohttp.ClientSession() as http, http.post(url + path, **kwargs) as r:
        return r.status, await r.text()


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


def test_page_and_script_are_served():
    async def scenario():
        async with tiny_server() as (url, _), aiohttp.ClientSession() as http:
            async with http.get(url) as page, http.get(url + "app.js") as script:
                return page.status, await page.text(), script.status, await script.text()

    page_status, page, script_status, script = run(scenario())
    assert page_status == script_status == 200
    assert 'id="start"' in page and 'id="frames"' in page and "RTCPeerConnection" in script


def test_websocket_caller_gets_the_frames_of_its_speech():
    speech = speech_like(2.3, seed=4)

    async def scenario():
        async with tiny_server() as (url, _):
            return await websocket_call(url, speech, seed=5, piece_s=0.05)

    frames, end = run(scenario())
    expected = tiny_generator(1).generate(PORTRAIT, speech, seed=5)
    assert end == {"type": "end", "frames": len(expected), "dropped_frames": 0, "dropped_speech_s": 0.0}
    assert_frames_close(frames, expected)


def test_a_paced_websocket_caller_measures_voice_to_face_per_frame():
    """Speech at real-time pace in 20 ms pieces: every frame whose speech was sent whole comes
    back after at least the rest of its chunk's speech and the lookahead (a chunk's last frame
    waits for the lookahead alone, its first for 23 more frames of speech too)."""
    speech = speech_like(2.2, seed=4)
    timeline = WebSocketTimeline()

    async def scenario():
        async with tiny_server() as (url, _):
            return await websocket_call(url, speech, seed=5, pace=1.0, timeline=timeline)

    frames, end = run(scenario())
    cfg = tiny_generator(1).cfg
    made_by_speech = sum(samples_needed(j, cfg) <= len(speech) for j in range(10)) * cfg.frames_per_chunk
    delays = timeline.voice_to_face(cfg.samples_per_frame, made_by_speech)
    assert len(delays) == made_by_speech == 48 and len(timeline.sent) == round(2.2 / 0.02)
    assert len(frames) == end["frames"] > made_by_speech
    for index, delay in enumerate(delays):
        wait = 40.0 * (cfg.frames_per_chunk - 1 - index % cfg.frames_per_chunk) + cfg.speech.lookahead_ms
        assert delay >= wait - 25.0, (index, delay)             # a 20 ms piece of slack, and timer jitter


def test_websocket_speech_at_44k_stereo_int16_is_converted():
    speech = speech_like(1.5, seed=6)
    stereo44 = np.repeat(np.interp(np.arange(round(1.5 * 44100)) / 44100, np.arange(len(speech)) / 16000,
                                   speech)[:, None], 2, axis=1)

    async def scenario():
        async with tiny_server() as (url, _), aiohttp.ClientSession() as http:
            async with http.ws_connect(url.replace("http", "ws") + "ws", max_msg_size=0) as ws:
                await ws.send_json({"type": "start", "sample_rate": 44100, "channels": 2, "format": "s16"})
                assert (await ws.receive_json())["type"] == "ready"
                await ws.send_bytes((stereo44 * 32767).astype("<i2").tobytes())
                await ws.send_json({"type": "end"})
                frames = 0
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        return frames, json.loads(msg.data)
                    frames += 1

    frames, end = run(scenario())
    assert frames == end["frames"] == frames_for_samples(round(1.5 * 16000), tiny_generator(1).cfg)


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "malformed JSON"),
    (json.dumps({"sdp": 5, "type": "offer"}).encode(), "must be a JSON object"),
    (json.dumps({"sdp": "v=0\r\nm=audio notaport UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"}).encode(),
     "line 2 is not SDP ('m=audio notaport"),
    (json.dumps({"sdp": "hello", "type": "offer"}).encode(), "is not a session description"),
    (json.dumps({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"}).encode(),
     "must send audio"),
])
def test_malformed_offers_get_400_with_one_line(body, reason):
    status, text = run(_with_server(lambda url: post(url, "offer", data=body)))
    assert status == 400 and reason in text and one_line(text)


def test_offer_for_an_unknown_portrait_is_400_and_no_path_is_opened(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    body = json.dumps({"sdp": "v=0\r\n", "type": "offer", "portrait": str(secret)})
    status, text = run(_with_server(lambda url: post(url, "offer", data=body)))
    assert status == 400 and one_line(text)


def test_uploads_must_be_images_under_the_limit():
    async def scenario():
        async with tiny_server(max_upload_bytes=50_000) as (url, _):
            image = await post(url, "portraits", data=png_bytes(np.random.default_rng(0).integers(
                0, 255, (100, 80, 4), np.uint8)[..., :3].copy()))
            # A GIF's signature and a 16 x 16 screen, then no image.
            text = await post(url, "portraits", data=b"GIF89a\x10\x00\x10\x00 but not really an image" * 10)
            empty = await post(url, "portraits", data=b"")
            huge = await post(url, "portraits", data=b"\0" * 60_000)
            # The uploaded portrait is usable by id.
            status, body = image
            portrait = json.loads(body)["portrait"]
            frames, end = await websocket_call(url, speech_like(1.0), portrait=portrait)
            return image, text, empty, huge, end

    image, text, empty, huge, end = run(scenario())
    assert image[0] == 200 and end["type"] == "end"
    assert text[0] == 400 and "not an image" in text[1] and one_line(text[1])
    assert empty[0] == 400 and "empty" in empty[1]
    assert huge[0] == 413 and "limit" in huge[1] and one_line(huge[1])


def test_capacity_full_is_a_503_and_the_caller_inside_goes_on():
    speech = speech_like(3.0, seed=7)

    async def scenario():
        async with tiny_server(capacity=1) as (url, app):
            inside = asyncio.ensure_future(websocket_call(url, speech, pace=1.0, piece_s=0.1))
            while not _hub(app).sessions:
                await asyncio.sleep(0.05)
            offer = await post(url, "offer", json={"sdp": "v=0\r\n", "type": "offer"})
            try:
                await websocket_call(url, speech)
                ws_refusal = None
            except aiohttp.WSServerHandshakeError as e:
                ws_refusal = e.status
            frames, end = await inside
            return offer, ws_refusal, frames, end

    offer, ws_refusal, frames, end = run(scenario())
    # A malformed offer is refused before capacity is looked at; a well-formed one would be 503.
    assert offer[0] in (400, 503)
    assert ws_refusal == 503
    assert end["type"] == "end" and len(frames) == end["frames"] == 75


def test_capacity_full_offer_is_503_with_a_reason():
    from aiortc import RTCPeerConnection

    async def scenario():
        async with tiny_server(capacity=1) as (url, app):
            inside = asyncio.ensure_future(websocket_call(url, speech_like(2.0), pace=1.0))
            while not _hub(app).sessions:
                await asyncio.sleep(0.05)
            pc = RTCPeerConnection()
            pc.addTransceiver("audio", direction="sendrecv")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            refusal = await post(url, "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
            await pc.close()
            await inside
            return refusal

    status, text = run(scenario())
    assert status == 503 and "all 1 streams" in text and one_line(text)


def test_websocket_protocol_errors_are_explained():
    async def scenario():
        out = []
        async with tiny_server() as (url, app), aiohttp.ClientSession() as http:
            for first in ("hello", json.dumps({"type": "start", "sample_rate": 1, "format": "mp3"}),
                          json.dumps({"type": "start", "portrait": "../../etc/passwd"})):
                async with http.ws_connect(url.replace("http", "ws") + "ws") as ws:
                    await ws.send_str(first)
                    out.append(await ws.receive_json())
            async with http.ws_connect(url.replace("http", "ws") + "ws") as ws:
                await ws.send_json({"type": "start", "channels": 2, "format": "s16"})
                await ws.receive_json()
                await ws.send_bytes(b"\0" * 6)                 # 1.5 stereo int16 samples
                out.append(await ws.receive_json())
            await asyncio.sleep(0.2)
            out.append(_hub(app).stats["open_streams"])
        return out

    first, params, path, pcm, open_streams = run(scenario())
    assert first["type"] == "error" and "first message" in first["message"]
    assert "sample_rate" in params["message"] and "format" in params["message"]
    assert "unknown portrait" in path["message"]
    assert "not a whole number" in pcm["message"]
    assert open_streams == 0


def test_a_caller_that_stops_reading_is_dropped_frames_not_memory():
    async def scenario():
        async with tiny_server(capacity=2) as (url, app):
            # 60 s of speech at 4x real time for 15 s (up to 1,500 frames, 18 MB; the server
            # makes them about that fast here), against a receive buffer capped at 64 KiB.
            # Loopback's own buffers grow to tens of MB, and with them whether anything was
            # dropped depended on the machine's speed; capped, about 480 frames fit on the way
            # (measured), so a server a third as fast still overflows them.
            slow = asyncio.ensure_future(websocket_call(url, speech_like(60.0, seed=8), read=False,
                                                        hang_up_after_s=15.0, piece_s=0.2, pace=4.0,
                                                        receive_buffer=1 << 16))
            await asyncio.sleep(0.5)
            frames, end = await websocket_call(url, speech_like(1.5, seed=9))   # others go on
            dropped = queued = None
            while not slow.done():
                session = next(iter(_hub(app).sessions.values()), None)
                if session is not None:
                    dropped, queued = session.dropped_frames, len(session.outbox)
                await asyncio.sleep(0.1)
            await slow
            await asyncio.sleep(0.3)
            return end, dropped, queued, _hub(app).stats["open_streams"]

    end, dropped, queued, open_streams = run(scenario())
    assert end["type"] == "end" and end["frames"] == 38
    assert dropped > 0 and queued <= 2
    assert open_streams == 0


def _hub(app):
    from rest_fast.serve.app import KEYS
    return app[KEYS["hub"]]


async def _with_server(request):
    async with tiny_server() as (url, _):
        return await request(url)


def test_an_answered_offer_that_never_connects_frees_its_stream(monkeypatch):
    from aiortc import RTCPeerConnection
    from rest_fast.serve import app as app_module
    monkeypatch.setattr(app_module, "CONNECT_TIMEOUT_S", 0.5)

    async def scenario():
        async with tiny_server(capacity=1) as (url, app):
            pc = RTCPeerConnection()
            pc.addTransceiver("audio", direction="sendrecv")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            status, _ = await post(url, "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
            held = _hub(app).stats["open_streams"]
            await pc.close()                       # the answer is never applied: no connection
            await asyncio.sleep(1.5)
            return status, held, _hub(app).stats["open_streams"]

    status, held, after = run(scenario())
    assert status == 200 and held == 1 and after == 0


# ---- faults found by an outside test of the server --------------------------------------------

async def _offer(url, audio="sendrecv", video="recvonly", **body):
    from aiortc import RTCConfiguration, RTCPeerConnection
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction=audio)
    pc.addTransceiver("video", direction=video)
    await pc.setLocalDescription(await pc.createOffer())
    try:
        return await post(url, "offer", json={"sdp": pc.localDescription.sdp, "type": "offer", **body})
    finally:
        await pc.close()


def test_an_offer_that_will_never_send_audio_is_refused():
    status, text = run(_with_server(lambda url: _offer(url, audio="recvonly")))
    assert status == 400 and "must send audio" in text and "audio recvonly" in text and one_line(text)


@pytest.mark.parametrize("stun", [None, "stun:127.0.0.1:3478"])
def test_no_stun_server_is_asked_unless_one_is_given(stun):
    async def scenario():
        async with tiny_server(stun_url=stun) as (url, app):
            status, _ = await _offer(url)
            from rest_fast.serve.app import KEYS
            (pc, _, _), = app[KEYS["state"]]["peers"].values()
            gatherer = pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
            return status, gatherer._connection.stun_server

    status, server = run(scenario())
    assert status == 200 and server == (None if stun is None else ("127.0.0.1", 3478))


def huge_png(width: int = 8000, height: int = 8000) -> bytes:
    """A single-colour PNG of width x height made row by row (never the whole image in memory):
    ~200 KB that decode to 256 MB of RGBA."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\0" + b"\x80" * (3 * width)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_image_of_too_many_pixels_is_refused_from_its_header():
    import resource
    import time
    data = huge_png()
    assert len(data) < 1_000_000

    async def scenario():
        async with tiny_server() as (url, _):
            await post(url, "portraits", data=png_bytes(np.zeros((8, 8, 3), np.uint8)))   # warm
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            status, text = await post(url, "portraits", data=data)
            return status, text, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak

    status, text, seconds, grown_kib = run(scenario())
    print(f"an 8000 x 8000 PNG of {len(data)} B: {status} after {1000 * seconds:.1f} ms, peak RSS +{grown_kib} KiB")
    assert status == 413 and "8000 x 8000 pixels" in text and "megapixels" in text and one_line(text)
    assert seconds < 0.1 and grown_kib < 20_000, (seconds, grown_kib)   # decoded: +256 MB at least


def test_speech_sent_faster_than_real_time_is_paced_not_dropped():
    """20 s sent at once over a backlog of about 5 s: the server stops reading while the backlog
    is full (the client's sends wait), and every frame of the speech comes back."""
    speech = speech_like(20.0, seed=11)

    async def scenario():
        async with tiny_server() as (url, app):
            backlog = []

            async def watch():
                while True:
                    for session in _hub(app).sessions.values():
                        backlog.append(session.backlog())
                    await asyncio.sleep(0.02)
            watcher = asyncio.ensure_future(watch())
            frames, end = await websocket_call(url, speech, piece_s=0.02)
            watcher.cancel()
            return frames, end, max(backlog), _hub(app).max_backlog_samples

    frames, end, most, limit = run(scenario())
    expected = frames_for_samples(len(speech), tiny_generator(1).cfg)
    assert end["dropped_speech_s"] == 0.0 and end["frames"] == len(frames) == expected
    assert most <= limit


def test_a_client_that_sends_end_and_goes_away_leaves_no_traceback(caplog):
    async def scenario():
        async with tiny_server() as (url, app), aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url.replace("http", "ws") + "ws")
            await ws.send_json({"type": "start"})
            await ws.receive_json()
            await ws.send_bytes(speech_like(3.0, seed=12).tobytes())
            await ws.send_json({"type": "end"})
            await http.close()                               # gone before its frames, no close frame
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not _hub(app).sessions:
                    break
            return _hub(app).stats["open_streams"]

    with caplog.at_level("DEBUG"):
        open_streams = run(scenario())
    assert open_streams == 0
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")], \
        [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"]
