// The TLS device listener: MQTT over TLS to the brokers, mutual TLS with the certificate's CN as
// user name, certificates reloaded on SIGHUP without dropping connections, and the start-up
// checks of the TLS variables. Certificates are made by the test with openssl.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import { spawnSync } from 'node:child_process';
import { Collector, closeClient, connect, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { CLI, DaemonProcess, daemonEnv } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { makePki, type Pki } from '../helpers/certs';
import { Scope, waitFor } from '../helpers/wait';
import { freePort } from '../helpers/ports';

/** The certificate a new TLS connection to the listener is shown. */
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

describe('TLS listener', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let pki: Pki;
  let other: Pki;
  let up: Mosquitto;
  let daemon: DaemonProcess;
  let atBroker: Collector;
  let server: { cert: string; key: string };

  before(async () => {
    pki = makePki('ca');
    other = makePki('other');
    server = pki.issue('server', 'proxy-one', { server: true });
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`,
      FANOUT_TLS_PORT: 0, FANOUT_TLS_CERT: server.cert, FANOUT_TLS_KEY: server.key, FANOUT_TLS_CA: pki.caCert,
      FANOUT_TLS_REQUIRE_CLIENT_CERT: 'true', FANOUT_TLS_CN_AS_USERNAME: 'true', FANOUT_TRACE_CLIENTS: 'tls-*',
    }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    atBroker = scope.use(await Collector.start(up.port, 'tls/#', { qos: 1 }));
  });
  after(async () => {
    await scope.close();
    pki?.remove();
    other?.remove();
  });

  const tlsPort = (): number => Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.tlsPort);

  test('a device with a certificate from FANOUT_TLS_CA publishes over TLS; its CN is its user name', async (t) => {
    const dev = pki.issue('dev1', 'device-0001');
    const client = await connectClient(`mqtts://127.0.0.1:${tlsPort()}`, {
      clientId: 'tls-dev1', username: 'claimed-name', ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(dev.cert), key: fs.readFileSync(dev.key),
    });
    t.after(() => closeClient(client));
    await publish(client, 'tls/a', 'over tls', { qos: 1 });
    const [m] = await atBroker.waitForCount(1, (x) => x.topic === 'tls/a', 10_000, 'the TLS publish at the broker');
    assert.equal(m.payload.toString(), 'over tls');
    const traced = daemon.lines.find((l) => l.clientId === 'tls-dev1' && l.trace === 'in');
    assert.equal(traced?.username, 'device-0001', 'the certificate CN replaces the CONNECT user name');
    assert.equal(traced?.transport, 'tls');
  });

  test('without a client certificate, or with one from another CA, the handshake is refused', async () => {
    await assert.rejects(connect(`mqtts://127.0.0.1:${tlsPort()}`, { clientId: 'tls-nocert', ca: fs.readFileSync(pki.caCert), connectTimeout: 5000 }));
    const stranger = other.issue('stranger', 'device-0002');
    await assert.rejects(connect(`mqtts://127.0.0.1:${tlsPort()}`, {
      clientId: 'tls-stranger', ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(stranger.cert), key: fs.readFileSync(stranger.key), connectTimeout: 5000,
    }));
  });

  test('SIGHUP reloads the certificate: new connections get the new one, connected devices stay', async (t) => {
    const dev = pki.issue('dev2', 'device-0003');
    const opts = { clientId: 'tls-dev2', ca: fs.readFileSync(pki.caCert), cert: fs.readFileSync(dev.cert), key: fs.readFileSync(dev.key), reconnectPeriod: 0 };
    const client = await connectClient(`mqtts://127.0.0.1:${tlsPort()}`, opts);
    t.after(() => closeClient(client));
    let closed = false;
    client.on('close', () => { closed = true; });
    assert.equal(await servedCertCn(tlsPort(), pki.caCert), 'proxy-one');
    const next = pki.issue('server2', 'proxy-two', { server: true });
    fs.copyFileSync(next.cert, server.cert);
    fs.copyFileSync(next.key, server.key);
    daemon.proc.kill('SIGHUP');
    await daemon.waitForLog((l) => l.msg === 'TLS certificates reloaded');
    await waitFor('the new certificate served', async () => (await servedCertCn(tlsPort(), pki.caCert)) === 'proxy-two');
    await publish(client, 'tls/after-reload', 'still here', { qos: 1 });
    await atBroker.waitForCount(1, (x) => x.topic === 'tls/after-reload');
    assert.equal(closed, false, 'the connected device was not dropped');
  });

  test('a SIGHUP with broken files keeps the old certificate and says so', async () => {
    fs.writeFileSync(server.key, 'not a key');
    daemon.proc.kill('SIGHUP');
    await daemon.waitForLog((l) => /TLS certificates not reloaded/.test(l.msg));
    assert.equal(await servedCertCn(tlsPort(), pki.caCert), 'proxy-two');
  });
});

