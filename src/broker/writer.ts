// The writer of one upstream broker: a worker thread that drains every shard's ring for this
// broker into its pool of broker connections and sends the broker's acknowledgements back on
// the shards' ack rings. A record is taken from a ring only when its connection can send it,
// so a slow or absent broker fills the rings, and full rings pause the devices.

import type { MessagePort } from 'node:worker_threads';
import * as v8 from 'node:v8';
import type { Logger } from 'pino';
import type { BrokerConfig, Config } from '../config/types';
import { Doorbell } from '../ring/doorbell';
import { RingConsumer, RingProducer, type RingBuffers } from '../ring/spsc';
import { ACK_RECORD, FLAG_RETAIN, FLAG_TRACE, FLAG_V5, NO_TOKEN, UPLINK_HEADER } from '../ring/records';
import { BrokerConnection } from './connection';
import type { WriterContext } from './context';
import { WriterDownlink } from './downlink';
import { RateLimitedLog } from '../log';
import { LatencyRecorder } from '../metrics/latency';
import { setVitals, WriterStats } from '../metrics/stats';
import { ThreadVitals } from '../metrics/vitals';
import { buildRouting, effectiveRoutes } from '../shard/build-routing';
import { SpooledPath, type SpooledHost } from './spooled';
import { crashForTest, writeHeapSnapshot } from '../test-hooks';
import { upstreamModeOf } from '../config/upstream';
import { DeviceSessions } from './device-sessions';

export interface WriterOptions {
  config: Config;
  broker: BrokerConfig;
  index: number;
  uplinkRings: RingBuffers[];
  ackRings: RingBuffers[];
  downlinkRings: RingBuffers[];
  /** One control channel per shard (subscriptions). */
  shardPorts: MessagePort[];
  doorbell: SharedArrayBuffer;
  shardDoorbells: SharedArrayBuffer[];
  /** Writer counters (one row per writer), read by the supervisor. */
  stats: SharedArrayBuffer;
  port: MessagePort;
  log: Logger;
  /** Tells tokens of this daemon run from those of an earlier one in the spool. */
  runId: number;
  /** This writer replaces one that failed: it answers only the tokens the shards still wait
   *  for (see Recovery), which they send once they have read what its predecessor answered. */
  recovering: boolean;
}

export type ToWriter =
  // Shutdown, or the broker's removal by a reload (deadlineMs). handover: the broker's settings
  // changed; only what is in flight is finished, and the rings (and the spool) are left to the
  // writer that replaces this one.
  | { t: 'drain'; deadlineMs?: number; handover?: boolean }
  | { t: 'metrics' }
  | { t: 'reload' }
  // Shard `shard` failed and is being replaced; `port` is the new shard's control channel.
  | { t: 'shard-reset'; shard: number; port: MessagePort }
  | { t: 'test-crash'; kind: 'throw' | 'oom' | 'dump' | 'heap' }
  // Recovery: the tokens a shard still waits for from this broker.
  | { t: 'pending'; shard: number; tokens: number[] };
export type FromWriter =
  | { t: 'drained'; broker: string; leftInRings: number; leftInflight: number }
  /** addresses: per pool connection, the index of the broker address it is up on, -1 when down. */
  | { t: 'metrics'; broker: number; rtt: string; addresses: number[] }
  | { t: 'shard-reset-done'; broker: number; shard: number }
  // Recovery without a spool: tokens whose messages went with the failed writer.
  | { t: 'lost'; broker: number; shard: number; tokens: number[] };

/**
 * A restarted writer's catch-up. Its predecessor may have answered some tokens and taken records
 * it never sent; the shards say which tokens they still wait for. The new writer answers only
 * those, once each. When it has read past everything that was in the rings (and the spool) at
 * its start, a token still waited for was in the failed thread's memory: with a spool it was
 * finished or is on disk (answered), without one the message is lost and the shard closes its
 * device, which sends it again when it reconnects.
 */
interface Recovery {
  pending: (Set<number> | null)[];
  marks: number[];
  logMark: number;
}

/** Records taken per ring before moving to the next, for fairness between shards. */
const SLICE = 512;
/** Records taken per pump before yielding to the event loop (acks, timers). */
const BUDGET = 8192;
/** Poll interval while records keep arriving (see nap()). */
const NAP_MS = 1;
/** How long after the last record taken the writer keeps polling rather than parking. */
const BUSY_WINDOW_MS = 5;

