// Sessions in Redis (FANOUT_SESSION_STORE): a device that connects twice while its first CONNECT
// still waits for the session of an instance that stopped answering (frozen with SIGSTOP: its
// connections to Redis stay, its alive key outlives it by up to 3 s, so the claim waits). The
// second CONNECT lands on either shard of the instance; on both it must resume the recorded
// session (session present 1, the queued message, the subscription), not start an empty one
// that would also wipe the record. The race of a reconnection storm, where a device gives up on a
// slow CONNACK and tries again.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt, { type IConnackPacket, type MqttClient } from 'mqtt';
import { Mosquitto } from '../helpers/mosquitto';
import { RedisServer } from '../helpers/redis';
import { startInstance } from '../helpers/cluster';
import { connectClient, urlOf } from '../helpers/clients';
import { Scope, sleep, waitFor } from '../helpers/wait';

/** Devices, each connecting twice: with 2 shards the pairs land on the same and on different shards. */
const DEVICES = 8;

test('a second CONNECT while the first waits for the session of a frozen instance resumes the recorded session, on either shard', { timeout: 120_000 }, async (t) => {
  const scope = new Scope();
  t.after(() => scope.close());
  const m = scope.use(await Mosquitto.start());
  const redis = scope.use(await RedisServer.start());
  // The trace lines say which shard each CONNECT landed on.
  const env = { FANOUT_BROKERS: `m=${m.url()}`, FANOUT_SESSION_STORE: redis.url, FANOUT_SHARDS: 2, FANOUT_TRACE_CLIENTS: 'race-*' };
  const i1 = scope.use(await startInstance(env, 0));
  const i2 = scope.use(await startInstance(env, 1));
  const pub = await connectClient(m.port, { clientId: 'race-publisher', clean: true });
  scope.defer(() => pub.endAsync(true));
  const ids = Array.from({ length: DEVICES }, (_, k) => `race-${k}`);
  const v5 = (k: number): boolean => k % 2 === 0;
  const opts = (id: string, k: number): mqtt.IClientOptions => ({
    clientId: id, clean: false, protocolVersion: v5(k) ? 5 : 4, reconnectPeriod: 0, connectTimeout: 30_000,
    ...(v5(k) ? { properties: { sessionExpiryInterval: 600 } } : {}),
  });

  // Sessions on instance 1, each with a subscription and a message queued while the device is away.
  for (const [k, id] of ids.entries()) {
    const c = await connectClient(i1.port, opts(id, k));
    await c.subscribeAsync(`race/${id}`, { qos: 1 });
    await c.endAsync(false);
    await pub.publishAsync(`race/${id}`, `queued:${id}`, { qos: 1 });
  }
  const recorded = async (id: string): Promise<boolean> => (await redis.command(['HKEYS', `fanout:s:${id}`])).includes('q:');
  await waitFor('the queued messages recorded in Redis', async () => (await Promise.all(ids.map(recorded))).every(Boolean));

  i1.proc.kill('SIGSTOP');
  // First CONNECTs: each waits for instance 1's alive key to expire.
  const firsts: MqttClient[] = ids.map((id, k) => {
    const c = mqtt.connect(urlOf(i2.port), opts(id, k));
    c.on('error', () => undefined);
    scope.defer(() => c.endAsync(true));
    return c;
  });
  const firstConnacks = firsts.map(() => 0);
  firsts.forEach((c, k) => c.on('connect', () => firstConnacks[k]++));
  await sleep(300);
  // The device tries again meanwhile.
  const seconds = await Promise.all(ids.map((id, k) => new Promise<{ client: MqttClient; present: boolean; got: string[] }>((resolve, reject) => {
    const client = mqtt.connect(urlOf(i2.port), opts(id, k));
    scope.defer(() => client.endAsync(true));
    const got: string[] = [];
    // The listener is there before the CONNACK: the queued message follows it at once.
    client.on('message', (_t, p) => got.push(p.toString()));
    client.once('connect', (connack: IConnackPacket) => resolve({ client, present: connack.sessionPresent, got }));
    client.once('error', reject);
    client.once('close', () => reject(new Error(`${id}: second connection closed before its CONNACK`)));
  })));
  for (const s of seconds) s.client.on('error', () => undefined).removeAllListeners('close');

  const shardsOf = (id: string): string => i2.connectShards(id).join(',');
  for (const [k, id] of ids.entries()) {
    assert.equal(seconds[k].present, true, `${id}: session present on the second CONNECT (shards ${shardsOf(id)}; warnings: ${i2.problems().filter((l) => JSON.stringify(l).includes(id)).map((l) => JSON.stringify(l)).join('; ')})`);
    assert.equal(firstConnacks[k], 0, `${id}: the first connection, taken over, had no CONNACK`);
  }
  await waitFor('the queued message at every device', () => seconds.every((s, k) => s.got.includes(`queued:${ids[k]}`)), {
    detail: () => seconds.map((s, k) => `${ids[k]}: [${s.got.join(',')}]`).join('; '),
  });
  for (const id of ids) await pub.publishAsync(`race/${id}`, `after:${id}`, { qos: 1 });
  await waitFor('a message after the resume, by the recorded subscription', () => seconds.every((s, k) => s.got.includes(`after:${ids[k]}`)), {
    detail: () => seconds.map((s, k) => `${ids[k]}: [${s.got.join(',')}]`).join('; '),
  });
  for (const id of ids) {
    const owner = await redis.command(['GET', `fanout:own:${id}`]);
    assert.ok(owner.includes(i2.proxyId), `${id} is owned by instance 2 (${owner.trim()})`);
  }
  await i1.close();
  const pairs = ids.map((id) => i2.connectShards(id)).filter((s) => s.length >= 2);
  t.diagnostic(`CONNECT pairs on one shard: ${pairs.filter((s) => s[0] === s[1]).length}, on two: ${pairs.filter((s) => s[0] !== s[1]).length}`);
});
