// One connection from a writer to its upstream broker: CONNECT with a client id unique to this
// broker and a retained last will, PUBLISH with an inflight window capped by the broker's
// Receive Maximum, the QoS 1/2 handshakes, keep-alive, and re-sending what was not
// acknowledged after a reconnect, paced by FANOUT_PENDING_THROTTLE_MS. A broker with failover
// addresses is tried at the next of them on each reconnect, and a connection on a failover
// address goes back to the first once a probe finds it answering (primaryCheckMs).

import * as fs from 'node:fs';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import * as tls from 'node:tls';
import * as mqttPacket from 'mqtt-packet';
import type { BrokerAddress, BrokerConfig, Config } from '../config/types';
import { Framer, FRAME_READY, FRAME_INCOMPLETE, readVarint, varintEnd } from '../protocol/framer';
import { encodePublishHead, publishSize } from '../protocol/publish';
import { copyBytes } from '../protocol/bytes';
import * as C from '../protocol/constants';
import { NO_TOKEN } from '../ring/records';
import { describePackets } from '../protocol/trace';
import { addressText, brokerAddresses } from '../config/brokers';
import { nextBackoff } from './backoff';
import type { WriterContext } from './context';

const DOWN = 0;
const CONNECTING = 1;
const UP = 2;
/** Up, taking nothing new: its in-flight messages drain before it moves back to the primary. */
const LEAVING = 3;

// Inflight stages per packet id.
const FREE = 0;
const AWAIT_ACK = 1; // PUBLISH sent, waiting for PUBACK / PUBREC
const AWAIT_COMP = 2; // PUBREL sent, waiting for PUBCOMP
const CONTROL = 3; // SUBSCRIBE / UNSUBSCRIBE sent, waiting for SUBACK / UNSUBACK

const OUT_CHUNK = 64 * 1024;
/** Stop taking records while this much is queued for the socket in one turn. */
const OUT_HIGH_WATER = 1024 * 1024;
/** In-flight publishes towards an MQTT 3.1.1 broker when the URL says `inflight=auto`: such a
 *  broker cannot announce a limit, and mosquitto's max_inflight_messages is 20 by default. */
const AUTO_INFLIGHT_V4 = 20;
/** With failover addresses: an attempt without CONNACK for this long fails over to the next one
 *  (a host that is gone may take minutes to refuse a TCP connection). */
const FAILOVER_CONNECT_TIMEOUT_MS = 10000;
/** How long a connection moving back to the primary waits for its in-flight messages; those
 *  still unacknowledged then are re-sent there. */
const LEAVE_DRAIN_MS = 5000;
const STATUS_TAG = -2;

export class BrokerConnection {
  readonly clientId: string;
  state = DOWN;
  /** Effective limits, from configuration and the broker's CONNACK. */
  maxInflight: number;
  maxQos: number;
  retainAvailable = true;
  maxPacketSize = 0x0fffffff;
  inflight = 0;
  reconnects = 0;
  qos0BytesLost = 0;
  /** Messages sent per QoS (first sends only) and their bytes, by the QoS they were sent at. */
  readonly sent = [0, 0, 0];
  readonly bytesOut = [0, 0, 0];
  /** Bytes received from the broker, every packet. */
  bytesIn = 0;
  private readonly sentAt = new Float64Array(65536);
  /** Packet ids of messages sent for traced devices, until their handshake ends. */
  private readonly traced = new Uint8Array(65536);
  /** A QoS 0 message was written since the socket last had nothing buffered. */
  private qos0Pending = false;

