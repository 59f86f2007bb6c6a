// A shard: one worker thread that accepts device connections from the shared listening socket,
// speaks MQTT with them, writes their publishes into one ring per broker and applies the
// brokers' acknowledgements coming back on the ack rings.

import * as net from 'node:net';
import * as tls from 'node:tls';
import * as v8 from 'node:v8';
import { tlsFiles } from '../config/index';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Packet } from 'mqtt-packet';
import type { Config } from '../config/types';
import { Doorbell } from '../ring/doorbell';
import { RingConsumer, RingProducer, type RingBuffers } from '../ring/spsc';
import { NO_TOKEN } from '../ring/records';
import { PublishView, decodePublish } from '../protocol/publish';
import { PacketParser } from '../protocol/slow-parse';
import * as C from '../protocol/constants';
import { InflightTable } from './inflight';
import { Uplink, type UplinkMessage } from './uplink';
import { DeviceConnection } from './connection';
import type { ShardContext } from './context';
import { setVitals, ShardStats } from '../metrics/stats';
import { ThreadVitals } from '../metrics/vitals';
import { listenShard, type ListenPlan } from '../ingress/listen';
import { peerCommonName, TcpTransport, type DeviceTransport } from '../ingress/transport';
import { listenWebSocket, type WsImplementation, type WsListener } from '../ingress/websocket';
import { RateLimitedLog } from '../log';
import { HttpPublisher, type HttpPublish } from './http-publish';
import { compileGlobs } from '../protocol/trace';
import * as fs from 'node:fs';
import { parseAclFile, type Acl, type AclChecker } from '../auth/acl';
import { LatencyRecorder } from '../metrics/latency';
import { Session, type SessionLimits, type SessionState, type PendingState } from './session';
import { ShardSubscriptions } from './subscriptions';
import { ShardDownlink } from './downlink';
import { buildRouting, buildRoutes, liveMask } from './build-routing';
import { perDeviceBrokers } from '../config/upstream';
import { DeviceUpstreams } from './device-upstreams';
import { crashForTest, writeHeapSnapshot } from '../test-hooks';
import { Admission } from './admission';
import { TlsHandshakes } from '../ingress/tls-handshakes';
import type { SessionStore } from '../session-store/types';
import { MemoryStore } from '../session-store/memory';
import { RedisStore } from '../session-store/redis';

/** Heap watch of shards with uWS listeners (see watchHeap). */
const HEAP_CHECK_MS = 50;
const HEAP_ALARM = 0.8;

/** How long the CONNACK of a session resumed from the store waits for its subscriptions upstream. */
const STORE_SUBSCRIBE_WAIT_MS = 5000;

/** How often the records of connected persistent sessions have their expiry renewed. */
const TOUCH_MS = 60_000;

/** Poll interval while acknowledgements keep arriving (see ackLoop). */
const NAP_MS = 1;

/** The ack loop keeps polling this long after the last acknowledgement it found while publishes
 *  are still waiting for one; past it (or with none outstanding) it parks on the doorbell. */
const BUSY_WINDOW_MS = 5;

export interface ShardOptions {
  config: Config;
  index: number;
  listen: ListenPlan;
  /** The TLS listener (FANOUT_TLS_PORT), null when off. */
  tls: ListenPlan | null;
  /** The WebSocket listener (FANOUT_WS_PORT), null when off. */
  ws: WsPlan | null;
  /** The secure WebSocket listener (FANOUT_WSS_PORT), null when off. */
  wss: WsPlan | null;
  uplinkRings: RingBuffers[];
  ackRings: RingBuffers[];
  downlinkRings: RingBuffers[];
  /** One control channel per broker writer (subscriptions). */
  writerPorts: MessagePort[];
  doorbell: SharedArrayBuffer;
  writerDoorbells: SharedArrayBuffer[];
  stats: SharedArrayBuffer;
  port: MessagePort;
  log: Logger;
  /** This shard replaces one that failed: what its rings hold back from the writers is stale. */
  restarted: boolean;
  /** This instance's name in the session store (FANOUT_SESSION_STORE). */
  instance: string;
}

/** Where a shard's WebSocket listener binds; `fallbackPlan` is for the `ws` package (null: only
 *  the first shard serves it). */
export interface WsPlan {
  host: string;
  port: number;
  fallbackPlan: ListenPlan | null;
}

/** Messages the supervisor sends (or relays from another shard) to a shard. */
export type ToShard =
  | { t: 'kick'; conn: number }
  | { t: 'tls-reload' }
  | { t: 'authed'; id: number; ok: boolean }
  | { t: 'metrics' }
  | ({ t: 'publish' } & HttpPublish)
  | { t: 'drain' }
  // Moving a persistent session: the old shard exports it to the new one, the new one says
  // when its subscriptions are registered upstream, the old one sends what came meanwhile.
  | { t: 'export'; conn: number; clientId: string; to: number; toConn: number }
  // `exportId` names one export on the old shard: one client id may be on its way to several
  // shards at once in a CONNECT race, and each export is counted out on its own.
  // From the supervisor, `from` -1: the state read from the session store (or null: none);
  // `refuse`: the store could not be asked, the CONNECT is refused (server unavailable).
  | { t: 'session'; conn: number; from: number; exportId: number; state: SessionState | null; refuse?: boolean }
  // Another instance resumes this client's session: end it here, write it out, answer `handed`.
  | { t: 'handover'; conn: number; clientId: string; req: number }
  | { t: 'registered'; exportId: number }
  | { t: 'tail'; clientId: string; exportId: number; pending: PendingState[] }
  // Writer `broker` failed and was restarted: its new control channel; the shard reads what the
  // old one answered, then says which tokens it still waits for.
  | { t: 'writer-restarted'; broker: number; port: MessagePort }
  // Tokens the failed writer `broker` took with it (no spool): their devices send again.
  | { t: 'lost'; broker: number; tokens: number[] }
  | { t: 'test-crash'; kind: 'throw' | 'oom' | 'dump' | 'heap' }
  // A reload changed the broker set (see BrokerChange).
  | ({ t: 'brokers' } & BrokerChange);

/**
 * What a reload changes on a shard, in one message: `config` lists every broker slot, retired
 * ones marked. `added`: new slots (appended, in order) with their rings, their writer's doorbell
 * and control channel; `retired`: slots that take no new publish or subscription from now on
 * (their writers drain what they hold); `gone`: retired slots whose writer has ended, so that
 * nothing still waits for them.
 */
export interface BrokerChange {
  id: number;
  config: Config;
  added: { slot: number; uplink: RingBuffers; ack: RingBuffers; downlink: RingBuffers; doorbell: SharedArrayBuffer; port: MessagePort }[];
  retired: number[];
  gone: number[];
}

/** A client-id claim (a CONNECT) or release (the connection and its pending will are gone). */
export interface RegistryOp {
  claim: boolean;
  conn: number;
  clientId: string;
  /** A claim that wants the client's persistent session, wherever it is. */
  fetch?: boolean;
  /** With a shared session store every claim fetches (to own the id across instances); this
   *  one starts clean. */
  clean?: boolean;
  /** A release of a connection still waiting for its session: the id stays claimed until the
   *  session is here (and passed on, or let go), but a claim in the store for it gives up. */
  gone?: boolean;
}

