// The limits that protect the daemon from abusive devices, each a FANOUT_* variable: connections
// at once, connections per second per address, topic length and levels, subscriptions per
// session, and the per-device publish rate (slowed down, not cut off). (CONNECT timeout, packet
// size, inflight and queue limits are covered in sessions, malformed and downlink tests.)

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import mqtt, { type MqttClient, type Packet } from 'mqtt';
import WebSocket from 'ws';
import { Collector, closeClient, connect, connectClient, RawClient, waitPoolOnline } from '../helpers/clients';
import { parsePrometheus } from '../helpers/prometheus';
import { makePki, type Pki } from '../helpers/certs';
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
      FANOUT_MAX_PUBLISH_RATE: 50, FANOUT_MAX_CONNECT_RATE: 1000, FANOUT_WS_PORT: 0, FANOUT_HTTP_PORT: 0,
    }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
  });
  after(() => scope.close());

  const refusedMax = async (): Promise<number> => {
    const port = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
    const f = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).get('fanout_connections_refused_max_total');
    assert.ok(f, 'fanout_connections_refused_max_total is exposed');
    return f.samples.reduce((n, x) => n + x.value, 0);
  };

  test('FANOUT_MAX_CONNECTIONS (4) counts sockets from the accept: with 2 silent sockets and 2 clients open, a fifth socket is closed at once over TCP and WebSocket, CONNECT or not', async (t) => {
    const silent = [await RawClient.open(daemon.port), await RawClient.open(daemon.port)];
    t.after(() => silent.forEach((s) => s.destroy()));
    const held: MqttClient[] = [];
    for (let i = 0; i < 2; i++) held.push(await connectClient(daemon.port, { clientId: `lim-c${i}-${process.pid}` }));
    t.after(() => Promise.all(held.map((c) => closeClient(c))));
    const before = await refusedMax();
    // A raw socket: closed without a byte, long before the CONNECT timeout (10 s) would.
    const raw = await RawClient.open(daemon.port);
    t.after(() => raw.destroy());
    await raw.waitClosed(3000);
    assert.equal(raw.bytes.length, 0, raw.describe());
    // mqtt.js, MQTT 5 and 3.1.1: the socket closes before any CONNACK.
    for (const protocolVersion of [5, 4] as const) {
      const c = mqtt.connect(`mqtt://127.0.0.1:${daemon.port}`, { clientId: `lim-over-${protocolVersion}`, protocolVersion, reconnectPeriod: 0 });
      const outcome = await new Promise<string>((resolve) => {
        c.once('connect', () => resolve('connected'));
        c.once('error', (e) => resolve(`error ${(e as { code?: number }).code}`));
        c.once('close', () => resolve('closed'));
      });
      c.end(true);
      // The socket is destroyed: mqtt.js sees a close, or a reset if its CONNECT was in flight;
      // never a CONNACK (which would show as connected or as an error with a return code).
      assert.match(outcome, /^(closed|error (ECONNRESET|EPIPE))$/, `MQTT ${protocolVersion} client beyond FANOUT_MAX_CONNECTIONS`);
    }
    assert.equal(await wsAttempt(daemon.wsPort), 'refused', 'WebSocket beyond FANOUT_MAX_CONNECTIONS');
    assert.equal(await refusedMax() - before, 4, 'fanout_connections_refused_max_total counts the four sockets');
    assert.ok(await daemon.waitForLog((l) => l.level === 40 && l.msg === 'FANOUT_MAX_CONNECTIONS reached: connection closed', 5000), 'the refusal is logged as a warning');
    // A silent socket going makes room, for TCP and for WebSocket.
    silent.pop()!.destroy();
    await waitFor('room for a client', async () => {
      const c = await connectClient(daemon.port, { clientId: `lim-again-${process.pid}` }).catch(() => null);
      if (c) await closeClient(c);
      return c !== null;
    }, { timeoutMs: 5000 });
    await waitFor('room for a WebSocket', async () => (await wsAttempt(daemon.wsPort)) === 'open', { timeoutMs: 5000 });
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

describe('FANOUT_MAX_CONNECTIONS and TLS sockets that never finish their handshake', { timeout: 60_000 }, () => {
  const scope = new Scope();
  let pki: Pki;
  after(async () => {
    await scope.close();
    pki?.remove();
  });

  test('a TLS socket counts from its TCP accept: 2 silent ones fill FANOUT_MAX_CONNECTIONS=2, so a plain and a TLS client beyond are closed at once; the handshake is bounded by FANOUT_CONNECT_TIMEOUT_MS', async () => {
    pki = makePki('limits');
    const server = pki.issue('server', 'limits', { server: true });
    const up = scope.use(await Mosquitto.start());
    const TIMEOUT = 1500;
    const daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 1, FANOUT_MAX_CONNECTIONS: 2, FANOUT_CONNECT_TIMEOUT_MS: TIMEOUT,
      FANOUT_TLS_PORT: 0, FANOUT_TLS_CERT: server.cert, FANOUT_TLS_KEY: server.key,
    }));
    const tlsPort = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.tlsPort);
    // TCP to the TLS port, and not a byte of a handshake.
    const silent = [await RawClient.open(tlsPort), await RawClient.open(tlsPort)];
    scope.defer(() => silent.forEach((c) => c.destroy()));
    await sleep(200);
    const plain = await RawClient.open(daemon.port);
    scope.defer(() => plain.destroy());
    await plain.waitClosed(1000);
    assert.equal(plain.bytes.length, 0, plain.describe());
    const overTls = await new Promise<string>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port: tlsPort, ca: fs.readFileSync(pki.caCert) });
      s.once('secureConnect', () => resolve('handshake done'));
      s.once('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
      s.once('close', () => resolve('closed'));
    });
    assert.notEqual(overTls, 'handshake done', 'a TLS socket beyond FANOUT_MAX_CONNECTIONS');
    // The silent ones go once the handshake timeout (FANOUT_CONNECT_TIMEOUT_MS) is over...
    const opened = Date.now();
    await Promise.all(silent.map((c) => c.waitClosed(TIMEOUT + 5000)));
    assert.ok(Date.now() - opened <= TIMEOUT + 2500, `closed after ${Date.now() - opened} ms`);
    // ...and make room.
    const c = await connectClient(daemon.port, { clientId: `lim-tls-after-${process.pid}` });
    await closeClient(c);
  });
});

