// Downlink conformance, subscriptions and retained messages: what a device that subscribes sees,
// written from the OASIS MQTT 3.1.1 and 5.0 specifications (normative statement ids in the test
// names; "3.1.1:" / "5:" where they differ). The same tests run against the proxy (default) and,
// with DOWNLINK_TARGET=mosquitto, against mosquitto itself, which validates each expectation.
// Messages come from "upstream publishers": mqtt.js clients connected straight to the mosquitto.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { RawClient } from '../helpers/clients';
import {
  type Device, publishesOf, rawSubscribeOk, settle, startTarget, targetKind, type Target, textOf, unique, waitPublishes, DELIVERY_MS,
} from '../helpers/target';
import { Scope, waitFor } from '../helpers/wait';

type Version = 4 | 5;
const VERSIONS: Version[] = [4, 5];
const vname = (v: Version): string => (v === 4 ? '3.1.1' : '5');
/** The statement id for the client's protocol version. */
const spec = (v: Version, v311: string, v5: string): string => (v === 4 ? v311 : v5);

interface Case {
  name: string;
  body: (target: Target, scope: Scope) => Promise<void>;
  /** Also run against the proxy with an MQTT 3.1.1 upstream connection. */
  upstream311?: boolean;
}
const cases: Case[] = [];
function scenario(name: string, body: Case['body'], opts: { upstream311?: boolean } = {}): void {
  cases.push({ name, body, ...opts });
}

/** A fresh topic prefix for one test. */
const base = (tag: string): string => `dl/${unique(tag)}`;

async function device(target: Target, scope: Scope, v: Version, label?: string): Promise<Device> {
  return scope.use(await target.connectDevice({ protocolVersion: v }, label));
}

async function upstream(target: Target, scope: Scope): Promise<Device> {
  return scope.use(await target.connectUpstream({ protocolVersion: 5 }, 'upstream publisher'));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: SUBACK carries the SUBSCRIBE's packet id and grants each filter the QoS requested, in order ${spec(v, '[MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.8.4-4] [MQTT-3.8.4-5] [MQTT-3.9.3-1]', '[MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.8.4-5] [MQTT-3.8.4-6] [MQTT-3.8.4-7] [MQTT-3.9.3-1]')}`, async (target, scope) => {
    const b = base('suback');
    const raw = scope.use(await target.rawDevice(v));
    // The server may grant less than asked for; both targets support QoS 2, so they grant it.
    raw.sendPacket({
      cmd: 'subscribe', messageId: 4242,
      subscriptions: [{ topic: `${b}/q2`, qos: 2 }, { topic: `${b}/q0`, qos: 0 }, { topic: `${b}/+/q1`, qos: 1 }],
    });
    const ack = await raw.waitForPacket('suback', DELIVERY_MS);
    assert.equal(ack.messageId, 4242, 'SUBACK packet identifier');
    assert.deepEqual((ack as { granted: number[] }).granted, [2, 0, 1], 'SUBACK return codes, in the order of the filters');
  }, { upstream311: true });
}

