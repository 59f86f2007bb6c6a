// Where persistent device sessions live beyond the shard that holds them. The shards keep every
// session in memory and serve it from there; a store only records what changes (write-behind,
// batched per event-loop turn, never awaited on the hot path), so that another instance can
// resume a session whose instance died or handed it over. Reads happen only at CONNECT with
// clean start 0, and they are the supervisor's (src/cluster/), not the shards'.
//
// memory (the default): nothing is recorded; sessions move between the shards of one instance
// by export (src/shard/shard.ts) and end with the instance.
// redis (FANOUT_SESSION_STORE=redis://...): every persistent session is a hash in Redis, its
// writes fenced by the client id's ownership key (src/session-store/redis.ts).

import type { Outgoing, Session } from '../shard/session';
import type { Sub } from '../shard/subscriptions';

/** What a session tells its store as it changes (only sessions that outlive their connection). */
export interface SessionJournal {
  /** A QoS 1/2 message entered the session (queued or sent): gives it a key if it has none. */
  put(session: Session, out: Outgoing): void;
  /** A delivery's packet id or stage changed (sent, PUBREC'd). */
  flight(session: Session, out: Outgoing, id: number): void;
  /** A message left the session (acknowledged, refused, dropped, expired). */
  drop(session: Session, out: Outgoing): void;
  /** A subscription was made (sub) or removed (null). */
  sub(session: Session, key: string, sub: Sub | null): void;
  /** Expiry or protocol level changed. */
  meta(session: Session): void;
}

export interface SessionStore {
  /** True when sessions outlive this instance (another instance may resume them). */
  readonly shared: boolean;
  /** The journal a persistent session writes to; null when nothing is recorded. */
  journal(): SessionJournal | null;
  /** The session ended (expired, replaced by a clean one): its record goes too, unless another
   *  session object has started a record of its own for the client id since. */
  remove(session: Session): void;
  /** Resolves once everything recorded so far is written (before a session leaves this shard,
   *  and at shutdown). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Redis key names, shared by the shards' writers and the supervisor's ownership. */
/** A new record id: a session object's writes apply only to the record it started (or resumed),
 *  so a late write of a session that ended on one shard cannot touch its successor's. */
export function newRecordId(): string {
  return `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
}

export const KEY_PREFIX = 'fanout:';
export const sessionKey = (clientId: string): string => `${KEY_PREFIX}s:${clientId}`;
export const ownerKey = (clientId: string): string => `${KEY_PREFIX}own:${clientId}`;
export const aliveKey = (instance: string): string => `${KEY_PREFIX}alive:${instance}`;
export const controlChannel = (instance: string): string => `${KEY_PREFIX}ctl:${instance}`;
