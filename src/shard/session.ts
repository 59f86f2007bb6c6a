// A device's session on its shard: its subscriptions and the messages on their way to it. It
// outlives the connection when the device asked for a persistent session (MQTT 3.1.1 clean
// session 0, MQTT 5 session expiry > 0): QoS 1/2 messages then queue while the device is away
// and the unacknowledged ones are sent again, with DUP, when it comes back [MQTT-4.4.0-1].

import type { Sub } from './subscriptions';
import { OwnPublishes } from './no-local';
import type { AclChecker } from '../auth/acl';
import type { SessionJournal } from '../session-store/types';

/** A message from a broker, as one shard keeps it: topic | properties | payload in `body`. */
export class StoredMessage {
  constructor(
    public body: Buffer,
    public start: number,
    public topicLen: number,
    public propsLen: number,
    public payloadLen: number,
    public topic: string,
    /** Expiry time (ms since the epoch), 0 when the message does not expire. */
    public expiresAt: number,
  ) {}

  get propsStart(): number {
    return this.start + this.topicLen;
  }

  get payloadStart(): number {
    return this.start + this.topicLen + this.propsLen;
  }

  /** A private copy, for a message that must outlive the ring record it was read from. */
  keep(): StoredMessage {
    const len = this.topicLen + this.propsLen + this.payloadLen;
    const body = Buffer.allocUnsafe(len);
    body.set(this.body.subarray(this.start, this.start + len));
    return new StoredMessage(body, 0, this.topicLen, this.propsLen, this.payloadLen, this.topic, this.expiresAt);
  }
}

/** One delivery to one session: the message and how this session gets it. */
export interface Outgoing {
  msg: StoredMessage;
  qos: number;
  retain: boolean;
  subIds: number[] | null;
  /** 1: PUBLISH sent, waiting for PUBACK / PUBREC; 2: PUBREL sent, waiting for PUBCOMP. */
  stage: number;
  /** Broker index * 2^32 + the writer's sequence number: the same message seen twice while a
   *  session moves between shards has the same origin. 0 when unknown. */
  origin: number;
  /** Its field in the session store (FANOUT_SESSION_STORE), 0 until it is recorded there. */
  key?: number;
  /** Recorded in the store at least once (a drop must then delete it there). */
  stored?: boolean;
}

/** A session in transit between shards (structured-clone friendly). */
export interface SessionState {
  clientId: string;
  expiryMs: number;
  version: number;
  subs: { topic: string; qos: number; nl: boolean; rap: boolean; subId: number }[];
  pending: PendingState[];
  /** The store's record of the session ('' when none) and its last message key. */
  storeId?: string;
  storeSeq?: number;
}

export interface PendingState {
  /** Packet id for a delivery in flight, 0 for a queued one. */
  id: number;
  stage: number;
  qos: number;
  retain: boolean;
  subIds: number[] | null;
  origin: number;
  topic: string;
  /** topic | properties | payload, in a buffer of its own. */
  body: Uint8Array;
  topicLen: number;
  propsLen: number;
  expiresAt: number;
  /** Outgoing.key: where the store has it (0: not recorded). */
  key: number;
}

function pendingState(id: number, o: Outgoing): PendingState {
  const m = o.msg;
  const len = m.topicLen + m.propsLen + m.payloadLen;
  return {
    id, stage: o.stage, qos: o.qos, retain: o.retain, subIds: o.subIds, origin: o.origin, topic: m.topic,
    body: Uint8Array.prototype.slice.call(m.body, m.start, m.start + len), topicLen: m.topicLen, propsLen: m.propsLen,
    expiresAt: m.expiresAt, key: o.key ?? 0,
  };
}

export function outgoingOf(p: PendingState): Outgoing {
  const body = Buffer.from(p.body.buffer, p.body.byteOffset, p.body.length);
  const msg = new StoredMessage(body, 0, p.topicLen, p.propsLen, body.length - p.topicLen - p.propsLen, p.topic, p.expiresAt);
  return { msg, qos: p.qos, retain: p.retain, subIds: p.subIds, stage: p.stage, origin: p.origin, key: p.key, stored: p.key !== 0 };
}

