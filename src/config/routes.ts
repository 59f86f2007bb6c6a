// FANOUT_ROUTES: which topics go to each broker (out), which it serves to devices (in), in
// the spirit of mosquitto's bridge `topic <pattern> out|in|both <qos> <local> <remote>`.
//
// A route covers the device-side topics localPrefix + X and the broker-side topics
// remotePrefix + X for every X its pattern matches, and a topic is routed only when it
// matches on both sides: each side's filter (prefix + pattern) matches it, '$' rule included,
// and it starts with that side's prefix (`site/#` with prefix `site/` does not cover `site`,
// which would have no counterpart). Parsing runs once at start-up; RouteTable answers the
// per-message questions from tables precomputed per broker.

import { intersectFilters } from '../protocol/intersect';
import { matchTopic, validateTopicFilter } from '../protocol/topic';
import type { QoS, Route, RouteDirection } from './types';

export const ROUTE_SHAPE = '<broker> <pattern> <in|out|both> [qos] [local-prefix remote-prefix]';
export const ROUTES_ALLOWED = `entries separated by ;, each ${ROUTE_SHAPE}; "" is an empty prefix`;

/** A problem with FANOUT_ROUTES; the message says which entry and what is wrong. */
export class RoutesError extends Error {
  readonly code = 'FANOUT_ERR_CONFIG';
}

const DIRECTIONS: readonly string[] = ['in', 'out', 'both'] satisfies RouteDirection[];
const EMPTY = '""';
const DOLLAR = 0x24;

/**
 * Parses FANOUT_ROUTES: entries separated by ';' (blank ones ignored), each made of
 * whitespace-separated fields `<broker> <pattern> <in|out|both> [qos] [local-prefix remote-prefix]`,
 * `""` standing for an empty prefix. Every broker must be one of `brokerNames`. Throws a
 * RoutesError naming the entry (counted from 1, blank ones skipped) and the problem.
 */
export function parseRoutes(raw: string, brokerNames: readonly string[], opts: { anyName?: RegExp } = {}): Route[] {
  const routes: Route[] = [];
  for (const text of raw.split(';')) {
    const fields = text.trim().split(/\s+/);
    if (fields[0] === '') continue;
    try {
      routes.push(parseEntry(fields, brokerNames, opts.anyName));
    } catch (err) {
      if (err instanceof RoutesError) err.message = `entry ${routes.length + 1} (\`${fields.join(' ')}\`): ${err.message}`;
      throw err;
    }
  }
  return routes;
}

/** `anyName`: a broker not (yet) listed is accepted when its name matches (a broker list that
 *  a reload re-reads may add it later). */
function parseEntry(fields: readonly string[], brokerNames: readonly string[], anyName?: RegExp): Route {
  if (fields.length < 3 || fields.length > 6) {
    throw new RoutesError(`expected ${ROUTE_SHAPE}, got ${fields.length} field${fields.length === 1 ? '' : 's'}`);
  }
  const [broker, pattern, direction, rawQos, rawLocal, rawRemote] = fields;
  if (!brokerNames.includes(broker) && anyName?.test(broker) !== true) {
    throw new RoutesError(`broker "${broker}" is not in FANOUT_BROKERS (${brokerNames.join(', ')})`);
  }
  // mosquitto's empty pattern (the prefix alone is the topic) is not supported: spell the topic out.
  if (pattern === EMPTY) throw new RoutesError('pattern must not be empty');
  if (validateTopicFilter(pattern, { sharedAllowed: false }) !== 0) {
    throw new RoutesError(`pattern "${pattern}" must be a topic filter (+ and # only as whole levels, # only last, no $share/)`);
  }
  if (!DIRECTIONS.includes(direction)) throw new RoutesError('direction must be in, out or both');
  const qos = rawQos === undefined ? 2 : parseQos(rawQos);
  if (rawLocal !== undefined && rawRemote === undefined) {
    throw new RoutesError(`local-prefix "${rawLocal}" needs a remote-prefix after it: give both or neither (${EMPTY} is an empty prefix)`);
  }
  const localPrefix = parsePrefix('local', rawLocal, pattern);
  const remotePrefix = parsePrefix('remote', rawRemote, pattern);
  return { broker, pattern, direction: direction as RouteDirection, qos, localPrefix, remotePrefix };
}