export class Writer implements WriterContext, SpooledHost {
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  now = Date.now();
  readonly pool: BrokerConnection[];
  /** The connections device publishes go on: those that hold no subscriptions when the pool
   *  has any (a broker slow to serve a flood of deliveries then does not hold back the
   *  acknowledgements of publishes), else the whole pool. */
  readonly uplinkPool: BrokerConnection[];
  readonly downlink: WriterDownlink;
  /** Per-device upstream mode: the devices' own sessions at this broker; null in pooled mode. */
  private readonly devices: DeviceSessions | null;
  readonly maxIncoming: number;
  readonly rtt = new LatencyRecorder();
  private readonly stats: WriterStats;
  droppedTooLarge = 0;

  private readonly rings: RingConsumer[];
  private readonly acks: RingProducer[];
  private readonly ackPending: boolean[];
  private readonly overflow: number[][];
  private readonly shardBells: Doorbell[];
  private readonly doorbell: Doorbell;
  private scheduled = false;
  private waiting = false;
  private napping = false;
  private lastBusy = 0;
  /** Connections (and the QoS asked) that could not take a ring's next record this turn. */
  private readonly stalledOn: ({ canAccept(qos: number): boolean } | number)[] = [];
  private stopped = false;
  private tick: NodeJS.Timeout | null = null;
  private readonly pumpBound = (): void => this.pump();
  /** FANOUT_SPOOL_DIR: records go through this broker's durable log. */
  private readonly spooled: SpooledPath | null;
  private recovery: Recovery | null = null;
  /** Per shard ring: the position before which records were left by a failed shard (-1: none). */
  private readonly staleUntil: number[];

  constructor(private readonly opts: WriterOptions) {
    this.log = opts.log;
    this.warnings = new RateLimitedLog(opts.log);
    this.rings = opts.uplinkRings.map((r) => new RingConsumer(r));
    this.acks = opts.ackRings.map((r) => new RingProducer(r));
    this.ackPending = this.acks.map(() => false);
    this.overflow = this.acks.map(() => []);
    this.shardBells = opts.shardDoorbells.map((s) => new Doorbell(s));
    this.doorbell = new Doorbell(opts.doorbell);
    this.pool = [];
    for (let i = 0; i < opts.broker.pool; i++) this.pool.push(new BrokerConnection(this, opts.broker, opts.config, i));
    this.stats = new WriterStats(opts.stats, opts.index);
    const downRings = opts.downlinkRings.map((r) => new RingProducer(r));
    this.maxIncoming = Math.min(0x0fffffff, Math.floor(opts.config.ringBytes / 2));
    // Subscriptions live on the first connection of the pool; the others only publish.
    this.downlink = new WriterDownlink(opts.index, opts.shardPorts, downRings, buildRouting(opts.config),
      () => this.pool[0], () => this.schedulePump(), this.pool.length >= 2 ? () => this.pool[1] : null, opts.config.coverFilters);
    const routes = effectiveRoutes(opts.config);
    const servesDownlink = routes.some((r) => r.broker === opts.broker.name && r.direction !== 'out');
    const subscribing = servesDownlink ? (this.downlink.split ? 2 : 1) : 0;
    this.uplinkPool = this.pool.length > subscribing ? this.pool.slice(subscribing) : this.pool;
    const perDevice = upstreamModeOf(opts.config, opts.broker) === 'per-device';
    // A per-device broker keeps each device's session itself: its publishes go straight to it.
    this.spooled = opts.config.spoolDir === null || perDevice ? null : new SpooledPath(this, opts.config, opts.broker, opts.runId);
    this.staleUntil = this.rings.map(() => -1);
    if (opts.recovering) {
      this.recovery = { pending: this.rings.map(() => null), marks: this.rings.map((r) => r.committedPosition()), logMark: 0 };
    }
    this.devices = perDevice
      ? new DeviceSessions(this, opts.broker, opts.config, opts.index, opts.shardPorts, downRings, buildRouting(opts.config))
      : null;
  }

  /** SpooledHost: whether this writer may answer `token` of a spool entry its predecessor
   *  appended (always, unless recovering: then only once, and only if the shard still waits). */
  ownsToken(shard: number, token: number): boolean {
    const r = this.recovery;
    if (r === null) return true;
    return r.pending[shard]?.delete(token) === true;
  }

