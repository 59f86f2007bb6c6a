// PUBLISH decoding: the zero-copy fast path (src/protocol/publish.ts) against mqtt-packet's
// parser, on the same bytes.
//
//   node dist/bench/publish.bench.js
//
// Per packet kind three variants:
//  - decodePublish         the fast path alone on one framed packet (what a shard runs per packet)
//  - Framer+decodePublish  a 64-packet socket chunk framed and decoded (the shard's whole job)
//  - mqtt-packet parser    the same 64-packet chunk through mqtt-packet's parser (framing included)

import * as mqttPacket from 'mqtt-packet';
import { Framer, FRAME_READY } from '../src/protocol/framer';
import { decodePublish, PublishView } from '../src/protocol/publish';
import { consume, emit, measure, median, si, table } from './common';

const PER_CHUNK = 64;

const payload = Buffer.alloc(64);
for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;

const CASES: Array<{ name: string; version: 4 | 5; packet: mqttPacket.IPublishPacket }> = [
  {
    name: 'v4, 64 B payload',
    version: 4,
    packet: { cmd: 'publish', topic: 'sensors/device-0042/temperature', payload, qos: 1, messageId: 4242, retain: false, dup: false },
  },
  {
    name: 'v5, user properties, 64 B payload',
    version: 5,
    packet: {
      cmd: 'publish', topic: 'sensors/device-0042/temperature', payload, qos: 1, messageId: 4242, retain: false, dup: false,
      properties: {
        contentType: 'application/json', messageExpiryInterval: 3600,
        userProperties: { 'trace-id': '4bf92f3577b34da6a3ce929d0e0e4736', region: 'eu-central-1', firmware: '2.4.1' },
      },
    },
  },
];

function main(): void {
  const rows: string[][] = [];
  for (const c of CASES) {
    const bytes = mqttPacket.generate(c.packet, { protocolVersion: c.version });
    const chunk = Buffer.concat(Array.from({ length: PER_CHUNK }, () => bytes));
    const view = new PublishView();

    // Sanity: both parse the bytes to the same message.
    const f0 = new Framer(1 << 20);
    f0.push(bytes);
    if (f0.next() !== FRAME_READY || decodePublish(f0.header, f0.buf, f0.start, f0.end, c.version, view) !== 0) throw new Error('fast path rejects the input');
    if (view.topic() !== c.packet.topic || view.payloadEnd - view.payloadStart !== payload.length) throw new Error('fast path decodes differently');

    const headerLen = f0.start;
    const header = bytes[0];
    const fast = measure(() => {
      decodePublish(header, bytes, headerLen, bytes.length, c.version, view);
      consume(view.payloadStart);
    }, 1);

    const framer = new Framer(1 << 20);
    const framed = measure(() => {
      framer.push(chunk);
      while (framer.next() === FRAME_READY) {
        decodePublish(framer.header, framer.buf, framer.start, framer.end, c.version, view);
        consume(view.payloadStart);
      }
    }, PER_CHUNK);

    const parser = mqttPacket.parser({ protocolVersion: c.version });
    let got = 0;
    parser.on('packet', (p: mqttPacket.Packet) => {
      got++;
      consume((p as mqttPacket.IPublishPacket).topic.length);
    });
    parser.on('error', (e: Error) => { throw e; });
    const slow = measure(() => parser.parse(chunk), PER_CHUNK);
    if (got === 0) throw new Error('mqtt-packet emitted nothing');

    const ref = median(slow);
    for (const [variant, rates] of [['decodePublish', fast], ['Framer+decodePublish', framed], ['mqtt-packet parser', slow]] as const) {
      const m = median(rates);
      rows.push([c.name, variant, `${si(m)}/s`, `${(m / ref).toFixed(1)}x`]);
      emit({ bench: 'publish', case: c.name, variant, value: m, unit: 'packets/s', runs: rates.length, extra: { value: m / ref, unit: 'x mqtt-packet' } });
    }
  }
  console.log('PUBLISH decoding, packets/s (median of 5 runs of 200 ms)\n');
  console.log(table(['packet', 'decoder', 'packets/s', 'vs mqtt-packet'], rows, 2));
}

main();
