// A small Sparkplug B host built only from Eclipse Tahu's JavaScript packages (npm `sparkplug-payload`) and
// MQTT.js: the independent side of the gateway's Sparkplug tests. It decodes every spBv1.0 message with Tahu's
// decoder and prints one JSON line per message; it takes JSON lines on stdin to act as a primary host would:
//   {"op":"state","host":"scada","online":true,"timestamp":123}       STATE (retained JSON, Sparkplug 3.0)
//   {"op":"ncmd","group":"g","node":"n","metrics":[{"name":"Node Control/Rebirth","type":"Boolean","value":true}]}
//   {"op":"dcmd","group":"g","node":"n","device":"0000abcd","metrics":[...]}
//   {"op":"peer","group":"g","node":"tahu-peer"}   start Tahu's own edge node client (sparkplug-client) as a peer
// Usage: node host.mjs <mqtt port>
import { createRequire } from "node:module";
import readline from "node:readline";
const require = createRequire(import.meta.url);
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

const port = Number(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o, (_k, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n");

// Tahu decodes 64-bit values as Long objects; print them as numbers (our values fit in 53 bits).
function plain(v) {
  if (v && typeof v === "object" && "low" in v && "high" in v && "unsigned" in v) {
    return v.high * 4294967296 + (v.low >>> 0);
  }
  if (Buffer.isBuffer(v)) return v.toString("hex");
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { clientId: `tahu-host-${process.pid}`, clean: true });
client.on("connect", () => {
  client.subscribe("spBv1.0/#", { qos: 1 }, () => out({ ready: true }));
});
client.on("error", (e) => out({ error: String(e) }));
client.on("message", (topic, payload, packet) => {
  const parts = topic.split("/");
  if (parts[1] === "STATE") {
    out({ topic, state: JSON.parse(payload.toString()), retain: packet.retain });
    return;
  }
  try {
    out({ topic, kind: parts[2], qos: packet.qos, retain: packet.retain, payload: plain(sparkplug.decodePayload(payload)) });
  } catch (e) {
    out({ topic, undecodable: String(e), hex: payload.toString("hex") });
  }
});

let peer = null;
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const c = JSON.parse(line);
  if (c.op === "state") {
    client.publish(`spBv1.0/STATE/${c.host}`, JSON.stringify({ online: c.online, timestamp: c.timestamp }),
      { qos: 1, retain: true }, () => out({ sent: "state" }));
  } else if (c.op === "ncmd" || c.op === "dcmd") {
    const topic = c.op === "ncmd" ? `spBv1.0/${c.group}/NCMD/${c.node}` : `spBv1.0/${c.group}/DCMD/${c.node}/${c.device}`;
    const body = sparkplug.encodePayload({ timestamp: c.timestamp ?? Date.now(), metrics: c.metrics });
    client.publish(topic, Buffer.from(body), { qos: 0 }, () => out({ sent: c.op }));
  } else if (c.op === "raw") {
    client.publish(c.topic, Buffer.from(c.hex, "hex"), { qos: 0 }, () => out({ sent: "raw" }));
  } else if (c.op === "peer") {
    const SparkplugClient = require("sparkplug-client");
    peer = SparkplugClient.newClient({ serverUrl: `tcp://127.0.0.1:${port}`, clientId: `tahu-peer-${process.pid}`,
      groupId: c.group, edgeNode: c.node, version: "spBv1.0", username: "", password: "" });
    peer.on("birth", () => {
      peer.publishNodeBirth({ timestamp: Date.now(), metrics: [{ name: "Peer/Alive", type: "Boolean", value: true }] });
      out({ sent: "peer-birth" });
    });
  } else if (c.op === "quit") {
    if (peer) peer.stop();
    client.end(false, {}, () => process.exit(0));
  }
});
