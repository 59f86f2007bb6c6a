// FANOUT_ACK=k: three brokers, one frozen with SIGSTOP. A daemon with k=2 keeps acknowledging its
// devices from the two others; one with `all` makes its devices wait; after SIGCONT the stalled
// broker has every message of both. A topic routed to one broker only is acknowledged by it
// alone (min(k, brokers the message goes to)).

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeClient, Collector, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { waitAllAt } from '../helpers/outage';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('FANOUT_ACK=k', { timeout: 120_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('three brokers, b3 stalled (SIGSTOP): with k=2 devices are acknowledged, with all they wait; b3 has everything after SIGCONT', async () => {
    const s = scope;
    const brokers = [await Mosquitto.start(), await Mosquitto.start(), await Mosquitto.start()].map((b) => s.use(b));
    const [b1, b2, b3] = brokers;
    s.defer(() => b3.resume());
    const list = brokers.map((b, i) => `b${i + 1}=${b.url({ pool: 1 })}`).join(',');
    const run = `quorum/${process.pid}-${Date.now()}`;
    // k=2: fleet/ goes to all three, solo/ to b1 only.
    const quorum = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: list, FANOUT_ACK: 2,
      FANOUT_ROUTES: `b1 ${run}/# out; b2 ${run}/fleet/# out; b3 ${run}/fleet/# out`,
    }));
    const everyOne = s.use(await DaemonProcess.start({ FANOUT_BROKERS: list, FANOUT_ACK: 'all' }));
    for (const d of [quorum, everyOne]) {
      for (const [i, b] of brokers.entries()) await waitPoolOnline(b.port, d.proxyId, `b${i + 1}`, 1);
    }
    const at = await Promise.all(brokers.map(async (b) => s.use(await Collector.start(b.port, `${run}/#`, { qos: 1 }))));
    const kDevice = await connectClient(quorum.port, { clientId: `quorum-k-${process.pid}`, protocolVersion: 5 });
    s.defer(() => closeClient(kDevice));
    const allDevice = await connectClient(everyOne.port, { clientId: `quorum-all-${process.pid}` });
    s.defer(() => closeClient(allDevice));

    b3.pause();
    const kTopics = Array.from({ length: 30 }, (_, i) => `${run}/fleet/k/${i}`);
    const allTopics = Array.from({ length: 10 }, (_, i) => `${run}/fleet/all/${i}`);
    let allAcked = 0;
    const allPublishes = allTopics.map((topic, i) =>
      publish(allDevice, topic, topic, { qos: (i % 2 + 1) as 1 | 2 }, 60_000).then(() => { allAcked++; }));
    // k=2: every publish is acknowledged while b3 stands still.
    await Promise.all(kTopics.map((topic, i) => publish(kDevice, topic, topic, { qos: (i % 2 + 1) as 1 | 2 }, 20_000)));
    await publish(kDevice, `${run}/solo/1`, 'solo', { qos: 1 }, 20_000);
    await waitAllAt(at[0], 'b1', `${run}/`, [...kTopics, ...allTopics, `${run}/solo/1`], 10_000);
    await waitAllAt(at[1], 'b2', `${run}/fleet/`, [...kTopics, ...allTopics], 10_000);
    assert.equal(at[1].count((m) => m.topic.startsWith(`${run}/solo/`)), 0, 'solo/ is routed to b1 only');
    // `all`: b1 and b2 have its messages, yet its device is still waiting for b3.
    await sleep(1000);
    assert.equal(allAcked, 0, `${allAcked} publishes were acknowledged while b3 was stopped (FANOUT_ACK=all)`);

    b3.resume();
    await waitFor('the `all` device to be acknowledged after SIGCONT', () => allAcked === allTopics.length, { timeoutMs: 20_000, detail: () => `${allAcked} acked` });
    await Promise.all(allPublishes);
    await waitAllAt(at[2], 'b3 (resumed)', `${run}/`, [...kTopics, ...allTopics], 20_000);
    assert.equal(at[2].count((m) => m.topic.startsWith(`${run}/solo/`)), 0, 'solo/ is routed to b1 only');
    assert.ok(b1.running && b2.running && b3.running);
  });
});
