// Failover addresses: one broker `b` reached at two mosquittos, the URL's p first and then s
// (`failover=`). p killed mid-stream (QoS 1): the pool goes on at s and nothing acknowledged is
// lost; p started again: the pool moves back to it after primaryCheckMs. The status topic and
// /metrics say which address each connection is on.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeClient, Collector, connectClient, waitPoolOnline } from '../helpers/clients';
import { httpPortOf } from '../helpers/cluster';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { ackedBy, distinct, Publisher, waitAllAt } from '../helpers/outage';
import { HOST } from '../helpers/ports';
import { parsePrometheus } from '../helpers/prometheus';
import { Scope, waitFor } from '../helpers/wait';

/** connection -> the address /metrics says it is up on ('' when none). */
async function addressesInMetrics(daemon: DaemonProcess): Promise<Map<string, string>> {
  const text = await (await fetch(`http://${HOST}:${httpPortOf(daemon)}/metrics`)).text();
  const family = parsePrometheus(text).get('fanout_broker_connection_address');
  const out = new Map<string, string>();
  for (const sample of family?.samples ?? []) {
    if (sample.labels.broker !== 'b') continue;
    if (!out.has(sample.labels.connection)) out.set(sample.labels.connection, '');
    if (sample.value === 1) out.set(sample.labels.connection, sample.labels.address);
  }
  return out;
}

async function waitMetricsOn(daemon: DaemonProcess, address: string, pool: number): Promise<void> {
  let last = new Map<string, string>();
  await waitFor(`/metrics to show the ${pool} connections on ${address}`, async () => {
    last = await addressesInMetrics(daemon);
    return last.size === pool && [...last.values()].every((a) => a === address);
  }, { timeoutMs: 20_000, detail: () => JSON.stringify([...last]) });
}

/** The latest retained status of each of the daemon's connections at a broker. */
async function statusAt(port: number, proxyId: string): Promise<Record<string, string>> {
  const c = await Collector.start(port, 'fanout/status/+', { qos: 1 });
  try {
    await waitFor('retained status messages', () => c.messages.length >= 2, { timeoutMs: 5000 });
    const latest: Record<string, string> = {};
    for (const m of c.messages) if (m.topic.startsWith(`fanout/status/${proxyId}-b-`)) latest[m.topic] = m.payload.toString();
    return latest;
  } finally {
    await c.close();
  }
}

describe('failover addresses', { timeout: 180_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('the first address killed mid-stream at QoS 1: the pool goes on at the second, nothing acknowledged is lost; it returns to the first once it is back', async (t) => {
    const s = scope;
    const p = s.use(await Mosquitto.start());
    const sec = s.use(await Mosquitto.start());
    const pAddress = `${HOST}:${p.port}`;
    const sAddress = `${HOST}:${sec.port}`;
    const pool = 2;
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b=${p.url({ pool, failover: sAddress, primaryCheckMs: 1000 })}`,
      FANOUT_HTTP_PORT: 0,
      // Traced, so that the daemon's log tells which messages the killed p had acknowledged.
      FANOUT_TRACE_CLIENTS: `failover-${process.pid}-*`,
    }));
    await waitPoolOnline(p.port, daemon.proxyId, 'b', pool, 20_000, `online ${pAddress}`);
    await waitMetricsOn(daemon, pAddress, pool);

    const run = `failover/${process.pid}-${Date.now()}`;
    const atP = s.use(await Collector.start(p.port, `${run}/#`, { qos: 1, reconnect: true }));
    const atS = s.use(await Collector.start(sec.port, `${run}/#`, { qos: 1 }));
    const publishers: Publisher[] = [];
    for (let d = 0; d < 4; d++) {
      const client = await connectClient(daemon.port, { clientId: `failover-${process.pid}-${d}`, protocolVersion: d % 2 === 0 ? 4 : 5 });
      s.defer(() => closeClient(client));
      publishers.push(new Publisher(client, Array.from({ length: 1500 }, (_, i) => `${run}/${d}/${i}`)));
    }
    const all = publishers.flatMap((x) => x.topics);
    const acked = (): number => publishers.reduce((n, x) => n + x.acked, 0);
    // About 400 messages a second, so that the stream outlasts the outage and the return.
    const streaming = Promise.all(publishers.map((x) => x.run(20, 2, 20)));

    await waitFor('1,000 acknowledged publishes before the kill', () => acked() >= 1000, { timeoutMs: 30_000, detail: () => `${acked()} acked` });
    await p.kill();
    const killedAt = Date.now();
    await waitPoolOnline(sec.port, daemon.proxyId, 'b', pool, 20_000, `online ${sAddress}`);
    await waitMetricsOn(daemon, sAddress, pool);
    const ackedAtFailover = acked();

    await p.start();
    // p started empty: a retained status there can only come from connections moving back.
    await waitPoolOnline(p.port, daemon.proxyId, 'b', pool, 20_000, `online ${pAddress}`);
    await waitMetricsOn(daemon, pAddress, pool);
    const ackedAtReturn = acked();
    const sentAtReturn = publishers.map((x) => x.sent);
    t.diagnostic(`p killed after 1,000+ acks; ${ackedAtFailover} acked when the pool was on s, ${ackedAtReturn} when it was back on p`);
    assert.ok(ackedAtReturn < all.length, 'the stream was over before the pool returned: the test proves nothing');
    assert.ok(ackedAtReturn > ackedAtFailover, 'nothing was acknowledged while the pool was on s');
    assert.deepEqual(Object.values(await statusAt(sec.port, daemon.proxyId)), Array(pool).fill('offline'),
      'connections leaving s say so there');

    await waitFor('every publish to be acknowledged', () => acked() === all.length, {
      timeoutMs: 90_000, detail: () => `${acked()} of ${all.length} acked; errors: ${publishers.flatMap((x) => x.errors).map((e) => e.message).slice(0, 3).join('; ')}`,
    });
    await streaming;
    assert.deepEqual(publishers.flatMap((x) => x.errors).map((e) => e.message), []);
    // What was published once the pool was back on p went to p.
    const afterReturn = publishers.flatMap((x, d) => x.topics.slice(sentAtReturn[d]));
    await waitAllAt(atP, 'p after the return', `${run}/`, afterReturn, 30_000);
    // Every message is at p or s, except what p acknowledged and then lost in the kill -9.
    const lostByBroker = ackedBy(daemon.lines, 'b', killedAt);
    const expected = all.filter((topic) => !lostByBroker.has(topic));
    await waitFor('every message at p or s', () => {
      const got = new Set([...distinct(atP, `${run}/`), ...distinct(atS, `${run}/`)]);
      return expected.every((topic) => got.has(topic));
    }, { timeoutMs: 30_000 });
    const got = new Set([...distinct(atP, `${run}/`), ...distinct(atS, `${run}/`)]);
    const brokerLost = all.filter((topic) => !got.has(topic));
    t.diagnostic(`at s: ${distinct(atS, `${run}/`).size}; p acknowledged ${lostByBroker.size} before the kill and lost ${brokerLost.length} of them`);
    assert.ok(distinct(atS, `${run}/`).size > 0, 'nothing went to s');
    assert.ok(brokerLost.length <= 100, `p lost ${brokerLost.length} acknowledged messages: more than a kill -9 can explain`);
  });
});
