// The supervisor's view of the whole proxy, for /metrics and the dashboard: counters read from
// the threads' shared-memory rows, ring fill read from the rings' control words, and latency
// histograms the threads hand over every second (kept for a sliding minute).

import { addressText, brokerAddresses } from '../config/brokers';
import type { BrokerConfig } from '../config/types';
import type { RingBuffers } from '../ring/spsc';
import { ringUsed } from '../ring/spsc';
import { newHistogram, decodeHistogram, type Histogram } from './latency';
import type { ShardField, WriterField } from './stats';
import { ThreadVitals, type Vitals } from './vitals';

export interface CollectorSources {
  brokers: readonly BrokerConfig[];
  shards: number;
  shardStats(): Record<ShardField, number>[];
  writerStats(): Record<WriterField, number>[];
  uplinkRings: RingBuffers[][];
  downlinkRings: RingBuffers[][];
  /** Asks every thread for its histograms since the last call (several per broker when a
   *  reply came late). */
  pullLatency(): Promise<{ ack: string[]; rtt: string[][] }>;
  /** Per broker, the index of the address (URL host, then failover) each pool connection is up
   *  on, -1 when down; as of the last pullLatency. */
  connectionAddresses(): readonly (readonly number[] | undefined)[];
  /** Whether /readyz answers 200 now. */
  ready(): boolean;
  /** FANOUT_SESSION_STORE=redis://: how client ids moved between instances (absent otherwise). */
  ownership?: () => Readonly<Record<string, number>>;
}

/** The broker label of a slot a reload retired: its rows are left out. */
const RETIRED = '\u0000retired';

/** Seconds of latency history the quantiles cover. */
const WINDOW_S = 60;
/** Seconds of counter history the dashboard charts. */
const HISTORY_S = 120;
const QUANTILES = [0.5, 0.9, 0.99, 0.999];

interface Sample {
  at: number;
  publishesIn: number;
  deliveries: number;
  connections: number;
  ackP50: number;
  ackP99: number;
}

class Window {
  private readonly slots: Histogram[] = [];
  count = 0;
  sumUs = 0;

  push(encoded: string[]): void {
    const h = newHistogram();
    for (const e of encoded) {
      if (e === '') continue;
      const part = decodeHistogram(e);
      h.add(part);
      this.count += part.totalCount;
      this.sumUs += part.mean * part.totalCount;
      part.destroy();
    }
    this.slots.push(h);
    if (this.slots.length > WINDOW_S) this.slots.shift()!.destroy();
  }

  /** Quantiles (seconds) over the window, and over its last second. */
  merged(lastOnly = false): Histogram {
    const h = newHistogram();
    for (const s of lastOnly ? this.slots.slice(-1) : this.slots) h.add(s);
    return h;
  }
}

export class MetricsCollector {
  private readonly ack = new Window();
  private readonly rtt: Window[];
  private readonly history: Sample[] = [];
  private timer: NodeJS.Timeout | null = null;
  private collecting = false;
  /** The supervisor's own thread (HTTP, registry, logs). */
  private readonly vitals = new ThreadVitals();
  private mainVitals: Vitals = { loopDelayP99Ms: 0, loopDelayMaxMs: 0, heapUsedMb: 0, heapCommittedMb: 0, externalMb: 0, gcPauseMaxMs: 0, gcPauses: 0, gcPauseTotalMs: 0 };

  constructor(private readonly src: CollectorSources) {
    this.rtt = src.brokers.map(() => new Window());
  }

