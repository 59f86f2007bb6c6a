// What a broker connection needs from its writer.

import type { Logger } from 'pino';
import type { RateLimitedLog } from '../log';

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
}