  private socket: net.Socket | null = null;
  private readonly framer = new Framer(0x0fffffff + 5);
  // An unacknowledged packet stays where it was encoded: in an output slab that is never
  // written to again once flushed. Slab, offset and length per packet id, no per-message view.
  private readonly slabs: (Buffer | undefined)[] = new Array(65536);
  private readonly starts = new Uint32Array(65536);
  private readonly lengths = new Uint32Array(65536);
  private readonly tokens = new Uint32Array(65536);
  private readonly shards = new Uint8Array(65536);
  /** Spool sequence number of the message under each packet id (-1: not from the spool,
   *  STATUS_TAG: a status message). */
  private readonly tags = new Float64Array(65536).fill(-1);
  private readonly stages = new Uint8Array(65536);
  private readonly order = new Uint32Array(65536);
  private sequence = 0;
  private nextId = 1;
  private out: Buffer = Buffer.allocUnsafe(OUT_CHUNK);
  private outLen = 0;
  private writable = true;
  private resending = false;
  private everConnected = false;
  private attempt = 0;
  private lastRx = 0;
  private lastTx = 0;
  private timer: NodeJS.Timeout | null = null;
  private closing = false;
  readonly v5: boolean;
  /** QoS 2 messages from the broker passed on and not yet released (PUBREL). */
  private readonly received2 = new Set<number>();
  /** A broker PUBLISH the shards' rings could not take yet; the socket is paused meanwhile. */
  private held: { header: number; buf: Buffer; start: number; end: number } | null = null;
  private readonly statusTopic: string;
  /** Where the broker is reached: host:port of the URL, then its failover addresses. */
  private readonly addresses: readonly BrokerAddress[];
  /** The address of the current (or last) attempt, an index into addresses. */
  address = 0;
  /** The address whose session the connection holds: another one gets a clean start. */
  private sessionAddress = -1;
  /** When the current stage began (connect attempt, arrival on a failover address, leaving). */
  private stageAt = 0;
  /** The primary answered the probe: the next connect goes there at once. */
  private returning = false;
  private probe: net.Socket | null = null;
  /** Packet id of the last status publish, which a newer one replaces rather than follows. */
  private statusId = 0;

  constructor(private readonly ctx: WriterContext, private readonly broker: BrokerConfig, private readonly config: Config, readonly index: number) {
    this.clientId = `${config.proxyId}-${broker.name}-${index}`;
    this.maxQos = broker.maxQos;
    this.v5 = broker.protocolVersion === 5;
    this.maxInflight = broker.inflight > 0 ? broker.inflight : this.v5 ? 65535 : AUTO_INFLIGHT_V4;
    this.statusTopic = config.statusTopic.replace('{clientId}', this.clientId);
    this.addresses = brokerAddresses(broker);
  }

  /** host:port of the address in use (or of address i). */
  addressText(i = this.address): string {
    return addressText(this.addresses[i]);
  }

  /** Whether a record can be taken now without exceeding any window. */
  canAccept(qos: number): boolean {
    return this.state === UP && this.writable && !this.resending && this.outLen < OUT_HIGH_WATER &&
      (qos === 0 || this.maxQos === 0 || this.inflight < this.maxInflight);
  }

  get up(): boolean {
    return this.state === UP || this.state === LEAVING;
  }

  get subscribable(): boolean {
    return this.state === UP;
  }

  /** Sends a SUBSCRIBE / UNSUBSCRIBE built around a packet id taken from the publish id space. */
  sendControl(build: (id: number) => Buffer): number {
    let id = this.nextId;
    while (this.stages[id] !== FREE) id = id === 65535 ? 1 : id + 1;
    this.nextId = id === 65535 ? 1 : id + 1;
    this.stages[id] = CONTROL;
    this.append(build(id));
    this.ctx.schedulePump();
    return id;
  }

