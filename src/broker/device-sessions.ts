// Per-device upstream mode, the writer's side: every device's own session at this writer's
// broker. The writer owns all of its broker's connections, these included; shards ask for a
// device's session over their control channel (dev-open) and answer the device's CONNECT once
// it is up. The device's publishes come through the same uplink ring as in pooled mode and go to
// its own session: a record is sent when the session can take it, parked (copied, bounded) when
// it cannot, so that one device waiting for its broker does not hold every other device of its
// shard back; a device with too much parked is not read from any more (dev-hold) and, past a hard
// bound, its records wait in the ring as in pooled mode. What the broker sends on a session goes
// to the device's shard in its downlink ring, addressed to that device (REC_DELIVER_DEVICE).
//
// Sessions connect in turn (FANOUT_UPSTREAM_CONNECT_RATE), and a client id is held by one
// session at a time: a device that takes its client id over on another connection gets a new
// session only once the old one has ended (its end comes down the old connection's ring).

import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { BrokerConfig, Config } from '../config/types';
import { loadCredentialsMap, mappedCredentials, perDeviceBrokers, upstreamClientId, type CredentialsMap } from '../config/upstream';
import type { RateLimitedLog } from '../log';
import type { LatencyRecorder } from '../metrics/latency';
import type { WriterStats } from '../metrics/stats';
import { forwardProperties, type ForwardScan } from '../protocol/properties';
import { readVarint, varintEnd } from '../protocol/framer';
import { copyBytes } from '../protocol/bytes';
import * as C from '../protocol/constants';
import {
  CLOSE_LOST, CLOSE_QUIET, DEVICE_DOWNLINK_HEADER, FLAG_RETAIN, FLAG_TRACE, FLAG_V5, NO_EXPIRY, NO_TOKEN, REC_DELIVER_DEVICE, REC_DEVICE_CLOSE, REC_PUBLISH, UPLINK_HEADER,
} from '../ring/records';
import type { RingProducer } from '../ring/spsc';
import type { DownlinkRouting } from '../shard/routing';
import { ConnectPacer } from './connect-pacer';
import type { DeviceOpen, DevicesToShard, OpenFailure, ShardToDevices } from './device-protocol';
import { CONNECTING, DOWN, DeviceUpstream, IDLE, UP, type DeviceHost } from './device-upstream';

/** Parked bytes of one device above which the shard stops reading it (dev-hold), and below
 *  half of which it may go on. */
const PARK_SOFT = 64 * 1024;
/** Parked bytes beyond which the device's records wait in the ring instead. */
const PARK_HARD = 1024 * 1024;
/** A session whose client id is still held by an older one waits this long for it to end. */
const TAKEOVER_WAIT_MS = 3000;
/** A device end that arrived before its open (the two travel on different channels). */
const TOMBSTONE_MS = 60_000;
/** CONNACK codes that mean "this device may not connect": on a reconnect, the device goes. */
const REFUSES_DEVICE_V5 = new Set([0x85, 0x86, 0x87, 0x8a, 0x8c]);
const REFUSES_DEVICE_V4 = new Set([0x02, 0x04, 0x05]);
/** Open files the process needs besides the device and session sockets (rings, pool, logs). */
const FD_MARGIN = 200;

/** What DeviceSessions needs from its writer. */
export interface DeviceWriter {
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  readonly now: number;
  readonly rtt: LatencyRecorder;
  readonly maxIncoming: number;
  ack(shard: number, token: number, reason: number): void;
  schedulePump(): void;
}