/** Messages a shard sends to the supervisor. */
export type FromShard =
  | {
    t: 'ready'; shard: number; port: number; wsPort: number | null; ws: WsImplementation | null;
    wssPort: number | null; wss: WsImplementation | null; tlsPort: number | null;
  }
  | { t: 'failed'; shard: number; message: string }
  | { t: 'registry'; shard: number; ops: RegistryOp[] }
  | { t: 'relay'; to: number; msg: ToShard }
  | { t: 'drained'; shard: number }
  | { t: 'metrics'; shard: number; ackLatency: string }
  | { t: 'published'; id: number; reason: number }
  | { t: 'handed'; req: number }
  // The client id's previous connection here had no session: `next` reads it from the store.
  | { t: 'unrecorded'; clientId: string; next: { shard: number; conn: number } }
  | { t: 'pending'; shard: number; broker: number; tokens: number[] }
  // A BrokerChange applied; `unanswered`: publishes a gone broker had not acknowledged.
  | { t: 'brokers-done'; shard: number; id: number; unanswered: number }
  | { t: 'auth'; shard: number; id: number; username: string; password: Buffer | undefined };

export class Shard implements ShardContext {
  /** Replaced by a reload that changes the broker set (see onBrokers). */
  config: Config;
  readonly log: Logger;
  readonly uplink: Uplink;
  readonly inflight: InflightTable;
  readonly stats: ShardStats;
  /** Every shard's row, for limits that span the shards. */
  private readonly allStats: ShardStats[];
  readonly view = new PublishView();
  readonly msg: UplinkMessage = {
    qos: 0, retain: false, v5: false, trace: false, token: NO_TOKEN, deviceKey: 0, topic: Buffer.alloc(0), topicStart: 0,
    topicLen: 0, src: Buffer.alloc(0), propsA: 0, propsAEnd: 0, propsB: 0, propsBEnd: 0, payloadStart: 0, payloadEnd: 0,
  };

  readonly subs: ShardSubscriptions;
  readonly upstream: DeviceUpstreams | null;
  /** Device publish -> device acknowledgement, for /metrics. */
  readonly ackLatency = new LatencyRecorder();
  private readonly traceRe: RegExp | null;
  private readonly warnings: RateLimitedLog;
  private readonly http: HttpPublisher;
  readonly limits: SessionLimits;
  private readonly sessions = new Map<string, Session>();
  /** FANOUT_SESSION_STORE: where persistent sessions are recorded beyond this shard. */
  readonly store: SessionStore;
  /** Offline sessions by the id of the connection that last held them (for kicks). */
  private readonly offline = new Map<number, Session>();
  private readonly downlink: ShardDownlink;
  /** Connections whose CONNECT waits for their session to arrive from another shard. */
  private readonly awaiting = new Map<number, { conn: DeviceConnection; expiryMs: number; timer: NodeJS.Timeout }>();
  /** Exports asked for while the session was still on its way here, by the connection that
   *  waited for it (awaiting, or importing from another shard): done once the session is here. */
  private readonly exportAfter = new Map<number, Extract<ToShard, { t: 'export' }>>();
  /** The same, by import id, for sessions still importing from another shard (their tail). */
  private readonly exportAfterImport = new Map<number, Extract<ToShard, { t: 'export' }>>();
  /** Sessions read from the store whose CONNACK waits for their subscriptions, by connection. */
  private readonly readying = new Map<number, Session>();
  /** Sessions handed to another shard, still collecting messages until it has taken over. */
  private readonly exporting = new Map<number, { session: Session; to: number; timer: NodeJS.Timeout }>();
  private nextExport = 1;
  private readonly index: number;
  private readonly port: MessagePort;
  private readonly acks: RingConsumer[];
  private readonly ackWriters: Doorbell[];
  private readonly doorbell: Doorbell;
  private readonly parser = new PacketParser();
  private readonly conns = new Map<number, DeviceConnection>();
  private readonly pendingWills = new Map<number, { timer: NodeJS.Timeout; conn: DeviceConnection }>();
  private willQueue: { bytes: Buffer; version: number }[] = [];
  private blockedConns = new Set<DeviceConnection>();
  private woken: DeviceConnection[] = [];
  private dirtyConns: DeviceConnection[] = [];
  private server: net.Server | null = null;
  private tlsServer: tls.Server | null = null;
  private tlsHandshakes: TlsHandshakes | null = null;
  private tick: NodeJS.Timeout | null = null;
  private nextId = 1;
  draining = false;
  private ws: WsListener | null = null;
  private wss: WsListener | null = null;
  private stopped = false;

  constructor(private readonly opts: ShardOptions) {
    this.config = opts.config;
    this.log = opts.log;
    this.index = opts.index;
    this.port = opts.port;
    const writerBells = opts.writerDoorbells.map((sab) => new Doorbell(sab));
    const perDevice = perDeviceBrokers(opts.config);
    this.uplink = new Uplink(opts.uplinkRings.map((r) => uplinkProducer(r, opts.config)), writerBells, buildRoutes(opts.config), perDevice, liveMask(opts.config));
    this.acks = opts.ackRings.map((r) => new RingConsumer(r));
    this.ackWriters = writerBells;
    this.doorbell = new Doorbell(opts.doorbell);
    this.stats = new ShardStats(opts.stats, opts.index);
    this.allStats = Array.from({ length: opts.config.shards }, (_, i) => new ShardStats(opts.stats, i));
    this.traceRe = compileGlobs(opts.config.traceClients);
    this.warnings = new RateLimitedLog(opts.log);
    this.checksPasswords = opts.config.passwordFile !== null;
    this.store = opts.config.sessionStore === null ? new MemoryStore()
      : new RedisStore(opts.config.sessionStore, opts.instance, opts.log, `${opts.instance}-shard-${opts.index}`);
    this.loadAcl();
    this.inflight = new InflightTable(opts.uplinkRings.length, opts.config.ack, 1024, this.ackLatency);
    this.inflight.setBrokers(liveMask(opts.config));
    this.upstream = perDevice.includes(true) ? new DeviceUpstreams({
      index: opts.index, config: opts.config, log: opts.log, warnings: this.warnings, uplink: this.uplink,
      wake: (conn) => this.wake(conn), schedule: () => this.scheduleTurn(),
    }, opts.writerPorts) : null;
    this.subs = new ShardSubscriptions(opts.index, opts.writerPorts, buildRouting(opts.config), () => this.scheduleTurn(), opts.config, this.upstream);
    const stats = this.stats;
    const warnings = this.warnings;
    this.limits = {
      maxQueued: opts.config.maxQueuedMessages,
      dropOldest: opts.config.queueOverflow !== 'drop-new',
      block: opts.config.queueOverflow === 'block',
      dropped(reason, session) {
        if (reason === 'queue-full') {
          stats.add('dropQueueFull');
          warnings.warn('queue-full', { clientId: session.clientId, queued: session.queued, total: stats.get('dropQueueFull') },
            'session queue full: message dropped (FANOUT_MAX_QUEUED_MESSAGES, FANOUT_QUEUE_OVERFLOW)');
        } else if (reason === 'expired') stats.add('dropExpired');
        else if (reason === 'too-large') stats.add('dropTooLarge');
        else stats.add('dropOfflineQos0');
      },
      holding(session, ms) {
        warnings.warn(`holding-${session.clientId}`, { clientId: session.clientId, queued: session.queued, inflight: session.inflight.size, heldMs: ms, lastAckMsAgo: Date.now() - session.lastAck },
          'downlink held for a device whose queue is full (FANOUT_QUEUE_OVERFLOW=block)');
      },
    };
    this.admission = new Admission(opts.config, () => this.openConnections());
    this.http = new HttpPublisher(this, (id, reason) => this.send({ t: 'published', id, reason }));
    this.downlink = new ShardDownlink(opts.downlinkRings.map((r) => new RingConsumer(r)), writerBells, this.subs, this.limits, this.upstream);
  }