  connect(): void {
    if (this.closing) return;
    this.state = CONNECTING;
    this.stageAt = this.ctx.now;
    const b = this.broker;
    const { host, port } = this.addresses[this.address];
    const socket = b.transport === 'mqtts'
      ? tls.connect({
        host, port, servername: net.isIP(host) ? undefined : host,
        // Read at each connect, so rotated files are picked up by the next reconnect.
        ca: b.ca === null ? undefined : fs.readFileSync(b.ca),
        cert: b.cert === null ? undefined : fs.readFileSync(b.cert),
        key: b.key === null ? undefined : fs.readFileSync(b.key),
        rejectUnauthorized: !b.insecure,
      })
      : net.connect({ host, port });
    socket.setNoDelay(true);
    this.socket = socket;
    this.framer.reset();
    this.writable = true;
    socket.once(b.transport === 'mqtts' ? 'secureConnect' : 'connect', () => {
      const will = { topic: this.statusTopic, payload: Buffer.from('offline'), qos: 1 as const, retain: true };
      socket.write(mqttPacket.generate({
        cmd: 'connect', protocolId: 'MQTT', protocolVersion: b.protocolVersion, clientId: this.clientId,
        // A fresh session on the first connect: a stale one could hold QoS 2 packet ids that
        // would swallow new messages. Later reconnects resume it so in-flight QoS 2 completes,
        // except at another address: that broker's session of this client id is a stale one.
        clean: this.address !== this.sessionAddress, keepalive: b.keepalive, username: b.username,
        password: b.password === undefined ? undefined : Buffer.from(b.password), will,
        properties: this.v5 ? { sessionExpiryInterval: 3600, receiveMaximum: 65535, maximumPacketSize: this.ctx.maxIncoming } : undefined,
      }, { protocolVersion: b.protocolVersion }));
      this.lastTx = this.ctx.now;
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      this.writable = true;
      this.qos0Pending = false;
      this.ctx.schedulePump();
    });
    socket.on('error', (err) => {
      const address = this.addressText();
      if (this.state === UP) this.ctx.log.warn({ broker: b.name, clientId: this.clientId, address, err: err.message }, 'broker connection error');
      else this.ctx.log.debug({ broker: b.name, clientId: this.clientId, address, err: err.message }, 'broker connect failed');
    });
    socket.on('close', () => this.onClose(socket));
  }

  private onClose(socket: net.Socket): void {
    if (socket !== this.socket) return;
    const wasUp = this.state === UP || this.state === LEAVING;
    const unsent = socket.writableLength + this.outLen;
    if (unsent > 0 && this.qos0Pending) {
      // QoS 1/2 messages among those bytes are re-sent; QoS 0 ones are gone, and said so.
      this.qos0BytesLost += unsent;
      this.ctx.warnings.warn(`lost-${this.clientId}`, { broker: this.broker.name, clientId: this.clientId, unsentBytes: unsent },
        'broker connection lost with unsent data: QoS 0 messages in it are lost');
    }
    this.qos0Pending = false;
    this.state = DOWN;
    this.socket = null;
    // A held message was not acknowledged: the broker sends it again.
    this.held = null;
    // Unsent bytes belong to packets still tracked for re-sending, or to QoS 0. The slab they are
    // in must not be written over: start a new one.
    this.out = Buffer.allocUnsafe(OUT_CHUNK);
    this.outLen = 0;
    this.resending = false;
    this.probe?.destroy();
    this.probe = null;
    if (this.closing) return;
    if (this.returning) {
      this.returning = false;
      this.address = 0;
      this.connect();
      return;
    }
    if (wasUp) this.ctx.log.warn({ broker: this.broker.name, clientId: this.clientId, address: this.addressText(), inflight: this.inflight }, 'broker connection lost');
    // Each reconnect tries the next address, after the same backoff as with one address.
    this.address = (this.address + 1) % this.addresses.length;
    const delay = nextBackoff(this.attempt++, this.config.reconnectMinMs, this.config.reconnectMaxMs);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  private onData(chunk: Buffer): void {
    this.lastRx = this.ctx.now;
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
      if (!this.onPacket(f.header, f.buf, f.start, f.end)) {
        this.held = { header: f.header, buf: f.buf, start: f.start, end: f.end };
        this.socket?.pause();
        break;
      }
    }
    // Acks and answers go out once per event-loop turn, with everything else of that turn.
    this.ctx.schedulePump();
  }

  /** The shards may have room again: pass on the held PUBLISH and read on. */
  retryHeld(): void {
    const h = this.held;
    if (h === null || this.socket === null) return;
    if (!this.onPublish(h.header, h.buf, h.start, h.end)) return;
    this.held = null;
    this.readPackets();
    if (this.held === null) this.socket?.resume();
  }

