// The broker -> devices direction of one writer. Shards tell the writer which upstream filters
// their devices hold; the writer keeps one upstream subscription per distinct filter, whatever
// the number of shards and devices behind it, and writes every message the broker sends into
// the downlink ring of each shard that holds a matching filter. The broker is acknowledged once
// the message is in the rings; a full ring stops reading the broker's socket (backpressure).
//
// Retained messages: a subscription already held upstream is subscribed again when a device
// joins it, which makes the broker send the retained messages again [MQTT-3.8.4-3]. They arrive
// with the retain flag set (live messages never do: RAP is off upstream [MQTT-3.3.1-9,
// MQTT-3.3.1-12]) and go only to the devices of that round ("generation") of the subscription,
// so devices that already held the filter do not receive them twice. MQTT 5 brokers tell the
// generation exactly (a Subscription Identifier per generation); with MQTT 3.1.1 the latest
// acknowledged generation of the filter is taken.
//
// MQTT 5 brokers with a pool of two or more connections get a better split, which also serves
// Retain As Published: the first connection holds the live subscriptions with Retain As
// Published set and Retain Handling 2 (no retained messages on subscribe), so the retain flag of
// everything it receives is the publisher's; retained messages for a device that subscribes are
// fetched on the second connection by a short-lived subscription of their own (retain flag set
// there means "retained", nothing else), then unsubscribed.
//
// Covered filters: a filter that another filter held at the broker covers (`#` covers `a/b`,
// `a/+` covers `a/b`), at a QoS granted as high, needs no subscription of its own: the broker
// would only send one more copy of every message both match (mosquitto sends a copy per matching
// subscription), and that is work for the broker and the proxy. Such a filter is "covered":
// messages the broker sends for its cover reach its holders too. A new filter is covered from
// the start when a cover is there (and it needs no retained messages from this connection); a
// subscribed one, once its retained messages came, hands over: UNSUBSCRIBE, and from its
// UNSUBACK the cover's copies serve it. When a cover goes, what it covered is subscribed again
// (or moves to another cover) before the cover's UNSUBSCRIBE, so no message finds nobody. On a
// connection, every message the broker sends after a SUBACK (before an UNSUBACK) comes after it,
// so each filter is served by exactly one subscription at a time: its own while `live`, its
// cover's otherwise. An MQTT 3.1.1 broker names no subscription: messages go by topic to every
// shard holding a matching filter, covered or not.

import type { MessagePort } from 'node:worker_threads';
import * as mqttPacket from 'mqtt-packet';
import { RingProducer } from '../ring/spsc';
import { DOWNLINK_HEADER, NO_EXPIRY, REC_DELIVER } from '../ring/records';
import { TopicTrie } from '../protocol/subscriptions';
import { forwardProperties, type ForwardScan } from '../protocol/properties';
import { readVarint, varintEnd } from '../protocol/framer';
import { copyBytes } from '../protocol/bytes';
import type { DownlinkRouting } from '../shard/routing';

/** A shard's change to the upstream filters it holds. qos -1 releases the filter. */
export interface SubOp {
  filter: string;
  qos: number;
  /** Non-zero: the shard wants this filter's retained messages, tagged with this request id. */
  req: number;
  /** A shared subscription group (`$share/{group}/...` at the devices): each message goes to
   *  one shard of the group. */
  group?: string;
  /** The shard's id for this hold: records meant for it alone carry it (SHARED_REQ, HOLD_REQ). */
  hold: number;
}
export interface SubAck {
  filter: string;
  group?: string;
  /** The QoS the shard asked for when this answer was produced. */
  qos: number;
  /** Granted QoS, or a failure reason code (>= 0x80). */
  granted: number;
}
export type ShardToWriter = { t: 'subs'; shard: number; ops: SubOp[] };
export type WriterToShard = { t: 'subacks'; broker: number; acks: SubAck[] };

/** How the downlink reaches the connection that holds the subscriptions. */
export interface SubscriptionLink {
  /** True when the connection is up and can take a SUBSCRIBE now. */
  readonly subscribable: boolean;
  readonly v5: boolean;
  /** Sends a SUBSCRIBE / UNSUBSCRIBE built around the packet id it allocates; returns the id. */
  sendControl(build: (id: number) => Buffer): number;
}

interface Recipient {
  shard: number;
  req: number;
}

/** The shards holding an upstream filter plainly ('' key) or for one shared group. */
class Holds {
  /** QoS each shard wants, -1 where it holds nothing. */
  readonly want: Int8Array;
  /** Each shard's id for this hold. */
  readonly ids: Int32Array;
  holders = 0;
  /** Round robin position among the holding shards (shared holds only). */
  turn = 0;

  constructor(shards: number) {
    this.want = new Int8Array(shards).fill(-1);
    this.ids = new Int32Array(shards);
  }