  /** SIGHUP: new certificates for new connections (TLS and WSS); established ones keep theirs. */
  private reloadTls(): void {
    if (this.tlsServer === null && this.wss === null) return;
    try {
      // Checked once for both listeners, so they cannot end up with different certificates.
      const files = tlsFiles(this.config);
      tls.createSecureContext(files);
      this.tlsServer?.setSecureContext(files);
      this.wss?.reload();
      if (this.index === 0) this.log.info({ cert: this.config.tlsCert }, 'TLS certificates reloaded');
    } catch (err) {
      this.log.error({ err: (err as Error).message, cert: this.config.tlsCert }, 'TLS certificates not reloaded: the files do not make a TLS context; the previous ones stay in use');
    }
  }

  private roomScheduled = false;

  readonly checksPasswords: boolean;
  private acl: Acl | null = null;
  private readonly authWaiting = new Map<number, (ok: boolean) => void>();
  private nextAuth = 1;

  authenticate(username: string, password: Buffer | undefined, done: (ok: boolean) => void): void {
    const id = this.nextAuth++;
    this.authWaiting.set(id, done);
    this.send({ t: 'auth', shard: this.index, id, username, password });
  }

  aclFor(clientId: string, username: string | null): AclChecker | null {
    return this.acl?.forClient(clientId, username) ?? null;
  }

  denied(what: 'anonymous' | 'password' | 'publish' | 'subscribe', conn: DeviceConnection): void {
    this.stats.add(what === 'anonymous' || what === 'password' ? 'authRefused' : 'aclDenied');
    this.warnings.warn(`denied-${what}`, { clientId: conn.clientId, username: conn.username ?? undefined, what },
      what === 'anonymous' ? 'CONNECT without user name refused (FANOUT_ALLOW_ANONYMOUS=false)'
        : what === 'password' ? 'CONNECT refused: unknown user or wrong password'
          : `${what === 'publish' ? 'PUBLISH' : 'SUBSCRIBE'} denied by FANOUT_ACL_FILE`);
  }

  /** FANOUT_ACL_FILE, read (again on SIGHUP); its checkers apply to connections made after. */
  private loadAcl(): void {
    if (this.config.aclFile === null) return;
    try {
      const { acl, errors } = parseAclFile(fs.readFileSync(this.config.aclFile, 'utf8'));
      if (errors.length > 0) throw new Error(`line ${errors[0].line}: ${errors[0].message}`);
      this.acl = acl;
    } catch (err) {
      this.log.error({ file: this.config.aclFile, err: (err as Error).message }, 'ACL file not (re)loaded; the rules in force stay');
    }
  }

  /** Device sockets open on every shard, TLS ones still shaking hands included. */
  openConnections(): number {
    let n = 0;
    for (const row of this.allStats) n += row.get('connections') + row.get('tlsHandshakes');
    return n;
  }

  throttled(conn: DeviceConnection, ms: number): void {
    this.stats.add('throttled');
    setTimeout(() => {
      this.blockedConns.delete(conn);
      conn.resume();
      this.endOfTurn();
    }, ms);
  }

  private readonly admission: Admission;

  /** Whether a new socket from `address` may stay (every transport asks before reading it):
   *  FANOUT_MAX_CONNECTIONS and FANOUT_MAX_CONNECT_RATE; a refusal is counted and logged. */
  admit(address: string | undefined): boolean {
    const refusal = this.admission.admit(address);
    if (refusal === null) return true;
    if (refusal === 'rate') {
      this.stats.add('refusedRate');
      this.warnings.warn('connect-rate', { address, max: this.config.maxConnectRate }, 'FANOUT_MAX_CONNECT_RATE exceeded: connection closed');
    } else {
      this.stats.add('refusedMax');
      this.warnings.warn('max-connections', { address, max: this.config.maxConnections }, 'FANOUT_MAX_CONNECTIONS reached: connection closed');
    }
    return false;
  }

  deliveryRoom(): void {
    if (!this.downlink.stalled || this.roomScheduled) return;
    this.roomScheduled = true;
    setImmediate(() => {
      this.roomScheduled = false;
      this.drainAcks();
    });
  }

  traces(clientId: string): boolean {
    return this.traceRe !== null && this.traceRe.test(clientId);
  }

  openSession(conn: DeviceConnection, clean: boolean, expiryMs: number): { session: Session; present: boolean } | null {
    let session = this.sessions.get(conn.clientId);
    const local = session !== undefined;
    if (session !== undefined) {
      // The client id is back on this shard: end the connection that still has it, if any.
      const holder = session.link;
      const expired = holder === null && session.expiresAt <= Date.now();
      if (holder instanceof DeviceConnection && holder !== conn) {
        this.stats.add('takeovers');
        holder.session = null;
        holder.takeover();
      }
      session.link = null;
      this.offline.delete(session.lastConn);
      // One read from the store and waiting for its subscriptions is this connection's now.
      for (const [id, s] of this.readying) if (s === session) this.readying.delete(id);
      // A session that was to end with its connection is not resumed [MQTT-3.1.2-6].
      if (clean || expired || session.expiryMs === 0) {
        this.endSession(session);
        session = undefined;
      }
    }
    // With a shared store the client id may be owned by another instance, clean start or not:
    // the CONNECT waits for the supervisor's claim (and the recorded session).
    const shared = this.store.shared && !local;
    if (session === undefined && (shared || (!clean && this.config.shards > 1))) {
      // The session may live on another shard: ask for it; the CONNECT waits for the answer.
      const timer = setTimeout(() => this.onSessionState({ t: 'session', conn: conn.id, from: -1, exportId: 0, state: null, refuse: this.store.shared }),
        this.store.shared ? 15_000 : 5000);
      this.awaiting.set(conn.id, { conn, expiryMs, timer });
      this.claim(conn, true, clean);
      return null;
    }
    const present = session !== undefined;
    session ??= this.newSession(conn.clientId);
    session.expiryMs = expiryMs;
    this.record(session);
    this.claim(conn, false);
    return { session, present };
  }

