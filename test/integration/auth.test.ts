// Authentication with a mosquitto password file (made by the real mosquitto_passwd) and
// authorisation with a mosquitto acl_file: CONNACK codes, denied publishes never forwarded,
// denied subscriptions, %c and %u patterns, SIGHUP reload, and no password in any log line;
// denials counted in /metrics and logged as a rate-limited warning.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import mqtt, { type Packet } from 'mqtt';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { Scope, sleep, waitFor } from '../helpers/wait';

const PASSWD = fs.existsSync('/usr/bin/mosquitto_passwd') ? '/usr/bin/mosquitto_passwd' : 'mosquitto_passwd';

/** The CONNACK code a CONNECT gets (0 when accepted). */
async function connackCode(port: number, opts: mqtt.IClientOptions): Promise<number> {
  const c = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  try {
    return await new Promise<number>((resolve) => {
      c.once('connect', () => resolve(0));
      c.once('error', (e) => resolve((e as { code?: number }).code ?? -1));
    });
  } finally {
    c.end(true);
  }
}

describe('password file and ACL file', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let dir: string;
  let passwd: string;
  let up: Mosquitto;
  let daemon: DaemonProcess;
  let at: Collector;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-auth-'));
    passwd = path.join(dir, 'passwd');
    execFileSync(PASSWD, ['-c', '-b', passwd, 'alice', 'alice-secret-1']);
    execFileSync(PASSWD, ['-b', passwd, 'bob', 'bob-secret-2']);
    const acl = path.join(dir, 'acl');
    fs.writeFileSync(acl, [
      'topic read public/#',
      'user alice',
      'topic readwrite alice/#',
      'user bob',
      'topic read alice/#',
      'pattern readwrite devices/%c/#',
      '',
    ].join('\n'));
    up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_PASSWORD_FILE: passwd, FANOUT_ACL_FILE: acl,
    }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    at = scope.use(await Collector.start(up.port, '#', { qos: 1 }));
  });
  after(async () => {
    await scope.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('start-up states that anonymous devices are refused (the default with a password file)', () => {
    assert.ok(daemon.lines.some((l) => l.allowAnonymous === false && /must give a user name/.test(l.msg)));
  });

  test('CONNACK: right password 0; wrong password or unknown user 0x86 (MQTT 5) / 0x05 (3.1.1); no user name 0x87 / 0x05', async () => {
    assert.equal(await connackCode(daemon.port, { clientId: 'a1', username: 'alice', password: 'alice-secret-1' }), 0);
    for (const [protocolVersion, bad, anon] of [[5, 0x86, 0x87], [4, 0x05, 0x05]] as const) {
      assert.equal(await connackCode(daemon.port, { clientId: 'a2', protocolVersion, username: 'alice', password: 'wrong' }), bad);
      assert.equal(await connackCode(daemon.port, { clientId: 'a3', protocolVersion, username: 'mallory', password: 'alice-secret-1' }), bad);
      assert.equal(await connackCode(daemon.port, { clientId: 'a4', protocolVersion }), anon);
    }
  });

  test('a denied PUBLISH is never forwarded: MQTT 5 gets PUBACK 0x87, MQTT 3.1.1 is acknowledged as mosquitto does', async (t) => {
    const v5 = await connectClient(daemon.port, { clientId: 'alice-5', username: 'alice', password: 'alice-secret-1', protocolVersion: 5 });
    t.after(() => closeClient(v5));
    await publish(v5, 'alice/ok', 'allowed', { qos: 1 });
    await assert.rejects(v5.publishAsync('bob/no', 'denied', { qos: 1 }), (err: { code?: number }) => err.code === 0x87);
    const v4 = await connectClient(daemon.port, { clientId: 'alice-4', username: 'alice', password: 'alice-secret-1' });
    t.after(() => closeClient(v4));
    await publish(v4, 'bob/no4', 'denied too', { qos: 1 });
    await at.waitForCount(1, (m) => m.topic === 'alice/ok');
    await sleep(300);
    assert.equal(at.count((m) => m.topic.startsWith('bob/')), 0, 'denied messages reached the broker');
  });

  test('%c patterns: a client may use devices/<its client id>/#, not another one', async (t) => {
    const c = await connectClient(daemon.port, { clientId: 'dev-17', username: 'bob', password: 'bob-secret-2', protocolVersion: 5 });
    t.after(() => closeClient(c));
    await publish(c, 'devices/dev-17/t', 'mine', { qos: 1 });
    await assert.rejects(c.publishAsync('devices/dev-18/t', 'not mine', { qos: 1 }), (err: { code?: number }) => err.code === 0x87);
    await at.waitForCount(1, (m) => m.topic === 'devices/dev-17/t');
  });

  test('SUBSCRIBE: allowed filters are granted, denied ones get 0x87 (MQTT 5) / 0x80 (3.1.1); messages follow read access', async (t) => {
    for (const [protocolVersion, denied] of [[5, 0x87], [4, 0x80]] as const) {
      const c = await connectClient(daemon.port, { clientId: `bob-s${protocolVersion}`, username: 'bob', password: 'bob-secret-2', protocolVersion });
      t.after(() => closeClient(c));
      const subacks: number[][] = [];
      c.on('packetreceive', (p: Packet) => { if (p.cmd === 'suback') subacks.push(p.granted as number[]); });
      c.subscribe({ 'alice/#': { qos: 1 }, 'secret/#': { qos: 1 } }, () => undefined);
      await waitFor('the SUBACK', () => subacks.length === 1);
      assert.deepEqual(subacks[0], [1, denied]);
    }
    const reader = await connectClient(daemon.port, { clientId: 'bob-r', username: 'bob', password: 'bob-secret-2' });
    t.after(() => closeClient(reader));
    const got: string[] = [];
    reader.on('message', (topic) => got.push(topic));
    await reader.subscribeAsync('alice/#', { qos: 1 });
    const upstream = await connectClient(up.port, { clientId: `auth-pub-${process.pid}` });
    t.after(() => closeClient(upstream));
    await publish(upstream, 'alice/news', 'x', { qos: 1 });
    await waitFor('the message bob may read', () => got.includes('alice/news'));
  });

  test('a will on a topic the device may not publish to gets the CONNECT refused (0x87 / 0x05)', async () => {
    for (const [protocolVersion, code] of [[5, 0x87], [4, 0x05]] as const) {
      const will = { topic: 'bob/will', payload: Buffer.from('gone'), qos: 0 as const, retain: false };
      assert.equal(await connackCode(daemon.port, { clientId: `w${protocolVersion}`, protocolVersion, username: 'alice', password: 'alice-secret-1', will }), code);
      assert.equal(await connackCode(daemon.port, { clientId: `w${protocolVersion}ok`, protocolVersion, username: 'alice', password: 'alice-secret-1',
        will: { ...will, topic: 'alice/will' } }), 0);
    }
  });

  test('SIGHUP re-reads the password file: a user added afterwards can connect', async () => {
    assert.equal(await connackCode(daemon.port, { clientId: 'c1', username: 'carol', password: 'carol-secret-3', protocolVersion: 5 }), 0x86);
    execFileSync(PASSWD, ['-b', passwd, 'carol', 'carol-secret-3']);
    daemon.proc.kill('SIGHUP');
    await daemon.waitForLog((l) => l.msg === 'password file reloaded');
    assert.equal(await connackCode(daemon.port, { clientId: 'c2', username: 'carol', password: 'carol-secret-3', protocolVersion: 5 }), 0);
  });

  test('no password appears in any log line', () => {
    const all = daemon.stdout + daemon.stderr;
    for (const secret of ['alice-secret-1', 'bob-secret-2', 'carol-secret-3']) assert.ok(!all.includes(secret), `${secret} was logged`);
  });
});