  /** Returns false only for a PUBLISH the shards cannot take yet. */
  private onPacket(header: number, buf: Buffer, start: number, end: number): boolean {
    const type = header >> 4;
    switch (type) {
      case C.PUBACK:
      case C.PUBREC: {
        const id = buf.readUInt16BE(start);
        const reason = end - start > 2 ? buf[start + 2] : 0;
        if (this.stages[id] !== AWAIT_ACK) return true;
        this.ctx.rtt.since(this.sentAt[id], performance.now());
        if (this.traced[id] === 1) {
          if (type === C.PUBACK || reason >= 0x80) this.traced[id] = 0;
          this.ctx.log.info({ trace: 'in', broker: this.broker.name, clientId: this.clientId, packet: { type: type === C.PUBACK ? 'puback' : 'pubrec', messageId: id, reasonCode: reason } }, 'broker -> proxy (for a traced device)');
        }
        this.answer(id, reason);
        if (type === C.PUBREC && reason < 0x80) {
          this.stages[id] = AWAIT_COMP;
          this.writeAck(C.PUBREL, id);
        } else {
          this.free(id);
        }
        return true;
      }
      case C.PUBCOMP: {
        const id = buf.readUInt16BE(start);
        if (this.traced[id] === 1 && this.stages[id] === AWAIT_COMP) {
          this.traced[id] = 0;
          this.ctx.log.info({ trace: 'in', broker: this.broker.name, clientId: this.clientId, packet: { type: 'pubcomp', messageId: id } }, 'broker -> proxy (for a traced device)');
        }
        if (this.stages[id] === AWAIT_COMP) this.free(id);
        return true;
      }
      case C.CONNACK: this.onConnack(buf, end - this.framer.size, end); return true;
      case C.PINGRESP: return true;
      case C.DISCONNECT: {
        const reason = end > start ? buf[start] : 0;
        this.ctx.log.warn({ broker: this.broker.name, clientId: this.clientId, reason }, 'broker sent DISCONNECT');
        this.socket?.destroy();
        return true;
      }
      case C.PUBLISH: return this.onPublish(header, buf, start, end);
      case C.PUBREL: {
        const id = buf.readUInt16BE(start);
        this.received2.delete(id);
        this.writeAck(C.PUBCOMP, id);
        return true;
      }
      case C.SUBACK:
      case C.UNSUBACK: {
        const id = buf.readUInt16BE(start);
        if (this.stages[id] !== CONTROL) return true;
        this.stages[id] = FREE;
        if (type === C.SUBACK) {
          let pos = start + 2;
          if (this.v5) {
            const propsLen = readVarint(buf, pos, end);
            pos = varintEnd + propsLen;
          }
          const codes: number[] = [];
          for (; pos < end; pos++) codes.push(buf[pos]);
          this.ctx.onSuback(this, id, codes);
        } else {
          this.ctx.onUnsuback?.(this, id);
        }
        return true;
      }
      default: return true;
    }
  }

  /** A message from the broker for the devices: acknowledged once the shards' rings hold it. */
  private onPublish(header: number, buf: Buffer, start: number, end: number): boolean {
    const qos = (header >> 1) & 3;
    if (qos === 3 || start + 2 > end) {
      this.fail('malformed PUBLISH from broker');
      return true;
    }
    const id = qos > 0 ? buf.readUInt16BE(start + 2 + buf.readUInt16BE(start)) : 0;
    // A QoS 2 message passed on already and re-sent before its PUBREL: answer, do not repeat.
    if (qos === 2 && this.received2.has(id)) {
      this.writeAck(C.PUBREC, id);
      return true;
    }
    if (!this.ctx.onBrokerPublish(this, header, buf, start, end)) return false;
    if (qos === 1) this.writeAck(C.PUBACK, id);
    else if (qos === 2) {
      this.received2.add(id);
      this.writeAck(C.PUBREC, id);
    }
    return true;
  }

