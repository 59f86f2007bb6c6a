// FANOUT_MAX_INFLIGHT, the QoS 1/2 publishes a device may have unanswered: advertised to MQTT 5
// devices as Receive Maximum, and enforced with DISCONNECT 0x93 when one sends more
// [MQTT-3.3.4-9]; MQTT 3.1.1 devices are not read from meanwhile, so no more than the limit is
// ever forwarded for them, and everything arrives once the brokers answer.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type * as mqttPacket from 'mqtt-packet';
import { Collector, closeClient, connectClient, RawClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { Scope, sleep, waitFor } from '../helpers/wait';

const MAX_INFLIGHT = 5;
let seq = 0;
const unique = (p: string): string => `${p}/${process.pid}-${++seq}`;

function publishPacket(topic: string, qos: 1 | 2, messageId: number, dup = false): mqttPacket.IPublishPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(`m${messageId}`), qos, messageId, dup, retain: false };
}

const acks = (raw: RawClient, cmd: 'puback' | 'pubrec' | 'pubcomp'): number[] =>
  raw.packets.filter((p) => p.cmd === cmd).map((p) => (p as { messageId: number }).messageId);

describe(`FANOUT_MAX_INFLIGHT=${MAX_INFLIGHT}, FANOUT_ACK=all`, { timeout: 120_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let at1: Collector;
  let at2: Collector;
  let metricsUrl = '';

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    b2 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1 })}`,
      FANOUT_MAX_INFLIGHT: MAX_INFLIGHT,
      FANOUT_HTTP_PORT: 0,
    }));
    metricsUrl = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}/metrics`;
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    at1 = scope.use(await Collector.start(b1.port, 'rm/#', { qos: 1 }));
    at2 = scope.use(await Collector.start(b2.port, 'rm/#', { qos: 1 }));
  });
  after(() => {
    b1.resume();
    return scope.close();
  });

  const metric = async (name: string, labels: Record<string, string>): Promise<number> => {
    const f = parsePrometheus(await (await fetch(metricsUrl)).text()).get(name);
    assert.ok(f, `${name} is exposed`);
    return f.samples.filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
  };

  test(`MQTT 5: ${MAX_INFLIGHT} unanswered QoS 1/2 PUBLISHes are allowed, a re-sent one takes no slot, one more gets DISCONNECT 0x93`, async (t) => {
    const raw = await RawClient.connected(daemon.port, 5, { clientId: `rm-v5-${process.pid}` });
    t.after(() => raw.destroy());
    const connack = raw.packets.find((p) => p.cmd === 'connack') as mqttPacket.IConnackPacket;
    assert.equal(connack.properties?.receiveMaximum, MAX_INFLIGHT, 'Receive Maximum in the CONNACK');
    const topic = unique('rm/v5');
    // b1 stalled: nothing is acknowledged (FANOUT_ACK=all), so every PUBLISH stays unanswered.
    b1.pause();
    try {
      for (let id = 1; id <= MAX_INFLIGHT; id++) raw.sendPacket(publishPacket(topic, id % 2 === 0 ? 2 : 1, id));
      await at2.waitForCount(MAX_INFLIGHT, (m) => m.topic === topic, 10_000, 'the publishes within the Receive Maximum at b2');
      raw.sendPacket(publishPacket(topic, 1, MAX_INFLIGHT, true));
      await sleep(300);
      assert.equal(raw.closed, false, `closed at the Receive Maximum: ${raw.describe()}`);
      assert.deepEqual([...acks(raw, 'puback'), ...acks(raw, 'pubrec')], [], 'nothing is answered while b1 is stalled');
      raw.sendPacket(publishPacket(topic, 1, MAX_INFLIGHT + 1));
      await raw.waitClosed(5000);
      assert.equal(raw.disconnectReason(), 0x93, raw.describe());
    } finally {
      b1.resume();
    }
    await at1.waitForCount(MAX_INFLIGHT, (m) => m.topic === topic, 10_000, 'the publishes within the Receive Maximum at b1');
    await sleep(300);
    for (const c of [at1, at2]) assert.equal(c.count((m) => m.topic === topic && m.payload.toString() === `m${MAX_INFLIGHT + 1}`), 0, 'the PUBLISH beyond was forwarded');
  });

  test(`MQTT 5: answered PUBLISHes free their slot: ${MAX_INFLIGHT * 8} QoS 1 in a window of ${MAX_INFLIGHT} all go through`, async (t) => {
    const c = await connectClient(daemon.port, { clientId: `rm-win-${process.pid}`, protocolVersion: 5 });
    t.after(() => closeClient(c));
    const topic = unique('rm/win');
    const pending = new Set<Promise<unknown>>();
    for (let i = 0; i < MAX_INFLIGHT * 8; i++) {
      while (pending.size >= MAX_INFLIGHT) await Promise.race(pending);
      const p: Promise<unknown> = c.publishAsync(topic, String(i), { qos: (i % 2) + 1 as 1 | 2 }).finally(() => pending.delete(p));
      pending.add(p);
    }
    await Promise.all(pending);
    await at2.waitForCount(MAX_INFLIGHT * 8, (m) => m.topic === topic, 10_000, 'every message at b2');
    assert.equal(c.connected, true);
  });

  test(`MQTT 3.1.1 with b1 stalled: of 40 QoS 1 publishes sent at once no more than ${MAX_INFLIGHT} are forwarded or in flight; after SIGCONT all 40 arrive at both brokers, in order`, async (t) => {
    const c = await connectClient(daemon.port, { clientId: `rm-v4-${process.pid}`, protocolVersion: 4 });
    t.after(() => closeClient(c));
    const topic = unique('rm/v4');
    const pausesBefore = await metric('fanout_backpressure_pauses_total', {});
    b1.pause();
    let acked = 0;
    const all = Promise.all(Array.from({ length: 40 }, (_, i) => c.publishAsync(topic, String(i), { qos: 1 }).then(() => { acked++; })));
    try {
      await at2.waitForCount(MAX_INFLIGHT, (m) => m.topic === topic, 10_000, `${MAX_INFLIGHT} messages at b2`);
      await waitFor(`fanout_broker_inflight{broker="b1"} = ${MAX_INFLIGHT}`, async () => (await metric('fanout_broker_inflight', { broker: 'b1' })) === MAX_INFLIGHT,
        { timeoutMs: 5000, intervalMs: 200 });
      await sleep(1200);
      assert.equal(at2.count((m) => m.topic === topic), MAX_INFLIGHT, 'messages forwarded to b2 while b1 holds the device window');
      assert.equal(await metric('fanout_broker_inflight', { broker: 'b1' }), MAX_INFLIGHT, 'messages in flight at b1');
      assert.ok(await metric('fanout_backpressure_pauses_total', {}) > pausesBefore, 'the device was paused');
      assert.equal(acked, 0);
      assert.equal(c.connected, true, 'an MQTT 3.1.1 device is slowed down, not disconnected');
    } finally {
      b1.resume();
    }
    await all;
    for (const [name, at] of [['b1', at1], ['b2', at2]] as const) {
      await at.waitForCount(40, (m) => m.topic === topic, 15_000, `all 40 at ${name}`);
      assert.deepEqual(at.on(topic).map((m) => Number(m.payload.toString())), Array.from({ length: 40 }, (_, i) => i), `${name}: each once, in order`);
    }
  });
});

