// Per-device upstream mode against real mosquittos: each device has a session of its own at each
// broker, as {clientId}-{broker}, so the brokers' per-client ACLs (`pattern ... %c`) apply to it;
// the broker publishes the device's will when the device is lost and not after a clean DISCONNECT;
// the broker keeps the device's session while it is away (QoS 1 messages queued there arrive when
// it is back, even through a restarted proxy); a broker refusing the device's credentials refuses
// the device with the matching CONNACK code (MQTT 3.1.1 and 5, either broker protocol); sessions
// are opened at FANOUT_UPSTREAM_CONNECT_RATE with the device's publishes waiting meanwhile; a
// client-id takeover ends the old sessions before the new ones open; sessions are kept alive.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { Collector, closeClient, connectClient, publish, RawClient } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { Scope, sleep, waitFor, withTimeout } from '../helpers/wait';

const PASSWD = fs.existsSync('/usr/bin/mosquitto_passwd') ? '/usr/bin/mosquitto_passwd' : 'mosquitto_passwd';
const tag = `${process.pid}${Math.random().toString(36).slice(2, 6)}`;
/** Client ids of this run: unique, short enough for MQTT 3.1.1 brokers that insist on 23 bytes. */
const id = (name: string): string => `${name}${tag}`;

/** A clean leave: DISCONNECT, then the socket closes. */
function leave(c: MqttClient): Promise<void> {
  return new Promise((resolve) => c.end(false, {}, () => resolve()));
}

function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  // mosquitto started as root drops to its own user: it must read its files.
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** How many times mosquitto logged `line`. */
function count(broker: Mosquitto, line: string): number {
  return broker.log.split('\n').filter((l) => l.includes(line)).length;
}

async function metrics(d: DaemonProcess): Promise<Map<string, { samples: { name: string; labels: Record<string, string>; value: number }[] }>> {
  const port = Number(d.lines.find((l) => l.msg === 'mqtt-fanout ready')?.httpPort);
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return parsePrometheus(await res.text());
}

function sessionsGauge(m: Awaited<ReturnType<typeof metrics>>, broker: string, state: string): number {
  return m.get('fanout_upstream_sessions')?.samples.find((s) => s.labels.broker === broker && s.labels.state === state)?.value ?? NaN;
}

