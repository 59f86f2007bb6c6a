// The Redis session store, a shard's side: write-behind of its persistent sessions' changes.
// Changes are collected per client id and written every FLUSH_MS in one fenced script call per
// session (src/session-store/scripts.ts), pipelined on the shard's own connection, never awaited
// by the device path. A message that comes and is acknowledged within one interval never reaches
// Redis at all. What an instance had not written when it died (at most FLUSH_MS of changes) is
// lost from the record: a message delivered again, or one acknowledged being sent again, at
// QoS 1 a duplicate the protocol allows.

import Redis from 'ioredis';
import type { Logger } from 'pino';
import type { Outgoing, Session } from '../shard/session';
import type { Sub } from '../shard/subscriptions';
import { RateLimitedLog } from '../log';
import { encodeMessage, encodeMeta, encodeSub } from './codec';
import { REMOVE, SAVE } from './scripts';
import { newRecordId, ownerKey, sessionKey, type SessionJournal, type SessionStore } from './types';

const FLUSH_MS = 5;
/** How long closing waits for the last writes. */
const CLOSE_WAIT_MS = 2000;
/** Field/value pairs per script call (Lua's unpack has a stack limit). */
const MAX_PAIRS = 2000;

interface Batch {
  /** The record id the writes belong to. */
  record: string;
  /** The record starts anew (DEL first). */
  reset: boolean;
  /** Only delete the record (a session that ended, with nothing after it). */
  remove: boolean;
  ttlMs: number;
  readonly set: Map<string, Buffer | string>;
  readonly del: Set<string>;
  /** Messages whose fields this batch writes: recorded once it is sent. */
  readonly outs: Set<Outgoing>;
}

type Scripted = Redis & {
  fanoutSave(...args: (string | Buffer | number)[]): Promise<number>;
  fanoutRemove(...args: string[]): Promise<number>;
};

export function redisClient(url: string, name: string): Redis {
  return new Redis(url, { connectionName: name, maxRetriesPerRequest: null, enableAutoPipelining: true, lazyConnect: false });
}

export class RedisStore implements SessionStore, SessionJournal {
  readonly shared = true;
  private readonly redis: Scripted;
  private batches = new Map<string, Batch>();
  private timer: NodeJS.Timeout | null = null;
  private readonly writes = new Set<Promise<unknown>>();
  private readonly warnings: RateLimitedLog;

  constructor(url: string, private readonly instance: string, private readonly log: Logger, name: string) {
    this.redis = redisClient(url, name) as Scripted;
    this.redis.defineCommand('fanoutSave', { numberOfKeys: 2, lua: SAVE });
    this.redis.defineCommand('fanoutRemove', { numberOfKeys: 2, lua: REMOVE });
    this.warnings = new RateLimitedLog(log);
    this.redis.on('error', (err: Error) => this.warnings.warn('redis', { err: err.message }, 'session store (Redis) error; writes are retried once it is back'));
  }

  journal(): SessionJournal {
    return this;
  }

  /** The batch of `session`'s record, the record started if the session has none yet. */
  private batch(session: Session): Batch {
    let b = this.batches.get(session.clientId);
    const fresh = session.storeId === '';
    if (fresh) session.storeId = newRecordId();
    if (b === undefined || b.record !== session.storeId) {
      b = { record: session.storeId, reset: fresh, remove: false, ttlMs: 0, set: new Map(), del: new Set(), outs: new Set() };
      this.batches.set(session.clientId, b);
    }
    b.remove = false;
    b.ttlMs = Math.max(1000, session.expiryMs);
    this.schedule();
    return b;
  }

  put(session: Session, out: Outgoing): void {
    const b = this.batch(session);
    if (!out.key) out.key = ++session.storeSeq;
    b.set.set(`q:${out.key}`, encodeMessage(out));
    b.outs.add(out);
  }

  flight(session: Session, out: Outgoing, id: number): void {
    if (!out.key) this.put(session, out);
    const b = this.batch(session);
    b.set.set(`f:${out.key}`, `${id}:${out.stage}`);
    b.del.delete(`f:${out.key}`);
  }

  drop(session: Session, out: Outgoing): void {
    if (!out.key) return;
    const b = this.batch(session);
    const q = `q:${out.key}`;
    const f = `f:${out.key}`;
    b.set.delete(q);
    b.set.delete(f);
    b.outs.delete(out);
    if (out.stored) {
      b.del.add(q);
      b.del.add(f);
    }
  }

  sub(session: Session, key: string, sub: Sub | null): void {
    const b = this.batch(session);
    const field = `s:${key}`;
    if (sub === null) {
      b.set.delete(field);
      b.del.add(field);
    } else {
      b.set.set(field, encodeSub(sub.qos, sub.noLocal, sub.retainAsPublished, sub.subId));
      b.del.delete(field);
    }
  }

  meta(session: Session): void {
    this.batch(session).set.set('m', encodeMeta(session.expiryMs, session.version));
  }

  remove(session: Session): void {
    if (session.storeId === '') return;
    const b: Batch = { record: session.storeId, reset: false, remove: true, ttlMs: 0, set: new Map(), del: new Set(), outs: new Set() };
    this.batches.set(session.clientId, b);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer === null) this.timer = setTimeout(() => this.write(), FLUSH_MS);
  }

  /** Sends every batch: one script call per session, pipelined by the client. */
  private write(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const batches = this.batches;
    if (batches.size === 0) return;
    this.batches = new Map();
    for (const [clientId, b] of batches) {
      const keys = [sessionKey(clientId), ownerKey(clientId)];
      if (b.remove) {
        this.track(this.redis.fanoutRemove(...keys, this.instance, b.record));
        continue;
      }
      for (const out of b.outs) out.stored = true;
      const pairs = [...b.set];
      const dels = [...b.del];
      let reset = b.reset;
      do {
        const chunk = pairs.splice(0, MAX_PAIRS);
        const delChunk = pairs.length === 0 ? dels.splice(0, MAX_PAIRS) : [];
        const args: (string | Buffer | number)[] = [...keys, this.instance, b.ttlMs, reset ? '1' : '0', b.record, chunk.length];
        for (const [f, v] of chunk) args.push(f, v);
        args.push(...delChunk);
        this.track(this.redis.fanoutSave(...args));
        reset = false;
      } while (pairs.length > 0 || dels.length > 0);
    }
  }

  private track(p: Promise<number>): void {
    // A write refused by its fence (0) belongs to a session that moved on: nothing to do.
    const w = p.then(() => undefined, (err: Error) => {
      this.warnings.warn('redis-write', { err: err.message }, 'session store write failed');
    });
    this.writes.add(w);
    void w.finally(() => this.writes.delete(w));
  }

  async flush(): Promise<void> {
    this.write();
    await Promise.all([...this.writes]);
  }

  async close(): Promise<void> {
    // Redis away: what is not written by then stays unwritten, shutdown does not wait for it.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.flush(), new Promise<void>((resolve) => { timer = setTimeout(resolve, CLOSE_WAIT_MS); })]);
    clearTimeout(timer);
    this.warnings.flush(true);
    try {
      await this.redis.quit();
    } catch {
      this.redis.disconnect();
    }
  }
}
