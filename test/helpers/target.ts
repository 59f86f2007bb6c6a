// What a device subscribes to in the downlink conformance tests: the proxy in front of one
// mosquitto (default), or that mosquitto itself (DOWNLINK_TARGET=mosquitto), so every test's
// expectation can be checked against a conformant broker first. Devices and upstream
// publishers are mqtt.js clients whose deliveries are recorded from the first byte on.

import mqtt, {
  type IClientOptions, type IClientPublishOptions, type IClientSubscribeOptions, type IConnackPacket,
  type IDisconnectPacket, type IPublishPacket, type ISubscriptionMap, type MqttClient,
} from 'mqtt';
import type * as mqttPacket from 'mqtt-packet';
import { closeClient, RawClient, urlOf, waitPoolOnline, type QoS } from './clients';
import { DaemonProcess } from './daemon';
import { Mosquitto } from './mosquitto';
import { sleep, waitFor, withTimeout } from './wait';

export type TargetKind = 'proxy' | 'mosquitto';

/** DOWNLINK_TARGET: `proxy` (default) or `mosquitto`. */
export function targetKind(): TargetKind {
  const v = (process.env.DOWNLINK_TARGET ?? 'proxy').trim().toLowerCase();
  if (v === '' || v === 'proxy') return 'proxy';
  if (v === 'mosquitto') return 'mosquitto';
  throw new Error(`DOWNLINK_TARGET must be "proxy" or "mosquitto", not "${v}"`);
}

/** How long a test waits for something that must arrive. Generous for a loaded machine, short
 *  enough that a target that never delivers fails a test in seconds. */
export const DELIVERY_MS = 5000;
/** Grace period before asserting that something did NOT arrive, after a fence (a message sent
 *  after it, which did arrive) or an event that would have triggered it. Not a timing bound:
 *  a target that delivers later still fails, just less often. */
export const SETTLE_MS = 250;

export interface TargetOptions {
  /** Proxy only: MQTT version the proxy speaks to the upstream broker (default 5). */
  upstreamProtocol?: 4 | 5;
  /** Proxy only: FANOUT_SHARDS (default 2). */
  shards?: number;
  /** Proxy only: connections in the proxy's pool to the upstream broker (default 2). */
  pool?: number;
  /** Proxy only: more FANOUT_* variables. */
  env?: Record<string, string | number | undefined>;
}

export interface Delivered {
  topic: string;
  payload: Buffer;
  /** The payload as UTF-8. */
  text: string;
  qos: QoS;
  retain: boolean;
  dup: boolean;
  messageId?: number;
  properties?: IPublishPacket['properties'];
}

let counter = 0;
/** A string no other test of this run (or of a parallel run) uses: for topics and client ids. */
export function unique(tag: string): string {
  counter++;
  return `${tag}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 7)}`;
}

/** An mqtt.js client that records every PUBLISH it receives, from before CONNACK on, and how
 *  its connection ended. mqtt.js hands a QoS 2 message over when its PUBREL arrives, so that is
 *  when it is recorded (a PUBREL re-sent to a new connection records nothing). */
export class Device {
  readonly messages: Delivered[] = [];
  readonly disconnects: IDisconnectPacket[] = [];
  closed = false;
  connack!: IConnackPacket;
  private ended: Promise<void> | undefined;

  constructor(readonly client: MqttClient, readonly label: string) {
    client.on('message', (topic, payload, packet) => {
      const p = Buffer.from(payload);
      this.messages.push({
        topic, payload: p, text: p.toString('utf8'), qos: packet.qos, retain: packet.retain, dup: packet.dup,
        messageId: packet.messageId, properties: packet.properties,
      });
    });
    client.on('disconnect', (p: IDisconnectPacket) => this.disconnects.push(p));
    client.on('close', () => { this.closed = true; });
  }

  get sessionPresent(): boolean {
    return this.connack.sessionPresent;
  }

  /** Sends SUBSCRIBE and resolves with the SUBACK's return / reason codes, failures included. */
  async subscribe(filters: string | string[] | ISubscriptionMap, opts: IClientSubscribeOptions = { qos: 2 }): Promise<number[]> {
    try {
      const grants = await withTimeout(this.client.subscribeAsync(filters, opts), DELIVERY_MS, `SUBACK for ${JSON.stringify(filters)} (${this.label})`);
      return grants.map((g) => g.qos);
    } catch (err) {
      const packet = (err as { packet?: { granted?: number[] } }).packet;
      if (packet?.granted) return packet.granted;
      throw err;
    }
  }

  /** Subscribes and fails unless every filter was granted exactly the QoS asked for. */
  async subscribeOk(filters: string | string[] | ISubscriptionMap, opts: IClientSubscribeOptions = { qos: 2 }): Promise<void> {
    const codes = await this.subscribe(filters, opts);
    const wanted = typeof filters === 'string' || Array.isArray(filters)
      ? (Array.isArray(filters) ? filters : [filters]).map(() => opts.qos)
      : Object.entries(filters).filter(([k]) => k !== 'resubscribe').map(([, o]) => (o as IClientSubscribeOptions).qos);
    if (codes.length !== wanted.length || codes.some((c, i) => c !== wanted[i])) {
      const hex = codes.map((c) => `0x${c.toString(16).padStart(2, '0')}`).join(', ');
      throw new Error(`${this.label}: SUBACK for ${JSON.stringify(filters)} granted [${hex}], expected QoS [${wanted.join(', ')}]`);
    }
  }

