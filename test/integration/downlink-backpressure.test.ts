// A burst from a broker to devices that acknowledge slowly: with FANOUT_QUEUE_OVERFLOW=block the
// shard stops taking messages from the writer while a connected device's queue is full, the
// writer stops acknowledging the broker, and nothing is lost; with drop-oldest the queue
// overflows and the oldest messages are dropped (and counted). And the queue of a device that is
// away, bounded by FANOUT_MAX_QUEUED_MESSAGES under each policy.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import { closeClient, connectClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { connectDeviceTo } from '../helpers/target';
import { Scope, waitFor, withTimeout } from '../helpers/wait';

const MESSAGES = 300;

/** One broker and a one-shard daemon whose devices have a window of 5 and a queue of 10. */
async function slowSetup(scope: Scope, policy: 'block' | 'drop-oldest', env: Record<string, number> = {}): Promise<{ up: Mosquitto; daemon: DaemonProcess }> {
  // The broker keeps what the proxy does not take yet (no queue limit for its session).
  const up = scope.use(await Mosquitto.start({ extraConfig: ['max_queued_messages 0'] }));
  const daemon = scope.use(await DaemonProcess.start({
    FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`,
    FANOUT_SHARDS: 1,
    FANOUT_MAX_INFLIGHT: 5,
    FANOUT_MAX_QUEUED_MESSAGES: 10,
    FANOUT_QUEUE_OVERFLOW: policy,
    ...env,
  }));
  await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
  return { up, daemon };
}

for (const policy of ['block', 'drop-oldest'] as const) {
  describe(`downlink burst to a slow device, FANOUT_QUEUE_OVERFLOW=${policy}`, { timeout: 120_000 }, () => {
    const scope = new Scope();
    let up: Mosquitto;
    let daemon: DaemonProcess;

    before(async () => {
      ({ up, daemon } = await slowSetup(scope, policy, { FANOUT_RING_BYTES: 65536, FANOUT_MAX_PACKET_SIZE: 16384 }));
    });
    after(() => scope.close());

    test(policy === 'block' ? 'every message arrives, in order' : 'the queue overflows and the oldest messages are dropped', async (t) => {
      const got: number[] = [];
      const dev = mqtt.connect(`mqtt://127.0.0.1:${daemon.port}`, { clientId: `slow-${policy}-${process.pid}`, reconnectPeriod: 0 });
      t.after(() => closeClient(dev));
      // mqtt.js acknowledges a QoS 1 message when this callback runs: 3 ms per message.
      dev.handleMessage = (packet, done) => {
        got.push(Number(packet.payload.toString()));
        setTimeout(() => done(), 3);
      };
      await withTimeout(new Promise((resolve) => dev.once('connect', resolve)), 10_000, 'CONNACK');
      await dev.subscribeAsync('burst/#', { qos: 1 });
      const pub = await connectClient(up.port, { clientId: `burst-pub-${policy}-${process.pid}` });
      t.after(() => closeClient(pub));
      await Promise.all(Array.from({ length: MESSAGES }, (_, i) => pub.publishAsync('burst/x', String(i), { qos: 1 })));
      if (policy === 'block') {
        await waitFor(`${MESSAGES} messages at the device`, () => got.length >= MESSAGES, { timeoutMs: 30_000, detail: () => `got ${got.length}` });
        assert.deepEqual(got, Array.from({ length: MESSAGES }, (_, i) => i));
        assert.equal(daemon.lines.filter((l) => /session queue full/.test(l.msg)).length, 0);
      } else {
        const warned = await daemon.waitForLog((l) => /session queue full/.test(l.msg), 30_000);
        assert.ok(warned);
        await waitFor('the device to settle', async () => {
          const before = got.length;
          await new Promise((r) => setTimeout(r, 300));
          return got.length === before;
        }, { timeoutMs: 30_000 });
        assert.ok(got.length < MESSAGES, `got ${got.length} of ${MESSAGES}: nothing overflowed`);
        assert.deepEqual(got, [...got].sort((a, b) => a - b), 'what arrives stays in order');
      }
    });
  });
}

describe('FANOUT_QUEUE_OVERFLOW=block and a device that stopped acknowledging', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;

  before(async () => {
    ({ up, daemon } = await slowSetup(scope, 'block'));
  });
  after(() => scope.close());

  test('it does not hold the other devices back: they get every message, and its queue overflows (counted)', async () => {
    const stuck = mqtt.connect(`mqtt://127.0.0.1:${daemon.port}`, { clientId: `stuck-${process.pid}`, reconnectPeriod: 0 });
    // Never acknowledges: the callback that would send the PUBACK is not called.
    stuck.handleMessage = () => { /* stuck */ };
    await withTimeout(new Promise((resolve) => stuck.once('connect', resolve)), 10_000, 'CONNACK');
    await stuck.subscribeAsync('stuck/#', { qos: 1 });
    const healthy = await connectClient(daemon.port, { clientId: `healthy-${process.pid}` });
    const got: number[] = [];
    healthy.on('message', (_topic, payload) => got.push(Number(payload.toString())));
    await healthy.subscribeAsync('stuck/#', { qos: 1 });
    try {
      const pub = await connectClient(up.port, { clientId: `stuck-pub-${process.pid}` });
      try {
        await Promise.all(Array.from({ length: MESSAGES }, (_, i) => pub.publishAsync('stuck/x', String(i), { qos: 1 })));
      } finally {
        await closeClient(pub);
      }
      // Without the rule, each message beyond the stuck queue held the downlink for 10 s.
      await waitFor(`${MESSAGES} messages at the healthy device`, () => got.length >= MESSAGES, { timeoutMs: 30_000, detail: () => `got ${got.length}` });
      assert.deepEqual(got, Array.from({ length: MESSAGES }, (_, i) => i));
      assert.ok(await daemon.waitForLog((l) => /session queue full/.test(l.msg), 10_000), 'the overflow of the stuck queue is logged');
    } finally {
      await closeClient(healthy);
      await closeClient(stuck);
    }
  });
});

