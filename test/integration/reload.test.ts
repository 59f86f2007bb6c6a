// Hot reload of the broker set (FANOUT_BROKERS_FILE, SIGHUP and POST /admin/reload): during a
// QoS 1 stream a broker is added and another removed with nothing lost and no device
// disconnected; a changed broker reconnects while an unchanged one keeps its connection; an
// invalid file is refused and the old set stays; the admin endpoint wants its Bearer token.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess, type LogLine } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { HOST } from '../helpers/ports';
import { Stream, Tally } from '../helpers/stream';
import { Scope, sleep, waitFor } from '../helpers/wait';

const TOKEN = 'reload-test-token-0123456789';

function tempFile(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-it-reload-'));
  return path.join(dir, 'brokers.txt');
}

/** Proxy connections a broker has seen connect (mosquitto's log), for one broker name. */
function proxyConnects(m: Mosquitto, proxyId: string, broker: string): number {
  return m.connectedClientIds().filter((id) => id.startsWith(`${proxyId}-${broker}-`)).length;
}

function httpPortOf(d: DaemonProcess): number {
  const ready = d.lines.find((l) => l.msg === 'mqtt-fanout ready');
  return Number(ready?.httpPort);
}

async function adminReload(d: DaemonProcess, authorization?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://${HOST}:${httpPortOf(d)}/admin/reload`, {
    method: 'POST', headers: authorization === undefined ? {} : { authorization },
  });
  return { status: res.status, body: await res.json() as Record<string, unknown> };
}

/** The next log line matching `pred` after the `from` first lines. */
function nextLog(d: DaemonProcess, from: number, pred: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
  return waitFor('a daemon log line', () => d.lines.slice(from).find(pred), { timeoutMs });
}

for (const spool of [false, true]) {
  describe(`hot reload: adding, removing and changing brokers during a QoS 1 stream${spool ? ' (FANOUT_SPOOL_DIR)' : ''}`, { timeout: 120_000 }, () => {
    const scope = new Scope();
    let a: Mosquitto;
    let b: Mosquitto;
    let c: Mosquitto;
    let d: Mosquitto;
    let file: string;
    let daemon: DaemonProcess;

    before(async () => {
      [a, b, c, d] = await Promise.all([Mosquitto.start(), Mosquitto.start(), Mosquitto.start(), Mosquitto.start()]);
      for (const m of [a, b, c, d]) scope.use(m);
      file = tempFile();
      fs.writeFileSync(file, `# upstreams\na=${a.url({ pool: 1 })}\nb=${b.url({ pool: 1 })}\nd=${d.url({ pool: 1 })}\n`);
      const spoolDir = spool ? fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-it-reload-spool-')) : undefined;
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS_FILE: file, FANOUT_HTTP_PORT: 0, FANOUT_ADMIN_TOKEN: TOKEN, FANOUT_SPOOL_DIR: spoolDir,
      }));
      for (const [m, name] of [[a, 'a'], [b, 'b'], [d, 'd']] as const) await waitPoolOnline(m.port, daemon.proxyId, name, 1);
    });
    after(() => scope.close());

    test('kept and changed brokers get everything, the added one all after the reload, the removed one all acknowledged before; no device disconnects', async () => {
      const run = `reload-${process.pid}-${Date.now()}`;
      const [atA, atB, atC, atD] = await Promise.all([a, b, c, d].map((m) => Tally.start(m.port, run)));
      for (const tally of [atA, atB, atC, atD]) scope.use(tally);
      const aConnects = proxyConnects(a, daemon.proxyId, 'a');
      const dConnects = proxyConnects(d, daemon.proxyId, 'd');
      const stream = await Stream.connect(daemon.port, run, { devices: 8, messages: 400, qos: 1, window: 5, gapMs: 4 });
      scope.use(stream);
      const publishing = stream.publishAll();
      await waitFor('part of the stream acknowledged', () => stream.acked.size >= 400, { timeoutMs: 20_000 });

      const from = daemon.lines.length;
      fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nc=${c.url({ pool: 1 })}\nd=${d.url({ pool: 2 })}\n`);
      const ackedBefore = new Set(stream.acked);
      daemon.proc.kill('SIGHUP');
      const effect = await nextLog(daemon, from, (l) => l.msg.startsWith('broker set reloaded'));
      const sentBefore = new Set(stream.sent);
      assert.deepEqual([effect.added, effect.removed, effect.changed, effect.unchanged], [['c'], ['b'], ['d'], ['a']]);
      await nextLog(daemon, from, (l) => l.msg === 'configuration reloaded');
      const removedLine = daemon.lines.slice(from).find((l) => l.msg.startsWith('broker removed'));
      assert.ok(removedLine !== undefined && removedLine.broker === 'b', 'the removed broker says it drained');
      assert.deepEqual([removedLine.leftInRings, removedLine.leftInflight], [0, 0], 'the removed broker took everything');

      await publishing;
      assert.deepEqual(stream.errors, []);
      assert.equal(stream.acked.size, 8 * 400, 'every publish acknowledged');
      const all = [...stream.acked];
      const later = all.filter((k) => !sentBefore.has(k));
      assert.ok(later.length > 100, `a good part of the stream is published after the reload (${later.length})`);
      await atA.waitAll(all, 'a (kept)');
      await atD.waitAll(all, 'd (changed)');
      await atB.waitAll(ackedBefore, 'b (removed): what was acknowledged before the reload');
      await atC.waitAll(later, 'c (added): what was published after the reload took effect');
      // b gets nothing sent after the reload took effect: its slot was retired first.
      assert.deepEqual(later.filter((k) => atB.seen.has(k)), [], 'the removed broker got publishes sent after the reload');
      assert.deepEqual(stream.closes, stream.closes.map(() => 0), 'no device was disconnected');
      assert.equal(proxyConnects(a, daemon.proxyId, 'a'), aConnects, 'the unchanged broker kept its connection');
      assert.ok(proxyConnects(d, daemon.proxyId, 'd') >= dConnects + 2, 'the changed broker reconnected with pool=2');
      await waitFor('the removed broker disconnected', () => b.log.includes(`Client ${daemon.proxyId}-b-0 disconnected`), { timeoutMs: 10_000 });
      const ready = await fetch(`http://${HOST}:${httpPortOf(daemon)}/readyz`).then((r) => r.json()) as { brokers: { name: string }[] };
      assert.deepEqual(ready.brokers.map((x) => x.name), ['a', 'd', 'c'], 'the brokers in service, in slot order');
      const metrics = await fetch(`http://${HOST}:${httpPortOf(daemon)}/metrics`).then((r) => r.text());
      assert.match(metrics, /fanout_broker_messages_out_total\{broker="c",qos="1"\} [1-9]/);
      assert.doesNotMatch(metrics, /broker="b"/, 'the removed broker left /metrics');
    });
  });
}

