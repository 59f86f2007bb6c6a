// Exact counting of what an upstream received: every (publisher, sequence) pair
// gets a bit, so missing and duplicate counts are exact rather than inferred
// from totals (a duplicate would otherwise hide a loss). Shared by the
// subscribing receivers (receiver.ts) and the stand-in upstream (sink.ts), and
// the one interface runUplink reads either through (UpstreamCounter).
import { LatencySummary, newHistogram, recordMs, summarize, Histogram } from './latency';
import { PAYLOAD_HEADER_BYTES, PROBE_ID } from './mqtt-wire';

function popcount8(b: number): number {
  let n = b & 0xff;
  n = n - ((n >> 1) & 0x55);
  n = (n & 0x33) + ((n >> 2) & 0x33);
  return (n + (n >> 4)) & 0x0f;
}

export interface GroupTally {
  group: number;
  expected: number;
  distinct: number;
  missing: number;
  duplicates: number;
  /** Wall-clock ms of the group's last new message; 0 if none. */
  lastReceiveAt: number;
  e2e: LatencySummary;
}

export interface BrokerTally {
  broker: string;
  expected: number;
  /** PUBLISH packets carrying a load payload, duplicates included. */
  received: number;
  distinct: number;
  missing: number;
  duplicates: number;
  /** Packets on the filter that are not ours (unparseable or out of range). */
  foreign: number;
  /** Wall-clock ms of the last new message; 0 if none. */
  lastReceiveAt: number;
  /** Times the subscriber lost its broker and connected again (broker-outage). */
  reconnects: number;
  /** With its histogram (hdr): runUplink merges the brokers' histograms from it. */
  e2e: LatencySummary;
  /** Per publisher group (mixed: group = QoS); absent with a single group. */
  groups?: GroupTally[];
}

/** The live figures of a tally, cheap to read (or to ship over IPC) often. */
export interface LiveCounts {
  received: number;
  distinct: number;
  foreign: number;
  probeSeen: boolean;
  lastReceiveAt: number;
  /** Wall-clock arrival of the first message sent at or after watchSentAfter's time; 0 if none yet. */
  firstAfterAt: number;
}

/**
 * What runUplink (and its hooks) read of an upstream, whoever counts there: a
 * subscriber on a real broker (Receiver) or the stand-in upstream itself (SinkCounter).
 */
export interface UpstreamCounter extends Readonly<LiveCounts> {
  readonly broker: string;
  /** Set once the counter lost its upstream (a closed connection, a dead sink). */
  readonly error: string | null;
  /** From now on, note when the first message sent at or after `wallMs` arrives (firstAfterAt). */
  watchSentAfter(wallMs: number): void;
  /** `expected` per group: messages the publishers sent (or were to send). */
  tally(expected: number[]): Promise<BrokerTally>;
  /** Stops counting (the tally stays readable). */
  close(): Promise<void>;
  /** Frees what the counter holds. */
  destroy(): void;
}

export interface TallyShape {
  devices: number;
  /** Sequence numbers per publisher the bitmap has room for. */
  messages: number;
  /** Publishers fall into `groups` groups by id modulo groups (mixed: 3, the QoS). Default 1. */
  groups?: number;
}

/** The bitmap, the counts and the end-to-end histograms of one upstream. No allocation per message. */
export class SeenTally implements LiveCounts {
  received = 0;
  distinct = 0;
  duplicates = 0;
  foreign = 0;
  lastReceiveAt = 0;
  probeSeen = false;
  firstAfterAt = 0;
  readonly hist: Histogram = newHistogram();
  private readonly devices: number;
  private readonly messages: number;
  private readonly groupCount: number;
  private readonly groupDistinct: number[];
  private readonly groupDuplicates: number[];
  private readonly groupLast: number[];
  private readonly groupHists: Histogram[];
  private readonly seen: Uint8Array;
  private watchFrom = Infinity;

