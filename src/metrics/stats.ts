// Per-thread counters in shared memory: each thread writes only its own row, the supervisor
// (and later the metrics endpoint) reads every row without asking the threads anything.

export const SHARD_FIELDS = [
  'connections', 'publishesIn', 'backpressurePauses', 'willsPublished', 'takeovers', 'protocolErrors',
  'messagesOut', 'dropQueueFull', 'dropExpired', 'dropTooLarge', 'dropOfflineQos0', 'sessions', 'subscriptions', 'unrouted', 'wsConnections',
] as const;
export type ShardField = (typeof SHARD_FIELDS)[number];

const STRIDE = 32;

export function createStats(rows: number): SharedArrayBuffer {
  return new SharedArrayBuffer(rows * STRIDE * 8);
}

/** One shard's row. Plain (non-atomic) stores: each field has a single writer, readers accept a
 *  value that is a moment old. */
export class ShardStats {
  private readonly row: Float64Array;

  constructor(sab: SharedArrayBuffer, index: number) {
    this.row = new Float64Array(sab, index * STRIDE * 8, STRIDE);
  }

  add(field: ShardField, n = 1): void {
    this.row[SHARD_FIELDS.indexOf(field)] += n;
  }

  get(field: ShardField): number {
    return this.row[SHARD_FIELDS.indexOf(field)];
  }
}

export function readShardStats(sab: SharedArrayBuffer, rows: number): Record<ShardField, number>[] {
  const out: Record<ShardField, number>[] = [];
  for (let i = 0; i < rows; i++) {
    const s = new ShardStats(sab, i);
    out.push(Object.fromEntries(SHARD_FIELDS.map((f) => [f, s.get(f)])) as Record<ShardField, number>);
  }
  return out;
}