describe('hot reload: changed, unchanged and invalid brokers, POST /admin/reload', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let a: Mosquitto;
  let b: Mosquitto;
  let file: string;
  let daemon: DaemonProcess;

  before(async () => {
    a = scope.use(await Mosquitto.start());
    b = scope.use(await Mosquitto.start());
    file = tempFile();
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })},b=${b.url({ pool: 1 })}\n`);
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS_FILE: file, FANOUT_HTTP_PORT: 0, FANOUT_ADMIN_TOKEN: TOKEN }));
    await waitPoolOnline(a.port, daemon.proxyId, 'a', 1);
    await waitPoolOnline(b.port, daemon.proxyId, 'b', 1);
  });
  after(() => scope.close());

  /** A QoS 1 publish through the proxy that both brokers get. */
  async function flows(client: Awaited<ReturnType<typeof connectClient>>, tag: string): Promise<void> {
    const topic = `reload/${process.pid}/${tag}`;
    const [ca, cb] = await Promise.all([Collector.start(a.port, topic), Collector.start(b.port, topic)]);
    try {
      await publish(client, topic, tag, { qos: 1 });
      await Promise.all([ca.waitForCount(1, () => true, 10_000, `${tag} at a`), cb.waitForCount(1, () => true, 10_000, `${tag} at b`)]);
    } finally {
      await Promise.all([ca.close(), cb.close()]);
    }
  }

  test('a changed broker reconnects with its new settings; the unchanged one keeps its connection; devices stay', async (t) => {
    const client = await connectClient(daemon.port, { clientId: `reload-dev-${process.pid}` });
    t.after(() => closeClient(client));
    let closes = 0;
    client.on('close', () => { closes++; });
    await flows(client, 'before-change');
    const aConnects = proxyConnects(a, daemon.proxyId, 'a');
    const bConnects = proxyConnects(b, daemon.proxyId, 'b');
    const from = daemon.lines.length;
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=${b.url({ pool: 2 })}\n`);
    daemon.proc.kill('SIGHUP');
    const done = await nextLog(daemon, from, (l) => l.msg === 'configuration reloaded');
    assert.deepEqual([done.added, done.removed, done.changed, done.unchanged], [[], [], ['b'], ['a']]);
    await waitFor('b reconnected with pool=2', () => proxyConnects(b, daemon.proxyId, 'b') >= bConnects + 2, { timeoutMs: 15_000 });
    await flows(client, 'after-change');
    assert.equal(proxyConnects(a, daemon.proxyId, 'a'), aConnects, 'the unchanged broker was reconnected');
    assert.equal(closes, 0, 'the device was disconnected');
  });

  test('an invalid file is refused with one line naming the variable; the old brokers stay', async (t) => {
    const client = await connectClient(daemon.port, { clientId: `reload-inv-${process.pid}` });
    t.after(() => closeClient(client));
    const from = daemon.lines.length;
    const before = fs.readFileSync(file, 'utf8');
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=ftp://${HOST}:${b.port}\n`);
    t.after(() => fs.writeFileSync(file, before));
    daemon.proc.kill('SIGHUP');
    const refused = await nextLog(daemon, from, (l) => l.msg.startsWith('configuration not reloaded'));
    assert.equal(refused.variable, 'FANOUT_BROKERS_FILE');
    assert.equal(refused.value, file);
    assert.match(refused.msg, /FANOUT_BROKERS_FILE=".*" is invalid: entry "b=ftp:.*": .*expected .*; the configuration in force stays$/);
    assert.equal(refused.level, 50);
    await sleep(200);
    assert.equal(daemon.lines.slice(from).filter((l) => l.level >= 50).length, 1, 'one error line');
    await flows(client, 'after-invalid');
  });

  test('a file that moves the subscriptions to another first broker is refused (400 from POST /admin/reload); the old brokers stay', async (t) => {
    const client = await connectClient(daemon.port, { clientId: `reload-first-${process.pid}` });
    t.after(() => closeClient(client));
    const from = daemon.lines.length;
    const before = fs.readFileSync(file, 'utf8');
    fs.writeFileSync(file, `b=${b.url({ pool: 2 })}\na=${a.url({ pool: 1 })}\n`);
    t.after(() => fs.writeFileSync(file, before));
    const r = await adminReload(daemon, `Bearer ${TOKEN}`);
    assert.equal(r.status, 400);
    assert.match(String(r.body.error), /the first broker serves the device subscriptions; expected "a" to stay first/);
    const refused = await nextLog(daemon, from, (l) => l.msg.startsWith('configuration not reloaded'));
    assert.equal(refused.variable, 'FANOUT_BROKERS_FILE');
    await flows(client, 'after-refused');
  });

  test('POST /admin/reload: 401 without or with a wrong token, 200 and the summary with it', async () => {
    const none = await adminReload(daemon);
    assert.equal(none.status, 401);
    assert.match(String(none.body.error), /Bearer/);
    const wrong = await adminReload(daemon, 'Bearer not-the-token-at-all');
    assert.equal(wrong.status, 401);
    const basic = await adminReload(daemon, `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}`);
    assert.equal(basic.status, 401);
    const same = await adminReload(daemon, `Bearer ${TOKEN}`);
    assert.equal(same.status, 200);
    assert.deepEqual(same.body, { ok: true, added: [], removed: [], changed: [], unchanged: ['a', 'b'] });
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=${b.url({ pool: 1 })}\n`);
    const changed = await adminReload(daemon, `Bearer ${TOKEN}`);
    assert.equal(changed.status, 200);
    assert.deepEqual(changed.body, { ok: true, added: [], removed: [], changed: ['b'], unchanged: ['a'] });
  });
});

describe('hot reload: POST /admin/reload without FANOUT_ADMIN_TOKEN', { timeout: 60_000 }, () => {
  test('is refused with 403', async () => {
    const scope = new Scope();
    try {
      const a = scope.use(await Mosquitto.start());
      const daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `a=${a.url({ pool: 1 })}`, FANOUT_HTTP_PORT: 0 }));
      const r = await adminReload(daemon, `Bearer ${TOKEN}`);
      assert.equal(r.status, 403);
      assert.match(String(r.body.error), /FANOUT_ADMIN_TOKEN is not set/);
    } finally {
      await scope.close();
    }
  });
});

describe('hot reload with FANOUT_ROUTES: a broker the routes name joins later', { timeout: 90_000 }, () => {
  test('its routes apply once a reload adds it: device subscriptions are held there, publishes go there', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const a = scope.use(await Mosquitto.start());
    const c = scope.use(await Mosquitto.start());
    const file = tempFile();
    fs.writeFileSync(file, `a=${a.url({ pool: 2 })}\n`);
    const daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS_FILE: file, FANOUT_ROUTES: 'a # both; c # both', FANOUT_HTTP_PORT: 0, FANOUT_ADMIN_TOKEN: TOKEN,
    }));
    const warning = daemon.lines.find((l) => l.msg.startsWith('FANOUT_ROUTES names brokers'));
    assert.deepEqual(warning?.brokers, ['c']);
    const topic = `joined/${process.pid}`;
    const device = await connectClient(daemon.port, { clientId: `reload-sub-${process.pid}` });
    scope.defer(() => closeClient(device));
    let closes = 0;
    device.on('close', () => { closes++; });
    const got: string[] = [];
    device.on('message', (_t, payload) => got.push(payload.toString()));
    await device.subscribeAsync(`${topic}/#`, { qos: 1 });
    const atC = scope.use(await Collector.start(c.port, `${topic}/#`, { qos: 1 }));

    fs.writeFileSync(file, `a=${a.url({ pool: 2 })}\nc=${c.url({ pool: 2 })}\n`);
    const r = await adminReload(daemon, `Bearer ${TOKEN}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.added, ['c']);
    // The device's subscription is held at c now: what c's own clients publish reaches it.
    const direct = await connectClient(c.port, { clientId: `reload-direct-${process.pid}` });
    scope.defer(() => closeClient(direct));
    await waitFor('the device subscription held at c', async () => {
      await direct.publishAsync(`${topic}/from-c`, 'from c', { qos: 1 });
      await sleep(200);
      return got.includes('from c');
    }, { timeoutMs: 10_000 });
    await publish(device, `${topic}/up`, 'from the device', { qos: 1 });
    await atC.waitForCount(1, (m) => m.payload.toString() === 'from the device', 10_000, 'the device publish at c');
    assert.equal(closes, 0);
  });
});

describe('hot reload, then thread failures: the restart paths know the new broker slots', { timeout: 90_000 }, () => {
  test('a shard and the added broker\'s writer fail after a reload; publishes reach the kept and added brokers, not the removed one', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const a = scope.use(await Mosquitto.start());
    const b = scope.use(await Mosquitto.start());
    const c = scope.use(await Mosquitto.start());
    const file = tempFile();
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=${b.url({ pool: 1 })}\n`);
    const daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS_FILE: file, FANOUT_HTTP_PORT: 0, FANOUT_ADMIN_TOKEN: TOKEN, FANOUT_TEST_HOOKS: 'true',
    }));
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nc=${c.url({ pool: 1 })}\n`);
    const r = await adminReload(daemon, `Bearer ${TOKEN}`);
    assert.equal(r.status, 200);
    const crash = async (thread: string): Promise<void> => {
      const res = await fetch(`http://${HOST}:${httpPortOf(daemon)}/test/crash?thread=${thread}&kind=throw`, { method: 'POST' });
      assert.equal(res.status, 202);
    };
    let from = daemon.lines.length;
    await crash('shard-0');
    await nextLog(daemon, from, (l) => l.msg === 'shard restarted');
    from = daemon.lines.length;
    await crash('writer-c');
    await nextLog(daemon, from, (l) => l.msg === 'writer recovered after a restart');
    const topic = `after-restarts/${process.pid}`;
    const [ca, cb, cc] = await Promise.all([Collector.start(a.port, `${topic}/#`), Collector.start(b.port, `${topic}/#`), Collector.start(c.port, `${topic}/#`)]);
    scope.use(ca);
    scope.use(cb);
    scope.use(cc);
    // Several devices, so that both shards take some.
    for (let i = 0; i < 6; i++) {
      const device = await connectClient(daemon.port, { clientId: `reload-rs-${process.pid}-${i}` });
      scope.defer(() => closeClient(device));
      await publish(device, `${topic}/${i}`, `m${i}`, { qos: 1 });
    }
    await ca.waitForCount(6, () => true, 10_000, 'six messages at a');
    await cc.waitForCount(6, () => true, 10_000, 'six messages at c');
    assert.equal(cb.messages.length, 0, 'the removed broker got messages');
    assert.equal(daemon.lines.filter((l) => l.level >= 60).length, 0, 'no fatal line');
  });
});