  /** SpooledHost: a token read from a ring now. Nobody answered it yet (the predecessor never
   *  took its record, or it was written since), so this writer owns it in any case; it is struck
   *  off the list of what the shards wait for so as not to be reported lost. */
  takeToken(shard: number, token: number): void {
    this.recovery?.pending[shard]?.delete(token);
  }

  tokenFresh(s: number, ring: RingConsumer): boolean {
    const until = this.staleUntil[s];
    if (until < 0) return true;
    if (((ring.position - until) | 0) < 0) return false;
    this.staleUntil[s] = -1;
    return true;
  }

  /** Shard `s` failed: what it left in its ring still goes to the broker, but no answer for it
   *  may reach the shard that replaces it (its tokens are new), and what it held is released. */
  private resetShard(s: number, port: MessagePort): void {
    this.staleUntil[s] = this.rings[s].committedPosition();
    for (const c of this.pool) c.forgetShard(s);
    this.overflow[s] = [];
    this.spooled?.resetShard(s);
    // One channel serves both; a per-device writer's device sessions listen on it too.
    this.downlink.resetShard(s, port);
    this.devices?.resetShard(s, port);
    this.commitAcks();
    this.downlink.commit(this.wakeShard);
    const done: FromWriter = { t: 'shard-reset-done', broker: this.opts.index, shard: s };
    this.opts.port.postMessage(done);
    this.schedulePump();
  }

  stalled(conn: BrokerConnection, qos: number): void {
    this.stalledOn.push(conn, qos);
  }

  tooLarge(size: number): void {
    this.droppedTooLarge++;
    this.warnings.warn('too-large', { broker: this.opts.broker.name, size, total: this.droppedTooLarge },
      'message larger than the broker accepts: not forwarded (MQTT 5 devices get reason 0x83)');
  }

  spoolDone(tag: number): void {
    const sp = this.spooled!;
    sp.done(tag);
    if (sp.full) this.schedulePump();
  }

  onBrokerPublish(conn: BrokerConnection, header: number, buf: Buffer, start: number, end: number): boolean {
    if (this.downlink.onPublish(header, buf, start, end, conn.v5, this.downlink.split && conn === this.pool[1])) return true;
    this.heldDownlink = true;
    return false;
  }

  onSuback(conn: BrokerConnection, id: number, codes: number[]): void {
    if (conn === this.pool[0]) this.downlink.onSuback(id, codes);
    else if (conn === this.pool[1] && this.downlink.split) this.downlink.onFetchSuback(id);
  }

  onUnsuback(conn: BrokerConnection, id: number): void {
    if (conn === this.pool[0]) this.downlink.onUnsuback(id);
  }

  onConnected(conn: BrokerConnection, sessionPresent: boolean): void {
    this.spooled?.onConnected();
    if (conn === this.pool[0]) this.downlink.onConnected(sessionPresent);
    else if (conn === this.pool[1] && this.downlink.split) this.downlink.onFetchConnected();
  }

  /** A broker connection holds a message the shards' downlink rings could not take. */
  private heldDownlink = false;

  start(): void {
    if (this.opts.broker.insecure) {
      this.log.warn({ broker: this.opts.broker.name }, "insecure=true: the broker's TLS certificate is not verified");
    }
    if (this.opts.config.spoolDir !== null && this.spooled === null) {
      this.log.info({ broker: this.opts.broker.name }, 'per-device broker: its messages do not go through FANOUT_SPOOL_DIR (the broker keeps each device\'s session)');
    }
    if (this.spooled !== null) {
      this.spooled.open(this.recovery !== null);
      if (this.recovery !== null) this.recovery.logMark = this.spooled.spool.appendEnd;
    }
    for (const c of this.pool) c.connect();
    const vitals = new ThreadVitals();
    this.devices?.start();
    this.tick = setInterval(() => {
      this.now = Date.now();
      setVitals(this.stats, vitals.sample());
      for (const c of this.pool) c.onTick(this.now);
      this.devices?.tick(this.now);
      this.warnings.flush();
      this.publishStats();
      this.schedulePump();
    }, 1000);
    this.opts.port.on('message', (m: ToWriter) => {
      if (m.t === 'drain') void this.drain(m.deadlineMs, m.handover === true);
      else if (m.t === 'shard-reset') this.resetShard(m.shard, m.port);
      else if (m.t === 'test-crash') {
        if (m.kind === 'dump') this.log.warn({ broker: this.opts.broker.name, downlink: this.downlink.describe(), heldDownlink: this.heldDownlink, heap: v8.getHeapStatistics(), pool: this.pool.map((c) => c.describe()), rings: this.rings.map((r) => r.used()) }, 'writer state (FANOUT_TEST_HOOKS dump)');
        else if (m.kind === 'heap') this.log.warn({ file: writeHeapSnapshot(`writer-${this.opts.broker.name}`) }, 'heap snapshot written (FANOUT_TEST_HOOKS)');
        else crashForTest(m.kind);
      }
      else if (m.t === 'reload') this.devices?.reload();
      else if (m.t === 'pending') {
        if (this.recovery !== null) this.recovery.pending[m.shard] = new Set(m.tokens);
        this.schedulePump();
      } else if (m.t === 'metrics') {
        this.publishStats();
        const reply: FromWriter = { t: 'metrics', broker: this.opts.index, rtt: this.rtt.take(), addresses: this.pool.map((c) => (c.up ? c.address : -1)) };
        this.opts.port.postMessage(reply);
      }
    });
    this.publishStats();
    this.schedulePump();
  }

