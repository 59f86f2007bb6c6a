// One device's own session at a broker (per-device upstream mode): the broker sees the device as
// itself, with a client id from FANOUT_UPSTREAM_CLIENT_ID, the device's credentials (or mapped
// ones), its will and its clean session / session expiry. Publishes come from the device's uplink
// ring and go out with an inflight window capped by the broker's Receive Maximum; what the broker
// sends on the session goes back to that device alone. Kept small, unlike the pool's
// BrokerConnection (64K-entry tables per connection): a proxy holds one of these per device and
// broker, thousands of them.
//
// Lifecycle: IDLE (waiting for its turn, FANOUT_UPSTREAM_CONNECT_RATE) -> CONNECTING -> UP; a
// session lost while the device stays is DOWN and reconnects (backoff, then its turn again),
// resuming the broker's session and sending again what was not acknowledged. It ends when the
// device does: DISCONNECT with the device's reason after a clean leave, a plain close otherwise
// (so the broker publishes the will), once what the device sent before has gone out.

import type * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import * as mqttPacket from 'mqtt-packet';
import type { BrokerConfig } from '../config/types';
import { Framer, FRAME_INCOMPLETE, FRAME_READY, readVarint, varintEnd } from '../protocol/framer';
import { encodePublishHead, publishSize } from '../protocol/publish';
import { copyBytes } from '../protocol/bytes';
import { describePackets, packetBytes } from '../protocol/trace';
import * as C from '../protocol/constants';
import { CLOSE_CLEAN, CLOSE_LOST, NO_TOKEN } from '../ring/records';
import type { DeviceSub, DeviceWill } from './device-protocol';
import { nextBackoff } from './backoff';
import type { Logger } from 'pino';
import type { LatencyRecorder } from '../metrics/latency';

export const IDLE = 0;
export const CONNECTING = 1;
export const UP = 2;
export const DOWN = 3;
export const CLOSING = 4;
export const CLOSED = 5;

/** Stop taking records while this much is queued for the socket. */
const OUT_HIGH_WATER = 256 * 1024;
/** An output buffer is allocated this big at least (smaller ones come from Node's shared pool). */
const OUT_MIN = 2048;
/** A closing session waits this long at most for its last acknowledgements. */
const CLOSE_WAIT_MS = 2000;
const AUTO_INFLIGHT_V4 = 20;

/** A QoS 1/2 publish sent and not yet acknowledged: its bytes stay for a re-send. */
interface Pending {
  bytes: Buffer;
  token: number;
  /** 1: PUBLISH sent, waiting for PUBACK / PUBREC; 2: PUBREL sent, waiting for PUBCOMP. */
  stage: number;
  sentAt: number;
}

/** A record the session could not send when it was taken from the ring (copied). */
export interface Parked {
  qos: number;
  retain: boolean;
  token: number;
  trace: boolean;
  topic: Buffer;
  props: Buffer | null;
  payload: Buffer;
}

type ControlOp = { kind: 'sub'; req: number; subs: DeviceSub[] } | { kind: 'unsub'; filters: string[] };

/** What a session needs from its writer's DeviceSessions. */
export interface DeviceHost {
  readonly log: Logger;
  readonly now: number;
  readonly maxIncoming: number;
  readonly broker: BrokerConfig;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  /** Broker round trips (PUBLISH -> PUBACK / PUBREC), for /metrics. */
  readonly rtt: LatencyRecorder;
  /** How long a connect may wait for its CONNACK. */
  readonly connectTimeoutMs: number;
  ack(shard: number, token: number, reason: number): void;
  schedulePump(): void;
  /** The session has output to flush at the end of this writer turn. */
  dirty(s: DeviceUpstream): void;
  /** Opens a socket to the broker (TLS where configured). */
  socket(): net.Socket;
  /** Asks for the session's next connect (FANOUT_UPSTREAM_CONNECT_RATE), after `delayMs`. */
  queueConnect(s: DeviceUpstream, delayMs: number): void;
  onUp(s: DeviceUpstream, present: boolean): void;
  onRefused(s: DeviceUpstream, code: number): void;
  /** The connection failed or was lost; `why` is a system error code when there was one. */
  onLost(s: DeviceUpstream, why: string): void;
  onClosed(s: DeviceUpstream): void;
  onPublish(s: DeviceUpstream, header: number, buf: Buffer, start: number, end: number): boolean;
  onSuback(s: DeviceUpstream, req: number, codes: number[]): void;
  /** A publish went out or was acknowledged: parked records may follow. */
  progressed(s: DeviceUpstream): void;
}

