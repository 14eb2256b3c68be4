// The page's side of rest-fast serve: speech up and the avatar down over one WebRTC connection.
// Plain JavaScript, no build step. Signalling: POST /offer with the whole offer (no trickle ICE).
"use strict";
const $ = (id) => document.getElementById(id);
let pc = null, session = null, timer = null, audioContext = null;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function reasonOf(response) {
  return (await response.text()).trim() || `${response.status} ${response.statusText}`;
}

async function portraitId() {
  if (document.querySelector("input[name=portrait]:checked").value === "bundled") return "bundled";
  const file = $("portrait-file").files[0];
  if (!file) throw new Error("choose an image file to upload, or the bundled portrait");
  const response = await fetch("portraits", { method: "POST", body: file });
  if (!response.ok) throw new Error(await reasonOf(response));
  return (await response.json()).portrait;
}

async function speechTrack() {
  if (document.querySelector("input[name=source]:checked").value === "mic") {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    return { track: stream.getAudioTracks()[0], begin: () => {} };
  }
  const file = $("speech-file").files[0];
  if (!file) throw new Error("choose an audio file, or the microphone");
  audioContext = new AudioContext();
  const buffer = await audioContext.decodeAudioData(await file.arrayBuffer());
  const source = audioContext.createBufferSource();
  const destination = audioContext.createMediaStreamDestination();
  source.buffer = buffer;
  source.connect(destination);
  return { track: destination.stream.getAudioTracks()[0], begin: () => source.start() };
}

function iceGathered(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    connection.addEventListener("icegatheringstatechange", () => {
      if (connection.iceGatheringState === "complete") resolve();
    });
  });
}

async function start() {
  $("start").disabled = true;
  try {
    status("Connecting…");
    const portrait = await portraitId();
    const speech = await speechTrack();
    pc = new RTCPeerConnection();
    pc.addTrack(speech.track);
    pc.addTransceiver("video", { direction: "recvonly" });
    const remote = new MediaStream();
    $("avatar").srcObject = remote;
    pc.addEventListener("track", (event) => remote.addTrack(event.track));
    pc.addEventListener("connectionstatechange", () => {
      if (pc && pc.connectionState === "connected") { status("Live."); speech.begin(); }
      if (pc && ["failed", "closed"].includes(pc.connectionState)) stop(`Connection ${pc.connectionState}.`);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const response = await fetch("offer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", portrait }),
    });
    if (!response.ok) throw new Error(await reasonOf(response));
    const answer = await response.json();
    session = answer.session;
    await pc.setRemoteDescription(answer);
    $("stop").disabled = false;
    timer = setInterval(figures, 1000);
  } catch (error) {
    stop();
    status(String(error.message || error), true);
  }
}

function stop(message = "Stopped.") {
  if (timer) clearInterval(timer);
  if (pc) pc.close();
  if (audioContext) audioContext.close();
  pc = session = timer = audioContext = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  status(message);
}

async function figures() {
  if (!pc) return;
  const report = await pc.getStats();
  let transport = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      $("frames").textContent = s.framesDecoded ?? 0;
      $("fps").textContent = s.framesPerSecond != null ? s.framesPerSecond.toFixed(1) : "–";
      // The browser's own jitter buffer: how long a frame waited in it, on average.
      if (s.jitterBufferEmittedCount) transport = (transport ?? 0) + 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount;
    }
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) {
      transport = (transport ?? 0) + 1000 * s.currentRoundTripTime / 2;   // one way on the network
    }
  });
  const response = await fetch(`stats?session=${encodeURIComponent(session)}`);
  if (!response.ok) return;
  const server = await response.json();
  const own = server.session;
  const ms = (x) => (x == null ? "–" : `${x.toFixed(0)} ms`);
  // Latency: from the arrival of the last speech sample a chunk needed to its frames (server side).
  $("latency").textContent = `${ms(own.latency_ms_median)} / ${ms(own.latency_ms_worst)}`;
  $("chunk-ms").textContent = `${ms(own.chunk_ms_median)} / ${ms(own.chunk_ms_worst)}`;
  $("dropped").textContent = own.dropped_frames + own.frames_skipped;
  $("streams").textContent = `${server.open_streams} of ${server.capacity}`;
  // Voice to face, part by part, for a chunk's first frame (the longest wait): the rest of its
  // chunk's speech, Whisper's lookahead, the server (compute and queue), the prebuffer, transport.
  const parts = [own.speech_wait_ms, own.lookahead_ms, own.latency_ms_median, 1000 * own.prebuffer_s, transport];
  if (parts.every((x) => x != null && !Number.isNaN(x))) {
    $("voice-to-face").textContent = ms(parts.reduce((a, b) => a + b, 0));
  }
  $("parts").textContent = parts.map(ms).join(" + ");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop());
