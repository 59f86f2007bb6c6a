// The validated, frozen configuration every thread receives. Produced once at start-up by
// loadConfig() from the FANOUT_* environment; workers get it through workerData.

/** FANOUT_ACK: a number k acknowledges a device publish once k of the brokers it goes to did
 *  (at most as many as it goes to); `any` is k = 1, `all` every one of them. */
export type AckMode = 'all' | 'any' | 'local' | number;

/** Brokers each device publish waits for (k of FANOUT_ACK); `all` (and `local`, which waits
 *  for every broker's spool) is more than there can be brokers, so min(k, n) means all n. */
export function ackQuorum(ack: AckMode): number {
  return ack === 'any' ? 1 : typeof ack === 'number' ? ack : 255;
}
export type RetainMode = 'forward' | 'strip';
export type QoS = 0 | 1 | 2;
export type LogFormat = 'json' | 'pretty';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export type QueueOverflow = 'block' | 'drop-oldest' | 'drop-new';
export type RouteDirection = 'in' | 'out' | 'both';
/** pooled: devices share the proxy's connections to a broker; per-device: each device has its
 *  own session at the broker (FANOUT_UPSTREAM_MODE, URL `mode`). */
export type UpstreamMode = 'pooled' | 'per-device';
/** What a device's own session at a broker logs in with (URL `credentials`). */
export type CredentialsMode = 'passthrough' | 'fixed' | 'map';

/** One FANOUT_ROUTES entry: `<broker> <pattern> <in|out|both> [qos] [local-prefix remote-prefix]`.
 *  It covers the local topics localPrefix + X and the broker's topics remotePrefix + X for every
 *  X matched by pattern (src/config/routes.ts has the exact rules). */
export interface Route {
  /** Name of a broker in FANOUT_BROKERS. */
  readonly broker: string;
  /** Topic filter, without the prefixes. */
  readonly pattern: string;
  /** out: device publishes go to the broker; in: the broker serves device subscriptions. */
  readonly direction: RouteDirection;
  /** Highest QoS used on this route, either way (default 2). */
  readonly qos: QoS;
  /** Prefix of the topics on the device side; '' for none. */
  readonly localPrefix: string;
  /** What localPrefix is replaced with at the broker; '' for none. */
  readonly remotePrefix: string;
}

/** One address a broker is reached at. */
export interface BrokerAddress {
  readonly host: string;
  readonly port: number;
}

export interface BrokerConfig {
  /** Short name from FANOUT_BROKERS (`name=url`): [A-Za-z0-9_-]{1,32}, unique. */
  readonly name: string;
  /** 'mqtt' (TCP) or 'mqtts' (TLS). */
  readonly transport: 'mqtt' | 'mqtts';
  readonly host: string;
  readonly port: number;
  readonly username?: string;
  readonly password?: string;
  /** Where username / password were read from (FANOUT_BROKER_<NAME>_USERNAME_FILE,
   *  _PASSWORD_FILE); absent when they came from the URL or are not set. */
  readonly usernameFile?: string;
  readonly passwordFile?: string;
  /** Highest QoS sent to this broker (URL `maxQos`, default 2). */
  readonly maxQos: QoS;
  /** Retain flag handling (URL `retain`, default forward). */
  readonly retain: RetainMode;
  /** Connections to this broker (URL `pool`, default 4). */
  readonly pool: number;
  /** MQTT protocol level: 4 = 3.1.1, 5 = 5.0 (URL `protocol`, `3.1.1` | `5`, default 3.1.1). */
  readonly protocolVersion: 4 | 5;
  /** Keep-alive towards the broker in seconds (URL `keepalive`, default 60). */
  readonly keepalive: number;
  /** Max unacknowledged QoS 1/2 publishes per connection, further capped by the broker's
   *  Receive Maximum (URL `inflight`; 0: auto, 20 for MQTT 3.1.1, the Receive Maximum for 5). */
  readonly inflight: number;
  /** mqtts: CA file, client certificate and key files (null: none), and whether the broker's
   *  certificate goes unverified (URL `ca`, `cert`, `key`, `insecure`). */
  readonly ca: string | null;
  readonly cert: string | null;
  readonly key: string | null;
  readonly insecure: boolean;
  /** The broker URL with any password replaced by `***`, for logs. */
  readonly redactedUrl: string;
  /** URL `mode`; absent: FANOUT_UPSTREAM_MODE decides (see upstreamModeOf()). */
  readonly mode?: UpstreamMode;
  /** Per-device mode: URL `credentials`; absent: passthrough. */
  readonly credentials?: CredentialsMode;
  /** Per-device mode with credentials=map: the JSON file of device user name -> credentials. */
  readonly credentialsMap?: string;
  /** URL `failover`: the addresses tried after host:port, in order, on each reconnect; absent: none. */
  readonly failover?: readonly BrokerAddress[];
  /** With failover (URL `primaryCheckMs`): ms on a failover address before host:port is tried
   *  again; 0: never while the connection holds. */
  readonly primaryCheckMs?: number;
  /** Set by a reload on the slot of a broker it removed: Config.brokers keeps every slot a
   *  thread may have rings for, and a retired one takes and serves nothing. */
  readonly retired?: boolean;
}