  start(): void {
    this.timer = setInterval(() => void this.collect(), 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private async collect(): Promise<void> {
    this.mainVitals = this.vitals.sample();
    if (this.collecting) return;
    this.collecting = true;
    try {
      const { ack, rtt } = await this.src.pullLatency();
      this.ack.push(ack);
      // A reload may have added broker slots.
      while (this.rtt.length < this.src.brokers.length) this.rtt.push(new Window());
      this.rtt.forEach((w, b) => w.push(rtt[b] ?? []));
      const shards = this.src.shardStats();
      const last = this.ack.merged(true);
      this.history.push({
        at: Date.now(),
        publishesIn: sum(shards, 'publishesIn') + sum(shards, 'httpPublishes'),
        deliveries: sum(shards, 'messagesOut'),
        connections: sum(shards, 'connections'),
        ackP50: last.totalCount > 0 ? last.getValueAtPercentile(50) / 1e6 : 0,
        ackP99: last.totalCount > 0 ? last.getValueAtPercentile(99) / 1e6 : 0,
      });
      last.destroy();
      if (this.history.length > HISTORY_S) this.history.shift();
    } finally {
      this.collecting = false;
    }
  }

  /** Prometheus text exposition format 0.0.4. */
  prometheus(): string {
    const out: string[] = [];
    const shards = this.src.shardStats();
    const writers = this.src.writerStats();
    const brokers = this.src.brokers;
    // A broker a reload removed has no series: its slot may share its name with one added later.
    const nameOf = (b: number): string => (brokers[b].retired === true ? RETIRED : brokers[b].name);
    const metric = (name: string, type: 'counter' | 'gauge' | 'summary', help: string, rows: [Record<string, string | number>, number][]): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, value] of rows) if (labels.broker !== RETIRED) out.push(`${name}${labelText(labels)} ${fmt(value)}`);
    };
    const perShard = (field: ShardField): [Record<string, string | number>, number][] => shards.map((s, i) => [{ shard: i }, s[field]]);
    const perBroker = (field: WriterField): [Record<string, string | number>, number][] => writers.map((w, b) => [{ broker: nameOf(b) }, w[field]]);