  /** Copies the connections' counters into shared memory for the supervisor. */
  private publishStats(): void {
    const st = this.stats;
    let up = 0, reconnects = 0, inflight = 0, bytesIn = 0, lost = 0;
    const sent = [0, 0, 0];
    const bytes = [0, 0, 0];
    for (const c of this.pool) {
      if (c.up) up++;
      reconnects += c.reconnects;
      inflight += c.inflight;
      bytesIn += c.bytesIn;
      lost += c.qos0BytesLost;
      for (let q = 0; q < 3; q++) {
        sent[q] += c.sent[q];
        bytes[q] += c.bytesOut[q];
      }
    }
    st.set('connectionsUp', up);
    st.set('connections', this.pool.length);
    st.set('reconnects', reconnects);
    st.set('inflight', inflight);
    st.set('messagesOutQos0', sent[0]);
    st.set('messagesOutQos1', sent[1]);
    st.set('messagesOutQos2', sent[2]);
    st.set('bytesOutQos0', bytes[0]);
    st.set('bytesOutQos1', bytes[1]);
    st.set('bytesOutQos2', bytes[2]);
    st.set('bytesIn', bytesIn);
    st.set('tooLarge', this.droppedTooLarge);
    st.set('qos0BytesLost', lost);
    const received = this.downlink.deliveredByQos;
    st.set('downlinkInQos0', received[0]);
    st.set('downlinkInQos1', received[1]);
    st.set('downlinkInQos2', received[2]);
    st.set('downlinkUnmatched', this.downlink.dropped);
    st.set('downlinkTooLarge', this.downlink.tooLarge);
    st.set('upstreamFilters', this.downlink.subscribedCount);
    st.set('upstreamCovered', this.downlink.coveredCount);
    const sp = this.spooled;
    if (sp !== null) {
      st.set('spoolBytes', sp.spool.bytes);
      st.set('spoolUnsent', sp.spool.unread);
      st.set('spoolDropped', sp.dropped);
      st.set('spoolConflated', sp.conflated);
      st.set('spoolCorrupt', sp.spool.corrupt);
    }
    this.devices?.publishStats(st);
  }

  schedulePump(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(this.pumpBound);
  }

