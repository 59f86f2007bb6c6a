// Device sessions: client-id takeover across shards, keep-alive, the CONNECT timeout, last
// wills (immediate and delayed), and what CONNACK tells MQTT 5 and 3.1.1 clients.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { IDisconnectPacket, MqttClient } from 'mqtt';
import pino from 'pino';
import type * as mqttPacket from 'mqtt-packet';
import { startDaemon, type Daemon } from '../../src/main';
import { loadConfig } from '../../src/config/index';
import type { MainLog } from '../../src/log';
import { Collector, closeClient, connectClient, RawClient, waitPoolOnline, type Received } from '../helpers/clients';
import { DaemonProcess, uniqueProxyId } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { HOST } from '../helpers/ports';
import { Scope, sleep, waitFor } from '../helpers/wait';

/** A MainLog that keeps the daemon's lines in memory: an in-process daemon must not write
 *  to the test process's stdout, which the test runner reads. */
function memoryLog(lines: string[]): MainLog {
  const logger = pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); } });
  return { logger, relay: (line) => { lines.push(line); }, flush: async () => undefined };
}

describe('client-id takeover across shards (in-process daemon, 2 shards)', { timeout: 150_000 }, () => {
  const scope = new Scope();
  const lines: string[] = [];
  let daemon: Daemon;
  let b1: Mosquitto;

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    const config = loadConfig({
      FANOUT_HOST: HOST, FANOUT_PORT: '0', FANOUT_SHARDS: '2', FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })}`,
      FANOUT_PROXY_ID: uniqueProxyId('ses'), FANOUT_LOG_LEVEL: 'debug', FANOUT_SHUTDOWN_TIMEOUT_MS: '2000',
    });
    daemon = await startDaemon(config, memoryLog(lines));
    scope.defer(() => daemon.stop());
  });
  after(() => scope.close());

  /** The shard a client lives on: the one whose publishesIn moves when it publishes. */
  async function shardOf(client: MqttClient): Promise<number> {
    const before = daemon.shardStats().map((s) => s.publishesIn);
    client.publish('ses/probe', 'probe', { qos: 0 });
    return waitFor('the probe publish to be counted by a shard', () => {
      const i = daemon.shardStats().findIndex((s, k) => s.publishesIn > before[k]);
      return i >= 0 ? i : undefined;
    }, { timeoutMs: 5000 });
  }

  for (const protocolVersion of [5, 4] as const) {
    test(`MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}: a second connection with the same client id closes the first${protocolVersion === 5 ? ' with DISCONNECT 0x8E' : ''}, on the same or another shard`, async (t) => {
      const seen = { same: 0, cross: 0 };
      const open: MqttClient[] = [];
      t.after(() => Promise.all(open.map((c) => closeClient(c))));
      for (let i = 0; i < 30 && seen.cross < 2; i++) {
        const clientId = `ses-take-${protocolVersion}-${process.pid}-${i}`;
        const first = await connectClient(daemon.port, { protocolVersion, clientId });
        open.push(first);
        let firstClosed = false;
        const disconnects: IDisconnectPacket[] = [];
        first.on('disconnect', (p: IDisconnectPacket) => disconnects.push(p));
        first.on('close', () => { firstClosed = true; });
        const shardA = await shardOf(first);
        const takeoversBefore = daemon.shardStats()[shardA].takeovers;

        const second = await connectClient(daemon.port, { protocolVersion, clientId });
        open.push(second);
        let secondClosed = false;
        second.on('close', () => { secondClosed = true; });
        const shardB = await shardOf(second);
        if (shardA === shardB) seen.same++;
        else seen.cross++;
        const where = `iteration ${i}, first on shard ${shardA}, second on shard ${shardB}`;

        await waitFor(`the first connection to be closed (${where})`, () => firstClosed, { timeoutMs: 5000 });
        if (protocolVersion === 5) {
          assert.deepEqual(disconnects.map((p) => p.reasonCode), [0x8e], `DISCONNECT reason codes the first connection got (${where})`);
        }
        assert.equal(daemon.shardStats()[shardA].takeovers, takeoversBefore + 1, `takeovers counter of shard ${shardA} (${where})`);
        // The new owner is unaffected: still connected and able to publish.
        await sleep(100);
        assert.equal(secondClosed, false, `the second connection was closed too (${where})`);
        await second.publishAsync('ses/after-takeover', 'still here', { qos: 0 });
        await shardOf(second);
        assert.equal(secondClosed, false, `the second connection was closed after publishing (${where})`);
        await closeClient(second);
        await closeClient(first);
      }
      t.diagnostic(`takeovers checked: ${seen.same} on the same shard, ${seen.cross} across shards`);
      assert.ok(seen.cross >= 1, `never got two connections on different shards in 30 tries (${JSON.stringify(seen)}); daemon log tail: ${lines.slice(-10).join('')}`);
    });
  }
});

describe('sessions on a spawned daemon', { timeout: 150_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let wills1: Collector;
  let wills2: Collector;
  const CONNECT_TIMEOUT_MS = 1500;
  const MAX_INFLIGHT = 37;
  const MAX_PACKET = 4096;

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    b2 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1, protocol: 5 })}`,
      FANOUT_CONNECT_TIMEOUT_MS: CONNECT_TIMEOUT_MS,
      FANOUT_MAX_INFLIGHT: MAX_INFLIGHT,
      FANOUT_MAX_PACKET_SIZE: MAX_PACKET,
      FANOUT_LOG_LEVEL: 'debug',
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    wills1 = scope.use(await Collector.start(b1.port, 'will/#', { qos: 1 }));
    wills2 = scope.use(await Collector.start(b2.port, 'will/#', { qos: 1 }));
  });
  after(() => scope.close());

  let n = 0;
  function willTopic(tag: string): string {
    n++;
    return `will/${tag}/${process.pid}-${n}`;
  }
  const onTopic = (topic: string) => (m: Received): boolean => m.topic === topic;

  for (const version of [4, 5] as const) {
    test(`keep-alive (MQTT ${version === 4 ? '3.1.1' : '5'}): a silent client with keep-alive 1 s is closed after ~1.5 s, not before 1 s`, async (t) => {
      const c = await RawClient.open(daemon.port, version);
      t.after(() => c.destroy());
      // The lower bound is measured from before CONNECT was sent and the upper one from after
      // CONNACK arrived, so scheduling noise can only make the test more lenient.
      const sent = Date.now();
      await c.handshake({ keepalive: 1 });
      const acked = Date.now();
      await c.waitClosed(6000);
      assert.ok(c.closedAt - sent >= 1000, `closed ${c.closedAt - sent} ms after CONNECT`);
      // 1.5 x keep-alive, plus the daemon's 1 s check interval, plus scheduling noise.
      assert.ok(c.closedAt - acked <= 3500, `closed only ${c.closedAt - acked} ms after CONNACK`);
      if (version === 5) assert.equal(c.disconnectReason(), 0x8d, `expected DISCONNECT 0x8D (keep-alive timeout); ${c.describe()}`);
    });
  }

  test('keep-alive: a client that sends PINGREQ every 700 ms (keep-alive 1 s) stays connected', async (t) => {
    const c = await RawClient.connected(daemon.port, 4, { keepalive: 1 });
    t.after(() => c.destroy());
    for (let i = 0; i < 6; i++) {
      await sleep(700);
      assert.equal(c.closed, false, `closed after ${Date.now() - c.openedAt} ms although it pinged`);
      c.sendPacket({ cmd: 'pingreq' });
    }
    await waitFor('6 PINGRESPs', () => c.packets.filter((p) => p.cmd === 'pingresp').length === 6, { timeoutMs: 3000 });
    assert.equal(c.closed, false);
  });

  test(`CONNECT timeout: sockets that never send CONNECT are closed after FANOUT_CONNECT_TIMEOUT_MS (${CONNECT_TIMEOUT_MS} ms), not before`, async (t) => {
    // Opened a quarter second apart, so their arrival falls at different points of whatever
    // periodic check the daemon runs.
    const sockets: RawClient[] = [];
    t.after(() => sockets.forEach((s) => s.destroy()));
    for (let i = 0; i < 4; i++) {
      sockets.push(await RawClient.open(daemon.port));
      await sleep(250);
    }
    await Promise.all(sockets.map((s) => s.waitClosed(CONNECT_TIMEOUT_MS + 5000)));
    const lifetimes = sockets.map((s) => s.closedAt - s.openedAt);
    for (const s of sockets) assert.equal(s.bytes.length, 0, `got bytes on a socket that never sent CONNECT: ${s.describe()}`);
    const early = lifetimes.filter((ms) => ms < CONNECT_TIMEOUT_MS - 100);
    const late = lifetimes.filter((ms) => ms > CONNECT_TIMEOUT_MS + 2500);
    assert.deepEqual({ early, late }, { early: [], late: [] }, `socket lifetimes in ms: ${lifetimes.join(', ')}`);
  });

  test(`CONNECT timeout: a CONNECT trickled one byte every 700 ms is closed FANOUT_CONNECT_TIMEOUT_MS (${CONNECT_TIMEOUT_MS} ms) after the accept, its bytes do not keep it open`, async (t) => {
    const c = await RawClient.open(daemon.port);
    t.after(() => c.destroy());
    const connect = c.encode({
      cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId: `ses-trickle-${process.pid}-${'x'.repeat(20)}`,
    } as mqttPacket.IConnectPacket);
    let sent = 0;
    // The whole CONNECT would take ~30 s at this pace.
    while (!c.closed && sent < connect.length - 1) {
      c.send(connect.subarray(sent, sent + 1));
      sent++;
      await sleep(700);
    }
    assert.ok(c.closed, `the socket was still open after ${sent} of ${connect.length} bytes (${Date.now() - c.openedAt} ms)`);
    const lifetime = c.closedAt - c.openedAt;
    assert.ok(lifetime >= CONNECT_TIMEOUT_MS - 100 && lifetime <= CONNECT_TIMEOUT_MS + 2500, `closed ${lifetime} ms after it was opened, after ${sent} bytes`);
    assert.equal(c.bytes.length, 0, `got an answer: ${c.describe()}`);
  });

  test('CONNECT timeout: a socket that sends CONNECT in time is not closed by it', async (t) => {
    const c = await RawClient.open(daemon.port);
    t.after(() => c.destroy());
    await sleep(CONNECT_TIMEOUT_MS / 3);
    const connack = await c.handshake();
    assert.equal(connack.returnCode, 0);
    await sleep(CONNECT_TIMEOUT_MS + 1200);
    assert.equal(c.closed, false, 'a connected client was closed by the CONNECT timeout');
  });

  for (const version of [4, 5] as const) {
    test(`last will (MQTT ${version === 4 ? '3.1.1' : '5'}) is published to every broker when the socket is destroyed`, async (t) => {
      const topic = willTopic(`unclean-v${version}`);
      const c = await RawClient.connected(daemon.port, version, {
        clientId: `ses-will-${version}-${process.pid}`, will: { topic, payload: Buffer.from('device gone'), qos: 1, retain: false },
      });
      t.after(() => c.destroy());
      c.destroy();
      for (const [name, w] of [['b1', wills1], ['b2', wills2]] as const) {
        const [m] = await w.waitForCount(1, onTopic(topic), 10_000, `the will at ${name}`);
        assert.equal(m.payload.toString(), 'device gone');
        assert.equal(m.qos, 1);
      }
    });
  }

  for (const version of [4, 5] as const) {
    test(`last will (MQTT ${version === 4 ? '3.1.1' : '5'}) is NOT published after a clean DISCONNECT`, async (t) => {
      const topic = willTopic(`clean-v${version}`);
      const c = await RawClient.connected(daemon.port, version, {
        clientId: `ses-clean-${version}-${process.pid}`, will: { topic, payload: Buffer.from('should not appear'), qos: 1, retain: false },
      });
      t.after(() => c.destroy());
      c.sendPacket({ cmd: 'disconnect' });
      await c.waitClosed(5000);
      // A will would be on its way at once; give it well over the daemon's 1 s timers.
      await sleep(1500);
      assert.equal(wills1.count(onTopic(topic)) + wills2.count(onTopic(topic)), 0, 'the will was published after a clean DISCONNECT');
    });
  }

  test('MQTT 5 DISCONNECT with reason 0x04 (disconnect with will message) publishes the will', async (t) => {
    const topic = willTopic('with-will');
    const c = await RawClient.connected(daemon.port, 5, {
      clientId: `ses-rc4-${process.pid}`, will: { topic, payload: Buffer.from('asked for'), qos: 0, retain: false },
    });
    t.after(() => c.destroy());
    c.sendPacket({ cmd: 'disconnect', reasonCode: 0x04 });
    await wills1.waitForCount(1, onTopic(topic), 10_000, 'the will at b1');
    await wills2.waitForCount(1, onTopic(topic), 10_000, 'the will at b2');
  });

  test('MQTT 5 will delay interval: the will arrives after the delay', async (t) => {
    const topic = willTopic('delayed');
    const delayS = 2;
    const c = await RawClient.connected(daemon.port, 5, {
      clientId: `ses-delay-${process.pid}`, properties: { sessionExpiryInterval: 60 },
      will: { topic, payload: Buffer.from('late goodbye'), qos: 1, retain: false, properties: { willDelayInterval: delayS } },
    });
    t.after(() => c.destroy());
    const closedAt = Date.now();
    c.destroy();
    const [m1] = await wills1.waitForCount(1, onTopic(topic), delayS * 1000 + 5000, 'the delayed will at b1');
    const [m2] = await wills2.waitForCount(1, onTopic(topic), 5000, 'the delayed will at b2');
    for (const m of [m1, m2]) {
      const after = m.at - closedAt;
      assert.ok(after >= delayS * 1000 - 100, `will arrived ${after} ms after the close, before the ${delayS} s delay`);
      assert.ok(after <= delayS * 1000 + 3000, `will arrived only ${after} ms after the close`);
      assert.equal(m.payload.toString(), 'late goodbye');
    }
  });

  test('MQTT 5 will delay interval longer than a Session Expiry Interval of 0: the will is published when the session ends, at once [MQTT-3.1.2-8]', async (t) => {
    // "The Will Message MUST be published after the Network Connection is subsequently closed
    // and either the Will Delay Interval has elapsed or the Session ends" - with no Session
    // Expiry Interval the session ends with the connection.
    const topic = willTopic('expiry0');
    const c = await RawClient.connected(daemon.port, 5, {
      clientId: `ses-expiry0-${process.pid}`,
      will: { topic, payload: Buffer.from('session over'), qos: 1, retain: false, properties: { willDelayInterval: 5 } },
    });
    t.after(() => c.destroy());
    const closedAt = Date.now();
    c.destroy();
    const [m] = await wills1.waitForCount(1, onTopic(topic), 8000, 'the will at b1');
    assert.ok(m.at - closedAt < 2000, `the will arrived ${m.at - closedAt} ms after the close: it waited for the 5 s will delay although the session (expiry 0) had ended`);
  });

  test('MQTT 5 will delay interval: a reconnect with the same client id before the delay cancels the will', async (t) => {
    const topic = willTopic('cancelled');
    const clientId = `ses-cancel-${process.pid}`;
    const c = await RawClient.connected(daemon.port, 5, {
      clientId, properties: { sessionExpiryInterval: 60 },
      will: { topic, payload: Buffer.from('must not appear'), qos: 1, retain: false, properties: { willDelayInterval: 2 } },
    });
    t.after(() => c.destroy());
    c.destroy();
    await sleep(500);
    const again = await RawClient.connected(daemon.port, 5, { clientId, properties: { sessionExpiryInterval: 60 } });
    t.after(() => again.destroy());
    await sleep(3500);
    assert.equal(wills1.count(onTopic(topic)) + wills2.count(onTopic(topic)), 0, 'the will was published although the client came back within the delay');
    assert.equal(again.closed, false, 'the returning connection was closed');
    again.sendPacket({ cmd: 'disconnect' });
  });

  test('MQTT 5 CONNACK: receiveMaximum = FANOUT_MAX_INFLIGHT, maximumPacketSize = FANOUT_MAX_PACKET_SIZE, assigned id for an empty client id', async (t) => {
    const c = await RawClient.open(daemon.port, 5);
    t.after(() => c.destroy());
    const connack = await c.handshake({ clientId: '' });
    assert.equal(connack.reasonCode, 0);
    const props = connack.properties ?? {};
    assert.equal(props.receiveMaximum, MAX_INFLIGHT);
    assert.equal(props.maximumPacketSize, MAX_PACKET);
    assert.equal(typeof props.assignedClientIdentifier, 'string');
    assert.ok((props.assignedClientIdentifier ?? '').length > 0, 'empty assigned client identifier');
    // A client that named itself gets no assigned identifier.
    const named = await RawClient.open(daemon.port, 5);
    t.after(() => named.destroy());
    const connack2 = await named.handshake({ clientId: `ses-named-${process.pid}` });
    assert.equal(connack2.properties?.assignedClientIdentifier, undefined);
    // Two empty-id clients get different identifiers (and do not take each other over).
    const other = await RawClient.open(daemon.port, 5);
    t.after(() => other.destroy());
    const connack3 = await other.handshake({ clientId: '' });
    assert.notEqual(connack3.properties?.assignedClientIdentifier, props.assignedClientIdentifier);
    await sleep(300);
    assert.equal(c.closed, false, 'the first empty-id client was closed when the second connected');
  });

  test('MQTT 3.1.1: an empty client id with clean session 0 is refused with CONNACK 0x02; with clean session 1 it is accepted', async (t) => {
    const c = await RawClient.open(daemon.port, 4);
    t.after(() => c.destroy());
    // CONNECT, "MQTT" level 4, flags 0x00 (clean session 0), keep-alive 60, client id "".
    c.send([0x10, 0x0c, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x00, 0x00, 0x3c, 0x00, 0x00]);
    const connack = await c.waitForPacket('connack') as { returnCode?: number };
    assert.equal(connack.returnCode, 0x02);
    await c.waitClosed(5000);
    const ok = await RawClient.open(daemon.port, 4);
    t.after(() => ok.destroy());
    const connack2 = await ok.handshake({ clientId: '', clean: true });
    assert.equal(connack2.returnCode, 0);
  });
});