  /** The next holding shard, in turn. */
  next(): number {
    const n = this.want.length;
    for (let i = 0; i < n; i++) {
      const s = (this.turn + i) % n;
      if (this.want[s] >= 0) {
        this.turn = s + 1;
        return s;
      }
    }
    return -1;
  }
}

class Upstream {
  /** Plain holders under '', shared groups under their name. */
  readonly holds = new Map<string, Holds>();
  holders = 0;
  /** QoS of the last SUBSCRIBE sent, and what the broker granted (-1: not yet). */
  sentQos = -1;
  granted = -1;
  /** Generation of the SUBSCRIBE in flight (0: none) and of the latest acknowledged one. */
  inflightGen = 0;
  ackedGen = 0;
  /** Another SUBSCRIBE is due once the one in flight is answered. */
  again = false;
  /** Recipients of retained messages: for the next SUBSCRIBE, and per generation sent. */
  waiting: Recipient[] = [];
  readonly gens = new Map<number, Recipient[]>();
  /** Generations still mapped in byGen, oldest first. */
  readonly genList: number[] = [];

  /** The broader filter whose copies serve this one while it is not `live` (see above). */
  cover: Upstream | null = null;
  /** The filters this one covers: listed, and by filter for matching a message's topic. */
  readonly covered = new Set<Upstream>();
  coveredTrie: TopicTrie<Upstream> | null = null;
  /** The broker sends copies for this filter's own subscription: from a granting SUBACK until
   *  the UNSUBACK that hands it to its cover (or a connection without the session). */
  live = false;
  /** Packet id of the UNSUBSCRIBE handing this filter to its cover (0: none in flight). */
  unsubId = 0;
  /** Released by every holder, but still subscribed for the filters it covers until they have
   *  their own subscriptions (or another cover). */
  retiring = false;
  /** Until it hands over to a cover: a quiet moment after its SUBACK and retained messages. */
  quiet: NodeJS.Timeout | null = null;

  constructor(readonly filter: string, private readonly shards: number) {}

  hold(group: string): Holds {
    let h = this.holds.get(group);
    if (h === undefined) {
      h = new Holds(this.shards);
      this.holds.set(group, h);
    }
    return h;
  }

  maxWant(): number {
    let q = -1;
    for (const h of this.holds.values()) for (const w of h.want) if (w > q) q = w;
    return q;
  }
}

/** Generations kept for late retained messages (QoS 1/2 ones can lag behind the SUBACK). */
const KEEP_GENERATIONS = 4;
/** Longest a retained-message fetch subscription lives (split mode). */
const FETCH_LINGER_MS = 5000;
/** A fetch subscription ends this long after its SUBACK or its last retained message: the
 *  broker sends the retained messages right after the SUBACK, and until the UNSUBSCRIBE the
 *  subscription also receives live traffic (one more copy of every matching message). */
const FETCH_QUIET_MS = 500;
/** Retained-message fetches sent and not answered yet, at most (split mode). */
const MAX_FETCHES_IN_FLIGHT = 32;
const MAX_SUB_ID = 268435455;
/** Request ids with this bit name a shared group's hold (the shard's id for it): its turn. */
export const SHARED_REQ = 0x80000000;
/** Request ids with this bit name one plain hold of the shard: a copy the broker sent for that
 *  upstream subscription only (MQTT 5 brokers send one copy per matching subscription). */
export const HOLD_REQ = 0x40000000;

export class WriterDownlink {
  private readonly subs = new Map<string, Upstream>();
  /** Released filters still subscribed for what they cover, by filter. */
  private readonly retiring = new Map<string, Upstream>();
  /** Hand-over UNSUBSCRIBEs in flight, by packet id. */
  private readonly byUnsub = new Map<number, Upstream>();
  private readonly trie = new TopicTrie<Upstream>();
  private readonly byPacket = new Map<number, Upstream[]>();
  private readonly byGen = new Map<number, Upstream>();
  private readonly rings: RingProducer[];
  private readonly dirty: boolean[];
  private readonly toSubscribe = new Set<Upstream>();
  private readonly toUnsubscribe = new Set<string>();
  private nextGen = 1;
  private seq = 0;
  private readonly locals: string[] = [];
  private readonly out: Recipient[] = [];
  private readonly need: Float64Array;
  private readonly entriesSeen = new Set<Upstream>();
  private readonly targets: Int32Array;
  private readonly scan: ForwardScan = { expiry: -1, subIds: [] };
  private propsScratch = Buffer.alloc(1024);
  /** Messages passed to the shards, by the QoS the broker sent them with. */
  readonly deliveredByQos = [0, 0, 0];
  dropped = 0;
  tooLarge = 0;

  get delivered(): number {
    return this.deliveredByQos[0] + this.deliveredByQos[1] + this.deliveredByQos[2];
  }

