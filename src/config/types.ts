// The validated, frozen configuration every thread receives. Produced once at start-up by
// loadConfig() from the FANOUT_* environment; workers get it through workerData.

export type AckMode = 'all' | 'any' | 'local';
export type RetainMode = 'forward' | 'strip';
export type QoS = 0 | 1 | 2;
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface BrokerConfig {
  /** Short name from FANOUT_BROKERS (`name=url`): [A-Za-z0-9_-]{1,32}, unique. */
  readonly name: string;
  /** 'mqtt' (TCP) or 'mqtts' (TLS). */
  readonly transport: 'mqtt' | 'mqtts';
  readonly host: string;
  readonly port: number;
  readonly username?: string;
  readonly password?: string;
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
   *  Receive Maximum (URL `inflight`, default 1000). */
  readonly inflight: number;
  /** The broker URL with any password replaced by `***`, for logs. */
  readonly redactedUrl: string;
}

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly shards: number;
  readonly brokers: readonly BrokerConfig[];
  /** True when FANOUT_BROKERS was not set: main starts an in-process aedes broker and fills
   *  brokers[] with it before workers start. */
  readonly embeddedBroker: boolean;
  readonly maxPacketSize: number;
  readonly maxInflight: number;
  readonly pendingThrottleMs: number;
  readonly ringBytes: number;
  readonly ack: AckMode;
  readonly logLevel: LogLevel;
  /** Prefix of client ids towards brokers: `{proxyId}-{broker}-{n}`. */
  readonly proxyId: string;
  /** Retained status topic template for each broker connection; `{clientId}` is replaced. */
  readonly statusTopic: string;
  readonly connectTimeoutMs: number;
  readonly shutdownTimeoutMs: number;
  readonly reconnectMinMs: number;
  readonly reconnectMaxMs: number;
}
