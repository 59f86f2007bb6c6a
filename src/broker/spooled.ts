// The writer's path through its spool (FANOUT_SPOOL_DIR): records go from the shards' rings
// into the broker's log as fast as the disk takes them (the ring lets go only once the log has
// them), and from the log to the broker connections as fast as the broker takes them. Device
// acknowledgements wait for the broker (FANOUT_ACK=all / any) or for the fdatasync of the log
// (FANOUT_ACK=local). Topics of FANOUT_CONFLATE_TOPICS keep only their newest message while
// the broker is away.

import * as path from 'node:path';
import type { Logger } from 'pino';
import type { BrokerConfig, Config } from '../config/types';
import type { RingConsumer } from '../ring/spsc';
import { FLAG_RETAIN, FLAG_TRACE, FLAG_V5, NO_TOKEN, UPLINK_HEADER } from '../ring/records';
import { matchTopic } from '../protocol/topic';
import { Spool, type SpoolEntry } from './spool';
import type { BrokerConnection } from './connection';
import type { RateLimitedLog } from '../log';

/** Reason given to a device whose message the spool dropped (MQTT 5 devices see it). */
const RC_QUOTA_EXCEEDED = 0x97;
const RC_IMPLEMENTATION_SPECIFIC = 0x83;
const CURSOR_SAVE_MS = 100;

export interface SpooledHost {
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  readonly pool: BrokerConnection[];
  /** The connections device publishes go on. */
  readonly uplinkPool: BrokerConnection[];
  ack(shard: number, token: number, reason: number): void;
  commitAcks(): void;
  schedulePump(): void;
  /** A connection (and QoS) that could not take the next entry this turn. */
  stalled(conn: BrokerConnection, qos: number): void;
  /** A message larger than the broker takes: counted and logged by the writer. */
  tooLarge(size: number): void;
  /** Whether shard `s`'s token `token` in an entry a failed predecessor appended may be
   *  answered by this writer (see Writer's Recovery). */
  ownsToken(shard: number, token: number): boolean;
  /** A token read from a ring: always this writer's to answer. */
  takeToken(shard: number, token: number): void;
  /** Whether the next record of shard `s`'s ring carries a token of the shard running now (false
   *  for records a failed shard left). Asked before taking the record. */
  tokenFresh(s: number, ring: RingConsumer): boolean;
}

export class SpooledPath {
  readonly spool: Spool;
  /** Durable acknowledgement (FANOUT_ACK=local): tokens answered once the log is synced. */
  private readonly durable: boolean;
  private unsynced: number[] = [];
  private syncing = false;
  private syncAgain = false;
  private syncTimer: NodeJS.Timeout | null = null;
  private lastSync = 0;
  // Conflation: the newest unsent entry per topic while the broker is away, and the entries it
  // replaced (skipped when their turn comes).
  private readonly conflate: readonly string[] | null;
  private readonly latest = new Map<string, number>();
  private readonly superseded = new Set<number>();
  // Replay pacing (FANOUT_PENDING_THROTTLE_MS): what was in the log when a connection came up
  // goes out in batches.
  private replayUntil = -1;
  private replayLeft = 0;
  private replayTimer: NodeJS.Timeout | null = null;
  /** The spool was full on the last take (block): the rings hold the rest. */
  full = false;
  dropped = 0;
  conflated = 0;

  constructor(private readonly host: SpooledHost, private readonly config: Config, private readonly broker: BrokerConfig, private readonly runId: number) {
    const maxBytes = config.spoolMaxBytes;
    this.spool = new Spool({
      dir: path.join(config.spoolDir!, broker.name),
      maxBytes,
      // Small enough that drop-oldest frees a fraction of the bound, large enough to be rare.
      segmentBytes: Math.max(256 * 1024, Math.min(64 * 1024 * 1024, Math.floor(maxBytes / 16))),
      runId,
      log: host.log,
    });
    this.durable = config.ack === 'local';
    this.conflate = config.conflateTopics;
  }