  /** Retained messages come from short-lived subscriptions on `fetchLink` (see above). */
  readonly split: boolean;
  private readonly fetchWaiting = new Map<string, Recipient[]>();
  private readonly fetches = new Map<number, { filter: string; recipients: Recipient[]; acked: boolean }>();
  private readonly fetchByPacket = new Map<number, number[]>();
  /** The fetch of each filter still waiting for its SUBACK (its generation). */
  private readonly fetchPending = new Map<string, number>();
  /** Per fetched filter: its unsubscribe at the latest (FETCH_LINGER_MS) and once it is quiet. */
  private readonly fetchTimers = new Map<string, { cap: NodeJS.Timeout; quiet: NodeJS.Timeout | null }>();

  constructor(
    private readonly broker: number,
    private readonly ports: MessagePort[],
    rings: RingProducer[],
    private readonly routing: DownlinkRouting,
    private readonly link: () => SubscriptionLink,
    private readonly onChange: () => void,
    private readonly fetchLink: (() => SubscriptionLink) | null = null,
    /** Serve filters that another held filter covers through it (see "Covered filters"). */
    private readonly coverFilters = true,
  ) {
    this.split = fetchLink !== null && link().v5 && fetchLink().v5;
    this.rings = rings;
    this.dirty = rings.map(() => false);
    this.targets = new Int32Array(rings.length);
    this.need = new Float64Array(rings.length);
    ports.forEach((p) => p.on('message', (m: ShardToWriter) => this.onShard(m)));
  }

  /** Distinct filters the shards hold. */
  get filterCount(): number {
    return this.subs.size;
  }

  /** Sizes of the bookkeeping, for a state dump (FANOUT_TEST_HOOKS). */
  describe(): Record<string, number> {
    let gens = 0;
    for (const u of this.subs.values()) gens += u.gens.size;
    return {
      filters: this.subs.size, covered: this.coveredCount, retiring: this.retiring.size, handOvers: this.byUnsub.size, byGen: this.byGen.size,
      gensWithRecipients: gens, byPacket: this.byPacket.size, toSubscribe: this.toSubscribe.size, toUnsubscribe: this.toUnsubscribe.size,
      fetches: this.fetches.size, fetchTimers: this.fetchTimers.size, fetchWaiting: this.fetchWaiting.size, fetchByPacket: this.fetchByPacket.size,
    };
  }

  /** Held filters served through a cover, without a subscription of their own at the broker. */
  get coveredCount(): number {
    let n = 0;
    for (const u of this.subs.values()) if (u.cover !== null && !u.live) n++;
    return n;
  }

  /** Subscriptions at the broker: held filters not covered, and released ones still covering. */
  get subscribedCount(): number {
    return this.subs.size - this.coveredCount + this.retiring.size;
  }

  private onShard(m: ShardToWriter): void {
    if (m.t !== 'subs') return;
    const replies: SubAck[] = [];
    for (const op of m.ops) {
      let u = this.subs.get(op.filter);
      const group = op.group ?? '';
      if (op.qos < 0) {
        const h = u?.holds.get(group);
        if (u === undefined || h === undefined || h.want[m.shard] < 0) continue;
        h.want[m.shard] = -1;
        if (--h.holders === 0) u.holds.delete(group);
        if (--u.holders === 0) this.forget(u);
        continue;
      }
      let fresh = false;
      if (u === undefined) {
        u = this.retiring.get(op.filter);
        if (u !== undefined) {
          // Held again while it still covers others: it never left the broker.
          this.retiring.delete(op.filter);
          u.retiring = false;
        } else {
          u = new Upstream(op.filter, this.rings.length);
          fresh = true;
        }
        this.subs.set(op.filter, u);
        this.trie.add(op.filter, u);
      }
      const h = u.hold(group);
      if (h.want[m.shard] < 0) {
        h.holders++;
        u.holders++;
      }
      h.want[m.shard] = op.qos;
      h.ids[m.shard] = op.hold;
      let fetch = false;
      if (op.req !== 0) {
        if (this.split) {
          const list = this.fetchWaiting.get(op.filter) ?? [];
          list.push({ shard: m.shard, req: op.req });
          this.fetchWaiting.set(op.filter, list);
        } else {
          u.waiting.push({ shard: m.shard, req: op.req });
          fetch = true;
        }
      }
      if (fresh && !fetch && this.coverFilters) {
        const c = this.findCover(u, op.qos, null);
        if (c !== null) this.attach(u, c);
      }
      if (u.granted >= 0 && u.sentQos >= op.qos && !fetch) {
        replies.push({ filter: op.filter, group: op.group, qos: op.qos, granted: Math.min(op.qos, u.granted) });
      } else if (u.cover !== null && !u.live && u.cover.granted >= op.qos && !fetch) {
        replies.push({ filter: op.filter, group: op.group, qos: op.qos, granted: Math.min(op.qos, u.cover.granted) });
      } else {
        this.toUnsubscribe.delete(op.filter);
        this.toSubscribe.add(u);
      }
    }
    if (replies.length > 0) this.reply(m.shard, replies);
    this.onChange();
  }

