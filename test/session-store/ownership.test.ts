// Client-id ownership across instances (src/cluster/ownership.ts) against a real redis-server:
// the orderings a reconnection storm produces after an instance dies. The dead instance is a
// name whose alive key is set by hand, with a short expiry: claims wait for it like for a real
// instance just killed (whose alive key outlives it by up to ALIVE_MS).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Ownership } from '../../src/cluster/ownership';
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

/** `clientId` owned by an instance that just died: its alive key expires in `aliveMs`. */
async function ownedByDead(clientId: string, dead: string, aliveMs: number): Promise<void> {
  await redis.command(['SET', `fanout:own:${clientId}`, dead, 'PX', '600000']);
  await redis.command(['SET', `fanout:alive:${dead}`, '1', 'PX', String(aliveMs)]);
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

test('a release made while the claim waits for a dead owner runs after it: the instance keeps no key of a client id it does not serve', async () => {
  const b = await node('b:1');
  try {
    await ownedByDead('dev-release', 'dead:1', 700);
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

test('two instances claiming one client id of a dead owner: one ends up with it and the other is told to end its connection', async () => {
  const b = await node('b:2');
  const c = await node('c:2');
  try {
    await ownedByDead('dev-race', 'dead:2', 700);
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

test('a claim whose connection went while it waited for a dead owner gives up and takes nothing', async () => {
  const b = await node('b:3');
  try {
    await ownedByDead('dev-gone', 'dead:3', 700);
    let wanted = true;
    const claimed = b.own.claim('dev-gone', false, () => wanted);
    await sleep(100);
    wanted = false;
    const r = await claimed;
    assert.deepEqual(r, { ok: true, state: null, abandoned: true });
    assert.equal(await get('fanout:own:dev-gone'), 'dead:3', 'the key was left as it was');
    assert.equal(b.own.counters.abandoned, 1);
  } finally {
    await b.own.stop();
  }
});
