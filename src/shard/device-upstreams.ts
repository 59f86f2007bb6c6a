// Per-device upstream mode, a shard's side: its devices' own sessions at the brokers whose mode
// is per-device. A device's CONNECT asks each such broker's writer to open the device's session
// there (dev-open) and is answered once the brokers it needs have accepted: every one with
// FANOUT_ACK=all, one with any or local. A broker that refuses the device refuses it here too,
// with the matching CONNACK code. The device's subscriptions at those brokers go to its own
// sessions (one upstream subscription per distinct filter of the device, each with an id the
// broker names back), what those sessions receive comes back addressed to the device
// (REC_DELIVER_DEVICE), and when the device leaves its end goes down its uplink rings behind its
// last publishes (REC_DEVICE_CLOSE): clean, so the broker drops the will, or lost, so it
// publishes it.

import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { IConnectPacket } from 'mqtt-packet';
import { ackQuorum, type Config } from '../config/types';
import { perDeviceBrokers } from '../config/upstream';
import type { DeviceSub, DevicesToShard, ShardToDevices } from '../broker/device-protocol';
import { refusalFor } from '../protocol/refusal';
import { matchTopic } from '../protocol/topic';
import { CLOSE_CLEAN, CLOSE_LOST, CLOSE_QUIET } from '../ring/records';
import * as C from '../protocol/constants';
import type { RateLimitedLog } from '../log';
import type { DeviceConnection } from './connection';
import type { Session, StoredMessage } from './session';
import type { Sub } from './subscriptions';
import type { Uplink } from './uplink';

const MAX_SUB_ID = 268435455;
/** A device that left still gets, in its session, what its upstream sessions had on the way. */
const GONE_MS = 30_000;
const WAITING = 0;
const OPEN = 1;
const FAILED = 2;

/** The answer to a device's CONNECT: accepted (with the session-present flag to send) or refused. */
export type UpstreamAnswer = { ok: true; present: boolean } | { ok: false; code: number };

/** One upstream filter of a device's session at one broker, and the device subscriptions it serves. */
interface Hold {
  readonly id: number;
  readonly broker: number;
  readonly filter: string;
  readonly subs: Set<Sub>;
  readonly counts: [number, number, number];
}

/** A session's upstream filters at the per-device brokers. */
interface SessionHolds {
  readonly byKey: Map<string, Hold>;
  readonly byId: Map<number, Hold>;
  nextId: number;
}

interface Link {
  readonly conn: DeviceConnection;
  readonly session: Session;
  readonly proxyPresent: boolean;
  readonly clean: boolean;
  /** Per broker: WAITING, OPEN, FAILED, or -1 (not a per-device broker). */
  readonly states: Int8Array;
  readonly present: boolean[];
  done: ((a: UpstreamAnswer) => void) | null;
  /** The CONNECT was accepted: only then may the device's end leave a will to publish. */
  accepted: boolean;
  timer: NodeJS.Timeout | null;
  /** Brokers whose writers hold records of the device (dev-hold), as bits. */
  held: number;
  /** Subscribe requests waiting for their answers. */
  readonly reqs: Set<number>;
}

export interface DeviceUpstreamsContext {
  readonly index: number;
  readonly config: Config;
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  readonly uplink: Uplink;
  /** The connection's reason to pause may be gone. */
  wake(conn: DeviceConnection): void;
  /** Runs the shard's end of turn soon (ring commits, control messages). */
  schedule(): void;
}

export class DeviceUpstreams {
  readonly perDevice: boolean[];
  private readonly v5: boolean[];
  private readonly links = new Map<number, Link>();
  private readonly linkOfSession = new WeakMap<Session, Link>();
  private readonly gone = new Map<number, { session: Session; at: number }>();
  private readonly holds = new WeakMap<Session, SessionHolds>();
  private readonly waiters = new Map<number, { link: Link; answers: ((code: number) => void)[] }>();
  private nextReq = 1;
  /** This turn's subscription changes, per link and broker. */
  private readonly ops = new Map<Link, { broker: number; subs: DeviceSub[]; answers: ((code: number) => void)[]; unsubs: string[] }[]>();
  private pendingCloses: { broker: number; key: number; how: number; reason: number; expiry: number }[] = [];
  private outbox: ShardToDevices[][];

