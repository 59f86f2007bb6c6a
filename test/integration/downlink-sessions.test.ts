// Downlink conformance, sessions: what a device with a persistent session (3.1.1 clean session 0,
// 5 clean start 0 + Session Expiry Interval) gets after it reconnects, what a clean session
// discards, re-delivery of unacknowledged messages, session expiry and takeover. Each test
// reconnects several times so that, with FANOUT_SHARDS=2, the new connection lands on the other
// shard at least sometimes (the kernel spreads connections; every round is asserted).
// QoS 0 messages published while a device is away are never published here: the spec lets a
// server queue them or not.
// Same targets as downlink.test.ts: the proxy (default) or mosquitto (DOWNLINK_TARGET=mosquitto).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { IClientOptions } from 'mqtt';
import type * as mqttPacket from 'mqtt-packet';
import { RawClient } from '../helpers/clients';
import {
  type Device, DELIVERY_MS, publishesOf, rawSubscribeOk, settle, startTarget, targetKind, type Target, textOf, unique, waitPublishes,
} from '../helpers/target';
import { Scope, sleep, waitFor } from '../helpers/wait';

type Version = 4 | 5;
const VERSIONS: Version[] = [4, 5];
const vname = (v: Version): string => (v === 4 ? '3.1.1' : '5');
const spec = (v: Version, v311: string, v5: string): string => (v === 4 ? v311 : v5);
/** Reconnects per test: enough for both shards to take part most of the time. */
const ROUNDS = 4;

const kind = targetKind();
let target: Target;

/** mqtt.js options for a persistent session of `clientId`. */
function persistent(v: Version, clientId: string, expiry = 60): IClientOptions {
  return { protocolVersion: v, clientId, clean: false, ...(v === 5 ? { properties: { sessionExpiryInterval: expiry } } : {}) };
}

/** CONNECT fields for a raw persistent session. */
function rawPersistent(v: Version, clientId: string): Partial<mqttPacket.IConnectPacket> {
  return { clientId, clean: false, ...(v === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}) };
}

/** Leaves the server without a session for `clientId` (clean connect, then disconnect). */
async function discardSession(v: Version, clientId: string): Promise<void> {
  const d = await target.connectDevice({ protocolVersion: v, clientId, clean: true });
  await d.client.endAsync(false).catch(() => undefined);
}

/** Ends a device's connection: a DISCONNECT first when `graceful`, else the socket is dropped. */
async function leave(d: Device, graceful: boolean): Promise<void> {
  if (graceful) await d.client.endAsync(false);
  else await d.close();
  await d.waitClosed();
}

