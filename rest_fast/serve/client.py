"""Callers of ``rest-fast serve`` in Python: a WebRTC caller (aiortc, an audio file as its
microphone) and a WebSocket caller. The tests, the load benchmark and examples/ use them; they
record what arrives and when, so that delivery, frame timing and audio/video sync are measured
at the receiver.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field

import numpy as np

VIDEO_CLOCK, OPUS_RATE = 90000, 48000    # RTP clocks of received video and Opus audio


class Refused(RuntimeError):
    """The server refused the call; ``status`` is the HTTP status, the message its reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


@dataclass
class WebRTCCall:
    """What one WebRTC caller received: arrival time (time.monotonic) and RTP-derived pts of
    every video frame and audio frame, and the server's figures for the session at the end."""
    session: str = ""
    video: list = field(default_factory=list)       # decoded: (arrival, pts in 1/90000 s)
    audio: list = field(default_factory=list)       # decoded: (arrival, pts in 1/48000 s, samples)
    rtp: dict = field(default_factory=lambda: {"video": [], "audio": []})   # (arrival, timestamp)
    last_frame: np.ndarray | None = None            # the last video frame, RGB
    server: dict = field(default_factory=dict)      # /stats?session= just before hanging up

    def timing(self, expected_frames: int, fps: int = 25) -> dict:
        """Delivery and sync of the media frames 0 .. expected_frames - 1 at this receiver.

        The server's stats say where each chunk was placed (its speech's start from the
        playout's t0) and which video slot and audio packet went first; pts count from the
        first packet of each track. So media frame k has the video pts
        ``(slot(k) - first_slot) * 3600`` and its speech starts at the audio pts
        ``(start(k) - first_packet * 20 ms) * 48 kHz``. The offset is the frame's arrival minus
        the arrival of the audio holding that speech (positive: video later), measured twice:
        when the RTP packets arrive (what any receiver that syncs by RTCP, as browsers do, can
        present) and when aiortc hands out decoded frames (its jitter buffer holds audio for
        four packets before decoding, video for one frame: a property of this receiver)."""
        s = self.server["session"]
        frame_s, off = 1.0 / fps, s["av_offset_s"]
        placements = sorted(s["placements"])
        video_rtp = {}
        for arrival, ts in self.rtp["video"]:                # a frame is in when its last packet is
            video_rtp[ts] = max(arrival, video_rtp.get(ts, arrival))
        decoded_video = {pts: arrival for arrival, pts in self.video}
        audio_rtp = sorted((ts, arrival, round(OPUS_RATE * 0.02)) for arrival, ts in self.rtp["audio"])
        decoded_audio = sorted((pts, arrival, n) for arrival, pts, n in self.audio)
        arrived, offsets, decoded_offsets = 0, [], []
        for k in range(expected_frames):
            first, start = max((p for p in placements if p[0] <= k), default=(None, None))
            if first is None:
                continue
            t = start + (k - first) * frame_s                          # its speech, from t0
            video_pts = (round((t + off) / frame_s) - s["first_video_slot"]) * round(VIDEO_CLOCK * frame_s)
            speech_pts = round((t - s["first_audio_packet"] * 0.02) * OPUS_RATE)
            arrived += video_pts in decoded_video
            for videos, audios, out in ((video_rtp, audio_rtp, offsets),
                                        (decoded_video, decoded_audio, decoded_offsets)):
                audio_arrival = _holding(audios, speech_pts)
                if video_pts in videos and audio_arrival is not None:
                    out.append(videos[video_pts] - audio_arrival)
        pts = sorted(p for _, p in self.video)
        steps = np.diff(pts) if len(pts) > 1 else np.zeros(0)
        ms = lambda xs, f: round(1000 * float(f(xs)), 1) if xs else None   # noqa: E731
        return {"expected_frames": expected_frames, "arrived_frames": arrived,
                "arrived_share": arrived / max(expected_frames, 1),
                "pts_step_share_25fps": float(np.mean(steps == round(VIDEO_CLOCK * frame_s))) if len(steps) else 0.0,
                "av_offset_ms_median": ms(offsets, np.median),
                "av_offset_ms_worst": ms(offsets, lambda x: max(x, key=abs)),
                "decoded_av_offset_ms_median": ms(decoded_offsets, np.median),
                "offsets_measured": len(offsets)}


def _holding(audio: list, pts: int):
    """Arrival of the audio frame (pts, arrival, samples) whose samples hold ``pts``, or None."""
    for start, arrival, n in audio:      # short lists (a call's packets): a scan is fine
        if start <= pts < start + n:
            return arrival
    return None


