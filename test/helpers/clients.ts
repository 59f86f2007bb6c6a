// Clients for the tests: mqtt.js devices and subscribers with promise wrappers, a Collector
// that counts what a broker delivers, a RawClient for hand-built bytes, and mosquitto_pub.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import mqtt, { type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt';
import * as mqttPacket from 'mqtt-packet';
import { HOST } from './ports';
import { exitOf, track } from './procs';
import { waitFor, withTimeout } from './wait';

export type QoS = 0 | 1 | 2;

export function urlOf(port: number): string {
  return `mqtt://${HOST}:${port}`;
}

/** A device with a persistent session (MQTT 3.1.1 clean session 0, or 5 with a session expiry
 *  of expiryS) that reconnects by itself every 300 ms and never subscribes again, so what it gets
 *  after a reconnect comes from its session. Errors are left to its reconnects. */
export function persistentClient(port: number, clientId: string, v5: boolean, expiryS: number): MqttClient {
  const client = mqtt.connect(urlOf(port), {
    clientId, clean: false, protocolVersion: v5 ? 5 : 4, reconnectPeriod: 300, connectTimeout: 10_000, keepalive: 30,
    resubscribe: false, ...(v5 ? { properties: { sessionExpiryInterval: expiryS } } : {}),
  });
  client.on('error', () => undefined);
  return client;
}

export interface Connected {
  client: MqttClient;
  connack: IConnackPacket;
}

/**
 * Connects mqtt.js to `target` (a port on loopback or a URL) and resolves with the client and
 * its CONNACK. No automatic reconnect unless `opts.reconnectPeriod` says otherwise.
 */
export function connect(target: number | string, opts: IClientOptions = {}): Promise<Connected> {
  const url = typeof target === 'number' ? urlOf(target) : target;
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 10_000, ...opts });
  return new Promise((resolve, reject) => {
    const onConnect = (connack: IConnackPacket): void => {
      client.off('error', onError);
      client.off('close', onClose);
      // From now on errors (a refused reconnect, a reset) are the test's to observe through
      // 'close'/'disconnect'; an EventEmitter 'error' without a listener would throw.
      client.on('error', () => undefined);
      resolve({ client, connack });
    };
    const onError = (err: Error): void => {
      client.off('connect', onConnect);
      client.off('close', onClose);
      client.end(true);
      reject(err);
    };
    const onClose = (): void => {
      if (opts.reconnectPeriod) return;
      client.off('connect', onConnect);
      client.off('error', onError);
      client.end(true);
      reject(new Error(`connection to ${url} closed before CONNACK`));
    };
    client.once('connect', onConnect);
    client.once('error', onError);
    client.once('close', onClose);
  });
}

/** Connects and returns just the client. */
export async function connectClient(target: number | string, opts: IClientOptions = {}): Promise<MqttClient> {
  return (await connect(target, opts)).client;
}

