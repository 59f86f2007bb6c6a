// A burst from a broker to devices that acknowledge slowly: with FANOUT_QUEUE_OVERFLOW=block the
// shard stops taking messages from the writer while a connected device's queue is full, the
// writer stops acknowledging the broker, and nothing is lost; with drop-oldest the queue
// overflows and the oldest messages are dropped (and counted).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import { closeClient, connectClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
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