  private forget(u: Upstream): void {
    this.subs.delete(u.filter);
    this.trie.remove(u.filter, u);
    this.toSubscribe.delete(u);
    if (u.quiet !== null) clearTimeout(u.quiet);
    u.quiet = null;
    if (u.cover !== null) this.detach(u);
    if (u.covered.size > 0) {
      u.retiring = true;
      this.retiring.set(u.filter, u);
      this.rehome(u);
      if (u.covered.size > 0) return; // unsubscribed once they have their own subscriptions
      this.retiring.delete(u.filter);
      u.retiring = false;
    }
    this.unsubscribe(u);
  }

  private unsubscribe(u: Upstream): void {
    for (const g of u.genList) this.byGen.delete(g);
    if (u.sentQos >= 0) this.toUnsubscribe.add(u.filter);
  }

  /** A filter held at the broker, granted at least `qos`, that covers `u` (not `except`). */
  private findCover(u: Upstream, qos: number, except: Upstream | null): Upstream | null {
    let found: Upstream | null = null;
    this.trie.forEachCovering(u.filter, (c) => {
      if (found === null && c !== u && c !== except && c.live && c.cover === null && c.granted >= qos) found = c;
    });
    return found;
  }

  private attach(u: Upstream, c: Upstream): void {
    u.cover = c;
    c.covered.add(u);
    (c.coveredTrie ??= new TopicTrie<Upstream>()).add(u.filter, u);
  }

  /** `u` no longer relies on its cover; a retiring cover left with nothing to cover goes. */
  private detach(u: Upstream): void {
    const c = u.cover!;
    u.cover = null;
    c.covered.delete(u);
    c.coveredTrie!.remove(u.filter, u);
    if (c.retiring && c.covered.size === 0) {
      c.retiring = false;
      this.retiring.delete(c.filter);
      this.unsubscribe(c);
      this.onChange();
    }
  }

  /** Cover `c` is going: what it covers moves to another cover, or is subscribed again (and
   *  stays with `c` until its SUBACK). */
  private rehome(c: Upstream): void {
    for (const u of [...c.covered]) {
      const other = this.findCover(u, Math.max(0, u.maxWant()), c);
      if (other !== null) {
        this.detach(u);
        this.attach(u, other);
      } else if (u.inflightGen === 0) {
        this.toUnsubscribe.delete(u.filter);
        this.toSubscribe.add(u);
      }
    }
    this.onChange();
  }

  /** `u` got its SUBACK (and any retained messages): hand it to a cover after a quiet moment. */
  private settleLater(u: Upstream): void {
    if (u.quiet !== null) clearTimeout(u.quiet);
    u.quiet = setTimeout(() => {
      u.quiet = null;
      this.handOver(u);
    }, FETCH_QUIET_MS);
    u.quiet.unref();
  }

  private handOver(u: Upstream): void {
    if (this.subs.get(u.filter) !== u || !u.live || u.cover !== null || u.covered.size > 0 || u.inflightGen !== 0
      || this.toSubscribe.has(u) || u.waiting.length > 0) return;
    const c = this.findCover(u, Math.max(0, u.maxWant()), null);
    if (c === null) return;
    const link = this.link();
    if (!link.subscribable) return;
    this.attach(u, c);
    u.unsubId = link.sendControl((messageId) => mqttPacket.generate({ cmd: 'unsubscribe', messageId, unsubscriptions: [u.filter] },
      { protocolVersion: link.v5 ? 5 : 4 }));
    this.byUnsub.set(u.unsubId, u);
    this.onChange();
  }

  /** The broker answered an UNSUBSCRIBE. */
  onUnsuback(id: number): void {
    const u = this.byUnsub.get(id);
    if (u === undefined) return;
    this.byUnsub.delete(id);
    if (u.unsubId !== id) return;
    u.unsubId = 0;
    u.live = false;
    if (u.inflightGen === 0) {
      u.sentQos = -1;
      u.granted = -1;
    }
    if (this.subs.get(u.filter) !== u) return;
    // Its cover went meanwhile, or a holder wants more than the cover was granted.
    const c = u.cover;
    if ((c === null || c.granted < u.maxWant()) && u.inflightGen === 0) this.toSubscribe.add(u);
    this.onChange();
  }

  /** Whether `u` already appeared for the message in hand (a copy naming it twice). */
  private seenEntry(u: Upstream): boolean {
    if (this.entriesSeen.has(u)) return true;
    this.entriesSeen.add(u);
    return false;
  }