export class DeviceSessions implements DeviceHost {
  private readonly sessions = new Map<number, DeviceUpstream>();
  private readonly byClientId = new Map<string, DeviceUpstream>();
  private readonly tombstones = new Map<number, number>();
  /** Sessions whose device waits for its CONNACK, with their deadline's timer. */
  private readonly opening = new Map<DeviceUpstream, NodeJS.Timeout>();
  /** Sessions waiting out a backoff delay before their turn. */
  private readonly delayed = new Map<DeviceUpstream, NodeJS.Timeout>();
  private readonly pacer: ConnectPacer<DeviceUpstream>;
  private dirtyList: DeviceUpstream[] = [];
  private readonly heldDown = new Set<DeviceUpstream>();
  private readonly withParked = new Set<DeviceUpstream>();
  private readonly ringDirty: boolean[];
  private outbox: DevicesToShard[][];
  private readonly locals: string[] = [];
  private readonly scan: ForwardScan = { expiry: -1, subIds: [] };
  private propsScratch = Buffer.alloc(1024);
  private map: CredentialsMap | null = null;
  private tlsFiles: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  private heldTimer: NodeJS.Timeout | null = null;

  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  readonly connectTimeoutMs: number;
  readonly deliveredByQos = [0, 0, 0];
  // Counters for /metrics.
  private connects = 0;
  private refusals = 0;
  private losses = 0;
  private timeouts = 0;
  private noSession = 0;
  private tooLarge = 0;
  private downlinkTooLarge = 0;

  constructor(
    private readonly writer: DeviceWriter,
    readonly broker: BrokerConfig,
    private readonly config: Config,
    private readonly index: number,
    private readonly ports: MessagePort[],
    private readonly rings: RingProducer[],
    private readonly routing: DownlinkRouting,
  ) {
    this.reconnectMinMs = config.reconnectMinMs;
    this.reconnectMaxMs = config.reconnectMaxMs;
    this.connectTimeoutMs = config.upstreamConnectTimeoutMs;
    this.ringDirty = rings.map(() => false);
    this.outbox = ports.map(() => []);
    this.pacer = new ConnectPacer(config.upstreamConnectRate, (s) => this.startConnect(s));
    this.loadFiles(true);
  }

  get log(): Logger {
    return this.writer.log;
  }

  get now(): number {
    return this.writer.now;
  }

  get maxIncoming(): number {
    return this.writer.maxIncoming;
  }

  get rtt(): LatencyRecorder {
    return this.writer.rtt;
  }

  get inflight(): number {
    let n = 0;
    for (const s of this.sessions.values()) n += s.inflightCount;
    return n;
  }

  start(): void {
    this.ports.forEach((p) => this.listen(p));
    this.log.info({
      broker: this.broker.name, clientIdTemplate: this.config.upstreamClientId, credentials: this.broker.credentials ?? 'passthrough',
      connectRate: this.config.upstreamConnectRate,
    }, 'per-device upstream mode: every device gets a session of its own at this broker');
    if (this.index === perDeviceBrokers(this.config).indexOf(true)) this.checkFileLimit();
  }

  private listen(port: MessagePort): void {
    port.on('message', (m: ShardToDevices) => {
      this.onShard(m);
      // What it made (a SUBSCRIBE, an answer) goes out with the writer's next turn.
      this.writer.schedulePump();
    });
  }

  /**
   * Shard `s` failed: its devices' connections died with it, so their sessions here end as a
   * lost connection would (the broker publishes their wills); `port` is the new shard's channel.
   */
  resetShard(s: number, port: MessagePort): void {
    this.ports[s] = port;
    this.listen(port);
    this.outbox[s] = [];
    for (const session of [...this.sessions.values()]) if (session.id.shard === s) session.abort();
  }

  /** Each device holds its own socket and one per per-device broker: say at start-up when the
   *  open-file limit cannot hold FANOUT_MAX_CONNECTIONS of them (the first writer says it). */
  private checkFileLimit(): void {
    let limit: number;
    try {
      const m = /^Max open files\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
      if (m === null) return;
      limit = Number(m[1]);
    } catch {
      return;
    }
    const perDevice = 1 + perDeviceBrokers(this.config).filter(Boolean).length;
    const need = this.config.maxConnections * perDevice;
    if (need + FD_MARGIN <= limit) return;
    this.log.warn({
      maxConnections: this.config.maxConnections, filesPerDevice: perDevice, openFileLimit: limit,
      devices: Math.max(0, Math.floor((limit - FD_MARGIN) / perDevice)),
    }, 'per-device mode: the open-file limit (ulimit -n) is reached before FANOUT_MAX_CONNECTIONS; beyond it devices are refused (0x97 / 0x03)');
  }