    metric('fanout_ready', 'gauge', 'Whether /readyz answers 200 (1: every broker that must be connected is; 0: not, or shutting down).',
      [[{}, this.src.ready() ? 1 : 0]]);
    metric('fanout_connections', 'gauge', 'Device connections open, by transport and shard.',
      shards.flatMap((s, i): [Record<string, string | number>, number][] => [
        [{ transport: 'tcp', shard: i }, s.connections - s.wsConnections - s.wssConnections - s.tlsConnections],
        [{ transport: 'tls', shard: i }, s.tlsConnections], [{ transport: 'ws', shard: i }, s.wsConnections],
        [{ transport: 'wss', shard: i }, s.wssConnections]]));
    metric('fanout_sessions', 'gauge', 'Device sessions (connected or kept for an absent device), by shard.', perShard('sessions'));
    metric('fanout_subscriptions', 'gauge', 'Device subscriptions, by shard.', perShard('subscriptions'));
    metric('fanout_device_publishes_total', 'counter', 'PUBLISH packets taken from devices, by shard.', perShard('publishesIn'));
    metric('fanout_http_publishes_total', 'counter', 'Messages taken from POST /publish, by shard.', perShard('httpPublishes'));
    metric('fanout_device_bytes_in_total', 'counter', 'Bytes received from devices, by shard.', perShard('bytesIn'));
    metric('fanout_device_bytes_out_total', 'counter', 'Bytes sent to devices, by shard.', perShard('bytesOut'));
    metric('fanout_deliveries_total', 'counter', 'Messages delivered (or queued) to devices, by shard.', perShard('messagesOut'));
    metric('fanout_backpressure_pauses_total', 'counter', 'Times a device was paused because a ring or its window was full, by shard.', perShard('backpressurePauses'));
    metric('fanout_takeovers_total', 'counter', 'Client-id takeovers, by shard.', perShard('takeovers'));
    metric('fanout_protocol_errors_total', 'counter', 'Device connections closed for a protocol error, by shard.', perShard('protocolErrors'));
    metric('fanout_wills_published_total', 'counter', 'Last wills published, by shard.', perShard('willsPublished'));
    metric('fanout_auth_refused_total', 'counter', 'CONNECTs refused by authentication (password file, anonymous), by shard.', perShard('authRefused'));
    metric('fanout_acl_denied_total', 'counter', 'PUBLISH, SUBSCRIBE and wills denied by the ACL file, by shard.', perShard('aclDenied'));
    metric('fanout_throttled_total', 'counter', 'Times a device was slowed down by FANOUT_MAX_PUBLISH_RATE, by shard.', perShard('throttled'));
    metric('fanout_connections_refused_rate_total', 'counter', 'Connections closed by FANOUT_MAX_CONNECT_RATE, by shard.', perShard('refusedRate'));
    metric('fanout_connections_refused_max_total', 'counter', 'Sockets closed when accepted because FANOUT_MAX_CONNECTIONS were open, by shard.', perShard('refusedMax'));
    const drops: [Record<string, string | number>, number][] = [];
    shards.forEach((s, i) => {
      drops.push([{ reason: 'queue_full', shard: i }, s.dropQueueFull], [{ reason: 'expired', shard: i }, s.dropExpired],
        [{ reason: 'too_large_for_device', shard: i }, s.dropTooLarge], [{ reason: 'offline_qos0', shard: i }, s.dropOfflineQos0],
        [{ reason: 'unrouted', shard: i }, s.unrouted]);
    });
    writers.forEach((w, b) => {
      drops.push([{ reason: 'too_large_for_broker', broker: nameOf(b) }, w.tooLarge],
        [{ reason: 'downlink_too_large', broker: nameOf(b) }, w.downlinkTooLarge],
        [{ reason: 'downlink_unmatched', broker: nameOf(b) }, w.downlinkUnmatched],
        [{ reason: 'no_upstream_session', broker: nameOf(b) }, w.deviceNoSession]);
    });
    metric('fanout_drops_total', 'counter', 'Messages not passed on, by reason.', drops);
    metric('fanout_qos0_bytes_lost_total', 'counter', 'Unsent bytes holding QoS 0 messages when a broker connection dropped, by broker.', perBroker('qos0BytesLost'));
    metric('fanout_broker_messages_out_total', 'counter', 'Messages sent to brokers (first sends), by broker and QoS.',
      writers.flatMap((w, b): [Record<string, string | number>, number][] => [0, 1, 2].map((q) => [{ broker: nameOf(b), qos: q },
        q === 0 ? w.messagesOutQos0 : q === 1 ? w.messagesOutQos1 : w.messagesOutQos2])));
    metric('fanout_broker_bytes_out_total', 'counter', 'Bytes of PUBLISH packets sent to brokers (first sends), by broker and the QoS they were sent at.',
      writers.flatMap((w, b): [Record<string, string | number>, number][] => [0, 1, 2].map((q) => [{ broker: nameOf(b), qos: q },
        q === 0 ? w.bytesOutQos0 : q === 1 ? w.bytesOutQos1 : w.bytesOutQos2])));
    metric('fanout_broker_bytes_in_total', 'counter', 'Bytes received from brokers (every packet), by broker.', perBroker('bytesIn'));
    metric('fanout_broker_messages_in_total', 'counter', 'Messages from brokers passed to devices, by broker and the QoS the broker sent.',
      writers.flatMap((w, b): [Record<string, string | number>, number][] => [0, 1, 2].map((q) => [{ broker: nameOf(b), qos: q },
        q === 0 ? w.downlinkInQos0 : q === 1 ? w.downlinkInQos1 : w.downlinkInQos2])));
    metric('fanout_broker_inflight', 'gauge', 'Messages sent to a broker and not yet acknowledged, by broker.', perBroker('inflight'));
    metric('fanout_broker_connections_up', 'gauge', 'Broker connections up, by broker.', perBroker('connectionsUp'));
    metric('fanout_broker_connections', 'gauge', 'Broker connections configured (pool), by broker.', perBroker('connections'));
    metric('fanout_broker_reconnects_total', 'counter', 'Broker reconnections, by broker.', perBroker('reconnects'));
    metric('fanout_broker_connection_address', 'gauge', 'Which address each pool connection ({proxyId}-{broker}-{connection}) is up on: 1 for that one, '
      + '0 for the broker\'s other addresses (the URL host, then its failover addresses); all 0 while it is down.',
    this.src.connectionAddresses().flatMap((pool, b): [Record<string, string | number>, number][] => {
      if (pool === undefined || b >= brokers.length) return [];
      const addresses = brokerAddresses(brokers[b]).map(addressText);
      return pool.flatMap((up, n) => addresses.map((address, i): [Record<string, string | number>, number] =>
        [{ broker: nameOf(b), connection: n, address }, up === i ? 1 : 0]));
    }));
    metric('fanout_spool_bytes', 'gauge', 'Bytes each broker\'s spool holds on disk (FANOUT_SPOOL_DIR), by broker.', perBroker('spoolBytes'));
    metric('fanout_spool_unsent_bytes', 'gauge', 'Bytes in each broker\'s spool not yet sent to it, by broker.', perBroker('spoolUnsent'));
    metric('fanout_spool_dropped_total', 'counter', 'Messages the full spool dropped (FANOUT_SPOOL_OVERFLOW=drop-oldest), by broker.', perBroker('spoolDropped'));
    metric('fanout_spool_conflated_total', 'counter', 'Messages replaced by a newer one on their topic while the broker was away (FANOUT_CONFLATE_TOPICS), by broker.', perBroker('spoolConflated'));
    metric('fanout_spool_corrupt_total', 'counter', 'Corrupt or truncated stretches of the spool skipped, by broker.', perBroker('spoolCorrupt'));
    metric('fanout_upstream_sessions', 'gauge', 'Per-device mode: devices\' own sessions at each broker, by state (up; connecting; queued: '
      + 'waiting for FANOUT_UPSTREAM_CONNECT_RATE or for an older session of the client id to end; down: lost, reconnecting).',
    writers.flatMap((w, b): [Record<string, string | number>, number][] => [
      [{ broker: nameOf(b), state: 'up' }, w.deviceSessionsUp], [{ broker: nameOf(b), state: 'connecting' }, w.deviceSessionsConnecting],
      [{ broker: nameOf(b), state: 'queued' }, w.deviceSessionsQueued], [{ broker: nameOf(b), state: 'down' }, w.deviceSessionsDown]]));
    metric('fanout_upstream_session_connects_total', 'counter', 'Per-device mode: connection attempts of device sessions, by broker.', perBroker('deviceConnects'));
    metric('fanout_upstream_session_refusals_total', 'counter', 'Per-device mode: device sessions the broker refused (CONNACK code), by broker.', perBroker('deviceRefusals'));
    metric('fanout_upstream_session_timeouts_total', 'counter', 'Per-device mode: devices refused because their session was not up within FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS, by broker.', perBroker('deviceTimeouts'));
    metric('fanout_upstream_session_losses_total', 'counter', 'Per-device mode: device sessions lost while their device was connected, by broker.', perBroker('deviceLosses'));
    metric('fanout_upstream_session_reconnects_total', 'counter', 'Per-device mode: device sessions re-established while their device stayed, by broker.', perBroker('deviceReconnects'));
    metric('fanout_upstream_parked_messages', 'gauge', 'Per-device mode: device publishes waiting at the writer for their session, by broker.', perBroker('deviceParked'));
    metric('fanout_upstream_filters', 'gauge', 'Subscriptions the proxy holds at each broker (one per distinct filter that no other held filter covers).', perBroker('upstreamFilters'));
    metric('fanout_upstream_filters_covered', 'gauge', 'Device filters served at each broker through a broader filter held there, without a subscription of their own (FANOUT_COVER_FILTERS).', perBroker('upstreamCovered'));
    const fill: [Record<string, string | number>, number][] = [];
    for (let s = 0; s < this.src.shards; s++) {
      brokers.forEach((_, b) => {
        fill.push([{ shard: s, broker: nameOf(b), direction: 'up' }, ringUsed(this.src.uplinkRings[s][b])],
          [{ shard: s, broker: nameOf(b), direction: 'down' }, ringUsed(this.src.downlinkRings[s][b])]);
      });
    }
    metric('fanout_ring_fill_bytes', 'gauge', 'Bytes waiting in the shared-memory rings, by shard, broker and direction.', fill);
    metric('fanout_ring_capacity_bytes', 'gauge', 'Capacity of each ring.', [[{}, this.src.uplinkRings[0]?.[0]?.capacity ?? 0]]);