describe('ACL denials: counted, logged rate-limited; pattern lines with %u', { timeout: 90_000 }, () => {
  const scope = new Scope();
  let dir: string;
  let up: Mosquitto;
  let daemon: DaemonProcess;
  let at: Collector;
  let metricsUrl = '';

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-acl-'));
    const acl = path.join(dir, 'acl');
    fs.writeFileSync(acl, ['pattern readwrite users/%u/#', ''].join('\n'));
    up = scope.use(await Mosquitto.start());
    // One shard: its one rate-limited log sees every denial of the test.
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_ACL_FILE: acl, FANOUT_SHARDS: 1, FANOUT_HTTP_PORT: 0 }));
    metricsUrl = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}/metrics`;
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    at = scope.use(await Collector.start(up.port, 'users/#', { qos: 1 }));
  });
  after(async () => {
    await scope.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const denied = async (): Promise<number> => {
    const f = parsePrometheus(await (await fetch(metricsUrl)).text()).get('fanout_acl_denied_total');
    assert.ok(f, 'fanout_acl_denied_total is exposed');
    return f.samples.reduce((n, s) => n + s.value, 0);
  };

  test('10 denied PUBLISHes add 10 to fanout_acl_denied_total and make one warning at once, the other 9 in one line after the interval', async (t) => {
    // First in this daemon's life: no earlier denial shares the rate-limited line.
    const before = await denied();
    const from = daemon.lines.length;
    const c = await connectClient(daemon.port, { clientId: `acl-flood-${process.pid}`, username: 'erin', protocolVersion: 5 });
    t.after(() => closeClient(c));
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => c.publishAsync(`users/frank/${i}`, 'x', { qos: 1 })));
    assert.ok(results.every((r) => r.status === 'rejected' && (r.reason as { code?: number }).code === 0x87));
    await waitFor('fanout_acl_denied_total + 10', async () => (await denied()) - before === 10, { timeoutMs: 5000, intervalMs: 200 });
    const lines = (): { occurrences: number }[] => daemon.lines.slice(from)
      .filter((l) => l.level === 40 && l.msg === 'PUBLISH denied by FANOUT_ACL_FILE') as unknown as { occurrences: number }[];
    await sleep(300);
    assert.deepEqual(lines().map((l) => l.occurrences), [1], 'one warning at once');
    await waitFor('the held-back denials in one line', () => lines().length === 2, { timeoutMs: 8000 });
    assert.deepEqual(lines().map((l) => l.occurrences), [1, 9]);
    const first = daemon.lines.slice(from).find((l) => l.msg === 'PUBLISH denied by FANOUT_ACL_FILE')!;
    assert.equal(first.clientId, `acl-flood-${process.pid}`);
    assert.equal(first.username, 'erin');
  });

  test('pattern readwrite users/%u/#: a user publishes and subscribes under its own name only', async (t) => {
    const carol = await connectClient(daemon.port, { clientId: `acl-carol-${process.pid}`, username: 'carol', protocolVersion: 5 });
    t.after(() => closeClient(carol));
    await publish(carol, 'users/carol/t', 'mine', { qos: 1 });
    await assert.rejects(carol.publishAsync('users/dave/t', 'not mine', { qos: 1 }), (err: { code?: number }) => err.code === 0x87);
    const subacks: number[][] = [];
    carol.on('packetreceive', (p: Packet) => { if (p.cmd === 'suback') subacks.push(p.granted as number[]); });
    const got: string[] = [];
    carol.on('message', (topic) => got.push(topic));
    carol.subscribe({ 'users/carol/#': { qos: 1 }, 'users/dave/#': { qos: 1 } }, () => undefined);
    await waitFor('the SUBACK', () => subacks.length === 1);
    assert.deepEqual(subacks[0], [1, 0x87]);
    // Anonymous devices have no %u: the pattern gives them nothing.
    const anon = await connectClient(daemon.port, { clientId: `acl-anon-${process.pid}`, protocolVersion: 5 });
    t.after(() => closeClient(anon));
    await assert.rejects(anon.publishAsync('users/carol/x', 'anon', { qos: 1 }), (err: { code?: number }) => err.code === 0x87);
    const upstream = await connectClient(up.port, { clientId: `acl-up-${process.pid}` });
    t.after(() => closeClient(upstream));
    await publish(upstream, 'users/carol/news', 'for carol', { qos: 1 });
    await publish(upstream, 'users/dave/news', 'for dave', { qos: 1 });
    await waitFor('the message carol may read', () => got.includes('users/carol/news'));
    await at.waitForCount(1, (m) => m.topic === 'users/carol/t');
    await sleep(300);
    assert.deepEqual(got, ['users/carol/news']);
    assert.equal(at.count((m) => m.topic === 'users/dave/t' || m.topic === 'users/carol/x'), 0, 'denied publishes reached the broker');
  });
});
