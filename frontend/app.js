// Joins a LiveKit room from a real browser: reads the server URL from NEXT_PUBLIC_LIVEKIT_URL (served as
// /config.json from frontend/.env.local), takes the token from the page's #token= fragment (never sent to
// any server but LiveKit), publishes a synthetic audio track (an oscillator), listens to the agent's echo of
// it (a WebAudio analyser: its dominant frequency and level) and shows what it sees.
// window.lkState mirrors the page for whoever drives the browser; window.lkRpc and window.lkSelectedPair let
// it call the agent and read the browser's own ICE stats (the paths check, bootstrap/browser/page_client.py).
import { LocalAudioTrack, Room, RoomEvent } from "/vendor/livekit-client.esm.mjs";

const state = (window.lkState = {
  connection: "starting", published: false, participants: [], error: "", echo: { hz: 0, db: -Infinity },
  joinMs: 0,
});
let published = null; // the oscillator's publication, whose RTCRtpSender reports the transport's stats
const show = (id, text, ok) => {
  const el = document.getElementById(id);
  el.textContent = text;
  if (ok !== undefined) el.className = ok ? "ok" : "bad";
};

function fail(message) {
  state.error = message;
  state.connection = "failed";
  show("error", message);
  show("connection", "failed", false);
}

function oscillatorTrack() {
  const context = new AudioContext();
  const oscillator = context.createOscillator();
  oscillator.frequency.value = 440;
  const destination = context.createMediaStreamDestination();
  oscillator.connect(destination);
  oscillator.start();
  return new LocalAudioTrack(destination.stream.getAudioTracks()[0]);
}

function trackParticipants(room) {
  const update = () => {
    state.participants = [...room.remoteParticipants.values()].map((p) => ({ identity: p.identity, kind: p.kind }));
    show("participants", state.participants.map((p) => p.identity).join(", ") || "none");
  };
  room.on(RoomEvent.ParticipantConnected, update).on(RoomEvent.ParticipantDisconnected, update);
  update();
}

// The agent echoes each participant's audio on a track named echo-<identity>: measure ours.
function listenForEcho(room) {
  room.on(RoomEvent.TrackSubscribed, (track, publication) => {
    if (track.kind !== "audio" || publication.trackName !== `echo-${room.localParticipant.identity}`) return;
    // Chromium feeds WebAudio silence from a remote WebRTC track that no media element plays: attach it too.
    const element = track.attach();
    element.muted = true;
    document.body.appendChild(element);
    const context = new AudioContext();
    const analyser = context.createAnalyser();
    analyser.fftSize = 4096;
    context.createMediaStreamSource(new MediaStream([track.mediaStreamTrack])).connect(analyser);
    const bins = new Float32Array(analyser.frequencyBinCount);
    setInterval(() => {
      analyser.getFloatFrequencyData(bins);
      let loudest = 1;
      for (let i = 2; i < bins.length; i++) if (bins[i] > bins[loudest]) loudest = i;
      const echo = { hz: (loudest * context.sampleRate) / analyser.fftSize, db: bins[loudest] };
      if (echo.db > -70 && state.echo.firstS === undefined) echo.firstS = (performance.now() - state.publishedAt) / 1000;
      if (echo.db > state.echo.db) state.echo = { ...state.echo, ...echo }; // the loudest frame seen so far
      show("echo", `${state.echo.hz.toFixed(0)} Hz at ${state.echo.db.toFixed(0)} dB`, state.echo.db > -70);
    }, 100);
  });
}

// One RPC to the agent, timed: {reply, ms} or {error}.
async function callAgent(room, agent, method, payload) {
  const started = performance.now();
  try {
    const reply = await room.localParticipant.performRpc({ destinationIdentity: agent, method, payload });
    return { reply, ms: performance.now() - started };
  } catch (error) {
    return { error: `${error.code ?? ""} ${error.message}` };
  }
}

// The selected ICE candidate pair of the transport our audio goes out on, from the browser's own stats.
window.lkSelectedPair = async () => {
  if (!published?.track?.sender) return null;
  const reports = new Map();
  (await published.track.sender.getStats()).forEach((report) => reports.set(report.id, report));
  const transport = [...reports.values()].find((r) => r.type === "transport" && r.selectedCandidatePairId);
  const pair = transport && reports.get(transport.selectedCandidatePairId);
  if (!pair) return null;
  const candidate = (id) => {
    const c = reports.get(id);
    return { type: c.candidateType, protocol: c.protocol, address: c.address ?? c.ip, port: c.port,
             relay_protocol: c.relayProtocol ?? "" };
  };
  return { local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId) };
};

async function main() {
  const config = await (await fetch("/config.json")).json();
  const url = config.NEXT_PUBLIC_LIVEKIT_URL;
  show("url", url || "(not set)");
  if (!url || !/^wss?:\/\//.test(url)) {
    return fail(`NEXT_PUBLIC_LIVEKIT_URL is ${JSON.stringify(url)}: set it to ws://host:7880 in frontend/.env.local`);
  }
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (!token) return fail("no token: open this page with #token=<participant token>");
  // #relay=1: media through TURN only (the paths check's TURN paths), as RTCConfiguration's relay policy does.
  const options = fragment.get("relay") === "1" ? { rtcConfig: { iceTransportPolicy: "relay" } } : {};
  const room = new Room();
  listenForEcho(room); // before connecting: a subscription may arrive during connect
  window.lkRpc = (agent, method, payload) => callAgent(room, agent, method, payload);
  try {
    show("connection", "connecting");
    const started = performance.now();
    await room.connect(url, token, options);
    state.joinMs = performance.now() - started;
  } catch (error) {
    return fail(`could not connect to NEXT_PUBLIC_LIVEKIT_URL=${url}: ${error.message}`);
  }
  trackParticipants(room); // those already in the room (events only report later arrivals)
  state.connection = "connected";
  show("connection", `connected to ${room.name} as ${room.localParticipant.identity}`, true);
  const publication = await room.localParticipant.publishTrack(oscillatorTrack(), { name: "oscillator" });
  published = publication;
  state.publishedAt = performance.now();
  state.published = true;
  show("track", `${publication.trackSid} (audio, 440 Hz oscillator)`, true);
}

main().catch((error) => fail(String(error)));
