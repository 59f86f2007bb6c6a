// One device connection on a shard: the MQTT 3.1.1 / 5.0 server side of the protocol. Publishes
// go to the brokers through the shard's rings; the device is acknowledged when the brokers
// have acknowledged (FANOUT_ACK). When a ring or the device's inflight window is full the
// packet in hand is kept and the socket paused: backpressure instead of loss.

import type { DeviceTransport } from '../ingress/transport';
import { randomBytes } from 'node:crypto';
import * as mqttPacket from 'mqtt-packet';
import { Framer, FRAME_INCOMPLETE, FRAME_READY, FRAME_TOO_LARGE } from '../protocol/framer';
import { decodePublish, encodePublishHead, publishSize } from '../protocol/publish';
import { varintSize, writeVarint } from '../protocol/framer';
import { copyBytes } from '../protocol/bytes';
import { withinTopicLimits } from '../protocol/topic';
import {
  ACK_ALLOWED, DISCONNECT_ALLOWED, filtersAreValid, propertyBlockFault, SUBSCRIBE_ALLOWED, UNSUBSCRIBE_ALLOWED,
} from '../protocol/properties';
import { decodeConnect, encodeConnack, type ConnackOptions } from '../protocol/connect';
import * as C from '../protocol/constants';
import { NO_TOKEN } from '../ring/records';
import type { AckTarget } from './inflight';
import type { ShardContext } from './context';
import type { Outgoing, Session, SessionLink } from './session';
import { fingerprint } from './no-local';
import type { AclChecker } from '../auth/acl';
import { describePackets, packetBytes } from '../protocol/trace';
import { ReceiveQuota } from './receive-quota';

const NEW = 0;
const CONNECTED = 1;
const CLOSED = 2;
/** CONNECT read, password being verified: later packets wait. */
const AUTHENTICATING = 3;

/** Topic aliases a MQTT 5 device may use towards us (advertised in CONNACK). */
export const TOPIC_ALIAS_MAX = 64;

export class DeviceConnection implements AckTarget, SessionLink {
  state = NEW;
  version = 4;
  clientId = '';
  claimed = false;
  keepaliveMs = 0;
  lastRx: number;
  /** When the socket was accepted: the CONNECT timeout counts from here. */
  readonly openedAt: number;
  /** Set while paused for backpressure: the packet in hand waits here. */
  blocked = false;
  /** A will to publish if the connection ends without DISCONNECT: an encoded PUBLISH. */
  will: Buffer | null = null;
  willDelayMs = 0;
  takenOver = false;
  session: Session | null = null;
  /** Common name of the verified device certificate (FANOUT_TLS_CN_AS_USERNAME), else null. */
  tlsIdentity: string | null = null;
  /** The user name the device goes by: its certificate's CN where configured, else CONNECT's. */
  username: string | null = null;
  /** FANOUT_ACL_FILE's rules for this device, null when there is no ACL file. */
  acl: AclChecker | null = null;
  /** FANOUT_TRACE_CLIENTS matched this client id: every packet is logged decoded. */
  traced = false;
  /** The device's limits for what we send it (MQTT 5 CONNECT properties). */
  receiveMaximum = 65535;
  /** Per-device upstream mode: a writer holds records of this device (its session at a broker
   *  cannot send): nothing more is read from it until released. */
  upstreamHeld = false;
  /** The reason code of the device's DISCONNECT (0 for MQTT 3.1.1), -1 without one; and the
   *  session expiry it set, -1 when it set none. */
  disconnectReason = -1;
  disconnectExpiryS = -1;
  /** Per-device upstream mode: the CONNECT, until the device's sessions at the brokers are asked for. */
  private upstreamConnect: mqttPacket.IConnectPacket | null = null;
  private maxOutPacket = 0x0fffffff + 5;
  private aliasMaxOut = 0;
  private outAliases: Map<string, number> | null = null;

  private readonly framer: Framer;
  private pendingHeader = -1;
  private pendingBuf: Buffer | null = null;
  private pendingStart = 0;
  private pendingEnd = 0;
  private inflightCount = 0;
  /** MQTT 5: the device's QoS 1/2 publishes not answered yet, against our Receive Maximum. */
  private quota: ReceiveQuota | null = null;
  private qos1: Set<number> | null = null;
  private qos2: Map<number, number> | null = null;
  private aliases: (Buffer | undefined)[] | null = null;
  private out: Buffer | null = null;
  private outLen = 0;
  private dirty = false;
  private cleanDisconnect = false;
  private writeBlocked = false;
  /** The socket closed while input was still to handle: the close completes once it is. */
  private closing = false;
  /** Date.now() when the socket closed with input still to handle; 0 otherwise. */
  closingSince = 0;

  constructor(private readonly ctx: ShardContext, readonly transport: DeviceTransport, readonly id: number) {
    this.framer = new Framer(ctx.config.maxPacketSize);
    this.lastRx = this.openedAt = Date.now();
  }

