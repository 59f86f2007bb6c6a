// FANOUT_BROKERS grammar: comma-separated `name=url` entries, each url being
// mqtt[s]://[user[:password]@]host[:port][?param=value&...]. Parsing is hand-written rather
// than delegated to WHATWG URL so every failure can name the exact part that is wrong, and
// so a password can never reach an error message unredacted.

import { accessSync, constants } from 'node:fs';
import { isIP, isIPv6 } from 'node:net';
import type { BrokerAddress, BrokerConfig } from './types';
import { loadCredentialsMap } from './upstream';

export const BROKERS_ALLOWED =
  'a comma-separated list of name=url, url being mqtt[s]://[user[:password]@]host[:port][?param=value&...]';

const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/;
/** What a broker name may be. */
export const BROKER_NAME_RE = NAME_RE;
const NAME_ALLOWED = '1 to 32 characters from [A-Za-z0-9_-]';
const LABEL_RE = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
const SCHEME_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
// Userinfo runs to the last '@' before any '/', '?' or '#', as in WHATWG URL, so a raw '@' in
// a password still parses; anything after host[:port] other than a query is rejected.
const URL_RE = /^(mqtts?):\/\/(?:([^/?#]*)@)?(\[[^\]]*\]|[^:/?#[\]@]*)(?::([^/?#]*))?(?:\?([^#]*))?$/s;
const URL_ALLOWED = 'mqtt://[user[:password]@]host[:port][?param=value&...] or mqtts://...';
const DEFAULT_PORT = { mqtt: 1883, mqtts: 8883 } as const;

/** The integer rule shared with FANOUT_* variables: plain decimal digits only, within range. */
export function parseDecimal(raw: string, min: number, max: number): number | undefined {
  if (!/^[0-9]+$/.test(raw)) return undefined;
  const value = Number(raw);
  return value >= min && value <= max ? value : undefined;
}

/** RFC 1123 host name (underscores tolerated, as many internal DNS zones use them). */
export function isHostName(host: string): boolean {
  return host.length <= 253 && host.split('.').every((label) => LABEL_RE.test(label));
}

/** Replaces the password of a URL (or of a `name=url` entry) with `***`. Deliberately greedy
 *  up to the last '@' so malformed URLs are over-redacted rather than leaked. */
export function redactUrl(url: string): string {
  return url.replace(/^(.*?:\/\/[^:@]*):.*@/s, '$1:***@');
}

/** redactUrl applied to each entry of a comma-separated list, for showing any raw value. */
export function redactList(value: string): string {
  return value.split(',').map(redactUrl).join(',');
}

type ParamKey = 'maxQos' | 'retain' | 'pool' | 'protocolVersion' | 'keepalive' | 'inflight' | 'ca' | 'cert' | 'key' | 'insecure';

interface ParamSpec<T> {
  /** Name in the URL query (differs from the BrokerConfig field for `protocol`). */
  readonly name: string;
  /** Raw text run through parse() when the parameter is absent, so defaults cannot be invalid. */
  readonly default: string;
  readonly allowed: string;
  readonly description: string;
  readonly parse: (raw: string) => T | undefined;
}

/** A file path, percent-decoded, checked to be readable now; '' means none. */
const fileParam = {
  allowed: 'a readable file path (percent-encoded where needed)',
  parse: (raw: string): string | null | undefined => {
    if (raw === '') return null;
    let path: string;
    try {
      path = decodeURIComponent(raw);
    } catch {
      return undefined;
    }
    try {
      accessSync(path, constants.R_OK);
      return path;
    } catch {
      return undefined;
    }
  },
};

const integerParam = (min: number, max: number) => ({
  allowed: `an integer from ${min} to ${max}`,
  parse: (raw: string) => parseDecimal(raw, min, max),
});

const PARAMS: { readonly [K in ParamKey]: ParamSpec<BrokerConfig[K]> } = {
  maxQos: {
    name: 'maxQos', default: '2', allowed: '0, 1 or 2',
    description: 'Highest QoS used towards this broker; publishes above it are downgraded.',
    parse: (raw) => (raw === '0' ? 0 : raw === '1' ? 1 : raw === '2' ? 2 : undefined),
  },
  retain: {
    name: 'retain', default: 'forward', allowed: 'forward or strip',
    description: 'forward passes the retain flag on; strip clears it.',
    parse: (raw) => (raw === 'forward' || raw === 'strip' ? raw : undefined),
  },
  pool: {
    name: 'pool', default: '4', ...integerParam(1, 64),
    description: 'Connections opened to this broker.',
  },
  protocolVersion: {
    name: 'protocol', default: '5', allowed: '3.1.1 (or 4) or 5 (or 5.0)',
    description: 'MQTT protocol version spoken to this broker. 5 (the default) lets devices have Retain As Published, '
      + 'and the broker announces its Receive Maximum (mosquitto: max_inflight_messages, 20 by default, which bounds '
      + 'the publishes in flight per connection); 3.1.1 for brokers without MQTT 5.',
    parse: (raw) => (raw === '3.1.1' || raw === '4' ? 4 : raw === '5' || raw === '5.0' ? 5 : undefined),
  },
  keepalive: {
    name: 'keepalive', default: '60', ...integerParam(0, 65535),
    description: 'Keep-alive towards this broker in seconds; 0 disables it.',
  },
  inflight: {
    name: 'inflight', default: 'auto', allowed: 'auto or an integer from 1 to 65535',
    description: 'Unacknowledged QoS 1/2 publishes per connection. auto: 20 for MQTT 3.1.1, whose brokers cannot '
      + "announce a limit (mosquitto's max_inflight_messages is 20 by default, and it closes a connection that exceeds "
      + "it); for MQTT 5 the broker's Receive Maximum. A number is further capped by the Receive Maximum.",
    parse: (raw) => (raw === 'auto' ? 0 : parseDecimal(raw, 1, 65535)),
  },
  ca: {
    name: 'ca', default: '', ...fileParam,
    description: "mqtts: PEM CA file the broker's certificate is verified against (default: the system's CAs).",
  },
  cert: {
    name: 'cert', default: '', ...fileParam,
    description: 'mqtts: PEM client certificate presented to the broker (with key).',
  },
  key: {
    name: 'key', default: '', ...fileParam,
    description: 'mqtts: PEM private key of the client certificate.',
  },
  insecure: {
    name: 'insecure', default: 'false', allowed: 'true or false',
    description: "mqtts: true skips the verification of the broker's certificate (logged as a warning at start-up).",
    parse: (raw) => (raw === 'true' ? true : raw === 'false' ? false : undefined),
  },
};

type OptionalKey = 'mode' | 'credentials' | 'credentialsMap' | 'failover' | 'primaryCheckMs';

/** How long a connection stays on a failover address before it tries the primary again (ms). */
export const PRIMARY_CHECK_MS = 30000;

const FAILOVER_ALLOWED = 'host[:port] addresses separated by ; (host names, IPv4 or [IPv6] addresses), each once and none the URL\'s own';

/** Where a broker is reached, in the order tried: the URL's host:port, then its failover addresses. */
export function brokerAddresses(b: BrokerConfig): BrokerAddress[] {
  return [{ host: b.host, port: b.port }, ...(b.failover ?? [])];
}

/** host:port, an IPv6 address in brackets, as logs, status messages and /metrics show it. */
export function addressText(a: BrokerAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** `h2:1883;[::1]:1884`: the addresses in order, the port defaulting to the scheme's (filled in
 *  by parseUrl, which knows it: 0 here). */
function parseFailover(raw: string): BrokerAddress[] | undefined {
  if (raw === '') return undefined;
  const out: BrokerAddress[] = [];
  for (const part of raw.split(';')) {
    const m = /^(\[[^\]]*\]|[^:[\]]+)(?::([0-9]+))?$/.exec(part);
    if (m === null) return undefined;
    const bracketed = m[1].startsWith('[');
    const host = bracketed ? m[1].slice(1, -1) : m[1];
    if (!(bracketed ? isIPv6(host) : isIP(host) !== 0 || isHostName(host))) return undefined;
    const port = m[2] === undefined ? 0 : parseDecimal(m[2], 1, 65535);
    if (port === undefined) return undefined;
    out.push({ host, port });
  }
  return out;
}

/** Parameters a BrokerConfig holds only when the URL gives them (parse: null for ''), so an
 *  absent one can follow a FANOUT_* variable or a rule decided later. */
const OPTIONAL_PARAMS: { readonly [K in OptionalKey]: ParamSpec<NonNullable<BrokerConfig[K]> | null> & { readonly shownDefault: string } } = {
  mode: {
    name: 'mode', default: '', shownDefault: 'FANOUT_UPSTREAM_MODE', allowed: 'pooled or per-device',
    description: 'pooled: devices reach this broker over the proxy\'s pool of connections; per-device: each device '
      + 'has a session of its own here (see Per-device upstream mode).',
    parse: (raw) => (raw === '' ? null : raw === 'pooled' || raw === 'per-device' ? raw : undefined),
  },
  credentials: {
    name: 'credentials', default: '', shownDefault: 'passthrough', allowed: 'passthrough, fixed or map',
    description: 'per-device mode: what a device\'s session here logs in with. passthrough: the device\'s own user name '
      + 'and password; fixed: this broker\'s user name and password (URL or FANOUT_BROKER_<NAME>_*_FILE) for every device; '
      + 'map: the entry for the device\'s user name (or "*") in credentialsMap; a device without one is refused (0x87 / 0x05).',
    parse: (raw) => (raw === '' ? null : raw === 'passthrough' || raw === 'fixed' || raw === 'map' ? raw : undefined),
  },
  credentialsMap: {
    name: 'credentialsMap', default: '', shownDefault: '', ...fileParam,
    description: 'credentials=map: JSON file {"<device user name>": {"username": "...", "password": "..."}, "*": {...}}; '
      + 'read at start-up and on SIGHUP.',
  },
  failover: {
    name: 'failover', default: '', shownDefault: 'none', allowed: FAILOVER_ALLOWED,
    description: 'Further addresses of this broker, tried in this order after the URL\'s own host on each reconnect '
      + '(same scheme, credentials, TLS files and backoff; a port left out is the scheme\'s); see Failover addresses.',
    parse: (raw) => (raw === '' ? null : parseFailover(raw)),
  },
  primaryCheckMs: {
    name: 'primaryCheckMs', default: '', shownDefault: String(PRIMARY_CHECK_MS), allowed: 'an integer from 0 to 86400000',
    description: 'With failover: how long a connection on a failover address stays there before it checks whether the '
      + 'first address (the URL\'s host) answers again and moves back to it, in milliseconds; 0: it stays until that address fails.',
    parse: (raw) => (raw === '' ? null : parseDecimal(raw, 0, 86400000)),
  },
};

const PARAM_KEYS = Object.keys(PARAMS) as ParamKey[];
const OPTIONAL_KEYS = Object.keys(OPTIONAL_PARAMS) as OptionalKey[];
const PARAM_NAMES = [...PARAM_KEYS.map((key) => PARAMS[key].name), ...OPTIONAL_KEYS.map((key) => OPTIONAL_PARAMS[key].name)].join(', ');

/** The URL parameters as documentation rows, in the same shape as describeEnv(). */
export function describeBrokerParams(): Array<{ name: string; default: string; allowed: string; description: string }> {
  return [
    ...PARAM_KEYS.map((key) => {
      const { name, default: def, allowed, description } = PARAMS[key];
      return { name, default: def, allowed, description };
    }),
    ...OPTIONAL_KEYS.map((key) => {
      const { name, shownDefault, allowed, description } = OPTIONAL_PARAMS[key];
      return { name, default: shownDefault, allowed, description };
    }),
  ];
}

/** Failure of a single entry: `entry` is already redacted and is what error messages show. */
export type BrokerListResult =
  | { readonly ok: true; readonly brokers: BrokerConfig[] }
  | { readonly ok: false; readonly entry: string; readonly reason: string };

class EntryError extends Error {}

/** Each in-flight device publish keeps one bit per broker it waits for. */
export const MAX_BROKERS = 31;

export function parseBrokerList(value: string): BrokerListResult {
  const brokers: BrokerConfig[] = [];
  const names = new Set<string>();
  const entries = value.split(',');
  if (entries.length > MAX_BROKERS) return { ok: false, entry: redactUrl(value), reason: `at most ${MAX_BROKERS} brokers, got ${entries.length}` };
  for (const raw of entries) {
    const entry = raw.trim();
    try {
      const broker = parseEntry(entry);
      if (names.has(broker.name)) throw new EntryError(`broker name "${broker.name}" is used more than once`);
      names.add(broker.name);
      brokers.push(broker);
    } catch (err) {
      if (!(err instanceof EntryError)) throw err;
      return { ok: false, entry: redactUrl(entry), reason: err.message };
    }
  }
  return { ok: true, brokers };
}

function parseEntry(entry: string): BrokerConfig {
  if (entry === '') throw new EntryError(`empty entry, expected ${BROKERS_ALLOWED}`);
  const eq = entry.indexOf('=');
  if (eq < 0) throw new EntryError(`expected name=url, url being ${URL_ALLOWED}`);
  const name = entry.slice(0, eq);
  if (!NAME_RE.test(name)) throw new EntryError(`broker name "${name}" must be ${NAME_ALLOWED}`);
  try {
    return { name, ...parseUrl(entry.slice(eq + 1)) };
  } catch (err) {
    if (err instanceof EntryError) err.message = `broker "${name}": ${err.message}`;
    throw err;
  }
}

function parseUrl(url: string): Omit<BrokerConfig, 'name'> {
  const scheme = SCHEME_RE.exec(url)?.[1];
  if (scheme !== undefined && scheme !== 'mqtt' && scheme !== 'mqtts') {
    throw new EntryError(`scheme "${scheme}" is not supported, expected mqtt or mqtts`);
  }
  const match = URL_RE.exec(url);
  if (match === null) throw new EntryError(`url must be ${URL_ALLOWED}`);
  const transport = match[1] as 'mqtt' | 'mqtts';
  const [, , userinfo, rawHost, rawPort, query]: Array<string | undefined> = match;
  const params = parseQuery(query ?? '');
  if (transport === 'mqtt' && (params.ca !== null || params.cert !== null || params.key !== null || params.insecure)) {
    throw new EntryError('ca, cert, key and insecure apply to mqtts:// brokers only');
  }
  if ((params.cert === null) !== (params.key === null)) throw new EntryError('cert and key go together');
  if ((params.credentials === 'map') !== (params.credentialsMap !== undefined)) {
    throw new EntryError(params.credentialsMap === undefined ? 'credentials=map needs credentialsMap' : 'credentialsMap goes with credentials=map');
  }
  if (params.primaryCheckMs !== undefined && params.failover === undefined) throw new EntryError('primaryCheckMs goes with failover');
  const port = rawPort === undefined ? DEFAULT_PORT[transport] : parsePort(rawPort);
  const host = parseHost(rawHost ?? '');
  let failover: Pick<BrokerConfig, 'failover' | 'primaryCheckMs'> = {};
  if (params.failover !== undefined) {
    const addresses = params.failover.map((a) => ({ host: a.host, port: a.port === 0 ? DEFAULT_PORT[transport] : a.port }));
    const keys = [{ host, port }, ...addresses].map((a) => `${a.host}:${a.port}`);
    if (new Set(keys).size !== keys.length) throw new EntryError(`failover must be ${FAILOVER_ALLOWED}`);
    failover = { failover: addresses, primaryCheckMs: params.primaryCheckMs ?? PRIMARY_CHECK_MS };
  }
  if (params.credentialsMap !== undefined) {
    try {
      loadCredentialsMap(params.credentialsMap);
    } catch (err) {
      throw new EntryError(`credentialsMap ${JSON.stringify(params.credentialsMap)}: ${(err as Error).message}`);
    }
  }
  return {
    transport,
    host,
    port,
    ...parseUserinfo(userinfo),
    ...params,
    ...failover,
    redactedUrl: redactUrl(url),
  };
}

function parseHost(raw: string): string {
  const bracketed = raw.startsWith('[');
  const host = bracketed ? raw.slice(1, -1) : raw;
  if (bracketed ? isIPv6(host) : isIP(host) !== 0 || isHostName(host)) return host;
  throw new EntryError(`host "${raw}" must be a host name, an IPv4 address or an [IPv6] address`);
}

function parsePort(raw: string): number {
  const port = parseDecimal(raw, 1, 65535);
  if (port === undefined) throw new EntryError('port must be an integer from 1 to 65535');
  return port;
}

function parseUserinfo(userinfo: string | undefined): { username?: string; password?: string } {
  if (userinfo === undefined) return {};
  const colon = userinfo.indexOf(':');
  const username = decode(colon < 0 ? userinfo : userinfo.slice(0, colon), 'user name');
  if (colon < 0) return { username };
  return { username, password: decode(userinfo.slice(colon + 1), 'password') };
}

function decode(raw: string, what: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    // Naming the part but never echoing it: it may be the password.
    throw new EntryError(`${what} is not valid percent-encoding`);
  }
}

function parseQuery(query: string): Pick<BrokerConfig, ParamKey | OptionalKey> {
  const given = new Map<string, string>();
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (given.has(key)) throw new EntryError(`parameter "${key}" is given more than once`);
    given.set(key, eq < 0 ? '' : pair.slice(eq + 1));
  }
  for (const key of given.keys()) {
    if (!PARAM_KEYS.some((k) => PARAMS[k].name === key) && !OPTIONAL_KEYS.some((k) => OPTIONAL_PARAMS[k].name === key)) {
      throw new EntryError(`unknown parameter "${key}", known parameters are ${PARAM_NAMES}`);
    }
  }
  const read = <K extends ParamKey>(key: K): BrokerConfig[K] => {
    const spec: ParamSpec<BrokerConfig[K]> = PARAMS[key];
    const value = spec.parse(given.get(spec.name) ?? spec.default);
    if (value === undefined) throw new EntryError(`${spec.name} must be ${spec.allowed}`);
    return value;
  };
  const optional: { -readonly [K in OptionalKey]?: BrokerConfig[K] } = {};
  for (const key of OPTIONAL_KEYS) {
    const spec = OPTIONAL_PARAMS[key];
    const value = spec.parse(given.get(spec.name) ?? spec.default);
    if (value === undefined) throw new EntryError(`${spec.name} must be ${spec.allowed}`);
    if (value !== null) (optional as Record<string, unknown>)[key] = value;
  }
  return {
    maxQos: read('maxQos'),
    retain: read('retain'),
    pool: read('pool'),
    protocolVersion: read('protocolVersion'),
    keepalive: read('keepalive'),
    inflight: read('inflight'),
    ca: read('ca'),
    cert: read('cert'),
    key: read('key'),
    insecure: read('insecure'),
    ...optional,
  };
}
