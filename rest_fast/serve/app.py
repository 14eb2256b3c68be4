"""The HTTP side of ``rest-fast serve`` (aiohttp): the page, WebRTC signalling, the WebSocket
endpoint, portrait uploads and live figures. The protocol is documented in docs/serve.md.

    GET  /                     the page (static/index.html; plain HTML + JS, no build step)
    POST /portraits            an image (the raw body, any format PyAV decodes) -> {"portrait": id}
    POST /offer                {"sdp", "type": "offer", "portrait": "bundled" | id, "seed"?}
                               -> {"sdp", "type": "answer", "session": id}
    GET  /stats[?session=id[&frame_times=1]]   the server's figures (and one session's) as JSON
    GET  /ws                   WebSocket: PCM in, frames out (server-to-server)

Refusals are one line of text: 400 for a malformed offer, JSON or image, 413 for an upload over
the limit, 503 when every stream is taken (the other callers go on). Portraits are looked up by
the id the server gave; nothing a client sends is ever opened as a path.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
from importlib import resources

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from reference.media import InputError, load_image

from .hub import AvatarHub, CapacityError
from .media import (MediaWatch, PacketArrivals, Playout, SpeechConverter, avatar_tracks, image_size,
                    shorten_audio_prefetch)

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 8 * 2**20
MAX_UPLOAD_PIXELS = 25_000_000           # ~25 MP: a 6000 x 4000 photo; decoded, 100 MB of RGBA
PORTRAITS_KEPT = 64                      # uploaded portraits held (least recently used go first)
WS_FRAME_HEADER = struct.Struct("<If")   # frame index, compute ms of the chunk it belongs to
WS_START_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 30.0                 # an answered offer must connect within this
MEDIA_TIMEOUT_S = 3.0                    # a connected caller that sends no packet (RTP or RTCP)
MEDIA_WATCH_S = 0.5                      # for this long is gone: freed within 3.5 s
SPEECH_GAP_S = 0.5                       # no speech packets for this long: silence from then on
SPEECH_GAP_STEP_S = 0.1
WS_MAX_MESSAGE = 2**20                   # one PCM message: 1 MiB at most (~16 s of f32 mono)
KEYS = {"hub": web.AppKey("hub", AvatarHub), "state": web.AppKey("state", dict)}


def static_path(name: str) -> str:
    return str(resources.files("rest_fast.serve") / "static" / name)


def bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=reason.splitlines()[0] + "\n")


def create_app(hub: AvatarHub, portrait, *, av_offset_s: float = 0.0,
               prebuffer_s: float | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               stun_url: str | None = None) -> web.Application:
    """The server for ``hub``; ``portrait`` (a path or array) is the one called "bundled".
    ``stun_url``: the STUN server WebRTC peers ask for their public address (none by default:
    a server on loopback or a LAN needs none, and asking one leaks that a call is made)."""
    app = web.Application(client_max_size=max_upload_bytes)
    app[KEYS["hub"]] = hub
    app[KEYS["state"]] = {
        "portraits": collections.OrderedDict(bundled=load_image(portrait, hub.resolution)),
        "peers": {},              # session id -> (RTCPeerConnection, Session, Playout)
        "tasks": set(),
        "av_offset_s": av_offset_s, "prebuffer_s": prebuffer_s, "stun_url": stun_url,
        "sockets": set(),         # open WebSockets, closed with 1001 when the server stops
    }
    app.router.add_get("/", page)
    app.router.add_get("/app.js", script)
    app.router.add_post("/portraits", upload_portrait)
    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    app.router.add_get("/ws", websocket)
    app.on_shutdown.append(shutdown)
    return app


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_path("index.html"))


async def script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_path("app.js"))


# ---- portraits ------------------------------------------------------------------------------

async def upload_portrait(request: web.Request) -> web.Response:
    state, hub = request.app[KEYS["state"]], request.app[KEYS["hub"]]
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(
            max_size=request.app._client_max_size, actual_size=request.content_length or 0,
            text=f"the upload is over the limit of {request.app._client_max_size // 2**20} MiB: "
                 "send a smaller image (it is resized to the model's resolution anyway)\n")
    if not data:
        raise bad_request("the upload is empty: send the image file as the request body")
    size = image_size(data)                              # read from the header, not decoded
    if size is not None and size[0] * size[1] > MAX_UPLOAD_PIXELS:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_UPLOAD_PIXELS, actual_size=size[0] * size[1],
            text=f"the image is {size[0]} x {size[1]} pixels, over the limit of {MAX_UPLOAD_PIXELS / 1e6:g} "
                 "megapixels: send a smaller one (it is resized to the model's resolution anyway)\n")
    try:
        image = await asyncio.get_running_loop().run_in_executor(None, load_image, data, hub.resolution)
    except InputError as e:
        raise bad_request(f"the upload is not an image this server can read: {e}")
    portrait_id = "p" + hashlib.sha256(data).hexdigest()[:16]
    portraits = state["portraits"]
    portraits[portrait_id] = image
    portraits.move_to_end(portrait_id)
    while len(portraits) > PORTRAITS_KEPT + 1:          # + the bundled one, never evicted
        oldest = next(k for k in portraits if k != "bundled")
        del portraits[oldest]
    return web.json_response({"portrait": portrait_id})


def find_portrait(state: dict, portrait_id) -> np.ndarray:
    portraits = state["portraits"]
    if not isinstance(portrait_id, str) or portrait_id not in portraits:
        raise bad_request(f"unknown portrait {str(portrait_id)[:40]!r}: use \"bundled\" or an id "
                          "returned by POST /portraits")
    portraits.move_to_end(portrait_id)
    return portraits[portrait_id]


def parse_seed(value):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise bad_request(f"seed must be a non-negative integer, got {str(value)[:40]!r}")
    return value


# ---- WebRTC ---------------------------------------------------------------------------------

async def offer(request: web.Request) -> web.Response:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    state, hub = request.app[KEYS["state"]], request.app[KEYS["hub"]]
    try:
        params = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"malformed JSON in the offer: {e}")
    if not isinstance(params, dict) or params.get("type") != "offer" or not isinstance(params.get("sdp"), str):
        raise bad_request('the offer must be a JSON object {"sdp": "...", "type": "offer", "portrait": ...}')
    media = offered_media(params["sdp"])
    if media.get("audio") not in ("sendrecv", "sendonly") or media.get("video") not in ("sendrecv", "recvonly"):
        raise bad_request("the offer must send audio (the speech: a microphone or a file) and receive "
                          "video; it offers " + (", ".join(f"{k} {v}" for k, v in media.items()) or "no media"))
    image = find_portrait(state, params.get("portrait", "bundled"))
    seed = parse_seed(params.get("seed"))
    try:
        session = await hub.open(image, seed)
    except CapacityError as e:
        raise web.HTTPServiceUnavailable(text=str(e) + "\n")
    playout = Playout(session, image, av_offset_s=state["av_offset_s"], prebuffer_s=state["prebuffer_s"])
    pc = RTCPeerConnection(ice_configuration(state["stun_url"]))
    state["peers"][session.id] = (pc, session, playout)
    heard = MediaWatch()

    async def close_peer():
        if state["peers"].pop(session.id, None) is not None:
            await pc.close()
            await hub.close(session)

    @pc.on("connectionstatechange")
    async def on_state():
        log.info("session %s: connection %s", session.id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            await close_peer()
        elif pc.connectionState == "connected" and heard.watching:   # else ICE's 30 s decide
            heard.last = time.monotonic()        # media starts now, however long ICE took
            spawn(state, free_when_silent())

    @pc.on("iceconnectionstatechange")
    async def on_ice_state():
        if pc.iceConnectionState in ("failed", "closed"):
            await close_peer()

    async def free_when_silent():
        # A caller that crashed sends nothing more, and ICE notices only after its 30 s consent
        # timeout: a live caller sends RTP or RTCP (receiver reports) every second or so.
        while session.id in state["peers"]:
            await asyncio.sleep(MEDIA_WATCH_S)
            if heard.silent_for() > MEDIA_TIMEOUT_S:
                log.info("session %s: no packet for %.1f s, closed", session.id, heard.silent_for())
                await close_peer()

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
            shorten_audio_prefetch(receiver)
            spawn(state, pump_speech(track, session, hub.sample_rate, PacketArrivals(receiver)))

    async def connect_or_free():
        # A caller that posts an offer and never connects would hold its stream: free it.
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if pc.connectionState != "connected":
            log.info("session %s: not connected after %g s, closed", session.id, CONNECT_TIMEOUT_S)
            await close_peer()
    spawn(state, connect_or_free())

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="offer"))
        video, audio = avatar_tracks(playout)
        heard.watch([pc.addTrack(video), pc.addTrack(audio)] + [t.receiver for t in pc.getTransceivers()])
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:
        await close_peer()
        raise bad_request(f"the offer could not be answered ({type(e).__name__}: {e})")
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                              "session": session.id})


def offered_media(sdp: str) -> dict[str, str]:
    """{kind: direction} of an offer's media sections; a 400 with a reason a person can read
    when the text is not SDP."""
    from aiortc.sdp import SessionDescription
    if not sdp.lstrip().startswith("v=0"):
        raise bad_request("the offer's sdp is not a session description (SDP text starts with "
                          "\"v=0\"): send the browser's RTCPeerConnection.localDescription.sdp")
    for number, line in enumerate(sdp.splitlines(), 1):
        if line and not re.fullmatch(r"[a-z]=.*", line) or \
                line.startswith("m=") and not re.fullmatch(r"m=\w+ \d+(/\d+)? \S+( \S+)*", line):
            raise bad_request(f"the offer's sdp line {number} is not SDP ({line[:60]!r}): send the browser's "
                              "RTCPeerConnection.localDescription.sdp, unedited")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as e:   # aiortc's parser asserts on whatever it trips on, often with no message
        raise bad_request("the offer's sdp could not be read" + (f" ({e})" if str(e) else "") +
                          ": send the browser's RTCPeerConnection.localDescription.sdp, unedited")
    return {m.kind: m.direction or "sendrecv" for m in parsed.media}


def ice_configuration(stun_url: str | None):
    """aiortc's configuration: no ICE server unless one is given (aiortc's default asks Google's
    public STUN server, even from a server on loopback)."""
    from aiortc import RTCConfiguration, RTCIceServer
    return RTCConfiguration(iceServers=[RTCIceServer(urls=stun_url)] if stun_url else [])


async def pump_speech(track, session, rate: int, arrivals: PacketArrivals | None = None) -> None:
    """The caller's microphone track into its session, as 16 kHz mono, until it ends; each piece
    timed from its packet's arrival where ``arrivals`` knows it."""
    from aiortc.mediastreams import MediaStreamError
    converter = SpeechConverter(rate)
    silence = np.zeros(round(SPEECH_GAP_STEP_S * rate), np.float32)
    try:
        while not session.closed:
            try:
                frame = await asyncio.wait_for(track.recv(), SPEECH_GAP_S)
            except asyncio.TimeoutError:
                # No packets: a sender that stopped (a file that played out, a muted or
                # discontinuous sender). Speech goes on as silence, so the chunks that were
                # waiting for it are made and the avatar keeps going, mouth closed.
                while not session.closed:
                    session.feed(silence)
                    try:
                        frame = await asyncio.wait_for(track.recv(), SPEECH_GAP_STEP_S)
                        break
                    except asyncio.TimeoutError:
                        continue
                else:
                    return
            session.feed(converter.convert(frame), arrivals.of(frame) if arrivals else None)
    except MediaStreamError:          # the connection is closing
        session.end()