  private onConnack(buf: Buffer, packetStart: number, end: number): void {
    const parser = mqttPacket.parser({ protocolVersion: this.broker.protocolVersion });
    let connack: mqttPacket.IConnackPacket | null = null;
    parser.on('packet', (p: mqttPacket.Packet) => { if (p.cmd === 'connack') connack = p; });
    parser.on('error', () => undefined);
    parser.parse(buf.subarray(packetStart, end));
    const ack = connack as mqttPacket.IConnackPacket | null;
    const code = ack ? (ack.reasonCode ?? ack.returnCode ?? 0) : -1;
    if (ack === null || code !== 0) {
      this.ctx.log.error({ broker: this.broker.name, clientId: this.clientId, code }, 'broker refused connection');
      this.socket?.destroy();
      return;
    }
    const props = ack.properties ?? {};
    const configured = this.broker.inflight > 0 ? this.broker.inflight : this.v5 ? 65535 : AUTO_INFLIGHT_V4;
    this.maxInflight = Math.min(configured, props.receiveMaximum ?? 65535);
    this.maxQos = Math.min(this.broker.maxQos, props.maximumQoS ?? 2);
    this.retainAvailable = props.retainAvailable !== false;
    this.maxPacketSize = props.maximumPacketSize ?? 0x0fffffff;
    const resumed = ack.sessionPresent;
    this.state = UP;
    this.stageAt = this.ctx.now;
    this.sessionAddress = this.address;
    this.attempt = 0;
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.ctx.log.info({ broker: this.broker.name, clientId: this.clientId, address: this.addressText(), resumed, pending: this.inflight }, 'broker connected');
    // An unacknowledged status of an earlier connection would land after the new one.
    if (this.stages[this.statusId] === AWAIT_ACK && this.tags[this.statusId] === STATUS_TAG) this.free(this.statusId);
    const ids: number[] = [];
    for (let id = 1; id < 65536; id++) {
      // SUBSCRIBEs are not part of the session: the downlink sends them again if needed.
      if (this.stages[id] === CONTROL) this.stages[id] = FREE;
      else if (this.stages[id] !== FREE) ids.push(id);
    }
    if (!resumed) this.received2.clear();
    this.publishStatus(this.addresses.length > 1 ? `online ${this.addressText()}` : 'online');
    this.ctx.onConnected(this, resumed === true);
    this.resend(ids, resumed);
  }

  /** Re-sends the unacknowledged messages `ids` in their original order, in paced batches. */
  private resend(ids: number[], sessionPresent: boolean): void {
    if (ids.length === 0) {
      this.ctx.schedulePump();
      return;
    }
    ids.sort((a, b) => ((this.order[a] - this.order[b]) | 0));
    this.resending = true;
    const batch = Math.max(1, Math.min(this.maxInflight, 256));
    const socket = this.socket;
    let i = 0;
    const step = (): void => {
      if (this.state !== UP || this.socket !== socket) return; // a newer connection re-sends itself
      for (const end = Math.min(ids.length, i + batch); i < end; i++) {
        const id = ids[i];
        const slab = this.slabs[id];
        if (this.stages[id] === AWAIT_COMP && sessionPresent) {
          this.writeAck(C.PUBREL, id);
        } else if (slab !== undefined) {
          this.stages[id] = AWAIT_ACK;
          const len = this.lengths[id];
          if (this.outLen + len > this.out.length) this.flush(len);
          const at = this.outLen;
          this.outLen += slab.copy(this.out, at, this.starts[id], this.starts[id] + len);
          this.out[at] |= 0x08; // DUP: this is a retransmission [MQTT-3.3.1-1]
          // The re-sent copy is the one to keep: the old slab may be released.
          this.slabs[id] = this.out;
          this.starts[id] = at;
        }
      }
      this.flush();
      if (i < ids.length) {
        this.timer = setTimeout(step, this.config.pendingThrottleMs);
      } else {
        this.resending = false;
        this.ctx.log.info({ broker: this.broker.name, clientId: this.clientId, resent: ids.length }, 'pending messages re-sent');
        this.ctx.schedulePump();
      }
    };
    step();
  }

  private publishStatus(state: string, qos = 1): void {
    const payload = Buffer.from(state);
    const topic = Buffer.from(this.statusTopic);
    this.publish(qos, this.retainAvailable, NO_TOKEN, 0, topic, 0, topic.length, 0, 0, payload, 0, payload.length, false, STATUS_TAG);
    if (qos > 0) this.statusId = this.nextId === 1 ? 65535 : this.nextId - 1;
  }

