// What a reload may change: the broker set, read again from FANOUT_BROKERS_FILE (and the broker
// credential files). planReload() compares the configuration in force with the one just read
// and says which broker slots to add, retire and reconnect, or why the new one is refused (one
// line naming the variable, its value and what is allowed); the old one then stays.

import type { BrokerConfig, Config } from './types';
import { upstreamModeOf } from './upstream';
import { MAX_BROKER_SLOTS } from '../shard/uplink';
import { VARIABLES } from './schema';

export interface ReloadPlan {
  /** New brokers, in the order of the new list: each takes the next free slot. */
  readonly added: readonly BrokerConfig[];
  /** Slots of brokers no longer listed. */
  readonly removed: readonly number[];
  /** Slots of brokers listed under the same name with other settings, and those settings. */
  readonly changed: readonly { readonly slot: number; readonly broker: BrokerConfig }[];
  readonly unchanged: readonly string[];
}

export type ReloadCheck =
  | { readonly ok: true; readonly plan: ReloadPlan }
  | { readonly ok: false; readonly variable: string; readonly value: string; readonly message: string };

/** Config fields that only a restart changes; the others follow from these or are the brokers. */
const FIXED_EXEMPT = new Set<keyof Config>(['brokers']);

/** The variable the broker list comes from, as the messages name it. */
export function brokerSource(c: Config): { variable: string; value: string } {
  return c.brokersFile !== null
    ? { variable: 'FANOUT_BROKERS_FILE', value: c.brokersFile }
    : { variable: 'FANOUT_BROKERS', value: c.brokers.filter((b) => b.retired !== true).map((b) => `${b.name}=${b.redactedUrl}`).join(',') };
}

/** Whether two settings of one broker differ (the redacted URL follows from the others). */
function sameBroker(a: BrokerConfig, b: BrokerConfig): boolean {
  const strip = ({ redactedUrl: _u, retired: _r, ...rest }: BrokerConfig): string => JSON.stringify(rest, Object.keys(rest).sort());
  return strip(a) === strip(b);
}

/**
 * `current` lists the broker slots in force (retired ones marked), `next` the configuration just
 * read. Refused: a change of any other setting (it needs a restart), adding, removing or changing
 * a broker in per-device mode, moving the subscriptions off the broker that serves them without
 * FANOUT_ROUTES (the first one), and more slots than the in-flight table has bits for.
 */
export function planReload(current: Config, next: Config): ReloadCheck {
  const { variable, value } = brokerSource(next);
  const refuse = (why: string): ReloadCheck => ({ ok: false, variable, value, message: `${variable}=${JSON.stringify(value)} not applied: ${why}; the configuration in force stays` });
  const fixed = (Object.keys(next) as (keyof Config)[])
    .filter((k) => !FIXED_EXEMPT.has(k) && JSON.stringify(current[k]) !== JSON.stringify(next[k]));
  if (fixed.length > 0) {
    const names = [...new Set(fixed.map((k) => variableOf(k)))];
    return refuse(`${names.join(', ')} changed, which needs a restart (only the broker set is reloaded)`);
  }
  if (current.embeddedBroker) {
    return { ok: true, plan: { added: [], removed: [], changed: [], unchanged: current.brokers.map((b) => b.name) } };
  }
  const live = current.brokers.map((b, slot) => ({ b, slot })).filter(({ b }) => b.retired !== true);
  const byName = new Map(next.brokers.map((b) => [b.name, b]));
  const kept = new Set(live.map(({ b }) => b.name));
  const added = next.brokers.filter((b) => !kept.has(b.name));
  const removed = live.filter(({ b }) => !byName.has(b.name)).map(({ slot }) => slot);
  const changed = live.filter(({ b }) => byName.has(b.name) && !sameBroker(b, byName.get(b.name)!))
    .map(({ slot, b }) => ({ slot, broker: byName.get(b.name)! }));
  const changedSlots = new Set([...removed, ...changed.map((c) => c.slot)]);
  const unchanged = live.filter(({ slot }) => !changedSlots.has(slot)).map(({ b }) => b.name);
  const touched = [...added, ...removed.map((s) => current.brokers[s]), ...changed.flatMap((c) => [current.brokers[c.slot], c.broker])];
  const perDevice = touched.find((b) => upstreamModeOf(next, b) === 'per-device');
  if (perDevice !== undefined) {
    return refuse(`broker "${perDevice.name}" is in per-device upstream mode, and adding, removing or changing such a broker needs a restart`);
  }
  if ((added.length > 0 || removed.length > 0) && live.some(({ b }) => upstreamModeOf(current, b) === 'per-device')) {
    return refuse('brokers can be added or removed at runtime only when none is in per-device upstream mode; that needs a restart');
  }
  if (next.routes.length === 0 && live.length > 0 && next.brokers[0].name !== live[0].b.name) {
    return refuse(`without FANOUT_ROUTES the first broker serves the device subscriptions; expected "${live[0].b.name}" to stay first (moving the subscriptions to "${next.brokers[0].name}" needs a restart)`);
  }
  if (current.brokers.length + added.length > MAX_BROKER_SLOTS) {
    return refuse(`this run has used ${current.brokers.length} broker slots and can have at most ${MAX_BROKER_SLOTS} (removed brokers keep theirs until a restart)`);
  }
  return { ok: true, plan: { added, removed, changed, unchanged } };
}

/** The broker slots after `plan`: removed ones marked retired, changed ones with their new
 *  settings, added ones appended. */
export function applyPlan(current: Config, plan: ReloadPlan): BrokerConfig[] {
  const slots = current.brokers.map((b, slot) => {
    if (plan.removed.includes(slot)) return Object.freeze({ ...b, retired: true });
    return plan.changed.find((c) => c.slot === slot)?.broker ?? b;
  });
  return [...slots, ...plan.added];
}

function variableOf(key: keyof Config): string {
  if (key === 'embeddedBroker') return 'FANOUT_BROKERS';
  if (key === 'allowAnonymous') return 'FANOUT_ALLOW_ANONYMOUS';
  return (VARIABLES as Record<string, { name: string } | undefined>)[key]?.name ?? key;
}
