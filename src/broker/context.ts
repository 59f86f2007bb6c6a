// What a broker connection needs from its writer.

import type { Logger } from 'pino';
import type { RateLimitedLog } from '../log';
import type { BrokerConnection } from './connection';
import type { LatencyRecorder } from '../metrics/latency';

export interface WriterContext {
  readonly log: Logger;
  readonly warnings: RateLimitedLog;
  /** Cached clock (ms), refreshed by the writer's timer. */
  now: number;
  /** Queues an acknowledgement for `token` back to shard `shard`. */
  ack(shard: number, token: number, reason: number): void;
  /** Runs the writer's turn soon: take ring records, flush connections, publish acks. Called
   *  when a connection can take records again or has acks or answers to send. */
  schedulePump(): void;
  /** Broker round trips (PUBLISH -> PUBACK / PUBREC), for /metrics. */
  readonly rtt: LatencyRecorder;
  /** Largest packet taken from the broker (advertised to MQTT 5 brokers). */
  readonly maxIncoming: number;
  /** A PUBLISH from the broker; false when the shards cannot take it yet (the caller holds it). */
  onBrokerPublish(conn: BrokerConnection, header: number, buf: Buffer, start: number, end: number): boolean;
  onSuback(conn: BrokerConnection, id: number, codes: number[]): void;
  onUnsuback?(conn: BrokerConnection, id: number): void;
  /** The broker finished the spool entry `tag` (PUBACK, PUBCOMP, a refusal; QoS 0 once written). */
  spoolDone(tag: number): void;
  /** The connection is up; `sessionPresent` from the broker's CONNACK. */
  onConnected(conn: BrokerConnection, sessionPresent: boolean): void;
}