  /** SIGHUP: the credentials map and the TLS files are read again; a broken map keeps the old one. */
  reload(): void {
    this.loadFiles(false);
  }

  private loadFiles(first: boolean): void {
    const b = this.broker;
    if (b.credentials === 'map' && b.credentialsMap !== undefined) {
      try {
        this.map = loadCredentialsMap(b.credentialsMap);
        if (!first) this.log.info({ broker: b.name, file: b.credentialsMap, entries: this.map.size }, 'credentials map reloaded');
      } catch (err) {
        this.log.error({ broker: b.name, file: b.credentialsMap, err: (err as Error).message }, 'credentials map not (re)loaded; the previous one stays');
      }
    }
    if (b.transport === 'mqtts') {
      try {
        this.tlsFiles = {
          ca: b.ca === null ? undefined : fs.readFileSync(b.ca),
          cert: b.cert === null ? undefined : fs.readFileSync(b.cert),
          key: b.key === null ? undefined : fs.readFileSync(b.key),
        };
      } catch (err) {
        this.log.error({ broker: b.name, err: (err as Error).message }, 'TLS files of the broker not (re)read; the previous ones stay');
      }
    }
  }

  socket(): net.Socket {
    const b = this.broker;
    if (b.transport !== 'mqtts') return net.connect({ host: b.host, port: b.port });
    return tls.connect({
      host: b.host, port: b.port, servername: net.isIP(b.host) ? undefined : b.host,
      ...this.tlsFiles, rejectUnauthorized: !b.insecure,
    });
  }

  private onShard(m: ShardToDevices): void {
    if (m.t === 'dev-batch') for (const one of m.ms) this.onShard(one);
    else if (m.t === 'dev-open') this.open(m);
    else if (m.t === 'dev-sub') this.sessions.get(keyOf(m.shard, m.key))?.subscribe(m.req, m.subs);
    else if (m.t === 'dev-unsub') this.sessions.get(keyOf(m.shard, m.key))?.unsubscribe(m.filters);
  }

  /** Answers go out with the writer's turn, one message per shard. */
  private reply(shard: number, m: DevicesToShard): void {
    this.outbox[shard].push(m);
    this.writer.schedulePump();
  }

  private fail(shard: number, key: number, why: OpenFailure, code = 0): void {
    this.reply(shard, { t: 'dev-opened', broker: this.index, key, ok: false, why, code, version: this.broker.protocolVersion });
  }

