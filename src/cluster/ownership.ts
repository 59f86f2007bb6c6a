// Client-id ownership across instances (FANOUT_SESSION_STORE=redis://...), on the supervisor.
// A client id is owned by one instance at a time: its key in Redis names the instance. A CONNECT
// on another instance takes it over:
//   - clean start: the new instance takes the key at once (and ends the recorded session), then
//     tells the old owner on its control channel (pub/sub) to end the old connection;
//   - clean start 0: the new instance asks the old owner to hand the session over; the old one
//     ends the connection, writes what it had not written yet, drops the session and answers;
//     the new one then takes the key and reads the session. An owner that is gone is not waited
//     for: nobody listens on its control channel (Redis dropped its connections: the process
//     died, the kernel closed its sockets), or its alive key, refreshed every second, expired (a
//     host or network that went silent), or it does not answer in HANDOVER_TIMEOUT_MS.
// The claims and releases of one client id run one after the other, in the order the registry
// made them: a release never overtakes the claim it ends, so an instance never keeps the key of
// a client id it no longer serves (its successor's writes would be fenced off). A claim whose
// connection is gone by the time it would take the key (`wanted`) gives up, and a key another
// instance took meanwhile is asked for again rather than taken from it.
// Each instance is `{proxyId}:{nonce}`, so a restarted instance never takes its predecessor's
// keys for its own.

import type { Logger } from 'pino';
import type Redis from 'ioredis';
import { redisClient } from '../session-store/redis';
import { decodeSession } from '../session-store/codec';
import { CLAIM, RELEASE, TAKE, TAKE_FROM } from '../session-store/scripts';
import { aliveKey, controlChannel, ownerKey, sessionKey } from '../session-store/types';
import type { SessionState } from '../shard/session';
import { RateLimitedLog } from '../log';

const ALIVE_MS = 3000;
const HEARTBEAT_MS = 1000;
/** How long a claim waits for an owner that runs to answer a handover. */
export const HANDOVER_TIMEOUT_MS = 5000;
const POLL_MS = 250;
/** Owners a claim asks in turn before it takes the key whoever has it. */
const MAX_HANDOVERS = 4;

/** Messages on an instance's control channel. */
export type ControlMessage =
  | { t: 'kick'; clientId: string; from: string }
  | { t: 'handover'; clientId: string; from: string; req: number }
  | { t: 'handed'; req: number };

/** `abandoned`: the connection that asked was gone before the key was taken; nothing was taken. */
export type ClaimResult = { ok: true; state: SessionState | null; abandoned?: boolean } | { ok: false; reason: string };

/** What the supervisor counts of the ownership (fanout_session_* in /metrics). */
export interface OwnershipCounters {
  /** Client ids taken from another instance that answered the handover. */
  handovers: number;
  /** ... from an instance found gone (no listener on its control channel, or its alive key
   *  expired) or silent past HANDOVER_TIMEOUT_MS. */
  takenFromGone: number;
  /** Handover requests of other instances answered here. */
  handedOver: number;
  /** Claims given up because their connection had gone meanwhile. */
  abandoned: number;
  /** Claims that found the key taken by a third instance meanwhile and asked that one. */
  contended: number;
  /** Claims refused because Redis did not answer. */
  failed: number;
}

type Scripted = Redis & {
  fanoutClaim(key: string, instance: string, ttl: number): Promise<string>;
  fanoutTake(key: string, session: string, instance: string, ttl: number, clean: string): Promise<string>;
  fanoutTakeFrom(key: string, instance: string, ttl: number, expected: string): Promise<string>;
  fanoutRelease(key: string, instance: string): Promise<number>;
};

export interface OwnershipHooks {
  /** Another instance took `clientId` with a clean start: end whatever of it is here. */
  kick(clientId: string): void;
  /** Another instance resumes `clientId`'s session: end it here, write it out, then call done. */
  handover(clientId: string, done: () => void): void;
}

export class Ownership {
  private readonly cmd: Scripted;
  private readonly sub: Redis;
  private readonly waiting = new Map<number, () => void>();
  /** Client ids whose handover the old owner answered (no kick needed after the take). */
  private readonly handedOver = new Set<string>();
  private readonly answered = new Map<number, () => void>();
  private nextReq = 1;
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly ttlMs: number;
  private readonly warnings: RateLimitedLog;
  /** The last claim or release of each client id still running (see serial). */
  private readonly queues = new Map<string, Promise<void>>();
  readonly counters: OwnershipCounters = { handovers: 0, takenFromGone: 0, handedOver: 0, abandoned: 0, contended: 0, failed: 0 };

