// Several instances behind HAProxy (loadtest/haproxy/haproxy.cfg.example), on loopback: 3
// instances, 2 mosquittos, Redis as the shared session store (FANOUT_SESSION_STORE). 500 devices
// with persistent sessions stream QoS 1; one instance is killed with SIGKILL; its devices come back
// through HAProxy to the other two and resume their sessions there. Every publish a device had
// acknowledged reaches both brokers, and the messages queued in sessions of devices that were
// away when the instance died are delivered when they come back.
// Then per-device upstream mode, without Redis: the broker keeps the device's session, so a
// device whose instance died resumes it through another instance.
// SCALE_DEVICES overrides the number of devices (for a quicker run by hand).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt, { type IConnackPacket, type MqttClient } from 'mqtt';
import { Mosquitto } from '../helpers/mosquitto';
import { RedisServer } from '../helpers/redis';
import { Cluster, httpPortOf, startInstance } from '../helpers/cluster';
import { parsePrometheus } from '../helpers/prometheus';
import { HOST } from '../helpers/ports';
import { connectClient, persistentClient, urlOf } from '../helpers/clients';
import { Scope, sleep, waitFor } from '../helpers/wait';

const DEVICES = Number(process.env.SCALE_DEVICES ?? 500);
/** Devices away (disconnected, session kept) while the instance dies, with messages queued. */
const AWAY_EVERY = 5;
const QUEUED = 3;
const STREAM_MS = 4000;

interface Dev {
  id: string;
  client: MqttClient;
  acked: Set<string>;
  got: Set<string>;
  connects: number;
  presentAfterFirst: boolean[];
  seq: number;
}

/** A device with a persistent session (3.1.1 clean session 0, or 5 with a session expiry) that
 *  reconnects by itself through HAProxy. It never subscribes again: what it gets after a
 *  reconnect comes from its session. */
function device(port: number, id: string, v5: boolean): Promise<Dev> {
  const client = persistentClient(port, id, v5, 600);
  const dev: Dev = { id, client, acked: new Set(), got: new Set(), connects: 0, presentAfterFirst: [], seq: 0 };
  client.on('message', (_topic, payload) => dev.got.add(payload.toString()));
  client.on('connect', (connack) => {
    if (dev.connects++ > 0) dev.presentAfterFirst.push(connack.sessionPresent);
  });
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(dev));
    setTimeout(() => reject(new Error(`${id} did not connect through HAProxy`)), 30_000).unref();
  });
}