const INVALID_FILTERS = ['a/#/b', 'a+', ''];
for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: invalid filters ${INVALID_FILTERS.map((f) => JSON.stringify(f)).join(', ')} are refused: SUBACK ${v === 4 ? '0x80' : '0x80/0x8F'} on a connection that stays usable, or the connection is closed${v === 5 ? ' (after DISCONNECT 0x81/0x82/0x8F if any)' : ''} ${spec(v, '[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] [MQTT-4.8.0-1]', '[MQTT-4.7.1-1] [MQTT-4.7.1-2] [MQTT-4.7.3-1] [MQTT-4.13.1-1]')}`, async (target, scope) => {
    // A filter with a misplaced wildcard or no character violates a MUST of section 4.7, so the
    // server may treat the SUBSCRIBE as a protocol violation / Malformed Packet and close the
    // connection (mosquitto 2.0 does: 3.1.1 closes silently, 5 sends DISCONNECT 0x81 first), or
    // fail just that filter in the SUBACK (3.1.1: 0x80; 5: 0x8F Topic Filter invalid, or 0x80).
    // What it must never do is grant it.
    for (const filter of INVALID_FILTERS) {
      const raw = scope.use(await target.rawDevice(v));
      raw.sendPacket({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: filter, qos: 1 }] });
      await waitFor(`a SUBACK or the close for filter ${JSON.stringify(filter)}`, () => raw.closed || raw.packets.some((p) => p.cmd === 'suback'), {
        timeoutMs: DELIVERY_MS, detail: () => raw.describe(),
      });
      const suback = raw.packets.find((p) => p.cmd === 'suback') as { granted: number[] } | undefined;
      const where = `filter ${JSON.stringify(filter)}: ${raw.describe()}`;
      if (suback) {
        const allowed = v === 4 ? [0x80] : [0x80, 0x8f];
        assert.equal(suback.granted.length, 1, where);
        assert.ok(allowed.includes(suback.granted[0]), `SUBACK code 0x${suback.granted[0].toString(16)} is not a refusal of a malformed filter (${allowed.map((c) => `0x${c.toString(16)}`).join('/')}); ${where}`);
        // The refusal concerned that filter only: the connection still works.
        raw.sendPacket({ cmd: 'pingreq' });
        await raw.waitForPacket('pingresp', DELIVERY_MS);
        assert.equal(raw.closed, false, where);
      } else {
        const others = raw.packets.filter((p) => p.cmd !== 'connack' && p.cmd !== 'disconnect');
        assert.deepEqual(others.map((p) => p.cmd), [], `only a DISCONNECT may precede the close; ${where}`);
        if (v === 5) {
          const reason = raw.disconnectReason();
          if (reason !== undefined) assert.ok([0x81, 0x82, 0x8f].includes(reason), `DISCONNECT reason 0x${reason.toString(16)}; ${where}`);
        } else {
          assert.equal(raw.disconnectReason(), undefined, `a 3.1.1 server has no DISCONNECT to send; ${where}`);
        }
      }
    }
  });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: filters starting with a wildcard (# and +/...) do not match topics beginning with $ [MQTT-4.7.2-1]`, async (target, scope) => {
    const u = unique('dollar');
    const wild = await device(target, scope, v, 'device on # and +/u/x');
    await wild.subscribeOk({ '#': { qos: 1 }, [`+/${u}/x`]: { qos: 1 } });
    const exact = await device(target, scope, v, 'device on $dl/u/x');
    await exact.subscribeOk(`$dl/${u}/x`, { qos: 1 });
    const pub = await upstream(target, scope);
    await pub.publish(`$dl/${u}/x`, 'dollar', { qos: 1 });
    // The fence is published after the $ message; `#` must deliver it.
    await pub.publish(`dl/${u}/fence`, 'fence', { qos: 1 });
    await exact.waitOn(`$dl/${u}/x`);
    await wild.waitOn(`dl/${u}/fence`);
    await settle();
    assert.deepEqual(wild.on(`$dl/${u}/x`).map((m) => m.text), [], 'a $ topic was delivered through # or +/...');
    assert.equal(exact.on(`$dl/${u}/x`).length, 1, 'the filter naming the $ topic explicitly must match it');
  });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: a message is delivered at the minimum of its published QoS and the granted QoS ${spec(v, '[MQTT-3.8.4-6]', '[MQTT-3.8.4-8]')}, first deliveries with DUP 0 [MQTT-3.3.1-2] [MQTT-4.3.2-1]`, async (target, scope) => {
    const b = base('minqos');
    const d = await device(target, scope, v);
    await d.subscribeOk({ [`${b}/g0`]: { qos: 0 }, [`${b}/g1`]: { qos: 1 }, [`${b}/g2`]: { qos: 2 } });
    const pub = await upstream(target, scope);
    for (const g of [0, 1, 2] as const) {
      for (const q of [0, 1, 2] as const) await pub.publish(`${b}/g${g}`, `p${q}`, { qos: q });
    }
    for (const g of [0, 1, 2] as const) {
      const got = await d.waitFor(3, (m) => m.topic === `${b}/g${g}` && ['p0', 'p1', 'p2'].includes(m.text), `3 messages on g${g}`);
      for (const m of got) {
        const published = Number(m.text.slice(1));
        assert.equal(m.qos, Math.min(published, g), `published at QoS ${published} on a subscription granted QoS ${g}: delivered at QoS ${m.qos}`);
        assert.equal(m.dup, false, `first delivery of ${m.text} on g${g} had DUP set`);
        assert.equal(m.retain, false, `retain set on ${m.text} on g${g}`);
      }
      // 3.1.1 lets a server duplicate a QoS 1 message sent at QoS 0 [MQTT-3.8.4-6], nothing else.
      const perPayload = new Map<string, number>();
      for (const m of got) perPayload.set(m.text, (perPayload.get(m.text) ?? 0) + 1);
      for (const [p, n] of perPayload) if (!(g === 0 && p === 'p1')) assert.equal(n, 1, `${p} on g${g} delivered ${n} times`);
    }
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: UNSUBSCRIBE is answered with UNSUBACK (same packet id${v === 5 ? ', 0x00 for a deleted subscription, 0x11 for none' : ', also when nothing was subscribed'}) and stops delivery ${spec(v, '[MQTT-3.10.4-1] [MQTT-3.10.4-2] [MQTT-3.10.4-4] [MQTT-3.10.4-5] [MQTT-3.10.4-6]', '[MQTT-3.10.4-1] [MQTT-3.10.4-2] [MQTT-3.10.4-4] [MQTT-3.10.4-5] [MQTT-3.11.3-1]')}`, async (target, scope) => {
    const b = base('unsub');
    const raw = scope.use(await target.rawDevice(v));
    await rawSubscribeOk(raw, [{ topic: `${b}/a`, qos: 1 }, { topic: `${b}/fence`, qos: 1 }], 1);
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/a`, 'before', { qos: 1 });
    const [first] = await waitPublishes(raw, 1, (p) => p.topic === `${b}/a`, 'the message before UNSUBSCRIBE');
    raw.sendPacket({ cmd: 'puback', messageId: first.messageId! });
    raw.sendPacket({ cmd: 'unsubscribe', messageId: 77, unsubscriptions: [`${b}/a`, `${b}/never-subscribed`] });
    const ack = await raw.waitForPacket('unsuback', DELIVERY_MS);
    assert.equal(ack.messageId, 77, 'UNSUBACK packet identifier');
    if (v === 5) assert.deepEqual((ack as { granted?: number[] }).granted, [0x00, 0x11], 'UNSUBACK reason codes: 0x00 Success, 0x11 No subscription existed');
    await pub.publish(`${b}/a`, 'after', { qos: 1 });
    await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
    const [fence] = await waitPublishes(raw, 1, (p) => p.topic === `${b}/fence`, 'the fence after UNSUBSCRIBE');
    raw.sendPacket({ cmd: 'puback', messageId: fence.messageId! });
    await settle();
    assert.deepEqual(publishesOf(raw).filter((p) => p.topic === `${b}/a`).map(textOf), ['before'], 'messages on the unsubscribed filter');
  }, { upstream311: true });
}

scenario('MQTT 3.1.1: overlapping subscriptions (a/# at QoS 0, a/b at QoS 1) deliver a copy at the highest QoS, and at most one more copy per other matching subscription at its own QoS [MQTT-3.3.5-1]', async (target, scope) => {
  // mosquitto sends one copy; the proxy with an MQTT 5 upstream passes on the broker's copy per
  // upstream subscription (one for a/#, one for a/b). Both are what the spec allows.
  const b = base('overlap4');
  const d = await device(target, scope, 4);
  await d.subscribeOk({ [`${b}/#`]: { qos: 0 }, [`${b}/x`]: { qos: 1 } });
  const pub = await upstream(target, scope);
  await pub.publish(`${b}/x`, 'both match', { qos: 2 });
  await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
  await d.waitOn(`${b}/fence`);
  await settle();
  const got = d.on(`${b}/x`).map((m) => m.qos).sort();
  assert.ok(JSON.stringify(got) === '[1]' || JSON.stringify(got) === '[0,1]',
    `copies (by QoS) of a message matching both subscriptions: ${JSON.stringify(got)}; ${d.describe()}`);
});

