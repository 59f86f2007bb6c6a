// Unit tests for a writer's device sessions (src/broker/device-sessions.ts, device-upstream.ts)
// against a small fake broker on loopback: a device whose session cannot send has its records
// parked, and the devices behind it in the same ring go on; past a bound the shard is told to
// stop reading it (dev-hold), past a harder one its records stay in the ring; parked records go
// out in order once the session is up; a device's end makes a DISCONNECT after a clean leave and
// a plain close otherwise. The shard is played by the test on the other end of a MessageChannel.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import * as mqttPacket from 'mqtt-packet';
import pino from 'pino';
import { loadConfig } from '../../src/config';
import { DeviceSessions, type DeviceWriter } from '../../src/broker/device-sessions';
import type { DeviceOpen, DevicesToShard } from '../../src/broker/device-protocol';
import type { DeviceUpstream } from '../../src/broker/device-upstream';
import { RateLimitedLog } from '../../src/log';
import { LatencyRecorder } from '../../src/metrics/latency';
import { createRing, RingConsumer, RingProducer } from '../../src/ring/spsc';
import { CLOSE_CLEAN, CLOSE_LOST, NO_TOKEN, REC_DEVICE_CLOSE, REC_PUBLISH, UPLINK_HEADER } from '../../src/ring/records';
import { waitFor } from '../helpers/wait';

/** A broker that answers CONNECT at once, except for client ids it is told to keep waiting. */
class FakeBroker {
  readonly server: net.Server;
  readonly received: { clientId: string; packet: mqttPacket.Packet }[] = [];
  readonly closed: string[] = [];
  readonly waiting = new Map<string, () => void>();
  hold = new Set<string>();

  constructor() {
    this.server = net.createServer((socket) => {
      const parser = mqttPacket.parser({ protocolVersion: 4 });
      let clientId = '';
      parser.on('packet', (p: mqttPacket.Packet) => {
        if (p.cmd === 'connect') clientId = p.clientId;
        this.received.push({ clientId, packet: p });
        const send = (q: mqttPacket.Packet): void => { socket.write(mqttPacket.generate(q, { protocolVersion: 4 })); };
        if (p.cmd === 'connect') {
          const answer = (): void => send({ cmd: 'connack', returnCode: 0, sessionPresent: false });
          if (this.hold.has(clientId)) this.waiting.set(clientId, answer);
          else answer();
        } else if (p.cmd === 'publish' && p.qos === 1) send({ cmd: 'puback', messageId: p.messageId! });
      });
      socket.on('data', (b) => parser.parse(b));
      socket.on('error', () => undefined);
      socket.on('close', () => this.closed.push(clientId));
    });
  }

  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as net.AddressInfo).port)));
  }

  publishes(clientId: string): string[] {
    return this.received.filter((r) => r.clientId === clientId && r.packet.cmd === 'publish').map((r) => (r.packet as mqttPacket.IPublishPacket).topic);
  }

  saw(clientId: string, cmd: string): boolean {
    return this.received.some((r) => r.clientId === clientId && r.packet.cmd === cmd);
  }
}

const broker = new FakeBroker();
let sessions: DeviceSessions;
let shard: MessagePort;
const fromWriter: DevicesToShard[] = [];
const acks: { token: number; reason: number }[] = [];
const ring = createRing(1 << 22);
const producer = new RingProducer(ring);
const consumer = new RingConsumer(ring);

after(async () => {
  await sessions?.close();
  shard?.close();
  await new Promise((r) => broker.server.close(r));
});

