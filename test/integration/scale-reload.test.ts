// Hot reload in the several-instances deployment, on loopback: HAProxy (the shipped example
// configuration) in front of 3 instances, sessions in Redis (FANOUT_SESSION_STORE), 3 mosquittos.
// Every instance has a brokers file of its own (FANOUT_BROKERS_FILE) listing m1 and m2. ~100
// devices with persistent sessions stream QoS 1 through HAProxy; mid-stream every file is
// rewritten to m1 and m3 and every instance reloaded (one by SIGHUP, two by POST /admin/reload),
// all at once; the stream goes on. Every publish acknowledged before the reload is at m1 and m2,
// every publish sent after all instances had the new set in force is at m1 and m3, m1 has them
// all, and no device connection closes: nor may HAProxy take an instance out, which its health
// checks (GET /readyz, down after 2 failures 500 ms apart) would do, cutting the instance's devices.
// RELOAD_DEVICES overrides the number of devices.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { MqttClient } from 'mqtt';
import { Mosquitto } from '../helpers/mosquitto';
import { RedisServer } from '../helpers/redis';
import { Cluster, httpPortOf } from '../helpers/cluster';
import type { LogLine } from '../helpers/daemon';
import { HOST } from '../helpers/ports';
import { persistentClient } from '../helpers/clients';
import { Tally } from '../helpers/stream';
import { Scope, sleep, waitFor, withTimeout } from '../helpers/wait';

const DEVICES = Number(process.env.RELOAD_DEVICES ?? 100);
/** Pause between two publishes of one device: about DEVICES * 1000 / GAP_MS messages a second. */
const GAP_MS = 100;
/** Unacknowledged publishes allowed per device. */
const WINDOW = 2;
/** How long the stream runs (at least) before the reload, and after every instance has the new set. */
const BEFORE_MS = 2500;
const AFTER_MS = 2500;
const TOKEN = 'scale-reload-token-0123456789';

interface Dev {
  id: string;
  client: MqttClient;
  seq: number;
  /** 'close', 'offline', 'reconnect' and 'disconnect' (a server DISCONNECT) after the first CONNACK. */
  events: string[];
  /** Date.now() of the first of them. */
  firstEventAt: number;
}

/** A device with a persistent session (3.1.1 clean session 0, or 5 with a session expiry) that
 *  would reconnect by itself: any reconnect shows in its events. */
function device(port: number, id: string, v5: boolean): Promise<Dev> {
  const client = persistentClient(port, id, v5, 300);
  const dev: Dev = { id, client, seq: 0, events: [], firstEventAt: 0 };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.end(true);
      reject(new Error(`${id} did not connect through HAProxy`));
    }, 30_000);
    timer.unref();
    client.once('connect', () => {
      clearTimeout(timer);
      for (const e of ['close', 'offline', 'reconnect', 'disconnect'] as const) client.on(e, () => {
        if (dev.events.push(e) === 1) dev.firstEventAt = Date.now();
      });
      resolve(dev);
    });
  });
}

/** Proxy connections a broker has seen connect (mosquitto's log), for one instance and broker. */
function proxyConnects(m: Mosquitto, proxyId: string, broker: string): number {
  return m.connectedClientIds().filter((id) => id.startsWith(`${proxyId}-${broker}-`)).length;
}

function summaryOf(l: LogLine): unknown[] {
  return [l.added, l.removed, l.changed, l.unchanged];
}