  private newSession(clientId: string): Session {
    const session = new Session(clientId);
    this.sessions.set(clientId, session);
    this.stats.add('sessions');
    return session;
  }

  /** A session that outlives its connection is recorded in the store (FANOUT_SESSION_STORE). */
  private record(session: Session): void {
    session.journal = session.expiryMs > 0 ? this.store.journal() : null;
  }

  /** The old shard's answer to a session request (state null: there was none). */
  private onSessionState(m: Extract<ToShard, { t: 'session' }>): void {
    const wait = this.awaiting.get(m.conn);
    if (wait === undefined) {
      // Timed out here and answered late: the device already has a new session.
      if (m.state !== null && m.from >= 0) this.relay(m.from, { t: 'registered', exportId: m.exportId });
      return;
    }
    clearTimeout(wait.timer);
    this.awaiting.delete(m.conn);
    const conn = wait.conn;
    const closed = conn.state === 2;
    // Another CONNECT of the client id here took over while this one waited: it gets the session.
    const passOn = this.exportAfter.get(conn.id);
    if (m.refuse === true) {
      if (passOn !== undefined) {
        this.exportAfter.delete(conn.id);
        this.relay(passOn.to, { t: 'session', conn: passOn.toConn, from: -1, exportId: 0, state: null, refuse: true });
      }
      conn.unavailable('the session store did not answer');
      if (closed) this.release(conn);
      return;
    }
    if (closed && passOn === undefined && m.from < 0 && this.store.shared) {
      // The device left while the store was asked: nothing is kept here, the client id is let go
      // (after the claim, see Ownership.serial) and the next CONNECT reads the record again.
      this.release(conn);
      return;
    }
    const state = m.state;
    if (passOn !== undefined && state === null && m.from < 0) {
      // There was none: the connection that took over starts without one.
      this.exportAfter.delete(conn.id);
      this.relay(passOn.to, { t: 'session', conn: passOn.toConn, from: -1, exportId: 0, state: null });
      this.release(conn);
      return;
    }
    const session = this.newSession(state?.clientId ?? conn.clientId);
    session.expiryMs = wait.expiryMs;
    if (state !== null) {
      session.storeId = state.storeId ?? '';
      session.restore(state.pending);
      if (state.storeSeq !== undefined && state.storeSeq > session.storeSeq) session.storeSeq = state.storeSeq;
    }
    this.record(session);
    // A session read from the store (another instance had it) has no old shard collecting for
    // it meanwhile: its CONNACK waits until the brokers have its subscriptions (at most
    // STORE_SUBSCRIBE_WAIT_MS), so that what is published after the CONNACK reaches it.
    const fromStore = state !== null && m.from < 0 && state.subs.length > 0 && !closed;
    let subscribed = false;
    let timer: NodeJS.Timeout | null = null;
    const resumed = (): void => {
      if (timer === null) return;
      clearTimeout(timer);
      timer = null;
      if (this.readying.get(conn.id) !== session) return;
      this.readying.delete(conn.id);
      this.sessionReady(conn, session, true, true);
    };
    if (state !== null) {
      if (m.from >= 0) {
        session.importing = [];
        session.importId = m.exportId;
      }
      // Re-subscribe without retained messages (a resumed session is not a new subscription);
      // once every writer has the filters, the old shard can send what it collected meanwhile.
      let left = state.subs.length + 1;
      const one = (): void => {
        if (--left !== 0) return;
        subscribed = true;
        if (m.from >= 0) this.relay(m.from, { t: 'registered', exportId: m.exportId });
        else resumed();
      };
      for (const sub of state.subs) {
        this.subs.subscribe(session, state.version === 5, sub.subId, [{ topic: sub.topic, qos: sub.qos, nl: sub.nl, rap: sub.rap, rh: 2 }], one);
      }
      one();
    }
    if (fromStore && !subscribed) {
      timer = setTimeout(resumed, STORE_SUBSCRIBE_WAIT_MS);
      this.readying.set(conn.id, session);
      return;
    }
    this.sessionReady(conn, session, state !== null, this.store.shared && m.from < 0 && passOn === undefined);
    if (passOn !== undefined) {
      this.exportAfter.delete(conn.id);
      // Parked under this connection by sessionReady (it was taken over): on to the new one,
      // once the old shard's tail is here.
      if (session.importing === null) this.onExport(passOn);
      else this.exportAfterImport.set(session.importId, passOn);
    }
  }

  private sessionReady(conn: DeviceConnection, session: Session, present: boolean, stored = false): void {
    if (conn.state === 2 && stored) {
      // The device left while the store was asked: its connection has let go of the client id
      // (release), so the session is not kept here, where its writes would be fenced off; the
      // next CONNECT, on any instance, reads the record again.
      this.forget(session);
      return;
    }
    if (conn.state === 2) {
      // The device left while its session travelled: keep the session for its next CONNECT.
      session.lastConn = conn.id;
      session.detach(Date.now());
      this.offline.set(conn.id, session);
      return;
    }
    conn.sessionReady(session, present);
  }