/** The device's side of its session: who it is and what it asked for. */
export interface DeviceIdentity {
  shard: number;
  key: number;
  deviceClientId: string;
  clientId: string;
  username: string | undefined;
  password: Buffer | undefined;
  clean: boolean;
  expiryS: number;
  will: DeviceWill | null;
  maxPacketSize: number;
  userProperties: Record<string, string | string[]> | null;
  trace: boolean;
}

export class DeviceUpstream {
  state = IDLE;
  /** Up at least once: later connects resume the broker's session. */
  everUp = false;
  /** Set when the last connect attempt failed before CONNACK with a system error (EMFILE...). */
  lastError = '';
  maxInflight: number;
  maxQos: number;
  retainAvailable = true;
  maxPacketSize = 0x0fffffff;
  readonly v5: boolean;
  readonly sent = [0, 0, 0];
  /** Bytes of the PUBLISH packets sent, by the QoS they were sent at. */
  readonly bytesOut = [0, 0, 0];
  bytesIn = 0;
  reconnects = 0;
  /** Records waiting for the session to take them, in order, and their bytes. */
  parked: Parked[] = [];
  parkedBytes = 0;
  /** DeviceSessions told the shard to stop reading the device. */
  holding = false;
  /** DeviceSessions' bookkeeping: the session waiting for this one to end (same client id). */
  successor: DeviceUpstream | null = null;
  /** When the device's CONNECT started waiting for this session (first connect only). */
  openedAt = 0;

  private socket: net.Socket | null = null;
  private readonly framer = new Framer(0x0fffffff + 5);
  private readonly inflight = new Map<number, Pending>();
  private readonly controls = new Map<number, { op: ControlOp; req: number; offset: number }>();
  private readonly answers = new Map<number, { codes: number[]; left: number }>();
  private pendingOps: ControlOp[] = [];
  private readonly subs = new Map<string, DeviceSub>();
  private received2: Set<number> | null = null;
  private held: { header: number; buf: Buffer; start: number; end: number } | null = null;
  private nextId = 1;
  private out: Buffer | null = null;
  private outLen = 0;
  private isDirty = false;
  private writable = true;
  private attempt = 0;
  private lastRx = 0;
  private lastTx = 0;
  private timer: NodeJS.Timeout | null = null;
  private closeReq: { how: number; reason: number; expiry: number } | null = null;
  private closeBy = 0;

  constructor(private readonly host: DeviceHost, readonly id: DeviceIdentity, subs: DeviceSub[]) {
    const b = host.broker;
    this.v5 = b.protocolVersion === 5;
    this.maxQos = b.maxQos;
    this.maxInflight = b.inflight > 0 ? b.inflight : this.v5 ? 65535 : AUTO_INFLIGHT_V4;
    for (const s of subs) this.subs.set(s.filter, s);
  }

  get inflightCount(): number {
    return this.inflight.size;
  }

  /** Whether a record of this QoS can be sent now. */
  canAccept(qos: number): boolean {
    return (this.state === UP || this.state === CLOSING) && this.writable && this.outLen < OUT_HIGH_WATER &&
      (qos === 0 || this.maxQos === 0 || this.inflight.size < this.maxInflight);
  }