  /**
   * Encodes one message for this broker. `qos` is the device's; the effective QoS is capped
   * by the broker. Returns false when the message exceeds the broker's maximum packet size
   * (the caller answers the device with 0x95 and counts it).
   */
  publish(qos: number, retain: boolean, token: number, shard: number, topicSrc: Buffer, topicStart: number, topicLen: number,
    propsStart: number, propsLen: number, src: Buffer, payloadStart: number, payloadLen: number, trace = false, tag = -1): boolean {
    const q = qos < this.maxQos ? qos : this.maxQos;
    const size = publishSize(topicLen, q, this.v5 ? propsLen : 0, payloadLen, this.v5);
    if (size > this.maxPacketSize) return false;
    if (this.outLen + size > this.out.length) this.flush(size);
    let id = 0;
    if (q > 0) {
      id = this.nextId;
      while (this.stages[id] !== FREE) id = id === 65535 ? 1 : id + 1;
      this.nextId = id === 65535 ? 1 : id + 1;
    }
    const start = this.outLen;
    const pl = this.v5 ? propsLen : 0;
    let pos = encodePublishHead(this.out, start, q, retain && this.retainAvailable, id, topicSrc, topicStart, topicLen, this.v5, pl, payloadLen);
    if (pl > 0) pos += copyBytes(src, propsStart, propsStart + pl, this.out, pos);
    pos += copyBytes(src, payloadStart, payloadStart + payloadLen, this.out, pos);
    this.outLen = pos;
    if (trace) {
      this.traced[id] = 1;
      this.ctx.log.info({ trace: 'out', broker: this.broker.name, clientId: this.clientId, deviceKey: shard, packet: describePackets(this.out.subarray(start, pos), this.v5 ? 5 : 4)[0] }, 'proxy -> broker (for a traced device)');
    }
    this.sent[q]++;
    this.bytesOut[q] += pos - start;
    if (q > 0) {
      this.sentAt[id] = performance.now();
      this.slabs[id] = this.out;
      this.starts[id] = start;
      this.lengths[id] = pos - start;
      this.tokens[id] = token;
      this.shards[id] = shard;
      this.stages[id] = AWAIT_ACK;
      this.order[id] = this.sequence++;
      this.tags[id] = tag;
      this.inflight++;
    } else {
      this.qos0Pending = true;
      if (token !== NO_TOKEN) this.ctx.ack(shard, token, 0);
      if (tag >= 0) this.ctx.spoolDone(tag);
    }
    return true;
  }

  /** FANOUT_TEST_HOOKS dump: the connection's state and what it has in flight. */
  describe(): object {
    const now = performance.now();
    const flight: { id: number; stage: number; ageMs: number; len: number }[] = [];
    for (let id = 1; id < 65536; id++) {
      if (this.stages[id] === AWAIT_ACK || this.stages[id] === AWAIT_COMP) flight.push({ id, stage: this.stages[id], ageMs: Math.round(now - this.sentAt[id]), len: this.lengths[id] });
    }
    return {
      clientId: this.clientId, address: this.addressText(), state: this.state, inflight: this.inflight, maxInflight: this.maxInflight, writable: this.writable, resending: this.resending,
      outLen: this.outLen, held: this.held !== null, socketBuffered: this.socket?.writableLength ?? null, paused: this.socket?.isPaused() ?? null,
      framerBuffered: this.framer.buffered, flight: flight.slice(0, 40),
    };
  }

  /** Shard `shard` was replaced: its old tokens must not be answered to the new one. */
  forgetShard(shard: number): void {
    for (let id = 1; id < 65536; id++) if (this.stages[id] !== FREE && this.shards[id] === shard) this.tokens[id] = NO_TOKEN;
  }

  private answer(id: number, reason: number): void {
    const token = this.tokens[id];
    if (token !== NO_TOKEN) this.ctx.ack(this.shards[id], token, reason);
    this.tokens[id] = NO_TOKEN;
  }

  private free(id: number): void {
    if (this.tokens[id] !== NO_TOKEN) this.answer(id, 0);
    const tag = this.tags[id];
    if (tag >= 0) {
      this.tags[id] = -1;
      this.ctx.spoolDone(tag);
    }
    this.stages[id] = FREE;
    this.slabs[id] = undefined;
    this.inflight--;
    if (this.state === LEAVING && this.inflight === 0) this.leave();
    this.ctx.schedulePump();
  }

  private writeAck(type: number, id: number): void {
    if (this.outLen + 4 > this.out.length) this.flush(4);
    this.outLen = C.writeAck(this.out, this.outLen, type, id);
  }

  private append(packet: Buffer): void {
    if (this.outLen + packet.length > this.out.length) this.flush(packet.length);
    this.outLen += packet.copy(this.out, this.outLen);
  }