  /** Sends UNSUBSCRIBE and resolves with the UNSUBACK's reason codes (none for MQTT 3.1.1). */
  async unsubscribe(filters: string | string[]): Promise<number[]> {
    const ack = await withTimeout(this.client.unsubscribeAsync(filters), DELIVERY_MS, `UNSUBACK for ${JSON.stringify(filters)} (${this.label})`);
    return (ack as { granted?: number[] } | undefined)?.granted ?? [];
  }

  async publish(topic: string, payload: string | Buffer, opts: IClientPublishOptions = {}): Promise<void> {
    await withTimeout(this.client.publishAsync(topic, payload, opts), DELIVERY_MS, `publish to ${topic} to complete (${this.label})`);
  }

  on(topic: string): Delivered[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  count(pred: (m: Delivered) => boolean): number {
    let n = 0;
    for (const m of this.messages) if (pred(m)) n++;
    return n;
  }

  /** Waits until at least `n` deliveries match `pred`, and resolves with all that do. */
  async waitFor(n: number, pred: (m: Delivered) => boolean, what: string, timeoutMs = DELIVERY_MS): Promise<Delivered[]> {
    await waitFor(`${this.label} to receive ${what}`, () => this.count(pred) >= n, {
      timeoutMs, detail: () => `got ${this.count(pred)} matching; all received: ${this.describe()}`,
    });
    return this.messages.filter(pred);
  }

  /** Waits for `n` deliveries on `topic`. */
  waitOn(topic: string, n = 1, timeoutMs = DELIVERY_MS): Promise<Delivered[]> {
    return this.waitFor(n, (m) => m.topic === topic, `${n} message(s) on ${topic}`, timeoutMs);
  }

  async waitClosed(timeoutMs = DELIVERY_MS): Promise<void> {
    await waitFor(`${this.label} to be disconnected by the server`, () => this.closed, { timeoutMs });
  }

  describe(): string {
    return JSON.stringify(this.messages.slice(-20).map((m) => ({ t: m.topic, p: m.text.slice(0, 40), q: m.qos, r: m.retain, d: m.dup })));
  }

  /** Drops the connection without DISCONNECT (idempotent). */
  close(): Promise<void> {
    this.ended ??= closeClient(this.client);
    return this.ended;
  }
}

export interface Target {
  readonly kind: TargetKind;
  /** For test names: `proxy (upstream MQTT 5)` or `mosquitto`. */
  readonly label: string;
  /** Where devices connect. */
  readonly devicePort: number;
  /** Where upstream publishers connect (the mosquitto). */
  readonly upstreamPort: number;
  readonly upstream: Mosquitto;
  readonly daemon: DaemonProcess | undefined;
  /** An mqtt.js device connected to the target (MQTT 5 and clean unless `opts` says otherwise). */
  connectDevice(opts?: IClientOptions, label?: string): Promise<Device>;
  /** An mqtt.js client connected straight to the upstream broker (MQTT 5 unless told otherwise). */
  connectUpstream(opts?: IClientOptions, label?: string): Promise<Device>;
  /** A raw-socket device with a successful CONNECT (clean unless `connect` says otherwise). */
  rawDevice(version: 4 | 5, connect?: Partial<mqttPacket.IConnectPacket>): Promise<RawClient>;
  /** A raw socket to the device port, nothing sent yet. */
  openRawDevice(version: 4 | 5): Promise<RawClient>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

/** Connects mqtt.js to `port` with a Device recording from before the CONNACK. Rejects if the
 *  connection is refused or closed before CONNACK. Never reconnects by itself. */
export async function connectDeviceTo(port: number, opts: IClientOptions, label: string): Promise<Device> {
  const client = mqtt.connect(urlOf(port), {
    protocolVersion: 5, clean: true, clientId: unique('dev'), connectTimeout: DELIVERY_MS, ...opts, reconnectPeriod: 0,
  });
  const device = new Device(client, label);
  try {
    device.connack = await new Promise<IConnackPacket>((resolve, reject) => {
      const onConnect = (connack: IConnackPacket): void => { cleanup(); resolve(connack); };
      const onError = (err: Error): void => { cleanup(); reject(err); };
      const onClose = (): void => { cleanup(); reject(new Error(`${label}: connection closed before CONNACK`)); };
      const cleanup = (): void => {
        client.off('connect', onConnect);
        client.off('error', onError);
        client.off('close', onClose);
      };
      client.once('connect', onConnect);
      client.once('error', onError);
      client.once('close', onClose);
    });
  } catch (err) {
    client.end(true);
    throw err;
  }
  // Later errors (a takeover, a refused packet) are the test's to observe through `closed`.
  client.on('error', () => undefined);
  return device;
}

/** Starts mosquitto and, for the proxy target, the built daemon in front of it. */
export async function startTarget(opts: TargetOptions = {}): Promise<Target> {
  const kind = targetKind();
  const upstream = await Mosquitto.start();
  let daemon: DaemonProcess | undefined;
  const upstreamProtocol = opts.upstreamProtocol ?? 5;
  const pool = opts.pool ?? 2;
  try {
    if (kind === 'proxy') {
      // MQTT 5 is the broker default: left out, so that the default is what these tests check.
      const params = { ...(upstreamProtocol === 5 ? {} : { protocol: '3.1.1' }), pool };
      daemon = await DaemonProcess.start({
        FANOUT_BROKERS: `up=${upstream.url(params)}`,
        FANOUT_SHARDS: opts.shards ?? 2,
        ...opts.env,
      });
      await waitPoolOnline(upstream.port, daemon.proxyId, 'up', pool);
    }
  } catch (err) {
    await daemon?.close();
    await upstream.close();
    throw err;
  }
  const devicePort = daemon ? daemon.port : upstream.port;
  const open = new Set<{ close(): unknown }>();
  const keep = <T extends { close(): unknown }>(r: T): T => {
    open.add(r);
    return r;
  };
  let n = 0;
  const stop = async (): Promise<void> => {
    await Promise.all([...open].map(async (r) => {
      try {
        await r.close();
      } catch {
        // already gone
      }
    }));
    open.clear();
    if (daemon) await daemon.close();
    await upstream.close();
  };
  return {
    kind,
    label: kind === 'proxy' ? `proxy (upstream MQTT ${upstreamProtocol === 5 ? '5' : '3.1.1'}, ${opts.shards ?? 2} shards)` : 'mosquitto',
    devicePort,
    upstreamPort: upstream.port,
    upstream,
    daemon,
    connectDevice: async (o = {}, label) => keep(await connectDeviceTo(devicePort, o, label ?? `device ${++n}`)),
    connectUpstream: async (o = {}, label) => keep(await connectDeviceTo(upstream.port, o, label ?? `upstream publisher ${++n}`)),
    rawDevice: async (version, connect = {}) => keep(await RawClient.connected(devicePort, version, connect)),
    openRawDevice: async (version) => keep(await RawClient.open(devicePort, version)),
    stop,
    close: stop,
  };
}

/** PUBLISH packets a raw client received (decoded by mqtt-packet). */
export function publishesOf(raw: RawClient): mqttPacket.IPublishPacket[] {
  return raw.packets.filter((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');
}

/** Sends SUBSCRIBE on a raw client and waits for its SUBACK; resolves with the codes. */
export async function rawSubscribe(raw: RawClient, subscriptions: mqttPacket.ISubscription[], messageId: number, properties?: mqttPacket.ISubscribePacket['properties']): Promise<number[]> {
  raw.sendPacket({ cmd: 'subscribe', messageId, subscriptions, ...(properties ? { properties } : {}) } as mqttPacket.ISubscribePacket);
  const ack = await waitFor(`SUBACK ${messageId}`, () => raw.packets.find((p) => p.cmd === 'suback' && p.messageId === messageId)
    ?? (raw.closed ? fail(`closed before SUBACK ${messageId}: ${raw.describe()}`) : undefined), { timeoutMs: DELIVERY_MS, detail: () => raw.describe() });
  return (ack as mqttPacket.ISubackPacket).granted as number[];
}

/** Like rawSubscribe, but fails unless every filter was granted the QoS asked for. */
export async function rawSubscribeOk(raw: RawClient, subscriptions: mqttPacket.ISubscription[], messageId: number, properties?: mqttPacket.ISubscribePacket['properties']): Promise<void> {
  const codes = await rawSubscribe(raw, subscriptions, messageId, properties);
  const wanted = subscriptions.map((s) => s.qos);
  if (codes.length !== wanted.length || codes.some((c, i) => c !== wanted[i])) {
    throw new Error(`SUBACK granted [${codes.map((c) => `0x${c.toString(16)}`).join(', ')}], expected QoS [${wanted.join(', ')}]`);
  }
}

/** Waits until a raw client has received at least `n` PUBLISH packets matching `pred`. */
export async function waitPublishes(raw: RawClient, n: number, pred: (p: mqttPacket.IPublishPacket) => boolean, what: string, timeoutMs = DELIVERY_MS): Promise<mqttPacket.IPublishPacket[]> {
  await waitFor(what, () => publishesOf(raw).filter(pred).length >= n || (raw.closed ? fail(`connection closed while waiting for ${what}: ${raw.describe()}`) : false), {
    timeoutMs, detail: () => `got ${publishesOf(raw).filter(pred).length}; ${raw.describe()}`,
  });
  return publishesOf(raw).filter(pred);
}

/** Decoded payload text of a raw PUBLISH. */
export function textOf(p: mqttPacket.IPublishPacket): string {
  return Buffer.from(p.payload as Buffer).toString('utf8');
}

/** Sleeps SETTLE_MS: the grace period before asserting that something did not arrive. */
export function settle(): Promise<void> {
  return sleep(SETTLE_MS);
}

function fail(message: string): never {
  throw new Error(message);
}