  /** Sends the SUBSCRIBE / UNSUBSCRIBE packets due; called on every writer turn. */
  flushControl(): void {
    if (this.fetchWaiting.size > 0) this.flushFetches();
    if (this.toSubscribe.size === 0 && this.toUnsubscribe.size === 0) return;
    const link = this.link();
    if (!link.subscribable) return;
    if (this.toUnsubscribe.size > 0) {
      const filters = [...this.toUnsubscribe];
      this.toUnsubscribe.clear();
      link.sendControl((messageId) => mqttPacket.generate({ cmd: 'unsubscribe', messageId, unsubscriptions: filters },
        { protocolVersion: link.v5 ? 5 : 4 }));
    }
    const batch: Upstream[] = [];
    for (const u of this.toSubscribe) {
      if (u.inflightGen !== 0) {
        u.again = true;
        continue;
      }
      batch.push(u);
    }
    this.toSubscribe.clear();
    if (batch.length === 0) return;
    // MQTT 5: one SUBSCRIBE per filter, each with its generation as Subscription Identifier.
    const groups = link.v5 ? batch.map((u) => [u]) : [batch];
    for (const group of groups) {
      for (const u of group) {
        const gen = this.allocGen(u);
        u.inflightGen = gen;
        u.sentQos = Math.max(0, u.maxWant());
        if (u.waiting.length > 0) {
          u.gens.set(gen, u.waiting);
          u.waiting = [];
        }
      }
      const subscriptions = group.map((u) => ({
        topic: u.filter, qos: u.sentQos as 0 | 1 | 2, rh: this.split ? 2 : 0, rap: this.split, nl: false,
      }));
      const id = link.sendControl((messageId) => mqttPacket.generate({
        cmd: 'subscribe', messageId, subscriptions,
        properties: link.v5 ? { subscriptionIdentifier: group[0].inflightGen } : undefined,
      }, { protocolVersion: link.v5 ? 5 : 4 }));
      this.byPacket.set(id, group);
    }
  }

  /** Split mode: a short-lived subscription per filter on the fetch link brings its retained
   *  messages; it is dropped once they stopped coming (FETCH_QUIET_MS), or FETCH_LINGER_MS at
   *  the latest (a later request for the filter renews it). */
  private flushFetches(): void {
    const link = this.fetchLink!();
    if (!link.subscribable) return;
    for (const [filter, recipients] of this.fetchWaiting) {
      // A fetch of this filter not answered yet serves them too: the broker sends the retained
      // messages after its SUBACK.
      const pending = this.fetchPending.get(filter);
      const f = pending === undefined ? undefined : this.fetches.get(pending);
      if (f !== undefined && !f.acked) {
        f.recipients.push(...recipients);
        this.fetchWaiting.delete(filter);
        continue;
      }
      // At most so many unanswered: a broker that reads slowly is not handed a backlog of them
      // (the rest wait here, one entry per filter, and go as SUBACKs come).
      if (this.fetchByPacket.size >= MAX_FETCHES_IN_FLIGHT) break;
      this.fetchWaiting.delete(filter);
      const gen = this.nextGen;
      this.nextGen = this.nextGen === MAX_SUB_ID ? 1 : this.nextGen + 1;
      this.fetches.set(gen, { filter, recipients, acked: false });
      const id = link.sendControl((messageId) => mqttPacket.generate({
        cmd: 'subscribe', messageId, subscriptions: [{ topic: filter, qos: 2, rh: 0, rap: false, nl: false }],
        properties: { subscriptionIdentifier: gen },
      }, { protocolVersion: 5 }));
      this.fetchByPacket.set(id, [gen]);
      this.fetchPending.set(filter, gen);
      const old = this.fetchTimers.get(filter);
      if (old) {
        clearTimeout(old.cap);
        if (old.quiet) clearTimeout(old.quiet);
      }
      const cap = setTimeout(() => this.endFetch(filter), FETCH_LINGER_MS);
      cap.unref();
      this.fetchTimers.set(filter, { cap, quiet: null });
    }
  }

  /** Ends the fetch subscription of `filter`, unless a newer request renewed it meanwhile. */
  private endFetch(filter: string): void {
    const t = this.fetchTimers.get(filter);
    if (t === undefined) return;
    for (const [, f] of this.fetches) if (f.filter === filter && !f.acked) return; // renewed, SUBACK to come
    clearTimeout(t.cap);
    if (t.quiet) clearTimeout(t.quiet);
    this.fetchTimers.delete(filter);
    // Retained messages the broker had buffered before the UNSUBSCRIBE may still come: their
    // generations keep their recipients a while longer.
    const gens: number[] = [];
    for (const [g, f] of this.fetches) if (f.filter === filter) gens.push(g);
    setTimeout(() => { for (const g of gens) this.fetches.delete(g); }, FETCH_LINGER_MS).unref();
    const link = this.fetchLink!();
    if (link.subscribable) {
      link.sendControl((messageId) => mqttPacket.generate({ cmd: 'unsubscribe', messageId, unsubscriptions: [filter] }, { protocolVersion: 5 }));
    }
  }