/** fanout_session_claims_total of an instance, by outcome. */
async function claims(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${HOST}:${port}/metrics`)).text();
  const family = parsePrometheus(text).get('fanout_session_claims_total');
  return Object.fromEntries((family?.samples ?? []).map((x) => [x.labels.outcome, x.value]));
}

async function collector(m: Mosquitto, filter: string): Promise<{ client: MqttClient; seen: Set<string> }> {
  const client = await connectClient(m.port, { clientId: `collect-${m.port}`, clean: true });
  const seen = new Set<string>();
  client.on('message', (_t, p) => seen.add(p.toString()));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, seen };
}

describe('several instances behind HAProxy', { timeout: 600_000 }, () => {
  const suite = new Scope();
  let m1: Mosquitto;
  let m2: Mosquitto;
  before(async () => {
    // Mosquitto queues for the per-device sessions (the second test) without limits.
    m1 = suite.use(await Mosquitto.start({ extraConfig: ['max_connections -1'] }));
    m2 = suite.use(await Mosquitto.start({ extraConfig: ['max_connections -1'] }));
  });
  after(() => suite.close());

  test(`sessions in Redis: ${DEVICES} devices stream QoS 1, an instance is killed (SIGKILL), its devices resume on the others; every acknowledged publish reaches both brokers, queued messages are delivered`, async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const redis = scope.use(await RedisServer.start());
    const cluster = scope.use(await Cluster.start(3, {
      FANOUT_BROKERS: `m1=${m1.url()},m2=${m2.url()}`, FANOUT_SESSION_STORE: redis.url, FANOUT_SHARDS: 2,
    }));
    const up1 = await collector(m1, 'scale/up/#');
    const up2 = await collector(m2, 'scale/up/#');
    const downPub = await connectClient(m1.port, { clientId: 'down-publisher', clean: true });
    scope.defer(() => Promise.all([up1.client, up2.client, downPub].map((c) => c.endAsync(true))));

    const devs: Dev[] = [];
    scope.defer(() => Promise.all(devs.map((d) => d.client.endAsync(true))));
    for (let i = 0; i < DEVICES; i += 50) {
      devs.push(...await Promise.all(Array.from({ length: Math.min(50, DEVICES - i) }, (_, k) => device(cluster.port, `scale-${i + k}`, (i + k) % 4 === 0))));
    }
    for (let i = 0; i < devs.length; i += 50) {
      await Promise.all(devs.slice(i, i + 50).map((d) => d.client.subscribeAsync(`scale/down/${d.id}`, { qos: 1 })));
    }
    // Which instance owns each client id (the store's ownership key names it).
    const ownerOf = async (id: string): Promise<string> => {
      const answer = await redis.command(['GET', `fanout:own:${id}`]);
      const m = /^\$\d+\r\n([^:]*):/.exec(answer);
      return m === null ? '' : m[1];
    };
    const owners = new Map<string, string>();
    for (const d of devs) owners.set(d.id, await ownerOf(d.id));
    const victim = cluster.instances[0];
    const perInstance = cluster.instances.map((i) => [...owners.values()].filter((o) => o === i.proxyId).length);
    assert.ok(perInstance.every((n) => n > DEVICES / 10), `HAProxy spreads the devices over the 3 instances (owners: ${perInstance.join(', ')})`);

    // Some devices leave (DISCONNECT, session kept), and messages are queued for them.
    const away = devs.filter((_, i) => i % AWAY_EVERY === 1);
    await Promise.all(away.map((d) => d.client.endAsync(false)));
    const queued: string[] = [];
    for (const d of away) {
      for (let n = 0; n < QUEUED; n++) {
        const text = `q:${d.id}:${n}`;
        queued.push(text);
        await downPub.publishAsync(`scale/down/${d.id}`, text, { qos: 1 });
      }
    }
    const awayOnVictim = away.filter((d) => owners.get(d.id) === victim.proxyId);
    assert.ok(awayOnVictim.length > 0, 'some of the devices that are away had their session on the instance that dies');

    // The stream: every connected device publishes QoS 1, about DEVICES messages a second.
    const streaming = devs.filter((_, i) => i % AWAY_EVERY !== 1);
    let running = true;
    const inFlight = new Set<Promise<unknown>>();
    const pump = (async () => {
      let next = 0;
      while (running) {
        for (let k = 0; k < Math.ceil(DEVICES / 50); k++) {
          const d = streaming[next++ % streaming.length];
          if (!d.client.connected) continue;
          const text = `${d.id}:${d.seq++}`;
          const p = d.client.publishAsync(`scale/up/${d.id}`, text, { qos: 1 }).then(() => d.acked.add(text), () => undefined);
          inFlight.add(p);
          void p.finally(() => inFlight.delete(p));
        }
        await sleep(20);
      }
    })();
    await sleep(STREAM_MS / 2);
    // The queued messages are in Redis well within this (written behind every few milliseconds).
    const victimDevices = streaming.filter((d) => owners.get(d.id) === victim.proxyId);
    const closedBefore = new Map(victimDevices.map((d) => [d.id, d.connects]));
    await victim.close();
    const killedAt = Date.now();
    // Its devices are cut (HAProxy passes the close on) and reconnect through it to the others.
    await waitFor('the devices of the killed instance to reconnect', () => victimDevices.every((d) => d.connects > closedBefore.get(d.id)! && d.client.connected), {
      timeoutMs: 60_000, intervalMs: 100,
      detail: () => `${victimDevices.filter((d) => !(d.connects > closedBefore.get(d.id)! && d.client.connected)).length} of ${victimDevices.length} not back; `
        + `connected ${victimDevices.filter((d) => d.client.connected).length}; warnings: ${cluster.instances.slice(1).flatMap((i) => i.problems()).slice(0, 8).map((l) => JSON.stringify(l)).join('\n')}; haproxy: ${cluster.haproxy.log.slice(-1500)}`,
    });
    const backMs = Date.now() - killedAt;
    await sleep(STREAM_MS / 2);
    running = false;
    await pump;
    await waitFor('the publishes in flight to complete', () => inFlight.size === 0 || devs.every((d) => d.client.connected) && inFlight.size === 0, { timeoutMs: 30_000 });

    for (const d of victimDevices) {
      assert.equal(d.presentAfterFirst.at(-1), true, `${d.id} resumed its session on another instance (session present 1); its CONNACKs since the first: ${d.presentAfterFirst.join(',')}; `
        + `warnings: ${cluster.instances.slice(1).flatMap((i) => i.problems()).filter((l) => JSON.stringify(l).includes(d.id)).map((l) => JSON.stringify(l)).join('; ')}`);
      const owner = await ownerOf(d.id);
      assert.ok(owner !== '' && owner !== victim.proxyId, `${d.id} is owned by a live instance now (${owner})`);
    }

    // The away devices come back: those whose instance died resume from Redis.
    for (const d of away) d.client.reconnect();
    await waitFor('the away devices to be back with their queued messages', () => away.every((d) => [...Array(QUEUED).keys()].every((n) => d.got.has(`q:${d.id}:${n}`))), {
      timeoutMs: 30_000, intervalMs: 100,
      detail: () => {
        const missing = away.filter((d) => ![...Array(QUEUED).keys()].every((n) => d.got.has(`q:${d.id}:${n}`)));
        return `${missing.length} of ${away.length} devices lack queued messages (of them on the killed instance: ${missing.filter((d) => awayOnVictim.includes(d)).length}); e.g. ${missing.slice(0, 3).map((d) => `${d.id} got [${[...d.got].join(',')}] connected ${d.client.connected}`).join('; ')}`;
      },
    });
    for (const d of awayOnVictim) assert.equal(d.presentAfterFirst.at(-1), true, `${d.id} resumed its recorded session (session present 1)`);

    // Every acknowledged publish reached both brokers.
    const acked = devs.flatMap((d) => [...d.acked]);
    assert.ok(acked.length > DEVICES, `the stream acknowledged ${acked.length} publishes`);
    const ackedOnVictim = victimDevices.reduce((n, d) => n + d.acked.size, 0);
    await waitFor('every acknowledged publish at both brokers', () => acked.every((m) => up1.seen.has(m) && up2.seen.has(m)), {
      timeoutMs: 20_000,
      detail: () => `missing at m1: ${acked.filter((m) => !up1.seen.has(m)).length}, at m2: ${acked.filter((m) => !up2.seen.has(m)).length} of ${acked.length}`,
    });

    // The resumed sessions kept their subscriptions: a message to every device arrives.
    for (const d of devs) await downPub.publishAsync(`scale/down/${d.id}`, `last:${d.id}`, { qos: 1 });
    await waitFor('the last message at every device', () => devs.every((d) => d.got.has(`last:${d.id}`)), {
      timeoutMs: 30_000,
      detail: () => `${devs.filter((d) => !d.got.has(`last:${d.id}`)).length} devices without it`,
    });
    // Every client id of the killed instance was taken from it by one of the others, as counted.
    const counted = await Promise.all(cluster.instances.slice(1).map((i) => claims(httpPortOf(i))));
    const total = (k: string): number => counted.reduce((n, c) => n + (c[k] ?? 0), 0);
    assert.ok(total('takenFromGone') + total('handovers') >= victimDevices.length + awayOnVictim.length,
      `client ids taken from the killed instance, as the survivors count them: ${JSON.stringify(counted)}`);
    t.diagnostic(`devices on the killed instance: ${victimDevices.length} streaming + ${awayOnVictim.length} away; all back ${backMs} ms after the kill; ${acked.length} publishes acknowledged (${ackedOnVictim} by devices of the killed instance); `
      + `claims at the survivors: ${['takenFromGone', 'handovers', 'contended', 'abandoned', 'failed'].map((k) => `${k} ${total(k)}`).join(', ')}`);
  });
});

describe('per-device upstream mode behind HAProxy, no shared store', { timeout: 120_000 }, () => {
  test('the broker keeps the sessions: devices whose instance was killed (SIGKILL) resume them through another instance, with what was queued for them', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const m = scope.use(await Mosquitto.start());
    const cluster = scope.use(await Cluster.start(2, { FANOUT_BROKERS: `m=${m.url({ mode: 'per-device', pool: 1 })}`, FANOUT_SHARDS: 1 }));
    const up = await collector(m, 'pd/up/#');
    const downPub = await connectClient(m.port, { clientId: 'pd-down-publisher', clean: true });
    scope.defer(() => Promise.all([up.client, downPub].map((c) => c.endAsync(true))));
    // Devices until one of each kind is on instance 1: `away` leaves before the kill (its
    // session stays at the broker), `stay` is connected when the kill comes.
    const devs: Dev[] = [];
    scope.defer(() => Promise.all(devs.map((d) => d.client.endAsync(true))));
    let away: Dev | undefined;
    let stay: Dev | undefined;
    for (let i = 0; (away === undefined || stay === undefined) && i < 40; i++) {
      const d = await device(cluster.port, `pd-${i}`, i % 2 === 0);
      devs.push(d);
      await d.client.subscribeAsync(`pd/down/${d.id}`, { qos: 1 });
      if (await cluster.haproxy.stickOf(d.id) !== 1) continue;
      if (away === undefined) away = d;
      else stay ??= d;
    }
    assert.ok(away !== undefined && stay !== undefined, 'HAProxy sent devices to instance 1');
    await stay.client.publishAsync(`pd/up/${stay.id}`, 'before', { qos: 1 });
    const ends = m.log.split(`Client ${away.id}-m disconnected`).length;
    await away.client.endAsync(false);
    // Queued at the broker once the device's session there has ended: until then the broker
    // would still deliver to the instance, whose own part of the session dies with it.
    await waitFor('the device\'s session at the broker to end', () => m.log.split(`Client ${away.id}-m disconnected`).length > ends, { detail: () => m.log.slice(-500) });
    for (let n = 0; n < 3; n++) await downPub.publishAsync(`pd/down/${away.id}`, `q${n}`, { qos: 1 });
    const before = stay.connects;
    await cluster.instances[0].close();
    await waitFor(`${stay.id} back through instance 2`, () => stay.connects > before && stay.client.connected, { timeoutMs: 30_000 });
    assert.equal(await cluster.haproxy.stickOf(stay.id), 2, 'the device is on instance 2 now');
    assert.equal(stay.presentAfterFirst.at(-1), true, 'session present 1: the broker kept the session');
    away.client.reconnect();
    await waitFor(`${away.id}'s queued messages`, () => ['q0', 'q1', 'q2'].every((x) => away.got.has(x)), { timeoutMs: 30_000, detail: () => [...away.got].join(',') });
    assert.equal(away.presentAfterFirst.at(-1), true, 'session present 1 for the device that was away');
    // The subscriptions are the broker's: they work on the new instance without a SUBSCRIBE.
    for (const d of [stay, away]) await downPub.publishAsync(`pd/down/${d.id}`, 'after', { qos: 1 });
    await waitFor('the messages after the resume', () => stay.got.has('after') && away.got.has('after'), { timeoutMs: 10_000 });
    await stay.client.publishAsync(`pd/up/${stay.id}`, 'after', { qos: 1 });
    assert.ok(up.seen.has('before') && up.seen.has('after'), 'the device publishes reach the broker before and after');
  });
});