  constructor(private readonly ctx: DeviceUpstreamsContext, private readonly ports: MessagePort[]) {
    this.perDevice = perDeviceBrokers(ctx.config);
    this.v5 = ctx.config.brokers.map((b) => b.protocolVersion === 5);
    this.outbox = ports.map(() => []);
    ports.forEach((p, b) => this.listen(p, b));
  }

  private listen(p: MessagePort, b: number): void {
    if (!this.perDevice[b]) return;
    p.on('message', (m: DevicesToShard) => {
      if (m.t === 'dev-batch') for (const one of m.ms) this.onWriter(one);
      else this.onWriter(m);
      // A CONNACK, SUBACK or DISCONNECT written for it goes out with the shard's next turn.
      this.ctx.schedule();
    });
  }

  /** Writer `b` failed and was restarted: the devices' sessions at that broker went with it.
   *  Its new channel replaces the old one; returns the devices that had a session there, which
   *  the shard closes so that they reconnect and get new ones. */
  replaceWriter(b: number, port: MessagePort): DeviceConnection[] {
    this.ports[b] = port;
    this.listen(port, b);
    this.outbox[b] = [];
    if (!this.perDevice[b]) return [];
    const out: DeviceConnection[] = [];
    for (const link of this.links.values()) if (link.states[b] !== -1) out.push(link.conn);
    return out;
  }

  /** Opens the device's sessions; `done` gets the answer for its CONNECT (never called when the
   *  device leaves first). */
  open(conn: DeviceConnection, session: Session, proxyPresent: boolean, p: IConnectPacket, done: (a: UpstreamAnswer) => void): void {
    const n = this.perDevice.length;
    const link: Link = {
      conn, session, proxyPresent, clean: p.clean !== false, states: new Int8Array(n).fill(-1), present: new Array<boolean>(n).fill(false),
      done, accepted: false, timer: null, held: 0, reqs: new Set(),
    };
    this.links.set(conn.id, link);
    this.linkOfSession.set(session, link);
    this.gone.delete(conn.id);
    const props = p.properties;
    for (let b = 0; b < n; b++) {
      if (!this.perDevice[b]) continue;
      link.states[b] = WAITING;
      const m: ShardToDevices = {
        t: 'dev-open', shard: this.ctx.index, key: conn.id, clientId: conn.clientId, username: conn.username,
        password: p.password === undefined ? null : new Uint8Array(Buffer.from(p.password)), version: conn.version, clean: link.clean,
        expiryS: Math.floor(session.expiryMs / 1000),
        will: p.will ? { topic: p.will.topic, payload: new Uint8Array(Buffer.from(p.will.payload)), qos: p.will.qos ?? 0, retain: !!p.will.retain, properties: p.will.properties as Record<string, unknown> | undefined } : null,
        maxPacketSize: props?.maximumPacketSize ?? 0, userProperties: (props?.userProperties as Record<string, string | string[]> | undefined) ?? null,
        trace: conn.traced, subs: this.subsAt(session, b),
      };
      this.post(b, m);
    }
    // The writers time the sessions out themselves; this is the safety net.
    link.timer = setTimeout(() => this.answer(link, { ok: false, code: conn.version === 5 ? C.RC_SERVER_UNAVAILABLE : C.CONNACK_V4_UNAVAILABLE }),
      this.ctx.config.upstreamConnectTimeoutMs + 2000);
  }

  /** What the device's session holds at broker `b`, for the broker to make again if it lost it. */
  private subsAt(session: Session, b: number): DeviceSub[] {
    const st = this.holds.get(session);
    if (st === undefined) return [];
    const out: DeviceSub[] = [];
    for (const h of st.byKey.values()) if (h.broker === b) out.push(this.deviceSub(h, b, 2));
    return out;
  }

  private deviceSub(h: Hold, b: number, rh: number): DeviceSub {
    let nl = false;
    let rap = false;
    for (const s of h.subs) {
      nl ||= s.noLocal;
      rap ||= s.retainAsPublished;
    }
    // MQTT 3.1.1 brokers know neither: the shard filters the device's own publishes (No Local).
    const v5 = this.v5[b];
    return { filter: h.filter, qos: maxQos(h), nl: v5 && nl && !h.filter.startsWith('$share/'), rap: v5 && rap, rh, sid: h.id };
  }