  /** Moves what the rings hold into the log; returns the records taken. */
  take(rings: RingConsumer[], budget: number, wake: (s: number) => void): number {
    const spool = this.spool;
    const away = this.conflate !== null && !this.host.pool.some((c) => c.up);
    let n = 0;
    this.full = false;
    for (let s = 0; s < rings.length && n < budget; s++) {
      const ring = rings[s];
      const buf = ring.buffer;
      while (n < budget) {
        const fresh = this.host.tokenFresh(s, ring);
        const at = ring.next();
        if (at < 0) break;
        const len = ring.lastLength;
        if (!spool.hasRoom(len)) {
          spool.reclaim();
          if (!spool.hasRoom(len) && !this.makeRoom(len)) {
            ring.unreadLast();
            this.full = true;
            break;
          }
        }
        const pos = spool.appendEnd;
        spool.append(buf, at, len, s, fresh ? -1 : NO_TOKEN);
        if (fresh) {
          const token = buf.readUInt32LE(at + 8);
          if (token !== NO_TOKEN) {
            this.host.takeToken(s, token);
            if (this.durable) this.unsynced.push(s, token);
          }
        }
        if (away) this.noteConflation(buf, at, pos);
        n++;
      }
    }
    if (n === 0) return 0;
    // The log has them before the rings let go: a crash of this thread loses nothing.
    spool.flush();
    for (let s = 0; s < rings.length; s++) if (rings[s].release()) wake(s);
    if (this.durable) this.requestSync();
    return n;
  }

  private makeRoom(len: number): boolean {
    if (this.config.spoolOverflow !== 'drop-oldest') return false;
    const before = this.dropped;
    while (!this.spool.hasRoom(len)) {
      if (!this.spool.dropOldest((e) => this.drop(e))) return false;
    }
    const lost = this.dropped - before;
    this.host.warnings.warn(`spool-drop-${this.broker.name}`, { broker: this.broker.name, dropped: lost, total: this.dropped, maxBytes: this.config.spoolMaxBytes },
      'spool full: oldest messages dropped (FANOUT_SPOOL_MAX_BYTES, FANOUT_SPOOL_OVERFLOW=drop-oldest)');
    return true;
  }

  /** An unsent entry the spool drops: the device waiting on it is answered. */
  private drop(e: SpoolEntry): void {
    this.dropped++;
    this.forget(e);
    const token = this.tokenOf(e);
    if (token !== NO_TOKEN && !this.durable) this.host.ack(e.shard, token, RC_QUOTA_EXCEEDED);
  }

  private tokenOf(e: SpoolEntry): number {
    if (e.runId !== this.runId || e.pos < this.staleBefore[e.shard]) return NO_TOKEN;
    const token = e.buf.readUInt32LE(e.at + 8);
    if (token === NO_TOKEN || e.pos >= this.inherited) return token;
    return this.host.ownsToken(e.shard, token) ? token : NO_TOKEN;
  }

  /** Entries before this position were appended by a failed predecessor (see tokenOf). */
  private inherited = 0;

  private noteConflation(buf: Buffer, at: number, pos: number): void {
    const topic = buf.toString('utf8', at + UPLINK_HEADER, at + UPLINK_HEADER + buf.readUInt16LE(at + 2));
    if (!this.conflate!.some((f) => matchTopic(f, topic))) return;
    const previous = this.latest.get(topic);
    if (previous !== undefined) this.superseded.add(previous);
    this.latest.set(topic, pos);
  }

  private forget(e: SpoolEntry): void {
    if (this.latest.size === 0) return;
    this.superseded.delete(e.pos);
    const topic = e.buf.toString('utf8', e.at + UPLINK_HEADER, e.at + UPLINK_HEADER + e.buf.readUInt16LE(e.at + 2));
    if (this.latest.get(topic) === e.pos) this.latest.delete(topic);
  }

  /** Entries of shard s before this log position carry tokens of a shard that failed. */
  private readonly staleBefore: number[] = [];

  /** Shard `s` was replaced: nothing appended so far is answered to the new one. */
  resetShard(s: number): void {
    this.staleBefore[s] = this.spool.appendEnd;
    const keep: number[] = [];
    for (let i = 0; i < this.unsynced.length; i += 2) if (this.unsynced[i] !== s) keep.push(this.unsynced[i], this.unsynced[i + 1]);
    this.unsynced = keep;
  }

  /** A connection came up: what the log holds now is replayed in paced batches. */
  onConnected(): void {
    if (this.config.pendingThrottleMs === 0 || this.spool.unread === 0) return;
    this.replayUntil = this.spool.appendEnd;
    this.replayLeft = this.replayBatch();
  }

  private replayBatch(): number {
    return 256 * this.host.pool.length;
  }