describe('hot reload: removing a broker that does not answer', { timeout: 60_000 }, () => {
  test('device publishes waiting on it complete once its drain time is over, counted in one warning', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const a = scope.use(await Mosquitto.start());
    const b = scope.use(await Mosquitto.start());
    const file = tempFile();
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=${b.url({ pool: 1 })}\n`);
    const daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS_FILE: file, FANOUT_SHUTDOWN_TIMEOUT_MS: 2000 }));
    await waitPoolOnline(b.port, daemon.proxyId, 'b', 1);
    const device = await connectClient(daemon.port, { clientId: `reload-stuck-${process.pid}` });
    scope.defer(() => closeClient(device));
    let closes = 0;
    device.on('close', () => { closes++; });
    b.pause();
    scope.defer(() => b.resume());
    let acked = false;
    const published = publish(device, `stuck/${process.pid}`, 'waits for b', { qos: 1 }).then(() => { acked = true; });
    await sleep(300);
    assert.equal(acked, false, 'acknowledged before the paused broker answered');
    const from = daemon.lines.length;
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\n`);
    const started = Date.now();
    daemon.proc.kill('SIGHUP');
    await published;
    assert.ok(Date.now() - started >= 1500, 'the drain waited for the broker');
    const warning = await nextLog(daemon, from, (l) => l.msg.startsWith('publishes a removed broker did not acknowledge'));
    assert.equal(warning.unanswered, 1);
    assert.deepEqual(warning.brokers, ['b']);
    await nextLog(daemon, from, (l) => l.msg === 'configuration reloaded');
    assert.equal(closes, 0);
  });
});