  private pump(): void {
    this.scheduled = false;
    this.flushOverflow();
    if (this.heldDownlink) {
      this.heldDownlink = false;
      for (const c of this.pool) c.retryHeld();
    }
    this.downlink.flushControl();
    this.devices?.pump();
    let budget = BUDGET;
    this.stalledOn.length = 0;
    const recovery = this.recovery;
    if (recovery !== null && recovery.pending.includes(null)) {
      // Nothing is answered before every shard said what it still waits for.
    } else if (this.handingOver) {
      // What is not taken yet is the successor's.
    } else if (this.spooled !== null) {
      const took = this.spooled.take(this.rings, BUDGET, this.wakeShard);
      const sent = this.spooled.feed(BUDGET);
      budget = BUDGET - Math.max(took, sent);
    } else {
      let progressed = true;
      while (budget > 0 && progressed) {
        progressed = false;
        for (let s = 0; s < this.rings.length; s++) {
          const r = this.take(s, Math.min(SLICE, budget));
          if (r > 0) {
            budget -= r;
            progressed = true;
          }
        }
      }
    }
    if (recovery !== null && !recovery.pending.includes(null)) this.checkRecovered(recovery);
    for (const c of this.pool) c.flush();
    this.devices?.flush(this.wakeShard);
    this.commitAcks();
    this.downlink.commit(this.wakeShard);
    if (budget === 0) {
      this.schedulePump();
      return;
    }
    if (this.stalledOn.length > 0) {
      // A connection that was only full for this turn's output is free again after the flush;
      // one that waits for acks, 'drain' or a reconnect calls schedulePump() itself.
      for (let i = 0; i < this.stalledOn.length; i += 2) {
        if ((this.stalledOn[i] as BrokerConnection).canAccept(this.stalledOn[i + 1] as number)) {
          this.schedulePump();
          return;
        }
      }
      // Without a spool the rings wait for that connection; with one they go on into the log.
      if (this.spooled === null) return;
    }
    // A full spool waits for the broker to finish entries (spoolDone).
    if (this.spooled?.full) return;
    this.now = Date.now();
    if (budget < BUDGET) this.lastBusy = this.now;
    if (this.now - this.lastBusy <= BUSY_WINDOW_MS) this.nap();
    else this.sleep();
  }

  /** Moves up to `max` records from shard `s`'s ring to the connections and returns the count.
   *  A record whose connection cannot take it now stays at the head of the ring, and the
   *  connection is noted in stalledOn. */
  private take(s: number, max: number): number {
    const ring = this.rings[s];
    const buf = ring.buffer;
    const view = ring.dataView;
    const uplink = this.uplinkPool;
    const devices = this.devices;
    let n = 0;
    while (n < max) {
      const fresh = this.tokenFresh(s, ring);
      const at = ring.next();
      if (at < 0) break;
      const flags = buf[at + 1];
      const qos = flags & 3;
      const key = view.getUint32(at + 12, true);
      if (devices !== null && key !== 0) {
        // A device's record goes to its own session (key 0: wills and HTTP, on the pool).
        const stall = devices.take(s, key, buf, view, at, ring.lastLength);
        if (stall !== null) {
          ring.unreadLast();
          this.stalledOn.push(stall, qos);
          break;
        }
        n++;
        continue;
      }
      const conn = uplink[(key + s) % uplink.length];
      if (!conn.canAccept(qos)) {
        ring.unreadLast();
        this.stalledOn.push(conn, qos);
        break;
      }
      const topicLen = view.getUint16(at + 2, true);
      const propsLen = view.getUint32(at + 4, true);
      let token = view.getUint32(at + 8, true);
      if (!fresh) token = NO_TOKEN;
      else if (token !== NO_TOKEN) this.takeToken(s, token);
      const topicAt = at + UPLINK_HEADER;
      const propsAt = topicAt + topicLen;
      const payloadAt = propsAt + propsLen;
      const payloadLen = ring.lastLength - UPLINK_HEADER - topicLen - propsLen;
      const ok = conn.publish(qos, (flags & FLAG_RETAIN) !== 0 && this.opts.broker.retain === 'forward', token, s,
        buf, topicAt, topicLen, propsAt, (flags & FLAG_V5) !== 0 ? propsLen : 0, buf, payloadAt, payloadLen, (flags & FLAG_TRACE) !== 0);
      if (!ok) {
        this.tooLarge(ring.lastLength);
        // 0x95 is not a valid PUBACK/PUBREC reason; 0x83 (implementation specific error) is.
        if (token !== NO_TOKEN) this.ack(s, token, 0x83);
      }
      n++;
    }
    if (ring.release()) this.shardBells[s].ring();
    return n;
  }

  /** Recovery ends once the rings (and the spool) are read past what they held at the start. */
  private checkRecovered(r: Recovery): void {
    for (let s = 0; s < this.rings.length; s++) if (((this.rings[s].position - r.marks[s]) | 0) < 0) return;
    if (this.spooled !== null && this.spooled.spool.readPosition < r.logMark) return;
    this.recovery = null;
    let left = 0;
    for (let s = 0; s < r.pending.length; s++) {
      const tokens = [...r.pending[s]!];
      if (tokens.length === 0) continue;
      left += tokens.length;
      if (this.spooled !== null) {
        // In the spool before the failure, or finished with its answer lost: on disk now.
        this.spooled.spool.sync(() => {
          for (const t of tokens) this.ack(s, t, 0);
          this.commitAcks();
        });
      } else {
        const lost: FromWriter = { t: 'lost', broker: this.opts.index, shard: s, tokens };
        this.opts.port.postMessage(lost);
      }
    }
    this.log.info({ broker: this.opts.broker.name, unanswered: left, spool: this.spooled !== null }, 'writer recovered after a restart');
  }