describe(`downlink sessions, target ${kind}`, { timeout: 300_000 }, () => {
  const suite = new Scope();
  // Traced client ids tell which shard each CONNECT landed on (see DaemonProcess.connectShards).
  before(async () => { target = suite.use(await startTarget({ env: { FANOUT_TRACE_CLIENTS: 'xshard*' } })); });
  after(() => suite.close());

  let scope: Scope;
  const open = (d: Device): Device => scope.use(d);

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: a persistent session gets the QoS 1 and QoS 2 messages published while it was away, with session present 1, across ${ROUNDS} reconnects ${spec(v, '[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-4.4.0-1]', '[MQTT-3.1.2-5] [MQTT-3.1.2-23] [MQTT-3.2.2-3] [MQTT-4.4.0-1]')}`, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const b = `dls/${unique('missed')}`;
      const clientId = unique(`missed${v}`);
      t.after(() => discardSession(v, clientId));
      const pub = open(await target.connectUpstream());
      let d = open(await target.connectDevice(persistent(v, clientId)));
      assert.equal(d.sessionPresent, false, 'session present on the first connection: the server had no session for this client id');
      await d.subscribeOk(`${b}/t`, { qos: 2 });
      for (let round = 0; round < ROUNDS; round++) {
        const where = `round ${round}`;
        await leave(d, round % 2 === 0);
        await pub.publish(`${b}/t`, `r${round}-q1`, { qos: 1 });
        await pub.publish(`${b}/t`, `r${round}-q2`, { qos: 2 });
        d = open(await target.connectDevice(persistent(v, clientId)));
        assert.equal(d.sessionPresent, true, `session present after reconnecting (${where})`);
        const got = await d.waitFor(2, (m) => m.text.startsWith(`r${round}-`), `the 2 messages of ${where}`);
        await pub.publish(`${b}/t`, `fence${round}`, { qos: 1 });
        await d.waitFor(1, (m) => m.text === `fence${round}`, `the fence of ${where}`);
        assert.deepEqual(got.map((m) => `${m.text}@${m.qos}`), [`r${round}-q1@1`, `r${round}-q2@2`], `messages missed in ${where}, in order, at their QoS`);
        assert.deepEqual(d.messages.map((m) => m.text), [`r${round}-q1`, `r${round}-q2`, `fence${round}`], `everything the connection of ${where} got`);
      }
    });
  }

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: ${v === 4 ? 'clean session 1' : 'clean start 1'} discards the session: session present 0 and nothing published meanwhile is delivered, ${ROUNDS} times ${spec(v, '[MQTT-3.1.2-6] [MQTT-3.2.2-1]', '[MQTT-3.1.2-4] [MQTT-3.2.2-2]')}`, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const b = `dls/${unique('clean')}`;
      const pub = open(await target.connectUpstream());
      for (let round = 0; round < ROUNDS; round++) {
        const clientId = unique(`clean${v}`);
        const where = `round ${round}`;
        const d1 = open(await target.connectDevice(persistent(v, clientId)));
        await d1.subscribeOk(`${b}/t`, { qos: 1 });
        await leave(d1, round % 2 === 0);
        await pub.publish(`${b}/t`, `away${round}-q1`, { qos: 1 });
        await pub.publish(`${b}/t`, `away${round}-q2`, { qos: 2 });
        const d2 = open(await target.connectDevice({ protocolVersion: v, clientId, clean: true }));
        assert.equal(d2.sessionPresent, false, `session present with ${v === 4 ? 'clean session' : 'clean start'} 1 (${where})`);
        await d2.subscribeOk(`${b}/fence`, { qos: 1 });
        await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
        await d2.waitOn(`${b}/fence`);
        await settle();
        assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), [], `messages of the discarded session were delivered (${where})`);
        // Nor does the clean session outlive its connection.
        await leave(d2, true);
        const d3 = open(await target.connectDevice(persistent(v, clientId)));
        assert.equal(d3.sessionPresent, false, `session present after a clean session ended (${where})`);
        await d3.client.endAsync(false);
        await discardSession(v, clientId);
      }
    });
  }

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: a QoS 1 delivery not acknowledged when the connection drops is re-sent after reconnect with DUP 1 and the same packet id, ${ROUNDS} times [MQTT-3.3.1-1] [MQTT-4.4.0-1]`, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const b = `dls/${unique('dup1')}`;
      const clientId = unique(`dup1${v}`);
      t.after(() => discardSession(v, clientId));
      const pub = open(await target.connectUpstream());
      let raw = scope.use(await target.rawDevice(v, rawPersistent(v, clientId)));
      await rawSubscribeOk(raw, [{ topic: `${b}/t`, qos: 1 }], 1);
      for (let round = 0; round < ROUNDS; round++) {
        const where = `round ${round}`;
        await pub.publish(`${b}/t`, `m${round}`, { qos: 1 });
        const [first] = await waitPublishes(raw, 1, (p) => textOf(p) === `m${round}`, `m${round} (${where})`);
        assert.equal(first.dup, false, `DUP on the first delivery (${where})`);
        // No PUBACK: the connection drops with the delivery in flight.
        raw.destroy();
        await raw.waitClosed(DELIVERY_MS);
        raw = scope.use(await RawClient.open(target.devicePort, v));
        const connack = await raw.handshake(rawPersistent(v, clientId));
        assert.equal(connack.sessionPresent, true, `session present (${where})`);
        const [again] = await waitPublishes(raw, 1, (p) => textOf(p) === `m${round}`, `m${round} re-sent (${where})`);
        assert.equal(again.dup, true, `DUP on the re-sent PUBLISH (${where})`);
        assert.equal(again.messageId, first.messageId, `packet id of the re-sent PUBLISH (${where})`);
        assert.equal(again.qos, 1, `QoS of the re-sent PUBLISH (${where})`);
        raw.sendPacket({ cmd: 'puback', messageId: again.messageId! });
        await settle();
        assert.deepEqual(publishesOf(raw).map(textOf), [`m${round}`], `PUBLISHes on the new connection (${where})`);
      }
    });
  }

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: after reconnect a QoS 2 PUBLISH never PUBREC'd is re-sent with DUP 1 and its packet id, and one PUBREC'd but not completed gets its PUBREL again, not the PUBLISH ${spec(v, '[MQTT-4.3.3-1] [MQTT-4.4.0-1]', '[MQTT-4.3.3-5] [MQTT-4.3.3-6] [MQTT-4.4.0-1]')}`, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const b = `dls/${unique('dup2')}`;
      const clientId = unique(`dup2${v}`);
      t.after(() => discardSession(v, clientId));
      const pub = open(await target.connectUpstream());
      let raw = scope.use(await target.rawDevice(v, rawPersistent(v, clientId)));
      await rawSubscribeOk(raw, [{ topic: `${b}/t`, qos: 2 }], 1);
      for (let round = 0; round < 2; round++) {
        const where = `round ${round}`;
        await pub.publish(`${b}/t`, `released${round}`, { qos: 2 });
        await pub.publish(`${b}/t`, `pending${round}`, { qos: 2 });
        const [a] = await waitPublishes(raw, 1, (p) => textOf(p) === `released${round}`, `released${round}`);
        const [p] = await waitPublishes(raw, 1, (q) => textOf(q) === `pending${round}`, `pending${round}`);
        raw.sendPacket({ cmd: 'pubrec', messageId: a.messageId! });
        await waitFor(`PUBREL ${a.messageId}`, () => raw.packets.some((q) => q.cmd === 'pubrel' && q.messageId === a.messageId), { timeoutMs: DELIVERY_MS, detail: () => raw.describe() });
        raw.destroy();
        await raw.waitClosed(DELIVERY_MS);
        raw = scope.use(await RawClient.open(target.devicePort, v));
        const connack = await raw.handshake(rawPersistent(v, clientId));
        assert.equal(connack.sessionPresent, true, `session present (${where})`);
        const [again] = await waitPublishes(raw, 1, (q) => textOf(q) === `pending${round}`, `pending${round} re-sent (${where})`);
        assert.equal(again.dup, true, `DUP on the re-sent QoS 2 PUBLISH (${where})`);
        assert.equal(again.messageId, p.messageId, `packet id of the re-sent QoS 2 PUBLISH (${where})`);
        await waitFor(`PUBREL ${a.messageId} re-sent (${where})`, () => raw.packets.some((q) => q.cmd === 'pubrel' && q.messageId === a.messageId), { timeoutMs: DELIVERY_MS, detail: () => raw.describe() });
        raw.sendPacket({ cmd: 'pubcomp', messageId: a.messageId! });
        raw.sendPacket({ cmd: 'pubrec', messageId: again.messageId! });
        await waitFor(`PUBREL ${again.messageId}`, () => raw.packets.some((q) => q.cmd === 'pubrel' && q.messageId === again.messageId), { timeoutMs: DELIVERY_MS, detail: () => raw.describe() });
        raw.sendPacket({ cmd: 'pubcomp', messageId: again.messageId! });
        await settle();
        assert.deepEqual(publishesOf(raw).map(textOf), [`pending${round}`], `PUBLISHes on the new connection: a PUBREL'd message must not be re-sent (${where})`);
      }
    });
  }

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: a takeover that moves the session to the other shard keeps it: session present 1, the unacknowledged QoS 1 message re-sent with DUP 1 and its packet id, later messages delivered (repeated until at least one takeover crossed shards) ${spec(v, '[MQTT-3.1.4-2] [MQTT-4.4.0-1]', '[MQTT-3.1.4-3] [MQTT-4.4.0-1]')}`, { skip: kind === 'proxy' ? false : 'shards are the proxy\'s' }, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const daemon = target.daemon!;
      const b = `dls/${unique('xshard')}`;
      const clientId = unique(`xshard${v}`);
      t.after(() => discardSession(v, clientId));
      const pub = open(await target.connectUpstream());
      let raw = scope.use(await target.rawDevice(v, rawPersistent(v, clientId)));
      await rawSubscribeOk(raw, [{ topic: `${b}/t`, qos: 1 }], 1);
      let shard = await daemon.shardOfConnect(clientId, 0);
      const seen = { same: 0, cross: 0 };
      for (let k = 1; k <= 20 && seen.cross < 2; k++) {
        await pub.publish(`${b}/t`, `held${k}`, { qos: 1 });
        const [first] = await waitPublishes(raw, 1, (p) => textOf(p) === `held${k}`, `held${k} on connection ${k - 1}`);
        // Not acknowledged: a new connection takes the client id over while this one is open.
        const next = scope.use(await RawClient.open(target.devicePort, v));
        const connack = await next.handshake(rawPersistent(v, clientId));
        const nextShard = await daemon.shardOfConnect(clientId, k);
        if (nextShard === shard) seen.same++;
        else seen.cross++;
        const where = `takeover ${k}, shard ${shard} -> ${nextShard}`;
        assert.equal(connack.sessionPresent, true, `session present (${where})`);
        await raw.waitClosed(DELIVERY_MS);
        if (v === 5) assert.equal(raw.disconnectReason(), 0x8e, `DISCONNECT of the connection taken over (${where})`);
        const [again] = await waitPublishes(next, 1, (p) => textOf(p) === `held${k}`, `held${k} re-sent (${where})`);
        assert.equal(again.dup, true, `DUP on the re-sent PUBLISH (${where})`);
        assert.equal(again.messageId, first.messageId, `packet id of the re-sent PUBLISH (${where})`);
        assert.equal(again.qos, 1, `QoS of the re-sent PUBLISH (${where})`);
        next.sendPacket({ cmd: 'puback', messageId: again.messageId! });
        await pub.publish(`${b}/t`, `after${k}`, { qos: 1 });
        const [later] = await waitPublishes(next, 1, (p) => textOf(p) === `after${k}`, `after${k} (${where})`);
        assert.equal(later.dup, false, `DUP on a new message (${where})`);
        next.sendPacket({ cmd: 'puback', messageId: later.messageId! });
        await settle();
        assert.deepEqual(publishesOf(next).map(textOf), [`held${k}`, `after${k}`], `everything the new connection got (${where})`);
        raw = next;
        shard = nextShard;
      }
      t.diagnostic(`takeovers: ${seen.same} on the same shard, ${seen.cross} across shards`);
      assert.ok(seen.cross >= 1, `no takeover crossed shards in 20 (${JSON.stringify(seen)})`);
    });
  }

  test('MQTT 5: with no Session Expiry Interval (0) the session ends with the connection: clean start 0 then finds no session and nothing queued (section 3.1.2.11.2)', async (t) => {
    scope = new Scope();
    t.after(() => scope.close());
    const b = `dls/${unique('expiry0')}`;
    const pub = open(await target.connectUpstream());
    for (let round = 0; round < ROUNDS; round++) {
      const clientId = unique('expiry0');
      const where = `round ${round}`;
      const d1 = open(await target.connectDevice({ protocolVersion: 5, clientId, clean: false }));
      await d1.subscribeOk(`${b}/t`, { qos: 1 });
      await leave(d1, round % 2 === 0);
      await pub.publish(`${b}/t`, `away${round}`, { qos: 1 });
      const d2 = open(await target.connectDevice(persistent(5, clientId)));
      assert.equal(d2.sessionPresent, false, `session present although the session had expiry 0 (${where})`);
      await d2.subscribeOk(`${b}/fence`, { qos: 1 });
      await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
      await d2.waitOn(`${b}/fence`);
      await settle();
      assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), [], `messages of an ended session were delivered (${where})`);
      await d2.close();
      await discardSession(5, clientId);
    }
  });

  test('MQTT 5: a DISCONNECT setting Session Expiry Interval 0 ends a session opened with 60 (section 3.14.2.2.2)', async (t) => {
    scope = new Scope();
    t.after(() => scope.close());
    const clientId = unique('disc0');
    const b = `dls/${unique('disc0')}`;
    const d1 = open(await target.connectDevice(persistent(5, clientId)));
    await d1.subscribeOk(`${b}/t`, { qos: 1 });
    await d1.client.endAsync(false, { properties: { sessionExpiryInterval: 0 } });
    const d2 = open(await target.connectDevice(persistent(5, clientId)));
    assert.equal(d2.sessionPresent, false, 'session present after DISCONNECT with Session Expiry Interval 0');
    await d2.close();
    await discardSession(5, clientId);
  });

  test('MQTT 5: a session with Session Expiry Interval 1 s is gone 2.5 s after the connection closed [MQTT-4.1.0-2]', async (t) => {
    scope = new Scope();
    t.after(() => scope.close());
    const clientId = unique('expiry1');
    const b = `dls/${unique('expiry1')}`;
    const pub = open(await target.connectUpstream());
    const d1 = open(await target.connectDevice(persistent(5, clientId, 1)));
    await d1.subscribeOk(`${b}/t`, { qos: 1 });
    await leave(d1, true);
    await pub.publish(`${b}/t`, 'away', { qos: 1 });
    await sleep(2500);
    const d2 = open(await target.connectDevice(persistent(5, clientId)));
    assert.equal(d2.sessionPresent, false, 'session present after its expiry interval had passed');
    await d2.subscribeOk(`${b}/fence`, { qos: 1 });
    await pub.publish(`${b}/fence`, 'fence', { qos: 1 });
    await d2.waitOn(`${b}/fence`);
    await settle();
    assert.deepEqual(d2.on(`${b}/t`).map((m) => m.text), [], 'messages of an expired session were delivered');
    await d2.close();
    await discardSession(5, clientId);
  });

  for (const v of VERSIONS) {
    test(`MQTT ${vname(v)}: takeover: a second connection with the same client id and ${v === 4 ? 'clean session 0' : 'clean start 0'} gets the session (present 1, its subscription delivers) and the first is disconnected${v === 5 ? ' (DISCONNECT 0x8E if any)' : ''}, ${ROUNDS} times ${spec(v, '[MQTT-3.1.4-2] [MQTT-3.2.2-2]', '[MQTT-3.1.4-3] [MQTT-3.2.2-3]')}`, async (t) => {
      scope = new Scope();
      t.after(() => scope.close());
      const b = `dls/${unique('takeover')}`;
      const pub = open(await target.connectUpstream());
      for (let round = 0; round < ROUNDS; round++) {
        const clientId = unique(`take${v}`);
        const where = `round ${round}`;
        const first = open(await target.connectDevice(persistent(v, clientId), 'first connection'));
        await first.subscribeOk(`${b}/t`, { qos: 1 });
        await pub.publish(`${b}/t`, `before${round}`, { qos: 1 });
        await first.waitFor(1, (m) => m.text === `before${round}`, `before${round}`);
        const second = open(await target.connectDevice(persistent(v, clientId), 'second connection'));
        assert.equal(second.sessionPresent, true, `session present for the taking-over connection (${where})`);
        await first.waitClosed();
        // [MQTT-3.1.4-3] describes a DISCONNECT 0x8E but only the close is a MUST (section 4.13:
        // the server SHOULD send DISCONNECT); mosquitto 2.0.11 just closes. If one is sent, it
        // must say 0x8E (the proxy does send it: see sessions.test.ts).
        if (v === 5) {
          const codes = first.disconnects.map((p) => p.reasonCode ?? 0);
          assert.ok(codes.length === 0 || (codes.length === 1 && codes[0] === 0x8e), `DISCONNECT reason codes the first connection got: [${codes.join(', ')}], expected none or [0x8e] (${where})`);
        }
        await pub.publish(`${b}/t`, `after${round}`, { qos: 1 });
        await second.waitFor(1, (m) => m.text === `after${round}`, `after${round} on the second connection (${where})`);
        await settle();
        assert.equal(second.closed, false, `the second connection was closed (${where})`);
        assert.deepEqual(first.messages.map((m) => m.text), [`before${round}`], `the first connection got messages after the takeover (${where})`);
        assert.deepEqual(second.messages.map((m) => m.text), [`after${round}`], `the second connection (${where})`);
        await second.close();
        await discardSession(v, clientId);
      }
    });
  }
});
