// Writes device publishes into the shard's rings, one ring per broker, and rings each writer's
// doorbell once per batch rather than once per message.

import { Doorbell } from '../ring/doorbell';
import { RingProducer } from '../ring/spsc';
import { FLAG_RETAIN, FLAG_TRACE, FLAG_V5, NO_TOKEN, REC_DEVICE_CLOSE, REC_PUBLISH, UPLINK_HEADER } from '../ring/records';
import { copyBytes } from '../protocol/bytes';
import type { RouteTable } from '../config/routes';

export interface UplinkMessage {
  qos: number;
  retain: boolean;
  v5: boolean;
  /** The device is traced (FANOUT_TRACE_CLIENTS): the writer logs what it sends for it. */
  trace: boolean;
  token: number;
  deviceKey: number;
  /** A last will: not for brokers where the device has a session of its own (they publish it). */
  will?: boolean;
  topic: Buffer;
  topicStart: number;
  topicLen: number;
  /** Property bytes, in up to two ranges of `src` (a Topic Alias cut out between them). */
  src: Buffer;
  propsA: number;
  propsAEnd: number;
  propsB: number;
  propsBEnd: number;
  payloadStart: number;
  payloadEnd: number;
}

/** Broker slots a shard can have over its life: the in-flight table keeps one bit per slot. */
export const MAX_BROKER_SLOTS = 31;

export class Uplink {
  private readonly dirty: boolean[];
  // The plan of the message in hand (see fits()): which rings get it, under which topic (null:
  // the device's) and with which QoS cap. Sized for every slot a reload may add.
  private readonly targets = new Uint8Array(MAX_BROKER_SLOTS);
  private readonly topics: (Buffer | null)[];
  private readonly caps = new Uint8Array(MAX_BROKER_SLOTS).fill(2);
  /** Brokers the message in hand goes to, after fits(): their number and their bit mask. */
  planned = 0;
  plannedMask = 0;
  /** The slots in service (a slot a reload removed is not written to again). */
  private liveMask: number;

  constructor(private readonly rings: RingProducer[], private readonly doorbells: Doorbell[], private routes: RouteTable | null = null,
    /** Per broker: per-device upstream mode (wills are the broker's business there). */
    private readonly perDevice: readonly boolean[] = [], liveMask = rings.length >= 31 ? 0x7fffffff : (1 << rings.length) - 1) {
    this.dirty = rings.map(() => false);
    this.topics = rings.map(() => null);
    this.liveMask = liveMask;
    this.planAll();
  }

  /** The slots in service, as a bit mask. */
  get live(): number {
    return this.liveMask;
  }

  /** A reload changed the broker set: `ring` (when given) is a new slot's, appended; `live` the
   *  slots in service from the next message on, routed by `routes`. */
  reconfigure(routes: RouteTable | null, live: number, added: { ring: RingProducer; doorbell: Doorbell }[]): void {
    for (const a of added) {
      this.rings.push(a.ring);
      this.doorbells.push(a.doorbell);
      this.dirty.push(false);
      this.topics.push(null);
    }
    this.routes = routes;
    this.liveMask = live;
    this.planAll();
  }

  static recordSize(m: UplinkMessage): number {
    return UPLINK_HEADER + m.topicLen + (m.propsAEnd - m.propsA) + (m.propsBEnd - m.propsB) + (m.payloadEnd - m.payloadStart);
  }

  /** Decides which brokers get `m` (FANOUT_ROUTES); without routes, all of them as they are. */
  private plan(m: UplinkMessage): void {
    const routes = this.routes;
    if (m.will === true && this.perDevice.includes(true)) {
      this.planWill(m);
      return;
    }
    if (routes === null) {
      if (this.plannedMask !== this.liveMask) this.planAll();
      return;
    }
    const topic = m.topic.toString('utf8', m.topicStart, m.topicStart + m.topicLen);
    let n = 0;
    let mask = 0;
    for (let b = 0; b < this.rings.length; b++) {
      const o = (this.liveMask & (1 << b)) === 0 ? null : routes.outMatch(b, topic);
      if (o === null) {
        this.targets[b] = 0;
        continue;
      }
      this.targets[b] = 1;
      mask |= 1 << b;
      this.topics[b] = o.topic === topic ? null : Buffer.from(o.topic);
      this.caps[b] = o.qos;
      n++;
    }
    this.planned = n;
    this.plannedMask = mask;
  }

  /** Every broker, the topic as it is (no routes), after a will's plan changed that. */
  private planAll(): void {
    let n = 0;
    for (let b = 0; b < this.rings.length; b++) {
      const live = (this.liveMask & (1 << b)) !== 0;
      this.targets[b] = live ? 1 : 0;
      if (live) n++;
    }
    this.topics.fill(null);
    this.caps.fill(2);
    this.planned = n;
    this.plannedMask = this.liveMask;
  }

