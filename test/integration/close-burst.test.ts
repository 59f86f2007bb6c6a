// Accepted means delivered: a device that writes a burst of publishes and then closes (with
// DISCONNECT, or with a bare FIN / WebSocket close) while the proxy holds it paused must have
// every publish forwarded, in order, to both brokers; its will goes out only for the bare close.
// FANOUT_MAX_PUBLISH_RATE keeps each device paused (backpressure) while its close arrives, so the
// close always finds publishes the proxy read but has not handled yet.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as mqttPacket from 'mqtt-packet';
import WebSocket from 'ws';
import { Collector, waitPoolOnline } from '../helpers/clients';
import { makePki, type Pki } from '../helpers/certs';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { HOST } from '../helpers/ports';
import { Scope, waitFor, withTimeout } from '../helpers/wait';

const BURST = 1000;
const RATE = 400;
const DEVICES = 2;

type Kind = 'tcp' | 'tls' | 'ws';

/** A device's byte stream, whatever carries it. */
interface Pipe {
  write(bytes: Buffer): void;
  /** A bare close: FIN (TCP, TLS: after close_notify) or a WebSocket close frame. */
  end(): void;
  readonly closed: Promise<void>;
  /** Resolves with the first bytes the proxy sends (the CONNACK). */
  readonly first: Promise<Buffer>;
}

function streamPipe(socket: net.Socket): Pipe {
  let first!: (b: Buffer) => void;
  const firstP = new Promise<Buffer>((r) => { first = r; });
  socket.on('data', (b: Buffer) => first(b));
  socket.on('error', () => undefined);
  return {
    write: (bytes) => { socket.write(bytes); },
    end: () => { socket.end(); },
    closed: new Promise((r) => socket.once('close', () => r())),
    first: firstP,
  };
}

function wsPipe(ws: WebSocket): Pipe {
  let first!: (b: Buffer) => void;
  const firstP = new Promise<Buffer>((r) => { first = r; });
  ws.on('message', (b: Buffer) => first(b));
  ws.on('error', () => undefined);
  return {
    // Frames that cut packets anywhere, as MQTT over WebSocket allows.
    write: (bytes) => {
      for (let at = 0; at < bytes.length; at += 16_384) ws.send(bytes.subarray(at, at + 16_384), { binary: true });
    },
    end: () => ws.close(1000),
    closed: new Promise((r) => ws.once('close', () => r())),
    first: firstP,
  };
}

