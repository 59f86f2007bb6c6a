// One connection from a writer to its upstream broker: CONNECT with a client id unique to this
// broker and a retained last will, PUBLISH with an inflight window capped by the broker's
// Receive Maximum, the QoS 1/2 handshakes, keep-alive, and re-sending what was not
// acknowledged after a reconnect, paced by FANOUT_PENDING_THROTTLE_MS.

import * as net from 'node:net';
import * as tls from 'node:tls';
import * as mqttPacket from 'mqtt-packet';
import type { BrokerConfig, Config } from '../config/types';
import { Framer, FRAME_READY, FRAME_INCOMPLETE } from '../protocol/framer';
import { encodePublishHead, publishSize } from '../protocol/publish';
import { copyBytes } from '../protocol/bytes';
import * as C from '../protocol/constants';
import { NO_TOKEN } from '../ring/records';
import { nextBackoff } from './backoff';
import type { WriterContext } from './context';

const DOWN = 0;
const CONNECTING = 1;
const UP = 2;

// Inflight stages per packet id.
const FREE = 0;
const AWAIT_ACK = 1; // PUBLISH sent, waiting for PUBACK / PUBREC
const AWAIT_COMP = 2; // PUBREL sent, waiting for PUBCOMP

const OUT_CHUNK = 64 * 1024;
/** Stop taking records while this much is queued for the socket in one turn. */
const OUT_HIGH_WATER = 1024 * 1024;

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
  private readonly v5: boolean;
  private readonly statusTopic: string;

  constructor(private readonly ctx: WriterContext, private readonly broker: BrokerConfig, private readonly config: Config, readonly index: number) {
    this.clientId = `${config.proxyId}-${broker.name}-${index}`;
    this.maxInflight = Math.min(broker.inflight, 65535);
    this.maxQos = broker.maxQos;
    this.v5 = broker.protocolVersion === 5;
    this.statusTopic = config.statusTopic.replace('{clientId}', this.clientId);
  }

  /** Whether a record can be taken now without exceeding any window. */
  canAccept(qos: number): boolean {
    return this.state === UP && this.writable && !this.resending && this.outLen < OUT_HIGH_WATER &&
      (qos === 0 || this.maxQos === 0 || this.inflight < this.maxInflight);
  }

  connect(): void {
    if (this.closing) return;
    this.state = CONNECTING;
    const b = this.broker;
    const socket = b.transport === 'mqtts'
      ? tls.connect({ host: b.host, port: b.port, servername: net.isIP(b.host) ? undefined : b.host })
      : net.connect({ host: b.host, port: b.port });
    socket.setNoDelay(true);
    this.socket = socket;
    this.framer.reset();
    this.writable = true;
    socket.once(b.transport === 'mqtts' ? 'secureConnect' : 'connect', () => {
      const will = { topic: this.statusTopic, payload: Buffer.from('offline'), qos: 1 as const, retain: true };
      socket.write(mqttPacket.generate({
        cmd: 'connect', protocolId: 'MQTT', protocolVersion: b.protocolVersion, clientId: this.clientId,
        // A fresh session on the first connect: a stale one could hold QoS 2 packet ids that
        // would swallow new messages. Later reconnects resume it so in-flight QoS 2 completes.
        clean: !this.everConnected, keepalive: b.keepalive, username: b.username,
        password: b.password === undefined ? undefined : Buffer.from(b.password), will,
        properties: this.v5 ? { sessionExpiryInterval: 3600, receiveMaximum: 65535 } : undefined,
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
      if (this.state === UP) this.ctx.log.warn({ broker: b.name, clientId: this.clientId, err: err.message }, 'broker connection error');
      else this.ctx.log.debug({ broker: b.name, clientId: this.clientId, err: err.message }, 'broker connect failed');
    });
    socket.on('close', () => this.onClose(socket));
  }

  private onClose(socket: net.Socket): void {
    if (socket !== this.socket) return;
    const wasUp = this.state === UP;
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
    // Unsent bytes belong to packets still tracked for re-sending, or to QoS 0. The slab they are
    // in must not be written over: start a new one.
    this.out = Buffer.allocUnsafe(OUT_CHUNK);
    this.outLen = 0;
    this.resending = false;
    if (this.closing) return;
    if (wasUp) this.ctx.log.warn({ broker: this.broker.name, clientId: this.clientId, inflight: this.inflight }, 'broker connection lost');
    const delay = nextBackoff(this.attempt++, this.config.reconnectMinMs, this.config.reconnectMaxMs);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  private onData(chunk: Buffer): void {
    this.lastRx = this.ctx.now;
    this.framer.push(chunk);
    const f = this.framer;
    for (;;) {
      const r = f.next();
      if (r === FRAME_INCOMPLETE) break;
      if (r !== FRAME_READY) {
        this.fail('malformed packet from broker');
        return;
      }
      this.onPacket(f.header, f.buf, f.start, f.end);
    }
    // Acks and answers go out once per event-loop turn, with everything else of that turn.
    this.ctx.schedulePump();
  }

  private onPacket(header: number, buf: Buffer, start: number, end: number): void {
    const type = header >> 4;
    switch (type) {
      case C.PUBACK:
      case C.PUBREC: {
        const id = buf.readUInt16BE(start);
        const reason = end - start > 2 ? buf[start + 2] : 0;
        if (this.stages[id] !== AWAIT_ACK) return;
        this.answer(id, reason);
        if (type === C.PUBREC && reason < 0x80) {
          this.stages[id] = AWAIT_COMP;
          this.writeAck(C.PUBREL, id);
        } else {
          this.free(id);
        }
        return;
      }
      case C.PUBCOMP: {
        const id = buf.readUInt16BE(start);
        if (this.stages[id] === AWAIT_COMP) this.free(id);
        return;
      }
      case C.CONNACK: return this.onConnack(buf, end - this.framer.size, end);
      case C.PINGRESP: return;
      case C.DISCONNECT: {
        const reason = end > start ? buf[start] : 0;
        this.ctx.log.warn({ broker: this.broker.name, clientId: this.clientId, reason }, 'broker sent DISCONNECT');
        this.socket?.destroy();
        return;
      }
      case C.PUBLISH: {
        // Downlink is not routed by this build; acknowledge so the broker's window never fills.
        const qos = (header >> 1) & 3;
        if (qos > 0) {
          const id = buf.readUInt16BE(start + 2 + buf.readUInt16BE(start));
          this.writeAck(qos === 1 ? C.PUBACK : C.PUBREC, id);
        }
        return;
      }
      case C.PUBREL: this.writeAck(C.PUBCOMP, buf.readUInt16BE(start)); return;
      default: return;
    }
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
    this.maxInflight = Math.min(this.broker.inflight, props.receiveMaximum ?? 65535);
    this.maxQos = Math.min(this.broker.maxQos, props.maximumQoS ?? 2);
    this.retainAvailable = props.retainAvailable !== false;
    this.maxPacketSize = props.maximumPacketSize ?? 0x0fffffff;
    const resumed = ack.sessionPresent;
    this.state = UP;
    this.attempt = 0;
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.ctx.log.info({ broker: this.broker.name, clientId: this.clientId, resumed, pending: this.inflight }, 'broker connected');
    const ids: number[] = [];
    for (let id = 1; id < 65536; id++) if (this.stages[id] !== FREE) ids.push(id);
    this.publishStatus('online');
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

  private publishStatus(state: string): void {
    const payload = Buffer.from(state);
    const topic = Buffer.from(this.statusTopic);
    this.publish(1, this.retainAvailable, NO_TOKEN, 0, topic, 0, topic.length, 0, 0, payload, 0, payload.length);
  }

  /**
   * Encodes one message for this broker. `qos` is the device's; the effective QoS is capped
   * by the broker. Returns false when the message exceeds the broker's maximum packet size
   * (the caller answers the device with 0x95 and counts it).
   */
  publish(qos: number, retain: boolean, token: number, shard: number, topicSrc: Buffer, topicStart: number, topicLen: number,
    propsStart: number, propsLen: number, src: Buffer, payloadStart: number, payloadLen: number): boolean {
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
    if (q > 0) {
      this.slabs[id] = this.out;
      this.starts[id] = start;
      this.lengths[id] = pos - start;
      this.tokens[id] = token;
      this.shards[id] = shard;
      this.stages[id] = AWAIT_ACK;
      this.order[id] = this.sequence++;
      this.inflight++;
    } else {
      this.qos0Pending = true;
      if (token !== NO_TOKEN) this.ctx.ack(shard, token, 0);
    }
    return true;
  }

  private answer(id: number, reason: number): void {
    const token = this.tokens[id];
    if (token !== NO_TOKEN) this.ctx.ack(this.shards[id], token, reason);
    this.tokens[id] = NO_TOKEN;
  }

  private free(id: number): void {
    if (this.tokens[id] !== NO_TOKEN) this.answer(id, 0);
    this.stages[id] = FREE;
    this.slabs[id] = undefined;
    this.inflight--;
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
    const ka = this.broker.keepalive * 1000;
    if (this.state !== UP || ka === 0) return;
    if (now - this.lastRx > ka * 1.5) {
      this.fail('keep-alive timeout');
    } else if (now - this.lastTx >= ka * 0.75) {
      this.append(C.PINGREQ_PACKET);
      this.flush();
    }
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