function parseQos(raw: string): QoS {
  if (raw === '0' || raw === '1' || raw === '2') return Number(raw) as QoS;
  throw new RoutesError(`qos "${raw}" must be 0, 1 or 2`);
}

function parsePrefix(side: 'local' | 'remote', raw: string | undefined, pattern: string): string {
  if (raw === undefined || raw === EMPTY) return '';
  // mosquitto takes any other quote literally; here it is far more likely a quoting mistake.
  if (/[+#"\0]/.test(raw)) {
    throw new RoutesError(`${side}-prefix "${raw}" must not contain +, #, " or NUL (${EMPTY} alone is an empty prefix)`);
  }
  const filter = raw + pattern;
  if (!raw.endsWith('/') && startsWithWildcard(pattern)) {
    throw new RoutesError(`${side}-prefix "${raw}" must end with / before the pattern "${pattern}"`);
  }
  if (validateTopicFilter(filter, { sharedAllowed: false }) !== 0) {
    throw new RoutesError(`${side}-prefix + pattern "${filter}" must be a topic filter of at most 65535 bytes, not a $share/ one`);
  }
  return raw;
}

/** The routes when FANOUT_ROUTES is unset: every broker gets all publishes (`# out 2`), the
 *  first one also serves every subscription (`# both 2`). */
export function defaultRoutes(brokerNames: readonly string[]): Route[] {
  return brokerNames.map((broker, i) => ({
    broker, pattern: '#', direction: i === 0 ? 'both' : 'out', qos: 2, localPrefix: '', remotePrefix: '',
  }));
}

/** A route prepared for matching in one direction: `from` is the side a topic arrives on. */
interface Leg {
  readonly fromPrefix: string;
  readonly fromFilter: string;
  readonly toPrefix: string;
  /** The other side's filter starts with + or #: a stripped topic starting with '$' is not in it. */
  readonly toHidesDollar: boolean;
  readonly qos: QoS;
}

function leg(route: Route, outward: boolean): Leg {
  const [from, to] = outward ? [route.localPrefix, route.remotePrefix] : [route.remotePrefix, route.localPrefix];
  return {
    fromPrefix: from,
    fromFilter: from + route.pattern,
    toPrefix: to,
    toHidesDollar: to === '' && startsWithWildcard(route.pattern),
    qos: route.qos,
  };
}

/** Whether `topic` is covered by `l` on both sides (see the top of this file). */
function covers(l: Leg, topic: string): boolean {
  return topic.startsWith(l.fromPrefix) && matchTopic(l.fromFilter, topic)
    && !(l.toHidesDollar && topic.charCodeAt(l.fromPrefix.length) === DOLLAR);
}

/** The answer of RouteTable.outMatch(): one instance per table, overwritten by every call. */
export interface OutMatch {
  /** The topic to publish at the broker. */
  readonly topic: string;
  /** The route's QoS: the publish goes out at min(its own QoS, this, the broker's maxQos). */
  readonly qos: QoS;
}

/**
 * The routes arranged per broker index (the order of `brokerNames`, i.e. Config.brokers) for
 * the hot paths. Built from Config.routes, or from defaultRoutes() when that is empty.
 */
export class RouteTable {
  /** Per broker: outTopic(b, t) is t and its QoS cap 2 for every topic not starting with '$',
   *  and no route takes '$' topics out. A caller may then skip outMatch() and forward every
   *  publish whose topic does not start with '$' unchanged. */
  readonly identityOut: boolean[];
  private readonly outLegs: Leg[][];
  private readonly inLegs: Leg[][];
  private readonly inRoutes: Route[][];
  private readonly match: { topic: string; qos: QoS } = { topic: '', qos: 2 };

  /** `unlisted`: 'skip' leaves out the routes of brokers not in `brokerNames` (with
   *  FANOUT_BROKERS_FILE, brokers a reload has yet to add); by default they are an error. */
  constructor(routes: readonly Route[], brokerNames: readonly string[], unlisted: 'error' | 'skip' = 'error') {
    const all = routes.length === 0 ? defaultRoutes(brokerNames) : routes;
    this.outLegs = brokerNames.map(() => []);
    this.inLegs = brokerNames.map(() => []);
    this.inRoutes = brokerNames.map(() => []);
    for (const route of all) {
      const b = brokerNames.indexOf(route.broker);
      if (b < 0 && unlisted === 'skip') continue;
      if (b < 0) throw new Error(`route for unknown broker "${route.broker}"`);
      if (route.direction !== 'in') this.outLegs[b].push(leg(route, true));
      if (route.direction !== 'out') {
        this.inLegs[b].push(leg(route, false));
        this.inRoutes[b].push(route);
      }
    }
    this.identityOut = this.outLegs.map(isIdentity);
  }

  /**
   * The first out/both route of `broker` (in declaration order) covering the device topic
   * `topic`: the broker-side topic and the route's QoS, or null when none does. The returned
   * object is reused by the next call: read it before calling again.
   */
  outMatch(broker: number, topic: string): OutMatch | null {
    for (const l of this.outLegs[broker]) {
      if (!covers(l, topic)) continue;
      this.match.topic = l.fromPrefix === '' && l.toPrefix === '' ? topic : l.toPrefix + topic.slice(l.fromPrefix.length);
      this.match.qos = l.qos;
      return this.match;
    }
    return null;
  }

  /** outMatch(broker, topic)?.topic: the broker-side topic of a device publish, or null. */
  outTopic(broker: number, topic: string): string | null {
    return this.outMatch(broker, topic)?.topic ?? null;
  }

  /** outMatch(broker, topic)?.qos: the QoS cap of a device publish, or -1 when not routed. */
  outQos(broker: number, topic: string): number {
    return this.outMatch(broker, topic)?.qos ?? -1;
  }

  /**
   * The filters to subscribe to at `broker` for the device filter `localFilter` (without any
   * "$share/{group}/"), each with the route's QoS (the caller takes the minimum with the QoS the
   * device asked for). One per in/both route whose topics meet the filter; identical filters
   * from several routes appear once, with the highest QoS. Runs per SUBSCRIBE and allocates.
   */
  inFilters(broker: number, localFilter: string): { upstream: string; qos: number }[] {
    const result: { upstream: string; qos: number }[] = [];
    for (const route of this.inRoutes[broker]) {
      const { localPrefix, remotePrefix, pattern } = route;
      const local = intersectFilters(localFilter, localPrefix + pattern);
      if (local === null) continue;
      // Prefixes hold no wildcards, so the intersection keeps them, except that `p/#` also
      // matches `p`, which has no counterpart at the broker.
      if (!local.startsWith(localPrefix)) {
        if (local.length >= localPrefix.length) throw new Error(`intersection ${local} lost prefix ${localPrefix}`);
        continue;
      }
      const upstream = remotePrefix + local.slice(localPrefix.length);
      if (remotePrefix === '' && startsWithWildcard(pattern) && upstream.charCodeAt(0) === DOLLAR) continue;
      const same = result.find((f) => f.upstream === upstream);
      if (same === undefined) result.push({ upstream, qos: route.qos });
      else same.qos = Math.max(same.qos, route.qos);
    }
    return result;
  }

  /**
   * The device-side topics of a message `broker` sent on `remoteTopic`, one per in/both route
   * covering it (duplicates removed), written into `out` (cleared first); returns their count.
   */
  localTopics(broker: number, remoteTopic: string, out: string[]): number {
    out.length = 0;
    for (const l of this.inLegs[broker]) {
      if (!covers(l, remoteTopic)) continue;
      const local = l.fromPrefix === '' && l.toPrefix === '' ? remoteTopic : l.toPrefix + remoteTopic.slice(l.fromPrefix.length);
      if (!out.includes(local)) out.push(local);
    }
    return out.length;
  }

  /** Whether `broker` has an in/both route, i.e. may serve device subscriptions. */
  servesDownlink(broker: number): boolean {
    return this.inLegs[broker].length > 0;
  }

  /** Whether `broker` has an out/both route, i.e. may receive device publishes. */
  receivesUplink(broker: number): boolean {
    return this.outLegs[broker].length > 0;
  }
}

function startsWithWildcard(filter: string): boolean {
  const c = filter.charCodeAt(0);
  return c === 0x2b || c === 0x23;
}

/** The first out route passes every topic unchanged at QoS 2 (it covers all but '$' topics) and
 *  no later one, which only sees what it leaves over, could take a '$' topic. */
function isIdentity(legs: readonly Leg[]): boolean {
  const [first] = legs;
  return first !== undefined && first.fromFilter === '#' && first.toPrefix === '' && first.qos === 2
    && legs.every((l) => l.fromFilter.charCodeAt(0) !== DOLLAR);
}