  /** A will goes where the routes send its topic, except to per-device brokers. */
  private planWill(m: UplinkMessage): void {
    const topic = this.routes === null ? null : m.topic.toString('utf8', m.topicStart, m.topicStart + m.topicLen);
    let n = 0;
    let mask = 0;
    for (let b = 0; b < this.rings.length; b++) {
      const o = this.perDevice[b] || (this.liveMask & (1 << b)) === 0 ? null : topic === null ? undefined : this.routes!.outMatch(b, topic);
      if (o === null) {
        this.targets[b] = 0;
        continue;
      }
      this.targets[b] = 1;
      mask |= 1 << b;
      this.topics[b] = o === undefined || o.topic === topic ? null : Buffer.from(o.topic);
      this.caps[b] = o === undefined ? 2 : o.qos;
      n++;
    }
    this.planned = n;
    this.plannedMask = mask;
  }

  /** The device `key` left (per-device mode): its session at broker `b` ends after the records
   *  before this one. False when the ring is full (the caller retries). */
  writeDeviceClose(b: number, key: number, how: number, reason: number, expiry: number): boolean {
    const ring = this.rings[b];
    const at = ring.reserve(UPLINK_HEADER);
    if (at < 0) return false;
    const buf = ring.buffer;
    const view = ring.dataView;
    buf[at] = REC_DEVICE_CLOSE;
    buf[at + 1] = how;
    buf[at + 2] = reason;
    buf[at + 3] = expiry >= 0 ? 1 : 0;
    view.setUint32(at + 4, expiry >= 0 ? expiry : 0, true);
    view.setUint32(at + 8, NO_TOKEN, true);
    view.setUint32(at + 12, key, true);
    this.dirty[b] = true;
    return true;
  }

  /** True when every ring `m` goes to can take it now; otherwise the full rings are flagged so
   *  their writers wake this shard when they drain. Plans the message for write(). */
  fits(m: UplinkMessage): boolean {
    this.plan(m);
    const len = Uplink.recordSize(m);
    let ok = true;
    for (let i = 0; i < this.rings.length; i++) {
      if (this.targets[i] === 0) continue;
      const t = this.topics[i];
      if (!this.rings[i].canFit(t === null ? len : len - m.topicLen + t.length)) ok = false;
    }
    return ok;
  }

  /** Appends `m` to every ring of its plan. Call fits() first: this never fails. */
  write(m: UplinkMessage): void {
    const propsLen = (m.propsAEnd - m.propsA) + (m.propsBEnd - m.propsB);
    for (let i = 0; i < this.rings.length; i++) {
      if (this.targets[i] === 0) continue;
      const ring = this.rings[i];
      const t = this.topics[i];
      const topic = t ?? m.topic;
      const topicStart = t === null ? m.topicStart : 0;
      const topicLen = t === null ? m.topicLen : t.length;
      const qos = m.qos < this.caps[i] ? m.qos : this.caps[i];
      const flags = qos | (m.retain ? FLAG_RETAIN : 0) | (m.v5 ? FLAG_V5 : 0) | (m.trace ? FLAG_TRACE : 0);
      let at = ring.reserve(UPLINK_HEADER + topicLen + propsLen + (m.payloadEnd - m.payloadStart));
      if (at < 0) throw new Error('ring reserve failed after fits()');
      const buf = ring.buffer;
      const view = ring.dataView;
      buf[at] = REC_PUBLISH;
      buf[at + 1] = flags;
      view.setUint16(at + 2, topicLen, true);
      view.setUint32(at + 4, propsLen, true);
      view.setUint32(at + 8, m.token, true);
      view.setUint32(at + 12, m.deviceKey, true);
      at += UPLINK_HEADER;
      at += copyBytes(topic, topicStart, topicStart + topicLen, buf, at);
      if (m.propsAEnd > m.propsA) at += copyBytes(m.src, m.propsA, m.propsAEnd, buf, at);
      if (m.propsBEnd > m.propsB) at += copyBytes(m.src, m.propsB, m.propsBEnd, buf, at);
      copyBytes(m.src, m.payloadStart, m.payloadEnd, buf, at);
      this.dirty[i] = true;
    }
  }

  /** Makes everything written visible and wakes the writers. */
  commit(): void {
    for (let i = 0; i < this.rings.length; i++) {
      if (!this.dirty[i]) continue;
      this.dirty[i] = false;
      if (this.rings[i].commit()) this.doorbells[i].ring();
    }
  }

  /** Bytes waiting in each ring, for metrics and shutdown. */
  fill(): number[] {
    return this.rings.map((r) => r.used());
  }
}