/** Ends a client without waiting for the network (forced). */
export async function closeClient(client: MqttClient | undefined): Promise<void> {
  if (client === undefined) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2000);
    client.end(true, {}, () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Publishes and resolves once the publish is complete (PUBACK / PUBCOMP for QoS 1/2). */
export async function publish(
  client: MqttClient, topic: string, payload: string | Buffer, opts: mqtt.IClientPublishOptions = {}, timeoutMs = 15_000,
): Promise<void> {
  await withTimeout(client.publishAsync(topic, payload, opts), timeoutMs, `publish to ${topic} to complete`);
}

export interface Received {
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
  properties?: IPublishPacket['properties'];
  /** Date.now() at arrival. */
  at: number;
}

export interface CollectorOptions {
  qos?: QoS;
  protocolVersion?: 4 | 5;
  /** Reconnect (every 50 ms) and resubscribe after the broker went away. */
  reconnect?: boolean;
  /** MQTT 5 Retain As Published, to see the retain flag the publisher sent. */
  rap?: boolean;
  clientId?: string;
  /** For a broker that wants a user name and password. */
  username?: string;
  password?: string;
}

/** Subscribes on a broker and records every message it delivers. */
export class Collector {
  readonly messages: Received[] = [];

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: Buffer.from(payload), qos: packet.qos, retain: packet.retain, properties: packet.properties, at: Date.now() });
    });
  }

  static async start(target: number | string, filters: string | string[], opts: CollectorOptions = {}): Promise<Collector> {
    const client = await connectClient(target, {
      protocolVersion: opts.protocolVersion ?? 4,
      clientId: opts.clientId ?? `collector-${process.pid}-${Math.random().toString(36).slice(2, 10)}`,
      reconnectPeriod: opts.reconnect ? 50 : 0,
      clean: true,
      username: opts.username,
      password: opts.password,
    });
    const c = new Collector(client);
    const list = Array.isArray(filters) ? filters : [filters];
    const subscription: mqtt.ISubscriptionMap = {};
    for (const f of list) subscription[f] = { qos: opts.qos ?? 2, ...(opts.rap ? { rap: true } : {}) };
    const granted = await withTimeout(client.subscribeAsync(subscription), 10_000, `SUBACK for ${list.join(', ')}`);
    for (const g of granted) {
      if (g.qos >= 0x80) throw new Error(`subscription to ${g.topic} refused (${g.qos})`);
    }
    return c;
  }

  count(pred: (m: Received) => boolean = () => true): number {
    let n = 0;
    for (const m of this.messages) if (pred(m)) n++;
    return n;
  }

  on(topic: string): Received[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  /** Waits until at least `n` messages match `pred`. */
  async waitForCount(n: number, pred: (m: Received) => boolean = () => true, timeoutMs = 10_000, what = `${n} messages`): Promise<Received[]> {
    await waitFor(what, () => this.count(pred) >= n, {
      timeoutMs, detail: () => `got ${this.count(pred)} matching of ${this.messages.length} received`,
    });
    return this.messages.filter(pred);
  }

  async close(): Promise<void> {
    await closeClient(this.client);
  }
}

/** A socket speaking raw bytes; server packets are decoded with mqtt-packet as they come. */
export class RawClient {
  readonly packets: mqttPacket.Packet[] = [];
  readonly bytes: Buffer[] = [];
  closed = false;
  closedAt = 0;
  readonly openedAt = Date.now();
  parseError: Error | undefined;
  private readonly parser: mqttPacket.Parser;

  private constructor(readonly socket: net.Socket, readonly version: 4 | 5) {
    this.parser = mqttPacket.parser({ protocolVersion: version });
    this.parser.on('packet', (p: mqttPacket.Packet) => this.packets.push(p));
    this.parser.on('error', (err: Error) => { this.parseError ??= err; });
    socket.on('data', (chunk: Buffer) => {
      this.bytes.push(chunk);
      this.parser.parse(chunk);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.closedAt = Date.now();
    });
  }

  /** Opens a TCP connection. `version` selects how the server's answers are decoded. */
  static open(port: number, version: 4 | 5 = 4): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: HOST, port });
      socket.setNoDelay(true);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawClient(socket, version));
      });
      socket.once('error', reject);
    });
  }

  /** Opens a connection, sends CONNECT and waits for a successful CONNACK. */
  static async connected(port: number, version: 4 | 5 = 4, connect: Partial<mqttPacket.IConnectPacket> = {}): Promise<RawClient> {
    const c = await RawClient.open(port, version);
    const connack = await c.handshake(connect);
    const code = connack.reasonCode ?? connack.returnCode;
    if (code !== 0) throw new Error(`CONNACK refused with ${code}`);
    return c;
  }

  send(bytes: Buffer | number[]): void {
    if (!this.socket.destroyed) this.socket.write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes));
  }

  /** The bytes mqtt-packet generates for `packet` at this client's protocol level. */
  encode(packet: mqttPacket.Packet): Buffer {
    return mqttPacket.generate(packet, { protocolVersion: this.version });
  }

  sendPacket(packet: mqttPacket.Packet): void {
    this.send(this.encode(packet));
  }

  /** Sends CONNECT (clean session, keep-alive 0 unless given) and waits for CONNACK. */
  async handshake(connect: Partial<mqttPacket.IConnectPacket> = {}, timeoutMs = 10_000): Promise<mqttPacket.IConnackPacket> {
    this.sendPacket({
      cmd: 'connect', protocolId: 'MQTT', protocolVersion: this.version, clean: true, keepalive: 0,
      clientId: `raw-${process.pid}-${Math.random().toString(36).slice(2, 10)}`, ...connect,
    } as mqttPacket.IConnectPacket);
    return await this.waitForPacket('connack', timeoutMs) as mqttPacket.IConnackPacket;
  }

  /** Waits for the first packet of type `cmd` (already received or still to come). */
  waitForPacket(cmd: mqttPacket.PacketCmd, timeoutMs = 10_000): Promise<mqttPacket.Packet> {
    return waitFor(`a ${cmd} packet`, () => this.packets.find((p) => p.cmd === cmd) ?? (this.closed ? fail(`closed before ${cmd}; got ${this.describe()}`) : undefined), {
      timeoutMs, detail: () => this.describe(),
    });
  }

  /** Resolves once the server closed the connection; rejects after `timeoutMs`. */
  async waitClosed(timeoutMs = 10_000): Promise<void> {
    await waitFor('the server to close the connection', () => this.closed, { timeoutMs, detail: () => this.describe() });
  }

  /** Reason code of a DISCONNECT received from the server, if any. */
  disconnectReason(): number | undefined {
    const d = this.packets.find((p) => p.cmd === 'disconnect') as mqttPacket.IDisconnectPacket | undefined;
    return d === undefined ? undefined : (d.reasonCode ?? 0);
  }

  /** Everything received, split into packets without decoding. */
  rawPackets(): RawPacket[] {
    return splitPackets(Buffer.concat(this.bytes));
  }

  describe(): string {
    const raw = Buffer.concat(this.bytes).toString('hex');
    return `packets ${JSON.stringify(this.packets.map((p) => ({ cmd: p.cmd, ...('reasonCode' in p ? { reasonCode: p.reasonCode } : {}), ...('returnCode' in p ? { returnCode: p.returnCode } : {}) })))}, bytes ${raw.slice(0, 200)}, closed ${this.closed}`;
  }

  destroy(): void {
    this.socket.destroy();
  }

  close(): void {
    this.destroy();
  }
}