scenario('MQTT 5: overlapping subscriptions (a/# at QoS 0 id 1, a/b at QoS 1 id 2): the highest QoS is honoured and every copy carries the identifiers of the subscriptions it stands for [MQTT-3.3.4-2] [MQTT-3.3.4-3] [MQTT-3.3.4-4] [MQTT-3.3.4-5]', async (target, scope) => {
  // mosquitto 2.0 sends one copy per matching subscription to an MQTT 5 client (each at its own
  // subscription's QoS with its own identifier); a single copy at QoS 1 with both identifiers
  // is equally conformant. Both shapes are accepted, nothing else.
  const b = base('overlap5');
  const d = await device(target, scope, 5);
  await d.subscribeOk(`${b}/#`, { qos: 0, properties: { subscriptionIdentifier: 1 } });
  await d.subscribeOk(`${b}/x`, { qos: 1, properties: { subscriptionIdentifier: 2 } });
  const pub = await upstream(target, scope);
  await pub.publish(`${b}/x`, 'both match', { qos: 2 });
  await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
  await d.waitOn(`${b}/fence`);
  await settle();
  const ids = (m: { properties?: { subscriptionIdentifier?: number | number[] } }): number[] => {
    const s = m.properties?.subscriptionIdentifier;
    return (s === undefined ? [] : Array.isArray(s) ? s : [s]).slice().sort();
  };
  const got = d.on(`${b}/x`).map((m) => ({ qos: m.qos, ids: ids(m) })).sort((x, y) => y.qos - x.qos);
  const single = [{ qos: 1, ids: [1, 2] }];
  const perSubscription = [{ qos: 1, ids: [2] }, { qos: 0, ids: [1] }];
  assert.ok(
    JSON.stringify(got) === JSON.stringify(single) || JSON.stringify(got) === JSON.stringify(perSubscription),
    `copies received ${JSON.stringify(got)}; expected ${JSON.stringify(single)} or ${JSON.stringify(perSubscription)}`,
  );
  assert.equal(d.on(`${b}/fence`)[0].properties?.subscriptionIdentifier, 1, 'the fence matches only a/# (id 1)');
});

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: two devices subscribed to the same filter both receive each message (section ${v === 4 ? '3.3.5' : '3.3.4'}: the server sends it to each client with a matching subscription)`, async (target, scope) => {
    const b = base('two');
    const d1 = await device(target, scope, v, 'device 1');
    const d2 = await device(target, scope, v, 'device 2');
    await d1.subscribeOk(`${b}/+`, { qos: 1 });
    await d2.subscribeOk(`${b}/+`, { qos: 1 });
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/t`, 'm1', { qos: 1 });
    await pub.publish(`${b}/t`, 'm2', { qos: 0 });
    await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
    for (const d of [d1, d2]) await d.waitOn(`${b}/fence`);
    await settle();
    for (const d of [d1, d2]) assert.deepEqual(d.on(`${b}/t`).map((m) => m.text), ['m1', 'm2'], `${d.label}: ${d.describe()}`);
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: when one of two devices on the same filter unsubscribes, the other still receives and the first no longer does [MQTT-3.10.4-2]`, async (target, scope) => {
    const b = base('two-unsub');
    const d1 = await device(target, scope, v, 'device 1 (unsubscribes)');
    const d2 = await device(target, scope, v, 'device 2 (stays)');
    await d1.subscribeOk({ [`${b}/t`]: { qos: 1 }, [`${b}/fence`]: { qos: 1 } });
    await d2.subscribeOk(`${b}/t`, { qos: 1 });
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/t`, 'before', { qos: 1 });
    await d1.waitOn(`${b}/t`);
    await d2.waitOn(`${b}/t`);
    await d1.unsubscribe(`${b}/t`);
    await pub.publish(`${b}/t`, 'after', { qos: 1 });
    await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
    await d2.waitOn(`${b}/t`, 2);
    await d1.waitOn(`${b}/fence`);
    await settle();
    assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), ['before', 'after'], `device 2: ${d2.describe()}`);
    assert.deepEqual(d1.on(`${b}/t`).map((m) => m.text), ['before'], `device 1: ${d1.describe()}`);
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: when one of two devices on the same filter disconnects (clean session), the other still receives`, async (target, scope) => {
    const b = base('two-gone');
    const d1 = await device(target, scope, v, 'device 1 (leaves)');
    const d2 = await device(target, scope, v, 'device 2 (stays)');
    await d1.subscribeOk(`${b}/t`, { qos: 1 });
    await d2.subscribeOk(`${b}/t`, { qos: 1 });
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/t`, 'before', { qos: 1 });
    await d1.waitOn(`${b}/t`);
    await d2.waitOn(`${b}/t`);
    await d1.close();
    await pub.publish(`${b}/t`, 'after', { qos: 1 });
    await d2.waitOn(`${b}/t`, 2);
    assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), ['before', 'after'], `device 2: ${d2.describe()}`);
  });
}