  private open(m: DeviceOpen): void {
    const key = keyOf(m.shard, m.key);
    if (this.tombstones.delete(key)) {
      this.fail(m.shard, m.key, 'gone');
      return;
    }
    const b = this.broker;
    let username: string | undefined;
    let password: Buffer | undefined;
    if (b.credentials === 'fixed') {
      username = b.username;
      password = b.password === undefined ? undefined : Buffer.from(b.password);
    } else if (b.credentials === 'map') {
      const c = this.map === null ? undefined : mappedCredentials(this.map, m.username);
      if (c === undefined) {
        this.writer.warnings.warn(`no-credentials-${b.name}`, { broker: b.name, clientId: m.clientId, username: m.username ?? undefined },
          'no entry for the device (nor "*") in the credentials map: device refused');
        this.fail(m.shard, m.key, 'no-credentials');
        return;
      }
      username = c.username;
      password = c.password === undefined ? undefined : Buffer.from(c.password);
    } else {
      username = m.username ?? undefined;
      password = m.password === null ? undefined : Buffer.from(m.password);
    }
    const clientId = upstreamClientId(this.config.upstreamClientId, m.clientId, b.name);
    const s = new DeviceUpstream(this, {
      shard: m.shard, key: m.key, deviceClientId: m.clientId, clientId, username, password, clean: m.clean, expiryS: m.expiryS,
      will: m.will, maxPacketSize: m.maxPacketSize, userProperties: m.userProperties, trace: m.trace,
    }, m.subs);
    s.openedAt = Date.now();
    this.sessions.get(key)?.abort();
    this.sessions.set(key, s);
    this.opening.set(s, setTimeout(() => this.openTimedOut(s), this.connectTimeoutMs));
    const previous = this.byClientId.get(clientId);
    this.byClientId.set(clientId, s);
    if (previous !== undefined && !previous.closed) {
      // The client id is still held: its session ends first (its device is being taken over),
      // so the broker never sees the two fight over it.
      previous.successor = s;
      setTimeout(() => {
        if (previous.closed) return;
        this.log.debug({ broker: b.name, clientId }, 'older session of a taken-over client id did not end in time: closed');
        previous.close(CLOSE_LOST, 0, -1);
        setTimeout(() => previous.abort(), 1000).unref();
      }, TAKEOVER_WAIT_MS).unref();
      return;
    }
    this.pacer.push(s);
  }

  private openTimedOut(s: DeviceUpstream): void {
    if (!this.opening.delete(s)) return;
    this.timeouts++;
    this.writer.warnings.warn(`connect-timeout-${this.broker.name}`, {
      broker: this.broker.name, clientId: s.id.clientId, waitedMs: Date.now() - s.openedAt, queued: this.pacer.waiting, lastError: s.lastError || undefined,
    }, 'device session not up within FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS: device refused');
    this.fail(s.id.shard, s.id.key, 'timeout');
    s.abort();
  }

  private startConnect(s: DeviceUpstream): void {
    if (s.closed || s.leaving || (s.state !== IDLE && s.state !== DOWN)) return;
    this.connects++;
    s.connect();
  }

  queueConnect(s: DeviceUpstream, delayMs: number): void {
    if (delayMs <= 0) {
      this.pacer.push(s);
      return;
    }
    this.delayed.set(s, setTimeout(() => {
      this.delayed.delete(s);
      this.pacer.push(s);
    }, delayMs));
  }

  onUp(s: DeviceUpstream, present: boolean): void {
    const timer = this.opening.get(s);
    if (timer !== undefined) {
      clearTimeout(timer);
      this.opening.delete(s);
      this.log.debug({ broker: this.broker.name, clientId: s.id.clientId, present, waitedMs: Date.now() - s.openedAt }, 'device session up');
      this.reply(s.id.shard, { t: 'dev-opened', broker: this.index, key: s.id.key, ok: true, present });
    } else {
      this.log.debug({ broker: this.broker.name, clientId: s.id.clientId, present }, 'device session re-established');
    }
    if (s.parked.length > 0) this.withParked.add(s);
  }

  onRefused(s: DeviceUpstream, code: number): void {
    this.refusals++;
    const b = this.broker;
    this.writer.warnings.warn(`refused-${b.name}-${code}`, { broker: b.name, clientId: s.id.clientId, code }, 'broker refused a device session');
    if (this.opening.has(s)) {
      clearTimeout(this.opening.get(s));
      this.opening.delete(s);
      this.fail(s.id.shard, s.id.key, 'refused', code);
      s.abort();
      return;
    }
    if ((b.protocolVersion === 5 ? REFUSES_DEVICE_V5 : REFUSES_DEVICE_V4).has(code)) {
      this.reply(s.id.shard, { t: 'dev-refused', broker: this.index, key: s.id.key, code, version: b.protocolVersion });
      s.abort();
      return;
    }
    s.retry();
  }

