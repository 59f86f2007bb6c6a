// A QoS 1 stream from several devices through the proxy, and tallies at the brokers that count
// every message by device and sequence number: what a chaos or spool test asserts on. Payloads
// are `<run>/<device>/<seq>`, so a tally tells missing from duplicate exactly.

import type { MqttClient } from 'mqtt';
import { closeClient, connectClient, Collector, type QoS } from './clients';
import { sleep, waitFor } from './wait';

export interface StreamOptions {
  devices: number;
  /** Messages per device. */
  messages: number;
  qos?: QoS;
  /** Unacknowledged publishes allowed per device. */
  window?: number;
  /** Pause between publishes of one device, ms (0: as fast as acknowledgements allow). */
  gapMs?: number;
  /** Topic of device d's messages. */
  topic?: (run: string, device: number) => string;
  payloadBytes?: number;
  /** Devices reconnect (every 100 ms) if the proxy closes them, and go on. */
  reconnect?: boolean;
  protocolVersion?: 4 | 5;
}

/** Devices publishing numbered messages; `acked` holds every key the proxy acknowledged. */
export class Stream {
  readonly acked = new Set<string>();
  readonly sent = new Set<string>();
  readonly errors: string[] = [];
  /** Times each device's connection closed. */
  readonly closes: number[] = [];
  private readonly clients: MqttClient[] = [];
  private stopped = false;

  private constructor(readonly run: string, readonly opts: StreamOptions) {}

  static async connect(port: number, run: string, opts: StreamOptions): Promise<Stream> {
    const s = new Stream(run, opts);
    for (let d = 0; d < opts.devices; d++) {
      const client = await connectClient(port, {
        clientId: `${run}-d${d}`.replace(/\//g, '-'),
        protocolVersion: opts.protocolVersion ?? 4,
        // A persistent session, so that unacknowledged publishes are sent again on reconnect.
        clean: !opts.reconnect,
        reconnectPeriod: opts.reconnect ? 100 : 0,
      });
      s.closes.push(0);
      client.on('close', () => { s.closes[d]++; });
      s.clients.push(client);
    }
    return s;
  }

  key(device: number, seq: number): string {
    return `${this.run}/${device}/${seq}`;
  }

  topicOf(device: number): string {
    return this.opts.topic?.(this.run, device) ?? `${this.run}/d${device}`;
  }

  /** Publishes every message (resolves when all were acknowledged or stop() was called). */
  async publishAll(): Promise<void> {
    await Promise.all(this.clients.map((c, d) => this.device(c, d)));
  }

  private async device(client: MqttClient, d: number): Promise<void> {
    const window = this.opts.window ?? 10;
    const qos = this.opts.qos ?? 1;
    const pad = this.opts.payloadBytes === undefined ? '' : '.'.repeat(Math.max(0, this.opts.payloadBytes - 40));
    const pending = new Set<Promise<void>>();
    for (let seq = 0; seq < this.opts.messages && !this.stopped; seq++) {
      while (pending.size >= window) await Promise.race(pending);
      const key = this.key(d, seq);
      this.sent.add(key);
      const p: Promise<void> = client.publishAsync(this.topicOf(d), `${key}|${pad}`, { qos }).then(
        () => { this.acked.add(key); },
        (err: Error) => { this.errors.push(`${key}: ${err.message}`); },
      ).finally(() => pending.delete(p));
      pending.add(p);
      if (this.opts.gapMs) await sleep(this.opts.gapMs);
    }
    await Promise.all(pending);
  }

  /** Devices whose connection is up now. */
  connected(): number {
    return this.clients.filter((c) => c.connected).length;
  }

  /** Keys of every message the devices published (acknowledged or not). */
  all(): string[] {
    const keys: string[] = [];
    for (let d = 0; d < this.opts.devices; d++) for (let seq = 0; seq < this.opts.messages; seq++) keys.push(this.key(d, seq));
    return keys;
  }

  stop(): void {
    this.stopped = true;
  }

  async close(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.clients.map((c) => closeClient(c)));
  }
}

/** Counts the stream's messages arriving at one broker. */
export class Tally {
  readonly seen = new Map<string, number>();

  private constructor(readonly collector: Collector, private readonly run: string) {
    collector.client.on('message', (_topic, payload) => {
      const text = payload.toString();
      const key = text.slice(0, text.indexOf('|'));
      if (!key.startsWith(`${run}/`)) return;
      this.seen.set(key, (this.seen.get(key) ?? 0) + 1);
    });
  }

  static async start(brokerPort: number, run: string, filter = `${run}/#`): Promise<Tally> {
    return new Tally(await Collector.start(brokerPort, filter, { qos: 1, reconnect: true }), run);
  }

  missing(keys: Iterable<string>): string[] {
    const out: string[] = [];
    for (const k of keys) if (!this.seen.has(k)) out.push(k);
    return out;
  }

  get duplicates(): number {
    let n = 0;
    for (const c of this.seen.values()) n += c - 1;
    return n;
  }

  /** Waits until every key is here; the detail names what is missing. */
  async waitAll(keys: Iterable<string>, what: string, timeoutMs = 30_000): Promise<void> {
    const list = [...keys];
    await waitFor(`every message at ${what}`, () => this.missing(list).length === 0, {
      timeoutMs,
      detail: () => {
        const m = this.missing(list);
        return `${list.length - m.length} of ${list.length} here; missing e.g. ${m.slice(0, 5).join(', ')}`;
      },
    });
  }

  async close(): Promise<void> {
    await this.collector.close();
  }
}
