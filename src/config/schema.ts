// The FANOUT_* variables, each declared exactly once: name, documentation and zod parser.
// loadConfig() validates with envSchema() built from these declarations and the README table
// is rendered from them too, so behaviour and documentation cannot drift apart.

import { isIP } from 'node:net';
import { z } from 'zod';
import { BROKER_NAME_RE, BROKERS_ALLOWED, isHostName, MAX_BROKERS, parseBrokerList, parseDecimal } from './brokers';
import { parseRoutes, ROUTES_ALLOWED, RoutesError } from './routes';
import { validateTopicFilter } from '../protocol/topic';
import { CLIENT_ID_TEMPLATE_ALLOWED, isClientIdTemplate } from './upstream';
import type { AckMode, Config, Route } from './types';

/** Facts about the machine that some defaults derive from; injected to keep tests stable. */
export interface HostFacts {
  readonly cpus: number;
  readonly hostname: string;
  /** Standard output is a terminal (people read it) rather than a file, pipe or journal. */
  readonly tty?: boolean;
}

/** A value rule: the zod parser from raw text and the human text of what it accepts. */
export interface Kind<T> {
  /** Completes "expected ..." in error messages and fills the Allowed column of the README. */
  readonly allowed: string;
  readonly schema: z.ZodType<T, z.ZodTypeDef, string>;
}

export interface VarSpec<T> extends Kind<T> {
  readonly name: string;
  readonly description: string;
  /** Documented default. Without `fallback` it is run through `schema`, so it cannot be invalid. */
  readonly default: string;
  /** Computes the default when it depends on the machine or is not expressible as raw text. */
  readonly fallback?: (host: HostFacts) => T;
}

/** Custom issues may carry the value to show instead of the raw one (a redacted broker entry). */
export interface ShownParams {
  readonly shown: string;
}

const expected = (allowed: string): string => `expected ${allowed}`;

/** `fatal` stops zod before cross-variable checks run on a half-parsed environment. */
function fail(ctx: z.RefinementCtx, message: string, params?: ShownParams): never {
  ctx.addIssue({ code: z.ZodIssueCode.custom, message, params, fatal: true });
  return z.NEVER;
}

function rule<T>(allowed: string, convert: (raw: string) => T | undefined): Kind<T> {
  return {
    allowed,
    schema: z.string().transform((raw, ctx) => convert(raw) ?? fail(ctx, expected(allowed))),
  };
}