describe(`FANOUT_MAX_INFLIGHT=${MAX_INFLIGHT}, FANOUT_ACK=local: answers are immediate`, { timeout: 60_000 }, () => {
  const scope = new Scope();
  let daemon: DaemonProcess;

  before(async () => {
    const up = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_MAX_INFLIGHT: MAX_INFLIGHT, FANOUT_ACK: 'local' }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
  });
  after(() => scope.close());

  test(`MQTT 5: ${MAX_INFLIGHT * 10} QoS 1 PUBLISHes at once are each answered at once, so none is over the limit; QoS 2 ones count until their PUBCOMP`, async (t) => {
    const raw = await RawClient.connected(daemon.port, 5, { clientId: `rm-local-${process.pid}` });
    t.after(() => raw.destroy());
    const topic = unique('rm/local');
    const n = MAX_INFLIGHT * 10;
    raw.send(Buffer.concat(Array.from({ length: n }, (_, i) => raw.encode(publishPacket(topic, 1, i + 1)))));
    await waitFor(`${n} PUBACKs`, () => acks(raw, 'puback').length === n, { timeoutMs: 5000, detail: () => raw.describe() });
    assert.equal(raw.closed, false);
    // QoS 2: PUBREC at once, but the flow stays open until the device's PUBREL is answered.
    const ids = Array.from({ length: MAX_INFLIGHT }, (_, i) => 1000 + i);
    for (const id of ids) raw.sendPacket(publishPacket(topic, 2, id));
    await waitFor(`${MAX_INFLIGHT} PUBRECs`, () => acks(raw, 'pubrec').length === MAX_INFLIGHT, { timeoutMs: 5000, detail: () => raw.describe() });
    raw.sendPacket({ cmd: 'pubrel', messageId: ids[0] });
    await waitFor('the PUBCOMP', () => acks(raw, 'pubcomp').includes(ids[0]), { timeoutMs: 5000, detail: () => raw.describe() });
    raw.sendPacket(publishPacket(topic, 2, 2000));
    await waitFor('the PUBREC of the PUBLISH that took the freed slot', () => acks(raw, 'pubrec').includes(2000), { timeoutMs: 5000, detail: () => raw.describe() });
    assert.equal(raw.closed, false);
    raw.sendPacket(publishPacket(topic, 2, 2001));
    await raw.waitClosed(5000);
    assert.equal(raw.disconnectReason(), 0x93, raw.describe());
  });
});
