// Broker-side PUBLISH encoding: what a writer does per ring record (topic, property bytes and
// payload lie in the ring; a packet id is assigned) with encodePublishHead + copies, against
// mqtt-packet.generate.
//
//   node dist/bench/encode.bench.js
//
// The writer appends packets to one output buffer per connection; the fast variants do the same
// (wrapping around when full). mqtt-packet.generate gets the topic as a Buffer view (no string
// decoding) and, for MQTT 5, a ready properties object: both favour it, since a writer would
// first have to build that object from the ring's property bytes.

import * as mqttPacket from 'mqtt-packet';
import { encodePublish, encodePublishHead, publishSize } from '../src/protocol/publish';
import { readVarint, varintEnd } from '../src/protocol/framer';
import { consume, emit, measure, median, si, table } from './common';

interface Case {
  name: string;
  v5: boolean;
  payloadLen: number;
  properties?: mqttPacket.IPublishPacket['properties'];
}

const CASES: Case[] = [
  { name: 'v4, 64 B payload', v5: false, payloadLen: 64 },
  { name: 'v4, 1 KiB payload', v5: false, payloadLen: 1024 },
  {
    name: 'v5, user properties, 64 B payload',
    v5: true,
    payloadLen: 64,
    properties: {
      contentType: 'application/json', messageExpiryInterval: 3600,
      userProperties: { 'trace-id': '4bf92f3577b34da6a3ce929d0e0e4736', region: 'eu-central-1', firmware: '2.4.1' },
    },
  },
];

const TOPIC = 'sensors/device-0042/temperature';

function main(): void {
  const rows: string[][] = [];
  for (const c of CASES) {
    // A ring record's body: topic | properties | payload, at some offset in a big buffer.
    const propsBytes = c.v5 ? propertyBytes(c.properties) : Buffer.alloc(0);
    const topic = Buffer.from(TOPIC);
    const payload = Buffer.alloc(c.payloadLen, 0x61);
    const ring = Buffer.alloc(1 << 16);
    const topicAt = 1000;
    topic.copy(ring, topicAt);
    const propsAt = topicAt + topic.length;
    propsBytes.copy(ring, propsAt);
    const payloadAt = propsAt + propsBytes.length;
    payload.copy(ring, payloadAt);
    const size = publishSize(topic.length, 1, propsBytes.length, payload.length, c.v5);
    const out = Buffer.alloc(1 << 20);
    let pos = 0;
    let id = 1;

    // Sanity: all three produce the same bytes.
    const a = Buffer.alloc(size);
    let p = encodePublishHead(a, 0, 1, false, 7, ring, topicAt, topic.length, c.v5, propsBytes.length, payload.length);
    p += ring.copy(a, p, propsAt, propsAt + propsBytes.length);
    ring.copy(a, p, payloadAt, payloadAt + payload.length);
    const b = Buffer.alloc(size);
    encodePublish(b, 0, 1, false, 7, ring, topicAt, topic.length, propsAt, propsBytes.length, c.v5, payloadAt, payload.length);
    const ref = mqttPacket.generate(
      { cmd: 'publish', topic: TOPIC, payload, qos: 1, messageId: 7, retain: false, dup: false, properties: c.properties },
      { protocolVersion: c.v5 ? 5 : 4 },
    );
    if (!a.equals(ref) || !b.equals(ref)) throw new Error(`${c.name}: encoders disagree`);

    const head = measure(() => {
      if (pos + size > out.length) pos = 0;
      id = (id & 0xffff) + 1;
      pos = encodePublishHead(out, pos, 1, false, id & 0xffff || 1, ring, topicAt, topic.length, c.v5, propsBytes.length, payload.length);
      pos += ring.copy(out, pos, propsAt, propsAt + propsBytes.length);
      pos += ring.copy(out, pos, payloadAt, payloadAt + payload.length);
    }, 1);
    const whole = measure(() => {
      if (pos + size > out.length) pos = 0;
      id = (id & 0xffff) + 1;
      pos = encodePublish(out, pos, 1, false, id & 0xffff || 1, ring, topicAt, topic.length, propsAt, propsBytes.length, c.v5, payloadAt, payload.length);
    }, 1);
    const topicView = ring.subarray(topicAt, topicAt + topic.length);
    const payloadView = ring.subarray(payloadAt, payloadAt + payload.length);
    const opts = { protocolVersion: c.v5 ? 5 : 4 };
    const generated = measure(() => {
      id = (id & 0xffff) + 1;
      const pkt = mqttPacket.generate({
        cmd: 'publish', topic: topicView as unknown as string, payload: payloadView, qos: 1, messageId: id & 0xffff || 1, retain: false, dup: false,
        properties: c.properties,
      }, opts);
      consume(pkt.length);
    }, 1);
    consume(pos);

    const refRate = median(generated);
    for (const [variant, rates] of [['encodePublishHead+copy', head], ['encodePublish', whole], ['mqtt-packet.generate', generated]] as const) {
      const m = median(rates);
      rows.push([c.name, variant, `${si(m)}/s`, `${(m / refRate).toFixed(1)}x`]);
      emit({ bench: 'encode', case: c.name, variant, value: m, unit: 'packets/s', runs: rates.length, extra: { value: m / refRate, unit: 'x mqtt-packet' } });
    }
  }
  console.log('Broker-side PUBLISH encoding, packets/s (median of 5 runs of 200 ms)\n');
  console.log(table(['packet', 'encoder', 'packets/s', 'vs mqtt-packet'], rows, 2));
}

/** The property bytes (without their length) mqtt-packet writes for `props`. */
function propertyBytes(props: mqttPacket.IPublishPacket['properties']): Buffer {
  const pkt = mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(0), qos: 0, retain: false, dup: false, properties: props }, { protocolVersion: 5 });
  let pos = 1;
  while (pkt[pos] & 0x80) pos++;
  pos += 1 + 3; // remaining length end, topic length + "t"
  const len = readVarint(pkt, pos, pkt.length);
  return Buffer.from(pkt.subarray(varintEnd, varintEnd + len));
}

main();