  // FANOUT_MAX_PUBLISH_RATE: a token bucket holding one second's worth.
  private tokens = -1;
  private tokensAt = 0;

  /** Takes a publish token; false (and a resume scheduled) when the device is too fast. */
  private takeToken(): boolean {
    const rate = this.ctx.config.maxPublishRate;
    const now = Date.now();
    if (this.tokens < 0) {
      this.tokens = rate;
      this.tokensAt = now;
    } else if (now > this.tokensAt) {
      this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) * rate) / 1000);
      this.tokensAt = now;
    }
    if (this.tokens >= 1) {
      this.tokens--;
      return true;
    }
    this.ctx.throttled(this, Math.ceil(((1 - this.tokens) * 1000) / rate));
    return false;
  }

  /** Bytes received and not yet handled (held while paused). */
  get bufferedIn(): number {
    return this.framer.buffered;
  }

  onData(chunk: Buffer): void {
    this.lastRx = Date.now();
    this.framer.push(chunk);
    if (!this.blocked) this.process();
  }

  /** Called by the shard when the reason for a pause may be gone. */
  resume(): void {
    if (!this.blocked || this.state === CLOSED) return;
    this.blocked = false;
    if (this.pendingBuf !== null) {
      const buf = this.pendingBuf;
      this.pendingBuf = null;
      if (!this.safeHandle(this.pendingHeader, buf, this.pendingStart, this.pendingEnd)) {
        this.block(this.pendingHeader, buf, this.pendingStart, this.pendingEnd);
        return;
      }
    }
    this.process();
    if (!this.blocked && !this.writeBlocked && this.state !== CLOSED) this.transport.resume();
  }

  private process(): void {
    const f = this.framer;
    // The first packet must be a CONNECT [MQTT-3.1.0-1]: its first byte tells, without waiting
    // for the length it declares.
    if (this.state === NEW && f.buffered > 0 && f.peek() !== C.CONNECT << 4) {
      this.destroy('first packet is not CONNECT');
      return;
    }
    // A connected device without its session yet (coming from another shard) waits.
    while (this.state !== CLOSED && !this.blocked && (this.state === NEW || this.session !== null)) {
      const r = f.next();
      if (r === FRAME_READY) {
        if (!this.safeHandle(f.header, f.buf, f.start, f.end)) this.block(f.header, f.buf, f.start, f.end);
      } else if (r === FRAME_INCOMPLETE) {
        // A packet cut short by the close never completes.
        if (this.closing) this.finishClose();
        return;
      } else {
        const tooLarge = r === FRAME_TOO_LARGE;
        this.protocolClose(tooLarge ? C.RC_PACKET_TOO_LARGE : C.RC_MALFORMED, tooLarge ? 'packet too large' : 'bad remaining length');
      }
    }
    if (this.state === CLOSED) this.finishClose();
  }

  /**
   * The socket has closed. Returns true when the connection can be let go now; false while
   * input read before the close (a paused device's publishes, its DISCONNECT) still waits to
   * be handled: everything a device sent before its FIN is processed, in order, and the shard
   * is told (closeDeferred) once it has been.
   */
  endOfInput(): boolean {
    if (this.state === CLOSED || (this.framer.buffered === 0 && this.pendingBuf === null)) return true;
    this.closing = true;
    this.closingSince = Date.now();
    return false;
  }

  private finishClose(): void {
    if (!this.closing) return;
    this.closing = false;
    this.closingSince = 0;
    this.state = CLOSED;
    this.ctx.closeDeferred(this);
  }

  private block(header: number, buf: Buffer, start: number, end: number): void {
    this.pendingHeader = header;
    this.pendingBuf = buf;
    this.pendingStart = start;
    this.pendingEnd = end;
    this.blocked = true;
    this.transport.pause();
    this.ctx.blocked(this);
  }

  /** handle(), with a guard: a packet that trips a defect of ours ends this connection (MQTT 5:
   *  0x83) and is logged, instead of ending the thread and every device on it. */
  private safeHandle(header: number, buf: Buffer, start: number, end: number): boolean {
    try {
      return this.handle(header, buf, start, end);
    } catch (err) {
      this.ctx.log.error({ err, conn: this.id, clientId: this.clientId, packetType: header >> 4 }, 'unexpected error handling a device packet; connection closed');
      this.protocolClose(C.RC_IMPLEMENTATION_SPECIFIC, 'internal error');
      return true;
    }
  }

  /** Returns false when the packet cannot be taken now (backpressure); it is retried later. */
  private handle(header: number, buf: Buffer, start: number, end: number): boolean {
    const type = header >> 4;
    if (this.state === NEW) {
      if (type !== C.CONNECT) {
        this.destroy(`${type} before CONNECT`);
        return true;
      }
      this.onConnect(buf, end - this.framer.size, start, end);
      return true;
    }
    if (this.traced) this.trace('in', packetBytes(header, buf.subarray(start, end)));
    if (type === C.PUBLISH) return this.onPublish(header, buf, start, end);
    if ((header & 0x0f) !== C.REQUIRED_FLAGS[type]) {
      this.protocolClose(C.RC_MALFORMED, `reserved flags set on packet type ${type}`);
      return true;
    }
    if (this.version === 5 && this.propertiesFault(type, buf, start, end)) return true;
    switch (type) {
      case C.PUBREL: this.onPubrel(buf, start, end); break;
      case C.PINGREQ: this.send(C.PINGRESP_PACKET); break;
      case C.PUBACK: this.onDeliveryAck('puback', buf, start, end); break;
      case C.PUBREC: this.onDeliveryAck('pubrec', buf, start, end); break;
      case C.PUBCOMP: this.onDeliveryAck('pubcomp', buf, start, end); break;
      case C.SUBSCRIBE:
      case C.UNSUBSCRIBE: this.onSubscription(type, buf, end - this.framer.size, end); break;
      case C.DISCONNECT: this.onDisconnect(buf, start, end); break;
      case C.CONNECT: this.protocolClose(C.RC_PROTOCOL_ERROR, 'second CONNECT'); break;
      default: this.protocolClose(C.RC_PROTOCOL_ERROR, `unexpected packet type ${type}`);
    }
    return true;
  }

  /** MQTT 5: checks the properties of a packet other than PUBLISH, which are otherwise read by
   *  their fixed fields or by mqtt-packet (which takes a repeated property without complaint),
   *  and closes the connection when they are malformed or repeat one. */
  private propertiesFault(type: number, buf: Buffer, start: number, end: number): boolean {
    let at = -1;
    let allowed = ACK_ALLOWED;
    switch (type) {
      case C.PUBACK: case C.PUBREC: case C.PUBREL: case C.PUBCOMP: at = end - start > 3 ? start + 3 : -1; break;
      case C.SUBSCRIBE: at = start + 2; allowed = SUBSCRIBE_ALLOWED; break;
      case C.UNSUBSCRIBE: at = start + 2; allowed = UNSUBSCRIBE_ALLOWED; break;
      case C.DISCONNECT: at = end - start > 1 ? start + 1 : -1; allowed = DISCONNECT_ALLOWED; break;
    }
    if (at < 0) return false;
    const fault = propertyBlockFault(buf, at, end, type !== C.SUBSCRIBE && type !== C.UNSUBSCRIBE, allowed);
    if (fault === 0) return false;
    this.protocolClose(fault, fault === C.RC_PROTOCOL_ERROR ? `a property repeated or out of range in packet type ${type}` : `malformed properties in packet type ${type}`);
    return true;
  }

  private onConnect(buf: Buffer, packetStart: number, start: number, end: number): void {
    const res = decodeConnect(buf, packetStart, start, end);
    if (!res.ok) {
      this.ctx.log.debug({ conn: this.id, reason: res.reason }, 'CONNECT refused');
      if (res.version === 0) this.destroy(res.reason);
      else this.refuse(res.version, res.code);
      return;
    }
    const p = res.packet;
    this.version = res.version;
    const v5 = res.version === 5;
    if (v5 && p.properties?.authenticationMethod) {
      this.refuse(5, 0x8c);
      return;
    }
    let assigned: string | undefined;
    this.clientId = p.clientId;
    if (this.clientId.length === 0) {
      this.clientId = assigned = `fanout-${randomBytes(9).toString('base64url')}`;
    }
    this.keepaliveMs = (p.keepalive ?? 0) * 1000;
    this.username = this.tlsIdentity ?? p.username ?? null;
    this.traced = this.ctx.traces(this.clientId);
    if (this.traced) this.trace('in', Buffer.from(buf.subarray(packetStart, end)));
    if (this.username === null && !this.ctx.config.allowAnonymous) {
      this.ctx.denied('anonymous', this);
      this.refuse(this.version, v5 ? C.RC_NOT_AUTHORIZED : C.CONNACK_V4_NOT_AUTHORIZED);
      return;
    }
    // A verified certificate (FANOUT_TLS_CN_AS_USERNAME) stands for the password.
    if (this.username !== null && this.tlsIdentity === null && this.ctx.checksPasswords) {
      this.state = AUTHENTICATING;
      const password = p.password === undefined ? undefined : Buffer.from(p.password);
      this.ctx.authenticate(this.username, password, (ok) => {
        if (this.state !== AUTHENTICATING) return; // gone meanwhile
        if (!ok) {
          this.ctx.denied('password', this);
          this.refuse(this.version, v5 ? C.RC_BAD_CREDENTIALS : C.CONNACK_V4_NOT_AUTHORIZED);
          return;
        }
        this.state = NEW;
        this.finishConnect(p, assigned);
        if (this.framer.buffered > 0 && !this.blocked) this.process();
      });
      return;
    }
    this.finishConnect(p, assigned);
  }

  /** CONNECT accepted (and authenticated): limits, will, session, CONNACK. */
  private finishConnect(p: mqttPacket.IConnectPacket, assigned: string | undefined): void {
    const v5 = this.version === 5;
    this.acl = this.ctx.aclFor(this.clientId, this.username);
    // A will is a publish too: its topic needs write access, or the CONNECT is refused (mosquitto).
    if (this.acl !== null && p.will && !this.acl.canPublish(p.will.topic)) {
      this.ctx.denied('publish', this);
      this.refuse(this.version, v5 ? C.RC_NOT_AUTHORIZED : C.CONNACK_V4_NOT_AUTHORIZED);
      return;
    }
    const cp = p.properties;
    if (v5) {
      this.quota = new ReceiveQuota(this.ctx.config.maxInflight);
      this.receiveMaximum = cp?.receiveMaximum ?? 65535;
      if (cp?.maximumPacketSize !== undefined) this.maxOutPacket = cp.maximumPacketSize;
      this.aliasMaxOut = cp?.topicAliasMaximum ?? 0;
    } else {
      this.receiveMaximum = this.ctx.config.maxInflight;
    }
    // Session lifetime: MQTT 3.1.1 persistent sessions and MQTT 5 expiry, both capped.
    const maxExpiry = this.ctx.config.sessionExpiryMaxS;
    const asked = v5 ? (cp?.sessionExpiryInterval ?? 0) : (p.clean ? 0 : maxExpiry);
    const expiry = Math.min(asked, maxExpiry);
    if (p.will) {
      const props = p.will.properties ? { ...p.will.properties } : undefined;
      if (props) {
        // The will is due when its delay has passed or the session ends, whichever is first
        // [MQTT-3.1.3-9]; without a session store, the session lasts its expiry interval.
        const expiry = p.properties?.sessionExpiryInterval ?? 0;
        this.willDelayMs = Math.min(props.willDelayInterval ?? 0, expiry) * 1000;
        delete props.willDelayInterval;
      }
      const qos = p.will.qos ?? 0;
      this.will = mqttPacket.generate({
        cmd: 'publish', topic: p.will.topic, payload: p.will.payload, qos, retain: !!p.will.retain, dup: false,
        messageId: qos > 0 ? 1 : undefined, properties: props,
      }, { protocolVersion: v5 ? 5 : 4 });
    }
    this.state = CONNECTED;
    this.connack = {
      sessionPresent: false,
      receiveMaximum: this.ctx.config.maxInflight,
      maximumPacketSize: this.ctx.config.maxPacketSize,
      topicAliasMaximum: TOPIC_ALIAS_MAX,
      assignedClientIdentifier: assigned,
      sessionExpiryInterval: v5 && expiry !== asked ? expiry : undefined,
    };
    // A CONNACK larger than the device accepts is not sent: the connection just ends
    // [MQTT-3.1.2-24]. Ours stay below 256 bytes, so larger limits need no encoding to know.
    if (this.maxOutPacket < 256 && encodeConnack(5, 0, this.connack).length > this.maxOutPacket) {
      this.will = null;
      this.destroy('CONNACK larger than the Maximum Packet Size of the CONNECT');
      return;
    }
    if (this.ctx.openConnections() > this.ctx.config.maxConnections) {
      this.ctx.log.warn({ clientId: this.clientId, max: this.ctx.config.maxConnections }, 'FANOUT_MAX_CONNECTIONS reached: CONNECT refused');
      this.state = NEW;
      this.refuse(this.version, v5 ? C.RC_QUOTA_EXCEEDED : C.CONNACK_V4_UNAVAILABLE);
      return;
    }
    if (this.ctx.upstream !== null) this.upstreamConnect = p;
    const opened = this.ctx.openSession(this, p.clean !== false, expiry * 1000);
    // null: the session comes from another shard; packets after CONNECT wait for it.
    if (opened !== null) this.sessionReady(opened.session, opened.present);
  }

  private connack: ConnackOptions | null = null;

  /** The session is here: answer the CONNECT (per-device mode: once the brokers accepted the
   *  device's own sessions) and go on with what the device sent after it. */
  sessionReady(session: Session, present: boolean): void {
    if (this.state !== CONNECTED || this.connack === null) return;
    const p = this.upstreamConnect;
    if (this.ctx.upstream !== null && p !== null) {
      this.upstreamConnect = null;
      this.ctx.upstream.open(this, session, present, p, (a) => {
        if (this.state !== CONNECTED || this.connack === null) return;
        if (a.ok) {
          this.answerConnect(session, a.present);
          return;
        }
        // Refused by a broker: the session ends or waits as when a device leaves, and the will
        // is not the proxy's to publish.
        if (session.link === null) {
          this.session = session;
          session.link = this;
        }
        this.will = null;
        this.connack = null;
        this.refuse(this.version, a.code);
      });
      return;
    }
    this.answerConnect(session, present);
  }

  private answerConnect(session: Session, present: boolean): void {
    const connack = this.connack!;
    this.session = session;
    session.version = this.version;
    session.acl = this.acl;
    session.journal?.meta(session);
    this.send(encodeConnack(this.version, 0, { ...connack, sessionPresent: present }));
    this.connack = null;
    session.attach(this, this.id, this.ctx.limits, Date.now());
    if (this.framer.buffered > 0 && !this.blocked) this.process();
  }

  private onPublish(header: number, buf: Buffer, start: number, end: number): boolean {
    const ctx = this.ctx;
    if (this.upstreamHeld) return false;
    if (ctx.config.maxPublishRate > 0 && !this.takeToken()) return false;
    const v = ctx.view;
    const rc = decodePublish(header, buf, start, end, this.version, v);
    if (rc !== 0) {
      this.protocolClose(rc, 'invalid PUBLISH');
      return true;
    }
    if (v.qos > 0 && this.quota !== null && !this.quota.take(v.messageId)) {
      this.protocolClose(C.RC_RECEIVE_MAX_EXCEEDED, `more than the Receive Maximum (${ctx.config.maxInflight}) of QoS 1/2 PUBLISHes unanswered`);
      return true;
    }
    const m = ctx.msg;
    m.topic = buf;
    m.topicStart = v.topicStart;
    m.topicLen = v.topicEnd - v.topicStart;
    m.src = buf;
    m.propsA = v.propsStart;
    m.propsAEnd = v.propsEnd;
    m.propsB = m.propsBEnd = 0;
    if (v.topicAlias !== 0) {
      if (v.topicAlias > TOPIC_ALIAS_MAX) {
        this.protocolClose(C.RC_TOPIC_ALIAS_INVALID, 'topic alias out of range');
        return true;
      }
      this.aliases ??= [];
      if (m.topicLen > 0) {
        this.aliases[v.topicAlias] = Buffer.from(buf.subarray(v.topicStart, v.topicEnd));
      } else {
        const t = this.aliases[v.topicAlias];
        if (t === undefined) {
          this.protocolClose(C.RC_PROTOCOL_ERROR, 'unknown topic alias');
          return true;
        }
        m.topic = t;
        m.topicStart = 0;
        m.topicLen = t.length;
      }
      m.propsAEnd = v.aliasStart;
      m.propsB = v.aliasStart + 3;
      m.propsBEnd = v.propsEnd;
    }
    const qos = v.qos;
    const id = v.messageId;
    if (!withinTopicLimits(m.topic, m.topicStart, m.topicLen, ctx.config.maxTopicLength, ctx.config.maxTopicLevels)) {
      // MQTT 5 can refuse the one message [MQTT-3.3.4]; otherwise the connection ends.
      if (this.version === 5 && qos > 0) this.sendAck(qos === 1 ? C.PUBACK : C.PUBREC, id, C.RC_TOPIC_NAME_INVALID);
      else this.protocolClose(C.RC_TOPIC_NAME_INVALID, 'topic longer or deeper than FANOUT_MAX_TOPIC_LENGTH / FANOUT_MAX_TOPIC_LEVELS');
      if (this.version === 5 && qos === 2) (this.qos2 ??= new Map()).set(id, 1);
      return true;
    }
    if (this.acl !== null && !this.acl.canPublish(m.topic.toString('utf8', m.topicStart, m.topicStart + m.topicLen))) {
      // Denied: MQTT 5 is told (0x87); MQTT 3.1.1 is acknowledged and the message dropped, as
      // mosquitto does. Never forwarded either way.
      ctx.denied('publish', this);
      if (qos > 0) this.sendAck(qos === 1 ? C.PUBACK : C.PUBREC, id, this.version === 5 ? C.RC_NOT_AUTHORIZED : 0);
      if (qos === 2) (this.qos2 ??= new Map()).set(id, 1);
      return true;
    }
    if (qos === 2 && this.qos2 !== null) {
      const state = this.qos2.get(id);
      if (state !== undefined) {
        // A retransmission: already forwarded once [MQTT-4.3.3-9].
        if (state === 1) this.sendAck(C.PUBREC, id, 0);
        return true;
      }
    } else if (qos === 1 && this.qos1 !== null && this.qos1.has(id)) {
      return true;
    }
    const tracked = qos > 0 && (ctx.config.ack !== 'local' || ctx.config.spoolDir !== null);
    if (tracked && this.inflightCount >= ctx.config.maxInflight) return false;
    m.qos = qos;
    m.retain = v.retain;
    m.v5 = this.version === 5;
    m.payloadStart = v.payloadStart;
    m.payloadEnd = v.payloadEnd;
    m.deviceKey = this.id;
    m.trace = this.traced;
    if (!ctx.uplink.fits(m)) return false;
    if (ctx.uplink.planned === 0) {
      // No route takes this topic: nothing to wait for.
      ctx.stats.add('unrouted');
      if (qos > 0) this.sendAck(qos === 1 ? C.PUBACK : C.PUBREC, id, 0);
      if (qos === 2) (this.qos2 ??= new Map()).set(id, 1);
      return true;
    }
    m.token = NO_TOKEN;
    if (tracked) {
      m.token = ctx.inflight.allocate(this, id, qos, ctx.uplink.plannedMask);
      this.inflightCount++;
      if (qos === 1) (this.qos1 ??= new Set()).add(id);
    }
    if (qos === 2) (this.qos2 ??= new Map()).set(id, tracked ? 0 : 1);
    ctx.uplink.write(m);
    ctx.stats.add('publishesIn');
    const own = this.session?.own;
    if (own) own.remember(fingerprint(m.topic, m.topicStart, m.topicStart + m.topicLen, buf, v.payloadStart, v.payloadEnd));
    if (qos > 0 && !tracked) this.sendAck(qos === 1 ? C.PUBACK : C.PUBREC, id, 0);
    return true;
  }

  uplinkAcked(messageId: number, qos: number, reason: number): void {
    if (qos === 1) this.qos1?.delete(messageId);
    else this.qos2?.set(messageId, 1);
    if (this.state !== CONNECTED) return;
    this.sendAck(qos === 1 ? C.PUBACK : C.PUBREC, messageId, reason);
  }

  uplinkSettled(): void {
    this.inflightCount--;
    if (this.blocked && this.state !== CLOSED) this.ctx.wake(this);
  }

  private onPubrel(buf: Buffer, start: number, end: number): void {
    if (end - start < 2) {
      this.protocolClose(C.RC_MALFORMED, 'short PUBREL');
      return;
    }
    const id = buf.readUInt16BE(start);
    const state = this.qos2?.get(id);
    if (state === 0) return; // not PUBREC'd yet: the device is ahead of the protocol
    if (state === 1) this.qos2!.delete(id);
    this.sendAck(C.PUBCOMP, id, state === undefined ? C.RC_PACKET_ID_NOT_FOUND : 0);
  }

  private onSubscription(type: number, buf: Buffer, packetStart: number, end: number): void {
    const bytes = buf.subarray(packetStart, end);
    const packet = filtersAreValid(bytes, this.version === 5, type === C.SUBSCRIBE) ? this.ctx.parse(this.version, bytes) : null;
    if (packet === null || (packet.cmd !== 'subscribe' && packet.cmd !== 'unsubscribe')) {
      this.protocolClose(C.RC_MALFORMED, 'malformed SUBSCRIBE/UNSUBSCRIBE');
      return;
    }
    const v5 = this.version === 5;
    const session = this.session!;
    const protocolVersion = v5 ? 5 : 4;
    const filters = packet.cmd === 'subscribe' ? packet.subscriptions : packet.unsubscriptions;
    if (filters.length === 0) {
      // At least one topic filter is required [MQTT-3.8.3-2, MQTT-3.10.3-2].
      this.protocolClose(C.RC_PROTOCOL_ERROR, `${packet.cmd.toUpperCase()} without a topic filter`);
      return;
    }
    if (type === C.SUBSCRIBE && packet.cmd === 'subscribe') {
      const asked = v5 ? packet.properties?.subscriptionIdentifier as number | undefined : undefined;
      if (asked === 0) {
        this.protocolClose(C.RC_PROTOCOL_ERROR, 'Subscription Identifier 0'); // 3.8.2.1.2
        return;
      }
      const subId = asked ?? 0;
      if (v5 && packet.subscriptions.some((s) => s.nl && s.topic.startsWith('$share/'))) {
        this.protocolClose(C.RC_PROTOCOL_ERROR, 'No Local on a shared subscription'); // [MQTT-3.8.3-4]
        return;
      }
      const messageId = packet.messageId;
      const acl = this.acl;
      const allowed = acl === null ? packet.subscriptions : packet.subscriptions.filter((s) => acl.canSubscribe(s.topic));
      if (allowed.length < packet.subscriptions.length) this.ctx.denied('subscribe', this);
      const reply = (granted: number[]): void => {
        if (this.session !== session || this.state !== CONNECTED) return;
        // Denied filters get 0x87 (MQTT 5) / 0x80 (3.1.1) in their place.
        let k = 0;
        const all = packet.subscriptions.map((s) => (acl === null || acl.canSubscribe(s.topic) ? granted[k++] : v5 ? C.RC_NOT_AUTHORIZED : 0x80));
        this.send(mqttPacket.generate({ cmd: 'suback', messageId, granted: all }, { protocolVersion }));
      };
      if (allowed.length === 0) reply([]);
      else this.ctx.subs.subscribe(session, v5, subId, allowed, reply);
    } else if (packet.cmd === 'unsubscribe') {
      const codes = packet.unsubscriptions.map((t) => (this.ctx.subs.unsubscribe(session, t) ? 0 : 0x11));
      const granted = v5 ? codes : [];
      this.send(mqttPacket.generate({ cmd: 'unsuback', messageId: packet.messageId, granted } as mqttPacket.IUnsubackPacket, { protocolVersion }));
    }
  }

  /** PUBACK / PUBREC / PUBCOMP for a message we delivered. */
  private onDeliveryAck(type: 'puback' | 'pubrec' | 'pubcomp', buf: Buffer, start: number, end: number): void {
    if (end - start < 2) {
      this.protocolClose(C.RC_MALFORMED, `short ${type.toUpperCase()}`);
      return;
    }
    const id = buf.readUInt16BE(start);
    const reason = this.version === 5 && end - start > 2 ? buf[start + 2] : 0;
    const session = this.session;
    if (session === null) return;
    if (!session.acked(type, id, reason) && type === 'pubrec') {
      // Not a message of ours in flight: release the id anyway so the device can reuse it.
      this.sendAck(C.PUBREL, id, C.RC_PACKET_ID_NOT_FOUND);
      return;
    }
    if (type !== 'pubrec') {
      session.pump(this.ctx.limits, Date.now());
      this.ctx.deliveryRoom();
    }
  }

  /** SessionLink: encodes one delivery into this turn's output. */
  writePublish(out: Outgoing, id: number, dup: boolean, now: number): boolean {
    const m = out.msg;
    const v5 = this.version === 5;
    let propsLen = 0;
    let expiry = -1;
    let alias = 0;
    let topicLen = m.topicLen;
    if (v5) {
      propsLen = m.propsLen;
      if (m.expiresAt !== 0) {
        expiry = Math.max(0, Math.ceil((m.expiresAt - now) / 1000));
        propsLen += 5;
      }
      if (out.subIds !== null) for (const sid of out.subIds) propsLen += 1 + varintSize(sid);
      if (this.aliasMaxOut > 0) {
        this.outAliases ??= new Map();
        alias = this.outAliases.get(m.topic) ?? 0;
        if (alias !== 0) topicLen = 0;
        else if (this.outAliases.size < this.aliasMaxOut) this.outAliases.set(m.topic, alias = this.outAliases.size + 1);
        if (alias !== 0) propsLen += 3;
      }
    }
    const size = publishSize(topicLen, out.qos, propsLen, m.payloadLen, v5);
    if (size > this.maxOutPacket) {
      if (alias !== 0 && topicLen !== 0) this.outAliases!.delete(m.topic);
      return false;
    }
    const buf = this.reserve(size);
    const at = this.outLen;
    let pos = encodePublishHead(buf, at, out.qos, out.retain, id, m.body, m.start, topicLen, v5, propsLen, m.payloadLen);
    if (v5) {
      if (expiry >= 0) {
        buf[pos] = 0x02;
        buf.writeUInt32BE(expiry, pos + 1);
        pos += 5;
      }
      if (out.subIds !== null) {
        for (const sid of out.subIds) {
          buf[pos++] = 0x0b;
          pos = writeVarint(buf, pos, sid);
        }
      }
      if (alias !== 0) {
        buf[pos] = 0x23;
        buf.writeUInt16BE(alias, pos + 1);
        pos += 3;
      }
      pos += copyBytes(m.body, m.propsStart, m.propsStart + m.propsLen, buf, pos);
    }
    pos += copyBytes(m.body, m.payloadStart, m.payloadStart + m.payloadLen, buf, pos);
    if (dup) buf[at] |= 0x08;
    this.outLen = pos;
    return true;
  }

  writePubrel(id: number): void {
    this.sendAck(C.PUBREL, id, 0);
  }

  private onDisconnect(buf: Buffer, start: number, end: number): void {
    const reason = this.version === 5 && end > start ? buf[start] : 0;
    if (this.version === 5 && end - start > 1 && this.session !== null) {
      const props = this.ctx.parse(5, buf.subarray(end - this.framer.size, end));
      // A repeated property (an array as a Session Expiry Interval: a session that never ends)
      // was refused by propertiesFault [MQTT-3.14.2.2].
      const properties = props?.cmd === 'disconnect' ? props.properties : undefined;
      const asked = properties?.sessionExpiryInterval;
      if (asked !== undefined) {
        // A session that was to end with the connection cannot be prolonged now [MQTT-3.14.2-2].
        if (this.session.expiryMs === 0 && asked > 0) {
          this.protocolClose(C.RC_PROTOCOL_ERROR, 'session expiry set at DISCONNECT');
          return;
        }
        this.session.expiryMs = Math.min(asked, this.ctx.config.sessionExpiryMaxS) * 1000;
        this.disconnectExpiryS = this.session.expiryMs / 1000;
        if (this.session.expiryMs > 0) this.session.journal?.meta(this.session);
      }
    }
    this.disconnectReason = reason;
    this.cleanDisconnect = reason !== C.RC_DISCONNECT_WITH_WILL;
    this.flush();
    this.transport.end();
    this.state = CLOSED;
  }

  private sendAck(type: number, id: number, reason: number): void {
    this.quota?.answered(type, id, reason);
    const out = this.reserve(5);
    this.outLen = this.version === 5 ? C.writeAckV5(out, this.outLen, type, id, reason) : C.writeAck(out, this.outLen, type, id);
  }

  send(packet: Buffer): void {
    const out = this.reserve(packet.length);
    this.outLen += packet.copy(out, this.outLen);
  }

  private reserve(n: number): Buffer {
    if (this.out === null || this.outLen + n > this.out.length) {
      const next = Buffer.allocUnsafe(Math.max(256, (this.outLen + n) * 2));
      if (this.out !== null) this.out.copy(next, 0, 0, this.outLen);
      this.out = next;
    }
    if (!this.dirty) {
      this.dirty = true;
      this.ctx.dirty(this);
    }
    return this.out;
  }

  /** Writes everything queued for the device in one socket write. */
  flush(): void {
    this.dirty = false;
    if (this.outLen === 0 || this.out === null) return;
    const chunk = this.out.subarray(0, this.outLen);
    this.out = null;
    this.outLen = 0;
    if (this.traced) this.trace('out', chunk);
    if (this.transport.destroyed) return;
    this.ctx.stats.add('bytesOut', chunk.length);
    if (!this.transport.write(chunk) && !this.writeBlocked) {
      // The device does not read what we send: stop reading it until it does, so its
      // acknowledgements cannot pile up in memory.
      this.writeBlocked = true;
      this.transport.pause();
      this.transport.onceDrain(() => {
        this.writeBlocked = false;
        if (!this.blocked && this.state !== CLOSED) this.transport.resume();
      });
    }
  }

  private trace(dir: 'in' | 'out', bytes: Buffer): void {
    for (const packet of describePackets(bytes, this.version)) {
      this.ctx.log.info({ trace: dir, clientId: this.clientId, username: this.username ?? undefined, conn: this.id, transport: this.transport.kind, packet },
        `device ${dir === 'in' ? '->' : '<-'} proxy`);
    }
  }

  /** Another connection took this client id. */
  takeover(): void {
    this.takenOver = true;
    this.protocolClose(C.RC_SESSION_TAKEN_OVER, 'session taken over');
  }

  /** Ends the connection for a protocol reason: MQTT 5 devices are told why [MQTT-4.13]. */
  protocolClose(reason: number, why: string): void {
    if (this.state === CLOSED) return;
    if (reason >= 0x80 && reason !== C.RC_SESSION_TAKEN_OVER && reason !== C.RC_SERVER_SHUTTING_DOWN) this.ctx.stats.add('protocolErrors');
    this.ctx.log.debug({ conn: this.id, clientId: this.clientId, reason, why }, 'closing device connection');
    // MQTT 5: the reason code, and what went wrong in words when it was the device's doing;
    // never before the CONNACK (still pending while the session comes from another shard)
    // [MQTT-3.14.0-1]: then the connection is just closed.
    if (this.version === 5 && this.state === CONNECTED && this.connack === null) {
      let packet = reason >= 0x80 && reason !== C.RC_SESSION_TAKEN_OVER && reason !== C.RC_SERVER_SHUTTING_DOWN
        ? mqttPacket.generate({ cmd: 'disconnect', reasonCode: reason, properties: { reasonString: why } }, { protocolVersion: 5 })
        : C.disconnectV5(reason);
      // Within the device's Maximum Packet Size: the Reason String goes first [MQTT-3.14.2-3].
      if (packet.length > this.maxOutPacket) packet = C.disconnectV5(reason);
      if (packet.length <= this.maxOutPacket) this.send(packet);
    }
    this.flush();
    this.state = CLOSED;
    this.framer.reset();
    this.transport.end();
    this.finishClose();
  }

  /** Graceful end at shutdown: MQTT 5 devices get "server shutting down". */
  shutdown(): void {
    this.protocolClose(C.RC_SERVER_SHUTTING_DOWN, 'shutting down');
  }

  /** The CONNECT cannot be served now (MQTT 5: 0x88, 3.1.1: 0x03); the device tries again. */
  unavailable(why: string): void {
    if (this.state !== CONNECTED || this.connack === null) return;
    this.ctx.log.warn({ conn: this.id, clientId: this.clientId, why }, 'CONNECT refused: server unavailable');
    this.connack = null;
    this.refuse(this.version, this.version === 5 ? C.RC_SERVER_UNAVAILABLE : C.CONNACK_V4_UNAVAILABLE);
  }

  private refuse(version: number, code: number): void {
    this.send(encodeConnack(version, code));
    this.flush();
    this.state = CLOSED;
    this.transport.end();
    this.finishClose();
  }

  destroy(why: string): void {
    if (this.state !== CLOSED) this.ctx.log.debug({ conn: this.id, why }, 'dropping connection');
    this.state = CLOSED;
    this.framer.reset();
    this.transport.destroy();
    this.finishClose();
  }

  /** Socket closed, for whatever reason. Returns the will to publish, if one is due. */
  closed(): Buffer | null {
    const wasConnected = this.clientId !== '' && this.will !== null;
    this.state = CLOSED;
    this.framer.reset();
    this.pendingBuf = null;
    if (!wasConnected || this.cleanDisconnect) return null;
    // An MQTT 5 session resumed elsewhere before the will delay cancels the will [MQTT-3.1.3.2].
    if (this.takenOver && this.version === 5 && this.willDelayMs > 0) return null;
    return this.will;
  }
}