    const threads: [string, Vitals][] = [
      ['main', this.mainVitals], ...shards.map((v, i): [string, Vitals] => [`shard-${i}`, v]),
      ...writers.flatMap((v, b): [string, Vitals][] => (nameOf(b) === RETIRED ? [] : [[`writer-${nameOf(b)}`, v]]))];
    metric('fanout_thread_event_loop_delay_seconds', 'gauge', 'How late each thread\'s event loop ran over the last second: p99 and max.',
      threads.flatMap(([thread, v]): [Record<string, string | number>, number][] => [
        [{ thread, stat: 'p99' }, v.loopDelayP99Ms / 1000], [{ thread, stat: 'max' }, v.loopDelayMaxMs / 1000]]));
    metric('fanout_thread_heap_used_bytes', 'gauge', 'JavaScript heap in use, by thread.', threads.map(([thread, v]) => [{ thread }, v.heapUsedMb * 1048576]));
    metric('fanout_thread_heap_committed_bytes', 'gauge', 'JavaScript heap V8 holds from the system, used or not, by thread.',
      threads.map(([thread, v]) => [{ thread }, v.heapCommittedMb * 1048576]));
    metric('fanout_thread_external_bytes', 'gauge', 'Memory outside the heap that JavaScript objects own (Buffers, ArrayBuffers), by thread.',
      threads.map(([thread, v]) => [{ thread }, v.externalMb * 1048576]));
    metric('fanout_thread_gc_pause_max_seconds', 'gauge', 'Longest garbage-collection pause of each thread since it started (collections it forced when idle left out).',
      threads.map(([thread, v]) => [{ thread }, v.gcPauseMaxMs / 1000]));
    metric('fanout_thread_gc_pauses_total', 'counter', 'Garbage-collection pauses, by thread (forced idle collections left out).', threads.map(([thread, v]) => [{ thread }, v.gcPauses]));
    metric('fanout_thread_gc_pause_seconds_total', 'counter', 'Time the garbage-collection pauses of each thread took in all (forced idle collections left out).',
      threads.map(([thread, v]) => [{ thread }, v.gcPauseTotalMs / 1000]));
    metric('fanout_process_resident_bytes', 'gauge', 'Resident memory of the daemon process (every thread).', [[{}, process.memoryUsage.rss()]]);