describe('client-id ownership across instances (sessions in Redis)', { timeout: 120_000 }, () => {
  test('a CONNECT on another instance takes the client id over: the old connection ends there, the session (subscriptions, queued messages) moves along; a clean start there discards it', async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const m = scope.use(await Mosquitto.start());
    const redis = scope.use(await RedisServer.start());
    const env = { FANOUT_BROKERS: `m=${m.url()}`, FANOUT_SESSION_STORE: redis.url, FANOUT_SHARDS: 2 };
    const i1 = scope.use(await startInstance(env, 0));
    const i2 = scope.use(await startInstance(env, 1));
    const pub = await connectClient(m.port, { clientId: 'ho-publisher', clean: true });
    scope.defer(() => pub.endAsync(true));
    const open = async (port: number, clean: boolean, v5: boolean): Promise<{ client: MqttClient; got: string[]; present: boolean; closed: Promise<void> }> => {
      // The message listener is there before the CONNACK: queued messages follow it at once.
      const client = mqtt.connect(urlOf(port), { clientId: 'ho-dev', clean, protocolVersion: v5 ? 5 : 4, reconnectPeriod: 0,
        ...(v5 && !clean ? { properties: { sessionExpiryInterval: 300 } } : {}) });
      scope.defer(() => client.endAsync(true));
      const got: string[] = [];
      client.on('message', (_t, p) => got.push(p.toString()));
      const connack = await new Promise<IConnackPacket>((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      });
      client.on('error', () => undefined);
      return { client, got, present: connack.sessionPresent, closed: new Promise((resolve) => client.once('close', () => resolve())) };
    };
    for (const v5 of [false, true]) {
      const a = await open(i1.port, false, v5);
      await a.client.subscribeAsync('ho/x', { qos: 1 });
      await pub.publishAsync('ho/x', `${v5}-m1`, { qos: 1 });
      await waitFor('m1 on instance 1', () => a.got.includes(`${v5}-m1`));
      const b = await open(i2.port, false, v5);
      await a.closed;
      assert.equal(b.present, true, 'session present on instance 2: the session came over');
      await pub.publishAsync('ho/x', `${v5}-m2`, { qos: 1 });
      await waitFor('m2 on instance 2, by the subscription made on instance 1', () => b.got.includes(`${v5}-m2`));
      await b.client.endAsync(false);
      await pub.publishAsync('ho/x', `${v5}-m3`, { qos: 1 });
      await sleep(200);
      const c = await open(i1.port, false, v5);
      assert.equal(c.present, true, 'session present back on instance 1');
      await waitFor('m3, queued on instance 2 while the device was away, delivered on instance 1', () => c.got.includes(`${v5}-m3`), { detail: () => c.got.join(',') });
      const d = await open(i2.port, true, v5);
      await c.closed;
      assert.equal(d.present, false, 'a clean start on instance 2 has no session');
      await pub.publishAsync('ho/x', `${v5}-m4`, { qos: 1 });
      await sleep(300);
      assert.deepEqual(d.got, [], 'the clean session has no subscription');
      await d.client.endAsync(false);
      const e = await open(i1.port, false, v5);
      assert.equal(e.present, false, 'the clean start ended the recorded session');
      await e.client.endAsync(false);
    }
    assert.ok(i1.running && i2.running);
    // A graceful stop (SIGTERM) writes what it has and leaves the sessions recorded.
    const f = await open(i2.port, false, false);
    await f.client.subscribeAsync('ho/y', { qos: 1 });
    await f.client.endAsync(false);
    await pub.publishAsync('ho/y', 'before-stop', { qos: 1 });
    await sleep(200);
    const stopped = await i2.stop();
    assert.equal(stopped.code, 0, 'instance 2 exits 0 after SIGTERM');
    const g = await open(i1.port, false, false);
    assert.equal(g.present, true, 'the session of the stopped instance resumes on instance 1');
    await waitFor('the message queued before the stop', () => g.got.includes('before-stop'));
  });
});