  private onWriter(m: DevicesToShard): void {
    if (m.t === 'dev-batch') return;
    const link = this.links.get(m.key);
    if (m.t === 'dev-suback') {
      const w = this.waiters.get(m.req);
      if (w === undefined) return;
      this.waiters.delete(m.req);
      w.link.reqs.delete(m.req);
      w.answers.forEach((answer, i) => answer(m.codes[i] ?? 0x80));
      return;
    }
    if (link === undefined) return; // the device left meanwhile; its end is on the way to the writer
    if (m.t === 'dev-opened') {
      link.states[m.broker] = m.ok ? OPEN : FAILED;
      if (m.ok) {
        link.present[m.broker] = m.present;
        this.settle(link);
        return;
      }
      const code = refusalFor(m.why, m.code, m.version, link.conn.version);
      if (link.done === null) {
        // Answered already (FANOUT_ACK=any or local needed another broker only): a broker that
        // refuses the device still makes it go; one out of reach only loses its publishes.
        if (m.why === 'refused' || m.why === 'no-credentials') this.drop(link, m.broker, code);
        return;
      }
      // A broker that refuses the device refuses it here; one that is not reachable only when
      // the answer needs it.
      if (m.why !== 'timeout' && m.why !== 'gone') this.answer(link, { ok: false, code });
      else this.settle(link, code);
    } else if (m.t === 'dev-hold') {
      link.held = m.held ? link.held | (1 << m.broker) : link.held & ~(1 << m.broker);
      const held = link.held !== 0;
      if (link.conn.upstreamHeld !== held) {
        link.conn.upstreamHeld = held;
        if (!held) {
          this.ctx.wake(link.conn);
          this.ctx.schedule();
        }
      }
    } else if (m.t === 'dev-refused') {
      this.drop(link, m.broker, refusalFor('refused', m.code, m.version, link.conn.version));
    }
  }

  /** Answers the CONNECT once the brokers it needs have decided; `failure` is the code to refuse
   *  with when they cannot any more. */
  private settle(link: Link, failure = -1): void {
    if (link.done === null) return;
    let open = 0, failed = 0, total = 0;
    for (let b = 0; b < link.states.length; b++) {
      if (link.states[b] < 0) continue;
      total++;
      if (link.states[b] === OPEN) open++;
      else if (link.states[b] === FAILED) failed++;
    }
    // k of FANOUT_ACK sessions up (local: one); refused once that many cannot be up any more.
    const ack = this.ctx.config.ack;
    const need = Math.min(total, ack === 'local' ? 1 : ackQuorum(ack));
    if (open >= need) {
      // Present when the proxy kept the session, or when every broker did and nothing else
      // holds any of its subscriptions.
      const brokersKept = !link.clean && this.perDevice.every(Boolean) && link.present.every((x, b) => !this.perDevice[b] || x);
      this.answer(link, { ok: true, present: link.proxyPresent || brokersKept });
    } else if (failure >= 0 && failed > total - need) {
      this.answer(link, { ok: false, code: failure });
    }
  }

  private answer(link: Link, a: UpstreamAnswer): void {
    const done = link.done;
    if (done === null) return;
    link.done = null;
    link.accepted = a.ok;
    if (link.timer !== null) clearTimeout(link.timer);
    link.timer = null;
    done(a);
  }

  /** A broker refused the connected device (its session was re-established, or it was not
   *  needed for the CONNACK): the device goes, MQTT 5 devices being told 0x87. */
  private drop(link: Link, b: number, code: number): void {
    this.ctx.warnings.warn(`device-refused-${b}`, { clientId: link.conn.clientId, broker: this.ctx.config.brokers[b].name, code },
      'a broker refused the session of a connected device: device disconnected');
    link.conn.protocolClose(link.conn.version === 5 ? C.RC_NOT_AUTHORIZED : code, 'refused by a broker');
  }