export interface Config {
  readonly host: string;
  readonly port: number;
  /** MQTT-over-WebSocket listener port, null when off. */
  readonly wsPort: number | null;
  /** MQTT-over-secure-WebSocket listener port, null when off; then tlsCert and tlsKey are set. */
  readonly wssPort: number | null;
  readonly wsPath: string;
  /** HTTP listener (metrics, health, publish, dashboard) port, null when off. */
  readonly httpPort: number | null;
  /** MQTT-over-TLS listener port, null when off; then tlsCert and tlsKey are set. */
  readonly tlsPort: number | null;
  readonly tlsCert: string | null;
  readonly tlsKey: string | null;
  readonly tlsCa: string | null;
  readonly tlsRequireClientCert: boolean;
  readonly coverFilters: boolean;
  readonly uplinkQueueBytes: number;
  readonly tlsIdentityAsUsername: boolean;
  readonly shards: number;
  readonly brokers: readonly BrokerConfig[];
  /** True when FANOUT_BROKERS was not set: main starts an in-process aedes broker and fills
   *  brokers[] with it before workers start. */
  readonly embeddedBroker: boolean;
  /** FANOUT_BROKERS_FILE: where `brokers` was read from (again on a reload); null when the list
   *  is FANOUT_BROKERS itself. */
  readonly brokersFile: string | null;
  /** Parsed FANOUT_ROUTES; empty when unset: then defaultRoutes() applies (every broker gets all
   *  uplink, the first broker serves downlink). */
  readonly routes: readonly Route[];
  readonly maxPacketSize: number;
  readonly maxInflight: number;
  /** QoS 1/2 messages kept per device session while the device is away or its window is full. */
  readonly passwordFile: string | null;
  readonly aclFile: string | null;
  /** null: decided at start-up (true exactly when there is no password file). */
  readonly allowAnonymous: boolean | null;
  readonly maxConnections: number;
  readonly maxConnectRate: number;
  readonly maxTopicLength: number;
  readonly maxTopicLevels: number;
  readonly maxSubscriptions: number;
  readonly maxPublishRate: number;
  readonly maxQueuedMessages: number;
  /** What a full session queue does with one more message; drops are counted and logged. */
  readonly queueOverflow: QueueOverflow;
  /** Upper bound, in seconds, of MQTT 5 session expiry and of the expiry of MQTT 3.1.1
   *  persistent (clean session 0) sessions. */
  readonly sessionExpiryMaxS: number;
  /** FANOUT_SESSION_STORE: the Redis URL sessions are recorded at; null: memory only. */
  readonly sessionStore: string | null;
  readonly pendingThrottleMs: number;
  readonly ringBytes: number;
  readonly ack: AckMode;
  /** FANOUT_SPOOL_DIR: folder of the per-broker durable logs; null when off. */
  readonly spoolDir: string | null;
  /** Longest wait for an fdatasync of the spool, ms; 0: each batch; -1 (off): never synced. */
  readonly spoolFsyncMs: number;
  readonly spoolMaxBytes: number;
  readonly spoolOverflow: 'block' | 'drop-oldest';
  /** Filters of topics conflated while a broker is away; null when off. */
  readonly conflateTopics: readonly string[] | null;
  /** Heap limit of each shard and writer thread (MiB). */
  readonly threadHeapMb: number;
  readonly threadYoungMb: number;
  /** FANOUT_MALLOC: the allocator the launcher preloads (the daemon checks and says so). */
  readonly malloc: 'auto' | 'jemalloc' | 'system';
  /** FANOUT_ADMIN_TOKEN: the Bearer token of POST /admin/reload; null: refused. */
  readonly adminToken: string | null;
  /** FANOUT_TEST_HOOKS: POST /test/crash is served. */
  readonly testHooks: boolean;
  readonly logLevel: LogLevel;
  /** FANOUT_LOG_FORMAT: JSON lines, or pino-pretty's lines for a terminal. */
  readonly logFormat: LogFormat;
  /** FANOUT_TRACE_CLIENTS: globs on client ids whose packets are logged decoded; null when off. */
  readonly traceClients: string | null;
  /** Prefix of client ids towards brokers: `{proxyId}-{broker}-{n}`. */
  readonly proxyId: string;
  /** Retained status topic template for each broker connection; `{clientId}` is replaced. */
  readonly statusTopic: string;
  readonly connectTimeoutMs: number;
  readonly shutdownTimeoutMs: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
  /** FANOUT_UPSTREAM_MODE: the mode of every broker whose URL has no `mode`. */
  readonly upstreamMode: UpstreamMode;
  /** Per-device mode: client id of a device's session at a broker; {clientId} and {broker} are replaced. */
  readonly upstreamClientId: string;
  /** Per-device mode: upstream session connects per second and broker (0: no limit). */
  readonly upstreamConnectRate: number;
  /** Per-device mode: how long a device's CONNECT waits for its upstream sessions. */
  readonly upstreamConnectTimeoutMs: number;
}
