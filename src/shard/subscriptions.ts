// The subscriptions of one shard's devices. Each device filter is served by upstream filters at
// the brokers the routes name; the shard counts its holders of each upstream filter and tells
// the broker's writer only when the first one comes or the last one goes (the writer does the
// same across shards), so a broker sees one subscription per distinct filter. A device's
// SUBSCRIBE is answered when the writers have answered for every filter in it.

import type { MessagePort } from 'node:worker_threads';
import { parseShared, validateTopicFilter, withinTopicLimits } from '../protocol/topic';
import { TopicTrie } from '../protocol/subscriptions';
import type { ShardToWriter, SubAck, SubOp, WriterToShard } from '../broker/downlink';
import type { DownlinkRouting } from './routing';
import type { Session } from './session';
import { OwnPublishes } from './no-local';
import type { DeviceUpstreams } from './device-upstreams';


export interface Sub {
  readonly session: Session;
  /** The filter as the device sent it (the session's key for it). */
  readonly key: string;
  /** The filter matched against topics (without a `$share/{group}/` prefix). */
  readonly filter: string;
  readonly group: string | null;
  readonly qos: number;
  readonly noLocal: boolean;
  readonly retainAsPublished: boolean;
  readonly subId: number;
  /** Upstream filters held for it: broker index and filter, and the QoS counted. */
  readonly refs: { broker: number; upstream: string; qos: number }[];
}

export interface SubscriptionRequest {
  topic: string;
  qos: number;
  nl?: boolean;
  rap?: boolean;
  rh?: number;
}

/** The answer to a device SUBSCRIBE: granted QoS or failure code per filter. */
export type SubscribeDone = (codes: number[]) => void;

export interface Held {
  readonly upstream: string;
  /** Shared subscription group, or null. */
  readonly group: string | null;
  /** This shard's id for the hold: the writer tags messages meant for it alone with it. */
  readonly id: number;
  /** The device subscriptions it serves. */
  readonly subs: Set<Sub>;
  /** Holders per requested QoS. */
  readonly counts: [number, number, number];
  /** QoS last asked of the writer, and its answer (-1 until there is one). */
  asked: number;
  granted: number;
  waiters: { qos: number; resolve: (granted: number) => void }[];
}

/** How long a retained-message request stays answerable. */
const REQUEST_TTL_MS = 60_000;

export class ShardSubscriptions {
  /** Every subscription of this shard's sessions, by the filter topics are matched against. */
  readonly trie = new TopicTrie<Sub>();
  private readonly held: Map<string, Held>[];
  private ops: SubOp[][];
  private readonly requests = new Map<number, { sub: Sub; at: number }>();
  private nextReq = 1;
  /** Holds by id (see Held.id). */
  private readonly holds = new Map<number, Held>();
  private nextHold = 1;

  constructor(
    private readonly shard: number,
    private writers: MessagePort[],
    private routing: DownlinkRouting,
    private readonly schedule: () => void,
    private readonly limits: { readonly maxTopicLength: number; readonly maxTopicLevels: number; readonly maxSubscriptions: number } =
    { maxTopicLength: 65535, maxTopicLevels: 65535, maxSubscriptions: Infinity },
    /** Per-device upstream mode: brokers where each device holds its own subscriptions. */
    private readonly device: DeviceUpstreams | null = null,
  ) {
    this.held = writers.map(() => new Map());
    this.ops = writers.map(() => []);
    writers.forEach((p) => p.on('message', (m: WriterToShard) => this.onWriter(m)));
  }

  /** Subscription count (filters held by sessions of this shard). */
  get size(): number {
    return this.trie.size;
  }

