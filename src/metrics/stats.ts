// Per-thread counters in shared memory: each thread writes only its own row, the supervisor
// (the metrics endpoint, the dashboard) reads every row without asking the threads anything.

export const SHARD_FIELDS = [
  'connections', 'publishesIn', 'backpressurePauses', 'willsPublished', 'takeovers', 'protocolErrors',
  'messagesOut', 'dropQueueFull', 'dropExpired', 'dropTooLarge', 'dropOfflineQos0', 'sessions', 'subscriptions', 'unrouted',
  'wsConnections', 'bytesIn', 'httpPublishes', 'tlsConnections', 'throttled', 'refusedRate', 'authRefused', 'aclDenied',
  'wssConnections', 'bytesOut', 'loopDelayP99Ms', 'loopDelayMaxMs', 'heapUsedMb', 'refusedMax', 'tlsHandshakes',
  'heapCommittedMb', 'externalMb', 'gcPauseMaxMs', 'gcPauses', 'gcPauseTotalMs',
] as const;
export type ShardField = (typeof SHARD_FIELDS)[number];

/** A writer's row: refreshed from its connections every second. */
export const WRITER_FIELDS = [
  'connectionsUp', 'connections', 'reconnects', 'inflight', 'messagesOutQos0', 'messagesOutQos1', 'messagesOutQos2',
  'bytesOutQos0', 'bytesOutQos1', 'bytesOutQos2', 'tooLarge', 'qos0BytesLost', 'downlinkInQos0', 'downlinkInQos1', 'downlinkInQos2', 'downlinkUnmatched',
  'downlinkTooLarge', 'upstreamFilters', 'upstreamCovered', 'bytesIn', 'spoolBytes', 'spoolUnsent', 'spoolDropped', 'spoolConflated', 'spoolCorrupt',
  'loopDelayP99Ms', 'loopDelayMaxMs', 'heapUsedMb',
  // Per-device upstream mode: the devices' own sessions at the broker.
  'deviceSessionsUp', 'deviceSessionsConnecting', 'deviceSessionsQueued', 'deviceSessionsDown', 'deviceConnects', 'deviceRefusals',
  'deviceLosses', 'deviceTimeouts', 'deviceReconnects', 'deviceParked', 'deviceNoSession',
  'heapCommittedMb', 'externalMb', 'gcPauseMaxMs', 'gcPauses', 'gcPauseTotalMs',
] as const;
export type WriterField = (typeof WRITER_FIELDS)[number];

const STRIDE = 64;

/** Zeroes one row: the counters of a thread that failed, before its successor starts. */
export function clearStatsRow(sab: SharedArrayBuffer, index: number): void {
  new Float64Array(sab, index * STRIDE * 8, STRIDE).fill(0);
}

export function createStats(rows: number): SharedArrayBuffer {
  return new SharedArrayBuffer(rows * STRIDE * 8);
}

/** One thread's row. Plain (non-atomic) stores: each field has a single writer, readers accept a
 *  value that is a moment old. */
export class StatsRow<F extends string> {
  private readonly row: Float64Array;

  constructor(sab: SharedArrayBuffer, index: number, private readonly fields: readonly F[]) {
    this.row = new Float64Array(sab, index * STRIDE * 8, STRIDE);
  }

  add(field: F, n = 1): void {
    this.row[this.fields.indexOf(field)] += n;
  }

  set(field: F, n: number): void {
    this.row[this.fields.indexOf(field)] = n;
  }

  get(field: F): number {
    return this.row[this.fields.indexOf(field)];
  }
}

/** Writes a thread's vitals (src/metrics/vitals.ts) into its row. */
const VITAL_FIELDS = ['loopDelayP99Ms', 'loopDelayMaxMs', 'heapUsedMb', 'heapCommittedMb', 'externalMb', 'gcPauseMaxMs', 'gcPauses', 'gcPauseTotalMs'] as const;
type VitalField = (typeof VITAL_FIELDS)[number];

export function setVitals(row: { set(field: VitalField, n: number): void }, v: Record<VitalField, number>): void {
  for (const f of VITAL_FIELDS) row.set(f, v[f]);
}

export class ShardStats extends StatsRow<ShardField> {
  constructor(sab: SharedArrayBuffer, index: number) {
    super(sab, index, SHARD_FIELDS);
  }
}

export class WriterStats extends StatsRow<WriterField> {
  constructor(sab: SharedArrayBuffer, index: number) {
    super(sab, index, WRITER_FIELDS);
  }
}

function readRows<F extends string>(sab: SharedArrayBuffer, rows: number, fields: readonly F[]): Record<F, number>[] {
  const out: Record<F, number>[] = [];
  for (let i = 0; i < rows; i++) {
    const s = new StatsRow(sab, i, fields);
    out.push(Object.fromEntries(fields.map((f) => [f, s.get(f)])) as Record<F, number>);
  }
  return out;
}

export function readShardStats(sab: SharedArrayBuffer, rows: number): Record<ShardField, number>[] {
  return readRows(sab, rows, SHARD_FIELDS);
}

export function readWriterStats(sab: SharedArrayBuffer, rows: number): Record<WriterField, number>[] {
  return readRows(sab, rows, WRITER_FIELDS);
}