function fail(message: string): never {
  throw new Error(message);
}

export const MOSQUITTO_PUB = fs.existsSync('/usr/bin/mosquitto_pub') ? '/usr/bin/mosquitto_pub' : 'mosquitto_pub';

/** Runs mosquitto_pub against loopback:`port` with `args`; resolves with its exit code and stderr. */
export async function mosquittoPub(port: number, args: string[], timeoutMs = 15_000): Promise<{ code: number | null; stderr: string }> {
  const child = track(spawn(MOSQUITTO_PUB, ['-h', HOST, '-p', String(port), ...args], { stdio: ['ignore', 'ignore', 'pipe'] }));
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => { stderr += s; });
  try {
    const info = await withTimeout(exitOf(child), timeoutMs, 'mosquitto_pub to exit');
    return { code: info.code, stderr };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

/** Waits until the retained status of every broker connection `{proxyId}-{broker}-{0..pool-1}`
 *  is `online` (`status`: `online <address>` for a broker with failover addresses) on the broker
 *  at `brokerPort`, i.e. the daemon's pool is connected there. */
export async function waitPoolOnline(brokerPort: number, proxyId: string, broker: string, pool: number, timeoutMs = 20_000, status = 'online'): Promise<void> {
  const c = await Collector.start(brokerPort, 'fanout/status/+', { qos: 1 });
  const prefix = `fanout/status/${proxyId}-${broker}-`;
  try {
    await waitFor(`${pool} ${broker} connections of ${proxyId} to be online`, () => {
      const latest = new Map<string, string>();
      for (const m of c.messages) if (m.topic.startsWith(prefix)) latest.set(m.topic, m.payload.toString());
      let online = 0;
      for (const v of latest.values()) if (v === status) online++;
      return online >= pool;
    }, { timeoutMs, detail: () => JSON.stringify(c.messages.map((m) => [m.topic, m.payload.toString()])) });
  } finally {
    await c.close();
  }
}

export interface RawPacket {
  /** First byte: type << 4 | flags. */
  header: number;
  type: number;
  body: Buffer;
}

/** Splits bytes into MQTT packets without interpreting them (for answers mqtt-packet would
 *  refuse to decode). A trailing incomplete packet is left out. */
export function splitPackets(bytes: Buffer): RawPacket[] {
  const out: RawPacket[] = [];
  let pos = 0;
  while (pos + 2 <= bytes.length) {
    let len = 0;
    let mul = 1;
    let i = pos + 1;
    for (;;) {
      if (i >= bytes.length) return out;
      const b = bytes[i++];
      len += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) break;
      mul *= 128;
    }
    if (i + len > bytes.length) return out;
    out.push({ header: bytes[pos], type: bytes[pos] >> 4, body: bytes.subarray(i, i + len) });
    pos = i + len;
  }
  return out;
}
