// Per-broker URL parameters and the broker connections themselves: maxQos downgrade, retain
// strip/forward, MQTT 5 properties towards a protocol=5 broker (and their absence towards a
// 3.1.1 one), the retained status topic and the client ids of each pooled connection.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import { Collector, closeClient, connect, connectClient, publish, RawClient, waitPoolOnline, type Received } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

let seq = 0;
function uniqueTopic(prefix: string): string {
  seq++;
  return `${prefix}/${process.pid}-${seq}-${Math.random().toString(36).slice(2, 8)}`;
}

describe('broker parameters: b1 maxQos=0 retain=strip pool=2, b2 protocol=5 pool=3 keepalive=30, b3 maxQos=1 pool=1', { timeout: 150_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let b3: Mosquitto;
  let daemon: DaemonProcess;
  let at1: Collector;
  let at2: Collector;
  let at3: Collector;
  const pools = { b1: 2, b2: 3, b3: 1 };

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    // Debug logging on b2 shows which client id (pool connection) delivered each PUBLISH.
    b2 = scope.use(await Mosquitto.start({ extraConfig: ['log_type debug'] }));
    b3 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: [
        `b1=${b1.url({ maxQos: 0, retain: 'strip', pool: pools.b1, protocol: '3.1.1' })}`,
        `b2=${b2.url({ protocol: 5, pool: pools.b2, keepalive: 30 })}`,
        `b3=${b3.url({ maxQos: 1, pool: pools.b3, protocol: '3.1.1' })}`,
      ].join(','),
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', pools.b1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', pools.b2);
    await waitPoolOnline(b3.port, daemon.proxyId, 'b3', pools.b3);
    // MQTT 5 subscribers with Retain As Published: they show the retain flag the daemon sent.
    at1 = scope.use(await Collector.start(b1.port, 'par/#', { qos: 2, protocolVersion: 5, rap: true }));
    at2 = scope.use(await Collector.start(b2.port, 'par/#', { qos: 2, protocolVersion: 5, rap: true }));
    at3 = scope.use(await Collector.start(b3.port, 'par/#', { qos: 2, protocolVersion: 5, rap: true }));
  });
  after(() => scope.close());

  async function arrival(c: Collector, topic: string, name: string): Promise<Received> {
    const [m] = await c.waitForCount(1, (x) => x.topic === topic, 10_000, `the message on ${topic} at ${name}`);
    return m;
  }

  test('maxQos downgrades: QoS 2 arrives at QoS 0 on b1 (maxQos=0), QoS 1 on b3 (maxQos=1), QoS 2 on b2', async (t) => {
    const client = await connectClient(daemon.port, { clientId: `par-qos-${process.pid}` });
    t.after(() => closeClient(client));
    const q2 = uniqueTopic('par/qos2');
    await publish(client, q2, 'published at QoS 2', { qos: 2 });
    assert.equal((await arrival(at1, q2, 'b1')).qos, 0, 'b1 (maxQos=0) must receive QoS 0 although the subscription is QoS 2');
    assert.equal((await arrival(at2, q2, 'b2')).qos, 2, 'b2 (maxQos=2) must receive QoS 2');
    assert.equal((await arrival(at3, q2, 'b3')).qos, 1, 'b3 (maxQos=1) must receive QoS 1');
    const q1 = uniqueTopic('par/qos1');
    await publish(client, q1, 'published at QoS 1', { qos: 1 });
    assert.equal((await arrival(at1, q1, 'b1')).qos, 0);
    assert.equal((await arrival(at2, q1, 'b2')).qos, 1);
    assert.equal((await arrival(at3, q1, 'b3')).qos, 1);
  });

  test('retain=strip clears the retain flag on b1 only; b2 and b3 keep the retained message', async (t) => {
    const client = await connectClient(daemon.port, { clientId: `par-retain-${process.pid}` });
    t.after(() => closeClient(client));
    const topic = uniqueTopic('par/retained');
    await publish(client, topic, 'retained state', { qos: 1, retain: true });
    assert.equal((await arrival(at1, topic, 'b1')).retain, false, 'b1 (retain=strip) was sent the retain flag');
    assert.equal((await arrival(at2, topic, 'b2')).retain, true, 'b2 (retain=forward) lost the retain flag');
    assert.equal((await arrival(at3, topic, 'b3')).retain, true, 'b3 (retain=forward) lost the retain flag');

    // Late subscribers: the retained copy exists on b2 and b3 only. On b1 a fence retained
    // directly on the broker is subscribed after the topic, so once the fence arrived the
    // retained message would have arrived too.
    const fence = uniqueTopic('fence/retained');
    const direct = await connectClient(b1.port);
    t.after(() => closeClient(direct));
    await publish(direct, fence, 'fence', { qos: 1, retain: true });
    for (const [name, broker] of [['b2', b2], ['b3', b3]] as const) {
      const late = await Collector.start(broker.port, topic, { qos: 1 });
      t.after(() => late.close());
      const [m] = await late.waitForCount(1, () => true, 10_000, `the retained message at ${name}`);
      assert.equal(m.payload.toString(), 'retained state');
      assert.equal(m.retain, true);
    }
    const late1 = await Collector.start(b1.port, [topic, fence], { qos: 1 });
    t.after(() => late1.close());
    await late1.waitForCount(1, (m) => m.topic === fence, 10_000, 'the fence on b1');
    assert.deepEqual(late1.on(topic).map((m) => m.payload.toString()), [], 'b1 (retain=strip) kept a retained message');
  });

  test('MQTT 5 properties reach the protocol=5 broker; the 3.1.1 brokers get the message without them', async (t) => {
    const client = await connectClient(daemon.port, { protocolVersion: 5, clientId: `par-props-${process.pid}` });
    t.after(() => closeClient(client));
    const topic = uniqueTopic('par/props');
    const properties: mqtt.IClientPublishOptions['properties'] = {
      userProperties: { site: 'plant-7', 'ünï': 'cöde', multi: ['a', 'b'] },
      contentType: 'application/json',
      responseTopic: 'par/reply',
      correlationData: Buffer.from([1, 2, 3, 0, 255]),
    };
    await publish(client, topic, '{"t":21.5}', { qos: 1, properties });
    const m2 = await arrival(at2, topic, 'b2');
    assert.deepEqual({ ...m2.properties?.userProperties }, properties.userProperties, 'user properties changed on the way to b2');
    assert.equal(m2.properties?.contentType, 'application/json');
    assert.equal(m2.properties?.responseTopic, 'par/reply');
    assert.deepEqual(m2.properties?.correlationData, Buffer.from([1, 2, 3, 0, 255]));
    assert.equal(m2.payload.toString(), '{"t":21.5}');
    for (const [name, c] of [['b1', at1], ['b3', at3]] as const) {
      const m = await arrival(c, topic, name);
      assert.equal(m.payload.toString(), '{"t":21.5}', `${name}: payload`);
      assert.equal(m.properties?.userProperties, undefined, `${name} (MQTT 3.1.1 link) cannot carry user properties`);
    }
  });

  test('a device topic alias is resolved by the daemon and not passed on', async (t) => {
    const client = await connectClient(daemon.port, { protocolVersion: 5, clientId: `par-alias-${process.pid}` });
    t.after(() => closeClient(client));
    const topic = uniqueTopic('par/alias');
    await publish(client, topic, 'first, sets alias 3', { qos: 1, properties: { topicAlias: 3 } });
    await publish(client, '', 'second, uses alias 3', { qos: 1, properties: { topicAlias: 3 } });
    for (const [name, c] of [['b1', at1], ['b2', at2], ['b3', at3]] as const) {
      const got = await c.waitForCount(2, (m) => m.topic === topic, 10_000, `both aliased messages at ${name}`);
      assert.deepEqual(got.map((m) => m.payload.toString()), ['first, sets alias 3', 'second, uses alias 3'], name);
    }
  });

  test('each broker connection publishes a retained "online" on fanout/status/{proxyId}-{broker}-{n}', async (t) => {
    for (const [name, broker] of [['b1', b1], ['b2', b2], ['b3', b3]] as const) {
      const status = await Collector.start(broker.port, 'fanout/status/+', { qos: 1 });
      t.after(() => status.close());
      const expected = Array.from({ length: pools[name] }, (_, n) => `fanout/status/${daemon.proxyId}-${name}-${n}`);
      const mine = (m: Received): boolean => m.topic.startsWith(`fanout/status/${daemon.proxyId}-`);
      await status.waitForCount(expected.length, mine, 10_000, `${expected.length} retained status messages on ${name}`);
      const got = status.messages.filter(mine);
      assert.deepEqual(got.map((m) => m.topic).sort(), expected, `${name}: status topics`);
      for (const m of got) {
        assert.equal(m.payload.toString(), 'online', `${m.topic}`);
        assert.equal(m.retain, true, `${m.topic} must be retained (even with retain=strip)`);
      }
    }
  });

  test('client ids are {proxyId}-{broker}-{n}, unique per broker, with the configured protocol and keep-alive', () => {
    for (const [name, broker] of [['b1', b1], ['b2', b2], ['b3', b3]] as const) {
      const ids = broker.connectedClientIds().filter((id) => id.startsWith(`${daemon.proxyId}-`));
      const expected = Array.from({ length: pools[name] }, (_, n) => `${daemon.proxyId}-${name}-${n}`);
      assert.deepEqual([...ids].sort(), expected, `${name}: client ids that connected`);
      assert.doesNotMatch(broker.log, /already connected, closing old connection/, `${name}: two connections used the same client id`);
    }
    // mosquitto logs "(p5, ..., k30)" for MQTT 5 with keep-alive 30, "(p2, ..., k60)" for 3.1.1.
    for (let n = 0; n < pools.b2; n++) assert.match(b2.log, new RegExp(`as ${daemon.proxyId}-b2-${n} \\(p5, c\\d, k30\\)`));
    for (let n = 0; n < pools.b1; n++) assert.match(b1.log, new RegExp(`as ${daemon.proxyId}-b1-${n} \\(p2, c\\d, k60\\)`));
  });

  test('devices are spread over all pooled connections of a broker', async (t) => {
    const clients = await Promise.all(Array.from({ length: 12 }, (_, i) => connectClient(daemon.port, { clientId: `par-pool-${process.pid}-${i}` })));
    t.after(() => Promise.all(clients.map((c) => closeClient(c))));
    const prefix = uniqueTopic('par/pool');
    await Promise.all(clients.map((c, i) => publish(c, `${prefix}/${i}`, String(i), { qos: 1 })));
    await waitFor('12 pool messages at b2', () => at2.count((m) => m.topic.startsWith(`${prefix}/`)) === 12);
    // mosquitto (log_type debug): "Received PUBLISH from <client id> (d0, q1, r0, m1, '<topic>', ..."
    const senders = new Set<string>();
    for (const m of b2.log.matchAll(/Received PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)'/g)) {
      if (m[2].startsWith(`${prefix}/`)) senders.add(m[1]);
    }
    assert.deepEqual([...senders].sort(), Array.from({ length: pools.b2 }, (_, n) => `${daemon.proxyId}-b2-${n}`),
      'b2 connections that forwarded the 12 devices\' messages');
  });
});

