// Client-id ownership across instances (src/cluster/ownership.ts) against a real redis-server:
// the orderings a reconnection storm produces after an instance goes away. The old owner is a
// name whose alive key is set by hand and a Redis connection listening on its control channel
// that never answers: claims wait for it like for an instance frozen or cut off, until its alive
// key expires; closing that connection is what a kill -9 does.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import Redis from 'ioredis';
import { HANDOVER_TIMEOUT_MS, Ownership } from '../../src/cluster/ownership';
import { RedisServer } from '../helpers/redis';
import { sleep } from '../helpers/wait';

const log = pino({ level: 'silent' });
let redis: RedisServer;
before(async () => {
  redis = await RedisServer.start();
});
after(() => redis.close());

/** The value of a Redis string key ('' when there is none). */
async function get(key: string): Promise<string> {
  const answer = await redis.command(['GET', key]);
  const m = /^\$\d+\r\n(.*)\r\n$/s.exec(answer);
  return m === null ? '' : m[1];
}

/** `clientId` owned by an instance that stopped answering: its alive key expires in `aliveMs`;
 *  its connection to Redis stays until the returned function closes it (the process dies). */
async function ownedBySilent(clientId: string, old: string, aliveMs: number): Promise<() => void> {
  await redis.command(['SET', `fanout:own:${clientId}`, old, 'PX', '600000']);
  await redis.command(['SET', `fanout:alive:${old}`, '1', 'PX', String(aliveMs)]);
  const listener = new Redis(redis.url);
  await listener.subscribe(`fanout:ctl:${old}`);
  return () => listener.disconnect();
}

interface Node {
  own: Ownership;
  /** Client ids this instance was told to end (kick or handover), in order. */
  ended: string[];
}

async function node(name: string): Promise<Node> {
  const ended: string[] = [];
  const own = new Ownership(redis.url, name, log, 3600, {
    kick: (clientId) => ended.push(clientId),
    handover: (clientId, done) => {
      ended.push(clientId);
      done();
    },
  });
  await own.start();
  return { own, ended };
}

test('a release made while the claim waits for a silent owner runs after it: the instance keeps no key of a client id it does not serve', async (t) => {
  const b = await node('b:1');
  try {
    const die = await ownedBySilent('dev-release', 'old:1', 700);
    t.after(die);
    const claimed = b.own.claim('dev-release', false);
    await sleep(100);
    // The connection went meanwhile (the registry let go of the id).
    b.own.release('dev-release');
    const r = await claimed;
    assert.equal(r.ok, true);
    await sleep(100);
    assert.equal(await get('fanout:own:dev-release'), '', 'no instance owns the client id');
  } finally {
    await b.own.stop();
  }
});

test('two instances claiming one client id of a silent owner: one ends up with it and the other is told to end its connection', async (t) => {
  const b = await node('b:2');
  const c = await node('c:2');
  try {
    const die = await ownedBySilent('dev-race', 'old:2', 700);
    t.after(die);
    const [rb, rc] = await Promise.all([b.own.claim('dev-race', false), c.own.claim('dev-race', false)]);
    assert.ok(rb.ok && rc.ok);
    const owner = await get('fanout:own:dev-race');
    assert.ok(owner === 'b:2' || owner === 'c:2', `a live instance owns it (${owner})`);
    const loser = owner === 'b:2' ? c : b;
    const winner = owner === 'b:2' ? b : c;
    assert.deepEqual(loser.ended, ['dev-race'], 'the instance that does not own the client id was told to end its connection');
    assert.deepEqual(winner.ended, [], 'the owner was not');
    const counters = [b.own.counters, c.own.counters];
    assert.equal(counters.reduce((n, k) => n + k.contended, 0), 1, 'one claim found the key taken meanwhile and asked that instance');
  } finally {
    await Promise.all([b.own.stop(), c.own.stop()]);
  }
});

test('a claim whose connection went while it waited for a silent owner gives up and takes nothing', async (t) => {
  const b = await node('b:3');
  try {
    const die = await ownedBySilent('dev-gone', 'old:3', 700);
    t.after(die);
    let wanted = true;
    const claimed = b.own.claim('dev-gone', false, () => wanted);
    await sleep(100);
    wanted = false;
    const r = await claimed;
    assert.deepEqual(r, { ok: true, state: null, abandoned: true });
    assert.equal(await get('fanout:own:dev-gone'), 'old:3', 'the key was left as it was');
    assert.equal(b.own.counters.abandoned, 1);
  } finally {
    await b.own.stop();
  }
});

test('an owner killed while a claim waits for its answer is taken from at once: its listener is gone, its alive key need not expire', async (t) => {
  const b = await node('b:4');
  try {
    const die = await ownedBySilent('dev-killed', 'old:4', 600_000);
    t.after(die);
    const started = Date.now();
    const claimed = b.own.claim('dev-killed', false);
    await sleep(200);
    die();
    const r = await claimed;
    const ms = Date.now() - started;
    assert.equal(r.ok, true);
    assert.equal(await get('fanout:own:dev-killed'), 'b:4', 'taken');
    assert.ok(ms < HANDOVER_TIMEOUT_MS, `taken in ${ms} ms, before the handover timeout (${HANDOVER_TIMEOUT_MS} ms)`);
    assert.equal(await get('fanout:alive:old:4'), '1', 'while the dead owner\'s alive key was still there');
    assert.equal(b.own.counters.takenFromGone, 1);
  } finally {
    await b.own.stop();
  }
});
