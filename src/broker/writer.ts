// The writer of one upstream broker: a worker thread that drains every shard's ring for this
// broker into its pool of broker connections and sends the broker's acknowledgements back on
// the shards' ack rings. A record is taken from a ring only when its connection can send it,
// so a slow or absent broker fills the rings, and full rings pause the devices.

import type { MessagePort } from 'node:worker_threads';
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
import { WriterStats } from '../metrics/stats';
import { buildRouting } from '../shard/build-routing';
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
}

export type ToWriter = { t: 'drain' } | { t: 'metrics' } | { t: 'reload' };
export type FromWriter =
  | { t: 'drained'; broker: string; leftInRings: number; leftInflight: number }
  | { t: 'metrics'; broker: number; rtt: string };

/** Records taken per ring before moving to the next, for fairness between shards. */
const SLICE = 512;
/** Records taken per pump before yielding to the event loop (acks, timers). */
const BUDGET = 8192;
/** Poll interval while records keep arriving (see nap()). */
const NAP_MS = 1;
/** How long after the last record taken the writer keeps polling rather than parking. */
const BUSY_WINDOW_MS = 5;

export class Writer implements WriterContext {
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  now = Date.now();
  readonly pool: BrokerConnection[];
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
      () => this.pool[0], () => this.schedulePump(), this.pool.length >= 2 ? () => this.pool[1] : null);
    this.devices = upstreamModeOf(opts.config, opts.broker) === 'per-device'
      ? new DeviceSessions(this, opts.broker, opts.config, opts.index, opts.shardPorts, downRings, buildRouting(opts.config))
      : null;
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

  onConnected(conn: BrokerConnection, sessionPresent: boolean): void {
    if (conn === this.pool[0]) this.downlink.onConnected(sessionPresent);
    else if (conn === this.pool[1] && this.downlink.split) this.downlink.onFetchConnected();
  }

  /** A broker connection holds a message the shards' downlink rings could not take. */
  private heldDownlink = false;

  start(): void {
    if (this.opts.broker.insecure) {
      this.log.warn({ broker: this.opts.broker.name }, "insecure=true: the broker's TLS certificate is not verified");
    }
    for (const c of this.pool) c.connect();
    this.devices?.start();
    this.tick = setInterval(() => {
      this.now = Date.now();
      for (const c of this.pool) c.onTick(this.now);
      this.devices?.tick(this.now);
      this.warnings.flush();
      this.publishStats();
      this.schedulePump();
    }, 1000);
    this.opts.port.on('message', (m: ToWriter) => {
      if (m.t === 'drain') void this.drain();
      else if (m.t === 'reload') this.devices?.reload();
      else if (m.t === 'metrics') {
        this.publishStats();
        const reply: FromWriter = { t: 'metrics', broker: this.opts.index, rtt: this.rtt.take() };
        this.opts.port.postMessage(reply);
      }
    });
    this.publishStats();
    this.schedulePump();
  }

  /** Copies the connections' counters into shared memory for the supervisor. */
  private publishStats(): void {
    const st = this.stats;
    let up = 0, reconnects = 0, inflight = 0, bytes = 0, bytesIn = 0, lost = 0;
    const sent = [0, 0, 0];
    for (const c of this.pool) {
      if (c.up) up++;
      reconnects += c.reconnects;
      inflight += c.inflight;
      bytes += c.bytesOut;
      bytesIn += c.bytesIn;
      lost += c.qos0BytesLost;
      for (let q = 0; q < 3; q++) sent[q] += c.sent[q];
    }
    st.set('connectionsUp', up);
    st.set('connections', this.pool.length);
    st.set('reconnects', reconnects);
    st.set('inflight', inflight);
    st.set('messagesOutQos0', sent[0]);
    st.set('messagesOutQos1', sent[1]);
    st.set('messagesOutQos2', sent[2]);
    st.set('bytesOut', bytes);
    st.set('bytesIn', bytesIn);
    st.set('tooLarge', this.droppedTooLarge);
    st.set('qos0BytesLost', lost);
    const received = this.downlink.deliveredByQos;
    st.set('downlinkInQos0', received[0]);
    st.set('downlinkInQos1', received[1]);
    st.set('downlinkInQos2', received[2]);
    st.set('downlinkUnmatched', this.downlink.dropped);
    st.set('downlinkTooLarge', this.downlink.tooLarge);
    st.set('upstreamFilters', this.downlink.filterCount);
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
    let progressed = true;
    this.stalledOn.length = 0;
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
    for (const c of this.pool) c.flush();
    this.devices?.flush(this.wakeShard);
    this.commitAcks();
    this.downlink.commit(this.wakeShard);
    if (budget === 0) {
      this.schedulePump();
    } else if (this.stalledOn.length > 0) {
      // A connection that was only full for this turn's output is free again after the flush;
      // one that waits for acks, 'drain' or a reconnect calls schedulePump() itself.
      for (let i = 0; i < this.stalledOn.length; i += 2) {
        if ((this.stalledOn[i] as BrokerConnection).canAccept(this.stalledOn[i + 1] as number)) {
          this.schedulePump();
          break;
        }
      }
    } else {
      this.now = Date.now();
      if (budget < BUDGET) this.lastBusy = this.now;
      if (this.now - this.lastBusy <= BUSY_WINDOW_MS) this.nap();
      else this.sleep();
    }
  }

  /** Moves up to `max` records from shard `s`'s ring to the connections and returns the count.
   *  A record whose connection cannot take it now stays at the head of the ring, and the
   *  connection is noted in stalledOn. */
  private take(s: number, max: number): number {
    const ring = this.rings[s];
    const buf = ring.buffer;
    const view = ring.dataView;
    const pool = this.pool;
    const devices = this.devices;
    let n = 0;
    while (n < max) {
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
      const conn = pool[(key + s) % pool.length];
      if (!conn.canAccept(qos)) {
        ring.unreadLast();
        this.stalledOn.push(conn, qos);
        break;
      }
      const topicLen = view.getUint16(at + 2, true);
      const propsLen = view.getUint32(at + 4, true);
      const token = view.getUint32(at + 8, true);
      const topicAt = at + UPLINK_HEADER;
      const propsAt = topicAt + topicLen;
      const payloadAt = propsAt + propsLen;
      const payloadLen = ring.lastLength - UPLINK_HEADER - topicLen - propsLen;
      const ok = conn.publish(qos, (flags & FLAG_RETAIN) !== 0 && this.opts.broker.retain === 'forward', token, s,
        buf, topicAt, topicLen, propsAt, (flags & FLAG_V5) !== 0 ? propsLen : 0, buf, payloadAt, payloadLen, (flags & FLAG_TRACE) !== 0);
      if (!ok) {
        this.droppedTooLarge++;
        this.warnings.warn('too-large', { broker: this.opts.broker.name, size: ring.lastLength, total: this.droppedTooLarge },
          'message larger than the broker accepts: not forwarded (MQTT 5 devices get reason 0x83)');
        // 0x95 is not a valid PUBACK/PUBREC reason; 0x83 (implementation specific error) is.
        if (token !== NO_TOKEN) this.ack(s, token, 0x83);
      }
      n++;
    }
    if (ring.release()) this.shardBells[s].ring();
    return n;
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

  /** Shutdown: send what the rings hold, wait for the broker's acks, then say goodbye. */
  private async drain(): Promise<void> {
    const deadline = Date.now() + this.opts.config.shutdownTimeoutMs / 2;
    const pending = (): number => this.rings.reduce((n, r) => n + r.used(), 0);
    const inflight = (): number => this.pool.reduce((n, c) => n + c.inflight, 0) + (this.devices?.inflight ?? 0);
    while ((pending() > 0 || inflight() > 0) && Date.now() < deadline) {
      this.schedulePump();
      await new Promise((r) => setTimeout(r, 10));
    }
    this.stopped = true;
    if (this.tick) clearInterval(this.tick);
    const m: FromWriter = { t: 'drained', broker: this.opts.broker.name, leftInRings: pending(), leftInflight: inflight() };
    await Promise.all([...this.pool.map((c) => c.close()), this.devices?.close()]);
    this.opts.port.postMessage(m);
  }
}
