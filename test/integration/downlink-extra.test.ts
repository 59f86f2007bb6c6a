// Downlink behaviours the conformance suite does not reach: a QoS the broker lowers shows in the
// device's SUBACK, topic aliases towards an MQTT 5 device that allows them, and reason strings
// on a protocol-error DISCONNECT.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { IPublishPacket, Packet } from 'mqtt';
import { closeClient, connectClient, publish, RawClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, waitFor } from '../helpers/wait';

describe('downlink extras (broker with max_qos 1)', { timeout: 60_000 }, () => {
  const scope = new Scope();
  let up: Mosquitto;
  let daemon: DaemonProcess;

  before(async () => {
    up = scope.use(await Mosquitto.start({ extraConfig: ['max_qos 1'] }));
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 2, protocol: 5 })}` }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 2);
  });
  after(() => scope.close());

  test('a filter the broker grants at a lower QoS is granted at that QoS to the device (3.1.1 and 5)', async (t) => {
    for (const protocolVersion of [4, 5] as const) {
      const dev = await connectClient(daemon.port, { clientId: `lowq-${protocolVersion}-${process.pid}`, protocolVersion });
      t.after(() => closeClient(dev));
      const granted = await dev.subscribeAsync({ [`lowq/${protocolVersion}/a`]: { qos: 2 }, [`lowq/${protocolVersion}/b`]: { qos: 0 } });
      assert.deepEqual(granted.map((g) => g.qos), [1, 0]);
    }
  });

  test('topic aliases towards a device that allows them: the topic once, then the alias alone', async (t) => {
    const dev = await connectClient(daemon.port, { clientId: `alias-${process.pid}`, protocolVersion: 5, properties: { topicAliasMaximum: 4 } });
    t.after(() => closeClient(dev));
    const raw: IPublishPacket[] = [];
    dev.on('packetreceive', (p: Packet) => { if (p.cmd === 'publish') raw.push({ ...p, topic: p.topic }); });
    const topics: string[] = [];
    dev.on('message', (topic) => topics.push(topic));
    await dev.subscribeAsync('alias/#', { qos: 1 });
    const pub = await connectClient(up.port, { clientId: `alias-pub-${process.pid}` });
    t.after(() => closeClient(pub));
    for (let i = 0; i < 3; i++) await publish(pub, 'alias/long/topic/name', `m${i}`, { qos: 1 });
    await waitFor('3 messages', () => topics.length === 3);
    assert.deepEqual(topics, ['alias/long/topic/name', 'alias/long/topic/name', 'alias/long/topic/name'], 'the device sees the topic every time');
    const alias = raw[0].properties?.topicAlias;
    assert.ok(alias !== undefined && alias >= 1 && alias <= 4, `first PUBLISH sets an alias: ${JSON.stringify(raw[0].properties)}`);
    assert.equal(raw[0].topic, 'alias/long/topic/name');
    for (const p of raw.slice(1)) {
      assert.equal(p.properties?.topicAlias, alias);
      assert.equal(p.topic, '', 'later PUBLISHes carry the alias alone');
    }
  });

  test('a protocol error closes an MQTT 5 device with DISCONNECT carrying a reason string', async () => {
    const raw = await RawClient.connected(daemon.port, 5, { clientId: `rs-${process.pid}` });
    try {
      // PUBREL with reserved flags 0 instead of 2: malformed [MQTT-3.6.1-1].
      raw.send([0x60, 0x02, 0x00, 0x01]);
      const disconnect = await raw.waitForPacket('disconnect');
      assert.equal((disconnect as { reasonCode?: number }).reasonCode, 0x81);
      assert.match(String((disconnect as { properties?: { reasonString?: string } }).properties?.reasonString), /reserved flags/);
    } finally {
      raw.destroy();
    }
  });
});
