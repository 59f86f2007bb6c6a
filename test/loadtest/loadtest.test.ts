import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parser, IPublishPacket, Packet } from 'mqtt-packet';
import { ackFrame, filterFor, Framer, PACKET, publishLayout, topicFor, writeVarint } from '../../loadtest/mqtt-wire';
import { bridgeConf } from '../../loadtest/mosquitto-conf';
import { parseOptions, UsageError } from '../../loadtest/options';
import { startTarget } from '../../loadtest/targets';
import { runUplink } from '../../loadtest/uplink';

function frames(bytes: Buffer, chunkSize: number): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  const framer = new Framer((header, buf, start, length) => out.push({ type: header >> 4, body: Buffer.from(buf.subarray(start, start + length)) }));
  for (let i = 0; i < bytes.length; i += chunkSize) framer.push(bytes.subarray(i, i + chunkSize));
  return out;
}

test('Framer reassembles frames cut at every possible boundary', () => {
  const big = Buffer.alloc(3 + 200);
  big[0] = 0x30;
  const bodyStart = writeVarint(big, 1, 200); // two-byte remaining length
  big.fill(7, bodyStart);
  const acks = Buffer.alloc(8);
  ackFrame(PACKET.PUBACK, 1, acks, 0);
  ackFrame(PACKET.PUBCOMP, 65535, acks, 4);
  const stream = Buffer.concat([acks, big.subarray(0, bodyStart + 200), acks]);
  for (const size of [1, 2, 3, 5, 64, stream.length]) {
    const got = frames(stream, size);
    assert.deepEqual(got.map((f) => f.type), [4, 7, 3, 4, 7], `chunk size ${size}`);
    assert.equal(got[1].body.readUInt16BE(0), 65535);
    assert.equal(got[2].body.length, 200);
  }
});

test('publishLayout builds frames a standard parser accepts', () => {
  for (const qos of [0, 1, 2] as const) {
    const { template, pidOffset, payloadOffset } = publishLayout(topicFor('devices/{id}/telemetry', 42), qos, 300, 42);
    const frame = Buffer.from(template);
    if (pidOffset >= 0) frame.writeUInt16BE(9, pidOffset);
    frame.writeUInt32BE(5, payloadOffset + 4);
    const packets: Packet[] = [];
    const p = parser();
    p.on('packet', (pkt: Packet) => packets.push(pkt));
    p.parse(frame);
    assert.equal(packets.length, 1);
    const pub = packets[0] as IPublishPacket;
    assert.equal(pub.topic, 'devices/42/telemetry');
    assert.equal(pub.qos, qos);
    const payload = pub.payload as Buffer;
    assert.equal(payload.length, 300);
    assert.equal(payload.readUInt32BE(0), 42);
    assert.equal(payload.readUInt32BE(4), 5);
    if (qos > 0) assert.equal(pub.messageId, 9);
  }
});

test('filterFor covers every topic the pattern produces', () => {
  assert.equal(filterFor('load/{id}'), 'load/#');
  assert.equal(filterFor('devices/{id}/telemetry'), 'devices/#');
  assert.equal(filterFor('{id}/up'), '#');
});

test('bridge config carries the lossless tuning for every upstream', () => {
  const conf = bridgeConf(1000, [{ name: 'b1', port: 1001 }, { name: 'b2', port: 1002 }], 1);
  for (const line of ['max_queued_messages 0', 'max_inflight_messages 100', 'connection b2', 'address 127.0.0.1:1002']) {
    assert.ok(conf.split('\n').includes(line), line);
  }
  assert.equal(conf.match(/^topic # out 1$/gm)?.length, 2);
  assert.equal(conf.match(/^try_private false$/gm)?.length, 2);
});

test('options: defaults, validation and help', () => {
  const o = parseOptions([]);
  assert.ok(o);
  assert.deepEqual([o.devices, o.messages, o.payload, o.inflight, o.rounds, o.threads], [100, 10000, 64, 16, 3, 2]);
  assert.deepEqual(o.qos, [1, 0]);
  assert.deepEqual(o.targets, ['fanout', 'mosquitto']);
  assert.equal(parseOptions(['--help']), null);
  assert.throws(() => parseOptions(['--payload', '8']), UsageError);
  assert.throws(() => parseOptions(['--topic', 'load/+']), UsageError);
  assert.throws(() => parseOptions(['--bogus']), UsageError);
});

test('uplink through a mosquitto bridge delivers everything to both upstreams', { timeout: 60_000 }, async () => {
  const target = await startTarget('mosquitto', { upstreams: 2, qos: 1, shards: 2, daemonLogLevel: 'info', keepLogs: false });
  try {
    const r = await runUplink(target, {
      devices: 4,
      messages: 250,
      payload: 64,
      qos: 1,
      inflight: 8,
      threads: 2,
      topicPattern: 'load/{id}',
      idleTimeoutS: 10,
      runTag: `lttest${process.pid}-`,
    });
    assert.equal(r.endedBy, 'complete');
    assert.equal(r.publisher.acked, 1000);
    assert.deepEqual(r.brokers.map((b) => [b.broker, b.distinct, b.missing, b.duplicates]), [['b1', 1000, 0, 0], ['b2', 1000, 0, 0]]);
    assert.ok(r.msgPerSec > 0 && r.e2e.count === 2000);
  } finally {
    assert.deepEqual(await target.stop(), []);
  }
});