scenario('50 devices (MQTT 3.1.1 and 5 alternately) subscribed to t/# each receive every message exactly once', async (target, scope) => {
  const b = base('fan50');
  const devices: Device[] = [];
  for (let i = 0; i < 50; i += 10) {
    const batch = await Promise.all(Array.from({ length: 10 }, (_, k) => device(target, scope, ((i + k) % 2 === 0 ? 4 : 5), `device ${i + k}`)));
    await Promise.all(batch.map((d) => d.subscribeOk(`${b}/#`, { qos: 1 })));
    devices.push(...batch);
  }
  const pub = await upstream(target, scope);
  const N = 20;
  await Promise.all(Array.from({ length: N }, (_, i) => pub.publish(`${b}/${i % 4}`, `m${i}`, { qos: 1 })));
  await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
  for (const d of devices) await d.waitOn(`${b}/fence`);
  for (const d of devices) await d.waitFor(N, (m) => m.text.startsWith('m'), `${N} messages`);
  await settle();
  for (const d of devices) {
    const counts = new Map<string, number>();
    for (const m of d.messages) if (m.topic !== `${b}/fence`) counts.set(m.text, (counts.get(m.text) ?? 0) + 1);
    const wrong = [...Array.from({ length: N }, (_, i) => `m${i}`)].filter((p) => counts.get(p) !== 1).map((p) => `${p}:${counts.get(p) ?? 0}`);
    assert.deepEqual(wrong, [], `${d.label}: messages not received exactly once`);
  }
});

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: QoS 1 and QoS 2 deliveries complete (PUBLISH DUP 0 with a packet id; PUBACK; PUBREC -> PUBREL same id -> PUBCOMP) and are not sent again on a resumed session ${spec(v, '[MQTT-2.3.1-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1] [MQTT-4.4.0-1]', '[MQTT-2.2.1-4] [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.3-1] [MQTT-4.3.3-2] [MQTT-4.3.3-4] [MQTT-4.4.0-1]')}`, async (target, scope) => {
    const b = base('flows');
    const clientId = unique('flows');
    const connect = { clientId, clean: false, ...(v === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}) };
    const raw = scope.use(await target.rawDevice(v, connect));
    await rawSubscribeOk(raw, [{ topic: `${b}/q`, qos: 2 }], 1);
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/q`, 'one', { qos: 1 });
    await pub.publish(`${b}/q`, 'two', { qos: 2 });
    const [p1] = await waitPublishes(raw, 1, (p) => textOf(p) === 'one', 'the QoS 1 message');
    assert.equal(p1.qos, 1);
    assert.equal(p1.dup, false, 'DUP on a first delivery');
    assert.ok((p1.messageId ?? 0) > 0, 'QoS 1 PUBLISH without a non-zero packet id');
    raw.sendPacket({ cmd: 'puback', messageId: p1.messageId! });
    const [p2] = await waitPublishes(raw, 1, (p) => textOf(p) === 'two', 'the QoS 2 message');
    assert.equal(p2.qos, 2);
    assert.equal(p2.dup, false, 'DUP on a first delivery');
    assert.ok((p2.messageId ?? 0) > 0, 'QoS 2 PUBLISH without a non-zero packet id');
    raw.sendPacket({ cmd: 'pubrec', messageId: p2.messageId! });
    const rel = await raw.waitForPacket('pubrel', DELIVERY_MS);
    assert.equal(rel.messageId, p2.messageId, 'PUBREL packet id');
    raw.sendPacket({ cmd: 'pubcomp', messageId: p2.messageId! });
    raw.sendPacket({ cmd: 'disconnect' });
    await raw.waitClosed(DELIVERY_MS);

    // Everything was acknowledged: a resumed session has nothing to re-send.
    const again = scope.use(await RawClient.open(target.devicePort, v));
    const connack = await again.handshake(connect);
    assert.equal(connack.sessionPresent, true, 'session present on resume');
    await pub.publish(`${b}/q`, 'fence', { qos: 1 });
    const [fence] = await waitPublishes(again, 1, (p) => textOf(p) === 'fence', 'the fence on the resumed session');
    again.sendPacket({ cmd: 'puback', messageId: fence.messageId! });
    await settle();
    assert.deepEqual(again.packets.filter((p) => p.cmd !== 'connack' && p.cmd !== 'puback').map((p) => p.cmd === 'publish' ? `publish ${textOf(p)}` : p.cmd),
      ['publish fence'], 'packets on the resumed session besides CONNACK');
    again.sendPacket({ cmd: 'disconnect', ...(v === 5 ? { properties: { sessionExpiryInterval: 0 } } : {}) });
  });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: 100 QoS 1 messages on one topic arrive in the order they were published [MQTT-4.6.0-5] [MQTT-4.6.0-6]`, async (target, scope) => {
    const b = base('order');
    const d = await device(target, scope, v);
    await d.subscribeOk(`${b}/t`, { qos: 1 });
    const pub = await upstream(target, scope);
    await Promise.all(Array.from({ length: 100 }, (_, i) => pub.publish(`${b}/t`, String(i), { qos: 1 })));
    const got = await d.waitOn(`${b}/t`, 100);
    assert.deepEqual(got.map((m) => Number(m.text)), Array.from({ length: 100 }, (_, i) => i), 'order of delivery');
    assert.ok(got.every((m) => m.qos === 1), 'every message at QoS 1');
  }, { upstream311: true });
}

// ---------------------------------------------------------------------------------------------
// Retained messages

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: a retained message is sent to a new subscriber with the RETAIN flag set ${spec(v, '[MQTT-3.3.1-6] [MQTT-3.3.1-8]', '[MQTT-3.3.1-9] (section 3.3.1.3)')}, at the minimum of its QoS and the granted QoS`, async (target, scope) => {
    const b = base('ret-new');
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/r`, 'kept', { qos: 2, retain: true });
    const d = await device(target, scope, v);
    await d.subscribeOk(`${b}/#`, { qos: 1 });
    const [m] = await d.waitOn(`${b}/r`);
    assert.equal(m.text, 'kept');
    assert.equal(m.retain, true, 'RETAIN flag on the retained message sent for a new subscription');
    assert.equal(m.qos, 1, 'published at QoS 2, subscribed at QoS 1');
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: a second device subscribing later also receives the retained message ${spec(v, '[MQTT-3.3.1-6]', '[MQTT-3.3.1-9]')}`, async (target, scope) => {
    const b = base('ret-second');
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/r`, 'kept', { qos: 1, retain: true });
    const d1 = await device(target, scope, v, 'first subscriber');
    await d1.subscribeOk(`${b}/r`, { qos: 1 });
    await d1.waitOn(`${b}/r`);
    const d2 = await device(target, scope, v, 'second subscriber');
    await d2.subscribeOk(`${b}/r`, { qos: 1 });
    const [m] = await d2.waitOn(`${b}/r`);
    assert.equal(m.text, 'kept');
    assert.equal(m.retain, true, 'RETAIN flag for the second subscriber');
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: the first subscriber does not get the retained message again when a second device subscribes ${spec(v, '[MQTT-3.3.1-9]', '[MQTT-3.3.1-12]')}`, async (target, scope) => {
    const b = base('ret-once');
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/r`, 'kept', { qos: 1, retain: true });
    const d1 = await device(target, scope, v, 'first subscriber');
    await d1.subscribeOk(`${b}/r`, { qos: 1 });
    await d1.waitOn(`${b}/r`);
    const d2 = await device(target, scope, v, 'second subscriber');
    await d2.subscribeOk(`${b}/r`, { qos: 1 });
    await d2.waitOn(`${b}/r`);
    await pub.publish(`${b}/r`, 'live', { qos: 1 });
    await d1.waitFor(1, (m) => m.text === 'live', 'the live message after the second subscription');
    await settle();
    assert.deepEqual(d1.on(`${b}/r`).map((m) => `${m.text} retain=${m.retain}`), ['kept retain=true', 'live retain=false'], `first subscriber: ${d1.describe()}`);
  }, { upstream311: true });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: subscribing again to the same filter re-sends the retained message ${spec(v, '[MQTT-3.8.4-3]', '[MQTT-3.8.4-3] [MQTT-3.8.4-4]')}`, async (target, scope) => {
    const b = base('ret-resub');
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/r`, 'kept', { qos: 1, retain: true });
    const d = await device(target, scope, v);
    await d.subscribeOk(`${b}/#`, { qos: 1 });
    await d.waitOn(`${b}/r`);
    await d.subscribeOk(`${b}/#`, { qos: 1 });
    const got = await d.waitOn(`${b}/r`, 2);
    assert.deepEqual(got.map((m) => `${m.text} retain=${m.retain}`), ['kept retain=true', 'kept retain=true']);
    // The subscription was replaced, not doubled: a live message arrives once.
    await pub.publish(`${b}/r`, 'live', { qos: 1 });
    await d.waitFor(1, (m) => m.text === 'live', 'the live message');
    await settle();
    assert.equal(d.count((m) => m.text === 'live'), 1, `live message copies after re-subscribing: ${d.describe()}`);
  });
}