  /** Writes this turn's frames in one socket write; starts a fresh buffer so inflight views stay valid. */
  flush(nextNeed = 0): void {
    if (this.outLen > 0 && this.socket !== null && this.state !== DOWN) {
      const chunk = this.out.subarray(0, this.outLen);
      this.out = this.out.subarray(this.outLen);
      if (this.out.length < Math.max(nextNeed, 512)) this.out = Buffer.allocUnsafe(Math.max(OUT_CHUNK, nextNeed));
      if (!this.socket.write(chunk)) this.writable = false;
      this.lastTx = this.ctx.now;
    } else if (this.outLen > 0 || nextNeed > this.out.length) {
      this.out = Buffer.allocUnsafe(Math.max(OUT_CHUNK, nextNeed));
    }
    this.outLen = 0;
  }

  /** Keep-alive: PINGREQ when idle, reconnect when the broker stopped answering. */
  onTick(now: number): void {
    if (this.addresses.length > 1) this.checkAddress(now);
    const ka = this.broker.keepalive * 1000;
    if (this.state !== UP || ka === 0) return;
    if (now - this.lastRx > ka * 1.5) {
      this.fail('keep-alive timeout');
    } else if (now - this.lastTx >= ka * 0.75) {
      this.append(C.PINGREQ_PACKET);
      this.flush();
    }
  }

  /** Failover: gives up a silent attempt, and takes a connection on a failover address back to
   *  the primary once a TCP probe finds it listening again. */
  private checkAddress(now: number): void {
    if (this.state === CONNECTING && now - this.stageAt > FAILOVER_CONNECT_TIMEOUT_MS) {
      this.fail(`no CONNACK within ${FAILOVER_CONNECT_TIMEOUT_MS} ms`);
    } else if (this.state === LEAVING && now - this.stageAt > LEAVE_DRAIN_MS) {
      this.leave();
    } else if (this.state === UP && this.address !== 0 && !this.resending && this.probe === null
      && this.broker.primaryCheckMs !== 0 && now - this.stageAt >= (this.broker.primaryCheckMs ?? 0)) {
      const { host, port } = this.addresses[0];
      const probe = net.connect({ host, port });
      this.probe = probe;
      const done = (answered: boolean): void => {
        probe.destroy();
        if (this.probe !== probe) return;
        this.probe = null;
        this.stageAt = this.ctx.now;
        if (!answered || this.state !== UP) return;
        this.ctx.log.info({ broker: this.broker.name, clientId: this.clientId, address: this.addressText(), primary: this.addressText(0), inflight: this.inflight },
          'primary broker address answers again: moving back once in-flight messages are acknowledged');
        this.state = LEAVING;
        if (this.inflight === 0) this.leave();
      };
      probe.setTimeout(FAILOVER_CONNECT_TIMEOUT_MS, () => done(false));
      probe.once('connect', () => done(true));
      probe.once('error', () => done(false));
    }
  }

  /** Leaves the failover address for the primary: status offline there (QoS 0, so it cannot be
   *  re-sent after the next connection's online), DISCONNECT, and reconnect at once. */
  private leave(): void {
    if (this.state !== LEAVING || this.returning) return;
    this.returning = true;
    this.publishStatus('offline', 0);
    this.append(this.v5 ? C.disconnectV5(0) : C.DISCONNECT_V4_PACKET);
    this.flush();
    this.socket?.end();
  }

  private fail(why: string): void {
    this.ctx.log.warn({ broker: this.broker.name, clientId: this.clientId, why }, 'dropping broker connection');
    this.socket?.destroy();
  }

  /** Clean goodbye at shutdown: status offline (the will does not fire on DISCONNECT), then DISCONNECT. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    const socket = this.socket;
    if (socket === null || this.state !== UP) {
      socket?.destroy();
      return;
    }
    this.publishStatus('offline');
    this.append(this.v5 ? C.disconnectV5(0) : C.DISCONNECT_V4_PACKET);
    this.flush();
    await new Promise<void>((resolve) => {
      socket.end(resolve);
      setTimeout(resolve, 1000).unref();
    });
    socket.destroy();
  }
}