describe('per-device upstream mode: two mosquittos with per-client ACLs', { timeout: 180_000 }, () => {
  const scope = new Scope();
  let dir: string;
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let obs1: Collector;
  let obs2: Collector;
  const open: MqttClient[] = [];

  const startProxy = async (): Promise<DaemonProcess> => scope.use(await DaemonProcess.start({
    // b1 speaks MQTT 5, b2 MQTT 3.1.1; keep-alive 3 s, so that the sessions must be pinged.
    FANOUT_BROKERS: `b1=${b1.url({ pool: 1, keepalive: 3 })},b2=${b2.url({ pool: 1, keepalive: 3, protocol: '3.1.1' })}`,
    FANOUT_UPSTREAM_MODE: 'per-device',
    FANOUT_HTTP_PORT: 0,
    FANOUT_LOG_LEVEL: 'debug',
    // The keep-alive test's device: its sessions are traced packet by packet.
    FANOUT_TRACE_CLIENTS: 'ka*',
  }));

  /** A device through the proxy; closed at the end of the suite if the test does not. */
  const device = async (clientId: string, opts: IClientOptions = {}): Promise<MqttClient> => {
    const c = await connectClient(daemon.port, { clientId, protocolVersion: 4, ...opts });
    open.push(c);
    return c;
  };

  /** Publishes `fence` on each broker from its observer and waits for it: whatever the broker
   *  published to the observer before has arrived by then. */
  const fence = async (): Promise<void> => {
    for (const [b, o] of [[b1, obs1], [b2, obs2]] as const) {
      const topic = `fence/${Math.random().toString(36).slice(2)}`;
      const pub = await connectClient(b.port, { username: 'observer', clientId: id('fence') });
      await publish(pub, topic, 'fence', { qos: 1 });
      await closeClient(pub);
      await o.waitForCount(1, (m) => m.topic === topic, 10_000, `the fence on ${b.port}`);
    }
  };

  before(async () => {
    dir = tempDir('fanout-per-device-');
    const acl = path.join(dir, 'acl');
    // Anonymous clients (the devices: no user name) may write wills, and the proxy's own pool
    // connections their status topic; every client its own devices/<client id>/ subtree; the
    // observer everything.
    fs.writeFileSync(acl, ['topic readwrite wills/#', 'topic readwrite fanout/status/#', 'user observer', 'topic readwrite #',
      'pattern readwrite devices/%c/#', ''].join('\n'));
    fs.chmodSync(acl, 0o644);
    const extraConfig = [`acl_file ${acl}`, 'log_type debug'];
    b1 = scope.use(await Mosquitto.start({ extraConfig }));
    b2 = scope.use(await Mosquitto.start({ extraConfig }));
    daemon = await startProxy();
    obs1 = scope.use(await Collector.start(b1.port, ['devices/#', 'wills/#', 'fence/#'], { qos: 1, protocolVersion: 5, username: 'observer' }));
    obs2 = scope.use(await Collector.start(b2.port, ['devices/#', 'wills/#', 'fence/#'], { qos: 1, username: 'observer' }));
  });
  after(async () => {
    await Promise.all(open.map((c) => closeClient(c)));
    await scope.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('each device logs in at each broker as {clientId}-{broker}, and the broker\'s per-client ACL applies to it', async () => {
    const a = id('a');
    const b = id('b');
    const da = await device(a, { protocolVersion: 5 });
    const db = await device(b);
    for (const [name, broker] of [['b1', b1], ['b2', b2]] as const) {
      const ids = broker.connectedClientIds();
      assert.ok(ids.includes(`${a}-${name}`) && ids.includes(`${b}-${name}`), `${name} saw ${JSON.stringify(ids)}`);
    }
    // Each broker lets a device write its own subtree, as that broker knows the device.
    await publish(da, `devices/${a}-b1/t`, 'a at b1', { qos: 1 });
    await publish(db, `devices/${b}-b2/t`, 'b at b2', { qos: 1 });
    await obs1.waitForCount(1, (m) => m.topic === `devices/${a}-b1/t`);
    await obs2.waitForCount(1, (m) => m.topic === `devices/${b}-b2/t`);
    // Another device's subtree is denied by both brokers, as they know each device.
    await publish(db, `devices/${a}-b1/q0`, 'b writing as a', { qos: 0 });
    await publish(db, `devices/${a}-b2/q0`, 'b writing as a', { qos: 0 });
    await fence();
    assert.equal(obs1.count((m) => m.topic === `devices/${a}-b1/q0`) + obs2.count((m) => m.topic === `devices/${a}-b2/q0`), 0,
      'a broker took a publish of one device to another\'s subtree');
    assert.equal(count(b1, `Denied PUBLISH from ${b}-b1`) + count(b2, `Denied PUBLISH from ${b}-b2`), 2, 'the brokers denied the publishes as the device');
    // At QoS 1 the MQTT 5 broker says so (0x87), and that reaches the MQTT 5 device.
    await assert.rejects(publish(da, `devices/${b}-b1/q1`, 'a writing as b', { qos: 1 }), (err: { code?: number }) => err.code === 0x87);
    // mosquitto 2.0.11 closes a connection after denying one of its QoS 1 publishes: the proxy
    // makes the device's sessions again (resuming them), and the device stays and goes on.
    await waitFor(`${a}-b1 to be back`, () => b1.connectedClientIds().filter((c) => c === `${a}-b1`).length === 2, { timeoutMs: 10_000 });
    await publish(da, `devices/${a}-b1/again`, 'a at b1 again', { qos: 1 });
    await obs1.waitForCount(1, (m) => m.topic === `devices/${a}-b1/again`);
    // The writers refresh their figures every second.
    const value = (m: Awaited<ReturnType<typeof metrics>>, name: string): number => m.get(name)?.samples.find((x) => x.labels.broker === 'b1')?.value ?? NaN;
    const m = await waitFor('both devices\' sessions and the lost one in /metrics', async () => {
      const x = await metrics(daemon);
      // The device sessions' round trips are the broker's too.
      const rtt = x.get('fanout_broker_rtt_seconds')?.samples.find((r) => r.name === 'fanout_broker_rtt_seconds_count' && r.labels.broker === 'b1')?.value ?? 0;
      return sessionsGauge(x, 'b1', 'up') === 2 && sessionsGauge(x, 'b2', 'up') === 2 && value(x, 'fanout_upstream_session_reconnects_total') >= 1 && rtt >= 3
        ? x : undefined;
    }, { timeoutMs: 5000 });
    assert.ok(value(m, 'fanout_upstream_session_losses_total') >= 1, 'fanout_upstream_session_losses_total');
    assert.equal(value(m, 'fanout_upstream_session_refusals_total'), 0, 'fanout_upstream_session_refusals_total');
    await closeClient(da);
    await closeClient(db);
  });

  test('a device\'s subscriptions are made on its own session: what the broker sends there reaches that device only', async () => {
    const a = id('sa');
    const b = id('sb');
    const got = new Map<string, string[]>([[a, []], [b, []]]);
    for (const c of [a, b]) {
      const d = await device(c, { protocolVersion: 5 });
      d.on('message', (topic, payload) => got.get(c)!.push(`${topic} ${payload.toString()}`));
      // Both subscribe to every device's commands; the broker gives each only what its ACL lets it read.
      const granted = await d.subscribeAsync('devices/+/cmd', { qos: 1 });
      assert.equal(granted[0].qos, 1);
    }
    assert.ok(count(b1, `Received SUBSCRIBE from ${a}-b1`) === 1 && count(b1, `Received SUBSCRIBE from ${b}-b1`) === 1, 'each device subscribed on its own session');
    const pub = await connectClient(b1.port, { username: 'observer', clientId: id('cmdpub') });
    await publish(pub, `devices/${a}-b1/cmd`, 'for a', { qos: 1 });
    await publish(pub, `devices/${b}-b1/cmd`, 'for b', { qos: 1 });
    await closeClient(pub);
    await waitFor('both commands delivered', () => got.get(a)!.length >= 1 && got.get(b)!.length >= 1, { timeoutMs: 10_000, detail: () => JSON.stringify([...got]) });
    await sleep(200);
    assert.deepEqual(got.get(a), [`devices/${a}-b1/cmd for a`]);
    assert.deepEqual(got.get(b), [`devices/${b}-b1/cmd for b`]);
  });

  test('the broker publishes the will when the device is lost, not after a clean DISCONNECT; MQTT 5 "disconnect with will" publishes it', async () => {
    const lost = id('wl');
    const clean = id('wc');
    const withWill = id('ww');
    const will = (who: string): IClientOptions['will'] => ({ topic: `wills/${who}`, payload: Buffer.from(`${who} gone`), qos: 1, retain: false });
    const dl = await device(lost, { will: will(lost) });
    const dc = await device(clean, { will: will(clean) });
    const dw = await device(withWill, { protocolVersion: 5, will: will(withWill) });
    dc.end();
    for (const [name, b] of [['b1', b1], ['b2', b2]] as const) {
      await waitFor(`${clean}-${name} to leave with DISCONNECT`, () => count(b, `Received DISCONNECT from ${clean}-${name}`) === 1, { timeoutMs: 10_000 });
    }
    dw.end(false, { reasonCode: 0x04 });
    (dl as unknown as { stream: { destroy(): void } }).stream.destroy();
    for (const [name, o] of [['b1', obs1], ['b2', obs2]] as const) {
      await o.waitForCount(1, (m) => m.topic === `wills/${lost}`, 10_000, `the will of the lost device at ${name}`);
      await o.waitForCount(1, (m) => m.topic === `wills/${withWill}`, 10_000, `the will of the device that disconnected with will at ${name}`);
    }
    await fence();
    for (const o of [obs1, obs2]) {
      assert.equal(o.count((m) => m.topic === `wills/${clean}`), 0, 'a will was published after a clean DISCONNECT');
      assert.equal(o.on(`wills/${lost}`)[0].payload.toString(), `${lost} gone`);
    }
    // The proxy left the wills to the brokers: one copy each.
    assert.equal(obs1.count((m) => m.topic === `wills/${lost}`), 1);
    assert.equal(obs2.count((m) => m.topic === `wills/${lost}`), 1);
  });

  test('a client-id takeover ends the old sessions before the new ones log in: the brokers never see two', async () => {
    const t = id('tk');
    let prev = await device(t, { protocolVersion: 5 });
    for (let i = 0; i < 4; i++) {
      let closed = false;
      prev.on('close', () => { closed = true; });
      const next = await device(t, { protocolVersion: 5 });
      await waitFor('the old connection to be taken over', () => closed, { timeoutMs: 5000 });
      await publish(next, `devices/${t}-b1/after-${i}`, 'new owner', { qos: 1 });
      await obs1.waitForCount(1, (m) => m.topic === `devices/${t}-b1/after-${i}`);
      prev = next;
    }
    for (const [name, b] of [['b1', b1], ['b2', b2]] as const) {
      assert.equal(b.connectedClientIds().filter((c) => c === `${t}-${name}`).length, 5, `${name}: one session per connection`);
      assert.equal(count(b, `Client ${t}-${name} already connected`), 0, `${name} had to take a session over itself`);
    }
  });

  test('the device sessions are kept alive towards the brokers while the device sends nothing', async () => {
    const k = id('ka');
    const d = await device(k, { keepalive: 0 });
    await waitFor('PINGREQ on both sessions', () => count(b1, `Received PINGREQ from ${k}-b1`) >= 1 && count(b2, `Received PINGREQ from ${k}-b2`) >= 1,
      { timeoutMs: 10_000 });
    await publish(d, `devices/${k}-b2/still`, 'here', { qos: 1 });
    await obs2.waitForCount(1, (m) => m.topic === `devices/${k}-b2/still`);
    assert.equal(count(b1, `Client ${k}-b1 has exceeded timeout`) + count(b2, `Client ${k}-b2 has exceeded timeout`), 0);
    // FANOUT_TRACE_CLIENTS covers the device's sessions too, in both directions.
    const traced = (dir: string, type: string, broker: string): boolean => daemon.lines.some((l) => l.trace === dir && l.clientId === `${k}-${broker}` &&
      l.device === k && (l.packet as { type?: string } | undefined)?.type === type);
    // Trace lines are written off the shard thread: they may follow the broker's log by a moment.
    for (const b of ['b1', 'b2']) {
      await waitFor(`trace of ${k}-${b}`, () => traced('out', 'connect', b) && traced('in', 'connack', b) && traced('out', 'pingreq', b) && traced('out', 'publish', b),
        { timeoutMs: 5000 });
    }
  });

  test('the broker keeps the session while the device is away: QoS 1 messages queued there arrive when it is back, through a restarted proxy too', async () => {
    const p = id('ps');
    const topic = `devices/${p}-b1/cmd`;
    const received: string[] = [];
    // Listening from the start: the proxy may send the queued messages with the CONNACK.
    const connectP = async (opts: IClientOptions): Promise<{ c: MqttClient; present: boolean }> => {
      const client = mqtt.connect(`mqtt://127.0.0.1:${daemon.port}`, { clientId: p, clean: false, reconnectPeriod: 0, ...opts });
      open.push(client);
      client.on('message', (_t, payload) => received.push(payload.toString()));
      const connack = await withTimeout(new Promise<IConnackPacket>((resolve) => client.once('connect', resolve)), 10_000, 'CONNACK');
      return { c: client, present: connack.sessionPresent };
    };
    const publishAtBroker = async (texts: string[]): Promise<void> => {
      const pub = await connectClient(b1.port, { username: 'observer', clientId: id('qpub') });
      for (const text of texts) await publish(pub, topic, text, { qos: 1 });
      await closeClient(pub);
    };
    let { c } = await connectP({});
    await c.subscribeAsync(topic, { qos: 1 });
    await leave(c);
    await waitFor(`${p}-b1 to leave`, () => count(b1, `Received DISCONNECT from ${p}-b1`) === 1, { timeoutMs: 10_000 });
    await publishAtBroker(['m1', 'm2', 'm3']);
    let present: boolean;
    ({ c, present } = await connectP({}));
    assert.equal(present, true, 'session present after a reconnect');
    await waitFor('the messages queued at the broker', () => received.length >= 3, { timeoutMs: 10_000, detail: () => JSON.stringify(received) });
    assert.deepEqual(received, ['m1', 'm2', 'm3']);
    assert.ok(count(b1, `as ${p}-b1 (p5, c0`) === 2, 'the session at b1 was resumed (clean session 0), not made anew');
    await leave(c);
    await waitFor(`${p}-b1 to leave again`, () => count(b1, `Received DISCONNECT from ${p}-b1`) === 2, { timeoutMs: 10_000 });
    await publishAtBroker(['m4', 'm5']);
    // A new proxy process knows nothing of the device: only the broker kept its session. The
    // devices still connected end their sessions with DISCONNECT at the shutdown (no will), as
    // the proxy publishes no wills of the devices it disconnects when it stops.
    const k = `${id('sa')}-b1`;
    assert.equal(count(b1, `Received DISCONNECT from ${k}`), 0);
    await daemon.stop();
    await waitFor(`${k} to leave with DISCONNECT`, () => count(b1, `Received DISCONNECT from ${k}`) === 1, { timeoutMs: 5000 });
    daemon = await startProxy();
    ({ c, present } = await connectP({}));
    assert.equal(present, true, 'every broker kept the session, so it is present for the device');
    await waitFor('the messages queued at the broker while the proxy restarted', () => received.length >= 5, { timeoutMs: 10_000, detail: () => JSON.stringify(received) });
    assert.deepEqual(received, ['m1', 'm2', 'm3', 'm4', 'm5']);
    await closeClient(c);
  });
});

describe('per-device upstream mode: a broker that checks passwords', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let dir: string;
  let b3: Mosquitto;

  before(async () => {
    dir = tempDir('fanout-per-device-pw-');
    const passwd = path.join(dir, 'passwd');
    execFileSync(PASSWD, ['-c', '-b', passwd, 'alice', 'alice-pw']);
    fs.chmodSync(passwd, 0o644);
    b3 = scope.use(await Mosquitto.start({ extraConfig: ['allow_anonymous false', `password_file ${passwd}`, 'log_type debug'] }));
  });
  after(async () => {
    await scope.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** The CONNACK code a device gets from the proxy (0: accepted). */
  async function codeOf(port: number, version: 4 | 5, creds: { username?: string; password?: string }, clientId: string,
    will?: { topic: string; payload: Buffer; qos: 0 | 1 | 2; retain: boolean }): Promise<number> {
    const c = await RawClient.open(port, version);
    try {
      const ack = await c.handshake({ clientId, ...creds, password: creds.password === undefined ? undefined : Buffer.from(creds.password), will });
      return ack.reasonCode ?? ack.returnCode ?? -1;
    } finally {
      c.destroy();
    }
  }

  for (const protocol of ['5', '3.1.1'] as const) {
    test(`passthrough to an MQTT ${protocol} broker: wrong or missing credentials refuse the device with 0x87 (MQTT 5) or 0x05 (3.1.1); right ones pass`, async () => {
      const d = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `pw=${b3.url({ pool: 1, protocol })}`, FANOUT_UPSTREAM_MODE: 'per-device' }));
      for (const version of [5, 4] as const) {
        const refused = version === 5 ? 0x87 : 0x05;
        assert.equal(await codeOf(d.port, version, { username: 'alice', password: 'wrong' }, id(`w${version}`)), refused, `MQTT ${version}, wrong password`);
        assert.equal(await codeOf(d.port, version, {}, id(`n${version}`)), refused, `MQTT ${version}, no user name`);
        assert.equal(await codeOf(d.port, version, { username: 'alice', password: 'alice-pw' }, id(`r${version}`)), 0, `MQTT ${version}, right password`);
      }
      // The broker refused them itself: nothing was made up on the way.
      assert.ok(count(b3, 'disconnected, not authorised') >= 4, b3.log.slice(-2000));
      await d.stop();
    });
  }

  test('credentials=fixed logs every device in with the URL\'s user; credentials=map with the entry of its user name, and refuses a device without one', async () => {
    const map = path.join(dir, 'map.json');
    fs.writeFileSync(map, JSON.stringify({ mapped: { username: 'alice', password: 'alice-pw' } }));
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `fx=mqtt://alice:alice-pw@127.0.0.1:${b3.port}?pool=1&credentials=fixed,mp=mqtt://127.0.0.1:${b3.port}?pool=1&credentials=map&credentialsMap=${map}`,
      FANOUT_UPSTREAM_MODE: 'per-device',
    }));
    const good = id('mg');
    assert.equal(await codeOf(d.port, 5, { username: 'mapped', password: 'anything' }, good), 0);
    assert.equal(count(b3, `as ${good}-fx (p5, c1, k60, u'alice')`), 1, 'fixed: the URL\'s user');
    assert.equal(count(b3, `as ${good}-mp (p5, c1, k60, u'alice')`), 1, 'map: the entry\'s user');
    const wills = scope.use(await Collector.start(b3.port, 'wills/#', { qos: 1, username: 'alice', password: 'alice-pw' }));
    const stranger = id('ms5');
    const will = { topic: `wills/${stranger}`, payload: Buffer.from('gone'), qos: 1 as const, retain: false };
    assert.equal(await codeOf(d.port, 5, { username: 'stranger' }, stranger, will), 0x87, 'no entry in the map, MQTT 5');
    assert.equal(await codeOf(d.port, 4, { username: 'stranger' }, id('ms4')), 0x05, 'no entry in the map, MQTT 3.1.1');
    // The session the fixed broker had opened for the refused device ends with DISCONNECT: the
    // device never connected, so the broker must not publish its will.
    await waitFor(`${stranger}-fx to end with DISCONNECT`, () => count(b3, `Received DISCONNECT from ${stranger}-fx`) === 1, { timeoutMs: 10_000 });
    const fence = await connectClient(b3.port, { username: 'alice', password: 'alice-pw', clientId: id('mf') });
    await publish(fence, 'wills/fence', 'fence', { qos: 1 });
    await closeClient(fence);
    await wills.waitForCount(1, (m) => m.topic === 'wills/fence');
    assert.equal(wills.count((m) => m.topic === will.topic), 0, 'the will of a refused device was published');
    // SIGHUP reads the map again: the stranger has an entry now.
    fs.writeFileSync(map, JSON.stringify({ mapped: { username: 'alice', password: 'alice-pw' }, stranger: { username: 'alice', password: 'alice-pw' } }));
    d.proc.kill('SIGHUP');
    await d.waitForLog((l) => l.msg === 'credentials map reloaded' && l.broker === 'mp' && l.entries === 2);
    assert.equal(await codeOf(d.port, 5, { username: 'stranger' }, id('mr')), 0, 'the reloaded map has the stranger');
    await d.stop();
  });
});

