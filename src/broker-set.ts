// A reload of the broker set, run by the supervisor: reads the configuration again, checks it
// (src/config/reload.ts) and applies the difference to the shards and writers without touching
// a device or an unchanged broker.

import type { MessagePort, Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Config } from './config/types';
import { ConfigError } from './config/index';
import { applyPlan, planReload } from './config/reload';
import type { BrokerChange, FromShard, ToShard } from './shard/shard';
import type { FromWriter, ToWriter } from './broker/writer';
import type { RingBuffers } from './ring/spsc';

/** The answer to a reload: what changed, or why nothing did. */
export type ReloadResult =
  | { ok: true; added: string[]; removed: string[]; changed: string[]; unchanged: string[] }
  | { ok: false; status: 400 | 409; error: string };

/** What the supervisor lends a reload. */
export interface BrokerSetHost {
  log: Logger;
  /** The shard threads, by index (a restarted one replaces its entry). */
  shardWorkers: readonly Worker[];
  /** Whether a thread has not exited (one that did answers nothing, not even 'exit' again). */
  alive(w: Worker): boolean;
  config(): Config;
  setConfig(c: Config): void;
  /** Creates slot `b` (rings on every shard, doorbell, writer); returns each shard's end of its
   *  control channel to the new writer. */
  addSlot(b: number): MessagePort[];
  slotRings(shard: number, b: number): { uplink: RingBuffers; ack: RingBuffers; downlink: RingBuffers; doorbell: SharedArrayBuffer };
  /** Sends writer `b` `message` (a drain), waits for its answer and ends the thread. */
  endWriter(b: number, message: ToWriter): Promise<FromWriter>;
  /** Starts a writer for slot `b` with the settings of config() on the same rings. */
  restartWriter(b: number): void;
  /** Slot `b`'s writer has ended for good. */
  retired(b: number): void;
}

export class BrokerSet {
  private nextChange = 1;

  constructor(private readonly host: BrokerSetHost, private readonly load: () => Config) {}

  /**
   * Applies a changed broker set. Added brokers get a new slot (rings per shard, doorbell,
   * writer); the shards write to it from the moment they have it, and hold their devices'
   * subscriptions there as the routes say. Removed ones are retired on the shards first, so
   * nothing new goes to them, then their writers send what the rings hold, wait for the
   * broker's answers (FANOUT_SHUTDOWN_TIMEOUT_MS at most) and end; whatever still waits for them
   * after that stops waiting. Changed ones hand over: the writer finishes what is in flight and
   * ends, and a new one with the new settings takes the same rings, as after a failure.
   */
  async reload(): Promise<ReloadResult> {
    const { host } = this;
    const logger = host.log;
    let next: Config;
    try {
      next = this.load();
    } catch (err) {
      if ((err as ConfigError).code !== 'FANOUT_ERR_CONFIG') throw err;
      const e = err as ConfigError;
      const error = `${e.message}; the configuration in force stays`;
      logger.error({ variable: e.variable, value: e.value }, `configuration not reloaded: ${error}`);
      return { ok: false, status: 400, error };
    }
    const before = host.config();
    const check = planReload(before, next);
    if (!check.ok) {
      logger.error({ variable: check.variable, value: check.value }, `configuration not reloaded: ${check.message}`);
      return { ok: false, status: 400, error: check.message };
    }
    const { plan } = check;
    const summary = {
      added: plan.added.map((b) => b.name), removed: plan.removed.map((b) => before.brokers[b].name),
      changed: plan.changed.map((c) => c.broker.name), unchanged: [...plan.unchanged],
    };
    if (plan.added.length + plan.removed.length + plan.changed.length === 0) {
      logger.info(summary, 'configuration reloaded: the broker set is unchanged');
      return { ok: true, ...summary };
    }
    const cfg: Config = Object.freeze({ ...before, brokers: applyPlan(before, plan) });
    host.setConfig(cfg);
    const firstNew = before.brokers.length;
    const shardSides = plan.added.map((_, i) => host.addSlot(firstNew + i));
    await this.changeShards((s) => {
      const added = plan.added.map((_, i) => ({ slot: firstNew + i, ...host.slotRings(s, firstNew + i), port: shardSides[i][s] }));
      return { change: { config: cfg, added, retired: [...plan.removed], gone: [] }, transfer: added.map((a) => a.port) };
    });
    logger.info(summary, 'broker set reloaded: publishes accepted from now on go to the new set');
    const handovers = plan.changed.map(async ({ slot }) => {
      const r = await host.endWriter(slot, { t: 'drain', deadlineMs: cfg.shutdownTimeoutMs / 2, handover: true });
      host.restartWriter(slot);
      const broker = cfg.brokers[slot];
      logger.info({ broker: broker.name, url: broker.redactedUrl, ...(r.t === 'drained' ? { leftInflight: r.leftInflight } : {}) },
        'broker settings changed: reconnecting with the new ones');
    });
    const drains = await Promise.all(plan.removed.map(async (b) => {
      const r = await host.endWriter(b, { t: 'drain', deadlineMs: cfg.shutdownTimeoutMs });
      host.retired(b);
      return { broker: cfg.brokers[b].name, r };
    }));
    if (drains.length > 0) {
      const unanswered = await this.changeShards(() => ({ change: { config: cfg, added: [], retired: [], gone: [...plan.removed] }, transfer: [] }));
      for (const { broker, r } of drains) {
        const left = r.t === 'drained' ? { leftInRings: r.leftInRings, leftInflight: r.leftInflight } : {};
        logger.info({ broker, ...left }, 'broker removed: its messages drained, disconnected');
      }
      if (unanswered > 0) {
        logger.warn({ brokers: summary.removed, unanswered }, 'publishes a removed broker did not acknowledge within FANOUT_SHUTDOWN_TIMEOUT_MS no longer wait for it');
      }
    }
    await Promise.all(handovers);
    logger.info(summary, 'configuration reloaded');
    return { ok: true, ...summary };
  }

  /** Sends every shard its part of a broker change; resolves once all applied it, with the
   *  number of publishes that stopped waiting for a gone broker. */
  private changeShards(build: (s: number) => { change: Omit<BrokerChange, 'id'>; transfer: MessagePort[] }): Promise<number> {
    const id = this.nextChange++;
    // A shard that failed is replaced after the reload, with the final slots (see main.ts).
    return Promise.all(this.host.shardWorkers.map((w, s) => !this.host.alive(w) ? 0 : new Promise<number>((resolve) => {
      const done = (n: number): void => {
        w.off('message', onMessage);
        w.off('exit', onExit);
        resolve(n);
      };
      const onMessage = (m: FromShard): void => {
        if (m.t === 'brokers-done' && m.id === id) done(m.unanswered);
      };
      const onExit = (): void => done(0);
      w.on('message', onMessage);
      w.once('exit', onExit);
      const { change, transfer } = build(s);
      w.postMessage({ t: 'brokers', id, ...change } satisfies ToShard, transfer);
    }))).then((counts) => counts.reduce((a, b) => a + b, 0));
  }
}