async function setup(): Promise<void> {
  if (sessions !== undefined) return;
  const port = await broker.listen();
  const config = loadConfig({
    FANOUT_BROKERS: `b=mqtt://127.0.0.1:${port}?pool=1&protocol=3.1.1&mode=per-device`, FANOUT_UPSTREAM_CONNECT_RATE: '0',
    FANOUT_RECONNECT_MIN_MS: '10', FANOUT_RECONNECT_MAX_MS: '50',
  });
  const log = pino({ level: 'silent' });
  let scheduled = false;
  const writer: DeviceWriter = {
    log, warnings: new RateLimitedLog(log), get now() { return Date.now(); }, rtt: new LatencyRecorder(), maxIncoming: 1 << 20,
    ack: (_shard, token, reason) => acks.push({ token, reason }),
    schedulePump: () => {
      if (scheduled) return;
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        sessions.pump();
        sessions.flush(() => undefined);
      });
    },
  };
  const { port1, port2 } = new MessageChannel();
  shard = port2;
  shard.on('message', (m: DevicesToShard) => fromWriter.push(...(m.t === 'dev-batch' ? m.ms : [m])));
  sessions = new DeviceSessions(writer, config.brokers[0], config, 0, [port1], [new RingProducer(createRing(65536))], {
    inFilters: () => [], localTopics: (_b, remote, out) => { out.length = 0; out.push(remote); return 1; },
  });
  sessions.start();
}

function open(key: number, clientId: string): void {
  const m: DeviceOpen = {
    t: 'dev-open', shard: 0, key, clientId, username: null, password: null, version: 4, clean: true, expiryS: 0, will: null,
    maxPacketSize: 0, userProperties: null, trace: false, subs: [],
  };
  shard.postMessage(m);
}

/** Puts one device record in the ring and has the writer take it, as Writer.take() does. */
function take(key: number, topic: string, opts: { qos?: number; token?: number; payload?: number } = {}): DeviceUpstream | null {
  const payload = Buffer.alloc(opts.payload ?? 10, 0x61);
  const topicLen = Buffer.byteLength(topic);
  const at = producer.reserve(UPLINK_HEADER + topicLen + payload.length);
  const b = producer.buffer;
  b[at] = REC_PUBLISH;
  b[at + 1] = opts.qos ?? 1;
  producer.dataView.setUint16(at + 2, topicLen, true);
  producer.dataView.setUint32(at + 4, 0, true);
  producer.dataView.setUint32(at + 8, opts.token ?? NO_TOKEN, true);
  producer.dataView.setUint32(at + 12, key, true);
  b.write(topic, at + UPLINK_HEADER);
  payload.copy(b, at + UPLINK_HEADER + topicLen);
  producer.commit();
  return takeNext();
}

function takeNext(): DeviceUpstream | null {
  const at = consumer.next();
  const stall = sessions.take(0, consumer.dataView.getUint32(at + 12, true), consumer.buffer, consumer.dataView, at, consumer.lastLength);
  if (stall !== null) consumer.unreadLast();
  consumer.release();
  sessions.pump();
  sessions.flush(() => undefined);
  return stall;
}

function end(key: number, how: number): void {
  const at = producer.reserve(UPLINK_HEADER);
  producer.buffer[at] = REC_DEVICE_CLOSE;
  producer.buffer[at + 1] = how;
  producer.buffer[at + 2] = 0;
  producer.buffer[at + 3] = 0;
  producer.dataView.setUint32(at + 8, NO_TOKEN, true);
  producer.dataView.setUint32(at + 12, key, true);
  producer.commit();
  assert.equal(takeNext(), null);
}

const opened = (key: number): boolean => fromWriter.some((m) => m.t === 'dev-opened' && m.key === key && m.ok);
const holds = (key: number): boolean[] => fromWriter.flatMap((m) => (m.t === 'dev-hold' && m.key === key ? [m.held] : []));