  /** Sends entries from the log while their connections take them; returns the entries sent. */
  feed(budget: number): number {
    const spool = this.spool;
    const pool = this.host.uplinkPool;
    const forward = this.broker.retain === 'forward';
    let n = 0;
    while (n < budget) {
      const e = spool.peek();
      if (e === null) break;
      if (this.superseded.has(e.pos)) {
        this.superseded.delete(e.pos);
        this.conflated++;
        const token = this.tokenOf(e);
        if (token !== NO_TOKEN && !this.durable) this.host.ack(e.shard, token, 0);
        spool.done(spool.advance());
        continue;
      }
      if (this.replayUntil >= 0) {
        if (e.pos >= this.replayUntil) this.replayUntil = -1;
        else if (this.replayLeft === 0) {
          this.paceReplay();
          break;
        }
      }
      const buf = e.buf;
      const at = e.at;
      const flags = buf[at + 1];
      const qos = flags & 3;
      const s = e.shard;
      const conn = pool[(buf.readUInt32LE(at + 12) + s) % pool.length];
      if (!conn.canAccept(qos)) {
        this.host.stalled(conn, qos);
        break;
      }
      if (this.replayUntil >= 0) this.replayLeft--;
      this.forget(e);
      const topicLen = buf.readUInt16LE(at + 2);
      const propsLen = buf.readUInt32LE(at + 4);
      const token = this.durable ? NO_TOKEN : this.tokenOf(e);
      const topicAt = at + UPLINK_HEADER;
      const propsAt = topicAt + topicLen;
      const payloadAt = propsAt + propsLen;
      const payloadLen = e.len - UPLINK_HEADER - topicLen - propsLen;
      const len = e.len;
      const seq = spool.advance();
      const ok = conn.publish(qos, (flags & FLAG_RETAIN) !== 0 && forward, token, s, buf, topicAt, topicLen, propsAt,
        (flags & FLAG_V5) !== 0 ? propsLen : 0, buf, payloadAt, payloadLen, (flags & FLAG_TRACE) !== 0, seq);
      if (!ok) {
        this.host.tooLarge(len);
        if (token !== NO_TOKEN) this.host.ack(s, token, RC_IMPLEMENTATION_SPECIFIC);
        spool.done(seq);
      }
      n++;
    }
    return n;
  }

  private paceReplay(): void {
    if (this.replayTimer !== null) return;
    this.replayTimer = setTimeout(() => {
      this.replayTimer = null;
      this.replayLeft = this.replayBatch();
      this.host.schedulePump();
    }, this.config.pendingThrottleMs);
  }

  done(seq: number): void {
    this.spool.done(seq);
  }

  /** FANOUT_ACK=local: the tokens of what was appended are answered once it is on disk. */
  private requestSync(): void {
    if (this.unsynced.length === 0) return;
    const wait = this.config.spoolFsyncMs;
    if (wait < 0) {
      this.answerUnsynced(this.takeUnsynced());
      return;
    }
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    const due = this.lastSync + wait - Date.now();
    if (due > 0) {
      this.syncTimer ??= setTimeout(() => {
        this.syncTimer = null;
        this.requestSync();
      }, due);
      return;
    }
    this.syncing = true;
    const tokens = this.takeUnsynced();
    this.spool.sync((err) => {
      this.syncing = false;
      this.lastSync = Date.now();
      if (err !== null) {
        // The disk refused: nothing is acknowledged; try again at the next batch.
        this.host.log.error({ broker: this.broker.name, err: err.message }, 'spool fdatasync failed; devices wait');
        this.unsynced = tokens.concat(this.unsynced);
      } else {
        this.answerUnsynced(tokens);
      }
      if (this.syncAgain || this.unsynced.length > 0) {
        this.syncAgain = false;
        this.requestSync();
      }
    });
  }

  private takeUnsynced(): number[] {
    const t = this.unsynced;
    this.unsynced = [];
    return t;
  }

  private answerUnsynced(tokens: number[]): void {
    for (let i = 0; i < tokens.length; i += 2) this.host.ack(tokens[i], tokens[i + 1], 0);
    this.host.commitAcks();
  }

  /** Nothing left to send or to finish. */
  get idle(): boolean {
    return this.spool.unread === 0 && this.spool.outstanding === 0;
  }

  private cursorTimer: NodeJS.Timeout | null = null;

  /** `recovering`: this writer replaces one that failed; what the log holds is inherited. */
  open(recovering: boolean): void {
    this.spool.open();
    if (recovering) this.inherited = this.spool.appendEnd;
    // The saved cursor is where a restart replays from: what the broker finished after it is
    // sent again (QoS 1 duplicates), so it is saved often.
    this.cursorTimer = setInterval(() => this.spool.saveCursor(), CURSOR_SAVE_MS);
  }

  close(): void {
    if (this.cursorTimer !== null) clearInterval(this.cursorTimer);
    if (this.syncTimer !== null) clearTimeout(this.syncTimer);
    if (this.replayTimer !== null) clearTimeout(this.replayTimer);
    this.spool.close();
  }
}