  /**
   * Applies one SUBSCRIBE of `session`. `done` receives a code per filter once every writer
   * involved answered (at once when none needs asking). Throws nothing: invalid filters get
   * their failure code (MQTT 3.1.1: 0x80; MQTT 5: 0x8F).
   */
  subscribe(session: Session, v5: boolean, subId: number, requests: SubscriptionRequest[], done: SubscribeDone): void {
    const codes = new Array<number>(requests.length).fill(-1);
    let left = requests.length;
    const settle = (i: number, code: number): void => {
      if (codes[i] !== -1) return;
      codes[i] = code;
      if (--left === 0) done(codes);
    };
    requests.forEach((r, i) => {
      const rc = validateTopicFilter(r.topic, { sharedAllowed: true });
      if (rc !== 0) {
        settle(i, v5 ? rc : 0x80);
        return;
      }
      const shared = parseShared(r.topic);
      const filter = shared === null ? r.topic : shared.filter;
      const bytes = Buffer.from(filter);
      if (!withinTopicLimits(bytes, 0, bytes.length, this.limits.maxTopicLength, this.limits.maxTopicLevels)) {
        settle(i, v5 ? 0x8f : 0x80);
        return;
      }
      const previous = session.subs.get(r.topic);
      if (previous === undefined && session.subs.size >= this.limits.maxSubscriptions) {
        settle(i, v5 ? 0x97 : 0x80); // Quota exceeded (FANOUT_MAX_SUBSCRIPTIONS)
        return;
      }
      const sub: Sub = {
        session, key: r.topic, filter, group: shared === null ? null : shared.group, qos: Math.min(2, Math.max(0, r.qos)),
        noLocal: !!r.nl, retainAsPublished: !!r.rap, subId, refs: [],
      };
      // Retained messages are sent for a new subscription, and for a repeated one unless MQTT 5
      // Retain Handling says otherwise [MQTT-3.8.4-3]; never for shared ones [MQTT-4.8.2-6].
      const rh = r.rh ?? 0;
      const wantsRetained = shared === null && (rh === 0 || (rh === 1 && previous === undefined));
      const req = wantsRetained ? this.request(sub) : 0;
      // Hold the new upstream filters before releasing the old ones, so a repeated SUBSCRIBE
      // never makes the broker forget and re-learn a filter.
      let best = -1;
      let refusal = 0x80;
      let pending = 0;
      let answered = false;
      const answer = (g: number): void => {
        if (g < 0x80 && g > best) best = g;
        else if (g >= 0x80) refusal = g;
        if (--pending === 0 && answered) settle(i, best >= 0 ? best : v5 ? refusal : 0x80);
      };
      for (let b = 0; b < this.writers.length; b++) {
        for (const f of this.routing.inFilters(b, filter)) {
          const q = Math.min(sub.qos, f.qos);
          sub.refs.push({ broker: b, upstream: f.upstream, qos: q });
          pending++;
          if (this.device?.perDevice[b]) this.device.subscribe(b, sub, f.upstream, q, rh, answer);
          else this.hold(b, f.upstream, q, req, answer, sub);
        }
      }
      // Counted before the previous one is dropped, so a repeated No Local SUBSCRIBE keeps the
      // device's remembered publishes.
      if (sub.noLocal && session.noLocalSubs++ === 0) session.own ??= new OwnPublishes();
      if (previous !== undefined) this.drop(previous);
      session.subs.set(r.topic, sub);
      session.journal?.sub(session, r.topic, sub);
      this.trie.add(filter, sub);
      answered = true;
      // No broker serves this filter: granted, but nothing will arrive on it.
      if (sub.refs.length === 0) settle(i, sub.qos);
      else if (pending === 0) settle(i, best >= 0 ? best : v5 ? refusal : 0x80);
    });
    this.schedule();
  }

  /** Removes the session's subscription `key`; false when it had none. */
  unsubscribe(session: Session, key: string): boolean {
    const sub = session.subs.get(key);
    if (sub === undefined) {
      this.device?.unsubscribeUnknown(session, (b) => {
        const shared = parseShared(key);
        const filter = shared === null ? key : shared.filter;
        return this.routing.inFilters(b, filter).map((f) => (shared === null ? f.upstream : `$share/${shared.group}/${f.upstream}`));
      });
      return false;
    }
    session.subs.delete(key);
    session.journal?.sub(session, key, null);
    this.drop(sub);
    this.schedule();
    return true;
  }

  /** Removes every subscription of a session that ends. */
  dropSession(session: Session): void {
    for (const sub of session.subs.values()) this.drop(sub);
    session.subs.clear();
    this.schedule();
  }

  /** The subscription a retained-message record was requested for, if still current. */
  requestOf(req: number): Sub | null {
    const r = this.requests.get(req);
    if (r === undefined || r.sub.session.subs.get(r.sub.key) !== r.sub) return null;
    return r.sub;
  }

  private request(sub: Sub): number {
    const req = this.nextReq;
    this.nextReq = this.nextReq === HOLD_ID_MAX ? 1 : this.nextReq + 1;
    this.requests.set(req, { sub, at: Date.now() });
    return req;
  }

  /** Forgets retained-message requests old enough that nothing more will answer them, and
   *  those of subscriptions that ended (which would keep their sessions in memory). */
  sweep(now: number): void {
    for (const [req, r] of this.requests) {
      if (now - r.at >= REQUEST_TTL_MS || r.sub.session.subs.get(r.sub.key) !== r.sub) this.requests.delete(req);
    }
  }

  private drop(sub: Sub): void {
    this.trie.remove(sub.filter, sub);
    if (sub.noLocal && --sub.session.noLocalSubs === 0) sub.session.own = null;
    for (const ref of sub.refs) {
      if (this.device?.perDevice[ref.broker]) this.device.release(ref.broker, sub, ref.upstream, ref.qos);
      else this.release(ref.broker, ref.upstream, ref.qos, sub);
    }
  }

  /** The hold a record tagged with `id` is for. */
  holdOf(id: number): Held | undefined {
    return this.holds.get(id);
  }

  private hold(b: number, upstream: string, qos: number, req: number, answer: (granted: number) => void, sub: Sub): void {
    const group = sub.group;
    const key = heldKey(upstream, group);
    let h = this.held[b].get(key);
    if (h === undefined) {
      const id = this.nextHold;
      this.nextHold = this.nextHold === HOLD_ID_MAX ? 1 : this.nextHold + 1;
      h = { upstream, group, id, subs: new Set(), counts: [0, 0, 0], asked: -1, granted: -1, waiters: [] };
      this.held[b].set(key, h);
      this.holds.set(id, h);
    }
    h.subs.add(sub);
    h.counts[qos]++;
    const want = maxQos(h);
    if (req === 0 && h.granted >= 0 && h.asked >= want) {
      answer(Math.min(qos, h.granted));
      return;
    }
    h.waiters.push({ qos, resolve: answer });
    if (want > h.asked || req !== 0 || h.asked < 0) {
      h.asked = Math.max(h.asked, want);
      this.ops[b].push(this.op(h, h.asked, req));
    }
  }