  /** (Re)starts the quiet countdown of a fetched filter: a SUBACK, or a retained message. */
  private fetchActive(filter: string): void {
    const t = this.fetchTimers.get(filter);
    if (t === undefined) return;
    if (t.quiet) clearTimeout(t.quiet);
    t.quiet = setTimeout(() => this.endFetch(filter), FETCH_QUIET_MS);
    t.quiet.unref();
  }

  /** The broker answered a retained-message fetch. */
  onFetchSuback(id: number): void {
    const gens = this.fetchByPacket.get(id);
    if (gens === undefined) return;
    this.fetchByPacket.delete(id);
    for (const g of gens) {
      const f = this.fetches.get(g);
      if (f) {
        f.acked = true;
        if (this.fetchPending.get(f.filter) === g) this.fetchPending.delete(f.filter);
        this.fetchActive(f.filter);
      }
    }
    // Room for the fetches that waited.
    if (this.fetchWaiting.size > 0) this.onChange();
  }

  /** The fetch link reconnected: fetches not answered yet are asked again. */
  onFetchConnected(): void {
    this.fetchByPacket.clear();
    this.fetchPending.clear();
    for (const [g, f] of this.fetches) {
      if (f.acked) continue;
      this.fetches.delete(g);
      const list = this.fetchWaiting.get(f.filter) ?? [];
      list.push(...f.recipients);
      this.fetchWaiting.set(f.filter, list);
    }
    this.onChange();
  }

  private allocGen(u: Upstream): number {
    const gen = this.nextGen;
    this.nextGen = this.nextGen === MAX_SUB_ID ? 1 : this.nextGen + 1;
    this.byGen.set(gen, u);
    // Only the last few generations can still be named by a message on its way.
    u.genList.push(gen);
    if (u.genList.length > KEEP_GENERATIONS) {
      const old = u.genList.shift()!;
      this.byGen.delete(old);
      u.gens.delete(old);
    }
    return gen;
  }

  /** The broker answered a SUBSCRIBE. */
  onSuback(id: number, codes: number[]): void {
    const group = this.byPacket.get(id);
    if (group === undefined) return;
    this.byPacket.delete(id);
    const perShard = new Map<number, SubAck[]>();
    group.forEach((u, i) => {
      const code = codes[i] ?? 0x80;
      const gen = u.inflightGen;
      u.inflightGen = 0;
      if (this.subs.get(u.filter) !== u) return; // released meanwhile
      u.granted = code < 0x80 ? code : -1;
      if (code < 0x80) {
        u.ackedGen = gen;
        u.live = true;
        if (u.cover !== null) this.detach(u);
        for (const d of u.covered) {
          if (d.granted < 0 && u.granted < d.maxWant() && d.inflightGen === 0) this.toSubscribe.add(d);
        }
        if (this.coverFilters && u.covered.size === 0 && this.findCover(u, Math.max(0, u.maxWant()), null) !== null) this.settleLater(u);
      }
      for (const [group, h] of u.holds) {
        for (let s = 0; s < h.want.length; s++) {
          if (h.want[s] < 0) continue;
          const acks = perShard.get(s) ?? [];
          acks.push({ filter: u.filter, group: group || undefined, qos: u.sentQos, granted: code < 0x80 ? Math.min(h.want[s], code) : code });
          perShard.set(s, acks);
        }
      }
      if (u.again) {
        u.again = false;
        this.toSubscribe.add(u);
      }
    });
    for (const [s, acks] of perShard) this.reply(s, acks);
    this.onChange();
  }

  /** A new broker connection (or session): every filter held is subscribed again. */
  onConnected(sessionPresent: boolean): void {
    this.byPacket.clear();
    this.byUnsub.clear();
    if (!sessionPresent) {
      // The broker forgot every subscription: what released ones covered is subscribed below.
      for (const c of this.retiring.values()) {
        for (const u of [...c.covered]) {
          u.cover = null;
          c.covered.delete(u);
          c.coveredTrie!.remove(u.filter, u);
        }
        c.retiring = false;
        for (const g of c.genList) this.byGen.delete(g);
      }
      this.retiring.clear();
    }
    for (const u of this.subs.values()) {
      const lost = u.inflightGen !== 0;
      if (lost) {
        // Its SUBACK will not come: the devices waiting for retained messages go with the next.
        const list = u.gens.get(u.inflightGen);
        if (list !== undefined) {
          u.waiting.push(...list);
          u.gens.delete(u.inflightGen);
        }
      }
      u.inflightGen = 0;
      // A hand-over in flight: whether the broker still has the subscription is unknown.
      const handingOver = u.unsubId !== 0;
      u.unsubId = 0;
      if (!sessionPresent || handingOver) u.live = false;
      if (handingOver && !lost) {
        u.sentQos = -1;
        u.granted = -1;
      }
      // Covered: its cover is subscribed again if need be.
      if (u.cover !== null && !handingOver && !lost) {
        if (!sessionPresent) {
          u.sentQos = -1;
          u.granted = -1;
        }
        continue;
      }
      if (!sessionPresent || lost || handingOver || u.granted < 0) this.toSubscribe.add(u);
    }
    this.onChange();
  }

