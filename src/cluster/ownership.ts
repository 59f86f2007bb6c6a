// Client-id ownership across instances (FANOUT_SESSION_STORE=redis://...), on the supervisor.
// A client id is owned by one instance at a time: its key in Redis names the instance. A CONNECT
// on another instance takes it over:
//   - clean start: the new instance takes the key at once (and ends the recorded session), then
//     tells the old owner on its control channel (pub/sub) to end the old connection;
//   - clean start 0: the new instance asks the old owner to hand the session over; the old one
//     ends the connection, writes what it had not written yet, drops the session and answers;
//     the new one then takes the key and reads the session. An owner that is gone (its alive key,
//     refreshed every second, expired) or does not answer in HANDOVER_TIMEOUT_MS is not waited for.
// Each instance is `{proxyId}:{nonce}`, so a restarted instance never takes its predecessor's
// keys for its own.

import type { Logger } from 'pino';
import type Redis from 'ioredis';
import { redisClient } from '../session-store/redis';
import { decodeSession } from '../session-store/codec';
import { CLAIM, RELEASE, TAKE } from '../session-store/scripts';
import { aliveKey, controlChannel, ownerKey, sessionKey } from '../session-store/types';
import type { SessionState } from '../shard/session';
import { RateLimitedLog } from '../log';

const ALIVE_MS = 3000;
const HEARTBEAT_MS = 1000;
const HANDOVER_TIMEOUT_MS = 5000;
const POLL_MS = 250;

/** Messages on an instance's control channel. */
export type ControlMessage =
  | { t: 'kick'; clientId: string; from: string }
  | { t: 'handover'; clientId: string; from: string; req: number }
  | { t: 'handed'; req: number };

export type ClaimResult = { ok: true; state: SessionState | null } | { ok: false; reason: string };

type Scripted = Redis & {
  fanoutClaim(key: string, instance: string, ttl: number): Promise<string>;
  fanoutTake(key: string, session: string, instance: string, ttl: number, clean: string): Promise<string>;
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

  constructor(url: string, readonly instance: string, private readonly log: Logger, sessionExpiryMaxS: number, private readonly hooks: OwnershipHooks) {
    this.cmd = redisClient(url, `${instance}-own`) as Scripted;
    this.sub = redisClient(url, `${instance}-ctl`);
    this.cmd.defineCommand('fanoutClaim', { numberOfKeys: 1, lua: CLAIM });
    this.cmd.defineCommand('fanoutTake', { numberOfKeys: 2, lua: TAKE });
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
      this.hooks.handover(m.clientId, () => void this.cmd.publish(controlChannel(m.from), JSON.stringify({ t: 'handed', req: m.req } satisfies ControlMessage)));
    }
  }

  private async alive(instance: string): Promise<boolean> {
    return (await this.cmd.exists(aliveKey(instance))) === 1;
  }

  /** Takes `clientId` for this instance; with clean start 0 also reads its session. */
  async claim(clientId: string, clean: boolean): Promise<ClaimResult> {
    try {
      const key = ownerKey(clientId);
      const old = clean ? await this.cmd.fanoutTake(key, sessionKey(clientId), this.instance, this.ttlMs, '1')
        : await this.cmd.fanoutClaim(key, this.instance, this.ttlMs);
      if (old !== '' && old !== this.instance) {
        if (clean) {
          void this.cmd.publish(controlChannel(old), JSON.stringify({ t: 'kick', clientId, from: this.instance } satisfies ControlMessage));
        } else {
          if (await this.alive(old)) await this.askHandover(old, clientId);
          const was = await this.cmd.fanoutTake(key, sessionKey(clientId), this.instance, this.ttlMs, '0');
          // Not handed over (gone, or silent past the timeout): should it still run, whatever
          // it has of the client id ends there (its writes are fenced off from now on anyway).
          if (was === old && !this.handedOver.delete(clientId)) {
            void this.cmd.publish(controlChannel(old), JSON.stringify({ t: 'kick', clientId, from: this.instance } satisfies ControlMessage));
          }
        }
      }
      if (clean) return { ok: true, state: null };
      const fields = await this.cmd.hgetallBuffer(sessionKey(clientId));
      return { ok: true, state: decodeSession(clientId, fields, Date.now()) };
    } catch (err) {
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
        .then(() => { poll = setTimeout(check, POLL_MS); }, () => done());
    });
  }

  /** This instance no longer has `clientId` (its connection and session are gone). */
  release(clientId: string): void {
    this.cmd.fanoutRelease(ownerKey(clientId), this.instance).catch(() => undefined);
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
