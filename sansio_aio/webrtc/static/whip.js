// Minimal WHIP/WHEP client used by the publish and view pages (no dependencies).
// Non-trickle: the offer is sent once ICE gathering is complete (or after 2 s).
// The pages show their own session's live numbers from RTCPeerConnection.getStats():
// bitrate (RTP bytes sent or received per second), packets lost and jitter (the
// viewer's own inbound-rtp; the publisher's from the server's receiver reports,
// remote-inbound-rtp), and the round-trip time of the ICE candidate pair in use.
// The token (an operator token or a stream key) comes from the Token field, or from the
// URL fragment (#token=...: never sent to the server, so it stays out of its logs); it is
// sent as a bearer token on the POST and again on the DELETE.
"use strict";

const whipState = {
  state: "idle", framesSent: 0, framesDecoded: 0, error: null, location: null,
  bitrate: null, packetsLost: null, jitter: null, rtt: null, frameWidth: null, frameHeight: null,
};
window.whipState = whipState;

function setStatus(text) {
  const el = document.getElementById("status");
  if (el) el.textContent = text;
}

function waitGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);
  });
}

async function negotiate(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await waitGathering(pc, 2000);
  const headers = { "Content-Type": "application/sdp" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch(url, { method: "POST", headers, body: pc.localDescription.sdp });
  if (resp.status !== 201) {
    throw new Error("server answered " + resp.status + ": " + (await resp.text()).trim());
  }
  const location = new URL(resp.headers.get("Location"), url).toString();
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  whipState.location = location;
  return location;
}

function show(id, text) {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

function fixed(value, scale) {
  return value == null ? "–" : (value * scale).toFixed(1);
}

function watch(pc, counter) {
  pc.addEventListener("connectionstatechange", () => {
    whipState.state = pc.connectionState;
    setStatus("connection: " + pc.connectionState);
  });
  let last = null;  // {bytes, at}: the previous sample, for the bitrate
  setInterval(async () => {
    const stats = await pc.getStats();
    let bytes = 0, lost = null, jitter = null, rtt = null;
    const sending = counter === "sent";
    stats.forEach((s) => {
      if (sending && s.type === "outbound-rtp") {
        bytes += s.bytesSent || 0;
        if (s.kind === "video") {
          whipState.framesSent = s.framesSent || s.framesEncoded || 0;
          whipState.frameWidth = s.frameWidth || null;
          whipState.frameHeight = s.frameHeight || null;
        }
      }
      if (!sending && s.type === "inbound-rtp") {
        bytes += s.bytesReceived || 0;
        if (s.kind === "video") {
          whipState.framesDecoded = s.framesDecoded || 0;
          whipState.frameWidth = s.frameWidth || null;
          whipState.frameHeight = s.frameHeight || null;
        }
      }
      const lossOf = sending ? "remote-inbound-rtp" : "inbound-rtp";
      if (s.type === lossOf) {
        if (s.packetsLost != null) lost = (lost || 0) + Math.max(0, s.packetsLost);
        if (s.jitter != null) jitter = Math.max(jitter || 0, s.jitter);
      }
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) {
        rtt = s.currentRoundTripTime;
      }
    });
    const now = performance.now();
    if (last && now > last.at) whipState.bitrate = Math.max(0, ((bytes - last.bytes) * 8) / ((now - last.at) / 1000));
    last = { bytes, at: now };
    whipState.packetsLost = lost;
    whipState.jitter = jitter;
    whipState.rtt = rtt;
    show("frames", sending ? whipState.framesSent : whipState.framesDecoded);
    show("bitrate", fixed(whipState.bitrate, 1 / 1000));
    show("lost", lost == null ? "–" : String(lost));
    show("jitter", fixed(jitter, 1000));
    show("rtt", fixed(rtt, 1000));
    show("size", whipState.frameWidth ? whipState.frameWidth + "x" + whipState.frameHeight : "–");
  }, 500);
}

// A moving test pattern for machines without a camera.
function testPattern(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  let n = 0;
  setInterval(() => {
    n++;
    for (let i = 0; i < 8; i++) {
      ctx.fillStyle = `hsl(${(i * 45 + n * 3) % 360}, 80%, 50%)`;
      ctx.fillRect((i * width) / 8, 0, width / 8, height);
    }
    ctx.fillStyle = "#000"; ctx.font = "28px monospace";
    ctx.fillText(new Date().toISOString().slice(11, 23), 10, height - 20);
  }, 33);
  return canvas.captureStream(30);
}

async function publish(url, token, video) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  } catch (err) {
    setStatus("no camera (" + err.name + "): sending a test pattern");
    stream = testPattern(640, 480);
  }
  if (video) { video.srcObject = stream; video.muted = true; video.play().catch(() => {}); }
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  watch(pc, "sent");
  return { pc, token, location: await negotiate(pc, url, token) };
}

async function view(url, token, video) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (ev) => {
    stream.addTrack(ev.track);
    if (video) { video.srcObject = stream; video.play().catch(() => {}); }
  });
  watch(pc, "decoded");
  return { pc, token, location: await negotiate(pc, url, token) };
}

async function hangUp(session) {
  if (!session) return;
  if (session.location) {  // DELETE first: closing the peer first may end the session
    const headers = session.token ? { "Authorization": "Bearer " + session.token } : {};
    const resp = await fetch(session.location, { method: "DELETE", headers });
    whipState.deleteStatus = resp.status;
  }
  session.pc.close();
  whipState.state = "closed";
  setStatus("stopped");
}

function endpointUrl(kind) {
  const room = document.getElementById("room").value || "demo";
  const base = new URL(".", window.location.href);
  return new URL(kind + "/" + encodeURIComponent(room), base).toString();
}

function setup(kind) {
  const params = new URLSearchParams(window.location.search);
  if (params.get("room")) document.getElementById("room").value = params.get("room");
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  if (fragment.get("token")) document.getElementById("token").value = fragment.get("token");
  const video = document.getElementById("video");
  let session = null;
  const start = async () => {
    try {
      whipState.state = "connecting"; setStatus("connecting...");
      const token = document.getElementById("token").value || null;
      session = kind === "whip"
        ? await publish(endpointUrl("whip"), token, video)
        : await view(endpointUrl("whep"), token, video);
    } catch (err) {
      whipState.state = "error"; whipState.error = String(err); setStatus(String(err));
    }
  };
  document.getElementById("start").onclick = start;
  document.getElementById("stop").onclick = () => hangUp(session).then(() => { session = null; });
  if (params.get("autostart") === "1") start();
}
window.whipSetup = setup;