describe('hot reload across several instances behind HAProxy', { timeout: 120_000 }, () => {
  test(`${DEVICES} devices stream QoS 1 while every instance reloads from m1,m2 to m1,m3: nothing lost, no device disconnected`, async (t) => {
    const scope = new Scope();
    t.after(() => scope.close());
    const [m1, m2, m3] = await Promise.all([1, 2, 3].map(() => Mosquitto.start()));
    for (const m of [m1, m2, m3]) scope.use(m);
    const redis = scope.use(await RedisServer.start());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-it-scale-reload-'));
    scope.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const files = [0, 1, 2].map((i) => path.join(dir, `brokers-${i + 1}.txt`));
    for (const f of files) fs.writeFileSync(f, `# upstreams\nm1=${m1.url({ pool: 1 })}\nm2=${m2.url({ pool: 1 })}\n`);
    const cluster = scope.use(await Cluster.start(3, (i) => ({
      FANOUT_BROKERS_FILE: files[i], FANOUT_SESSION_STORE: redis.url, FANOUT_ADMIN_TOKEN: TOKEN, FANOUT_SHARDS: 2,
    })));
    const instances = cluster.instances;
    for (const d of instances) {
      assert.deepEqual((await fetch(`http://${HOST}:${httpPortOf(d)}/readyz`).then((r) => r.json()) as { brokers: { name: string }[] }).brokers.map((b) => b.name),
        ['m1', 'm2'], `${d.proxyId} starts with m1 and m2`);
    }

    const run = `creload-${process.pid}-${Date.now()}`;
    const [at1, at2, at3] = await Promise.all([m1, m2, m3].map((m) => Tally.start(m.port, run)));
    for (const tally of [at1, at2, at3]) scope.use(tally);
    for (const d of instances) await waitFor(`${d.proxyId} connected to m1`, () => proxyConnects(m1, d.proxyId, 'm1') > 0, { timeoutMs: 10_000 });
    const m1Connects = instances.map((d) => proxyConnects(m1, d.proxyId, 'm1'));

    const devs: Dev[] = [];
    scope.defer(() => Promise.all(devs.map((d) => d.client.endAsync(true))));
    for (let i = 0; i < DEVICES; i += 25) {
      devs.push(...await Promise.all(Array.from({ length: Math.min(25, DEVICES - i) }, (_, k) => device(cluster.port, `${run}-d${i + k}`, (i + k) % 4 === 0))));
    }
    // HAProxy spread the devices over the 3 instances (the stick table says where each went).
    const perServer = [0, 0, 0, 0];
    for (const d of devs) perServer[await cluster.haproxy.stickOf(d.id)]++;
    assert.ok(perServer.slice(1).every((n) => n >= DEVICES / 10), `devices on instances 1, 2, 3 (unknown): ${perServer.slice(1).join(', ')} (${perServer[0]})`);

    const haproxyLogFrom = cluster.haproxy.log.length;
    let reloadedAt = 0;
    // /readyz of every instance, polled as HAProxy does (more often), across the reload.
    // Per instance: the spells of answers other than 200 ([first, last] Date.now()) and one of them.
    const notReady: { spells: [number, number][]; sample: string }[] = instances.map(() => ({ spells: [], sample: '' }));
    let polling = true;
    const poller = (async () => {
      const last = instances.map(() => true);
      while (polling) {
        await Promise.all(instances.map(async (d, i) => {
          const r = await fetch(`http://${HOST}:${httpPortOf(d)}/readyz`).catch(() => null);
          const body = r === null ? 'no answer' : await r.text();
          const now = Date.now();
          if (r?.status === 200) {
            last[i] = true;
            return;
          }
          if (last[i]) notReady[i].spells.push([now, now]);
          else notReady[i].spells.at(-1)![1] = now;
          last[i] = false;
          notReady[i].sample ||= `${r?.status} ${body}`;
        }));
        await sleep(20);
      }
    })();
    const spells = (): string => notReady.map((n, i) => `instance ${i + 1}: ${n.spells.length === 0 ? 'always 200'
      : `${n.spells.map(([a, b]) => `${a - reloadedAt}..${b - reloadedAt} ms`).join(', ')} (${n.sample})`}`).join('; ');
    scope.defer(async () => { polling = false; await poller; });

    // The stream: each device publishes QoS 1 every GAP_MS, at most WINDOW unacknowledged.
    const sent = new Set<string>();
    const acked = new Set<string>();
    const errors: string[] = [];
    let running = true;
    const loops = devs.map(async (d, n) => {
      await sleep((n * GAP_MS) / devs.length);
      const pending = new Set<Promise<void>>();
      while (running) {
        while (pending.size >= WINDOW) await Promise.race(pending);
        const key = `${run}/${d.id}/${d.seq++}`;
        sent.add(key);
        const p: Promise<void> = d.client.publishAsync(`${run}/${d.id}`, `${key}|`, { qos: 1 }).then(
          () => { acked.add(key); },
          (err: Error) => { errors.push(`${key}: ${err.message}`); },
        ).finally(() => pending.delete(p));
        pending.add(p);
        await sleep(GAP_MS);
      }
      await Promise.all(pending);
    });
    scope.defer(async () => { running = false; await Promise.race([Promise.all(loops), sleep(5000)]); });
    await sleep(BEFORE_MS);
    await waitFor('the stream to be under way before the reload', () => acked.size >= DEVICES * 5, {
      timeoutMs: 20_000, intervalMs: 100, detail: () => `${acked.size} of ${DEVICES * 5} acknowledged`,
    });

    // The reload: every file rewritten to m1 and m3, every instance told at once.
    const from = instances.map((d) => d.lines.length);
    for (const f of files) fs.writeFileSync(f, `# upstreams\nm1=${m1.url({ pool: 1 })}\nm3=${m3.url({ pool: 1 })}\n`);
    const ackedBefore = new Set(acked);
    reloadedAt = Date.now();
    instances[0].proc.kill('SIGHUP');
    const answers = Promise.all(instances.slice(1).map(async (d) => {
      const res = await fetch(`http://${HOST}:${httpPortOf(d)}/admin/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
      return { status: res.status, body: await res.json() as Record<string, unknown> };
    }));
    const logAfter = (i: number, pred: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> => {
      const d = instances[i];
      return waitFor(`a log line of instance ${i + 1}`, () => {
        const hit = d.lines.slice(from[i]).find(pred);
        if (hit === undefined && !d.running) throw new Error(`instance ${i + 1} exited; stderr: ${d.stderr.slice(-1000)}`);
        return hit;
      }, { timeoutMs, detail: () => d.lines.slice(from[i]).map((l) => l.msg).join(' | ').slice(-2000) });
    };
    // The new set is in force on every shard of every instance once each has logged this; the
    // lines are written off-thread, so they come after the moment they mark.
    const inForce = await Promise.all(instances.map((_, i) => logAfter(i, (l) => l.msg.startsWith('broker set reloaded'))));
    const sentBeforeApplied = new Set(sent);
    const appliedMs = Date.now() - reloadedAt;
    for (const [i, l] of inForce.entries()) assert.deepEqual(summaryOf(l), [['m3'], ['m2'], [], ['m1']], `instance ${i + 1}: the new set in force`);

    // Go on for AFTER_MS, and until a good part of the stream was published under the new set.
    await sleep(AFTER_MS);
    await waitFor('publishes sent under the new set to be acknowledged', () => [...acked].filter((k) => !sentBeforeApplied.has(k)).length >= DEVICES * 10, {
      timeoutMs: 20_000, intervalMs: 100, detail: () => `${[...acked].filter((k) => !sentBeforeApplied.has(k)).length} of ${DEVICES * 10}; devices connected: ${devs.filter((d) => d.client.connected).length}`,
    });
    running = false;
    await withTimeout(Promise.all(loops), 30_000, 'the devices\' last publishes to be acknowledged');
    polling = false;
    await poller;

    // Every instance finished the reload and says so; the removed broker took everything.
    const done = await Promise.all(instances.map((_, i) => logAfter(i, (l) => l.msg === 'configuration reloaded')));
    for (const [i, l] of done.entries()) assert.deepEqual(summaryOf(l), [['m3'], ['m2'], [], ['m1']], `instance ${i + 1}: configuration reloaded`);
    for (const [i, d] of instances.entries()) {
      const removed = d.lines.slice(from[i]).find((l) => l.msg.startsWith('broker removed'));
      assert.ok(removed !== undefined && removed.broker === 'm2', `instance ${i + 1} says m2 drained`);
      assert.deepEqual([removed.leftInRings, removed.leftInflight], [0, 0], `instance ${i + 1}: m2 took everything it held`);
      const unanswered = d.lines.slice(from[i]).filter((l) => l.msg.startsWith('publishes a removed broker did not acknowledge'));
      assert.deepEqual(unanswered, [], `instance ${i + 1}: publishes m2 did not acknowledge`);
      assert.equal(d.lines.filter((l) => l.level >= 60).length, 0, `instance ${i + 1}: no fatal line`);
    }
    for (const a of await answers) assert.deepEqual(a, { status: 200, body: { ok: true, added: ['m3'], removed: ['m2'], changed: [], unchanged: ['m1'] } });

    // Nothing lost.
    assert.deepEqual(errors, [], 'publishes that failed');
    assert.equal(acked.size, sent.size, 'every publish acknowledged');
    const all = [...acked];
    const later = all.filter((k) => !sentBeforeApplied.has(k));
    assert.ok(later.length >= DEVICES * 5, `a good part of the stream was published after the new set was in force (${later.length})`);
    await at1.waitAll(all, 'm1 (kept): every acknowledged publish');
    await at2.waitAll(ackedBefore, 'm2 (removed): every publish acknowledged before the reload');
    await at3.waitAll(later, 'm3 (added): every publish sent once all instances had the new set');
    // Those in between went to one or the other, as their shard had the old or the new set.
    await waitFor('every acknowledged publish at m2 or m3', () => all.every((k) => at2.seen.has(k) || at3.seen.has(k)), {
      timeoutMs: 10_000, detail: () => `missing at both: ${all.filter((k) => !at2.seen.has(k) && !at3.seen.has(k)).slice(0, 5).join(', ')}`,
    });
    assert.deepEqual(later.filter((k) => at2.seen.has(k)), [], 'publishes sent after the new set was in force that reached the removed m2');
    assert.deepEqual([...ackedBefore].filter((k) => at3.seen.has(k)), [], 'publishes acknowledged before the reload that reached the added m3');

    // The brokers' side: m1 kept each instance's connection, m2 saw each leave, m3 each arrive.
    for (const [i, d] of instances.entries()) {
      assert.equal(proxyConnects(m1, d.proxyId, 'm1'), m1Connects[i], `instance ${i + 1} reconnected to the unchanged m1`);
      await waitFor(`instance ${i + 1} disconnected from m2`, () => m2.log.includes(`Client ${d.proxyId}-m2-0 disconnected`), { timeoutMs: 10_000 });
      await waitFor(`instance ${i + 1} connected to m3`, () => proxyConnects(m3, d.proxyId, 'm3') > 0, { timeoutMs: 10_000 });
      assert.equal(proxyConnects(m3, d.proxyId, 'm3'), 1, `instance ${i + 1} connected to m3 once`);
      const ready = await fetch(`http://${HOST}:${httpPortOf(d)}/readyz`).then((r) => r.json()) as { brokers: { name: string }[] };
      assert.deepEqual(ready.brokers.map((b) => b.name), ['m1', 'm3'], `instance ${i + 1}: the brokers in service`);
    }

    const both = all.filter((k) => at2.seen.has(k) && at3.seen.has(k)).length;
    t.diagnostic(`devices per instance ${perServer.slice(1).join('/')}; ${all.length} publishes acknowledged: ${ackedBefore.size} before the reload, `
      + `${all.length - ackedBefore.size - later.length} between, ${later.length} after; new set in force on all instances ${appliedMs} ms after the reload was asked; `
      + `at both m2 and m3: ${both}; duplicates at m1/m2/m3: ${at1.duplicates}/${at2.duplicates}/${at3.duplicates}; `
      + `/readyz other than 200 (ms from the reload): ${spells()}`);

    // No device lost its connection, and HAProxy never took an instance out.
    const haproxySaid = cluster.haproxy.log.slice(haproxyLogFrom);
    const troubled = devs.filter((d) => d.events.length > 0 || !d.client.connected);
    assert.equal(troubled.length, 0, `${troubled.length} devices whose connection closed, e.g. `
      + `${troubled.slice(0, 5).map((d) => `${d.id}: ${d.events.join(',')} (first ${d.firstEventAt - reloadedAt} ms after the reload was asked)${d.client.connected ? '' : ' (not connected)'}`).join('; ')}; `
      + `/readyz other than 200 (ms from the reload): ${spells()}; HAProxy said: ${haproxySaid.slice(-3000)}`);
    assert.doesNotMatch(haproxySaid, /is DOWN/, 'HAProxy marked an instance down');
    assert.deepEqual([...(await cluster.haproxy.servers()).values()], ['UP', 'UP', 'UP']);
  });
});