test('a device whose session cannot send does not hold back the devices behind it; its records go out in order once it is up', async () => {
  await setup();
  broker.hold.add('slow-b');
  open(1, 'fast');
  open(2, 'slow');
  await waitFor('the fast device\'s session', () => opened(1));
  await waitFor('the slow device\'s CONNECT', () => broker.saw('slow-b', 'connect'));
  assert.equal(take(2, 'slow/0', { token: 100 }), null, 'a record of the waiting session is taken (parked)');
  assert.equal(take(1, 'fast/0', { token: 1 }), null);
  assert.equal(take(2, 'slow/1', { token: 101 }), null);
  assert.equal(take(1, 'fast/1', { token: 2 }), null);
  await waitFor('the fast device\'s publishes at the broker', () => broker.publishes('fast-b').length === 2);
  assert.deepEqual(broker.publishes('slow-b'), []);
  await waitFor('the fast device\'s acknowledgements', () => acks.filter((a) => a.token <= 2).length === 2);
  assert.equal(acks.some((a) => a.token >= 100), false, 'a parked publish was acknowledged');
  broker.waiting.get('slow-b')!();
  await waitFor('the parked publishes, in order', () => broker.publishes('slow-b').length === 2);
  assert.deepEqual(broker.publishes('slow-b'), ['slow/0', 'slow/1']);
  await waitFor('their acknowledgements', () => acks.filter((a) => a.token >= 100).length === 2);
  assert.deepEqual(acks.filter((a) => a.token >= 100).map((a) => a.reason), [0, 0]);
  assert.deepEqual(holds(2), [], 'two small records are no reason to stop reading the device');
});

test('past 64 KiB parked the shard is told to stop reading the device and, once they went out, to go on; past 1 MiB its records stay in the ring', async () => {
  await setup();
  broker.hold.add('big-b');
  open(3, 'big');
  await waitFor('the CONNECT', () => broker.saw('big-b', 'connect'));
  let stall: DeviceUpstream | null = null;
  let n = 0;
  for (; n < 200 && stall === null; n++) stall = take(3, `big/${n}`, { qos: 0, payload: 16 * 1024 });
  await waitFor('dev-hold', () => holds(3).length === 1);
  assert.deepEqual(holds(3), [true]);
  assert.notEqual(stall, null, 'records were parked without bound');
  assert.ok(n > 60 && n < 70, `the ring kept the ${n}th record (1 MiB of 16 KiB ones)`);
  broker.waiting.get('big-b')!();
  await waitFor('every parked record at the broker', () => broker.publishes('big-b').length === n - 1);
  assert.equal(takeNext(), null, 'the record left in the ring is taken now');
  await waitFor('all of them', () => broker.publishes('big-b').length === n);
  assert.deepEqual(broker.publishes('big-b'), Array.from({ length: n }, (_, i) => `big/${i}`));
  await waitFor('the release', () => holds(3).length === 2);
  assert.deepEqual(holds(3), [true, false]);
});

test('a device\'s end: DISCONNECT after a clean leave, a plain close when it was lost; nothing after it', async () => {
  await setup();
  open(4, 'clean');
  open(5, 'lost');
  await waitFor('both sessions', () => opened(4) && opened(5));
  take(4, 'clean/last');
  end(4, CLOSE_CLEAN);
  take(5, 'lost/last');
  end(5, CLOSE_LOST);
  await waitFor('both closed at the broker', () => broker.closed.includes('clean-b') && broker.closed.includes('lost-b'));
  assert.deepEqual(broker.publishes('clean-b'), ['clean/last'], 'the last publish went out before the end');
  assert.deepEqual(broker.publishes('lost-b'), ['lost/last']);
  assert.equal(broker.saw('clean-b', 'disconnect'), true);
  assert.equal(broker.saw('lost-b', 'disconnect'), false, 'a lost device must leave its will to the broker');
  // A record of a device whose session ended is not forwarded; its publisher is told (0x80).
  take(4, 'clean/too-late', { token: 7 });
  assert.deepEqual(acks.filter((a) => a.token === 7), [{ token: 7, reason: 0x80 }]);
  assert.deepEqual(broker.publishes('clean-b'), ['clean/last']);
});

test('an end that overtakes its open (they travel apart) ends it before it starts', async () => {
  await setup();
  end(6, CLOSE_LOST);
  open(6, 'gone');
  await waitFor('the answer', () => fromWriter.some((m) => m.t === 'dev-opened' && m.key === 6));
  const answer = fromWriter.find((m) => m.t === 'dev-opened' && m.key === 6);
  assert.deepEqual(answer, { t: 'dev-opened', broker: 0, key: 6, ok: false, why: 'gone', code: 0, version: 4 });
  assert.equal(broker.saw('gone-b', 'connect'), false);
});
