// Reads what the writers put in this shard's downlink rings and hands each message to the
// sessions whose subscriptions match: one copy per session at the highest QoS of its matching
// subscriptions, the QoS capped by the message's [MQTT-3.8.4-8]; members of a shared
// subscription group take turns.

import { Doorbell } from '../ring/doorbell';
import { RingConsumer } from '../ring/spsc';
import { DEVICE_DOWNLINK_HEADER, DOWNLINK_HEADER, NO_EXPIRY, REC_DELIVER_DEVICE } from '../ring/records';
import { matchTopic } from '../protocol/topic';
import { StoredMessage, type Outgoing, type Session, type SessionLimits } from './session';
import type { ShardSubscriptions, Sub } from './subscriptions';
import { HOLD_REQ, SHARED_REQ } from '../broker/downlink';
import { fingerprint } from './no-local';
import type { DeviceUpstreams } from './device-upstreams';

const HOLD_ID_MASK = 0x3fffffff;
/** Longest a full queue of a connected device holds the shard's downlink; after that, that
 *  session's queue overflows (FANOUT_QUEUE_OVERFLOW's drop rule) until it has drained to half. */
const BLOCK_MAX_MS = 10_000;
/** A device with a full queue that acknowledged nothing for this long is not slow but stuck:
 *  it does not hold the downlink at all. */
const QUIET_MS = 2000;

export class ShardDownlink {
  private readonly scratch = new StoredMessage(Buffer.alloc(0), 0, 0, 0, 0, '', 0);
  private stamp = 0;
  private readonly matched: Session[] = [];
  private readonly members: Sub[] = [];
  private readonly plan: { session: Session; q: number; r: boolean; subIds: number[] | null }[] = [];
  /** When the head record started waiting for a full queue (0: not waiting). */
  private blockedSince = 0;

  /** Drops what the rings hold unread (a restarted shard: those deliveries were for sessions
   *  that died with its predecessor). */
  skipAll(): void {
    for (const r of this.rings) r.skipAll();
  }

  /** A record waits for a session queue to have room. */
  get stalled(): boolean {
    return this.blockedSince !== 0;
  }
  private readonly turns = new Map<number, number>();
  delivered = 0;
  unmatched = 0;

  constructor(
    private readonly rings: RingConsumer[],
    private readonly writerBells: Doorbell[],
    private readonly subs: ShardSubscriptions,
    private readonly limits: SessionLimits,
    /** Per-device upstream mode: records addressed to one device. */
    private readonly devices: DeviceUpstreams | null = null,
  ) {}

  /** A reload added a broker slot: its downlink ring. */
  addRing(ring: RingConsumer): void {
    this.rings.push(ring);
  }

  hasData(): boolean {
    for (const r of this.rings) if (r.hasData()) return true;
    return false;
  }

  /** Delivers every record waiting; returns how many there were. */
  drain(now: number): number {
    let total = 0;
    for (let b = 0; b < this.rings.length; b++) {
      const ring = this.rings[b];
      let n = 0;
      let at: number;
      while ((at = ring.next()) >= 0) {
        if (!this.onRecord(b, ring, at, now)) {
          // A connected device's queue is full (FANOUT_QUEUE_OVERFLOW=block): the record stays,
          // the ring fills and the writer stops taking from the broker.
          ring.unreadLast();
          break;
        }
        total++;
        if (++n === 1024) {
          if (ring.release()) this.writerBells[b].ring();
          n = 0;
        }
      }
      if (ring.release()) this.writerBells[b].ring();
    }
    return total;
  }

  /** Delivers one record; false (nothing done) when it must wait for a full queue. */
  private onRecord(b: number, ring: RingConsumer, at: number, now: number): boolean {
    const buf = ring.buffer;
    const view = ring.dataView;
    const device = buf[at] === REC_DELIVER_DEVICE;
    const header = device ? DEVICE_DOWNLINK_HEADER : DOWNLINK_HEADER;
    const flags = buf[at + 1];
    const qos = flags & 3;
    const retain = (flags & 4) !== 0;
    const topicLen = view.getUint16(at + 2, true);
    const propsLen = view.getUint32(at + 4, true);
    const req = view.getUint32(at + 8, true);
    const expiry = view.getUint32(at + 12, true);
    // A device's own session gets its messages once: no origin to tell copies apart by.
    const origin = device ? 0 : b * 4294967296 + view.getUint32(at + 16, true);
    const start = at + header;
    const m = this.scratch;
    m.body = buf;
    m.start = start;
    m.topicLen = topicLen;
    m.propsLen = propsLen;
    m.payloadLen = ring.lastLength - header - topicLen - propsLen;
    m.topic = buf.toString('utf8', start, start + topicLen);
    m.expiresAt = expiry === NO_EXPIRY ? 0 : now + expiry * 1000;
    let kept: StoredMessage | null = null;
    let fp = -1;
    const fpOf = (): number => {
      if (fp < 0) fp = fingerprint(buf, start, start + topicLen, buf, m.payloadStart, m.payloadStart + m.payloadLen);
      return fp;
    };
    const plan = this.plan;
    plan.length = 0;
    const hand = (session: Session, q: number, r: boolean, subIds: number[] | null): void => {
      plan.push({ session, q, r, subIds });
    };
    if (!device) this.collect(m, qos, retain, req, fpOf, hand);
    else if (!this.devices?.collect(b, req, view.getUint32(at + 20, true), m, qos, retain, fpOf, hand)) this.unmatched++;
    if (this.limits.block && plan.length > 0 && this.mustWait(now)) return false;
    this.blockedSince = 0;
    for (const d of plan) {
      // Read access is checked at delivery too, as mosquitto does (FANOUT_ACL_FILE).
      if (d.session.acl !== null && !d.session.acl.canReceive(m.topic)) continue;
      // QoS 0 is written out at once; a QoS 1/2 delivery may wait, so it gets its own copy.
      const msg = d.q === 0 ? m : (kept ??= m.keep());
      const out: Outgoing = { msg, qos: d.q, retain: d.r, subIds: d.subIds, stage: 0, origin };
      d.session.deliver(out, this.limits, now);
      this.delivered++;
    }
    return true;
  }