  /** Connects (its turn came). */
  connect(): void {
    if (this.state === CLOSED || this.state === CLOSING) return;
    this.state = CONNECTING;
    this.lastError = '';
    const socket = this.host.socket();
    this.socket = socket;
    this.framer.reset();
    this.writable = true;
    socket.setNoDelay(true);
    socket.once(this.host.broker.transport === 'mqtts' ? 'secureConnect' : 'connect', () => {
      const packet = this.connectPacket();
      if (this.id.trace) this.trace('out', packet);
      socket.write(packet);
      this.lastTx = this.host.now;
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      this.writable = true;
      this.host.schedulePump();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.lastError = err.code ?? err.message;
    });
    socket.on('close', () => this.onClose(socket));
    // A broker that takes the connection and never answers it.
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.state === CONNECTING && this.socket === socket) {
        this.lastError = 'no CONNACK';
        socket.destroy();
      }
    }, this.host.connectTimeoutMs);
  }

  private connectPacket(): Buffer {
    const b = this.host.broker;
    const id = this.id;
    // MQTT 3.1.1 brokers know no expiry: a session is kept exactly when the device's outlives its connection.
    const clean = this.v5 ? (this.everUp ? false : id.clean) : id.expiryS === 0;
    const will = id.will === null ? undefined : {
      topic: id.will.topic, payload: Buffer.from(id.will.payload), qos: Math.min(id.will.qos, b.maxQos) as 0 | 1 | 2,
      retain: id.will.retain, properties: this.v5 ? willProperties(id.will.properties) : undefined,
    };
    const properties: mqttPacket.IConnectPacket['properties'] = this.v5 ? {
      sessionExpiryInterval: id.expiryS, receiveMaximum: 65535,
      maximumPacketSize: id.maxPacketSize > 0 ? Math.min(id.maxPacketSize, this.host.maxIncoming) : this.host.maxIncoming,
    } : undefined;
    if (properties !== undefined && id.userProperties !== null) properties.userProperties = id.userProperties;
    return mqttPacket.generate({
      cmd: 'connect', protocolId: 'MQTT', protocolVersion: b.protocolVersion, clientId: id.clientId, clean,
      keepalive: b.keepalive, username: id.username, password: id.password, will, properties,
    }, { protocolVersion: b.protocolVersion });
  }

  private onClose(socket: net.Socket): void {
    if (socket !== this.socket) return;
    const was = this.state;
    this.socket = null;
    this.held = null;
    this.out = null;
    this.outLen = 0;
    this.isDirty = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // SUBSCRIBEs in flight are asked again on the next connection, whole (an MQTT 5 one is a
    // packet per filter, some of which may have been answered).
    if (this.controls.size > 0) {
      const again = new Set<ControlOp>();
      for (const c of this.controls.values()) again.add(c.op);
      this.controls.clear();
      this.pendingOps = [...again, ...this.pendingOps];
    }
    if (was === CLOSING || was === CLOSED || this.closeReq !== null) {
      this.finish();
      return;
    }
    this.state = DOWN;
    this.host.onLost(this, was === UP ? 'lost' : this.lastError || 'closed');
  }

  /** The next attempt after a failure, with backoff. */
  retry(): void {
    if (this.state !== DOWN) return;
    const ms = nextBackoff(this.attempt++, this.host.reconnectMinMs, this.host.reconnectMaxMs);
    this.host.queueConnect(this, ms);
  }

  private onData(chunk: Buffer): void {
    this.lastRx = this.host.now;
    this.bytesIn += chunk.length;
    this.framer.push(chunk);
    if (this.held === null) this.readPackets();
  }

  private readPackets(): void {
    const f = this.framer;
    for (;;) {
      const r = f.next();
      if (r === FRAME_INCOMPLETE) break;
      if (r !== FRAME_READY) {
        this.fail('malformed packet from broker');
        return;
      }
      if (this.id.trace) this.trace('in', packetBytes(f.header, f.buf.subarray(f.start, f.end)));
      if (!this.onPacket(f.header, f.buf, f.start, f.end)) {
        this.held = { header: f.header, buf: f.buf, start: f.start, end: f.end };
        this.socket?.pause();
        break;
      }
    }
    this.host.schedulePump();
  }

  /** The shard's ring may have room again: pass on the held PUBLISH and read on. */
  retryHeld(): boolean {
    const h = this.held;
    if (h === null || this.socket === null) return true;
    if (!this.onPublish(h.header, h.buf, h.start, h.end)) return false;
    this.held = null;
    this.readPackets();
    if (this.held === null) this.socket?.resume();
    return this.held === null;
  }

  private onPacket(header: number, buf: Buffer, start: number, end: number): boolean {
    const type = header >> 4;
    switch (type) {
      case C.PUBACK:
      case C.PUBREC: {
        const id = buf.readUInt16BE(start);
        const reason = end - start > 2 ? buf[start + 2] : 0;
        const p = this.inflight.get(id);
        if (p === undefined || p.stage !== 1) return true;
        this.host.rtt.since(p.sentAt, performance.now());
        if (p.token !== NO_TOKEN) this.host.ack(this.id.shard, p.token, reason);
        p.token = NO_TOKEN;
        if (type === C.PUBREC && reason < 0x80) {
          p.stage = 2;
          this.writeAck(C.PUBREL, id);
        } else {
          this.release(id);
        }
        return true;
      }
      case C.PUBCOMP: {
        const id = buf.readUInt16BE(start);
        if (this.inflight.get(id)?.stage === 2) this.release(id);
        return true;
      }
      case C.CONNACK: this.onConnack(buf, start, end); return true;
      case C.PINGRESP: return true;
      case C.DISCONNECT: {
        const reason = end > start ? buf[start] : 0;
        this.host.log.debug({ broker: this.host.broker.name, clientId: this.id.clientId, reason }, 'broker sent DISCONNECT to a device session');
        this.socket?.destroy();
        return true;
      }
      case C.PUBLISH: return this.onPublish(header, buf, start, end);
      case C.PUBREL: {
        const id = buf.readUInt16BE(start);
        this.received2?.delete(id);
        this.writeAck(C.PUBCOMP, id);
        return true;
      }
      case C.SUBACK:
      case C.UNSUBACK: {
        const id = buf.readUInt16BE(start);
        const c = this.controls.get(id);
        if (c === undefined) return true;
        this.controls.delete(id);
        if (type === C.SUBACK && c.op.kind === 'sub') {
          let pos = start + 2;
          if (this.v5) {
            const n = readVarint(buf, pos, end);
            pos = varintEnd + n;
          }
          const a = this.answers.get(c.req);
          if (a !== undefined) {
            for (let i = 0; pos < end; pos++, i++) a.codes[c.offset + i] = buf[pos];
            if (--a.left === 0) {
              this.answers.delete(c.req);
              if (c.req !== 0) this.host.onSuback(this, c.req, a.codes);
            }
          }
        }
        return true;
      }
      default: return true;
    }
  }

  private onPublish(header: number, buf: Buffer, start: number, end: number): boolean {
    const qos = (header >> 1) & 3;
    if (qos === 3 || start + 2 > end) {
      this.fail('malformed PUBLISH from broker');
      return true;
    }
    const id = qos > 0 ? buf.readUInt16BE(start + 2 + buf.readUInt16BE(start)) : 0;
    if (qos === 2 && this.received2?.has(id)) {
      this.writeAck(C.PUBREC, id);
      return true;
    }
    if (!this.host.onPublish(this, header, buf, start, end)) return false;
    if (qos === 1) this.writeAck(C.PUBACK, id);
    else if (qos === 2) {
      (this.received2 ??= new Set()).add(id);
      this.writeAck(C.PUBREC, id);
    }
    return true;
  }

  private onConnack(buf: Buffer, start: number, end: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const present = end - start >= 1 && (buf[start] & 1) === 1;
    const code = end - start >= 2 ? buf[start + 1] : 0x80;
    if (code !== 0) {
      this.state = DOWN;
      this.lastError = `refused ${code}`;
      const socket = this.socket;
      this.socket = null;
      socket?.destroy();
      if (this.closeReq !== null) this.finish();
      else this.host.onRefused(this, code);
      return;
    }
    if (this.v5) this.readConnackProperties(buf, start + 2, end);
    this.state = UP;
    this.attempt = 0;
    if (this.everUp) this.reconnects++;
    this.everUp = true;
    this.lastRx = this.lastTx = this.host.now;
    if (!present) this.received2 = null;
    // Not acknowledged before: sent again, in order (a Map keeps insertion order).
    for (const [id, p] of this.inflight) {
      if (p.stage === 2) {
        this.writeAck(C.PUBREL, id);
        continue;
      }
      const out = this.reserve(p.bytes.length);
      const at = this.outLen;
      this.outLen += p.bytes.copy(out, at);
      out[at] |= 0x08; // DUP [MQTT-3.3.1-1]
      p.bytes = out.subarray(at, this.outLen);
    }
    // The broker kept no session: the device's subscriptions are made again (without
    // retained messages where the broker can be told so, as a resumed session has none).
    if (!present && this.subs.size > 0) {
      const asked = new Set<string>();
      for (const op of this.pendingOps) if (op.kind === 'sub') for (const s of op.subs) asked.add(s.filter);
      const again = [...this.subs.values()].filter((s) => !asked.has(s.filter)).map((s) => ({ ...s, rh: 2 }));
      if (again.length > 0) this.sendOp({ kind: 'sub', req: 0, subs: again });
    }
    const ops = this.pendingOps;
    this.pendingOps = [];
    for (const op of ops) this.sendOp(op);
    this.host.onUp(this, present);
    if (this.closeReq !== null) this.beginClose();
    this.host.schedulePump();
  }

  private readConnackProperties(buf: Buffer, pos: number, end: number): void {
    const len = readVarint(buf, pos, end);
    if (len < 0) return;
    pos = varintEnd;
    const stop = Math.min(end, pos + len);
    const configured = this.host.broker.inflight > 0 ? this.host.broker.inflight : 65535;
    this.maxInflight = configured;
    this.maxQos = this.host.broker.maxQos;
    this.retainAvailable = true;
    this.maxPacketSize = 0x0fffffff;
    while (pos < stop) {
      const id = buf[pos++];
      switch (id) {
        case 0x21: this.maxInflight = Math.min(configured, buf.readUInt16BE(pos)); pos += 2; break;
        case 0x24: this.maxQos = Math.min(this.maxQos, buf[pos]); pos += 1; break;
        case 0x25: this.retainAvailable = buf[pos] !== 0; pos += 1; break;
        case 0x27: this.maxPacketSize = buf.readUInt32BE(pos); pos += 4; break;
        case 0x11: pos += 4; break;
        case 0x13: case 0x22: pos += 2; break;
        case 0x28: case 0x29: case 0x2a: pos += 1; break;
        case 0x12: case 0x1a: case 0x1c: case 0x1f: case 0x15: case 0x16: pos += 2 + buf.readUInt16BE(pos); break;
        case 0x26: pos += 2 + buf.readUInt16BE(pos); pos += 2 + buf.readUInt16BE(pos); break;
        default: return; // unknown: the rest cannot be walked; keep what was read
      }
    }
  }

  /** Encodes one device publish for this broker; false when it exceeds the broker's maximum
   *  packet size. Same arguments as BrokerConnection.publish(). */
  publish(qos: number, retain: boolean, token: number, topicSrc: Buffer, topicStart: number, topicLen: number,
    propsSrc: Buffer, propsStart: number, propsLen: number, src: Buffer, payloadStart: number, payloadLen: number, trace: boolean): boolean {
    const q = qos < this.maxQos ? qos : this.maxQos;
    const pl = this.v5 ? propsLen : 0;
    const size = publishSize(topicLen, q, pl, payloadLen, this.v5);
    if (size > this.maxPacketSize) return false;
    const out = this.reserve(size);
    const id = q > 0 ? this.freeId() : 0;
    const start = this.outLen;
    let pos = encodePublishHead(out, start, q, retain && this.retainAvailable, id, topicSrc, topicStart, topicLen, this.v5, pl, payloadLen);
    if (pl > 0) pos += copyBytes(propsSrc, propsStart, propsStart + pl, out, pos);
    pos += copyBytes(src, payloadStart, payloadStart + payloadLen, out, pos);
    this.outLen = pos;
    this.sent[q]++;
    this.bytesOut[q] += pos - start;
    if (trace) {
      this.host.log.info({ trace: 'out', broker: this.host.broker.name, clientId: this.id.clientId, device: this.id.deviceClientId,
        packet: describePackets(out.subarray(start, pos), this.v5 ? 5 : 4)[0] }, 'proxy -> broker (device session of a traced device)');
    }
    if (q > 0) {
      this.inflight.set(id, { bytes: out.subarray(start, pos), token, stage: 1, sentAt: performance.now() });
    } else if (token !== NO_TOKEN) {
      this.host.ack(this.id.shard, token, 0);
    }
    return true;
  }

  private freeId(): number {
    let id = this.nextId;
    while (this.inflight.has(id) || this.controls.has(id)) id = id === 65535 ? 1 : id + 1;
    this.nextId = id === 65535 ? 1 : id + 1;
    return id;
  }

  private release(id: number): void {
    this.inflight.delete(id);
    this.host.progressed(this);
    if (this.state === CLOSING) this.tryFinishClose();
  }

  /** The device's subscriptions at this broker change (SUBSCRIBE from the device). */
  subscribe(req: number, subs: DeviceSub[]): void {
    for (const s of subs) this.subs.set(s.filter, s);
    const op: ControlOp = { kind: 'sub', req, subs };
    if (this.state === UP) this.sendOp(op);
    else this.pendingOps.push(op);
  }

  unsubscribe(filters: string[]): void {
    for (const f of filters) this.subs.delete(f);
    const op: ControlOp = { kind: 'unsub', filters };
    if (this.state === UP) this.sendOp(op);
    else this.pendingOps.push(op);
  }

  private sendOp(op: ControlOp): void {
    const version = this.v5 ? 5 : 4;
    if (op.kind === 'unsub') {
      const id = this.freeId();
      this.controls.set(id, { op, req: -1, offset: 0 });
      this.send(mqttPacket.generate({ cmd: 'unsubscribe', messageId: id, unsubscriptions: op.filters }, { protocolVersion: version }));
      return;
    }
    // MQTT 5: one SUBSCRIBE per filter, each naming its Subscription Identifier.
    const groups = this.v5 ? op.subs.map((s) => [s]) : [op.subs];
    this.answers.set(op.req, { codes: new Array<number>(op.subs.length).fill(0x80), left: groups.length });
    let offset = 0;
    for (const group of groups) {
      const id = this.freeId();
      this.controls.set(id, { op, req: op.req, offset });
      const sid = group[0].sid;
      this.send(mqttPacket.generate({
        cmd: 'subscribe', messageId: id,
        subscriptions: group.map((s) => ({ topic: s.filter, qos: s.qos as 0 | 1 | 2, nl: s.nl, rap: s.rap, rh: s.rh })),
        properties: this.v5 && sid > 0 ? { subscriptionIdentifier: sid } : undefined,
      }, { protocolVersion: version }));
      offset += group.length;
    }
  }

  private send(packet: Buffer): void {
    if (this.id.trace) this.trace('out', packet);
    const out = this.reserve(packet.length);
    this.outLen += packet.copy(out, this.outLen);
  }

  private writeAck(type: number, id: number): void {
    const out = this.reserve(4);
    this.outLen = C.writeAck(out, this.outLen, type, id);
  }

  private reserve(n: number): Buffer {
    if (this.out === null || this.outLen + n > this.out.length) {
      if (this.outLen > 0) this.flush();
      this.out = Buffer.allocUnsafe(Math.max(OUT_MIN, n));
      this.outLen = 0;
    }
    if (!this.isDirty) {
      this.isDirty = true;
      this.host.dirty(this);
    }
    return this.out;
  }

  /** Writes this turn's packets in one socket write. The written part of the buffer is never
   *  written to again (pending publishes point into it); the rest serves the next turn. */
  flush(): void {
    this.isDirty = false;
    const out = this.out;
    if (out === null || this.outLen === 0) return;
    const chunk = out.subarray(0, this.outLen);
    const rest = out.length - this.outLen;
    this.out = rest >= 256 ? out.subarray(this.outLen) : null;
    this.outLen = 0;
    if (this.socket === null) return;
    if (!this.socket.write(chunk)) this.writable = false;
    this.lastTx = this.host.now;
  }

  /** Keep-alive towards the broker while the device is connected. */
  onTick(now: number): void {
    const ka = this.host.broker.keepalive * 1000;
    if (this.state === CLOSING && now >= this.closeBy) {
      this.doClose();
      return;
    }
    if (this.state !== UP || ka === 0) return;
    if (now - this.lastRx > ka * 1.5) this.fail('keep-alive timeout');
    else if (now - this.lastTx >= ka * 0.75) this.send(C.PINGREQ_PACKET);
  }

  private fail(why: string): void {
    this.host.log.debug({ broker: this.host.broker.name, clientId: this.id.clientId, why }, 'dropping device session');
    this.lastError = why;
    this.socket?.destroy();
  }

  /**
   * The device is gone (REC_DEVICE_CLOSE): what it sent before goes out, then the session ends
   * as the device left, `how` being CLOSE_LOST, CLOSE_CLEAN or CLOSE_QUIET; `expiry` (>= 0) is
   * the session expiry its DISCONNECT set.
   */
  close(how: number, reason: number, expiry: number): void {
    if (this.closeReq !== null) return;
    this.closeReq = { how, reason, expiry };
    if (this.state === UP) this.beginClose();
    else if (this.state !== CONNECTING) {
      // Not connected (waiting for its turn, or between attempts): nothing to say goodbye to.
      if (this.timer !== null) clearTimeout(this.timer);
      this.timer = null;
      this.finish();
    }
    // CONNECTING: the CONNACK decides (onConnack, onClose).
  }

  /** Ends the session at once, whatever it was doing (its open timed out, shutdown deadline). */
  abort(): void {
    this.closeReq ??= { how: CLOSE_LOST, reason: 0, expiry: -1 };
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.socket !== null) this.socket.destroy();
    else this.finish();
  }

  private beginClose(): void {
    this.state = CLOSING;
    this.closeBy = this.host.now + CLOSE_WAIT_MS;
    this.tryFinishClose();
  }

  /** Closes once the parked records went out and were acknowledged, or at the deadline. */
  tryFinishClose(): void {
    if (this.state !== CLOSING) return;
    if (this.parked.length === 0 && this.inflight.size === 0) this.doClose();
  }

  private doClose(): void {
    const req = this.closeReq!;
    const socket = this.socket;
    if (socket === null) {
      this.finish();
      return;
    }
    this.state = CLOSED;
    // Without DISCONNECT (and MQTT 3.1.1 has no "disconnect with will") the broker publishes the
    // will; DISCONNECT 0x00 makes it drop the will, 0x04 (MQTT 5) publish it [MQTT-3.14.4-3].
    const withWill = req.how === CLOSE_LOST || (req.reason === C.RC_DISCONNECT_WITH_WILL && !this.v5);
    if (!withWill) {
      const reason = req.how === CLOSE_CLEAN ? req.reason : 0;
      const properties = req.expiry >= 0 && this.v5 ? { sessionExpiryInterval: req.expiry } : undefined;
      this.send(this.v5
        ? (properties === undefined ? C.disconnectV5(reason) : mqttPacket.generate({ cmd: 'disconnect', reasonCode: reason, properties }, { protocolVersion: 5 }))
        : C.DISCONNECT_V4_PACKET);
    }
    this.flush();
    socket.end();
    // A broker that does not close its side in time.
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  private finish(): void {
    if (this.state === CLOSED && this.socket === null && this.closeReq === null) return;
    this.state = CLOSED;
    this.closeReq = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // Whatever was still waiting is answered: the device is gone, its slots must be freed.
    for (const p of this.inflight.values()) if (p.token !== NO_TOKEN) this.host.ack(this.id.shard, p.token, C.RC_UNSPECIFIED);
    this.inflight.clear();
    for (const p of this.parked) if (p.token !== NO_TOKEN) this.host.ack(this.id.shard, p.token, C.RC_UNSPECIFIED);
    this.parked = [];
    this.parkedBytes = 0;
    this.host.onClosed(this);
  }

  get closed(): boolean {
    return this.state === CLOSED;
  }

  /** Closing was asked (the device left) and has not finished. */
  get leaving(): boolean {
    return this.closeReq !== null;
  }

  private trace(dir: 'in' | 'out', bytes: Buffer): void {
    for (const packet of describePackets(bytes, this.v5 ? 5 : 4)) {
      this.host.log.info({ trace: dir, broker: this.host.broker.name, clientId: this.id.clientId, device: this.id.deviceClientId, packet },
        dir === 'out' ? 'proxy -> broker (device session of a traced device)' : 'broker -> proxy (device session of a traced device)');
    }
  }
}

/** MQTT 5 will properties as a structured clone delivered them: binary fields back to Buffers. */
function willProperties(p: Record<string, unknown> | undefined): mqttPacket.IConnectPacket['properties'] | undefined {
  if (p === undefined) return undefined;
  const out: Record<string, unknown> = { ...p };
  if (out.correlationData instanceof Uint8Array) out.correlationData = Buffer.from(out.correlationData);
  return out as mqttPacket.IConnectPacket['properties'];
}