  onLost(s: DeviceUpstream, why: string): void {
    if (this.opening.has(s) && (why === 'EMFILE' || why === 'ENFILE')) {
      clearTimeout(this.opening.get(s));
      this.opening.delete(s);
      this.writer.warnings.warn(`files-${this.broker.name}`, { broker: this.broker.name, clientId: s.id.clientId, error: why },
        'out of file descriptors for device sessions (ulimit -n): device refused');
      this.fail(s.id.shard, s.id.key, 'files');
      s.abort();
      return;
    }
    if (why === 'lost') {
      this.losses++;
      this.writer.warnings.warn(`lost-${this.broker.name}`, { broker: this.broker.name, clientId: s.id.clientId, inflight: s.inflightCount },
        'device session lost; reconnecting (the broker may have published the device\'s will)');
    }
    s.retry();
  }

  onClosed(s: DeviceUpstream): void {
    const key = keyOf(s.id.shard, s.id.key);
    if (this.sessions.get(key) === s) this.sessions.delete(key);
    if (this.byClientId.get(s.id.clientId) === s) this.byClientId.delete(s.id.clientId);
    const timer = this.opening.get(s);
    if (timer !== undefined) {
      clearTimeout(timer);
      this.opening.delete(s);
      this.fail(s.id.shard, s.id.key, 'gone');
    }
    const wait = this.delayed.get(s);
    if (wait !== undefined) {
      clearTimeout(wait);
      this.delayed.delete(s);
    }
    this.pacer.remove(s);
    for (let q = 0; q < 3; q++) this.closedSent[q] += s.sent[q];
    for (let q = 0; q < 3; q++) this.closedBytesOut[q] += s.bytesOut[q];
    this.closedBytesIn += s.bytesIn;
    this.closedReconnects += s.reconnects;
    this.heldDown.delete(s);
    this.withParked.delete(s);
    this.log.debug({ broker: this.broker.name, clientId: s.id.clientId }, 'device session ended');
    const next = s.successor;
    s.successor = null;
    if (next !== null && !next.closed) this.pacer.push(next);
    this.writer.schedulePump();
  }

  ack(shard: number, token: number, reason: number): void {
    this.writer.ack(shard, token, reason);
  }

  schedulePump(): void {
    this.writer.schedulePump();
  }

  dirty(s: DeviceUpstream): void {
    this.dirtyList.push(s);
  }

  progressed(s: DeviceUpstream): void {
    if (s.parked.length > 0) this.withParked.add(s);
    this.writer.schedulePump();
  }

  onSuback(s: DeviceUpstream, req: number, codes: number[]): void {
    this.reply(s.id.shard, { t: 'dev-suback', broker: this.index, key: s.id.key, req, codes });
  }