def spawn(state: dict, coro) -> None:
    task = asyncio.ensure_future(coro)
    state["tasks"].add(task)
    task.add_done_callback(state["tasks"].discard)


# ---- figures --------------------------------------------------------------------------------

async def stats(request: web.Request) -> web.Response:
    state, hub = request.app[KEYS["state"]], request.app[KEYS["hub"]]
    out = dict(hub.stats, rss_bytes=resident_bytes())
    session_id = request.query.get("session")
    if session_id is not None:
        peer = state["peers"].get(session_id)
        session = peer[1] if peer else hub.sessions.get(session_id)
        if session is None:
            raise web.HTTPNotFound(text=f"no open session {session_id[:40]!r}\n")
        out["session"] = dict(session.stats, **(peer[2].stats if peer else {}))
        if peer and request.query.get("frame_times") == "1":     # per frame, for a receiver's timing
            out["session"]["frame_times"] = [list(row) for row in peer[2].frame_times]
    return web.json_response(out)


def resident_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return None


# ---- WebSocket ------------------------------------------------------------------------------

async def websocket(request: web.Request) -> web.WebSocketResponse:
    """PCM in, frames out; see docs/serve.md, "Protocols", for the messages."""
    state, hub = request.app[KEYS["state"]], request.app[KEYS["hub"]]
    if len(hub.sessions) >= hub.capacity:
        raise web.HTTPServiceUnavailable(text=f"all {hub.capacity} streams of this server are in use: "
                                              "try again when a caller leaves\n")
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, heartbeat=30.0)
    await ws.prepare(request)
    state["sockets"].add(ws)
    session = sender = None
    try:
        start = await ws_start(ws, state)
        if start is None:
            return ws
        converter = SpeechConverter(hub.sample_rate)
        try:
            session = await hub.open(start["image"], start["seed"])
        except CapacityError as e:
            await ws_refuse(ws, str(e), code=1013)
            return ws
        await ws.send_json({"type": "ready", "session": session.id, "width": hub.resolution,
                            "height": hub.resolution, "fps": hub.fps, "sample_rate": hub.sample_rate})
        sender = asyncio.ensure_future(ws_send_frames(ws, session))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    pcm = converter.convert_pcm(msg.data, start["sample_rate"], start["channels"], start["format"])
                except InputError as e:
                    await ws_refuse(ws, str(e))
                    break
                # Faster than real time (a file sent at once) is paced, not dropped: the socket is
                # not read while the backlog is full, so the client's sends wait (TCP).
                step = hub.gen.cfg.samples_per_chunk
                for i in range(0, len(pcm), step):
                    await session.room_for(len(pcm[i:i + step]))
                    session.feed(pcm[i:i + step])
            elif msg.type == WSMsgType.TEXT:
                if _json_type(msg.data) != "end":
                    await ws_refuse(ws, 'after "start", text messages may only be {"type": "end"}')
                    break
                session.feed(converter.flush())
                session.end()
                await sender              # every remaining frame, then "end", then close
                break
    finally:
        state["sockets"].discard(ws)
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if session is not None:
            await hub.close(session)
        with contextlib.suppress(ConnectionError):
            await ws.close()
    return ws