describe('publishes sent just before a close reach both brokers', { timeout: 180_000 }, () => {
  const scope = new Scope();
  let pki: Pki;
  let daemon: DaemonProcess;
  let ports: Record<Kind, number>;
  let ca: Buffer;
  let at: [string, Collector][];

  before(async () => {
    pki = makePki('burst');
    const server = pki.issue('server', 'proxy', { server: true });
    ca = fs.readFileSync(pki.caCert);
    const b1 = scope.use(await Mosquitto.start());
    const b2 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1, protocol: 5 })}`,
      FANOUT_SHARDS: 1, FANOUT_MAX_PUBLISH_RATE: RATE, FANOUT_WS_PORT: 0,
      FANOUT_TLS_PORT: 0, FANOUT_TLS_CERT: server.cert, FANOUT_TLS_KEY: server.key,
    }));
    const ready = daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!;
    ports = { tcp: daemon.port, tls: Number(ready.tlsPort), ws: daemon.wsPort };
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    at = [['b1', scope.use(await Collector.start(b1.port, 'burst/#', { qos: 1 }))],
      ['b2', scope.use(await Collector.start(b2.port, 'burst/#', { qos: 1, protocolVersion: 5 }))]];
  });
  after(async () => {
    await scope.close();
    pki?.remove();
  });

  async function open(kind: Kind): Promise<Pipe> {
    if (kind === 'ws') {
      const ws = new WebSocket(`ws://${HOST}:${ports.ws}/mqtt`, ['mqtt']);
      await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
      });
      return wsPipe(ws);
    }
    const socket = kind === 'tcp' ? net.connect({ host: HOST, port: ports.tcp }) : tls.connect({ host: HOST, port: ports.tls, ca, servername: 'localhost' });
    await new Promise((resolve, reject) => {
      socket.once(kind === 'tcp' ? 'connect' : 'secureConnect', resolve);
      socket.once('error', reject);
    });
    return streamPipe(socket);
  }

  /** Connects with a will, writes BURST publishes (and DISCONNECT) in one go, then closes. */
  async function burst(kind: Kind, qos: 0 | 1, disconnect: boolean, topic: string, version: 4 | 5): Promise<void> {
    const pipe = await open(kind);
    const gen = (p: mqttPacket.Packet): Buffer => mqttPacket.generate(p, { protocolVersion: version });
    pipe.write(gen({
      cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clean: true, keepalive: 0, clientId: topic.replace(/\//g, '-'),
      will: { topic: `${topic}/will`, payload: Buffer.from('gone'), qos: 1, retain: false },
    } as mqttPacket.IConnectPacket));
    const connack = await withTimeout(pipe.first, 10_000, `the CONNACK of ${topic}`);
    assert.equal(connack[3], 0, `${topic}: CONNACK refused`);
    const packets: Buffer[] = [];
    for (let i = 0; i < BURST; i++) {
      packets.push(gen({ cmd: 'publish', topic, payload: Buffer.from(String(i).padEnd(64, '.')), qos, retain: false, dup: false, messageId: qos > 0 ? i + 1 : undefined }));
    }
    if (disconnect) packets.push(gen({ cmd: 'disconnect' }));
    pipe.write(Buffer.concat(packets));
    pipe.end();
    await withTimeout(pipe.closed, 30_000, `${topic} to be closed`);
  }

  test('bursts at QoS 0 and 1, with DISCONNECT and with a bare close, over TCP, TLS and WebSocket: every publish at both brokers, in order; wills only for the bare close', async () => {
    const cases: { topic: string; disconnect: boolean; run: () => Promise<void> }[] = [];
    for (const kind of ['tcp', 'tls', 'ws'] as const) {
      for (const qos of [0, 1] as const) {
        for (const disconnect of [true, false]) {
          for (let d = 0; d < DEVICES; d++) {
            // MQTT 5 QoS 1 bursts would exceed the Receive Maximum: MQTT 5 for the QoS 0 ones.
            const version = qos === 0 && d === 1 ? 5 : 4;
            const topic = `burst/${kind}/q${qos}/${disconnect ? 'disconnect' : 'close'}/${d}-${process.pid}`;
            cases.push({ topic, disconnect, run: () => burst(kind, qos, disconnect, topic, version) });
          }
        }
      }
    }
    await Promise.all(cases.map((c) => c.run()));
    for (const [name, c] of at) {
      for (const { topic } of cases) {
        await c.waitForCount(BURST, (m) => m.topic === topic, 60_000, `${BURST} publishes on ${topic} at ${name}`);
        const seqs = c.on(topic).map((m) => Number.parseInt(m.payload.toString(), 10));
        assert.deepEqual(seqs, Array.from({ length: BURST }, (_, i) => i), `${name}: ${topic} arrived out of order or more than once`);
      }
      for (const { topic, disconnect } of cases) {
        if (!disconnect) await c.waitForCount(1, (m) => m.topic === `${topic}/will`, 10_000, `the will of ${topic} at ${name}`);
      }
    }
    // Every will that was due has arrived: one that was not (after DISCONNECT) would be here too.
    await waitFor('every due will', () => at.every(([, c]) => cases.every((k) => k.disconnect || c.on(`${k.topic}/will`).length === 1)), { timeoutMs: 10_000 });
    for (const [name, c] of at) {
      for (const { topic, disconnect } of cases) {
        assert.equal(c.on(`${topic}/will`).length, disconnect ? 0 : 1, `${name}: wills of ${topic}`);
      }
    }
  });
});