  /**
   * An uplink record of a device (key != 0) from shard `s`'s ring at `at`: a publish for its
   * session, or its end. Returns null when the record was taken; the session when it must stay
   * in the ring (too much parked already).
   */
  take(shard: number, deviceKey: number, buf: Buffer, view: DataView, at: number, length: number): DeviceUpstream | null {
    const key = keyOf(shard, deviceKey);
    const s = this.sessions.get(key);
    const kind = buf[at];
    if (kind === REC_DEVICE_CLOSE) {
      if (s === undefined) this.tombstones.set(key, this.now);
      else s.close(buf[at + 1], buf[at + 2], buf[at + 3] === 1 ? view.getUint32(at + 4, true) : -1);
      return null;
    }
    if (kind !== REC_PUBLISH) return null;
    const flags = buf[at + 1];
    const qos = flags & 3;
    const token = view.getUint32(at + 8, true);
    if (s === undefined || s.closed) {
      // The device's session ended or never opened (a broker that refused it while FANOUT_ACK
      // did not need that broker): its publishes for this broker cannot go out as the device.
      this.noSession++;
      this.writer.warnings.warn(`no-session-${this.broker.name}`, { broker: this.broker.name, total: this.noSession },
        'publish of a device without a session at this broker: not forwarded (MQTT 5 devices get 0x80)');
      if (token !== NO_TOKEN) this.writer.ack(shard, token, C.RC_UNSPECIFIED);
      return null;
    }
    const topicLen = view.getUint16(at + 2, true);
    const propsLen = view.getUint32(at + 4, true);
    const topicAt = at + UPLINK_HEADER;
    const propsAt = topicAt + topicLen;
    const payloadAt = propsAt + propsLen;
    const payloadLen = length - UPLINK_HEADER - topicLen - propsLen;
    const retain = (flags & FLAG_RETAIN) !== 0 && this.broker.retain === 'forward';
    const props = (flags & FLAG_V5) !== 0 ? propsLen : 0;
    const trace = (flags & FLAG_TRACE) !== 0;
    if (s.parked.length === 0 && s.canAccept(qos)) {
      this.send(s, qos, retain, token, trace, buf, topicAt, topicLen, buf, propsAt, props, buf, payloadAt, payloadLen);
      return null;
    }
    if (s.parkedBytes >= PARK_HARD) return s;
    s.parked.push({
      qos, retain, token, trace,
      topic: Buffer.from(buf.subarray(topicAt, topicAt + topicLen)),
      props: props > 0 ? Buffer.from(buf.subarray(propsAt, propsAt + props)) : null,
      payload: Buffer.from(buf.subarray(payloadAt, payloadAt + payloadLen)),
    });
    s.parkedBytes += length;
    this.withParked.add(s);
    if (s.parkedBytes > PARK_SOFT && !s.holding) this.hold(s, true);
    return null;
  }

  private send(s: DeviceUpstream, qos: number, retain: boolean, token: number, trace: boolean, topic: Buffer, topicAt: number, topicLen: number,
    propsSrc: Buffer, propsAt: number, propsLen: number, payload: Buffer, payloadAt: number, payloadLen: number): void {
    if (s.publish(qos, retain, token, topic, topicAt, topicLen, propsSrc, propsAt, propsLen, payload, payloadAt, payloadLen, trace)) return;
    this.tooLarge++;
    this.writer.warnings.warn(`too-large-${this.broker.name}`, { broker: this.broker.name, size: payloadLen, total: this.tooLarge },
      'message larger than the broker accepts: not forwarded (MQTT 5 devices get reason 0x83)');
    if (token !== NO_TOKEN) this.writer.ack(s.id.shard, token, C.RC_IMPLEMENTATION_SPECIFIC);
  }

  private hold(s: DeviceUpstream, held: boolean): void {
    s.holding = held;
    this.reply(s.id.shard, { t: 'dev-hold', broker: this.index, key: s.id.key, held });
  }

  /** Start of a writer turn: held broker messages and parked records go on where they can. */
  pump(): void {
    if (this.heldDown.size > 0) {
      for (const s of this.heldDown) if (s.closed || s.retryHeld()) this.heldDown.delete(s);
    }
    if (this.withParked.size === 0) return;
    for (const s of this.withParked) {
      while (s.parked.length > 0 && s.canAccept(s.parked[0].qos)) {
        const p = s.parked.shift()!;
        s.parkedBytes -= UPLINK_HEADER + p.topic.length + (p.props?.length ?? 0) + p.payload.length;
        this.send(s, p.qos, p.retain, p.token, p.trace, p.topic, 0, p.topic.length, p.props ?? p.topic, 0, p.props?.length ?? 0, p.payload, 0, p.payload.length);
      }
      if (s.holding && s.parkedBytes <= PARK_SOFT / 2) this.hold(s, false);
      if (s.parked.length === 0) {
        this.withParked.delete(s);
        s.tryFinishClose();
      }
    }
  }

