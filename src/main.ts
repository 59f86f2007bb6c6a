// The supervisor: builds the rings, starts the listener, the broker writers and the shards,
// keeps the client-id registry, relays worker logs, and runs the graceful shutdown.

import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as dns from 'node:dns/promises';
import * as net from 'node:net';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { loadedAllocator } from './allocator';
import { writeHeapSnapshot } from './test-hooks';
import type { Config, BrokerConfig } from './config/types';
import { createMainLogger, type MainLog } from './log';
import { createRing, type RingBuffers } from './ring/spsc';
import { createDoorbell } from './ring/doorbell';
import { ClientRegistry, type Owner } from './registry';
import { startEmbeddedBroker, type EmbeddedBroker } from './embedded';
import type { FromShard, ToShard, WsPlan } from './shard/shard';
import { assertPortFree, loadReuseport, type ListenPlan } from './ingress/listen';
import type { FromWriter, ToWriter } from './broker/writer';
import { clearStatsRow, createStats, readShardStats, readWriterStats, type ShardField } from './metrics/stats';
import { MetricsCollector } from './metrics/collector';
import { startHttp } from './ingress/http';
import * as fs from 'node:fs';
import { Authenticator } from './auth/authenticator';
import { parseAclFile, type Acl } from './auth/acl';
import { ConfigError, loadConfig, redactedConfig } from './config/index';
import { BrokerSet, type ReloadResult } from './broker-set';

export type { ReloadResult } from './broker-set';
import { MAX_BROKER_SLOTS } from './shard/uplink';
import type * as http from 'node:http';
import { randomBytes } from 'node:crypto';
import { lockSpoolDir } from './broker/spool';
import { Ownership } from './cluster/ownership';
import { redactUrl } from './config/brokers';

const WORKERS = path.join(__dirname, '..', 'workers');
/** A thread restarted this many times within the window is not restarted again. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

export interface Daemon {
  readonly port: number;
  /** WebSocket listener port, null when off. */
  readonly wsPort: number | null;
  /** Secure WebSocket listener port, null when off. */
  readonly wssPort: number | null;
  /** HTTP listener port, null when off. */
  readonly httpPort: number | null;
  /** TLS listener port, null when off. */
  readonly tlsPort: number | null;
  /** Re-reads what may change without a restart: the TLS certificate, password and ACL files,
   *  and the broker set (see reloadBrokers). */
  reload(): Promise<ReloadResult>;
  /** Re-reads the configuration and applies a changed broker set (see src/reload.ts). */
  reloadBrokers(): Promise<ReloadResult>;
  /** The brokers in service. */
  readonly brokers: readonly BrokerConfig[];
  /** Per-shard counters (connections, publishes, ...), read from shared memory. */
  shardStats(): Record<ShardField, number>[];
  stop(): Promise<void>;
}

export interface DaemonOptions {
  /** Reads the configuration again for a reload (default: loadConfig of process.env, which
   *  re-reads FANOUT_BROKERS_FILE and the broker credential files). */
  reloadConfig?: () => Config;
}

