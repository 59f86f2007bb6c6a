// What a broker connection needs from its writer.

import type { Logger } from 'pino';

export interface WriterContext {
  readonly log: Logger;
  /** Cached clock (ms), refreshed by the writer's timer. */
  now: number;
  /** Queues an acknowledgement for `token` back to shard `shard`. */
  ack(shard: number, token: number, reason: number): void;
  /** Publishes queued acknowledgements to the shards. */
  commitAcks(): void;
  /** A connection can take records again (connected, drained, window opened). */
  schedulePump(): void;
}