  constructor(shape: TallyShape) {
    this.devices = shape.devices;
    this.messages = shape.messages;
    this.seen = new Uint8Array(Math.ceil((shape.devices * shape.messages) / 8));
    this.groupCount = shape.groups ?? 1;
    this.groupDistinct = new Array<number>(this.groupCount).fill(0);
    this.groupDuplicates = new Array<number>(this.groupCount).fill(0);
    this.groupLast = new Array<number>(this.groupCount).fill(0);
    this.groupHists = this.groupCount > 1 ? Array.from({ length: this.groupCount }, newHistogram) : [];
  }

  watchSentAfter(wallMs: number): void {
    this.watchFrom = wallMs;
    this.firstAfterAt = 0;
  }

  /** One PUBLISH payload, `buf[p..end)`, that arrived at wall-clock `now` ms. */
  count(buf: Buffer, p: number, end: number, now: number): void {
    if (end - p < PAYLOAD_HEADER_BYTES) {
      this.foreign++;
      return;
    }
    const pub = buf.readUInt32BE(p);
    if (pub === PROBE_ID) {
      this.probeSeen = true;
      return;
    }
    const seq = buf.readUInt32BE(p + 4);
    if (pub >= this.devices || seq >= this.messages) {
      this.foreign++;
      return;
    }
    this.received++;
    const group = pub % this.groupCount;
    const bit = pub * this.messages + seq;
    const byte = bit >>> 3;
    const mask = 1 << (bit & 7);
    if (this.seen[byte] & mask) {
      this.duplicates++;
      this.groupDuplicates[group]++;
      return;
    }
    this.seen[byte] |= mask;
    this.distinct++;
    this.groupDistinct[group]++;
    this.lastReceiveAt = now;
    this.groupLast[group] = now;
    const sentAt = buf.readDoubleBE(p + 8);
    if (sentAt >= this.watchFrom && this.firstAfterAt === 0) this.firstAfterAt = now;
    recordMs(this.hist, now - sentAt);
    if (this.groupCount > 1) recordMs(this.groupHists[group], now - sentAt);
  }

  live(): LiveCounts {
    const { received, distinct, foreign, probeSeen, lastReceiveAt, firstAfterAt } = this;
    return { received, distinct, foreign, probeSeen, lastReceiveAt, firstAfterAt };
  }

  tally(broker: string, expected: number[], reconnects = 0): BrokerTally {
    const total = expected.reduce((a, b) => a + b, 0);
    const t: BrokerTally = {
      broker,
      expected: total,
      received: this.received,
      distinct: this.distinct,
      missing: total - this.distinct,
      duplicates: this.duplicates,
      foreign: this.foreign,
      lastReceiveAt: this.lastReceiveAt,
      reconnects,
      e2e: summarize(this.hist),
    };
    if (this.groupCount > 1) {
      t.groups = this.groupHists.map((h, g) => ({
        group: g,
        expected: expected[g] ?? 0,
        distinct: this.groupDistinct[g],
        missing: (expected[g] ?? 0) - this.groupDistinct[g],
        duplicates: this.groupDuplicates[g],
        lastReceiveAt: this.groupLast[g],
        e2e: summarize(h),
      }));
    }
    return t;
  }

  /**
   * Publisher 0's sequence numbers below `count` against the bitmap `expected`
   * (same layout: bit n = sequence n): how many set there did not arrive, and
   * how many arrived that it lacks.
   */
  compare(expected: Uint8Array, count: number): { missing: number; extra: number } {
    let missing = 0;
    let extra = 0;
    const bytes = Math.min(Math.ceil(count / 8), this.seen.length, expected.length);
    for (let i = 0; i < bytes; i++) {
      const valid = i === bytes - 1 && count % 8 !== 0 ? (1 << count % 8) - 1 : 0xff;
      const want = expected[i] & valid;
      const got = this.seen[i] & valid;
      missing += popcount8(want & ~got);
      extra += popcount8(got & ~want);
    }
    return { missing, extra };
  }

  destroy(): void {
    this.hist.destroy();
    for (const h of this.groupHists) h.destroy();
  }
}