/** FANOUT_SESSION_STORE: null for memory, else the Redis URL as given. */
const SESSION_STORE_ALLOWED = 'memory, or a redis:// or rediss:// URL (redis://[user[:password]@]host[:port][/db])';
const sessionStore: Kind<string | null> = {
  allowed: SESSION_STORE_ALLOWED,
  schema: z.string().transform((raw, ctx) => {
    if (raw === 'memory') return null;
    let ok = /^rediss?:\/\/[^/?#]+(\/\d{0,5})?$/.test(raw);
    try {
      ok &&= new URL(raw).hostname !== '';
    } catch {
      ok = false;
    }
    return ok ? raw : fail(ctx, expected(SESSION_STORE_ALLOWED));
  }),
};

export function integer(min: number, max: number, allowed = `an integer from ${min} to ${max}`): Kind<number> {
  return rule(allowed, (raw) => parseDecimal(raw, min, max));
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T): Kind<T[number]> {
  const allowed = `${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`;
  return { allowed, schema: z.enum(values, { message: expected(allowed) }) };
}

const TRUTHY = new Set(['true', '1', 'yes']);

export function boolean(): Kind<boolean> {
  const words = oneOf(['true', 'false', '1', '0', 'yes', 'no']);
  return { allowed: words.allowed, schema: words.schema.transform((word) => TRUTHY.has(word)) };
}

const hostOrIp = rule('a host name, an IPv4 or an IPv6 address', (raw) =>
  isIP(raw) !== 0 || isHostName(raw) ? raw : undefined,
);

const powerOfTwo = rule('a power of two from 65536 to 1073741824', (raw) => {
  const n = parseDecimal(raw, 65536, 1073741824);
  return n !== undefined && (n & (n - 1)) === 0 ? n : undefined;
});

const urlPath = rule('a URL path starting with / (letters, digits and -._~/ only)', (raw) =>
  /^\/[A-Za-z0-9\-._~/]*$/.test(raw) && raw.length <= 256 ? raw : undefined,
);

const filePath = rule('a file path', (raw) => (raw.includes('\0') ? undefined : raw));

const PROXY_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** FANOUT_SPOOL_FSYNC_MS: milliseconds, or `off` (-1): acknowledged once written, never synced. */
const fsyncMs = rule("an integer from 0 to 60000, or off", (raw) => (raw === 'off' ? -1 : parseDecimal(raw, 0, 60000)));

const filterList = rule('comma-separated MQTT topic filters (+ and # as wildcards, no $share)', (raw) => {
  const filters = raw.split(',').map((f) => f.trim());
  return filters.every((f) => f.length > 0 && Buffer.byteLength(f) <= 65535 && validateTopicFilter(f, { sharedAllowed: false }) === 0) ? filters : undefined;
});

export function defaultProxyId(hostname: string): string {
  return `fanout-${hostname.replace(/[^A-Za-z0-9_-]/g, '-')}`.slice(0, 64);
}

// Any brace left after removing {clientId} is most likely a mistyped placeholder, which would
// silently make every connection share one retained status topic.
const statusTopic = rule('an MQTT topic name without + or #, which may contain {clientId} (no other braces)', (raw) =>
  Buffer.byteLength(raw) <= 65535 && !/[+#{}\0]/.test(raw.replaceAll('{clientId}', '')) ? raw : undefined,
);

const clientIdTemplate = rule(CLIENT_ID_TEMPLATE_ALLOWED, (raw) => (isClientIdTemplate(raw) ? raw : undefined));

const ACK_ALLOWED = 'all, any, local, or a number of brokers k from 1 to those in FANOUT_BROKERS';
const ackMode = rule<AckMode>(ACK_ALLOWED, (raw) =>
  raw === 'all' || raw === 'any' || raw === 'local' ? raw : parseDecimal(raw, 1, MAX_BROKERS));

const brokerList: Kind<Config['brokers']> = {
  allowed: BROKERS_ALLOWED,
  schema: z.string().transform((raw, ctx) => {
    const result = parseBrokerList(raw);
    return result.ok ? result.brokers : fail(ctx, result.reason, { shown: result.entry });
  }),
};

/** What each variable converts to on its own. Routes name brokers, so FANOUT_ROUTES stays text
 *  until envSchema() parses it against FANOUT_BROKERS. */
type EnvValues = Omit<Config, 'embeddedBroker' | 'routes'> & { readonly routes: string };
type EnvKey = keyof EnvValues;

/** One declaration per Config field, in README order (embeddedBroker follows from FANOUT_BROKERS;
 *  routes come from FANOUT_ROUTES parsed against it). */
export const VARIABLES: { readonly [K in EnvKey]: VarSpec<EnvValues[K]> } = {
  host: { name: 'FANOUT_HOST', default: '0.0.0.0', ...hostOrIp,
    description: 'Address the MQTT listener for devices binds to.' },
  port: { name: 'FANOUT_PORT', default: '1883', ...integer(0, 65535),
    description: 'TCP port of the MQTT listener for devices; 0 picks a free port.' },
  wsPort: { name: 'FANOUT_WS_PORT', default: 'none: no WebSocket listener', ...integer(0, 65535), fallback: () => null,
    description: 'TCP port of the MQTT-over-WebSocket listener for devices (path FANOUT_WS_PATH); 0 picks a free port.' },
  wssPort: { name: 'FANOUT_WSS_PORT', default: 'none: no secure WebSocket listener', ...integer(0, 65535), fallback: () => null,
    description: 'TCP port of the MQTT-over-secure-WebSocket (wss://) listener for devices (path FANOUT_WS_PATH); '
      + 'it takes its certificates and client-certificate settings from the FANOUT_TLS_* variables and needs FANOUT_TLS_CERT and FANOUT_TLS_KEY; 0 picks a free port.' },
  wsPath: { name: 'FANOUT_WS_PATH', default: '/mqtt', ...urlPath,
    description: 'URL path of the MQTT-over-WebSocket listeners (ws:// and wss://).' },
  httpPort: { name: 'FANOUT_HTTP_PORT', default: 'none: no HTTP listener', ...integer(0, 65535), fallback: () => null,
    description: 'TCP port of the HTTP listener (on FANOUT_HOST): /metrics (Prometheus), /healthz, /readyz, POST /publish and the dashboard at /. '
      + 'POST /publish meets the rules of a device: FANOUT_PASSWORD_FILE (HTTP Basic), FANOUT_ALLOW_ANONYMOUS, FANOUT_ACL_FILE (client id http) and the topic limits.' },
  tlsPort: { name: 'FANOUT_TLS_PORT', default: 'none: no TLS listener', ...integer(0, 65535), fallback: () => null,
    description: 'TCP port of the MQTT-over-TLS listener for devices (needs FANOUT_TLS_CERT and FANOUT_TLS_KEY); 0 picks a free port.' },
  tlsCert: { name: 'FANOUT_TLS_CERT', default: 'none', ...filePath, fallback: () => null,
    description: 'PEM certificate (chain) of the TLS and WSS listeners; re-read on SIGHUP.' },
  tlsKey: { name: 'FANOUT_TLS_KEY', default: 'none', ...filePath, fallback: () => null,
    description: 'PEM private key of the TLS and WSS listeners; re-read on SIGHUP.' },
  tlsCa: { name: 'FANOUT_TLS_CA', default: 'none', ...filePath, fallback: () => null,
    description: 'PEM CA certificates device certificates are verified against (mTLS); re-read on SIGHUP.' },
  tlsRequireClientCert: { name: 'FANOUT_TLS_REQUIRE_CLIENT_CERT', default: 'false', ...boolean(),
    description: 'Refuse TLS and WSS devices without a certificate signed by FANOUT_TLS_CA.' },
  tlsIdentityAsUsername: { name: 'FANOUT_TLS_CN_AS_USERNAME', default: 'false', ...boolean(),
    description: 'Use the common name (CN) of the device certificate as its user name, in place of the one in CONNECT.' },
  shards: { name: 'FANOUT_SHARDS', default: 'number of CPUs, at most 64', ...integer(1, 64),
    fallback: (host) => Math.min(64, Math.max(1, host.cpus)),
    description: 'Shard worker threads the device connections are spread over.' },
  brokers: { name: 'FANOUT_BROKERS', default: 'none: an embedded broker is started', ...brokerList,
    fallback: () => [],
    description: 'Upstream brokers device publishes are forwarded to (all of them unless FANOUT_ROUTES '
      + 'says otherwise); see the URL parameters below. User name and password may come from files instead: '
      + 'FANOUT_BROKER_<NAME>_USERNAME_FILE and FANOUT_BROKER_<NAME>_PASSWORD_FILE, below.' },
  brokersFile: { name: 'FANOUT_BROKERS_FILE', default: 'none', ...filePath, fallback: () => null,
    description: 'A file holding the broker list instead of FANOUT_BROKERS (not both): the same name=url entries, '
      + 'one per line or comma-separated, blank lines and lines starting with # ignored. Re-read on SIGHUP and POST /admin/reload, '
      + 'which add, remove and reconnect brokers without a restart; see Hot reload.' },
  routes: { name: 'FANOUT_ROUTES', default: 'none: every broker gets every publish, the first one also serves subscriptions',
    allowed: ROUTES_ALLOWED, schema: z.string(), fallback: () => '',
    description: 'Which topics each broker gets from devices (out) and serves to them (in), '
      + 'with a QoS cap and prefix remapping per route; see Routes above. Needs FANOUT_BROKERS.' },
  coverFilters: { name: 'FANOUT_COVER_FILTERS', default: 'true', ...boolean(),
    description: 'Hold at each broker only the filters no other held filter covers (`#` covers `a/b`) at a QoS granted as high: '
      + 'the covered ones are served by the broader subscription, so the broker sends one copy of a message, not one per matching filter. '
      + 'false: one subscription per distinct filter.' },
  maxPacketSize: { name: 'FANOUT_MAX_PACKET_SIZE', default: '262144', ...integer(64, 268435455),
    description: 'Largest MQTT packet accepted from a device, in bytes.' },
  maxInflight: { name: 'FANOUT_MAX_INFLIGHT', default: '100', ...integer(1, 65535),
    description: 'Unacknowledged QoS 1/2 publishes allowed per device connection, advertised to MQTT 5 devices as Receive Maximum: '
      + 'an MQTT 5 device that sends more is disconnected with 0x93; an MQTT 3.1.1 device is not read from until an answer frees a slot.' },
  passwordFile: { name: 'FANOUT_PASSWORD_FILE', default: 'none', ...filePath, fallback: () => null,
    description: "Device user names and passwords in mosquitto's password-file format (mosquitto_passwd), also for POST /publish (HTTP Basic); re-read on SIGHUP." },
  aclFile: { name: 'FANOUT_ACL_FILE', default: 'none', ...filePath, fallback: () => null,
    description: "What each device may publish, subscribe to and receive, in mosquitto's acl_file format; POST /publish has the client id http for %c; re-read on SIGHUP." },
  allowAnonymous: { name: 'FANOUT_ALLOW_ANONYMOUS', default: 'true without FANOUT_PASSWORD_FILE, else false', ...boolean(),
    fallback: () => null,
    description: 'Whether devices without a user name are accepted.' },
  maxConnections: { name: 'FANOUT_MAX_CONNECTIONS', default: '100000', ...integer(1, 10000000),
    description: 'Device sockets open at once (all listeners, counted from the accept, CONNECT sent or not); a socket beyond is closed at once. '
      + 'A CONNECT that still finds the limit exceeded (shards accepting at the same instant) gets CONNACK 0x97 (MQTT 5) or 0x03 (3.1.1).' },
  maxConnectRate: { name: 'FANOUT_MAX_CONNECT_RATE', default: '0', ...integer(0, 1000000),
    description: 'New connections per second from one source address (0: no limit), TCP, TLS and WebSocket alike; beyond, sockets are closed at once. '
      + 'Counted per shard, each allowing its share. Off by default: behind a load balancer every device has its address.' },
  maxTopicLength: { name: 'FANOUT_MAX_TOPIC_LENGTH', default: '1024', ...integer(1, 65535),
    description: 'Longest topic name or filter a device may use, in bytes.' },
  maxTopicLevels: { name: 'FANOUT_MAX_TOPIC_LEVELS', default: '32', ...integer(1, 65535),
    description: 'Most levels (parts between /) in a topic name or filter a device may use.' },
  maxSubscriptions: { name: 'FANOUT_MAX_SUBSCRIPTIONS', default: '1000', ...integer(1, 10000000),
    description: 'Subscriptions per device session; a SUBSCRIBE beyond gets 0x97 (MQTT 5) or 0x80 (3.1.1) for the extra filters.' },
  maxPublishRate: { name: 'FANOUT_MAX_PUBLISH_RATE', default: '0', ...integer(0, 10000000),
    description: 'PUBLISH packets per second one device may send (0: no limit); a faster device is slowed down (not read from), not cut off.' },
  maxQueuedMessages: { name: 'FANOUT_MAX_QUEUED_MESSAGES', default: '1000', ...integer(1, 10000000),
    description: 'QoS 1/2 messages kept per device session while the device is away or its window is full.' },
  queueOverflow: { name: 'FANOUT_QUEUE_OVERFLOW', default: 'block', ...oneOf(['block', 'drop-oldest', 'drop-new']),
    description: 'What a full session queue does with one more message. block: for a connected device, the shard '
      + 'stops taking messages from the brokers until the device acknowledges (the brokers hold them); a device that '
      + 'acknowledged nothing for 2 s, or held the brokers for 10 s, overflows with drop-oldest until its queue is half '
      + 'empty; for an absent one, drop-oldest. drop-oldest / drop-new: drop at once. Drops are counted and logged.' },
  sessionExpiryMaxS: { name: 'FANOUT_SESSION_EXPIRY_MAX', default: '86400', ...integer(0, 4294967295),
    description: 'Upper bound of the MQTT 5 session expiry and the expiry of MQTT 3.1.1 persistent '
      + '(clean session 0) sessions, in seconds.' },
  sessionStore: { name: 'FANOUT_SESSION_STORE', default: 'memory', fallback: () => null,
    ...sessionStore,
    description: 'Where persistent device sessions (subscriptions, undelivered QoS 1/2 messages, in-flight state) are kept beyond the shard that serves them. '
      + 'memory: in that shard only; they end with the instance. redis://...: also in Redis (written behind, read at CONNECT with clean start 0), '
      + 'so that a device resumes its session on any instance sharing the Redis; a client id is then owned by one instance at a time. See Several instances.' },
  pendingThrottleMs: { name: 'FANOUT_PENDING_THROTTLE_MS', default: '10', ...integer(0, 60000),
    description: 'Pause between re-sent batches after a broker reconnect, in milliseconds.' },
  ringBytes: { name: 'FANOUT_RING_BYTES', default: '4194304', ...powerOfTwo,
    description: 'Size of the shared-memory ring buffer per shard and broker, in bytes; '
      + 'at least 2 × (FANOUT_MAX_PACKET_SIZE + 64), so any accepted packet fits.' },
  uplinkQueueBytes: { name: 'FANOUT_UPLINK_QUEUE_BYTES', default: '524288', ...integer(1024, 1073741824),
    description: 'Device publishes a shard queues for one broker, in bytes (at most FANOUT_RING_BYTES), before the devices publishing to it are paused: '
      + 'when a broker is slower than the devices, a publish waits behind at most this much. Larger absorbs longer bursts; smaller keeps the wait short.' },
  ack: { name: 'FANOUT_ACK', default: 'all', ...ackMode,
    description: 'When a device publish is acknowledged: once all brokers it goes to, any one of them, k of them '
      + '(a number; a publish that goes to fewer than k brokers waits for all of those), '
      + 'or only the proxy itself (local) took it; with FANOUT_SPOOL_DIR, local means once it is in every broker\'s spool (see FANOUT_SPOOL_FSYNC_MS). See Durable spool and Routes.' },
  spoolDir: { name: 'FANOUT_SPOOL_DIR', default: 'none: no spool, messages wait in memory', ...filePath, fallback: () => null,
    description: 'Folder of the durable spool: every message to a broker is appended to that broker\'s log here first, '
      + 'sent from there at the broker\'s pace, and replayed after a restart (see Durable spool above).' },
  spoolFsyncMs: { name: 'FANOUT_SPOOL_FSYNC_MS', default: '10', ...fsyncMs,
    description: 'With FANOUT_SPOOL_DIR: how long appended messages may wait for an fdatasync, in milliseconds (0: each batch at once). '
      + 'FANOUT_ACK=local acknowledges a device only after it; off: never synced, acknowledged once written (survives a crash of the daemon, not of the machine).' },
  spoolMaxBytes: { name: 'FANOUT_SPOOL_MAX_BYTES', default: '1073741824', ...integer(1048576, 2 ** 50),
    description: 'With FANOUT_SPOOL_DIR: bytes each broker\'s spool may hold on disk.' },
  spoolOverflow: { name: 'FANOUT_SPOOL_OVERFLOW', default: 'block', ...oneOf(['block', 'drop-oldest']),
    description: 'With FANOUT_SPOOL_DIR: what a full spool does. block: the writer stops taking messages, so devices are slowed down; '
      + 'drop-oldest: its oldest segment file is deleted, its unsent messages counted and logged as dropped.' },
  conflateTopics: { name: 'FANOUT_CONFLATE_TOPICS', default: 'none', ...filterList, fallback: () => null,
    description: 'With FANOUT_SPOOL_DIR: topics (filters) of which only the newest message per topic is kept while a broker is away; '
      + 'the older ones are skipped (and counted) when it comes back.' },
  threadHeapMb: { name: 'FANOUT_THREAD_HEAP_MB', default: '4096', ...integer(32, 1048576),
    description: 'Heap limit of each shard and writer thread, in MiB: a thread that runs out is restarted alone instead of ending the daemon.' },
  threadYoungMb: { name: 'FANOUT_THREAD_YOUNG_MB', default: '24', ...integer(0, 1024),
    description: 'Young generation of each shard and writer thread, in MiB, fixed at this size from the start (a third of it is one semi-space); '
      + '0: V8\'s own, which starts small, grows under load up to 32 MiB of new space per thread and shrinks at idle, so resident memory follows the load\'s history.' },
  malloc: { name: 'FANOUT_MALLOC', default: 'auto', ...oneOf(['auto', 'jemalloc', 'system']),
    description: 'Memory allocator, preloaded by the launcher `src/mqtt-fanout` (what `npm start` runs). jemalloc gives freed memory back to the system within seconds; '
      + 'system, the C library\'s, keeps much of the memory of a load spike resident. auto: jemalloc where Debian\'s libjemalloc2 is installed, else system; '
      + 'the ready line names the one in use. jemalloc: a warning at start-up where it cannot be loaded.' },
  adminToken: { name: 'FANOUT_ADMIN_TOKEN', default: 'none: POST /admin/reload is refused (403)',
    ...rule('16 to 256 printable ASCII characters without spaces', (raw) => (/^[\x21-\x7e]{16,256}$/.test(raw) ? raw : undefined)),
    fallback: () => null,
    description: 'Bearer token of the HTTP admin endpoints (POST /admin/reload with Authorization: Bearer <token>).' },
  testHooks: { name: 'FANOUT_TEST_HOOKS', default: 'false', ...boolean(),
    description: 'For tests only: POST /test/crash?thread=… on the HTTP listener makes that thread fail (uncaught error or out of memory), to test restarts.' },
  logLevel: { name: 'FANOUT_LOG_LEVEL', default: 'info',
    ...oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    description: 'Least severe level that is logged.' },
  logFormat: { name: 'FANOUT_LOG_FORMAT', default: 'pretty when standard output is a terminal, else json', ...oneOf(['json', 'pretty']),
    fallback: (host) => (host.tty === true ? 'pretty' : 'json'),
    description: 'json: one JSON object per line (for journald, Docker, log shippers). pretty: pino-pretty\'s coloured lines for people, formatted in the logging thread.' },
  traceClients: { name: 'FANOUT_TRACE_CLIENTS', default: 'none', fallback: () => null,
    ...rule('comma-separated globs on client ids (* any run of characters, ? one character)', (raw) => (raw.length <= 4096 ? raw : undefined)),
    description: 'Devices whose every packet in and out (and the broker traffic made on their behalf) is logged decoded at info level.' },
  proxyId: { name: 'FANOUT_PROXY_ID', default: 'fanout- + host name, sanitized, at most 64 characters',
    ...rule('1 to 64 characters from [A-Za-z0-9_-]', (raw) => (PROXY_ID_RE.test(raw) ? raw : undefined)),
    fallback: (host) => defaultProxyId(host.hostname),
    description: 'Prefix of the client ids used towards brokers: {proxyId}-{broker}-{n}.' },
  statusTopic: { name: 'FANOUT_STATUS_TOPIC', default: 'fanout/status/{clientId}', ...statusTopic,
    description: 'Retained status topic of each broker connection; {clientId} is replaced by its client id.' },
  connectTimeoutMs: { name: 'FANOUT_CONNECT_TIMEOUT_MS', default: '10000', ...integer(100, 600000),
    description: 'Time a new device socket has, from its accept, to send a whole CONNECT before it is closed, in milliseconds.' },
  shutdownTimeoutMs: { name: 'FANOUT_SHUTDOWN_TIMEOUT_MS', default: '10000', ...integer(0, 600000),
    description: 'Time a graceful shutdown may take before the process exits anyway, in milliseconds.' },
  reconnectMinMs: { name: 'FANOUT_RECONNECT_MIN_MS', default: '100',
    ...integer(10, 600000, 'an integer from 10 to 600000, at most FANOUT_RECONNECT_MAX_MS'),
    description: 'Shortest delay before reconnecting to a broker, in milliseconds.' },
  reconnectMaxMs: { name: 'FANOUT_RECONNECT_MAX_MS', default: '10000',
    ...integer(10, 3600000, 'an integer from 10 to 3600000, at least FANOUT_RECONNECT_MIN_MS'),
    description: 'Longest delay between attempts to reconnect to a broker, in milliseconds.' },
  upstreamMode: { name: 'FANOUT_UPSTREAM_MODE', default: 'pooled', ...oneOf(['pooled', 'per-device']),
    description: 'How device traffic reaches the brokers whose URL has no mode parameter. pooled: over the proxy\'s '
      + 'own connections (pool), shared by all devices. per-device: every device gets a session of its own at each broker '
      + '(client id FANOUT_UPSTREAM_CLIENT_ID, the device\'s credentials, will, clean session and session expiry), opened '
      + 'before its CONNACK and closed when it leaves; see Per-device upstream mode.' },
  upstreamClientId: { name: 'FANOUT_UPSTREAM_CLIENT_ID', default: '{clientId}-{broker}', ...clientIdTemplate,
    description: 'Per-device mode: the client id of a device\'s session at a broker; {clientId} is replaced by the '
      + 'device\'s client id, {broker} by the broker\'s name.' },
  upstreamConnectRate: { name: 'FANOUT_UPSTREAM_CONNECT_RATE', default: '1000', ...integer(0, 1000000),
    description: 'Per-device mode: sessions opened per second at each broker (0: no limit), so a storm of devices, '
      + 'or a broker coming back, does not flood the broker; devices wait for their CONNACK meanwhile.' },
  upstreamConnectTimeoutMs: { name: 'FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS', default: '20000', ...integer(1000, 600000),
    description: 'Per-device mode: how long a device\'s CONNECT waits for its sessions at the brokers (queueing for '
      + 'FANOUT_UPSTREAM_CONNECT_RATE included) before it is refused with 0x88 (MQTT 5) or 0x03 (3.1.1), in milliseconds.' },
};

const ENTRIES: ReadonlyArray<readonly [EnvKey, VarSpec<unknown>]> = (Object.keys(VARIABLES) as EnvKey[]).map(
  (key) => [key, VARIABLES[key]],
);

/** The declarations in README order. */
export const SPECS: readonly VarSpec<unknown>[] = ENTRIES.map(([, spec]) => spec);

function defaultValue<T>(spec: VarSpec<T>, host: HostFacts): T {
  return spec.fallback ? spec.fallback(host) : spec.schema.parse(spec.default);
}

/**
 * Parses an environment into a Config (not yet frozen). Issues come in declaration order and
 * carry the variable name as path[0]; only the environment's FANOUT_* keys are read.
 */
export function envSchema(host: HostFacts): z.ZodType<Config, z.ZodTypeDef, unknown> {
  const blankToUndefined = (value: unknown): unknown => (value === '' ? undefined : value);
  const shape = Object.fromEntries(
    SPECS.map((spec) => [spec.name, z.preprocess(blankToUndefined, spec.schema.optional())]),
  );
  return z
    .object(shape)
    .superRefine((vars, ctx) => checkReconnectOrder(vars, ctx, host))
    .transform((vars, ctx): Config => {
      const values = Object.fromEntries(
        ENTRIES.map(([key, spec]) => [key, vars[spec.name] ?? defaultValue(spec, host)]),
      ) as EnvValues;
      const embeddedBroker = vars[VARIABLES.brokers.name] === undefined;
      checkAckQuorum(values, embeddedBroker, ctx);
      return { ...values, embeddedBroker, routes: routesOf(values, embeddedBroker, ctx) };
    });
}

/** FANOUT_ROUTES parsed against the broker names; [] when unset (RouteTable then applies
 *  defaultRoutes). Without FANOUT_BROKERS there are no names for routes to use. */
function routesOf(values: EnvValues, embeddedBroker: boolean, ctx: z.RefinementCtx): Route[] {
  if (values.routes === '') return [];
  let message = `routes name brokers of ${VARIABLES.brokers.name}, which is not set `
    + '(the embedded broker then takes every publish and serves every subscription)';
  if (!embeddedBroker) {
    try {
      // With FANOUT_BROKERS_FILE a route may name a broker a reload adds later.
      return parseRoutes(values.routes, values.brokers.map((broker) => broker.name), values.brokersFile === null ? {} : { anyName: BROKER_NAME_RE });
    } catch (err) {
      if (!(err instanceof RoutesError)) throw err;
      message = err.message;
    }
  }
  ctx.addIssue({ code: z.ZodIssueCode.custom, path: [VARIABLES.routes.name], message, fatal: true });
  return z.NEVER;
}

/** FANOUT_ACK=k cannot wait for more brokers than there are (the embedded broker is one). */
function checkAckQuorum(values: EnvValues, embeddedBroker: boolean, ctx: z.RefinementCtx): void {
  const brokers = embeddedBroker ? 1 : values.brokers.length;
  if (typeof values.ack !== 'number' || values.ack <= brokers) return;
  const which = embeddedBroker ? 'FANOUT_BROKERS is not set: the embedded broker is the only one' : `FANOUT_BROKERS has ${brokers}`;
  ctx.addIssue({ code: z.ZodIssueCode.custom, path: [VARIABLES.ack.name], fatal: true,
    message: `${expected(ACK_ALLOWED)} (${which})` });
}

function checkReconnectOrder(vars: Record<string, unknown>, ctx: z.RefinementCtx, host: HostFacts): void {
  const { reconnectMinMs: minSpec, reconnectMaxMs: maxSpec } = VARIABLES;
  const setMax = vars[maxSpec.name] as number | undefined;
  const min = (vars[minSpec.name] as number | undefined) ?? defaultValue(minSpec, host);
  const max = setMax ?? defaultValue(maxSpec, host);
  if (min <= max) return;
  // The defaults are consistent, so blame whichever of the two the operator actually set.
  const [spec, otherValue] = setMax !== undefined ? [maxSpec, min] : [minSpec, max];
  ctx.addIssue({
    code: z.ZodIssueCode.custom,
    path: [spec.name],
    message: `${expected(spec.allowed)} (which is ${otherValue})`,
  });
}