  /**
   * Shard `s` failed and is replaced: everything it held is released (upstream subscriptions
   * nobody else holds are dropped at the broker), retained messages owed to it are forgotten
   * (its request ids mean nothing to the new shard), and `port` is the new shard's channel.
   */
  resetShard(s: number, port: MessagePort): void {
    this.ports[s] = port;
    port.on('message', (m: ShardToWriter) => this.onShard(m));
    const other = (r: Recipient): boolean => r.shard !== s;
    for (const u of [...this.subs.values()]) {
      u.waiting = u.waiting.filter(other);
      for (const [g, list] of u.gens) u.gens.set(g, list.filter(other));
      for (const [group, h] of [...u.holds]) {
        if (h.want[s] < 0) continue;
        h.want[s] = -1;
        if (--h.holders === 0) u.holds.delete(group);
        if (--u.holders === 0) this.forget(u);
      }
    }
    for (const [filter, list] of this.fetchWaiting) this.fetchWaiting.set(filter, list.filter(other));
    for (const f of this.fetches.values()) f.recipients = f.recipients.filter(other);
    this.onChange();
  }

  /** Recipients of a copy the broker sent for `u`: every plain holding shard, tagged with its
   *  hold, and one shard per shared group, in turn. */
  private holdsOf(u: Upstream, out: Recipient[]): void {
    for (const [group, h] of u.holds) {
      if (group !== '') {
        const s = h.next();
        if (s >= 0) out.push({ shard: s, req: SHARED_REQ | h.ids[s] });
      } else {
        for (let s = 0; s < h.want.length; s++) if (h.want[s] >= 0) out.push({ shard: s, req: HOLD_REQ | h.ids[s] });
      }
    }
  }

  private reply(shard: number, acks: SubAck[]): void {
    const m: WriterToShard = { t: 'subacks', broker: this.broker, acks };
    this.ports[shard].postMessage(m);
  }