for (const v of VERSIONS) {
  scenario(`MQTT ${vname(v)}: a message published with RETAIN to an established subscription arrives with RETAIN 0 ${spec(v, '[MQTT-3.3.1-9]', '[MQTT-3.3.1-12]')}`, async (target, scope) => {
    const b = base('ret-live');
    const d = await device(target, scope, v);
    await d.subscribeOk(`${b}/r`, { qos: 1 });
    const pub = await upstream(target, scope);
    await pub.publish(`${b}/r`, 'retained live', { qos: 1, retain: true });
    const [m] = await d.waitOn(`${b}/r`);
    assert.equal(m.text, 'retained live');
    assert.equal(m.retain, false, 'RETAIN flag on a message forwarded to an established subscription');
  }, { upstream311: true });
}

// ---------------------------------------------------------------------------------------------

function register(getTarget: () => Target, filter: (c: Case) => boolean): void {
  for (const c of cases.filter(filter)) {
    test(c.name, async (t) => {
      const scope = new Scope();
      t.after(() => scope.close());
      await c.body(getTarget(), scope);
    });
  }
}

const kind = targetKind();

describe(`downlink subscriptions and retained messages, target ${kind}`, { timeout: 300_000 }, () => {
  let target: Target | undefined;
  before(async () => { target = await startTarget(); });
  after(() => target?.stop());
  register(() => target!, () => true);
});

describe('downlink subscriptions and retained messages, proxy with an MQTT 3.1.1 upstream connection (subset)', {
  timeout: 300_000, skip: kind === 'mosquitto' ? 'the upstream protocol only exists for the proxy' : false,
}, () => {
  let target: Target | undefined;
  before(async () => { target = await startTarget({ upstreamProtocol: 4 }); });
  after(() => target?.stop());
  register(() => target!, (c) => c.upstream311 === true);
});
