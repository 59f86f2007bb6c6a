// The limits that protect the daemon from abusive devices, each a FANOUT_* variable: connections
// at once, connections per second per address, topic length and levels, subscriptions per
// session, and the per-device publish rate (slowed down, not cut off). (CONNECT timeout, packet
// size, inflight and queue limits are covered in sessions, malformed and downlink tests.)

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import mqtt, { type MqttClient, type Packet } from 'mqtt';
import { Collector, closeClient, connect, connectClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('limits', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;

  before(async () => {
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 1,
      FANOUT_MAX_CONNECTIONS: 4, FANOUT_MAX_TOPIC_LENGTH: 24, FANOUT_MAX_TOPIC_LEVELS: 4, FANOUT_MAX_SUBSCRIPTIONS: 2,
      FANOUT_MAX_PUBLISH_RATE: 50, FANOUT_MAX_CONNECT_RATE: 1000,
    }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
  });
  after(() => scope.close());

  test('FANOUT_MAX_CONNECTIONS: the connection beyond the limit gets CONNACK 0x97 (MQTT 5) or 0x03 (3.1.1)', async (t) => {
    const held: MqttClient[] = [];
    for (let i = 0; i < 4; i++) held.push(await connectClient(daemon.port, { clientId: `lim-c${i}-${process.pid}` }));
    t.after(() => Promise.all(held.map((c) => closeClient(c))));
    for (const [protocolVersion, code] of [[5, 0x97], [4, 0x03]] as const) {
      const c = mqtt.connect(`mqtt://127.0.0.1:${daemon.port}`, { clientId: `lim-over-${protocolVersion}`, protocolVersion, reconnectPeriod: 0 });
      const err = await new Promise<{ code?: number }>((resolve) => c.once('error', (e) => resolve(e as { code?: number })));
      c.end(true);
      assert.equal(err.code, code);
    }
    await closeClient(held.pop());
    await sleep(200);
    const again = await connectClient(daemon.port, { clientId: `lim-again-${process.pid}` });
    await closeClient(again);
  });

  test('FANOUT_MAX_TOPIC_LENGTH / _LEVELS: MQTT 5 QoS 1 gets PUBACK 0x90 and stays connected; 3.1.1 is disconnected; nothing is forwarded', async (t) => {
    const at = await Collector.start(up.port, 'lim/#', { qos: 1 });
    t.after(() => at.close());
    const v5 = await connectClient(daemon.port, { clientId: `lim-t5-${process.pid}`, protocolVersion: 5 });
    t.after(() => closeClient(v5));
    const tooLong = `lim/${'x'.repeat(30)}`;
    const tooDeep = 'lim/a/b/c/d';
    for (const topic of [tooLong, tooDeep]) {
      await assert.rejects(v5.publishAsync(topic, 'x', { qos: 1 }), (err: { code?: number }) => err.code === 0x90);
    }
    await v5.publishAsync('lim/a/b/c', 'fine', { qos: 1 }); // 4 levels, 9 bytes: allowed
    await at.waitForCount(1, (m) => m.topic === 'lim/a/b/c');
    assert.equal(at.count((m) => m.topic === tooLong || m.topic === tooDeep), 0);
    const v4 = await connect(daemon.port, { clientId: `lim-t4-${process.pid}` });
    const closed = new Promise<void>((resolve) => v4.client.once('close', () => resolve()));
    v4.client.publish(tooDeep, 'x', { qos: 1 });
    await closed;
    await sleep(200);
    assert.equal(at.count((m) => m.topic === tooDeep), 0);
  });

  test('FANOUT_MAX_SUBSCRIPTIONS and topic limits on filters: the extra filter gets 0x97 (MQTT 5) / 0x80 (3.1.1), a too deep one 0x8F / 0x80', async (t) => {
    for (const [protocolVersion, quota, invalid] of [[5, 0x97, 0x8f], [4, 0x80, 0x80]] as const) {
      const c = await connectClient(daemon.port, { clientId: `lim-s${protocolVersion}-${process.pid}`, protocolVersion });
      t.after(() => closeClient(c));
      // The SUBACK as sent (mqtt.js turns MQTT 5 failure codes into an error).
      const subacks: number[][] = [];
      c.on('packetreceive', (p: Packet) => { if (p.cmd === 'suback') subacks.push(p.granted as number[]); });
      c.subscribe({ 'lim/s/1': { qos: 1 }, 'lim/s/2': { qos: 1 }, 'lim/s/3': { qos: 1 }, 'lim/s/+/+/x': { qos: 1 } }, () => undefined);
      await waitFor('the SUBACK', () => subacks.length === 1);
      assert.deepEqual(subacks[0], [1, 1, quota, invalid]);
      // Re-subscribing an existing filter is not a new subscription.
      const again = await c.subscribeAsync('lim/s/1', { qos: 0 });
      assert.equal(again[0].qos, 0);
    }
  });

  test('FANOUT_MAX_PUBLISH_RATE (50/s): a device publishing as fast as it can is slowed down, and loses nothing', async (t) => {
    const at = await Collector.start(up.port, 'lim/rate', { qos: 1 });
    t.after(() => at.close());
    const c = await connectClient(daemon.port, { clientId: `lim-r-${process.pid}` });
    t.after(() => closeClient(c));
    const started = Date.now();
    await Promise.all(Array.from({ length: 150 }, (_, i) => c.publishAsync('lim/rate', String(i), { qos: 0 })));
    await at.waitForCount(150, () => true, 20_000, 'all 150 messages');
    const took = Date.now() - started;
    // 50 at once (the bucket), then 50/s: at least ~2 s for 150.
    assert.ok(took >= 1500, `150 messages at 50/s took only ${took} ms`);
    assert.deepEqual(at.messages.map((m) => Number(m.payload.toString())), Array.from({ length: 150 }, (_, i) => i));
  });
});

describe('FANOUT_MAX_CONNECT_RATE', { timeout: 60_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('connections beyond the rate from one address are closed at once; the next second admits again', async () => {
    const up = scope.use(await Mosquitto.start());
    const daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 1, FANOUT_MAX_CONNECT_RATE: 5 }));
    // Wait for the start of a second so the 12 attempts fall into one.
    await sleep(1000 - (Date.now() % 1000) + 20);
    const outcomes = await Promise.all(Array.from({ length: 12 }, () => new Promise<'open' | 'closed'>((resolve) => {
      const s = net.connect(daemon.port, '127.0.0.1');
      s.once('close', () => resolve('closed'));
      s.once('error', () => undefined);
      setTimeout(() => {
        resolve(s.destroyed ? 'closed' : 'open');
        s.destroy();
      }, 400);
    })));
    assert.equal(outcomes.filter((o) => o === 'open').length, 5, outcomes.join(','));
    await waitFor('a connection admitted in a later second', async () => {
      await sleep(1100);
      const c = await connectClient(daemon.port, { clientId: `rate-later-${process.pid}` }).catch(() => null);
      if (c) await closeClient(c);
      return c !== null;
    }, { timeoutMs: 10_000 });
  });
});