  constructor(url: string, readonly instance: string, private readonly log: Logger, sessionExpiryMaxS: number, private readonly hooks: OwnershipHooks) {
    this.cmd = redisClient(url, `${instance}-own`) as Scripted;
    this.sub = redisClient(url, `${instance}-ctl`);
    this.cmd.defineCommand('fanoutClaim', { numberOfKeys: 1, lua: CLAIM });
    this.cmd.defineCommand('fanoutTake', { numberOfKeys: 2, lua: TAKE });
    this.cmd.defineCommand('fanoutTakeFrom', { numberOfKeys: 1, lua: TAKE_FROM });
    this.cmd.defineCommand('fanoutRelease', { numberOfKeys: 1, lua: RELEASE });
    // An owner key outlives the longest session it can stand for, and then some.
    this.ttlMs = Math.max(60_000, sessionExpiryMaxS * 1000 + 3_600_000);
    this.warnings = new RateLimitedLog(log);
    for (const r of [this.cmd, this.sub]) r.on('error', (err: Error) => this.warnings.warn('redis', { err: err.message }, 'session store (Redis) connection error'));
  }

  /** Connects, announces this instance alive and listens on its control channel. */
  async start(timeoutMs = 5000): Promise<void> {
    const ready = Promise.all([this.cmd.ping(), this.sub.subscribe(controlChannel(this.instance))]);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs); });
    try {
      await Promise.race([ready, timeout]);
    } finally {
      clearTimeout(timer);
    }
    this.sub.on('message', (_channel: string, text: string) => this.onControl(text));
    await this.beat();
    this.heartbeat = setInterval(() => void this.beat(), HEARTBEAT_MS);
  }

  private async beat(): Promise<void> {
    try {
      await this.cmd.set(aliveKey(this.instance), '1', 'PX', ALIVE_MS);
    } catch {
      // logged by the error handler; the next beat tries again
    }
  }

  private onControl(text: string): void {
    let m: ControlMessage;
    try {
      m = JSON.parse(text) as ControlMessage;
    } catch {
      return;
    }
    if (m.t === 'handed') {
      this.answered.get(m.req)?.();
      this.waiting.get(m.req)?.();
    } else if (m.t === 'kick') {
      this.hooks.kick(m.clientId);
    } else if (m.t === 'handover') {
      this.counters.handedOver++;
      this.hooks.handover(m.clientId, () => void this.cmd.publish(controlChannel(m.from), JSON.stringify({ t: 'handed', req: m.req } satisfies ControlMessage)));
    }
  }

  /** Whether `instance` runs: its alive key is there and its control channel has a listener.
   *  A killed process loses the listener at once, long before the key expires; a frozen one or
   *  one cut off keeps it until Redis notices, and is then told by the key. */
  private async alive(instance: string): Promise<boolean> {
    const [exists, numsub] = await Promise.all([this.cmd.exists(aliveKey(instance)), this.cmd.pubsub('NUMSUB', controlChannel(instance))]);
    return exists === 1 && Number((numsub as unknown[])[1]) > 0;
  }

  /** Runs `op` once every earlier claim or release of `clientId` here has finished. */
  private serial<T>(clientId: string, op: () => Promise<T>): Promise<T> {
    const run = (this.queues.get(clientId) ?? Promise.resolve()).then(op);
    const tail = run.then(() => undefined, () => undefined);
    this.queues.set(clientId, tail);
    void tail.then(() => {
      if (this.queues.get(clientId) === tail) this.queues.delete(clientId);
    });
    return run;
  }

  /** Takes `clientId` for this instance; with clean start 0 also reads its session. `wanted`
   *  says whether the connection that asked still wants it (false: it is gone, the claim gives
   *  up instead of taking the key from another instance). */
  claim(clientId: string, clean: boolean, wanted: () => boolean = () => true): Promise<ClaimResult> {
    return this.serial(clientId, () => this.claimNow(clientId, clean, wanted));
  }

  private async claimNow(clientId: string, clean: boolean, wanted: () => boolean): Promise<ClaimResult> {
    try {
      const key = ownerKey(clientId);
      if (clean) {
        const old = await this.cmd.fanoutTake(key, sessionKey(clientId), this.instance, this.ttlMs, '1');
        if (old !== '' && old !== this.instance) {
          void this.cmd.publish(controlChannel(old), JSON.stringify({ t: 'kick', clientId, from: this.instance } satisfies ControlMessage));
        }
        return { ok: true, state: null };
      }
      let old = await this.cmd.fanoutClaim(key, this.instance, this.ttlMs);
      for (let asked = 1; old !== '' && old !== this.instance; asked++) {
        if (!wanted()) {
          this.counters.abandoned++;
          return { ok: true, state: null, abandoned: true };
        }
        if (await this.alive(old)) await this.askHandover(old, clientId);
        const handed = this.handedOver.delete(clientId);
        // The wait may take seconds (an owner frozen or cut off is alive until its key expires).
        if (!wanted()) {
          this.counters.abandoned++;
          return { ok: true, state: null, abandoned: true };
        }
        // Taken only from the owner just asked (or found gone), or when free: another instance
        // that took the key meanwhile serves the device now, and is asked in turn. The last
        // attempt takes the key whoever has it.
        const last = asked >= MAX_HANDOVERS;
        const was = last ? await this.cmd.fanoutTake(key, sessionKey(clientId), this.instance, this.ttlMs, '0')
          : await this.cmd.fanoutTakeFrom(key, this.instance, this.ttlMs, old);
        const other = was !== '' && was !== this.instance;
        if (other && was !== old && !last) {
          this.counters.contended++;
          old = was;
          continue;
        }
        if (handed) this.counters.handovers++;
        else this.counters.takenFromGone++;
        // Not handed over (gone, or silent past the timeout): should it still run, whatever it
        // has of the client id ends there (its writes are fenced off from now on anyway).
        if (other && (!handed || was !== old)) {
          void this.cmd.publish(controlChannel(was), JSON.stringify({ t: 'kick', clientId, from: this.instance } satisfies ControlMessage));
        }
        break;
      }
      const fields = await this.cmd.hgetallBuffer(sessionKey(clientId));
      return { ok: true, state: decodeSession(clientId, fields, Date.now()) };
    } catch (err) {
      this.counters.failed++;
      this.warnings.warn('claim', { clientId, err: (err as Error).message }, 'client id not claimed in the session store');
      return { ok: false, reason: (err as Error).message };
    }
  }

  /** Asks `owner` to hand `clientId` over; resolves on its answer, when it is gone, or after
   *  HANDOVER_TIMEOUT_MS. */
  private askHandover(owner: string, clientId: string): Promise<void> {
    const req = this.nextReq++;
    return new Promise((resolve) => {
      const started = Date.now();
      let poll: NodeJS.Timeout | null = null;
      const done = (): void => {
        if (poll !== null) clearTimeout(poll);
        this.waiting.delete(req);
        this.answered.delete(req);
        resolve();
      };
      this.waiting.set(req, done);
      this.answered.set(req, () => this.handedOver.add(clientId));
      const check = (): void => {
        poll = null;
        if (!this.waiting.has(req)) return;
        if (Date.now() - started >= HANDOVER_TIMEOUT_MS) {
          this.log.warn({ clientId, owner }, 'session handover not answered in time: the session is taken as recorded');
          done();
          return;
        }
        this.alive(owner).then((up) => {
          if (!up) done();
          else if (this.waiting.has(req)) poll = setTimeout(check, POLL_MS);
        }, () => { poll = setTimeout(check, POLL_MS); });
      };
      void this.cmd.publish(controlChannel(owner), JSON.stringify({ t: 'handover', clientId, from: this.instance, req } satisfies ControlMessage))
        .then((receivers) => {
          // Nobody listens: the owner died between the check and the request.
          if (receivers === 0) done();
          else if (this.waiting.has(req)) poll = setTimeout(check, POLL_MS);
        }, () => done());
    });
  }

  /** This instance no longer has `clientId` (its connection and session are gone). */
  release(clientId: string): void {
    void this.serial(clientId, () => this.cmd.fanoutRelease(ownerKey(clientId), this.instance).then(() => undefined, () => undefined));
  }

  async stop(): Promise<void> {
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    for (const done of this.waiting.values()) done();
    try {
      // The sessions stay recorded: another instance resumes them without waiting for our key to expire.
      await this.cmd.del(aliveKey(this.instance));
      await Promise.all([this.cmd.quit(), this.sub.quit()]);
    } catch {
      this.cmd.disconnect();
      this.sub.disconnect();
    }
    this.warnings.flush(true);
  }
}