/** Opens a TCP socket and says after `holdMs` whether the daemon let it stay. */
function tcpAttempt(port: number, holdMs = 400): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('close', () => resolve('refused'));
    s.once('error', () => undefined);
    setTimeout(() => {
      resolve(s.destroyed ? 'refused' : 'open');
      s.destroy();
    }, holdMs);
  });
}

/** Opens a WebSocket (subprotocol mqtt) and says after `holdMs` whether it opened and stayed. */
function wsAttempt(port: number, holdMs = 400): Promise<Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, ['mqtt']);
    let open = false;
    ws.once('open', () => { open = true; });
    ws.once('error', () => undefined);
    ws.once('close', () => resolve('refused'));
    setTimeout(() => {
      resolve(open && ws.readyState === WebSocket.OPEN ? 'open' : 'refused');
      ws.terminate();
    }, holdMs);
  });
}

type Outcome = 'open' | 'refused';

/**
 * `n` attempts at once, early in a second, so that they fall into one second of the daemon's
 * count; a burst that a loaded machine spread past 800 ms into the second is tried again.
 */
async function burst(n: number, attempt: () => Promise<Outcome>): Promise<Outcome[]> {
  for (let tries = 0; ; tries++) {
    await sleep(1000 - (Date.now() % 1000) + 20);
    const second = Math.floor(Date.now() / 1000);
    let last = 0;
    const outcomes = await Promise.all(Array.from({ length: n }, () => attempt().then((o) => {
      last = Math.max(last, Date.now());
      return o;
    })));
    // Outcomes resolve 400 ms after the attempt at the latest (see the attempts above).
    if (Math.floor((last - 400) / 1000) === second && (last - 400) % 1000 < 800) return outcomes;
    if (tries === 3) throw new Error('the machine is too loaded to make 12 connections within one second');
  }
}

describe('FANOUT_MAX_CONNECT_RATE', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  before(async () => { up = scope.use(await Mosquitto.start()); });
  after(() => scope.close());

  test('TCP, 1 shard: connections beyond the rate from one address are closed at once; the next second admits again', async () => {
    const daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 1, FANOUT_MAX_CONNECT_RATE: 5 }));
    const outcomes = await burst(12, () => tcpAttempt(daemon.port));
    assert.equal(outcomes.filter((o) => o === 'open').length, 5, outcomes.join(','));
    await waitFor('a connection admitted in a later second', async () => {
      await sleep(1100);
      const c = await connectClient(daemon.port, { clientId: `rate-later-${process.pid}` }).catch(() => null);
      if (c) await closeClient(c);
      return c !== null;
    }, { timeoutMs: 10_000 });
  });

  test('TCP, 2 shards: each shard admits its share (3 of a rate of 6), so at most 6 of 12 stay, and the refusals are counted', async () => {
    const daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 2, FANOUT_MAX_CONNECT_RATE: 6, FANOUT_HTTP_PORT: 0,
    }));
    const outcomes = await burst(12, () => tcpAttempt(daemon.port));
    const open = outcomes.filter((o) => o === 'open').length;
    // However the kernel spreads the 12 over the 2 shards, one of them gets at least 6 and
    // admits 3 of them; neither admits more than 3.
    assert.ok(open >= 3 && open <= 6, `${open} of 12 stayed: ${outcomes.join(',')}`);
    const port = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
    const refused = await waitFor('the refusals in /metrics', async () => {
      const f = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).get('fanout_connections_refused_rate_total');
      const n = f?.samples.reduce((k, x) => k + x.value, 0) ?? 0;
      return n === 12 - open ? n : null;
    }, { timeoutMs: 5000 });
    assert.equal(refused, 12 - open);
  });

  for (const implementation of ['uWebSockets.js', 'ws'] as const) {
    test(`WebSocket (${implementation}): upgrades beyond the rate from one address are refused at once; TCP and WebSocket share the count`, async () => {
      const daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_SHARDS: 1, FANOUT_MAX_CONNECT_RATE: 5, FANOUT_WS_PORT: 0,
        UWS_USE_FALLBACK: implementation === 'ws' ? '1' : undefined,
      }));
      assert.equal(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.websocket, implementation);
      const outcomes = await burst(12, () => wsAttempt(daemon.wsPort));
      assert.equal(outcomes.filter((o) => o === 'open').length, 5, outcomes.join(','));
      // 3 over TCP and 4 over WebSocket in one second: 5 in all.
      const mixed = await burst(7, (() => {
        let i = 0;
        return () => (i++ < 3 ? tcpAttempt(daemon.port) : wsAttempt(daemon.wsPort));
      })());
      assert.equal(mixed.filter((o) => o === 'open').length, 5, mixed.join(','));
    });
  }
});
