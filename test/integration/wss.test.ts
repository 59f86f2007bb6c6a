// MQTT over secure WebSocket (FANOUT_WSS_PORT): mqtt.js over wss:// through the daemon to a
// broker and back, with uWebSockets.js' SSLApp and with the https + ws fallback; devices that do
// not trust the CA are refused; SIGHUP serves the new certificate to new connections; mutual TLS
// with the certificate's CN as user name; start-up refuses WSS without certificate and key.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import { spawnSync } from 'node:child_process';
import type { MqttClient } from 'mqtt';
import { Collector, closeClient, connect, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { CLI, DaemonProcess, daemonEnv } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { makePki, type Pki } from '../helpers/certs';
import { parsePrometheus } from '../helpers/prometheus';
import { Scope, waitFor } from '../helpers/wait';

let seq = 0;
const unique = (p: string): string => `${p}/${process.pid}-${++seq}`;

/** The CN of the certificate a new TLS connection to `port` is shown. */
function servedCertCn(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(ca) }, () => {
      const cn = s.getPeerCertificate().subject.CN;
      s.destroy();
      resolve(String(Array.isArray(cn) ? cn[0] : cn));
    });
    s.once('error', reject);
  });
}

for (const implementation of ['uWebSockets.js', 'ws'] as const) {
  describe(`MQTT over secure WebSocket (${implementation})`, { timeout: 120_000 }, () => {
    const scope = new Scope();
    let pki: Pki;
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let atBroker: Collector;
    let server: { cert: string; key: string };
    let url = '';
    let trusting: { ca: Buffer };

    before(async () => {
      pki = makePki('wss');
      server = pki.issue('server', 'wss-one', { server: true });
      trusting = { ca: fs.readFileSync(pki.caCert) };
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`,
        FANOUT_WSS_PORT: 0, FANOUT_TLS_CERT: server.cert, FANOUT_TLS_KEY: server.key, FANOUT_HTTP_PORT: 0,
        // The uWS package falls back to a JavaScript shim on this flag, as it does where its
        // binary does not load; the daemon must notice and serve with https and `ws`.
        UWS_USE_FALLBACK: implementation === 'ws' ? '1' : undefined,
      }));
      url = `wss://127.0.0.1:${daemon.wssPort}/mqtt`;
      await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
      atBroker = scope.use(await Collector.start(up.port, 'wssin/#', { qos: 1 }));
    });
    after(async () => {
      await scope.close();
      pki?.remove();
    });

    test(`the start-up log names ${implementation} for the secure WebSocket listener`, () => {
      const ready = daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!;
      assert.equal(ready.secureWebsocket, implementation);
      assert.ok(daemon.wssPort > 0, 'FANOUT_WSS_PORT=0 got a port');
      assert.equal(ready.wsPort, undefined, 'no plain WebSocket listener was asked for');
      const warned = daemon.lines.some((l) => l.level === 40 && /uWebSockets\.js binary does not load/.test(l.msg));
      assert.equal(warned, implementation === 'ws', 'the fallback, and only it, is announced with a warning');
    });

    test('publish over wss:// reaches the broker and a subscription gets the broker\'s messages, MQTT 3.1.1 and 5.0', async (t) => {
      for (const protocolVersion of [4, 5] as const) {
        const dev = await connectClient(url, { ...trusting, clientId: unique('wssdev'), protocolVersion });
        t.after(() => closeClient(dev));
        const topic = unique('wssin/up');
        const big = Buffer.alloc(100_000, 5);
        await publish(dev, topic, big, { qos: 1 });
        const [m] = await atBroker.waitForCount(1, (x) => x.topic === topic, 10_000, 'the wss publish at the broker');
        assert.ok(m.payload.equals(big));
        const got: string[] = [];
        dev.on('message', (_t, p) => got.push(p.toString()));
        const down = unique('wssout/down');
        await dev.subscribeAsync(down, { qos: 1 });
        const upstream = await connectClient(up.port, { clientId: unique('wsspub') });
        t.after(() => closeClient(upstream));
        await publish(upstream, down, `to v${protocolVersion}`, { qos: 1 });
        await waitFor('the downlink message over wss://', () => got.length === 1);
        assert.deepEqual(got, [`to v${protocolVersion}`]);
      }
    });

    test('the connection is counted under transport "wss" in /metrics', async (t) => {
      const dev = await connectClient(url, { ...trusting, clientId: unique('wssmetric') });
      t.after(() => closeClient(dev));
      const httpPort = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
      const byTransport = async (transport: string): Promise<number> => {
        const all = parsePrometheus(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
        return all.get('fanout_connections')!.samples.filter((s) => s.labels.transport === transport).reduce((n, s) => n + s.value, 0);
      };
      assert.equal(await byTransport('wss'), 1);
      assert.equal(await byTransport('tcp'), 0, 'a wss connection is not counted as tcp');
    });

    test('a device that does not trust the CA, or speaks ws:// to the wss port, does not get through', async () => {
      await assert.rejects(connect(url, { clientId: unique('wssuntrusting'), connectTimeout: 5000 }), /self[- ]signed|unable to verify|certificate/i);
      await assert.rejects(connect(`ws://127.0.0.1:${daemon.wssPort}/mqtt`, { clientId: unique('wssplain'), connectTimeout: 5000 }));
    });

    test('SIGHUP: new connections get the new certificate, connected devices stay; SIGTERM then exits cleanly', async (t) => {
      const before = await connectClient(url, { ...trusting, clientId: unique('wssbefore') });
      t.after(() => closeClient(before));
      let closed = false;
      before.on('close', () => { closed = true; });
      assert.equal(await servedCertCn(daemon.wssPort, pki.caCert), 'wss-one');
      const next = pki.issue('server2', 'wss-two', { server: true });
      fs.copyFileSync(next.cert, server.cert);
      fs.copyFileSync(next.key, server.key);
      daemon.proc.kill('SIGHUP');
      await daemon.waitForLog((l) => l.msg === 'TLS certificates reloaded');
      // Every shard has its listener: a few connections land on each of them.
      for (let i = 0; i < 6; i++) assert.equal(await servedCertCn(daemon.wssPort, pki.caCert), 'wss-two', `connection ${i}`);
      const afterReload: MqttClient = await connectClient(url, { ...trusting, clientId: unique('wssafter') });
      t.after(() => closeClient(afterReload));
      for (const [client, name] of [[before, 'before'], [afterReload, 'after']] as const) {
        const topic = unique(`wssin/${name}`);
        await publish(client, topic, name, { qos: 1 });
        await atBroker.waitForCount(1, (x) => x.topic === topic);
      }
      assert.equal(closed, false, 'the device connected before the reload was not dropped');

      fs.writeFileSync(server.key, 'not a key');
      daemon.proc.kill('SIGHUP');
      await daemon.waitForLog((l) => /TLS certificates not reloaded/.test(l.msg));
      assert.equal(await servedCertCn(daemon.wssPort, pki.caCert), 'wss-two', 'broken files leave the certificate in use');

      const info = await daemon.stop();
      assert.equal(info.code, 0, `exit code ${info.code}, signal ${info.signal}; stderr: ${daemon.stderr}`);
    });
  });
}

describe('MQTT over secure WebSocket with client certificates (mutual TLS)', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let pki: Pki;
  let other: Pki;
  let up: Mosquitto;
  let daemon: DaemonProcess;
  let atBroker: Collector;
  let url = '';

  before(async () => {
    pki = makePki('wssca');
    other = makePki('wssother');
    const server = pki.issue('server', 'wss-mtls', { server: true });
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`,
      FANOUT_WSS_PORT: 0, FANOUT_TLS_CERT: server.cert, FANOUT_TLS_KEY: server.key, FANOUT_TLS_CA: pki.caCert,
      FANOUT_TLS_REQUIRE_CLIENT_CERT: 'true', FANOUT_TLS_CN_AS_USERNAME: 'true', FANOUT_TRACE_CLIENTS: 'wssm-*',
    }));
    url = `wss://127.0.0.1:${daemon.wssPort}/mqtt`;
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    atBroker = scope.use(await Collector.start(up.port, 'wssm/#', { qos: 1 }));
  });
  after(async () => {
    await scope.close();
    pki?.remove();
    other?.remove();
  });

  test('served by https and ws, as the start-up log says', () => {
    const ready = daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!;
    assert.equal(ready.secureWebsocket, 'ws');
    assert.ok(daemon.lines.some((l) => /FANOUT_TLS_REQUIRE_CLIENT_CERT: secure WebSocket devices are served by node https/.test(l.msg)));
  });

  test('a device with a certificate from FANOUT_TLS_CA publishes; its CN is its user name', async (t) => {
    const dev = pki.issue('dev1', 'wss-device-1');
    const client = await connectClient(url, {
      clientId: `wssm-${process.pid}`, username: 'claimed', ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(dev.cert), key: fs.readFileSync(dev.key),
    });
    t.after(() => closeClient(client));
    await publish(client, 'wssm/a', 'mutual', { qos: 1 });
    const [m] = await atBroker.waitForCount(1, (x) => x.topic === 'wssm/a', 10_000, 'the mTLS wss publish at the broker');
    assert.equal(m.payload.toString(), 'mutual');
    const traced = daemon.lines.find((l) => l.clientId === `wssm-${process.pid}` && l.trace === 'in');
    assert.equal(traced?.username, 'wss-device-1', 'the certificate CN replaces the CONNECT user name');
    assert.equal(traced?.transport, 'wss');
  });

  test('without a client certificate, or with one from another CA, the handshake is refused', async () => {
    const ca = fs.readFileSync(pki.caCert);
    await assert.rejects(connect(url, { clientId: 'wssm-nocert', ca, connectTimeout: 5000 }));
    const stranger = other.issue('stranger', 'wss-device-2');
    await assert.rejects(connect(url, { clientId: 'wssm-stranger', ca, cert: fs.readFileSync(stranger.cert), key: fs.readFileSync(stranger.key), connectTimeout: 5000 }));
    assert.equal(atBroker.count((m) => m.topic !== 'wssm/a'), 0);
  });
});

describe('WSS start-up checks', () => {
  const run = (env: Record<string, string>): { code: number | null; stderr: string } => {
    const r = spawnSync(process.execPath, [CLI], { env: daemonEnv(env), encoding: 'utf8', timeout: 20_000 });
    return { code: r.status, stderr: r.stderr };
  };

  test('FANOUT_WSS_PORT without FANOUT_TLS_CERT or FANOUT_TLS_KEY: exit 2 with one line naming the variable', () => {
    let r = run({ FANOUT_WSS_PORT: '0' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /FANOUT_TLS_CERT="" is invalid: expected a certificate file: FANOUT_WSS_PORT is set/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    const pki = makePki('wsschk');
    try {
      const a = pki.issue('a', 'a', { server: true });
      r = run({ FANOUT_WSS_PORT: '0', FANOUT_TLS_CERT: a.cert });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /FANOUT_TLS_KEY="" is invalid: expected a private key file: FANOUT_WSS_PORT is set/);
    } finally {
      pki.remove();
    }
  });
});