  /** Busy: look at the rings again in NAP_MS without asking shards to notify. A cross-thread
   *  wake-up costs far more CPU than a timer, and under load every look finds a batch. */
  private nap(): void {
    if (this.napping || this.waiting) return;
    this.napping = true;
    setTimeout(this.napBound, NAP_MS);
  }

  private readonly napBound = (): void => {
    this.napping = false;
    this.schedulePump();
  };

  /** Parks until a shard rings. After prepare() every ring() notifies, so a record committed
   *  before it is seen by the check below and one committed after it wakes the wait. */
  private sleep(): void {
    if (this.stopped) return;
    const seen = this.doorbell.prepare();
    if (this.heldDownlink) {
      // Parked on full downlink rings: a shard rings when it frees room; poll as a safety net.
      setTimeout(this.napBound, 50);
    }
    for (const r of this.rings) {
      if (r.hasData()) {
        this.doorbell.awake();
        this.schedulePump();
        return;
      }
    }
    if (this.waiting) return; // the wait already armed is woken by the next ring()
    this.waiting = true;
    void this.doorbell.wait(seen, 1000).then(() => {
      this.waiting = false;
      this.doorbell.awake();
      this.schedulePump();
    });
  }

  private readonly wakeShard = (s: number): void => this.shardBells[s].ring();

  ack(shard: number, token: number, reason: number): void {
    const ring = this.acks[shard];
    const at = this.overflow[shard].length === 0 ? ring.reserve(ACK_RECORD) : -1;
    if (at < 0) {
      // The shard is behind on acks: keep them in order here until it frees room.
      this.overflow[shard].push(token, reason);
      return;
    }
    ring.dataView.setUint32(at, token, true);
    ring.buffer[at + 4] = reason;
    this.ackPending[shard] = true;
  }

  private flushOverflow(): void {
    for (let s = 0; s < this.overflow.length; s++) {
      const q = this.overflow[s];
      let i = 0;
      while (i < q.length) {
        const at = this.acks[s].reserve(ACK_RECORD);
        if (at < 0) break;
        this.acks[s].dataView.setUint32(at, q[i], true);
        this.acks[s].buffer[at + 4] = q[i + 1];
        this.ackPending[s] = true;
        i += 2;
      }
      if (i > 0) q.splice(0, i);
    }
  }

  commitAcks(): void {
    for (let s = 0; s < this.acks.length; s++) {
      if (!this.ackPending[s]) continue;
      this.ackPending[s] = false;
      if (this.acks[s].commit()) this.shardBells[s].ring();
    }
  }

  /** A reload changed this broker: the rings are left alone from now on (see drain). */
  private handingOver = false;

  /** Shutdown (or removal): send what the rings hold, wait for the broker's acks, then say
   *  goodbye. A handover only waits for the acks of what is in flight. */
  private async drain(deadlineMs = this.opts.config.shutdownTimeoutMs / 2, handover = false): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    this.handingOver = handover;
    const pending = (): number => handover ? 0 : this.rings.reduce((n, r) => n + r.used(), 0) + (this.spooled?.spool.unread ?? 0);
    const inflight = (): number => this.pool.reduce((n, c) => n + c.inflight, 0) + (this.devices?.inflight ?? 0);
    while ((pending() > 0 || inflight() > 0) && Date.now() < deadline) {
      this.schedulePump();
      await new Promise((r) => setTimeout(r, 10));
    }
    // The last answers reach the shards before the thread ends.
    this.flushOverflow();
    this.commitAcks();
    this.stopped = true;
    if (this.tick) clearInterval(this.tick);
    // What the broker did not finish stays in the spool for the next start.
    this.spooled?.close();
    const m: FromWriter = { t: 'drained', broker: this.opts.broker.name, leftInRings: pending(), leftInflight: inflight() };
    await Promise.all([...this.pool.map((c) => c.close()), this.devices?.close()]);
    this.opts.port.postMessage(m);
  }
}