    const own = this.src.ownership?.();
    if (own !== undefined) {
      metric('fanout_session_claims_total', 'counter', 'Client ids claimed in the session store from another instance, by outcome: '
        + 'handovers (it answered), takenFromGone (its alive key had expired, or it was silent), contended (another instance took it meanwhile and was asked in turn), '
        + 'abandoned (the connection went meanwhile), failed (Redis did not answer); handedOver: the requests of other instances answered here.',
      Object.entries(own).map(([outcome, n]): [Record<string, string>, number] => [{ outcome }, n]));
    }
    this.summary(out, 'fanout_ack_latency_seconds', 'Device publish to device acknowledgement (QoS 1/2), quantiles over the last minute.', [[{}, this.ack]]);
    this.summary(out, 'fanout_broker_rtt_seconds', 'PUBLISH to PUBACK/PUBREC at each broker, quantiles over the last minute.',
      this.rtt.flatMap((w, b): [Record<string, string>, Window][] => (nameOf(b) === RETIRED ? [] : [[{ broker: nameOf(b) }, w]])));
    return `${out.join('\n')}\n`;
  }

  private summary(out: string[], name: string, help: string, rows: [Record<string, string | number>, Window][]): void {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} summary`);
    for (const [labels, w] of rows) {
      const h = w.merged();
      for (const q of QUANTILES) {
        const v = h.totalCount > 0 ? h.getValueAtPercentile(q * 100) / 1e6 : Number.NaN;
        out.push(`${name}${labelText({ ...labels, quantile: q })} ${fmt(v)}`);
      }
      h.destroy();
      out.push(`${name}_sum${labelText(labels)} ${fmt(w.sumUs / 1e6)}`, `${name}_count${labelText(labels)} ${fmt(w.count)}`);
    }
  }

  /** What the dashboard shows: current state and the last two minutes, one point a second. */
  snapshot(): object {
    const shards = this.src.shardStats();
    const writers = this.src.writerStats();
    const ack = this.ack.merged();
    const q = (h: Histogram, p: number): number | null => (h.totalCount > 0 ? h.getValueAtPercentile(p) / 1e6 : null);
    const result = {
      at: Date.now(),
      connections: sum(shards, 'connections'),
      wsConnections: sum(shards, 'wsConnections') + sum(shards, 'wssConnections'),
      sessions: sum(shards, 'sessions'),
      subscriptions: sum(shards, 'subscriptions'),
      ackLatency: { p50: q(ack, 50), p90: q(ack, 90), p99: q(ack, 99), p999: q(ack, 99.9) },
      brokers: this.src.brokers.map((b, i) => ({
        retired: b.retired === true,
        name: b.name,
        url: b.redactedUrl,
        up: writers[i].connectionsUp,
        pool: writers[i].connections,
        inflight: writers[i].inflight,
        reconnects: writers[i].reconnects,
        queuedBytes: this.src.uplinkRings.reduce((n, rings) => n + ringUsed(rings[i]), 0),
        messagesOut: writers[i].messagesOutQos0 + writers[i].messagesOutQos1 + writers[i].messagesOutQos2,
        messagesIn: writers[i].downlinkInQos0 + writers[i].downlinkInQos1 + writers[i].downlinkInQos2,
      })).filter((b) => !b.retired),
      history: this.history,
    };
    ack.destroy();
    return result;
  }
}

function sum<F extends string>(rows: Record<F, number>[], field: F): number {
  let n = 0;
  for (const r of rows) n += r[field];
  return n;
}

function labelText(labels: Record<string, string | number>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

function fmt(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  return String(v);
}