def record_rtp_arrivals(receiver, rtp: dict) -> None:
    """Record (arrival, timestamp from the track's first packet) of every RTP packet this
    aiortc receiver gets, before its jitter buffer (wraps its packet handler)."""
    handle, origin = receiver._handle_rtp_packet, []

    async def recording(packet, arrival_time_ms):
        if not origin:
            origin.append(packet.timestamp)
        rtp[receiver.track.kind].append((time.monotonic(), (packet.timestamp - origin[0]) % 2**32))
        return await handle(packet, arrival_time_ms)
    receiver._handle_rtp_packet = recording


def media_seconds(path: str) -> float:
    import av
    with av.open(str(path)) as container:
        return container.duration / 1e6


async def webrtc_call(base_url: str, speech_path: str, *, portrait: str = "bundled",
                      seed: int | None = None, listen_s: float = 3.0, timeout_s: float = 120.0,
                      on_connected=None) -> WebRTCCall:
    """Call the server with ``speech_path`` playing as the microphone (in real time), receive
    the avatar until the speech has played and ``listen_s`` more, hang up, return the record."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from aiortc.mediastreams import MediaStreamError

    call = WebRTCCall()
    player = MediaPlayer(speech_path)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))      # loopback: no STUN server asked
    pc.addTrack(player.audio)
    pc.addTransceiver("video", direction="recvonly")
    tasks = []

    async def receive(track):
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    call.video.append((now, frame.pts))
                    if len(call.video) % 25 == 0:
                        call.last_frame = frame.to_ndarray(format="rgb24")
                else:
                    call.audio.append((now, frame.pts, frame.samples))
        except MediaStreamError:
            pass

    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(receive(track))))
    for transceiver in pc.getTransceivers():
        record_rtp_arrivals(transceiver.receiver, call.rtp)
    async with aiohttp.ClientSession() as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "portrait": portrait}
            if seed is not None:
                body["seed"] = seed
            async with http.post(base_url + "offer", json=body) as r:
                if r.status != 200:
                    raise Refused(r.status, (await r.text()).strip())
                answer = await r.json()
            call.session = answer["session"]
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            if on_connected is not None:
                on_connected(call)
            duration = media_seconds(speech_path)
            await asyncio.wait_for(asyncio.sleep(duration + listen_s), timeout_s)
            async with http.get(base_url + "stats", params={"session": call.session, "frame_times": "1"}) as r:
                call.server = await r.json()
        finally:
            await pc.close()
            player.audio.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return call


@dataclass
class WebSocketTimeline:
    """When a WebSocket caller sent its speech and when each frame came back (time.monotonic)."""
    sent: list = field(default_factory=list)        # (samples sent so far, time)
    frames: list = field(default_factory=list)      # (frame index, arrival, the chunk's compute ms)

    def voice_to_face(self, samples_per_frame: int, frames: int) -> np.ndarray:
        """For frames 0 .. ``frames`` - 1 (those made from speech, not by the flush after "end":
        the chunks whose speech window was sent whole), how long after the end of each frame's own
        speech (``samples_per_frame`` samples: 40 ms) was sent the frame arrived, in ms: the rest
        of its chunk's speech, the lookahead, the compute, the server's queue and the transport."""
        counts = np.array([n for n, _ in self.sent])
        times = np.array([t for _, t in self.sent])
        return np.array([1000.0 * (arrival - times[np.searchsorted(counts, (index + 1) * samples_per_frame)])
                         for index, arrival, _ in self.frames if index < frames])


def webrtc_voice_to_face(sent: list, shown: list, fps: int = 25) -> np.ndarray:
    """Each frame's voice to face at a WebRTC receiver on the server's machine, in ms.

    ``sent``: the server's ``frame_times`` (``/stats?session=id&frame_times=1``): per frame, (video
    slot, frame, sent, when its own 40 ms of speech had arrived), wall-clock seconds. ``shown``:
    the receiver's frames, (RTP timestamp, arrival, shown), wall-clock seconds (a browser's
    ``requestVideoFrameCallback``: ``rtpTimestamp``, ``receiveTime`` and ``expectedDisplayTime``
    plus ``performance.timeOrigin``). A frame's RTP timestamp is a random origin plus its slot
    times 90000 / fps, so the receiver's frames sit at slots base + (timestamp - first) / 3600;
    the base is the one that puts each arrival nearest after the server sent its slot (both
    clocks are this machine's). Returns, in ms, for each frame received whose speech time is
    known, its voice to face in three parts (n, 3): the server's (its speech arrived, loopback:
    as the caller sent it, to the frame's slot sent), the transport's (to the frame's arrival:
    encoding, network) and the receiver's (to its display: jitter buffer, decoding); the row's
    sum is the frame's voice to face."""
    by_slot = {int(slot): (sent_at, speech_at) for slot, _, sent_at, speech_at in sent}
    ticks = VIDEO_CLOCK // fps
    first = shown[0][0]
    rel = np.array([((ts - first) % 2**32) // ticks for ts, _, _ in shown], dtype=np.int64)
    arrival = np.array([a for _, a, _ in shown])
    best, best_cost = None, np.inf
    # Candidates: slots sent in the half second before one of the receiver's first frames arrived
    # (the first frames may show the portrait, which the server does not time).
    candidates = {slot - rel[k] for k in range(min(len(rel), 250))
                  for slot, (at, _) in by_slot.items() if 0 <= arrival[k] - at < 0.5}
    for base in candidates:
        lag = [arrival[k] - by_slot[base + r][0] for k, r in enumerate(rel) if base + r in by_slot]
        if len(lag) < len(rel) // 2 or min(lag) < -0.005:          # sent after it arrived: wrong base
            continue
        cost = float(np.median(lag))
        if cost < best_cost:
            best, best_cost = base, cost
    if best is None:
        raise ValueError("no slot base matches the receiver's frames to the server's: are both on one machine?")
    parts = [(sent_at - speech_at, arrived - sent_at, shown_at - arrived)
             for (_, arrived, shown_at), r in zip(shown, rel) if best + r in by_slot
             for sent_at, speech_at in [by_slot[best + r]] if np.isfinite(speech_at)]
    return 1000.0 * np.array(parts).reshape(-1, 3)


async def websocket_call(base_url: str, pcm: np.ndarray, sample_rate: int = 16000, *,
                         portrait: str = "bundled", seed: int | None = None, piece_s: float = 0.02,
                         pace: float | None = None, read: bool = True,
                         hang_up_after_s: float | None = None, receive_buffer: int | None = None,
                         timeline: "WebSocketTimeline | None" = None):
    """Send float32 mono ``pcm`` over /ws in ``piece_s`` pieces (``pace`` times real time, or
    at once for None), then "end"; return (frames (n, H, W, 3) uint8, the "end" message or None).
    ``read=False`` is a caller that never reads; ``hang_up_after_s`` hangs up at that time;
    ``receive_buffer`` caps the socket's receive buffer at that many bytes (SO_RCVBUF), as on a
    slow link: without it loopback's buffers grow to tens of MB before a caller that does not
    read holds anything up. ``timeline`` records when each piece was sent and each frame came."""
    import aiohttp

    from .app import WS_FRAME_HEADER
    ws_url = base_url.replace("http", "ws", 1) + "ws"
    frames, end = [], None
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            if receive_buffer is not None:
                ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            start = {"type": "start", "sample_rate": sample_rate, "channels": 1, "format": "f32",
                     "portrait": portrait}
            if seed is not None:
                start["seed"] = seed
            await ws.send_str(json.dumps(start))
            ready = await ws.receive_json(timeout=30)
            if ready.get("type") != "ready":
                raise Refused(400, ready.get("message", str(ready)))
            size = (ready["height"], ready["width"], 3)

            async def receive():
                nonlocal end
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        index, compute_ms = WS_FRAME_HEADER.unpack_from(msg.data)
                        if timeline is not None:
                            timeline.frames.append((index, time.monotonic(), compute_ms))
                        frames.append(np.frombuffer(msg.data, np.uint8, offset=WS_FRAME_HEADER.size)
                                      .reshape(size))
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        end = json.loads(msg.data)
                        if end.get("type") in ("end", "error"):
                            return

            receiver = asyncio.ensure_future(receive()) if read else None
            piece = max(1, round(piece_s * sample_rate))
            t0 = time.monotonic()
            for i in range(0, len(pcm), piece):
                if hang_up_after_s is not None and time.monotonic() - t0 > hang_up_after_s:
                    break
                await ws.send_bytes(np.ascontiguousarray(pcm[i:i + piece], np.float32).tobytes())
                if timeline is not None:
                    timeline.sent.append((min(i + piece, len(pcm)), time.monotonic()))
                if pace:
                    await asyncio.sleep(max(0.0, t0 + (i + piece) / sample_rate / pace - time.monotonic()))
            if hang_up_after_s is None:
                await ws.send_str(json.dumps({"type": "end"}))
                if receiver is not None:
                    await receiver
            else:                                        # hang up mid-stream, at that time
                await asyncio.sleep(max(0.0, t0 + hang_up_after_s - time.monotonic()))
                if receiver is not None:
                    receiver.cancel()
    video = np.stack(frames) if frames else np.zeros((0, *size), np.uint8)
    return video, end