describe('TLS start-up checks', () => {
  const run = (env: Record<string, string>): { code: number | null; stderr: string } => {
    const r = spawnSync(process.execPath, [CLI], { env: daemonEnv(env), encoding: 'utf8', timeout: 20_000 });
    return { code: r.status, stderr: r.stderr };
  };

  test('FANOUT_TLS_PORT without a certificate, an unreadable file, a key that does not match: exit 2 naming the variable', () => {
    const pki = makePki('chk');
    try {
      const a = pki.issue('a', 'a', { server: true });
      const b = pki.issue('b', 'b', { server: true });
      let r = run({ FANOUT_TLS_PORT: '0' });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /FANOUT_TLS_CERT="" is invalid: expected a certificate file: FANOUT_TLS_PORT is set/);
      r = run({ FANOUT_TLS_PORT: '0', FANOUT_TLS_CERT: '/nonexistent/cert.pem', FANOUT_TLS_KEY: a.key });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /FANOUT_TLS_CERT="\/nonexistent\/cert.pem" is invalid: expected a readable file \(ENOENT\)/);
      r = run({ FANOUT_TLS_PORT: '0', FANOUT_TLS_CERT: a.cert, FANOUT_TLS_KEY: b.key });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /FANOUT_TLS_CERT=".*" is invalid: the certificate, key \(FANOUT_TLS_KEY\) and CA files do not make a TLS context/);
      r = run({ FANOUT_TLS_PORT: '0', FANOUT_TLS_CERT: a.cert, FANOUT_TLS_KEY: a.key, FANOUT_TLS_REQUIRE_CLIENT_CERT: 'true' });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /FANOUT_TLS_CA="" is invalid: expected a CA file: FANOUT_TLS_REQUIRE_CLIENT_CERT is true/);
    } finally {
      pki.remove();
    }
  });
});

describe('TLS towards a broker (mqtts:// with ca, cert, key, insecure)', { timeout: 90_000 }, () => {
  const scope = new Scope();
  let pki: Pki;
  let other: Pki;
  let up: Mosquitto;
  let tlsPort = 0;

  before(async () => {
    pki = makePki('broker-ca');
    other = makePki('broker-other');
    const server = pki.issue('broker', 'broker', { server: true });
    tlsPort = await freePort();
    // A TLS listener that wants client certificates, next to the plain one the test reads from.
    up = scope.use(await Mosquitto.start({ extraConfig: [
      `listener ${tlsPort} 127.0.0.1`, `cafile ${pki.caCert}`, `certfile ${server.cert}`, `keyfile ${server.key}`, 'require_certificate true',
    ] }));
  });
  after(async () => {
    await scope.close();
    pki?.remove();
    other?.remove();
  });

  const url = (params: string): string => `up=mqtts://127.0.0.1:${tlsPort}?pool=1&${params}`;

  test('with the broker CA and a client certificate, publishes arrive; the connection verifies the broker', async (t) => {
    const client = pki.issue('proxy', 'proxy');
    const d = await DaemonProcess.start({ FANOUT_BROKERS: url(`ca=${pki.caCert}&cert=${client.cert}&key=${client.key}`) });
    t.after(() => d.close());
    await waitPoolOnline(up.port, d.proxyId, 'up', 1);
    const at = await Collector.start(up.port, 'btls/#', { qos: 1 });
    t.after(() => at.close());
    const dev = await connectClient(d.port, { clientId: `btls-${process.pid}` });
    t.after(() => closeClient(dev));
    await publish(dev, 'btls/x', 'via mqtts', { qos: 1 });
    await at.waitForCount(1, (m) => m.topic === 'btls/x');
  });

  test('a broker certificate from another CA is refused (no connection), unless insecure=true, which warns', async (t) => {
    const client = pki.issue('proxy2', 'proxy2');
    const strict = await DaemonProcess.start({ FANOUT_BROKERS: url(`ca=${other.caCert}&cert=${client.cert}&key=${client.key}`), FANOUT_LOG_LEVEL: 'debug' });
    t.after(() => strict.close());
    await strict.waitForLog((l) => l.msg === 'broker connect failed' && /certificate/i.test(String(l.err)), 15_000);
    assert.equal(strict.lines.some((l) => l.msg === 'broker connected'), false);
    const lax = await DaemonProcess.start({ FANOUT_BROKERS: url(`ca=${other.caCert}&cert=${client.cert}&key=${client.key}&insecure=true`) });
    t.after(() => lax.close());
    await lax.waitForLog((l) => l.msg === 'broker connected', 15_000);
    assert.ok(lax.lines.some((l) => l.level === 40 && /not verified/.test(l.msg)), 'insecure=true is logged as a warning');
  });
});
