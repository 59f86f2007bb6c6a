// FANOUT_ROUTES end to end, against two mosquittos: which broker gets which device publish and
// under which topic, which broker serves which device subscription, prefix remapping both ways,
// the QoS cap of a route, and no loop (a message from a broker never goes out to a broker).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('routes: cloud gets telemetry under site42/ at QoS <= 1 and serves cmd/ from fleet/site42/cmd/; site gets and serves everything', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let cloud: Mosquitto;
  let site: Mosquitto;
  let daemon: DaemonProcess;
  let atCloud: Collector;
  let atSite: Collector;

  before(async () => {
    cloud = scope.use(await Mosquitto.start());
    site = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `cloud=${cloud.url({ pool: 1 })},site=${site.url({ pool: 1 })}`,
      FANOUT_ROUTES: 'cloud telemetry/# out 1 "" site42/; cloud cmd/# in 1 "" fleet/site42/; site # both',
    }));
    await waitPoolOnline(cloud.port, daemon.proxyId, 'cloud', 1);
    await waitPoolOnline(site.port, daemon.proxyId, 'site', 1);
    atCloud = scope.use(await Collector.start(cloud.port, '#', { qos: 2, protocolVersion: 5 }));
    atSite = scope.use(await Collector.start(site.port, '#', { qos: 2, protocolVersion: 5 }));
  });
  after(() => scope.close());

  test('out: telemetry reaches the cloud remapped under site42/ and capped at QoS 1, the site as it is; other topics only the site', async (t) => {
    const dev = await connectClient(daemon.port, { clientId: `rt-out-${process.pid}` });
    t.after(() => closeClient(dev));
    await publish(dev, 'telemetry/t1/temp', '21.5', { qos: 2 });
    await publish(dev, 'status/t1', 'ok', { qos: 1 });
    const [c] = await atCloud.waitForCount(1, (m) => m.topic === 'site42/telemetry/t1/temp', 10_000, 'telemetry at the cloud');
    assert.equal(c.qos, 1, 'the route caps QoS at 1');
    assert.equal(c.payload.toString(), '21.5');
    const [s] = await atSite.waitForCount(1, (m) => m.topic === 'telemetry/t1/temp', 10_000, 'telemetry at the site');
    assert.equal(s.qos, 2);
    await atSite.waitForCount(1, (m) => m.topic === 'status/t1', 10_000, 'status at the site');
    await sleep(300);
    assert.equal(atCloud.count((m) => m.topic.includes('status/t1')), 0, 'status/# has no route to the cloud');
    assert.equal(atCloud.count((m) => m.topic === 'telemetry/t1/temp'), 0, 'the cloud must only see the remapped topic');
  });

  test('in: a device subscription to cmd/dev7/# is served by the cloud from fleet/site42/cmd/dev7/# and by the site as it is', async (t) => {
    const dev = await connectClient(daemon.port, { clientId: `rt-in-${process.pid}` });
    t.after(() => closeClient(dev));
    const got: { topic: string; payload: string; qos: number }[] = [];
    dev.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), qos: packet.qos }));
    const granted = await dev.subscribeAsync('cmd/dev7/#', { qos: 2 });
    assert.equal(granted[0].qos, 2, 'the site serves the filter at QoS 2 (the cloud route would cap at 1)');
    const fromCloud = await connectClient(cloud.port, { clientId: `rt-cloudpub-${process.pid}` });
    t.after(() => closeClient(fromCloud));
    const fromSite = await connectClient(site.port, { clientId: `rt-sitepub-${process.pid}` });
    t.after(() => closeClient(fromSite));
    await publish(fromCloud, 'fleet/site42/cmd/dev7/reboot', 'from cloud', { qos: 2 });
    await publish(fromCloud, 'cmd/dev7/ignored', 'not in the cloud route', { qos: 1 });
    await publish(fromSite, 'cmd/dev7/config', 'from site', { qos: 1 });
    await waitForMessages(got, 2);
    await sleep(300);
    const cloudMsg = got.find((m) => m.payload === 'from cloud');
    assert.deepEqual(cloudMsg, { topic: 'cmd/dev7/reboot', payload: 'from cloud', qos: 1 }, 'remapped to the local topic, QoS capped by the route');
    assert.ok(got.some((m) => m.topic === 'cmd/dev7/config' && m.payload === 'from site'));
    assert.equal(got.filter((m) => m.payload === 'not in the cloud route').length, 0, 'cloud topics outside fleet/site42/ are not served');
  });

  test('no loop: what a broker sends to devices is never published to a broker', async (t) => {
    const dev = await connectClient(daemon.port, { clientId: `rt-loop-${process.pid}` });
    t.after(() => closeClient(dev));
    const got: string[] = [];
    dev.on('message', (topic) => got.push(topic));
    await dev.subscribeAsync('telemetry/loop/#', { qos: 1 });
    const fromSite = await connectClient(site.port, { clientId: `rt-looppub-${process.pid}` });
    t.after(() => closeClient(fromSite));
    const before = atCloud.messages.length;
    const beforeSite = atSite.count((m) => m.topic === 'telemetry/loop/x');
    await publish(fromSite, 'telemetry/loop/x', 'from the site', { qos: 1 });
    await waitForMessages(got, 1);
    await sleep(500);
    assert.equal(atCloud.messages.length, before, 'the cloud must not receive a message that came in from the site');
    assert.equal(atSite.count((m) => m.topic === 'telemetry/loop/x') - beforeSite, 1, 'the site has the original publish only');
  });
});

async function waitForMessages(list: unknown[], n: number): Promise<void> {
  await waitFor(`${n} messages at the device`, () => list.length >= n, { timeoutMs: 10_000, detail: () => `got ${list.length}` });
}