export async function startDaemon(config: Config, log: MainLog = createMainLogger(config.logLevel, config.logFormat), opts: DaemonOptions = {}): Promise<Daemon> {
  const logger = log.logger;
  // libuv then accepts one connection per wake-up, letting idle shards take their share.
  process.env.UV_TCP_SINGLE_ACCEPT = '1';

  let embedded: EmbeddedBroker | null = null;
  let brokers = config.brokers;
  if (config.embeddedBroker) {
    embedded = await startEmbeddedBroker();
    brokers = [embedded.broker];
    logger.info({ broker: embedded.broker.redactedUrl }, 'FANOUT_BROKERS not set: started an embedded broker (aedes) as the only upstream');
  }
  // Replaced by a reload that changes the broker set: Config.brokers then lists every broker
  // slot, those the reload removed marked retired.
  let cfg: Config = Object.freeze({ ...config, brokers });
  let releaseSpool: (() => void) | null = null;
  if (cfg.spoolDir !== null) {
    const lock = lockSpoolDir(cfg.spoolDir);
    if (!lock.ok) {
      await embedded?.close();
      throw new ConfigError('FANOUT_SPOOL_DIR', cfg.spoolDir, `FANOUT_SPOOL_DIR="${cfg.spoolDir}" is invalid: expected a folder no other running daemon uses (process ${lock.holder} holds it)`);
    }
    releaseSpool = lock.release;
  }
  // Spool entries of this run carry it: tokens of an earlier run mean nothing now.
  const runId = randomBytes(4).readUInt32LE(0);
  // This process in the session store: a restarted instance is a new one.
  const instance = `${cfg.proxyId}:${randomBytes(4).toString('hex')}`;
  // Broker passwords, from URLs or files, show as *** (redactedConfig); pino's redact paths only
  // reach a `password` field one level down.
  logger.debug({ config: redactedConfig(cfg) }, 'configuration');

  const onWorkerMessage = (m: { t: string; line?: string }): boolean => {
    if (m.t === 'log') {
      log.relay(m.line!);
      return true;
    }
    return false;
  };
  const exited = new Set<Worker>();
  /** Writers a reload ends on purpose (removed or changed brokers). */
  const ending = new Set<Worker>();
  const restarts = new Map<string, number[]>();
  /** Fatal: the other threads are stopped in order (a thread that ends with open WebSocket
   *  handles would abort the process), then the daemon exits with 1. */
  const failHard = (): void => {
    const fail = (): void => { void log.flush().then(() => process.exit(1)); };
    if (stopNow === null) fail();
    else void stopNow(1).then(fail, fail);
  };
  /** A shard or writer that fails once the daemon runs is restarted alone (at most
   *  MAX_RESTARTS times in RESTART_WINDOW_MS: a thread that keeps failing is a defect that a
   *  restart does not mend); anything else, or a failure during start-up, stops the daemon. */
  const watch = (w: Worker, name: string, restart: (() => void) | null = null): Worker => {
    w.on('error', (err) => logger.error({ err, thread: name }, 'worker thread failed'));
    w.on('exit', (code) => {
      exited.add(w);
      if (stopping || ending.has(w)) return;
      const now = Date.now();
      const recent = (restarts.get(name) ?? []).filter((t) => now - t < RESTART_WINDOW_MS);
      if (restart !== null && running && recent.length < MAX_RESTARTS) {
        recent.push(now);
        restarts.set(name, recent);
        logger.error({ thread: name, code, restartsInWindow: recent.length }, 'worker thread exited unexpectedly; restarting it');
        restart();
        return;
      }
      logger.fatal({ thread: name, code, restartsInWindow: recent.length }, restart !== null && running
        ? 'worker thread keeps failing; stopping' : 'worker thread exited unexpectedly; stopping');
      failHard();
    });
    return w;
  };
  const threadLimits = { maxOldGenerationSizeMb: cfg.threadHeapMb, ...(cfg.threadYoungMb > 0 ? { maxYoungGenerationSizeMb: cfg.threadYoungMb } : {}) };
  // A young generation of fixed size: V8 otherwise starts it small, grows it under load and
  // shrinks it at idle collections, so that the threads' resident memory follows the load's
  // history rather than its level. A third of it is one semi-space (V8's split); the flag is
  // read by each thread started from now on, the main thread keeps its own.
  if (cfg.threadYoungMb > 0) v8.setFlagsFromString(`--min-semi-space-size=${Math.max(1, Math.floor(cfg.threadYoungMb / 3))}`);
  /** Set once every thread started: from then on a failed shard or writer is restarted. */
  let running = false;
  let stopping = false;
  let stopNow: ((exitCode: number) => Promise<void>) | null = null;

  // Rings and doorbells: one uplink and one ack ring per shard x broker.
  const shards = cfg.shards;
  const uplink: RingBuffers[][] = [];
  const acks: RingBuffers[][] = [];
  const downlink: RingBuffers[][] = [];
  // Control channels between each shard and each writer (subscriptions): [shard][broker].
  const shardEnds: MessagePort[][] = [];
  const writerEnds: MessagePort[][] = brokers.map(() => []);
  const ackBytes = Math.max(65536, cfg.ringBytes / 4);
  for (let s = 0; s < shards; s++) {
    uplink.push(brokers.map(() => createRing(cfg.ringBytes)));
    acks.push(brokers.map(() => createRing(ackBytes)));
    downlink.push(brokers.map(() => createRing(cfg.ringBytes)));
    shardEnds.push(brokers.map((_, b) => {
      const { port1, port2 } = new MessageChannel();
      writerEnds[b].push(port1);
      return port2;
    }));
  }
  const shardBells = Array.from({ length: shards }, () => createDoorbell());
  const writerBells = brokers.map(() => createDoorbell());
  const stats = createStats(shards);
  // A row for every slot a reload may add.
  const writerStats = createStats(MAX_BROKER_SLOTS);

  // The device listener: SO_REUSEPORT per shard where possible, else one shared descriptor.
  await assertPortFree(cfg.host, cfg.port);
  let listener: Worker | null = null;
  const control = new SharedArrayBuffer(4);
  let plan: ListenPlan;
  if (loadReuseport() !== null) {
    // The native call takes an address, not a name.
    const { address } = await dns.lookup(cfg.host);
    plan = { kind: 'reuseport', host: address, port: cfg.port };
  } else {
    logger.warn('no SO_REUSEPORT binary (node-unix-socket) for this platform: shards share one listening socket, and the kernel may spread connections unevenly');
    listener = watch(new Worker(path.join(WORKERS, 'listener.worker.js'), { workerData: { host: cfg.host, port: cfg.port, control } }), 'listener');
    const shared = await new Promise<{ fd: number }>((resolve, reject) => {
      listener!.on('message', (m: { t: string; fd: number; message?: string }) => {
        if (m.t === 'listening') resolve(m);
        else if (m.t === 'error') reject(new Error(`cannot listen on ${cfg.host}:${cfg.port}: ${m.message}`));
      });
    });
    plan = { kind: 'shared', fd: shared.fd };
  }

  const httpAnswers = new Map<number, (reason: number) => void>();
  // Histograms the threads handed over and the collector has not taken yet. A reply that comes
  // after a collection gave up waiting is kept for the next one: each is recorded only once.
  const latency = { ack: [] as string[], rtt: brokers.map(() => [] as string[]), waiting: 0, wake: null as (() => void) | null };
  /** Per broker, the address each pool connection is up on (-1: down), as of the last collection. */
  const connectionAddresses: number[][] = [];
  const gotLatency = (): void => {
    if (latency.waiting > 0 && --latency.waiting === 0) latency.wake?.();
  };
  const writers: Worker[] = [];
  /** A broker set reload is running (see BrokerSet). */
  let reloading = false;
  /** Brokers /readyz waits for: every broker at the start; one a reload added or changed once
   *  it has had a connection up. */
  const established = new Set<string>(cfg.brokers.map((b) => b.name));
  /** The broker slots in service (a reload retires removed ones). */
  const liveSlots = (): number[] => cfg.brokers.flatMap((b, i) => (b.retired === true ? [] : [i]));
  const shardWorkers: Worker[] = [];
  const toShard = (s: number, m: ToShard, transfer: MessagePort[] = []): void => shardWorkers[s]?.postMessage(m, transfer);
  /** Shards being replaced: the writers that still have to let go of them, then the start. */
  const resetting = new Map<number, { left: Set<number>; start: () => void }>();
  const spawnWriter = (b: number, shardPorts: MessagePort[], recovering: boolean): void => {
    const broker = cfg.brokers[b];
    const w = watch(new Worker(path.join(WORKERS, 'writer.worker.js'), {
      workerData: {
        config: cfg, broker, index: b, uplinkRings: uplink.map((r) => r[b]), ackRings: acks.map((r) => r[b]),
        downlinkRings: downlink.map((r) => r[b]), shardPorts, stats: writerStats,
        doorbell: writerBells[b], shardDoorbells: shardBells, runId, recovering,
      },
      transferList: shardPorts,
      resourceLimits: threadLimits,
    }), `writer-${broker.name}`, () => restartWriter(b));
    // Listening from the start: a message emitted before a listener exists is lost (the first
    // "broker connected" lines were).
    w.on('message', (m: FromWriter | { t: 'log'; line: string }) => {
      if (onWorkerMessage(m)) return;
      if (m.t === 'metrics') {
        if (m.rtt !== '') latency.rtt[m.broker].push(m.rtt);
        connectionAddresses[m.broker] = m.addresses;
        gotLatency();
      } else if (m.t === 'lost') {
        toShard(m.shard, { t: 'lost', broker: m.broker, tokens: m.tokens });
      } else if (m.t === 'shard-reset-done') {
        const r = resetting.get(m.shard);
        if (r !== undefined && r.left.delete(m.broker) && r.left.size === 0) r.start();
      }
    });
    writers[b] = w;
  };
  /** A writer failed: its successor takes the same rings, gets new channels to the shards, and
   *  answers only what the shards say they still wait for (see Writer's Recovery). */
  const restartWriter = (b: number): void => {
    const channels = shardWorkers.map(() => new MessageChannel());
    spawnWriter(b, channels.map((c) => c.port1), true);
    channels.forEach((c, s) => {
      if (resetting.has(s)) writers[b].postMessage({ t: 'pending', shard: s, tokens: [] } satisfies ToWriter);
      toShard(s, { t: 'writer-restarted', broker: b, port: c.port2 }, [c.port2]);
    });
  };
  brokers.forEach((_, b) => spawnWriter(b, writerEnds[b], false));
  // Authentication: the password file is verified on this thread's piscina pool, never on a shard.
  let authenticator: Authenticator | null = null;
  if (cfg.passwordFile !== null) {
    authenticator = await Authenticator.load(cfg.passwordFile);
    for (const e of authenticator.errors) logger.warn({ file: cfg.passwordFile, line: e.line, problem: e.message }, 'password file line skipped');
  }
  // The shards read the ACL file themselves; this copy serves POST /publish.
  let httpAcl: Acl | null = null;
  if (cfg.aclFile !== null) {
    const { acl, errors } = parseAclFile(fs.readFileSync(cfg.aclFile, 'utf8'));
    httpAcl = acl;
    if (errors.length > 0) {
      throw new ConfigError('FANOUT_ACL_FILE', cfg.aclFile,
        `FANOUT_ACL_FILE="${cfg.aclFile}" is invalid: line ${errors[0].line}: ${errors[0].message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`);
    }
  }
  logger.info({ passwordFile: cfg.passwordFile, users: authenticator?.size, aclFile: cfg.aclFile, allowAnonymous: cfg.allowAnonymous },
    cfg.allowAnonymous ? 'devices without a user name are accepted (FANOUT_ALLOW_ANONYMOUS)' : 'devices must give a user name (FANOUT_ALLOW_ANONYMOUS=false)');
  const onAuth = (m: Extract<FromShard, { t: 'auth' }>): void => {
    const answer = (ok: boolean): void => toShard(m.shard, { t: 'authed', id: m.id, ok });
    if (authenticator === null) answer(false);
    else authenticator.verify(m.username, m.password === undefined ? undefined : Buffer.from(m.password)).then(answer, () => answer(false));
  };
  // FANOUT_SESSION_STORE=redis://: client ids are owned across instances (src/cluster/).
  const handovers = new Map<number, () => void>();
  let nextHandover = 1;
  let ownership: Ownership | null = null;
  if (cfg.sessionStore !== null) {
    ownership = new Ownership(cfg.sessionStore, instance, logger, cfg.sessionExpiryMaxS, {
      // A clean start elsewhere: the session here ends with its connection (a plain kick would
      // park a persistent one here, stale, and its later CONNECTs here would not ask the store).
      kick: (clientId) => {
        const owner = registry.owner(clientId);
        if (owner !== undefined) toShard(owner.shard, { t: 'handover', conn: owner.conn, clientId, req: 0 });
      },
      handover: (clientId, done) => {
        const owner = registry.owner(clientId);
        if (owner === undefined) {
          done();
          return;
        }
        const req = nextHandover++;
        handovers.set(req, done);
        toShard(owner.shard, { t: 'handover', conn: owner.conn, clientId, req });
      },
    });
    try {
      await ownership.start();
    } catch (err) {
      await ownership.stop();
      await embedded?.close();
      releaseSpool?.();
      const shown = redactUrl(cfg.sessionStore);
      throw new ConfigError('FANOUT_SESSION_STORE', shown, `FANOUT_SESSION_STORE="${shown}" is invalid: expected a Redis server that answers (${(err as Error).message})`);
    }
    logger.info({ sessionStore: redactUrl(cfg.sessionStore), instance }, 'persistent sessions are recorded in Redis; client ids are owned across instances');
  }
  const registry = new ClientRegistry({
    kick: (owner) => toShard(owner.shard, { t: 'kick', conn: owner.conn }),
    fetch: (previous, next, clientId) => toShard(previous.shard, { t: 'export', conn: previous.conn, clientId, to: next.shard, toConn: next.conn }),
    none: (next, clientId, clean) => {
      if (ownership === null) {
        toShard(next.shard, { t: 'session', conn: next.conn, from: -1, exportId: 0, state: null });
        return;
      }
      claimFromStore(ownership, next, clientId, clean);
    },
  });
  /** The client id across instances, and its recorded session, for the CONNECT `next`. The
   *  claim goes on while some connection here has the id: a CONNECT that replaced `next` in the
   *  meantime gets the session from `next`'s shard once it is there (see Shard.onExport). */
  const claimFromStore = (store: Ownership, next: Owner, clientId: string, clean: boolean): void => {
    const wanted = (): boolean => {
      const o = registry.owner(clientId);
      return o !== undefined && !(o.gone === true && o.shard === next.shard && o.conn === next.conn);
    };
    void store.claim(clientId, clean, wanted).then((r) => {
      // The connection went while the claim ran: the key it took is let go again unless another
      // connection here has the id by now (its own claim follows this one).
      if (r.ok && !r.abandoned && registry.owner(clientId) === undefined) store.release(clientId);
      toShard(next.shard, {
        t: 'session', conn: next.conn, from: -1, exportId: 0, state: r.ok ? r.state : null, refuse: !r.ok || r.abandoned === true,
      });
    });
  };
  type Ready = Extract<FromShard, { t: 'ready' }>;
  const startShard = (s: number, listen: ListenPlan, ws: WsPlan | null, wss: WsPlan | null, tlsPlan: ListenPlan | null,
    writerPorts: MessagePort[] = shardEnds[s], restarted = false): Promise<Ready> => new Promise((resolve, reject) => {
    const w = watch(new Worker(path.join(WORKERS, 'shard.worker.js'), {
      workerData: {
        config: cfg, index: s, instance, listen, ws, wss, tls: tlsPlan, uplinkRings: uplink[s], ackRings: acks[s],
        downlinkRings: downlink[s], writerPorts, restarted,
        doorbell: shardBells[s], writerDoorbells: writerBells, stats,
      },
      transferList: writerPorts,
      resourceLimits: threadLimits,
    }), `shard-${s}`, plan.kind === 'reuseport' ? () => restartShardWhenIdle(s) : null);
    w.on('message', (m: FromShard | { t: 'log'; line: string }) => {
      if (onWorkerMessage(m)) return;
      const msg = m as FromShard;
      if (msg.t === 'registry') {
        for (const op of msg.ops) {
          if (op.claim) registry.claim(op.clientId, { shard: msg.shard, conn: op.conn }, op.fetch, op.clean);
          else if (op.gone === true) registry.gone(op.clientId, { shard: msg.shard, conn: op.conn });
          else if (registry.release(op.clientId, { shard: msg.shard, conn: op.conn })) ownership?.release(op.clientId);
        }
      } else if (msg.t === 'relay') toShard(msg.to, msg.msg);
      else if (msg.t === 'pending') writers[msg.broker]?.postMessage({ t: 'pending', shard: msg.shard, tokens: msg.tokens } satisfies ToWriter);
      else if (msg.t === 'published') httpAnswers.get(msg.id)?.(msg.reason);
      else if (msg.t === 'unrecorded') {
        // The client id's previous connection here had nothing: the session is read from the store.
        const o = registry.owner(msg.clientId);
        if (ownership !== null && o !== undefined && o.shard === msg.next.shard && o.conn === msg.next.conn) claimFromStore(ownership, msg.next, msg.clientId, false);
        else toShard(msg.next.shard, { t: 'session', conn: msg.next.conn, from: -1, exportId: 0, state: null, refuse: ownership !== null });
      }
      else if (msg.t === 'handed') {
        handovers.get(msg.req)?.();
        handovers.delete(msg.req);
      }
      else if (msg.t === 'auth') onAuth(msg);
      else if (msg.t === 'metrics') {
        if (msg.ackLatency !== '') latency.ack.push(msg.ackLatency);
        gotLatency();
      }
      else if (msg.t === 'ready') resolve(msg);
      else if (msg.t === 'failed') reject(new Error(`cannot listen on ${cfg.host}:${cfg.port}: ${msg.message}`));
    });
    shardWorkers[s] = w;
  });
  // The first shard binds the port (possibly 0 = any); the others join the port it got.
  // WebSocket: uWS binds SO_REUSEPORT itself; its `ws` fallback needs the reuseport binary (else
  // only the first shard serves WebSocket).
  const planWs = async (wsPort: number | null): Promise<WsPlan | null> => {
    if (wsPort === null) return null;
    await assertPortFree(cfg.host, wsPort);
    const { address } = await dns.lookup(cfg.host);
    // uSockets sets SO_REUSEPORT only on a given port: pick the free port here for port 0.
    const port0 = wsPort === 0 ? await freePort(address) : wsPort;
    return { host: address, port: port0, fallbackPlan: plan.kind === 'reuseport' ? { kind: 'reuseport', host: address, port: port0 } : null };
  };
  /** What the other shards get once the first has bound: null when only the first can serve. */
  const joinWs = (p: WsPlan | null, port: number | null, implementation: string | null): WsPlan | null => {
    if (p === null || port === null) return null;
    const fallbackPlan: ListenPlan | null = p.fallbackPlan === null ? null : { kind: 'reuseport', host: p.host, port };
    return implementation === 'uWebSockets.js' || fallbackPlan !== null ? { ...p, port, fallbackPlan } : null;
  };
  let wsPlan = await planWs(cfg.wsPort);
  let wssPlan = await planWs(cfg.wssPort);
  // TLS: a reuseport socket per shard like plain TCP; without the binary, the first shard only.
  let tlsPlan: ListenPlan | null = null;
  if (cfg.tlsPort !== null) {
    await assertPortFree(cfg.host, cfg.tlsPort);
    const { address } = await dns.lookup(cfg.host);
    tlsPlan = { kind: plan.kind === 'reuseport' ? 'reuseport' : 'plain', host: address, port: cfg.tlsPort };
  }
  const first = await startShard(0, plan, wsPlan, wssPlan, tlsPlan);
  const tlsPort = first.tlsPort;
  if (tlsPlan !== null && tlsPort !== null) tlsPlan = tlsPlan.kind === 'reuseport' ? { ...tlsPlan, port: tlsPort } : null;
  const port = first.port;
  const { wsPort, wssPort } = first;
  if (plan.kind === 'reuseport') plan = { ...plan, port };
  if ((wsPort !== null && first.ws !== 'uWebSockets.js') || (wssPort !== null && first.wss !== 'uWebSockets.js' && !cfg.tlsRequireClientCert)) {
    logger.warn('the native uWebSockets.js binary does not load here: WebSocket devices are served by the ws package instead');
  }
  if (wssPort !== null && cfg.tlsRequireClientCert) {
    logger.info('FANOUT_TLS_REQUIRE_CLIENT_CERT: secure WebSocket devices are served by node https and the ws package, '
      + 'since uWebSockets.js verifies a client certificate only when one is shown');
  }
  wsPlan = joinWs(wsPlan, wsPort, first.ws);
  wssPlan = joinWs(wssPlan, wssPort, first.wss);
  await Promise.all(Array.from({ length: shards - 1 }, (_, i) => startShard(i + 1, plan, wsPlan, wssPlan, tlsPlan)));

  /**
   * A shard failed: its devices lost their connections (they reconnect to the other shards at
   * once) and its sessions are gone. Its client ids are released; every writer lets go of what it
   * held and stops answering its old tokens; then a new shard starts on the same rings and port.
   * (Only with SO_REUSEPORT listeners: a shared listening descriptor dies with the shard that
   * used it.)
   */
  /** A shard that fails during a reload is replaced once the reload is done, so that it starts
   *  with the final broker slots and every writer (a new one too) gets its channel. */
  const deferredShards = new Set<number>();
  const restartShardWhenIdle = (s: number): void => {
    if (reloading) deferredShards.add(s);
    else restartShard(s);
  };
  const restartShard = (s: number): void => {
    registry.dropShard(s);
    clearStatsRow(stats, s);
    const channels = writers.map(() => new MessageChannel());
    const serving = liveSlots();
    resetting.set(s, {
      left: new Set(serving),
      start: () => {
        startShard(s, plan, wsPlan, wssPlan, tlsPlan, channels.map((c) => c.port2), true).then(
          () => {
            resetting.delete(s);
            logger.info({ shard: s }, 'shard restarted');
          },
          (err: Error) => {
            logger.fatal({ shard: s, err: err.message }, 'shard could not be restarted; stopping');
            failHard();
          },
        );
      },
    });
    for (const b of serving) writers[b].postMessage({ t: 'shard-reset', shard: s, port: channels[b].port1 } satisfies ToWriter, [channels[b].port1]);
  };

  /** What /readyz answers and fanout_ready exports. */
  const readiness = (): { ready: boolean; brokers: { name: string; up: number }[] } => {
    const ws = readWriterStats(writerStats, cfg.brokers.length);
    const list = liveSlots().map((i) => ({ name: cfg.brokers[i].name, up: ws[i].connectionsUp }));
    for (const b of list) if (b.up > 0) established.add(b.name);
    // A broker a reload added or changed counts once it has been up: until then the instance
    // serves as it did before the reload (a load balancer must not take it out, and cut its
    // devices, for a broker it did not have a moment ago). Nor does a reload in progress.
    return { ready: !stopping && list.every((b) => b.up > 0 || reloading || !established.has(b.name)), brokers: list };
  };
  // HTTP: metrics, health, publish, dashboard.
  const collector = new MetricsCollector({
    ready: () => readiness().ready,
    get brokers() { return cfg.brokers; },
    shards,
    ...(ownership !== null ? { ownership: () => ({ ...ownership!.counters }) } : {}),
    shardStats: () => readShardStats(stats, shards),
    writerStats: () => readWriterStats(writerStats, cfg.brokers.length),
    uplinkRings: uplink, downlinkRings: downlink,
    connectionAddresses: () => connectionAddresses,
    pullLatency: () => new Promise((resolve) => {
      const take = (): void => {
        clearTimeout(timer);
        latency.wake = null;
        latency.waiting = 0;
        const ack = latency.ack.splice(0);
        const rtt = latency.rtt.map((list) => list.splice(0));
        resolve({ ack, rtt });
      };
      const timer = setTimeout(take, 500);
      const serving = liveSlots();
      latency.waiting = shards + serving.length;
      latency.wake = take;
      for (const w of shardWorkers) w.postMessage({ t: 'metrics' } satisfies ToShard);
      for (const b of serving) writers[b].postMessage({ t: 'metrics' } satisfies ToWriter);
    }),
  });
  let httpServer: (http.Server & { boundPort: number }) | null = null;
  if (cfg.httpPort !== null) {
    collector.start();
    let nextPublish = 1;
    let nextShard = 0;
    httpServer = await startHttp({
      host: cfg.host, port: cfg.httpPort, maxPacketSize: cfg.maxPacketSize, log: logger, metrics: collector,
      topicLimits: { maxTopicLength: cfg.maxTopicLength, maxTopicLevels: cfg.maxTopicLevels },
      auth: {
        allowAnonymous: cfg.allowAnonymous === true,
        verify: authenticator === null ? null : (username, password) => authenticator!.verify(username, password).catch(() => false),
        acl: (clientId, username) => httpAcl?.forClient(clientId, username) ?? null,
      },
      adminToken: cfg.adminToken,
      reload: async () => {
        const r = await reload();
        return r.ok ? { status: 200, body: r } : { status: r.status, body: { ok: false, error: r.error } };
      },
      testCrash: cfg.testHooks ? (thread, kind) => {
        if (thread === 'main' && kind === 'heap') {
          logger.warn({ file: writeHeapSnapshot('main') }, 'heap snapshot written (FANOUT_TEST_HOOKS)');
          return true;
        }
        const target = /^shard-(\d+)$/.test(thread) ? shardWorkers[Number(thread.slice(6))]
          : thread.startsWith('writer-') ? writers[cfg.brokers.findIndex((b) => b.name === thread.slice(7) && b.retired !== true)] : undefined;
        if (target === undefined) return false;
        logger.warn({ thread, kind }, 'FANOUT_TEST_HOOKS: making a thread fail on request');
        target.postMessage({ t: 'test-crash', kind });
        return true;
      } : undefined,
      ready: readiness,
      publish: (topic, payload, qos, retain) => new Promise((resolve) => {
        const id = nextPublish++;
        httpAnswers.set(id, (reason) => {
          httpAnswers.delete(id);
          resolve(reason);
        });
        const s = nextShard;
        nextShard = (nextShard + 1) % shards;
        toShard(s, { t: 'publish', id, topic, payload, qos, retain });
      }),
    });
  }
  running = true;
  const unlisted = [...new Set(cfg.routes.map((r) => r.broker))].filter((name) => !cfg.brokers.some((b) => b.name === name));
  if (unlisted.length > 0) {
    logger.warn({ brokers: unlisted, brokersFile: cfg.brokersFile }, 'FANOUT_ROUTES names brokers FANOUT_BROKERS_FILE does not list: their routes apply once a reload adds them');
  }
  const allocator = loadedAllocator();
  if (cfg.malloc === 'jemalloc' && allocator === 'system') {
    logger.warn('FANOUT_MALLOC=jemalloc but jemalloc is not loaded: start the daemon with src/mqtt-fanout (npm start) and install libjemalloc2, '
      + 'or set FANOUT_MALLOC=auto or system; the C library\'s allocator keeps much of the memory of a load spike resident');
  }
  logger.info({
    port, host: cfg.host, shards, listen: plan.kind, allocator, brokers: brokers.map((b) => b.name), ...(cfg.brokersFile !== null ? { brokersFile: cfg.brokersFile } : {}),
    ...(wsPort !== null ? { wsPort, wsPath: cfg.wsPath, websocket: first.ws } : {}),
    ...(wssPort !== null ? { wssPort, wsPath: cfg.wsPath, secureWebsocket: first.wss } : {}),
    ...(httpServer !== null ? { httpPort: httpServer.boundPort } : {}),
    ...(tlsPort !== null ? { tlsPort, mtls: cfg.tlsRequireClientCert } : {}),
  }, 'mqtt-fanout ready');

  const stop = async (exitCode = 0): Promise<void> => {
    if (stopping) return;
    stopping = true;
    const deadline = setTimeout(() => {
      logger.warn('shutdown took too long; exiting anyway');
      void log.flush().then(() => process.exit(exitCode));
    }, cfg.shutdownTimeoutMs + 2000);
    deadline.unref();
    logger.info('shutting down: draining devices');
    collector.stop();
    const alive = (ws: Worker[]): Worker[] => ws.filter((w) => !exited.has(w));
    await Promise.all(alive(shardWorkers).map((w) => request<FromShard>(w, { t: 'drain' }, 'drained')));
    await Promise.all(shardWorkers.map((w) => w.terminate()));
    Atomics.store(new Int32Array(control), 0, 1);
    Atomics.notify(new Int32Array(control), 0);
    const results = await Promise.all(alive(writers).map((w) => request<FromWriter>(w, { t: 'drain' } as ToWriter, 'drained')));
    for (const r of results) {
      if (r.t === 'drained' && (r.leftInRings > 0 || r.leftInflight > 0)) {
        logger.warn({ broker: r.broker, leftInRings: r.leftInRings, leftInflight: r.leftInflight }, 'broker did not take everything before the shutdown deadline');
      }
    }
    await Promise.all([...writers, ...(listener ? [listener] : [])].map((w) => w.terminate()));
    await ownership?.stop();
    await embedded?.close();
    await authenticator?.close();
    releaseSpool?.();
    if (httpServer !== null) await new Promise((r) => httpServer!.close(r));
    logger.info('stopped');
    clearTimeout(deadline);
  };

  stopNow = stop;

  const brokerSet = new BrokerSet({
    log: logger,
    shardWorkers,
    alive: (w) => !exited.has(w),
    config: () => cfg,
    setConfig: (c) => { cfg = c; },
    addSlot: (b) => {
      const writerSides: MessagePort[] = [];
      const sides: MessagePort[] = [];
      for (let s = 0; s < shards; s++) {
        uplink[s].push(createRing(cfg.ringBytes));
        acks[s].push(createRing(ackBytes));
        downlink[s].push(createRing(cfg.ringBytes));
        const { port1, port2 } = new MessageChannel();
        writerSides.push(port1);
        sides.push(port2);
      }
      writerBells.push(createDoorbell());
      latency.rtt.push([]);
      spawnWriter(b, writerSides, false);
      return sides;
    },
    slotRings: (s, b) => ({ uplink: uplink[s][b], ack: acks[s][b], downlink: downlink[s][b], doorbell: writerBells[b] }),
    endWriter: async (b, message) => {
      const w = writers[b];
      ending.add(w);
      const r = await request<FromWriter>(w, message, 'drained');
      await w.terminate();
      return r;
    },
    // A handover that a shutdown overtakes leaves the slot without a writer: nothing is left to serve.
    restartWriter: (b) => {
      if (!stopping) restartWriter(b);
    },
    retired: (b) => clearStatsRow(writerStats, b),
  }, opts.reloadConfig ?? ((): Config => loadConfig(process.env)));
  const reloadBrokers = async (): Promise<ReloadResult> => {
    // A shard being replaced gets its rings and channels from the broker slots of its start.
    const busy = reloading ? 'a reload is in progress' : stopping || !running ? 'the daemon is starting or stopping'
      : resetting.size > 0 ? 'a shard is being restarted; reload again in a moment' : null;
    if (busy !== null) {
      logger.warn({ reason: busy }, `configuration not reloaded now: ${busy}`);
      return { ok: false, status: 409, error: busy };
    }
    reloading = true;
    try {
      const r = await brokerSet.reload();
      if (r.ok) for (const name of [...r.added, ...r.changed]) established.delete(name);
      return r;
    } finally {
      reloading = false;
      for (const s of deferredShards) restartShard(s);
      deferredShards.clear();
    }
  };

  /** SIGHUP: the certificate files of the TLS and WSS listeners are read again (writers: the
   *  credentials maps and TLS files of their per-device sessions), and the broker set. */
  const reload = (): Promise<ReloadResult> => {
    for (let s = 0; s < shards; s++) toShard(s, { t: 'tls-reload' });
    for (const b of liveSlots()) writers[b].postMessage({ t: 'reload' } satisfies ToWriter);
    if (cfg.aclFile !== null) {
      // As on the shards: a file that does not parse leaves the rules in force.
      try {
        const { acl, errors } = parseAclFile(fs.readFileSync(cfg.aclFile, 'utf8'));
        if (errors.length === 0) httpAcl = acl;
      } catch {
        // unreadable: the shards log it
      }
    }
    authenticator?.reload().then(
      () => logger.info({ file: cfg.passwordFile, users: authenticator?.size }, 'password file reloaded'),
      (err: Error) => logger.error({ err: err.message }, 'password file not reloaded; the previous one stays'),
    );
    return reloadBrokers();
  };

  return {
    port, wsPort, wssPort, tlsPort, httpPort: httpServer?.boundPort ?? null, stop, reload, reloadBrokers,
    get brokers() { return cfg.brokers.filter((b) => b.retired !== true); },
    shardStats: () => readShardStats(stats, shards),
  };
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

function request<T extends { t: string }>(w: Worker, message: unknown, reply: string): Promise<T> {
  return new Promise((resolve) => {
    const onMessage = (m: T): void => {
      if (m.t === reply) {
        w.off('message', onMessage);
        resolve(m);
      }
    };
    w.on('message', onMessage);
    w.once('exit', () => resolve({ t: reply } as T));
    w.postMessage(message);
  });
}
