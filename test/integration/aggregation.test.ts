// One upstream subscription per distinct filter: however many devices, on however many shards,
// hold a filter, the broker gets one SUBSCRIBE for it on the connection that holds the live
// subscriptions, and its UNSUBSCRIBE only when the last holder is gone. Counted in mosquitto's
// own log (log_type subscribe / unsubscribe), not in the daemon's.
//
// With an MQTT 5 broker and a pool of 2 (the setting here), connection -0 holds the live
// subscriptions; connection -1 fetches the retained messages of each new device subscription
// with a short-lived subscription of its own (subscribed again for each new device, which makes
// the broker send the retained messages again), unsubscribed once the fetches are over (also
// checked).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { MqttClient } from 'mqtt';
import { closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('upstream subscriptions are aggregated per distinct filter', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;

  before(async () => {
    up = scope.use(await Mosquitto.start({ extraConfig: ['log_type subscribe', 'log_type unsubscribe'] }));
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `up=${up.url({ pool: 2 })}`, FANOUT_SHARDS: 2, FANOUT_TRACE_CLIENTS: 'agg-*',
    }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 2);
  });
  after(() => scope.close());

  /** mosquitto's log lines "<client id> <qos> <filter>" (SUBSCRIBE) and "<client id> <filter>"
   *  (UNSUBSCRIBE) for `filter`, by connection of the daemon's pool. */
  const events = (filter: string, conn: number): ('subscribe' | 'unsubscribe')[] => {
    const id = `${daemon.proxyId}-up-${conn}`;
    const out: ('subscribe' | 'unsubscribe')[] = [];
    for (const line of up.log.split('\n')) {
      const m = /^\d+: (\S+) (?:(\d) )?(\S+)$/.exec(line);
      if (m !== null && m[1] === id && m[3] === filter) out.push(m[2] === undefined ? 'unsubscribe' : 'subscribe');
    }
    return out;
  };
  const upstream = (filter: string, conn: number): { subscribes: number; unsubscribes: number } => {
    const e = events(filter, conn);
    return { subscribes: e.filter((x) => x === 'subscribe').length, unsubscribes: e.filter((x) => x === 'unsubscribe').length };
  };

  test('6+ devices on both shards holding two filters: one SUBSCRIBE per filter upstream, each message once per device, the UNSUBSCRIBE only after the last holder left', async (t) => {
    const run = `agg/${process.pid}-${Date.now()}`;
    const shared = `${run}/+/t`;
    const other = `${run}/x/#`;
    const devices: { client: MqttClient; id: string; shard: number; got: string[] }[] = [];
    t.after(() => Promise.all(devices.map((d) => closeClient(d.client))));
    const onShard = (s: number): number => devices.filter((d) => d.shard === s).length;
    // Until both shards hold the filter for at least 3 devices each (the kernel spreads them).
    for (let i = 0; devices.length < 6 || onShard(0) < 3 || onShard(1) < 3; i++) {
      assert.ok(i < 40, `40 devices and still not 3 on each shard: ${devices.map((d) => d.shard).join(',')}`);
      const id = `agg-${process.pid}-${i}`;
      const client = await connectClient(daemon.port, { clientId: id, protocolVersion: i % 2 === 0 ? 5 : 4 });
      const got: string[] = [];
      client.on('message', (topic) => got.push(topic));
      devices.push({ client, id, shard: await daemon.shardOfConnect(id), got });
      await client.subscribeAsync(i % 3 === 0 ? [shared, other] : [shared], { qos: 1 });
    }
    t.diagnostic(`devices per shard: ${onShard(0)} / ${onShard(1)}`);
    // The retained fetches on -1 (one SUBSCRIBE per new device subscription) end on their own.
    await waitFor('the retained-message fetches to be unsubscribed', () => [shared, other].every((f) => events(f, 1).at(-1) === 'unsubscribe'),
      { timeoutMs: 10_000, detail: () => up.log.slice(-2000) });
    assert.deepEqual(upstream(shared, 0), { subscribes: 1, unsubscribes: 0 }, `${shared} at connection -0; broker log tail: ${up.log.slice(-2000)}`);
    assert.deepEqual(upstream(other, 0), { subscribes: 1, unsubscribes: 0 }, `${other} at connection -0`);

    // One upstream copy reaches every holder once.
    const pub = await connectClient(up.port, { clientId: `agg-pub-${process.pid}` });
    t.after(() => closeClient(pub));
    await publish(pub, `${run}/x/t`, 'both filters', { qos: 1 });
    await publish(pub, `${run}/y/t`, 'shared only', { qos: 1 });
    await waitFor('every device to get its messages', () => devices.every((d) => d.got.length >= 2), { timeoutMs: 10_000 });
    await sleep(300);
    for (const [i, d] of devices.entries()) {
      const where = `device ${d.id} on shard ${d.shard} got ${JSON.stringify(d.got)}`;
      assert.equal(d.got.filter((x) => x === `${run}/y/t`).length, 1, where);
      // Holding both filters, a device may get the message matching both once per subscription.
      if (i % 3 === 0) assert.ok(d.got.filter((x) => x === `${run}/x/t`).length >= 1, where);
      else assert.equal(d.got.length, 2, where);
    }

    // Holders leave one at a time, by UNSUBSCRIBE or by closing: no UNSUBSCRIBE upstream until the last.
    for (const [i, d] of [...devices].entries()) {
      if (i % 2 === 0) await d.client.unsubscribeAsync(shared);
      else await closeClient(d.client);
      const last = i === devices.length - 1;
      if (!last) {
        await sleep(150);
        assert.equal(upstream(shared, 0).unsubscribes, 0, `UNSUBSCRIBE upstream with ${devices.length - 1 - i} holders left`);
      }
    }
    await waitFor(`the UNSUBSCRIBE of ${shared} after the last holder`, () => upstream(shared, 0).unsubscribes === 1, { timeoutMs: 10_000, detail: () => up.log.slice(-2000) });
    assert.deepEqual(upstream(shared, 0), { subscribes: 1, unsubscribes: 1 });
    // Device 0 unsubscribed the shared filter only: it still holds the other one, upstream too.
    assert.equal(upstream(other, 0).unsubscribes, 0, `${other} is still held by device 0`);
    for (const [i, d] of devices.entries()) if (i % 2 === 0) await closeClient(d.client);
    await waitFor(`the UNSUBSCRIBE of ${other} after its last holder`, () => upstream(other, 0).unsubscribes === 1, { timeoutMs: 10_000, detail: () => up.log.slice(-2000) });
    assert.deepEqual(upstream(other, 0), { subscribes: 1, unsubscribes: 1 });
  });
});
