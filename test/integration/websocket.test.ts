// MQTT over WebSocket [MQTT-6.0]: the same sessions as TCP, served by uWebSockets.js in the
// shards (or the ws package where the native binary does not load). mqtt.js over ws:// for the
// round trips, a raw ws client for frame boundaries, protocol errors, packet and frame size
// limits and a device that keeps sending while paused.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';
import mqtt, { type IConnackPacket } from 'mqtt';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor, withTimeout } from '../helpers/wait';

let seq = 0;
const unique = (p: string): string => `${p}/${process.pid}-${++seq}`;

function openRaw(port: number, protocols: string[] = ['mqtt']): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, protocols);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

/** Every MQTT packet the server sends on a raw socket, decoded. */
function packetsOf(ws: WebSocket, version: 4 | 5 = 4): mqttPacket.Packet[] {
  const out: mqttPacket.Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: version });
  parser.on('packet', (p) => out.push(p));
  ws.on('message', (data: Buffer) => parser.parse(data));
  return out;
}

for (const implementation of ['uWebSockets.js', 'ws'] as const) {
  describe(`MQTT over WebSocket (${implementation})`, { timeout: 120_000 }, () => {
    const scope = new Scope();
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let atBroker: Collector;

    before(async () => {
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`,
        FANOUT_WS_PORT: 0,
        // The uWS package falls back to a JavaScript shim on this flag, as it does where its
        // binary does not load; the daemon must notice and serve with `ws`.
        UWS_USE_FALLBACK: implementation === 'ws' ? '1' : undefined,
      }));
      await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
      atBroker = scope.use(await Collector.start(up.port, 'wsin/#', { qos: 2 }));
    });
    after(() => scope.close());

    test(`the start-up log names ${implementation} as the WebSocket implementation`, () => {
      const ready = daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!;
      assert.equal(ready.websocket, implementation);
      assert.ok(daemon.wsPort > 0);
      const warned = daemon.lines.some((l) => l.level === 40 && /uWebSockets\.js binary does not load/.test(l.msg));
      assert.equal(warned, implementation === 'ws', 'the fallback, and only it, is announced with a warning');
    });

    test(`independently of the log: the native uWS binary is mapped into the daemon process ${implementation === 'ws' ? 'not at all' : 'while it serves'}`, async (t) => {
      // A connection first, so that the WebSocket code has surely run.
      const dev = await connectClient(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: unique('maps') });
      t.after(() => closeClient(dev));
      const binary = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
      const maps = fs.readFileSync(`/proc/${daemon.proc.pid}/maps`, 'utf8');
      const mapped = maps.split('\n').filter((l) => l.includes('uWebSockets.js') || l.includes('uws-js-unofficial') || /uws_[a-z0-9]+_[a-z0-9]+_\d+\.node/.test(l));
      if (implementation === 'uWebSockets.js') {
        assert.ok(mapped.some((l) => l.endsWith(`/${binary}`)), `${binary} is not in /proc/${daemon.proc.pid}/maps: ${JSON.stringify(mapped)}`);
      } else {
        assert.deepEqual(mapped, [], 'no uWS binary may be mapped under UWS_USE_FALLBACK');
      }
    });

    test('publish and subscribe round trip over ws:// with MQTT 3.1.1 and 5.0, large messages included', async (t) => {
      for (const protocolVersion of [4, 5] as const) {
        const dev = await connectClient(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: unique('wsdev'), protocolVersion });
        t.after(() => closeClient(dev));
        const topic = unique('wsin/up');
        const big = Buffer.alloc(200_000, 7);
        await publish(dev, topic, big, { qos: 1 });
        const [m] = await atBroker.waitForCount(1, (x) => x.topic === topic, 10_000, 'the WebSocket publish at the broker');
        assert.ok(m.payload.equals(big));
        const got: Buffer[] = [];
        dev.on('message', (_t, p) => got.push(Buffer.from(p)));
        const down = unique('wsout/down');
        await dev.subscribeAsync(down, { qos: 1 });
        const upstream = await connectClient(up.port, { clientId: unique('wspub') });
        t.after(() => closeClient(upstream));
        await publish(upstream, down, Buffer.alloc(150_000, 3), { qos: 1 });
        await waitFor('the downlink message over WebSocket', () => got.length === 1);
        assert.equal(got[0].length, 150_000);
      }
    });

    test('a packet split over several frames and several packets in one frame are both read', async (t) => {
      const ws = await openRaw(daemon.wsPort);
      t.after(() => ws.terminate());
      const packets = packetsOf(ws);
      const topic = unique('wsin/frames');
      const bytes = Buffer.concat([
        mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: unique('raw'), clean: true, keepalive: 30 }),
        mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.from('one'), qos: 1, messageId: 1, dup: false, retain: false }),
        mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.from('two'), qos: 1, messageId: 2, dup: false, retain: false }),
      ]);
      // Frames cut at odd places: 3 bytes, then 7, then the rest in one frame holding the end of
      // one packet and the whole of the next.
      ws.send(bytes.subarray(0, 3));
      ws.send(bytes.subarray(3, 10));
      ws.send(bytes.subarray(10));
      await waitFor('CONNACK and two PUBACKs', () => packets.filter((p) => p.cmd === 'puback').length === 2 && packets[0].cmd === 'connack');
      await atBroker.waitForCount(2, (m) => m.topic === topic, 10_000, 'both publishes at the broker');
      assert.deepEqual(atBroker.on(topic).map((m) => m.payload.toString()), ['one', 'two']);
    });

    test('the subprotocol "mqtt" is echoed', async (t) => {
      const ws = await openRaw(daemon.wsPort, ['mqtt']);
      t.after(() => ws.terminate());
      assert.equal(ws.protocol, 'mqtt');
      const ws31 = await openRaw(daemon.wsPort, ['mqttv3.1']);
      t.after(() => ws31.terminate());
      assert.equal(ws31.protocol, 'mqttv3.1');
    });

    test('a text frame closes the connection [MQTT-6.0.0-1]', async (t) => {
      const ws = await openRaw(daemon.wsPort);
      t.after(() => ws.terminate());
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      ws.send('not binary');
      await withTimeout(closed, 5_000, 'the close after a text frame');
    });

    test('client-id takeover works between a TCP and a WebSocket connection, both ways', async (t) => {
      const id = unique('both');
      const overWs = await connectClient(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: id, protocolVersion: 5, reconnectPeriod: 0 });
      t.after(() => closeClient(overWs));
      const wsGone = new Promise<number | undefined>((resolve) => overWs.once('disconnect', (p) => resolve(p.reasonCode)));
      const overTcp = await connectClient(daemon.port, { clientId: id, protocolVersion: 5, reconnectPeriod: 0 });
      t.after(() => closeClient(overTcp));
      assert.equal(await withTimeout(wsGone, 5_000, 'DISCONNECT on the WebSocket'), 0x8e);
      const tcpGone = new Promise<number | undefined>((resolve) => overTcp.once('disconnect', (p) => resolve(p.reasonCode)));
      const again = await connectClient(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: id, protocolVersion: 5, reconnectPeriod: 0 });
      t.after(() => closeClient(again));
      assert.equal(await withTimeout(tcpGone, 5_000, 'DISCONNECT on TCP'), 0x8e);
    });

    test('a persistent session started over TCP resumes over WebSocket with what was missed', async (t) => {
      const id = unique('sess');
      const topic = unique('wsout/sess');
      const first = await connectClient(daemon.port, { clientId: id, clean: false, reconnectPeriod: 0 });
      await first.subscribeAsync(topic, { qos: 1 });
      await closeClient(first);
      const upstream = await connectClient(up.port, { clientId: unique('sesspub') });
      t.after(() => closeClient(upstream));
      await publish(upstream, topic, 'while away', { qos: 1 });
      const got: string[] = [];
      // The handler must be in place before CONNACK: the queued message follows it at once.
      const again = mqtt.connect(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: id, clean: false, reconnectPeriod: 0 });
      t.after(() => closeClient(again));
      again.on('message', (_t, p) => got.push(p.toString()));
      const connack = await withTimeout(new Promise<IConnackPacket>((resolve) => again.once('connect', resolve)), 10_000, 'CONNACK');
      assert.equal(connack.sessionPresent, true);
      await waitFor('the message queued while away', () => got.length === 1);
      assert.deepEqual(got, ['while away']);
    });

    test('SIGTERM with WebSocket devices connected exits cleanly (code 0)', async () => {
      const d = await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_WS_PORT: 0,
        UWS_USE_FALLBACK: implementation === 'ws' ? '1' : undefined,
      });
      const devs = await Promise.all([1, 2, 3].map(() => connectClient(`ws://127.0.0.1:${d.wsPort}/mqtt`, { clientId: unique('stop'), reconnectPeriod: 0 })));
      const info = await d.stop();
      for (const c of devs) await closeClient(c);
      assert.equal(info.code, 0, `exit code ${info.code}, signal ${info.signal}; stderr: ${d.stderr}`);
    });
  });

  describe(`WebSocket limits (${implementation}): FANOUT_MAX_PACKET_SIZE 65536, FANOUT_MAX_PUBLISH_RATE 1`, { timeout: 120_000 }, () => {
    const MAX_PACKET = 65536;
    const scope = new Scope();
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let atBroker: Collector;

    before(async () => {
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({
        FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_WS_PORT: 0, FANOUT_SHARDS: 1,
        FANOUT_MAX_PACKET_SIZE: MAX_PACKET, FANOUT_MAX_PUBLISH_RATE: 1,
        UWS_USE_FALLBACK: implementation === 'ws' ? '1' : undefined,
      }));
      await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
      atBroker = scope.use(await Collector.start(up.port, 'wslim/#', { qos: 1 }));
    });
    after(() => scope.close());

    /** A raw WebSocket device after a successful CONNECT; `closed` resolves with the close code. */
    async function device(version: 4 | 5): Promise<{ ws: WebSocket; packets: mqttPacket.Packet[]; closed: Promise<number> }> {
      const ws = await openRaw(daemon.wsPort);
      const packets = packetsOf(ws, version);
      const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
      ws.on('error', () => undefined);
      ws.send(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clientId: unique('lim'), clean: true, keepalive: 0 }));
      await waitFor('CONNACK', () => packets.some((p) => p.cmd === 'connack'));
      return { ws, packets, closed };
    }
    const disconnectReason = (packets: mqttPacket.Packet[]): number | undefined =>
      (packets.find((p) => p.cmd === 'disconnect') as mqttPacket.IDisconnectPacket | undefined)?.reasonCode;
    const publishBytes = (topic: string, size: number, version: 4 | 5): Buffer =>
      mqttPacket.generate({ cmd: 'publish', topic, payload: Buffer.alloc(size, 1), qos: 0, dup: false, retain: false }, { protocolVersion: version });

    for (const version of [5, 4] as const) {
      test(`a PUBLISH larger than FANOUT_MAX_PACKET_SIZE, in one frame or over several, is refused (MQTT ${version === 5 ? '5: DISCONNECT 0x95' : '3.1.1: closed'}); nothing is forwarded`, async () => {
        for (const frames of [1, 4]) {
          const { ws, packets, closed } = await device(version);
          const topic = unique('wslim/big');
          const bytes = publishBytes(topic, MAX_PACKET + 100, version);
          const step = Math.ceil(bytes.length / frames);
          for (let i = 0; i < bytes.length; i += step) ws.send(bytes.subarray(i, i + step));
          await withTimeout(closed, 5000, `the close after an oversized packet in ${frames} frame(s)`);
          assert.equal(disconnectReason(packets), version === 5 ? 0x95 : undefined, `DISCONNECT reason, ${frames} frame(s)`);
          await assertNothingAt(topic);
        }
      });
    }

    test(`a WebSocket frame larger than the listener allows (2 x FANOUT_MAX_PACKET_SIZE + 16) closes the connection; nothing is forwarded`, async () => {
      const { ws, closed } = await device(5);
      const topic = unique('wslim/frame');
      // Within one frame: the packet ahead of it is fine, the frame as a whole is too large.
      ws.send(Buffer.concat([publishBytes(topic, 100, 5), Buffer.alloc(2 * MAX_PACKET + 100, 0)]));
      // The ws package says 1009 (message too big); uWS cuts the connection (1006).
      const code = await withTimeout(closed, 5000, 'the close after an oversized frame');
      assert.ok(code === (implementation === 'ws' ? 1009 : 1006), `close code ${code}`);
      await assertNothingAt(topic);
    });

    if (implementation === 'uWebSockets.js') {
      for (const version of [5, 4] as const) {
        test(`a device paused for backpressure that keeps sending is closed once more than 1 MiB is unread (MQTT ${version === 5 ? '5: DISCONNECT 0x97' : '3.1.1: closed'})`, async () => {
          const { ws, packets, closed } = await device(version);
          const topic = unique('wslim/flood');
          // 40 x 60 KB at QoS 0: FANOUT_MAX_PUBLISH_RATE (1/s) pauses the device after the first,
          // and uWS cannot stop reading what it keeps sending.
          for (let i = 0; i < 40; i++) ws.send(publishBytes(topic, 60_000, version));
          await withTimeout(closed, 15_000, 'the close of the flooding device');
          assert.equal(disconnectReason(packets), version === 5 ? 0x97 : undefined, 'DISCONNECT reason');
          // At 1 message a second it would have taken 40 s; only the first few went through.
          await sleep(300);
          assert.ok(atBroker.count((m) => m.topic === topic) <= 3, `${atBroker.count((m) => m.topic === topic)} of the flood were forwarded`);
        });
      }
    } else {
      test('a device paused for backpressure that keeps sending is not read from (the ws package pauses its socket) and stays connected', async () => {
        const { ws, closed } = await device(5);
        let isClosed = false;
        void closed.then(() => { isClosed = true; });
        const topic = unique('wslim/flood');
        for (let i = 0; i < 40; i++) ws.send(publishBytes(topic, 60_000, 5));
        await sleep(2500);
        assert.equal(isClosed, false, 'the paused device was closed');
        assert.ok(atBroker.count((m) => m.topic === topic) <= 4, 'the publish rate held');
        ws.terminate();
      });
    }

    async function assertNothingAt(topic: string): Promise<void> {
      const dev = await connectClient(daemon.port, { clientId: unique('fence') });
      try {
        const fence = unique('wslim/fence');
        await publish(dev, fence, 'fence', { qos: 1 });
        await atBroker.waitForCount(1, (m) => m.topic === fence, 10_000, 'the fence');
      } finally {
        await closeClient(dev);
      }
      assert.equal(atBroker.count((m) => m.topic === topic), 0, `a message on ${topic} reached the broker`);
    }
  });
}