  /** Another shard takes this client's session. */
  private onExport(m: Extract<ToShard, { t: 'export' }>): void {
    this.cancelWill(m.conn);
    const conn = this.conns.get(m.conn);
    const ready = this.readying.get(m.conn);
    if (ready !== undefined) {
      // Read from the store, waiting for its subscriptions: it goes on from here as it is.
      this.readying.delete(m.conn);
      ready.lastConn = m.conn;
      ready.detach(Date.now());
      this.offline.set(m.conn, ready);
    }
    const early = this.awaiting.get(m.conn);
    let session = conn?.session ?? this.offline.get(m.conn) ?? null;
    if (early !== undefined || session?.importing != null) {
      // The session is still on its way here (from the store or another shard): a "none" now
      // would start the new connection on an empty session (and a new record, wiping the one
      // in the store). It follows once it is complete here.
      if (early !== undefined) this.exportAfter.set(m.conn, m);
      else this.exportAfterImport.set(session!.importId, m);
      if (session !== null && early === undefined) {
        session.lastConn = m.conn;
        if (conn !== undefined && session.link === conn) {
          conn.session = null;
          session.detach(Date.now());
        }
        this.offline.set(m.conn, session);
      }
      if (conn !== undefined) {
        this.stats.add('takeovers');
        conn.takeover();
      }
      return;
    }
    if (conn !== undefined) {
      conn.session = null;
      if (session?.link === conn) session.link = null;
      this.stats.add('takeovers');
      conn.takeover();
    }
    if (session !== null && session.expiryMs === 0) {
      this.endSession(session);
      session = null;
    }
    if (session === null) {
      // Nothing here: with a shared store the session may still be recorded there.
      if (this.store.shared) this.send({ t: 'unrecorded', clientId: m.clientId, next: { shard: m.to, conn: m.toConn } });
      else this.relay(m.to, { t: 'session', conn: m.toConn, from: -1, exportId: 0, state: null });
      return;
    }
    this.offline.delete(session.lastConn);
    if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId);
    const state: SessionState = {
      clientId: session.clientId, expiryMs: session.expiryMs, version: session.version,
      subs: [...session.subs.values()].map((s) => ({ topic: s.key, qos: s.qos, nl: s.noLocal, rap: s.retainAsPublished, subId: s.subId })),
      pending: session.takePending(), storeId: session.storeId, storeSeq: session.storeSeq,
    };
    // The new shard records the session from now on (what arrives here meanwhile goes to it in
    // the tail); what this shard recorded is written before it gets the state.
    session.journal = null;
    // Until the new shard has the subscriptions upstream, messages keep arriving here. Should it
    // never say so, what was collected goes to it anyway after 30 s.
    // Unique across shards, so a tail is never taken for another shard's.
    const exportId = this.index + this.config.shards * this.nextExport++;
    const timer = setTimeout(() => this.onRegistered(exportId), 30_000);
    this.exporting.set(exportId, { session, to: m.to, timer });
    const send = (): void => this.relay(m.to, { t: 'session', conn: m.toConn, from: this.index, exportId, state });
    if (this.store.shared) void this.store.flush().then(send);
    else send();
  }

  /** Another instance resumes this client's session (shared store): the connection ends, the
   *  session is written out and dropped here, and the supervisor is told. */
  private onHandover(m: Extract<ToShard, { t: 'handover' }>): void {
    this.cancelWill(m.conn);
    const conn = this.conns.get(m.conn);
    const session = conn?.session ?? this.offline.get(m.conn) ?? this.sessions.get(m.clientId) ?? null;
    if (conn !== undefined) {
      conn.session = null;
      if (session?.link === conn) session.link = null;
      this.stats.add('takeovers');
      conn.takeover();
    }
    if (session !== null) this.forget(session);
    void this.store.flush().then(() => this.send({ t: 'handed', req: m.req }));
  }

  /** The session is no longer served here; its record in the store stays as written. */
  private forget(session: Session): void {
    if (this.sessions.get(session.clientId) !== session) return;
    session.journal = null;
    const parked = this.offline.get(session.lastConn) === session;
    if (parked) {
      this.offline.delete(session.lastConn);
      this.sendRegistry({ claim: false, conn: session.lastConn, clientId: session.clientId });
    }
    this.sessions.delete(session.clientId);
    if (!session.ended) {
      session.ended = true;
      this.stats.add('subscriptions', -session.subs.size);
      this.subs.dropSession(session);
      this.stats.add('sessions', -1);
    }
  }

  private onRegistered(exportId: number): void {
    const e = this.exporting.get(exportId);
    if (e === undefined) return;
    this.exporting.delete(exportId);
    clearTimeout(e.timer);
    // Everything a writer put in our rings before the new shard's filters is read now.
    this.downlink.drain(Date.now());
    const pending = e.session.takePending();
    this.subs.dropSession(e.session);
    if (!e.session.ended) {
      e.session.ended = true;
      this.stats.add('sessions', -1);
    }
    this.relay(e.to, { t: 'tail', clientId: e.session.clientId, exportId, pending });
  }

  private relay(to: number, msg: ToShard): void {
    this.send({ t: 'relay', to, msg });
  }

  private endSession(session: Session): void {
    if (this.sessions.get(session.clientId) === session) this.sessions.delete(session.clientId);
    if (this.offline.get(session.lastConn) === session) this.offline.delete(session.lastConn);
    if (session.ended) return;
    session.ended = true;
    session.journal = null;
    this.store.remove(session);
    this.stats.add('subscriptions', -session.subs.size);
    this.subs.dropSession(session);
    this.stats.add('sessions', -1);
  }

  /** The connection that held `session` is gone: the session ends or waits for the device. */
  private leaveSession(conn: DeviceConnection): void {
    const session = conn.session;
    conn.session = null;
    if (session === null || session.link !== conn) return;
    if (session.expiryMs === 0 || conn.takenOver) {
      this.endSession(session);
      return;
    }
    session.detach(Date.now());
    // Rewritten so that the record's expiry counts from now.
    session.journal?.meta(session);
    this.offline.set(conn.id, session);
  }

  start(): void {
    this.server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => this.log.error({ err }, 'listener error'));
    listenShard(this.server, this.opts.listen).then(
      async (port) => {
        const common = { maxPacketSize: this.config.maxPacketSize, path: this.config.wsPath };
        if (this.opts.ws !== null) this.ws = await listenWebSocket(this, { ...this.opts.ws, ...common, tls: null });
        if (this.opts.wss !== null) this.wss = await listenWebSocket(this, { ...this.opts.wss, ...common, tls: this.config });
        let tlsPort: number | null = null;
        if (this.opts.tls !== null) {
          this.tlsServer = tls.createServer({
            ...tlsFiles(this.config), requestCert: this.config.tlsCa !== null, rejectUnauthorized: this.config.tlsRequireClientCert,
            handshakeTimeout: this.config.connectTimeoutMs,
          }, (socket) => this.accept(socket, true));
          this.tlsHandshakes = new TlsHandshakes(this.tlsServer, (address) => !this.draining && this.admit(address), (n) => this.stats.add('tlsHandshakes', n));
          // node reports a handshake that failed or timed out (handshakeTimeout) but leaves the
          // socket open.
          this.tlsServer.on('tlsClientError', (err, socket) => {
            this.log.debug({ err: err.message }, 'TLS handshake failed');
            socket.destroy();
          });
          this.tlsServer.on('error', (err) => this.log.error({ err }, 'TLS listener error'));
          tlsPort = await listenShard(this.tlsServer, this.opts.tls);
        }
        if (this.ws?.implementation === 'uWebSockets.js' || this.wss?.implementation === 'uWebSockets.js') this.watchHeap();
        this.send({
          t: 'ready', shard: this.index, port, wsPort: this.ws?.port ?? null, ws: this.ws?.implementation ?? null,
          wssPort: this.wss?.port ?? null, wss: this.wss?.implementation ?? null, tlsPort,
        });
      },
    ).catch((err: Error) => this.send({ t: 'failed', shard: this.index, message: err.message }));
    if (this.opts.restarted) {
      // Acks and deliveries for the failed shard's devices and sessions: nobody here to take them.
      for (const a of this.acks) a.skipAll();
      this.downlink.skipAll();
    }
    this.tick = setInterval(() => this.onTick(), 1000);
    this.port.on('message', (m: ToShard) => this.onMessage(m));
    void this.ackLoop();
  }

  private accept(socket: net.Socket, secure = false): void {
    if (this.draining) {
      socket.destroy();
      return;
    }
    // A TLS socket was admitted when it was accepted, before its handshake.
    if (secure) this.tlsHandshakes?.secured(socket as tls.TLSSocket);
    else if (!this.admit(socket.remoteAddress)) {
      socket.destroy();
      return;
    }
    // Verified against FANOUT_TLS_CA by the handshake (FANOUT_TLS_REQUIRE_CLIENT_CERT).
    const identity = secure && this.config.tlsIdentityAsUsername ? peerCommonName(socket as tls.TLSSocket) : null;
    const conn = this.attach(new TcpTransport(socket, secure ? 'tls' : 'tcp'), identity);
    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('error', () => { /* 'close' follows and does the cleanup */ });
    socket.on('close', () => this.onClose(conn));
  }

  /** A new device connection over any transport; the transport feeds onData() and onClose().
   *  `tlsIdentity`: the CN of its verified certificate, standing for the user name. */
  attach(transport: DeviceTransport, tlsIdentity: string | null = null): DeviceConnection {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
    const conn = new DeviceConnection(this, transport, id);
    conn.tlsIdentity = tlsIdentity;
    this.conns.set(id, conn);
    this.stats.add('connections');
    this.countTransport(transport, 1);
    return conn;
  }

  private countTransport(transport: DeviceTransport, n: number): void {
    if (transport.kind === 'ws') this.stats.add('wsConnections', n);
    else if (transport.kind === 'wss') this.stats.add('wssConnections', n);
    else if (transport.kind === 'tls') this.stats.add('tlsConnections', n);
  }

  heldBytes(conn: DeviceConnection): number {
    return conn.bufferedIn;
  }

  overflow(conn: DeviceConnection): void {
    conn.protocolClose(C.RC_QUOTA_EXCEEDED, 'paused WebSocket device kept sending');
  }

  onData(conn: DeviceConnection, chunk: Buffer): void {
    this.stats.add('bytesIn', chunk.length);
    conn.onData(chunk);
    this.scheduleTurn();
  }

  onClose(conn: DeviceConnection): void {
    // Publishes (and a DISCONNECT) read before the close but held by backpressure are still
    // handled, in order: the close completes once they are (closeDeferred).
    if (conn.endOfInput()) this.closeNow(conn);
  }

  closeDeferred(conn: DeviceConnection): void {
    this.closeNow(conn);
    this.scheduleTurn();
  }

  private closeNow(conn: DeviceConnection): void {
    if (!this.conns.delete(conn.id)) return;
    this.blockedConns.delete(conn);
    this.stats.add('connections', -1);
    this.countTransport(conn.transport, -1);
    this.upstream?.closed(conn, this.draining);
    this.leaveSession(conn);
    const will = conn.closed();
    if (will !== null && !this.draining) {
      if (conn.willDelayMs > 0) {
        const timer = setTimeout(() => {
          this.pendingWills.delete(conn.id);
          this.publishWill(will, conn.version);
          this.release(conn);
        }, conn.willDelayMs);
        this.pendingWills.set(conn.id, { timer, conn });
        return;
      }
      this.publishWill(will, conn.version);
    }
    this.release(conn);
  }

  private publishWill(bytes: Buffer, version: number): void {
    if (!this.tryWill(bytes, version)) this.willQueue.push({ bytes, version });
    this.endOfTurn();
  }

  private tryWill(bytes: Buffer, version: number): boolean {
    const v = this.view;
    const headerLen = bytes[1] < 128 ? 2 : bytes[2] < 128 ? 3 : bytes[3] < 128 ? 4 : 5;
    if (decodePublish(bytes[0], bytes, headerLen, bytes.length, version, v) !== 0) return true;
    const m = this.msg;
    m.qos = v.qos;
    m.retain = v.retain;
    m.v5 = version === 5;
    m.token = NO_TOKEN;
    m.deviceKey = 0;
    m.trace = false;
    m.will = true;
    m.topic = m.src = bytes;
    m.topicStart = v.topicStart;
    m.topicLen = v.topicEnd - v.topicStart;
    m.propsA = v.propsStart;
    m.propsAEnd = v.propsEnd;
    m.propsB = m.propsBEnd = 0;
    m.payloadStart = v.payloadStart;
    m.payloadEnd = v.payloadEnd;
    const fits = this.uplink.fits(m);
    m.will = false;
    if (!fits) return false;
    if (this.uplink.planned > 0) this.uplink.write(m);
    this.stats.add('willsPublished');
    return true;
  }

  private onMessage(m: ToShard): void {
    if (m.t === 'kick') {
      // The client id connected on another shard: whatever of it is here ends.
      const parked = this.offline.get(m.conn);
      if (parked !== undefined) this.endSession(parked);
      if (this.cancelWill(m.conn)) return;
      const conn = this.conns.get(m.conn);
      if (conn !== undefined) {
        this.stats.add('takeovers');
        conn.takeover();
      }
      this.endOfTurn();
    } else if (m.t === 'tls-reload') {
      this.reloadTls();
      this.loadAcl();
    } else if (m.t === 'authed') {
      const done = this.authWaiting.get(m.id);
      this.authWaiting.delete(m.id);
      done?.(m.ok);
    } else if (m.t === 'publish') {
      this.http.submit(m);
    } else if (m.t === 'metrics') {
      this.stats.set('messagesOut', this.downlink.delivered);
      this.send({ t: 'metrics', shard: this.index, ackLatency: this.ackLatency.take() });
      return;
    } else if (m.t === 'drain') {
      void this.drain();
    } else if (m.t === 'export') {
      this.onExport(m);
    } else if (m.t === 'session') {
      this.onSessionState(m);
    } else if (m.t === 'handover') {
      this.onHandover(m);
    } else if (m.t === 'registered') {
      this.onRegistered(m.exportId);
    } else if (m.t === 'writer-restarted') {
      this.onWriterRestarted(m.broker, m.port);
    } else if (m.t === 'lost') {
      this.onLost(m.broker, m.tokens);
    } else if (m.t === 'brokers') {
      this.onBrokers(m);
      return;
    } else if (m.t === 'test-crash') {
      if (m.kind === 'dump') this.dumpState();
      else if (m.kind === 'heap') this.log.warn({ file: writeHeapSnapshot(`shard-${this.index}`) }, 'heap snapshot written (FANOUT_TEST_HOOKS)');
      else crashForTest(m.kind);
    } else if (m.t === 'tail') {
      const session = this.sessions.get(m.clientId);
      if (session?.importing && session.importId === m.exportId) {
        session.finishImport(m.pending, this.limits, Date.now());
        const passOn = this.exportAfterImport.get(m.exportId);
        if (passOn !== undefined) {
          this.exportAfterImport.delete(m.exportId);
          this.onExport(passOn);
        }
      }
    }
    this.endOfTurn();
  }

  /** FANOUT_TEST_HOOKS (POST /test/crash?kind=dump): the shard's state, for looking into a hang. */
  private dumpState(): void {
    const now = Date.now();
    const sessions = [...this.sessions.values()].map((s) => ({
      clientId: s.clientId, linked: s.link !== null, expiresInMs: s.link === null ? s.expiresAt - now : null, queued: s.queued,
      inflight: s.inflight.size, subs: s.subs.size, importing: s.importing !== null, lastAckMsAgo: now - s.lastAck,
    }));
    const conns = [...this.conns.values()].map((c) => ({ id: c.id, clientId: c.clientId, state: c.state, blocked: c.blocked, hasSession: c.session !== null, lastRxMsAgo: now - c.lastRx }));
    this.log.warn({
      sessions, offline: [...this.offline.keys()], awaiting: [...this.awaiting.keys()], exporting: this.exporting.size, conns,
      inflightActive: this.inflight.active, blockedConns: this.blockedConns.size, downlinkStalled: this.downlink.stalled,
      rings: this.uplink.fill(), heap: v8.getHeapStatistics(),
    }, 'shard state (FANOUT_TEST_HOOKS dump)');
  }

  private onWriterRestarted(broker: number, port: MessagePort): void {
    // Answers the failed writer committed before it died are still valid; the new one answers
    // nothing before it has the list below.
    this.drainAcks();
    this.subs.replaceWriter(broker, port);
    const orphans = this.upstream?.replaceWriter(broker, port) ?? [];
    for (const conn of orphans) conn.protocolClose(C.RC_UNSPECIFIED, 'its session at a broker ended with a failed writer');
    this.send({ t: 'pending', shard: this.index, broker, tokens: this.inflight.pendingOn(broker) });
  }

  /**
   * A reload: new slots get rings and their share of the subscriptions, retired ones no new
   * publish (what is in their rings and in flight is drained by their writers, whose answers
   * still arrive here), and a gone slot's unanswered publishes stop waiting for it. Everything
   * written before this message was committed at the end of an earlier turn.
   */
  private onBrokers(m: BrokerChange): void {
    const subs = [...this.sessions.values()].flatMap((session) => [...session.subs.values()]);
    this.config = m.config;
    const routing = buildRouting(m.config);
    const added = m.added.map((a) => {
      if (a.slot !== this.acks.length) throw new Error(`broker slot ${a.slot} added out of order (next is ${this.acks.length})`);
      this.acks.push(new RingConsumer(a.ack));
      this.downlink.addRing(new RingConsumer(a.downlink));
      return { ring: uplinkProducer(a.uplink, m.config), doorbell: new Doorbell(a.doorbell) };
    });
    const live = liveMask(m.config);
    this.uplink.reconfigure(buildRoutes(m.config), live, added);
    this.inflight.setBrokers(live);
    for (const a of m.added) this.subs.addWriter(a.slot, a.port, routing, subs);
    for (const b of m.retired) this.subs.retireWriter(b, routing, subs);
    let unanswered = 0;
    for (const b of m.gone) {
      for (const token of this.inflight.pendingOn(b)) {
        this.inflight.ack(token, 0, b);
        unanswered++;
      }
    }
    this.drainAcks();
    this.send({ t: 'brokers-done', shard: this.index, id: m.id, unanswered });
  }

  /** Publishes that went with a failed writer (no spool): their devices are closed without an
   *  acknowledgement, so they send them again when they reconnect. */
  private onLost(broker: number, tokens: number[]): void {
    let closed = 0;
    for (const token of tokens) {
      const owner = this.inflight.ownerWaitingOn(token, broker);
      if (owner === null) continue;
      if (owner instanceof DeviceConnection && owner.state !== 2) {
        owner.protocolClose(C.RC_UNSPECIFIED, 'a broker writer failed with this device\'s publish in flight');
        closed++;
      }
      this.inflight.ack(token, C.RC_UNSPECIFIED, broker);
    }
    this.log.warn({ broker, lost: tokens.length, closed }, 'publishes lost with a failed writer: their devices were closed to send them again');
  }

  /** A session resumed elsewhere (or a takeover) cancels a will waiting for its delay. */
  private cancelWill(connId: number): boolean {
    const pending = this.pendingWills.get(connId);
    if (pending === undefined) return false;
    clearTimeout(pending.timer);
    this.pendingWills.delete(connId);
    return true;
  }

  private claim(conn: DeviceConnection, fetch: boolean, clean = false): void {
    conn.claimed = true;
    this.sendRegistry({ claim: true, conn: conn.id, clientId: conn.clientId, fetch: fetch || undefined, clean: clean || undefined });
  }

  private release(conn: DeviceConnection): void {
    if (!conn.claimed) return;
    const ready = this.readying.get(conn.id);
    if (ready !== undefined) {
      // Read from the store for this connection, which is gone before its CONNACK: not kept
      // here (the client id is let go below, its writes would be fenced off).
      this.readying.delete(conn.id);
      this.forget(ready);
    }
    if (this.awaiting.get(conn.id)?.conn === conn) {
      // Its session is still on its way: the id stays claimed until it is here (onSessionState
      // releases it then, or parks the session), so that a CONNECT meanwhile gets it from here.
      this.sendRegistry({ claim: false, conn: conn.id, clientId: conn.clientId, gone: true });
      return;
    }
    conn.claimed = false;
    // A persistent session keeps the client id claimed, so that a CONNECT on another shard
    // reaches it (kick) instead of leaving it behind.
    if (this.offline.get(conn.id) !== undefined) return;
    this.sendRegistry({ claim: false, conn: conn.id, clientId: conn.clientId });
  }

  parse(version: number, packet: Buffer): Packet | null {
    return this.parser.parse(version, packet);
  }

  blocked(conn: DeviceConnection): void {
    this.stats.add('backpressurePauses');
    // Held by a writer (per-device mode): its release wakes the connection.
    if (!conn.upstreamHeld) this.blockedConns.add(conn);
  }

  wake(conn: DeviceConnection): void {
    this.woken.push(conn);
  }

  dirty(conn: DeviceConnection): void {
    this.dirtyConns.push(conn);
  }

  private turnScheduled = false;
  private readonly endOfTurnBound = (): void => this.endOfTurn();

  /** Coalesces the work of every socket event of one event-loop turn into one endOfTurn(). */
  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(this.endOfTurnBound);
  }

  /** Publish ring records (one doorbell per writer), flush device sockets (one write each). */
  private endOfTurn(): void {
    this.turnScheduled = false;
    this.upstream?.flush();
    this.uplink.commit();
    this.subs.flush();
    const dirty = this.dirtyConns;
    if (dirty.length > 0) {
      this.dirtyConns = [];
      for (const c of dirty) c.flush();
    }
  }

  /** Waits on the doorbell for acknowledgements and ring space, never blocking the loop. */
  private async ackLoop(): Promise<void> {
    let lastBusy = 0;
    while (!this.stopped) {
      const now = performance.now();
      if (this.drainAcks() > 0) lastBusy = now;
      if (this.inflight.active > 0 && now - lastBusy <= BUSY_WINDOW_MS) {
        // Busy: poll again shortly without asking writers to notify. A cross-thread wake-up
        // costs far more CPU than a timer (the writer's Atomics.notify was a quarter of its time
        // at 5k msg/s when one empty poll parked the loop), and under load most polls find a
        // batch. Answers owed keep it polling for a short while after the last one.
        await new Promise((r) => setTimeout(r, NAP_MS));
        continue;
      }
      const seen = this.doorbell.prepare();
      if (!this.anyAcks()) await this.doorbell.wait(seen, this.downlink.stalled ? 100 : 1000);
      this.doorbell.awake();
    }
  }

  private anyAcks(): boolean {
    for (const a of this.acks) if (a.hasData()) return true;
    // A downlink waiting for queue room is retried by deliveryRoom() and the wait's timeout,
    // not spun on.
    return !this.downlink.stalled && this.downlink.hasData();
  }

  private drainAcks(): number {
    let total = 0;
    for (let b = 0; b < this.acks.length; b++) {
      const ring = this.acks[b];
      const view = ring.dataView;
      const buf = ring.buffer;
      let at: number;
      let n = 0;
      while ((at = ring.next()) >= 0) {
        this.inflight.ack(view.getUint32(at, true), buf[at + 4], b);
        total++;
        if (++n === 4096) {
          if (ring.release()) this.ackWriters[b].ring();
          n = 0;
        }
      }
      if (ring.release()) this.ackWriters[b].ring();
    }
    total += this.downlink.drain(Date.now());
    this.retryBlocked();
    this.endOfTurn();
    return total;
  }

  private retryBlocked(): void {
    this.http.retry();
    this.upstream?.retry();
    while (this.willQueue.length > 0 && this.tryWill(this.willQueue[0].bytes, this.willQueue[0].version)) this.willQueue.shift();
    const woken = this.woken;
    if (woken.length > 0) {
      this.woken = [];
      for (const c of woken) {
        this.blockedConns.delete(c);
        c.resume();
      }
    }
    if (this.blockedConns.size > 0) {
      const all = this.blockedConns;
      this.blockedConns = new Set();
      for (const c of all) c.resume();
    }
  }

  private readonly vitals = new ThreadVitals();
  private touched = Date.now();

  private onTick(): void {
    const now = Date.now();
    setVitals(this.stats, this.vitals.sample());
    for (const [connId, session] of this.offline) {
      if (session.expiresAt <= now) {
        this.offline.delete(connId);
        this.endSession(session);
        this.sendRegistry({ claim: false, conn: connId, clientId: session.clientId });
      }
    }
    this.subs.sweep(now);
    if (this.store.shared && now - this.touched >= TOUCH_MS) {
      // A connected session's record must outlive its connection by the session expiry.
      this.touched = now;
      for (const session of this.sessions.values()) if (session.link !== null) session.journal?.meta(session);
    }
    this.upstream?.tick(now);
    this.warnings.flush();
    this.stats.set('messagesOut', this.downlink.delivered);
    this.http.retry();
    this.stats.add('subscriptions', this.subs.size - this.stats.get('subscriptions'));
    const connectDeadline = now - this.config.connectTimeoutMs;
    for (const c of this.conns.values()) {
      if (c.closingSince > 0 && c.closingSince < connectDeadline) {
        // Its socket closed with input still held (a device paused by backpressure, or waiting
        // on something that never came): that input is handled while it can be, not forever.
        c.destroy('input read before the close still unhandled after FANOUT_CONNECT_TIMEOUT_MS');
      } else if (c.state === 0) {
        // From the accept, not the last byte: a CONNECT trickled a byte at a time is no CONNECT.
        if (c.openedAt < connectDeadline) c.destroy('no CONNECT in time');
      } else if (c.keepaliveMs > 0 && now - c.lastRx > c.keepaliveMs * 1.5) {
        c.protocolClose(C.RC_KEEP_ALIVE_TIMEOUT, 'keep-alive timeout');
      }
    }
    // The doorbell wait has a timeout, but a missed wake-up must not stall blocked devices.
    if (this.blockedConns.size > 0 || this.willQueue.length > 0) this.drainAcks();
    this.endOfTurn();
  }

  /**
   * A thread that V8 ends for running out of heap (FANOUT_THREAD_HEAP_MB) cannot close its uWS
   * apps first, and their open handles then abort the whole process. So a shard serving uWS
   * watches its heap and, close to the limit, closes them and fails on purpose: the supervisor
   * restarts it like any other failed shard. (A heap that fills within one check interval still
   * takes the process down.)
   */
  private watchHeap(): void {
    // V8 gives up when the old generation reaches FANOUT_THREAD_HEAP_MB.
    const limit = this.config.threadHeapMb * 1048576;
    const timer = setInterval(() => {
      const h = v8.getHeapStatistics();
      if (h.used_heap_size < HEAP_ALARM * limit) return;
      clearInterval(timer);
      this.log.error({ usedMb: Math.round(h.used_heap_size / 1048576), limitMb: this.config.threadHeapMb },
        'shard heap nearly exhausted (FANOUT_THREAD_HEAP_MB): closing its WebSocket apps and failing on purpose to be restarted');
      this.closeWebSockets();
      setImmediate(() => { throw new Error('shard heap nearly exhausted'); });
    }, HEAP_CHECK_MS);
    timer.unref();
  }

  /**
   * Closes the WebSocket listener and its connections at once. A thread that ends with live
   * uWS apps aborts the whole process, so a failing shard calls this before it exits.
   */
  closeWebSockets(): void {
    const open = [this.ws, this.wss];
    this.ws = null;
    this.wss = null;
    for (const l of open) l?.closeAll();
  }

  /** Stop accepting and reading, let accepted messages be acknowledged, then say goodbye. */
  private async drain(): Promise<void> {
    this.draining = true;
    // A shard's own SO_REUSEPORT socket can be closed; a shared descriptor must stay open for
    // the other shards (new connections are refused in accept() instead).
    if (this.opts.listen.kind === 'reuseport') this.server?.close();
    this.tlsServer?.close();
    for (const c of this.conns.values()) c.transport.pause();
    const deadline = Date.now() + this.config.shutdownTimeoutMs / 2;
    while (this.inflight.active > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    this.endOfTurn();
    this.ws?.stopListening();
    this.wss?.stopListening();
    for (const c of this.conns.values()) c.shutdown();
    for (const p of this.pendingWills.values()) clearTimeout(p.timer);
    // uWS sockets must be gone before the thread exits: give the goodbyes a moment, then cut.
    const wsDeadline = Date.now() + 500;
    const wsOpen = (): number => (this.ws?.open ?? 0) + (this.wss?.open ?? 0);
    while (wsOpen() > 0 && Date.now() < wsDeadline) await new Promise((r) => setTimeout(r, 10));
    this.ws?.closeAll();
    this.wss?.closeAll();
    this.stopped = true;
    this.warnings.flush(true);
    if (this.tick) clearInterval(this.tick);
    // Persistent sessions stay recorded for the instances (or the restart) that resume them.
    await this.store.close();
    this.send({ t: 'drained', shard: this.index });
  }

  private send(m: FromShard): void {
    this.port.postMessage(m);
  }

  /** Claims and releases go to the supervisor in one message per turn: postMessage costs tens
   *  of microseconds, a noticeable share of a connection's cost in a connection storm. */
  private registryOps: RegistryOp[] = [];

  private sendRegistry(op: RegistryOp): void {
    if (this.registryOps.length === 0) setImmediate(() => {
      const ops = this.registryOps;
      this.registryOps = [];
      this.send({ t: 'registry', shard: this.index, ops });
    });
    this.registryOps.push(op);
  }
}

/** The producer side of an uplink ring, queueing at most FANOUT_UPLINK_QUEUE_BYTES. */
function uplinkProducer(ring: RingBuffers, config: Config): RingProducer {
  const p = new RingProducer(ring);
  p.queueLimit = Math.min(p.queueLimit, config.uplinkQueueBytes);
  return p;
}