  /**
   * A PUBLISH from the broker, variable header and payload in buf[start, end). Returns false
   * when a shard's ring cannot take it now: the caller keeps it and retries after retry().
   */
  onPublish(header: number, buf: Buffer, start: number, end: number, v5: boolean, fromFetch = false): boolean {
    const retain = (header & 1) !== 0;
    const qos = (header >> 1) & 3;
    const topicLen = buf.readUInt16BE(start);
    const topicStart = start + 2;
    let pos = topicStart + topicLen + (qos > 0 ? 2 : 0);
    let propsStart = pos;
    let propsEnd = pos;
    if (v5) {
      const n = readVarint(buf, pos, end);
      propsStart = varintEnd;
      propsEnd = propsStart + n;
      pos = propsEnd;
    }
    const scan = this.scan;
    const propsLen = v5 ? forwardProperties(buf, propsStart, propsEnd, null, 0, scan) : 0;
    if (propsLen < 0) return true; // malformed properties: the connection check catches it
    const remote = buf.toString('utf8', topicStart, topicStart + topicLen);
    // Who gets this message, as (shard, request) pairs:
    //  - retained ones (retain set) only the requests of the generation they answer;
    //  - a copy an MQTT 5 broker sent for some of our subscriptions (it names them) only the
    //    shards' holds of those subscriptions: the broker sends another copy for each other
    //    matching one, and together they must make one delivery per device subscription;
    //  - otherwise every shard holding a matching filter (0: the shard matches all its
    //    subscriptions), and each shared group once, on one of its shards in turn.
    const out = this.out;
    out.length = 0;
    if (fromFetch) {
      // Only the retained messages of a fetch matter; live traffic comes on the first link.
      if (retain) {
        for (const g of scan.subIds) {
          const f = this.fetches.get(g);
          if (f) {
            out.push(...f.recipients);
            this.fetchActive(f.filter);
          }
        }
      }
    } else if (retain && !this.split) {
      if (scan.subIds.length > 0) {
        for (const g of scan.subIds) {
          const u = this.byGen.get(g);
          const list = u?.gens.get(g);
          if (list) out.push(...list);
          if (u?.quiet) this.settleLater(u);
        }
      } else {
        this.trie.match(remote, (u) => {
          const list = u.gens.get(u.ackedGen);
          if (list) out.push(...list);
          if (u.quiet !== null) this.settleLater(u);
        });
      }
    } else if (scan.subIds.length > 0) {
      const several = scan.subIds.length > 1;
      for (const g of scan.subIds) {
        const u = this.byGen.get(g);
        if (u === undefined || (several && this.seenEntry(u))) continue;
        if (this.subs.get(u.filter) === u) this.holdsOf(u, out);
        // The filters it covers that match, unless they have their own subscription now.
        if (u.covered.size > 0) {
          u.coveredTrie!.match(remote, (d) => {
            if (!d.live && !(several && this.seenEntry(d))) this.holdsOf(d, out);
          });
        }
      }
      this.entriesSeen.clear();
    } else {
      const targets = this.targets;
      targets.fill(0);
      this.trie.match(remote, (u) => {
        for (const [group, h] of u.holds) {
          if (group === '') {
            for (let s = 0; s < targets.length; s++) if (h.want[s] >= 0) targets[s] = 1;
          } else {
            const s = h.next();
            if (s >= 0) out.push({ shard: s, req: SHARED_REQ | h.ids[s] });
          }
        }
      });
      for (let s = 0; s < targets.length; s++) if (targets[s]) out.push({ shard: s, req: 0 });
    }
    if (out.length === 0) {
      this.dropped++;
      return true;
    }
    const locals = this.locals;
    const n = this.routing.localTopics(this.broker, remote, locals);
    if (n === 0) return true;
    const payloadLen = end - pos;
    if (DOWNLINK_HEADER + topicLen * 4 + propsLen + payloadLen > this.rings[0].capacity / 2) {
      // Larger than a shard's ring can ever take: MQTT 5 brokers are told the limit in CONNECT.
      this.tooLarge++;
      return true;
    }
    // Room first, for every record this message makes, so it is written whole or not at all.
    // Each record costs its length word and padding; one more record's worth covers the space
    // a wrap at the end of the ring can waste.
    let one = 0;
    for (let i = 0; i < n; i++) one = Math.max(one, DOWNLINK_HEADER + Buffer.byteLength(locals[i]) + propsLen + payloadLen + 8);
    const need = this.need;
    need.fill(0);
    for (const r of out) need[r.shard] += one * n;
    for (let s = 0; s < need.length; s++) {
      if (need[s] > this.rings[s].capacity / 2) {
        // So many copies for one shard that its ring could never take them at once.
        this.tooLarge++;
        return true;
      }
    }
    // canFit() counts the space a wrap at the end of the ring can waste.
    for (let s = 0; s < need.length; s++) if (need[s] > 0 && !this.rings[s].canFit(need[s])) return false;
    if (propsLen > this.propsScratch.length) this.propsScratch = Buffer.alloc(propsLen * 2);
    if (propsLen > 0) forwardProperties(buf, propsStart, propsEnd, this.propsScratch, 0, scan);
    const seq = this.seq = (this.seq + 1) >>> 0;
    const expiry = scan.expiry < 0 ? NO_EXPIRY : scan.expiry;
    for (let i = 0; i < n; i++) {
      for (const r of out) this.write(r.shard, r.req, qos, retain, locals[i], propsLen, expiry, seq, buf, pos, payloadLen);
    }
    this.deliveredByQos[qos]++;
    return true;
  }

  private write(s: number, req: number, qos: number, retain: boolean, topic: string, propsLen: number, expiry: number,
    seq: number, src: Buffer, payloadAt: number, payloadLen: number): void {
    const ring = this.rings[s];
    const topicBytes = Buffer.byteLength(topic);
    let at = ring.reserve(DOWNLINK_HEADER + topicBytes + propsLen + payloadLen);
    if (at < 0) throw new Error('downlink ring reserve failed after canFit()');
    const b = ring.buffer;
    const v = ring.dataView;
    b[at] = REC_DELIVER;
    b[at + 1] = qos | (retain ? 4 : 0);
    v.setUint16(at + 2, topicBytes, true);
    v.setUint32(at + 4, propsLen, true);
    v.setUint32(at + 8, req, true);
    v.setUint32(at + 12, expiry, true);
    v.setUint32(at + 16, seq, true);
    at += DOWNLINK_HEADER;
    at += b.write(topic, at, 'utf8');
    if (propsLen > 0) at += copyBytes(this.propsScratch, 0, propsLen, b, at);
    copyBytes(src, payloadAt, payloadAt + payloadLen, b, at);
    this.dirty[s] = true;
  }

  /** Makes this turn's records visible; returns the shards to wake. */
  commit(wake: (shard: number) => void): void {
    for (let s = 0; s < this.rings.length; s++) {
      if (!this.dirty[s]) continue;
      this.dirty[s] = false;
      if (this.rings[s].commit()) wake(s);
    }
  }
}