/** Reason codes MQTT 5 allows in PUBACK and PUBREC [MQTT 5.0, 3.4.2.1 and 3.5.2.1]. */
const PUBACK_PUBREC_CODES = new Set([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);

describe('a broker with a smaller maximum packet size (b2: mosquitto max_packet_size 1000, protocol=5)', { timeout: 150_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let at1: Collector;
  let at2: Collector;

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    b2 = scope.use(await Mosquitto.start({ extraConfig: ['max_packet_size 1000'] }));
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `b1=${b1.url({ pool: 1, protocol: '3.1.1' })},b2=${b2.url({ pool: 1, protocol: 5 })}` }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    at1 = scope.use(await Collector.start(b1.port, 'mps/#', { qos: 1 }));
    at2 = scope.use(await Collector.start(b2.port, 'mps/#', { qos: 1 }));
  });
  after(() => scope.close());

  test('an MQTT 5 device gets a PUBACK/PUBREC with a valid MQTT 5 error reason code for a message b2 cannot take; b1 still gets it', async (t) => {
    const c = await RawClient.connected(daemon.port, 5, { clientId: `mps-raw-${process.pid}` });
    t.after(() => c.destroy());
    const big = `mps/raw/big-${process.pid}`;
    const big2 = `mps/raw/big2-${process.pid}`;
    const small = `mps/raw/small-${process.pid}`;
    c.sendPacket({ cmd: 'publish', topic: big, payload: Buffer.alloc(3000, 0x41), qos: 1, messageId: 11, dup: false, retain: false });
    c.sendPacket({ cmd: 'publish', topic: big2, payload: Buffer.alloc(3000, 0x42), qos: 2, messageId: 21, dup: false, retain: false });
    c.sendPacket({ cmd: 'publish', topic: small, payload: 'small', qos: 1, messageId: 12, dup: false, retain: false });
    const answers = (): Map<string, number> => {
      const m = new Map<string, number>();
      for (const p of c.rawPackets()) {
        if (p.type === 4 || p.type === 5) m.set(`${p.type === 4 ? 'PUBACK' : 'PUBREC'} ${p.body.readUInt16BE(0)}`, p.body.length > 2 ? p.body[2] : 0);
      }
      return m;
    };
    await waitFor('answers to all three publishes', () => answers().size >= 3, { timeoutMs: 10_000, detail: () => JSON.stringify([...answers()]) });
    const got = answers();
    await at1.waitForCount(1, (m) => m.topic === big, 10_000, 'the large QoS 1 message at b1');
    await at1.waitForCount(1, (m) => m.topic === big2, 10_000, 'the large QoS 2 message at b1');
    await at2.waitForCount(1, (m) => m.topic === small, 10_000, 'the small message at b2');
    assert.equal(got.get('PUBACK 12'), 0, 'the small message must be acknowledged with success');
    for (const key of ['PUBACK 11', 'PUBREC 21']) {
      const rc = got.get(key);
      assert.ok(rc !== undefined && rc >= 0x80, `${key}: expected an error reason code, got ${rc}`);
      assert.ok(PUBACK_PUBREC_CODES.has(rc), `${key}: reason code 0x${rc.toString(16)} is not allowed in MQTT 5 PUBACK/PUBREC (MQTT clients treat the packet as malformed)`);
    }
  });

  test('an mqtt.js MQTT 5 device keeps working after publishing a message b2 cannot take', async (t) => {
    const { client } = await connect(daemon.port, { protocolVersion: 5, clientId: `mps-js-${process.pid}` });
    t.after(() => closeClient(client));
    const errors: Error[] = [];
    client.on('error', (err) => errors.push(err));
    const big = `mps/js/big-${process.pid}`;
    const small = `mps/js/small-${process.pid}`;
    let bigDone: Error | null | undefined;
    client.publish(big, Buffer.alloc(3000, 0x43), { qos: 1 }, (err) => { bigDone = err ?? null; });
    await at1.waitForCount(1, (m) => m.topic === big, 10_000, 'the large message at b1');
    await sleep(200);
    await publish(client, small, 'after the large one', { qos: 1 }, 5000).catch((err: Error) => {
      assert.fail(`the next publish did not complete: ${err.message}; client errors: ${errors.map((e) => e.message).join('; ')}`);
    });
    assert.notEqual(bigDone, undefined, 'the large publish never completed');
    assert.deepEqual(errors.map((e) => e.message), [], 'mqtt.js reported protocol errors');
  });
});