// An absent device's persistent session: its QoS 1 messages queue while it is away, at most
// FANOUT_MAX_QUEUED_MESSAGES; FANOUT_QUEUE_OVERFLOW says which ones stay (block, for an absent
// device, drops the oldest: there is nobody whose acknowledgements could free room).
const QUEUE = 5;
const AWAY = 12;
for (const [policy, kept] of [
  ['drop-oldest', Array.from({ length: QUEUE }, (_, i) => AWAY - QUEUE + i)],
  ['drop-new', Array.from({ length: QUEUE }, (_, i) => i)],
  ['block', Array.from({ length: QUEUE }, (_, i) => AWAY - QUEUE + i)],
] as const) {
  describe(`an absent device's session queue, FANOUT_MAX_QUEUED_MESSAGES=${QUEUE}, FANOUT_QUEUE_OVERFLOW=${policy}`, { timeout: 60_000 }, () => {
    const scope = new Scope();
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let metricsUrl = '';

    before(async () => {
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_MAX_QUEUED_MESSAGES: QUEUE, FANOUT_QUEUE_OVERFLOW: policy, FANOUT_HTTP_PORT: 0,
      }));
      metricsUrl = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}/metrics`;
      await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    });
    after(() => scope.close());

    const queueFull = async (): Promise<number> => {
      const f = parsePrometheus(await (await fetch(metricsUrl)).text()).get('fanout_drops_total');
      assert.ok(f, 'fanout_drops_total is exposed');
      return f.samples.filter((s) => s.labels.reason === 'queue_full').reduce((n, s) => n + s.value, 0);
    };

    test(`${AWAY} QoS 1 messages while away: the device gets ${policy === 'drop-new' ? 'the oldest' : 'the newest'} ${QUEUE}, in order; ${AWAY - QUEUE} drops counted (queue_full) and logged in one rate-limited warning`, async (t) => {
      const clientId = `away-${policy}-${process.pid}`;
      const topic = `away/${policy}/${process.pid}`;
      const first = await connectDeviceTo(daemon.port, { protocolVersion: 4, clientId, clean: false }, 'device');
      await first.subscribeOk(topic, { qos: 1 });
      await first.client.endAsync(false);
      const pub = await connectClient(up.port, { clientId: `away-pub-${policy}-${process.pid}` });
      t.after(() => closeClient(pub));
      for (let i = 0; i < AWAY; i++) await pub.publishAsync(topic, String(i), { qos: 1 });
      await waitFor(`${AWAY - QUEUE} queue_full drops`, async () => (await queueFull()) === AWAY - QUEUE, { timeoutMs: 10_000, intervalMs: 200 });
      const warnings = (): { occurrences: number }[] => daemon.lines
        .filter((l) => l.level === 40 && /^session queue full/.test(l.msg)) as unknown as { occurrences: number }[];
      // Logs are written off the shard thread: the line may follow the metric by a moment.
      await waitFor('the first drop logged', () => warnings().length >= 1, { timeoutMs: 5_000 });
      assert.deepEqual(warnings().map((w) => w.occurrences), [1], 'the first drop is logged at once, the others held back');
      // The held-back ones are reported in one line once the interval (5 s) is over.
      await waitFor('the held-back drops in one line', () => warnings().length === 2, { timeoutMs: 10_000 });
      assert.deepEqual(warnings().map((w) => w.occurrences), [1, AWAY - QUEUE - 1]);

      const again = await connectDeviceTo(daemon.port, { protocolVersion: 4, clientId, clean: false }, 'device again');
      t.after(() => again.close());
      assert.equal(again.sessionPresent, true);
      await again.waitFor(QUEUE, (m) => m.topic === topic, `the ${QUEUE} queued messages`);
      await pub.publishAsync(topic, 'fence', { qos: 1 });
      await again.waitFor(1, (m) => m.text === 'fence', 'the fence');
      assert.deepEqual(again.messages.filter((m) => m.text !== 'fence').map((m) => Number(m.text)), kept, 'the messages kept while away');
      assert.equal(await queueFull(), AWAY - QUEUE, 'no more drops once the device is back');
    });
  });
}