/** What a session needs from the connection it is attached to. */
export interface SessionLink {
  readonly version: number;
  /** Unacknowledged QoS 1/2 deliveries the device accepts (its Receive Maximum). */
  readonly receiveMaximum: number;
  /** Encodes a PUBLISH to the device; false when it exceeds the device's Maximum Packet Size. */
  writePublish(out: Outgoing, id: number, dup: boolean, now: number): boolean;
  writePubrel(id: number): void;
}

export interface SessionLimits {
  readonly maxQueued: number;
  readonly dropOldest: boolean;
  /** FANOUT_QUEUE_OVERFLOW=block: a connected device's full queue holds the downlink instead. */
  readonly block: boolean;
  /** Counts a message dropped for `reason`. */
  dropped(reason: 'queue-full' | 'expired' | 'too-large' | 'offline-qos0', session: Session): void;
  /** FANOUT_QUEUE_OVERFLOW=block: the downlink has waited `ms` for this device's full queue. */
  holding?(session: Session, ms: number): void;
}

export class Session {
  link: SessionLink | null = null;
  /** Id of the connection that last held the session. */
  lastConn = 0;
  /** How long the session outlives its connection, in ms; 0 ends it with the connection. */
  expiryMs = 0;
  /** When an offline session expires (ms since the epoch). */
  expiresAt = 0;
  /** FANOUT_ACL_FILE's checker of the connection that last held the session (read access). */
  acl: AclChecker | null = null;
  /** Protocol level of the device's last CONNECT. */
  version = 4;
  /** Ended here (expired, replaced, or moved to another shard): counted out once. */
  ended = false;
  /** When the device last acknowledged a delivery (or connected), ms since the epoch. */
  lastAck = 0;
  /** FANOUT_QUEUE_OVERFLOW=block gave up waiting for this session's full queue: until it has
   *  drained to half, its queue overflows instead of holding the downlink again. */
  overflowing = false;
  readonly subs = new Map<string, Sub>();
  readonly inflight = new Map<number, Outgoing>();
  private queue: Outgoing[] = [];
  private head = 0;
  private nextId = 1;

  // Per-delivery scratch for the shard's matching: one copy per session at the highest QoS of
  // its matching subscriptions, with all their identifiers [MQTT-3.3.4-2, MQTT-3.3.4-3].
  mark = 0;
  dQos = 0;
  dRetain = false;
  dSubIds: number[] = [];
  /** While the session arrives from another shard: deliveries wait here, in order, until the
   *  messages the old shard still had are in. */
  importing: Outgoing[] | null = null;
  /** The old shard's export this session is the import of (its tail carries the same id). */
  importId = 0;
  /** FANOUT_SESSION_STORE: where this session's changes are recorded (null: nowhere). */
  journal: SessionJournal | null = null;
  /** The last message key given in the store, and the id of the record this session writes
   *  ('' until it starts one). */
  storeSeq = 0;
  storeId = '';
  /** Subscriptions with No Local, and the device's recent publishes while there are any. */
  noLocalSubs = 0;
  own: OwnPublishes | null = null;
  ownMark = 0;
  ownSkip = false;

  constructor(readonly clientId: string) {}

  get queued(): number {
    return this.queue.length - this.head;
  }

  /** Passes one message on: now when possible, else into the queue (QoS 1/2 only). */
  deliver(out: Outgoing, limits: SessionLimits, now: number): void {
    if (this.importing !== null) {
      if (out.qos > 0) this.importing.push(out);
      else limits.dropped('offline-qos0', this);
      return;
    }
    const link = this.link;
    if (out.qos === 0) {
      if (link === null) limits.dropped('offline-qos0', this);
      else if (!link.writePublish(out, 0, false, now)) limits.dropped('too-large', this);
      return;
    }
    if (link !== null && this.queued === 0 && this.inflight.size < link.receiveMaximum) {
      this.journal?.put(this, out);
      this.send(link, out, now, limits);
      return;
    }
    if (this.queued >= limits.maxQueued) {
      limits.dropped('queue-full', this);
      if (!limits.dropOldest) return;
      const oldest = this.queue[this.head];
      this.queue[this.head++] = undefined as unknown as Outgoing;
      this.journal?.drop(this, oldest);
    }
    this.queue.push(out);
    this.journal?.put(this, out);
  }