  /**
   * The device connection is gone: its sessions end behind its last publishes. Clean (the
   * broker drops the will) after a DISCONNECT, when the CONNECT was not accepted (never
   * answered, or refused by another broker), and at shutdown; lost (the broker publishes the
   * will) otherwise.
   */
  closed(conn: DeviceConnection, shuttingDown: boolean): void {
    const link = this.links.get(conn.id);
    if (link === undefined) return;
    this.links.delete(conn.id);
    if (this.linkOfSession.get(link.session) === link) this.linkOfSession.delete(link.session);
    this.gone.set(conn.id, { session: link.session, at: Date.now() });
    const quiet = !link.accepted || shuttingDown;
    link.done = null;
    if (link.timer !== null) clearTimeout(link.timer);
    for (const req of link.reqs) this.waiters.delete(req);
    this.ops.delete(link);
    const how = quiet ? CLOSE_QUIET : conn.disconnectReason >= 0 ? CLOSE_CLEAN : CLOSE_LOST;
    for (let b = 0; b < link.states.length; b++) {
      if (link.states[b] < 0) continue;
      const c = { broker: b, key: conn.id, how, reason: Math.max(0, conn.disconnectReason), expiry: conn.disconnectExpiryS };
      if (this.pendingCloses.length > 0 || !this.ctx.uplink.writeDeviceClose(c.broker, c.key, c.how, c.reason, c.expiry)) this.pendingCloses.push(c);
    }
    this.ctx.schedule();
  }

  /** Ring room came back: device ends that did not fit go now. */
  retry(): void {
    while (this.pendingCloses.length > 0) {
      const c = this.pendingCloses[0];
      if (!this.ctx.uplink.writeDeviceClose(c.broker, c.key, c.how, c.reason, c.expiry)) return;
      this.pendingCloses.shift();
    }
  }

  tick(now: number): void {
    for (const [key, g] of this.gone) if (now - g.at > GONE_MS) this.gone.delete(key);
    this.retry();
  }

  private holdsOf(session: Session): SessionHolds {
    let st = this.holds.get(session);
    if (st === undefined) {
      st = { byKey: new Map(), byId: new Map(), nextId: 1 };
      this.holds.set(session, st);
    }
    return st;
  }

  /**
   * One device filter, served at per-device broker `b` by `upstream` at QoS `qos`: held in the
   * device's session there. `answer` gets the broker's answer, or the QoS at once when the device
   * has no session there now (a session that moved here from another shard: the broker has it).
   */
  subscribe(b: number, sub: Sub, upstream: string, qos: number, rh: number, answer: (code: number) => void): void {
    const st = this.holdsOf(sub.session);
    const filter = sub.group === null ? upstream : `$share/${sub.group}/${upstream}`;
    const key = `${b}\u0000${filter}`;
    let h = st.byKey.get(key);
    if (h === undefined) {
      h = { id: st.nextId, broker: b, filter, subs: new Set(), counts: [0, 0, 0] };
      st.nextId = st.nextId === MAX_SUB_ID ? 1 : st.nextId + 1;
      st.byKey.set(key, h);
      st.byId.set(h.id, h);
    }
    h.subs.add(sub);
    h.counts[qos]++;
    const link = this.linkOfSession.get(sub.session);
    if (link === undefined || link.states[b] === FAILED) {
      answer(qos);
      return;
    }
    const op = this.opFor(link, b);
    op.subs.push(this.deviceSub(h, b, rh));
    op.answers.push((code) => answer(code < 0x80 ? Math.min(qos, code) : code));
  }

  /** A device subscription at per-device broker `b` ends. */
  release(b: number, sub: Sub, upstream: string, qos: number): void {
    const st = this.holds.get(sub.session);
    const filter = sub.group === null ? upstream : `$share/${sub.group}/${upstream}`;
    const key = `${b}\u0000${filter}`;
    const h = st?.byKey.get(key);
    if (st === undefined || h === undefined || !h.subs.delete(sub)) return;
    h.counts[qos]--;
    if (h.subs.size > 0) return;
    st.byKey.delete(key);
    st.byId.delete(h.id);
    const link = this.linkOfSession.get(sub.session);
    if (link !== undefined && link.states[b] !== FAILED) this.opFor(link, b).unsubs.push(filter);
  }