  /**
   * FANOUT_QUEUE_OVERFLOW=block: whether the planned deliveries wait for a connected device's
   * full queue. Only a device that is slow, not one that stopped: one that acknowledged nothing
   * for QUIET_MS, or held the downlink for BLOCK_MAX_MS, overflows instead, so that it cannot
   * hold every other device (and the brokers' acknowledgements behind them) back.
   */
  private mustWait(now: number): boolean {
    const max = this.limits.maxQueued;
    let wait = false;
    for (const d of this.plan) {
      const s = d.session;
      if (d.q === 0 || s.link === null) continue;
      if (s.overflowing && s.queued <= max / 2) s.overflowing = false;
      if (s.queued < max || s.overflowing) continue;
      if (now - s.lastAck >= QUIET_MS) s.overflowing = true;
      else wait = true;
    }
    if (!wait) return false;
    if (this.blockedSince === 0) this.blockedSince = now;
    if (now - this.blockedSince >= 1000 && this.limits.holding !== undefined) {
      for (const d of this.plan) if (d.q > 0 && d.session.link !== null && d.session.queued >= max && !d.session.overflowing) this.limits.holding(d.session, now - this.blockedSince);
    }
    if (now - this.blockedSince < BLOCK_MAX_MS) return true;
    for (const d of this.plan) if (d.q > 0 && d.session.queued >= max) d.session.overflowing = true;
    return false;
  }

  private collect(m: StoredMessage, qos: number, retain: boolean, req: number, fpOf: () => number,
    hand: (session: Session, q: number, r: boolean, subIds: number[] | null) => void): void {

    if ((req & SHARED_REQ) !== 0) {
      // This shard's turn for a shared group: one of its members here gets the message.
      const held = this.subs.holdOf(req & HOLD_ID_MASK);
      if (held === undefined) return;
      const members = this.members;
      members.length = 0;
      for (const sub of held.subs) if (matchTopic(sub.filter, m.topic)) members.push(sub);
      if (members.length === 0) {
        this.unmatched++;
        return;
      }
      const sub = this.pickMember(held.id, members);
      hand(sub.session, Math.min(qos, sub.qos), false, sub.subId > 0 ? [sub.subId] : null);
      return;
    }
    if ((req & HOLD_REQ) !== 0) {
      // A copy for one upstream subscription: the device subscriptions it serves get it.
      const held = this.subs.holdOf(req & HOLD_ID_MASK);
      if (held === undefined) return;
      this.deliverMatching(held.subs, m, qos, retain, fpOf, hand);
      return;
    }
    if (req !== 0) {
      // A retained message answering one subscription's request, and only that one.
      const sub = this.subs.requestOf(req);
      if (sub !== null && matchTopic(sub.filter, m.topic)) {
        hand(sub.session, Math.min(qos, sub.qos), true, sub.subId > 0 ? [sub.subId] : null);
      }
      return;
    }
    this.deliverMatching(null, m, qos, retain, fpOf, hand);
  }

  /**
   * One copy per session among `subs` (null: every subscription of the shard) whose filter
   * matches, at the highest QoS of its matching subscriptions, with all their identifiers
   * [MQTT-3.3.4-2, MQTT-3.3.4-3]; No Local subscriptions skip the device's own publishes.
   */
  private deliverMatching(subs: Set<Sub> | null, m: StoredMessage, qos: number, retain: boolean, fpOf: () => number,
    hand: (session: Session, q: number, r: boolean, subIds: number[] | null) => void): void {
    const stamp = ++this.stamp;
    const matched = this.matched;
    matched.length = 0;
    const visit = (sub: Sub): void => {
      if (sub.group !== null) return; // shared groups get their own records
      const s = sub.session;
      if (sub.noLocal && s.own !== null) {
        if (s.ownMark !== stamp) {
          s.ownMark = stamp;
          s.ownSkip = s.own.take(fpOf());
        }
        if (s.ownSkip) return;
      }
      const q = Math.min(qos, sub.qos);
      if (s.mark !== stamp) {
        s.mark = stamp;
        s.dQos = q;
        s.dRetain = false;
        s.dSubIds = [];
        matched.push(s);
      } else if (q > s.dQos) {
        s.dQos = q;
      }
      // A live message keeps its retain flag only for Retain As Published [MQTT-3.3.1-12/13].
      if (retain && sub.retainAsPublished) s.dRetain = true;
      if (sub.subId > 0) s.dSubIds.push(sub.subId);
    };
    if (subs === null) this.subs.trie.match(m.topic, visit);
    else for (const sub of subs) if (matchTopic(sub.filter, m.topic)) visit(sub);
    for (const s of matched) hand(s, s.dQos, s.dRetain, s.dSubIds.length > 0 ? s.dSubIds : null);
    if (matched.length === 0) this.unmatched++;
  }

  /** Round robin over the group's members, preferring connected ones. */
  private pickMember(key: number, members: Sub[]): Sub {
    const turn = (this.turns.get(key) ?? 0) + 1;
    this.turns.set(key, turn);
    for (let i = 0; i < members.length; i++) {
      const sub = members[(turn + i) % members.length];
      if (sub.session.link !== null) return sub;
    }
    return members[turn % members.length];
  }
}