  private op(h: Held, qos: number, req: number): SubOp {
    return h.group === null ? { filter: h.upstream, qos, req, hold: h.id } : { filter: h.upstream, qos, req: 0, group: h.group, hold: h.id };
  }

  private release(b: number, upstream: string, qos: number, sub: Sub): void {
    const key = heldKey(upstream, sub.group);
    const h = this.held[b].get(key);
    if (h === undefined) return;
    h.counts[qos]--;
    h.subs.delete(sub);
    if (maxQos(h) >= 0) return;
    this.held[b].delete(key);
    this.holds.delete(h.id);
    for (const w of h.waiters) w.resolve(0x80);
    this.ops[b].push(this.op(h, -1, 0));
  }

  private onWriter(m: WriterToShard): void {
    if (m.t !== 'subacks') return;
    for (const ack of m.acks) this.onAck(m.broker, ack);
    // The SUBACKs just written go out with the shard's next turn.
    this.schedule();
  }

  private onAck(b: number, ack: SubAck): void {
    const h = this.held[b].get(heldKey(ack.filter, ack.group ?? null));
    if (h === undefined) return;
    if (ack.granted < 0x80) h.granted = ack.granted;
    // Refused: the next holder asks again rather than waiting on an answer that is not coming.
    else if (h.granted < 0) h.asked = -1;
    const keep: Held['waiters'] = [];
    for (const w of h.waiters) {
      if (w.qos <= ack.qos) w.resolve(ack.granted < 0x80 ? Math.min(w.qos, ack.granted) : ack.granted);
      else keep.push(w);
    }
    h.waiters = keep;
  }

  /**
   * Writer `b` was restarted: the new one knows no filters. Its channel replaces the old one,
   * and every filter held at that broker is registered again, without asking for retained
   * messages (the devices had them; a resumed subscription is not a new one).
   */
  replaceWriter(b: number, port: MessagePort): void {
    this.writers = this.writers.map((w, i) => (i === b ? port : w));
    port.on('message', (m: WriterToShard) => this.onWriter(m));
    this.ops[b] = [];
    for (const h of this.held[b].values()) {
      if (h.asked < 0) h.asked = maxQos(h);
      this.ops[b].push(this.op(h, h.asked, 0));
    }
    this.schedule();
  }

  /**
   * A reload added broker slot `b` (its writer's channel is `port`) and `routing` includes it:
   * every subscription of `subs` that the routes give it is held there too, without asking for
   * retained messages (the devices' subscriptions are not new).
   */
  addWriter(b: number, port: MessagePort, routing: DownlinkRouting, subs: Iterable<Sub>): void {
    this.routing = routing;
    this.writers = [...this.writers, port];
    this.held[b] = new Map();
    this.ops[b] = [];
    port.on('message', (m: WriterToShard) => this.onWriter(m));
    const answered = (): void => {};
    for (const sub of subs) {
      for (const f of routing.inFilters(b, sub.filter)) {
        const q = Math.min(sub.qos, f.qos);
        sub.refs.push({ broker: b, upstream: f.upstream, qos: q });
        this.hold(b, f.upstream, q, 0, answered, sub);
      }
    }
    this.schedule();
  }

  /**
   * A reload removed broker slot `b`: no subscription is held there any more (its writer is
   * draining and then ends); a device SUBSCRIBE still waiting on it is answered by the others.
   */
  retireWriter(b: number, routing: DownlinkRouting, subs: Iterable<Sub>): void {
    this.routing = routing;
    for (const sub of subs) {
      for (let i = sub.refs.length - 1; i >= 0; i--) if (sub.refs[i].broker === b) sub.refs.splice(i, 1);
    }
    for (const h of this.held[b].values()) {
      this.holds.delete(h.id);
      for (const w of h.waiters) w.resolve(0x80);
    }
    this.held[b].clear();
    this.ops[b] = [];
  }

  /** Sends this turn's changes to the writers, one message per writer. */
  flush(): void {
    for (let b = 0; b < this.ops.length; b++) {
      if (this.ops[b].length === 0) continue;
      const m: ShardToWriter = { t: 'subs', shard: this.shard, ops: this.ops[b] };
      this.ops[b] = [];
      this.writers[b].postMessage(m);
    }
  }
}

/** Hold ids and retained-request ids share the record's request field with two flag bits. */
const HOLD_ID_MAX = 0x3fffffff;

function heldKey(upstream: string, group: string | null): string {
  return group === null ? upstream : `${group}\u0000${upstream}`;
}

function maxQos(h: Held): number {
  return h.counts[2] > 0 ? 2 : h.counts[1] > 0 ? 1 : h.counts[0] > 0 ? 0 : -1;
}