describe('hot reload: a shard that fails during a reload', { timeout: 60_000 }, () => {
  test('is replaced once the reload is done, with the new broker slots', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const a = scope.use(await Mosquitto.start());
    const b = scope.use(await Mosquitto.start());
    const c = scope.use(await Mosquitto.start());
    const file = tempFile();
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nb=${b.url({ pool: 1 })}\n`);
    const daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS_FILE: file, FANOUT_HTTP_PORT: 0, FANOUT_ADMIN_TOKEN: TOKEN, FANOUT_TEST_HOOKS: 'true', FANOUT_SHUTDOWN_TIMEOUT_MS: 2000,
    }));
    await waitPoolOnline(b.port, daemon.proxyId, 'b', 1);
    const stuck = await connectClient(daemon.port, { clientId: `reload-mid-${process.pid}` });
    scope.defer(() => closeClient(stuck));
    // A publish b does not answer keeps b's drain, and so the reload, going for 2 s.
    b.pause();
    scope.defer(() => b.resume());
    void publish(stuck, `mid/${process.pid}/stuck`, 'waits for b', { qos: 1 }).catch(() => {});
    await sleep(200);
    const from = daemon.lines.length;
    fs.writeFileSync(file, `a=${a.url({ pool: 1 })}\nc=${c.url({ pool: 1 })}\n`);
    daemon.proc.kill('SIGHUP');
    await nextLog(daemon, from, (l) => l.msg.startsWith('broker set reloaded'));
    const res = await fetch(`http://${HOST}:${httpPortOf(daemon)}/test/crash?thread=shard-0&kind=throw`, { method: 'POST' });
    assert.equal(res.status, 202);
    const done = await nextLog(daemon, from, (l) => l.msg === 'configuration reloaded');
    const restarted = await nextLog(daemon, from, (l) => l.msg === 'shard restarted');
    assert.ok(daemon.lines.indexOf(restarted) > daemon.lines.indexOf(done), 'the shard was replaced before the reload was done');
    const topic = `mid/${process.pid}/after`;
    const [ca, cc] = await Promise.all([Collector.start(a.port, `${topic}/#`), Collector.start(c.port, `${topic}/#`)]);
    scope.use(ca);
    scope.use(cc);
    for (let i = 0; i < 6; i++) {
      const device = await connectClient(daemon.port, { clientId: `reload-mid-${process.pid}-${i}` });
      scope.defer(() => closeClient(device));
      await publish(device, `${topic}/${i}`, `m${i}`, { qos: 1 });
    }
    await ca.waitForCount(6, () => true, 10_000, 'six messages at a');
    await cc.waitForCount(6, () => true, 10_000, 'six messages at c');
    assert.equal(daemon.lines.filter((l) => l.level >= 60).length, 0, 'no fatal line');
  });
});