  private send(link: SessionLink, out: Outgoing, now: number, limits: SessionLimits): void {
    if (out.msg.expiresAt !== 0 && out.msg.expiresAt <= now) {
      limits.dropped('expired', this);
      this.journal?.drop(this, out);
      return;
    }
    const id = this.allocId();
    out.stage = 1;
    if (!link.writePublish(out, id, false, now)) {
      // Too large for this device: dropped as the spec says, not retried [MQTT-3.1.2-25].
      limits.dropped('too-large', this);
      this.journal?.drop(this, out);
      return;
    }
    this.inflight.set(id, out);
    this.journal?.flight(this, out, id);
  }

  private allocId(): number {
    let id = this.nextId;
    while (this.inflight.has(id)) id = id === 65535 ? 1 : id + 1;
    this.nextId = id === 65535 ? 1 : id + 1;
    return id;
  }

  /** Sends queued messages while the device's window has room. */
  pump(limits: SessionLimits, now: number): void {
    const link = this.link;
    if (link === null) return;
    while (this.head < this.queue.length && this.inflight.size < link.receiveMaximum) {
      const out = this.queue[this.head];
      this.queue[this.head++] = undefined as unknown as Outgoing;
      this.send(link, out, now, limits);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  /** PUBACK / PUBREC / PUBCOMP from the device. Returns false for an unknown packet id. */
  acked(type: 'puback' | 'pubrec' | 'pubcomp', id: number, reason: number): boolean {
    const out = this.inflight.get(id);
    if (out === undefined) return false;
    this.lastAck = Date.now();
    if (type === 'pubrec') {
      if (out.stage !== 1 || out.qos !== 2) return false;
      if (reason >= 0x80) {
        this.inflight.delete(id);
        this.journal?.drop(this, out);
        return true;
      }
      out.stage = 2;
      this.journal?.flight(this, out, id);
      this.link?.writePubrel(id);
      return true;
    }
    if ((type === 'puback' && (out.qos !== 1 || out.stage !== 1)) || (type === 'pubcomp' && out.stage !== 2)) return false;
    this.inflight.delete(id);
    this.journal?.drop(this, out);
    return true;
  }

  /** A connection takes the session: unacknowledged deliveries go again, in order, then the queue. */
  attach(link: SessionLink, connId: number, limits: SessionLimits, now: number): void {
    this.link = link;
    this.lastConn = connId;
    this.lastAck = now;
    this.overflowing = false;
    for (const [id, out] of this.inflight) {
      if (out.stage === 2) link.writePubrel(id);
      else if (!link.writePublish(out, id, true, now)) {
        this.inflight.delete(id);
        limits.dropped('too-large', this);
        this.journal?.drop(this, out);
      }
    }
    this.pump(limits, now);
  }

  detach(now: number): void {
    this.link = null;
    this.expiresAt = now + this.expiryMs;
  }

  /** Takes out everything on its way to the device, for moving the session to another shard:
   *  deliveries in flight keep their packet ids (the device may hold a PUBREC'd one). */
  takePending(): PendingState[] {
    const out: PendingState[] = [];
    for (const [id, o] of this.inflight) out.push(pendingState(id, o));
    for (let i = this.head; i < this.queue.length; i++) out.push(pendingState(0, this.queue[i]));
    this.inflight.clear();
    this.queue = [];
    this.head = 0;
    return out;
  }

  /** Puts back what takePending() gave on the old shard. */
  restore(pending: PendingState[]): void {
    for (const p of pending) {
      const o = outgoingOf(p);
      if (p.id !== 0) this.inflight.set(p.id, o);
      else this.queue.push(o);
      if (p.key > this.storeSeq) this.storeSeq = p.key;
    }
  }

  /** The old shard's last messages arrived: they go first, then what came here meanwhile
   *  (less what both shards received). */
  finishImport(tail: PendingState[], limits: SessionLimits, now: number): void {
    const held = this.importing ?? [];
    this.importing = null;
    const seen = new Set<number>();
    for (const o of held) if (o.origin !== 0) seen.add(o.origin);
    for (const p of tail) if (p.origin === 0 || !seen.has(p.origin)) this.deliver(outgoingOf(p), limits, now);
    for (const o of held) this.deliver(o, limits, now);
  }
}