  /** UNSUBSCRIBE of a filter this shard does not know: a broker that kept the device's session
   *  across a restart of the proxy may hold it, so it is unsubscribed there all the same. */
  unsubscribeUnknown(session: Session, upstreams: (b: number) => string[]): void {
    const link = this.linkOfSession.get(session);
    if (link === undefined) return;
    for (let b = 0; b < this.perDevice.length; b++) {
      if (!this.perDevice[b] || link.states[b] === FAILED) continue;
      for (const f of upstreams(b)) this.opFor(link, b).unsubs.push(f);
    }
  }

  private opFor(link: Link, broker: number): { broker: number; subs: DeviceSub[]; answers: ((code: number) => void)[]; unsubs: string[] } {
    let list = this.ops.get(link);
    if (list === undefined) {
      list = [];
      this.ops.set(link, list);
    }
    let op = list.find((o) => o.broker === broker);
    if (op === undefined) {
      op = { broker, subs: [], answers: [], unsubs: [] };
      list.push(op);
    }
    this.ctx.schedule();
    return op;
  }

  private post(b: number, m: ShardToDevices): void {
    this.outbox[b].push(m);
    this.ctx.schedule();
  }

  /** This turn's opens and subscription changes go to the writers, one message per writer. */
  flush(): void {
    this.flushOps();
    for (let b = 0; b < this.outbox.length; b++) {
      const ms = this.outbox[b];
      if (ms.length === 0) continue;
      this.outbox[b] = [];
      this.ports[b].postMessage(ms.length === 1 ? ms[0] : { t: 'dev-batch', ms } satisfies ShardToDevices);
    }
  }

  private flushOps(): void {
    if (this.ops.size === 0) return;
    for (const [link, list] of this.ops) {
      for (const op of list) {
        if (op.subs.length > 0) {
          const req = this.nextReq;
          this.nextReq = this.nextReq === 0x7fffffff ? 1 : this.nextReq + 1;
          this.waiters.set(req, { link, answers: op.answers });
          link.reqs.add(req);
          this.post(op.broker, { t: 'dev-sub', shard: this.ctx.index, key: link.conn.id, req, subs: op.subs });
        }
        if (op.unsubs.length > 0) {
          this.post(op.broker, { t: 'dev-unsub', shard: this.ctx.index, key: link.conn.id, filters: op.unsubs });
        }
      }
    }
    this.ops.clear();
  }

  /**
   * A message a broker sent on device `key`'s own session: the device's subscriptions it is for
   * (those of upstream subscription `sid` when the broker named it, else all its subscriptions
   * at that broker) decide the QoS and the identifiers; a subscription this shard does not know
   * (kept by the broker) gets it as the broker sent it.
   */
  collect(b: number, key: number, sid: number, m: StoredMessage, qos: number, retain: boolean, fpOf: () => number,
    hand: (session: Session, q: number, r: boolean, subIds: number[] | null) => void): boolean {
    const session = this.links.get(key)?.session ?? this.gone.get(key)?.session;
    if (session === undefined || session.ended) return false;
    const st = this.holds.get(session);
    let best = -1;
    let subIds: number[] | null = null;
    let skipped = false;
    const visit = (sub: Sub): void => {
      if (!matchTopic(sub.filter, m.topic)) return;
      if (sub.noLocal && !this.v5[b] && session.own !== null) {
        if (session.ownMark !== -key) {
          session.ownMark = -key;
          session.ownSkip = session.own.take(fpOf());
        }
        if (session.ownSkip) {
          skipped = true;
          return;
        }
      }
      const q = Math.min(qos, sub.qos);
      if (q > best) best = q;
      if (sub.subId > 0) (subIds ??= []).push(sub.subId);
    };
    const named = sid > 0 ? st?.byId.get(sid) : undefined;
    if (named !== undefined && named.broker === b) for (const sub of named.subs) visit(sub);
    else if (st !== undefined) for (const h of st.byKey.values()) if (h.broker === b) for (const sub of h.subs) visit(sub);
    session.ownMark = 0;
    if (best < 0) {
      if (skipped) return true;
      best = qos;
    }
    hand(session, best, retain, subIds);
    return true;
  }
}

function maxQos(h: Hold): number {
  return h.counts[2] > 0 ? 2 : h.counts[1] > 0 ? 1 : 0;
}