  /** End of a writer turn: one socket write per session with output, and the downlink records
   *  made visible to the shards. */
  flush(wake: (shard: number) => void): void {
    for (let s = 0; s < this.outbox.length; s++) {
      const ms = this.outbox[s];
      if (ms.length === 0) continue;
      this.outbox[s] = [];
      this.ports[s].postMessage(ms.length === 1 ? ms[0] : { t: 'dev-batch', ms } satisfies DevicesToShard);
    }
    if (this.dirtyList.length > 0) {
      const list = this.dirtyList;
      this.dirtyList = [];
      for (const s of list) s.flush();
    }
    for (let i = 0; i < this.rings.length; i++) {
      if (!this.ringDirty[i]) continue;
      this.ringDirty[i] = false;
      if (this.rings[i].commit()) wake(i);
    }
  }

  /** Once a second: keep-alives, and forgotten tombstones. */
  tick(now: number): void {
    for (const s of this.sessions.values()) s.onTick(now);
    for (const [key, at] of this.tombstones) if (now - at > TOMBSTONE_MS) this.tombstones.delete(key);
  }

  /**
   * A PUBLISH the broker sent on a device's session: into the device's shard's downlink ring,
   * addressed to the device. False when the ring cannot take it now (the session holds it and
   * stops reading; it is retried every writer turn).
   */
  onPublish(s: DeviceUpstream, header: number, buf: Buffer, start: number, end: number): boolean {
    const retain = (header & 1) !== 0;
    const qos = (header >> 1) & 3;
    const topicLen = buf.readUInt16BE(start);
    const topicStart = start + 2;
    let pos = topicStart + topicLen + (qos > 0 ? 2 : 0);
    let propsStart = pos;
    let propsEnd = pos;
    if (s.v5) {
      const n = readVarint(buf, pos, end);
      propsStart = varintEnd;
      propsEnd = propsStart + n;
      pos = propsEnd;
    }
    const scan = this.scan;
    const propsLen = s.v5 ? forwardProperties(buf, propsStart, propsEnd, null, 0, scan) : 0;
    if (propsLen < 0) return true;
    const remote = buf.toString('utf8', topicStart, topicStart + topicLen);
    const locals = this.locals;
    const n = this.routing.localTopics(this.index, remote, locals);
    if (n === 0) return true;
    const ring = this.rings[s.id.shard];
    const payloadLen = end - pos;
    let need = 0;
    for (let i = 0; i < n; i++) need += DEVICE_DOWNLINK_HEADER + Buffer.byteLength(locals[i]) + propsLen + payloadLen + 8;
    if (need > ring.capacity / 2) {
      this.downlinkTooLarge++;
      return true;
    }
    if (!ring.canFit(need)) {
      this.heldDown.add(s);
      this.armHeldTimer();
      return false;
    }
    if (propsLen > this.propsScratch.length) this.propsScratch = Buffer.alloc(propsLen * 2);
    if (propsLen > 0) forwardProperties(buf, propsStart, propsEnd, this.propsScratch, 0, scan);
    const sid = s.v5 && scan.subIds.length === 1 ? scan.subIds[0] : 0;
    const expiry = s.v5 && scan.expiry >= 0 ? scan.expiry : NO_EXPIRY;
    for (let i = 0; i < n; i++) {
      const topicBytes = Buffer.byteLength(locals[i]);
      let at = ring.reserve(DEVICE_DOWNLINK_HEADER + topicBytes + propsLen + payloadLen);
      if (at < 0) throw new Error('downlink ring reserve failed after canFit()');
      const b = ring.buffer;
      const v = ring.dataView;
      b[at] = REC_DELIVER_DEVICE;
      b[at + 1] = qos | (retain ? 4 : 0);
      v.setUint16(at + 2, topicBytes, true);
      v.setUint32(at + 4, propsLen, true);
      v.setUint32(at + 8, s.id.key, true);
      v.setUint32(at + 12, expiry, true);
      v.setUint32(at + 16, 0, true);
      v.setUint32(at + 20, sid, true);
      at += DEVICE_DOWNLINK_HEADER;
      at += b.write(locals[i], at, 'utf8');
      if (propsLen > 0) at += copyBytes(this.propsScratch, 0, propsLen, b, at);
      copyBytes(buf, pos, end, b, at);
    }
    this.ringDirty[s.id.shard] = true;
    this.deliveredByQos[qos]++;
    return true;
  }