describe('per-device upstream mode: FANOUT_UPSTREAM_CONNECT_RATE', { timeout: 120_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('a storm of devices is let through at the rate; a device that publishes before its CONNACK waits for its session', async () => {
    const RATE = 10;
    const DEVICES = 25;
    const b = scope.use(await Mosquitto.start({ extraConfig: ['log_type debug'] }));
    const at = scope.use(await Collector.start(b.port, 'storm/#', { qos: 1 }));
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b=${b.url({ pool: 1 })}`, FANOUT_UPSTREAM_MODE: 'per-device', FANOUT_UPSTREAM_CONNECT_RATE: RATE, FANOUT_HTTP_PORT: 0,
      // More devices than any open-file limit holds with their sessions: said at start-up.
      FANOUT_MAX_CONNECTIONS: 10_000_000,
    }));
    const warning = await d.waitForLog((l) => String(l.msg).startsWith('per-device mode: the open-file limit (ulimit -n) is reached before FANOUT_MAX_CONNECTIONS'));
    assert.equal(warning.filesPerDevice, 2);
    assert.equal(warning.devices, Math.floor((Number(warning.openFileLimit) - 200) / 2));
    let maxQueued = 0;
    let polling = true;
    const poll = (async () => {
      while (polling) {
        maxQueued = Math.max(maxQueued, sessionsGauge(await metrics(d), 'b', 'queued') || 0);
        await sleep(100);
      }
    })();
    const started = Date.now();
    const clients: MqttClient[] = [];
    try {
      const connacks = await Promise.all(Array.from({ length: DEVICES }, async (_, i) => {
        const c = await connectClient(d.port, { clientId: id(`st${i}-`), connectTimeout: 30_000 });
        clients.push(c);
        return Date.now();
      }));
      // The last device can not have been let through before (DEVICES - 1) / RATE s: the bucket
      // starts with one token and gains RATE a second. A slow machine only makes it later.
      const spread = Math.max(...connacks) - started;
      assert.ok(spread >= ((DEVICES - 1) / RATE) * 1000 - 200, `all ${DEVICES} devices connected within ${spread} ms at ${RATE}/s`);
      // Now a device that pipelines CONNECT and PUBLISH: the publish waits for its session.
      const raw = await RawClient.open(d.port, 4);
      const clientId = id('pipe');
      raw.send(Buffer.concat([
        raw.encode({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId }),
        raw.encode({ cmd: 'publish', topic: 'storm/pipelined', payload: Buffer.from('early'), qos: 1, messageId: 7, retain: false, dup: false }),
      ]));
      const puback = await raw.waitForPacket('puback');
      const order = raw.packets.map((p) => p.cmd);
      assert.deepEqual(order.slice(0, 2), ['connack', 'puback'], `packets: ${order.join(', ')}`);
      assert.equal((puback as { messageId?: number }).messageId, 7);
      await at.waitForCount(1, (m) => m.topic === 'storm/pipelined');
      assert.equal(count(b, `Received PUBLISH from ${clientId}-b`), 1, 'the publish went out on the device\'s own session');
      raw.destroy();
    } finally {
      polling = false;
      await poll;
      await Promise.all(clients.map((c) => closeClient(c)));
    }
    assert.ok(maxQueued > 0, 'fanout_upstream_sessions{state="queued"} never showed a waiting session');
  });
});

describe('per-device upstream mode: a broker that goes away and comes back', { timeout: 120_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('the device stays; its publishes wait at the proxy while its session is down and reach the broker once it is back', async () => {
    const b = scope.use(await Mosquitto.start({ extraConfig: ['log_type debug'] }));
    const d = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `b=${b.url({ pool: 1 })}`, FANOUT_UPSTREAM_MODE: 'per-device', FANOUT_HTTP_PORT: 0 }));
    const clientId = id('out');
    const dev = await connectClient(d.port, { clientId });
    let closed = false;
    dev.on('close', () => { closed = true; });
    try {
      await b.stop();
      await d.waitForLog((l) => l.msg === 'device session lost; reconnecting (the broker may have published the device\'s will)' && l.clientId === `${clientId}-b`);
      let acked = 0;
      const sent = Array.from({ length: 20 }, (_, i) => publish(dev, `out/${i}`, `m${i}`, { qos: 1 }, 30_000).then(() => { acked++; }));
      await waitFor('the publishes parked at the writer', async () => {
        const m = await metrics(d);
        return (m.get('fanout_upstream_parked_messages')?.samples.find((s) => s.labels.broker === 'b')?.value ?? 0) === 20;
      }, { timeoutMs: 10_000 });
      assert.equal(acked, 0, 'a publish was acknowledged while its broker was down');
      await b.start();
      await Promise.all(sent);
      assert.equal(closed, false, 'the device was disconnected');
      const after = b.log.slice(b.log.lastIndexOf('mosquitto version'));
      for (let i = 0; i < 20; i++) assert.ok(after.includes(`Received PUBLISH from ${clientId}-b (d0, q1, r0, m`) && after.includes(`'out/${i}'`), `out/${i} did not reach the broker`);
      await waitFor('the reconnect in /metrics', async () => {
        const m = await metrics(d);
        return (m.get('fanout_upstream_session_reconnects_total')?.samples.find((s) => s.labels.broker === 'b')?.value ?? 0) >= 1;
      }, { timeoutMs: 5000 });
    } finally {
      await closeClient(dev);
    }
  });
});

describe('per-device upstream mode: a broker that never answers', { timeout: 60_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('the device is refused after FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS with 0x88 (MQTT 5) or 0x03 (3.1.1), and the timeout is counted', async () => {
    // Takes the connection, reads the CONNECT, says nothing.
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    scope.defer(() => new Promise((r) => {
      silent.close(r);
      for (const socket of sockets) socket.destroy();
    }));
    const port = (silent.address() as net.AddressInfo).port;
    const d = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `mute=mqtt://127.0.0.1:${port}?pool=1`, FANOUT_UPSTREAM_MODE: 'per-device', FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS: 1000,
      FANOUT_HTTP_PORT: 0,
    }));
    const answer = async (version: 4 | 5): Promise<number> => {
      const c = await RawClient.open(d.port, version);
      try {
        const ack = await c.handshake({ clientId: id(`mute${version}`) });
        return ack.reasonCode ?? ack.returnCode ?? -1;
      } finally {
        c.destroy();
      }
    };
    assert.deepEqual(await Promise.all([answer(5), answer(4)]), [0x88, 0x03]);
    await d.waitForLog((l) => l.msg === 'device session not up within FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS: device refused');
    await waitFor('the timeouts in /metrics', async () => {
      const m = await metrics(d);
      return m.get('fanout_upstream_session_timeouts_total')?.samples.find((s) => s.labels.broker === 'mute')?.value === 2;
    }, { timeoutMs: 5000 });
  });
});