async def ws_start(ws, state) -> dict | None:
    """The client's first message: {"type": "start", "sample_rate", "channels", "format",
    "portrait", "seed"}; refused with a reason if malformed or late."""
    try:
        msg = await ws.receive(timeout=WS_START_TIMEOUT_S)
    except asyncio.TimeoutError:
        await ws_refuse(ws, f'no "start" message within {WS_START_TIMEOUT_S:g} s')
        return None
    if msg.type != WSMsgType.TEXT or _json_type(msg.data) != "start":
        await ws_refuse(ws, 'the first message must be the JSON text {"type": "start", ...}')
        return None
    params = json.loads(msg.data)
    rate, channels, fmt = params.get("sample_rate", 16000), params.get("channels", 1), params.get("format", "f32")
    problems = []
    if not isinstance(rate, int) or not 8000 <= rate <= 192000:
        problems.append(f"sample_rate must be an integer from 8000 to 192000 Hz, got {rate!r}")
    if not isinstance(channels, int) or not 1 <= channels <= 8:
        problems.append(f"channels must be 1 to 8, got {channels!r}")
    if fmt not in ("f32", "s16"):
        problems.append(f'format must be "f32" (float32) or "s16" (int16), little-endian; got {fmt!r}')
    try:
        image = find_portrait(state, params.get("portrait", "bundled"))
        seed = parse_seed(params.get("seed"))
    except web.HTTPBadRequest as e:
        problems.append(e.text.strip())
    if problems:
        await ws_refuse(ws, "; ".join(problems))
        return None
    return {"sample_rate": rate, "channels": channels, "format": fmt, "image": image, "seed": seed}