  /** A shard frees ring room and rings the writer's doorbell; this is the safety net. */
  private armHeldTimer(): void {
    if (this.heldTimer !== null) return;
    this.heldTimer = setTimeout(() => {
      this.heldTimer = null;
      if (this.heldDown.size > 0) {
        this.writer.schedulePump();
        this.armHeldTimer();
      }
    }, 50);
  }

  /** Adds this broker's device sessions to the writer's row (the pool's figures are in it). */
  publishStats(st: WriterStats): void {
    let up = 0, connecting = 0, queued = 0, down = 0, inflight = 0, bytesIn = 0, parked = 0, reconnects = 0;
    const bytesOut = [0, 0, 0];
    const sent = [0, 0, 0];
    for (const s of this.sessions.values()) {
      if (s.state === UP) up++;
      else if (s.state === CONNECTING) connecting++;
      else if (s.state === IDLE) queued++;
      else if (s.state === DOWN) down++;
      inflight += s.inflightCount;
      for (let q = 0; q < 3; q++) bytesOut[q] += s.bytesOut[q];
      bytesIn += s.bytesIn;
      parked += s.parked.length;
      reconnects += s.reconnects;
      for (let q = 0; q < 3; q++) sent[q] += s.sent[q];
    }
    st.set('deviceSessionsUp', up);
    st.set('deviceSessionsConnecting', connecting);
    st.set('deviceSessionsQueued', queued);
    st.set('deviceSessionsDown', down);
    st.set('deviceConnects', this.connects);
    st.set('deviceRefusals', this.refusals);
    st.set('deviceLosses', this.losses);
    st.set('deviceTimeouts', this.timeouts);
    st.set('deviceReconnects', reconnects + this.closedReconnects);
    st.set('deviceParked', parked);
    st.set('deviceNoSession', this.noSession);
    // Messages and bytes of the device sessions count towards the broker's figures.
    st.add('inflight', inflight);
    st.add('messagesOutQos0', sent[0] + this.closedSent[0]);
    st.add('messagesOutQos1', sent[1] + this.closedSent[1]);
    st.add('messagesOutQos2', sent[2] + this.closedSent[2]);
    st.add('bytesOutQos0', bytesOut[0] + this.closedBytesOut[0]);
    st.add('bytesOutQos1', bytesOut[1] + this.closedBytesOut[1]);
    st.add('bytesOutQos2', bytesOut[2] + this.closedBytesOut[2]);
    st.add('bytesIn', bytesIn + this.closedBytesIn);
    st.add('tooLarge', this.tooLarge);
    st.add('downlinkTooLarge', this.downlinkTooLarge);
    st.add('downlinkInQos0', this.deliveredByQos[0]);
    st.add('downlinkInQos1', this.deliveredByQos[1]);
    st.add('downlinkInQos2', this.deliveredByQos[2]);
  }

  // The counters of sessions that ended, so that totals never go back.
  private readonly closedSent = [0, 0, 0];
  private readonly closedBytesOut = [0, 0, 0];
  private closedBytesIn = 0;
  private closedReconnects = 0;

  /** Shutdown: every session ends with DISCONNECT (no will: as in pooled mode, where the proxy
   *  does not publish the wills of the devices it disconnects at shutdown). */
  async close(): Promise<void> {
    this.pacer.stop();
    for (const t of this.delayed.values()) clearTimeout(t);
    this.delayed.clear();
    for (const s of [...this.sessions.values()]) s.close(CLOSE_QUIET, 0, -1);
    const deadline = Date.now() + 1500;
    while (this.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const s of [...this.sessions.values()]) s.abort();
  }
}

/** Sessions are keyed by shard and connection id: connection ids are unique per shard only. */
function keyOf(shard: number, key: number): number {
  return shard * 4294967296 + key;
}
