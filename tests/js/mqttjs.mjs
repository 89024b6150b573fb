// MQTT.js (the `mqtt` npm package, as browsers and Node-RED use it) against a gatemq
// WebSocket listener: node tests/js/mqttjs.mjs ws://127.0.0.1:PORT
// Subscribes and publishes at QoS 0, 1 and 2 with MQTT 3.1.1 and 5, a 300 KB message (many
// WebSocket frames), a burst of 200 small ones (several packets per frame), a retained one,
// and a will. Prints one line per check; exits non-zero on the first failure.
import mqtt from "mqtt";

const url = process.argv[2];
const fail = (why) => {
  console.error(`FAIL: ${why}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 20000).unref();

function connect(opts) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
    c.once("connect", (ack) => resolve([c, ack]));
    c.once("error", reject);
  });
}

function next(c, n = 1) {
  return new Promise((resolve) => {
    const got = [];
    const on = (topic, payload, packet) => {
      got.push({ topic, payload, qos: packet.qos, retain: packet.retain, properties: packet.properties });
      if (got.length === n) {
        c.removeListener("message", on);
        resolve(got);
      }
    };
    c.on("message", on);
  });
}

for (const protocolVersion of [4, 5]) {
  const [sub] = await connect({ protocolVersion, clientId: `js-sub-${protocolVersion}` });
  const [pub] = await connect({ protocolVersion, clientId: `js-pub-${protocolVersion}` });
  await sub.subscribeAsync("js/#", { qos: 2 });
  for (const qos of [0, 1, 2]) {
    const got = next(sub);
    await pub.publishAsync(`js/q${qos}`, `hello ${qos}`, { qos });
    const [m] = await got;
    if (m.topic !== `js/q${qos}` || m.payload.toString() !== `hello ${qos}` || m.qos !== qos) {
      fail(`v${protocolVersion} QoS ${qos}: got ${JSON.stringify(m)}`);
    }
  }
  console.log(`v${protocolVersion}: QoS 0, 1, 2 round trips ok`);

  const big = Buffer.alloc(300 * 1024, 7);
  let got = next(sub);
  await pub.publishAsync("js/big", big, { qos: 1 });
  const [m] = await got;
  if (!m.payload.equals(big)) fail(`v${protocolVersion}: 300 KB message changed`);
  console.log(`v${protocolVersion}: 300 KB message ok`);

  got = next(sub, 200);
  await Promise.all([...Array(200).keys()].map((i) => pub.publishAsync("js/burst", `${i}`, { qos: 1 })));
  const burst = (await got).map((x) => Number(x.payload.toString()));
  if (burst.join() !== [...Array(200).keys()].join()) fail(`v${protocolVersion}: burst out of order`);
  console.log(`v${protocolVersion}: 200-message burst in order`);

  if (protocolVersion === 5) {
    got = next(sub);
    await pub.publishAsync("js/props", "p", {
      qos: 1,
      properties: { contentType: "text/plain", userProperties: { site: "lab" } },
    });
    const [p] = await got;
    if (p.properties?.contentType !== "text/plain" || p.properties?.userProperties?.site !== "lab") {
      fail(`v5 properties lost: ${JSON.stringify(p.properties)}`);
    }
    console.log("v5: properties ok");
  }
  await pub.endAsync();
  await sub.endAsync();
}

// Retained, and a will when a WebSocket client vanishes without DISCONNECT.
const [a] = await connect({ clientId: "js-retain" });
await a.publishAsync("js/kept", "r", { qos: 1, retain: true });
const [watcher] = await connect({ clientId: "js-watcher" });
const kept = next(watcher);
await watcher.subscribeAsync("js/kept", { qos: 1 });
const [r] = await kept;
if (!r.retain || r.payload.toString() !== "r") fail(`retained: ${JSON.stringify(r)}`);
console.log("retained ok");
const [dying] = await connect({ clientId: "js-dying", will: { topic: "js/will", payload: "gone", qos: 1 } });
const will = next(watcher);
await watcher.subscribeAsync("js/will", { qos: 1 });
dying.stream.destroy();
const [w] = await will;
if (w.payload.toString() !== "gone") fail("no will");
console.log("will ok");
await a.endAsync();
await watcher.endAsync();
console.log("ALL OK");
process.exit(0);