def _json_type(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value.get("type") if isinstance(value, dict) else None


async def ws_refuse(ws, reason: str, code: int = 1008) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json({"type": "error", "message": reason})
    await ws.close(code=code, message=reason[:120].encode())


async def ws_send_frames(ws, session) -> None:
    """Every chunk as one binary message per frame, then {"type": "end", ...}. A client that
    reads slowly makes ``send_bytes`` wait; meanwhile the session's bounded outbox drops its
    oldest chunks (counted in "dropped_frames")."""
    try:
        while (chunk := await session.next_chunk()) is not None:
            for i, frame in enumerate(chunk.frames):
                await ws.send_bytes(WS_FRAME_HEADER.pack(chunk.first_frame + i, chunk.compute_ms)
                                    + np.ascontiguousarray(frame).tobytes())
        await ws.send_json({"type": "end", "frames": session.frames_made,
                            "dropped_frames": session.dropped_frames,
                            "dropped_speech_s": session.dropped_samples / session.hub.sample_rate})
    except ConnectionError:          # the client went away: nothing to send it, nothing to log
        log.info("session %s: the client went away before its last frame", session.id)


# ---- lifetime -------------------------------------------------------------------------------

async def shutdown(app: web.Application) -> None:
    """The server stops: every WebSocket closed with 1001 (going away) and a reason, every peer
    connection closed, the generator stopped. Handlers then end at once instead of holding the
    exit until their callers leave."""
    state, hub = app[KEYS["state"]], app[KEYS["hub"]]
    for ws in list(state["sockets"]):
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the server is shutting down")
    for pc, session, _ in list(state["peers"].values()):
        await pc.close()
    state["peers"].clear()
    for task in list(state["tasks"]):
        task.cancel()
    await hub.stop()
