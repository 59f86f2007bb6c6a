// Command-line options. Validation happens here so a typo fails in a
// millisecond instead of after mosquittos and workers were started.
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { PAYLOAD_HEADER_BYTES, ProtocolLevel, Qos } from './mqtt-wire';
import type { TargetKind } from './targets';

export const SCENARIOS = ['uplink', 'connect-storm', 'idle', 'broker-outage', 'mixed', 'downlink'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];
/** Recognised scenarios the harness cannot run yet, with what they would measure. */
export const UNAVAILABLE: Record<string, string> = { http: 'HTTP ingress (POST /publish)' };

/** This machine allows 20000 open files per process; the harness holds every connection in one process. */
export const MAX_CONNECTIONS = 19_000;
/** Sequence numbers per device the receivers make room for in an unpaced --duration run. */
const TIME_BOUND_BITS = 2e8;

export interface Options {
  scenario: ScenarioName;
  devices: number;
  /**
   * Per device. In an unpaced --duration run: the most a device may send (receiver bitmap room).
   * downlink: messages the one publisher sends in all.
   */
  messages: number;
  /** --duration as given, seconds; null when the run length is --messages. */
  durationS: number | null;
  /** Devices stop after durationS instead of after `messages` (unpaced --duration runs). */
  timeBound: boolean;
  payload: number;
  qos: Qos[];
  inflight: number;
  rounds: number;
  targets: TargetKind[];
  threads: number;
  topic: string;
  json: string | null;
  idleTimeoutS: number;
  keepLogs: boolean;
  protocol: ProtocolLevel;
  /** Total msg/s over all devices, paced per device (downlink: of the publisher); 0 = as fast as the window allows. */
  rate: number;
  /** Connections per second while connecting; 0 = as fast as --concurrency allows. */
  ramp: number;
  /** Handshakes in flight at once while connecting. */
  concurrency: number;
  /** CONNECT keep-alive, seconds. */
  keepalive: number;
  /** FANOUT_SHARDS for the daemon. */
  shards: number;
  connections: number;
  steps: number;
  holdS: number;
  killAtS: number;
  downForS: number;
}

export const HELP = `Usage: npm run loadtest -- [scenario] [options]
       node dist/loadtest/cli.js [scenario] [options]

Compares mqtt-fanout (dist/src/cli.js) with a mosquitto bridge doing the same
job (--target both, "compare"), alternating targets round by round with fresh
processes (target + 2 upstream mosquittos) per run. downlink compares it with
devices subscribed on the first upstream mosquitto directly (mosquitto-direct).

Scenarios
  uplink          N devices publish M messages each; every message must reach
                  both upstreams (default)
  connect-storm   open --connections as fast as possible in --steps steps:
                  connections/s, refusals and errors, time to all connected
  idle            hold --connections idle for --hold s (PINGREQ at keep-alive):
                  target RSS per connection
  broker-outage   paced QoS 1 stream; upstream b1 SIGKILLed at --kill-at s and
                  restarted --down-for s later: missing/duplicates per broker,
                  recovery time
  mixed           devices at QoS 0, 1 and 2 at once (a third each), per QoS
  downlink        one publisher on upstream b1 sends --messages; --devices
                  subscribed through the target receive every one:
                  deliveries/s, missing/duplicates per device, e2e latency
  http            not available yet (no HTTP scenario in this harness)

Stream options (uplink, mixed, broker-outage; those marked * also downlink)
  --devices N      * devices (connections)                  [100]
  --messages N     * messages per device                    [10000; outage: from --duration]
                     downlink: published in all             [1000]
  --duration S       instead of --messages: with --rate, rate x S messages;
                     without, every device publishes for S seconds
                                                            [outage: kill-at + down-for + 4]
  --rate R         * total msg/s, paced per device (downlink: of the
                     publisher); 0 = as fast as the inflight
                     window allows                          [0; outage: 2000]
  --payload BYTES  * payload size, >= ${PAYLOAD_HEADER_BYTES}                    [64]
  --qos Q          * uplink: 0 | 1 | 2 | both (= 1 then 0)  [both]
                     downlink: 0 | 1 | both, of the subscriptions and publishes
  --inflight N     * unacknowledged messages per device
                     (downlink: of the publisher)           [16]
  --topic PATTERN    device topic, {id} = device number     [load/{id}]
  --idle-timeout S * end a run after S s without progress   [10]
Connection options (connect-storm, idle)
  --connections N    connections, at most ${MAX_CONNECTIONS}               [5000]
  --steps N          connect-storm: steps up to --connections [5]
  --hold S           idle: seconds to hold the connections  [10]
Outage options (broker-outage)
  --kill-at S        seconds into the stream b1 is killed   [3]
  --down-for S       seconds b1 stays down                  [3]
Common options
  --protocol P       3.1.1 | 5, spoken by devices           [3.1.1]
  --keepalive S      CONNECT keep-alive; idle devices ping  [0; connect-storm 60; idle 5]
  --ramp N           connections per second while connecting, 0 = unpaced [0]
  --concurrency N    handshakes in flight while connecting  [256]
  --shards N         FANOUT_SHARDS of the daemon            [os.cpus().length = ${defaultShards()}]
  --rounds N         rounds of every target (x qos)         [3]
  --target T         fanout | mosquitto | both | compare    [both]
                     (downlink: mosquitto = mosquitto-direct, devices and
                     publisher on upstream b1 itself; also accepted by name)
  --threads N        load generator worker threads          [2]
  --json FILE        write every raw figure as JSON
  --keep-logs        keep each run's temp dir (configs, logs)
  -h, --help         this text

Environment: MOSQUITTO_BIN overrides the mosquitto binary.
`;

export class UsageError extends Error {}

/** A scenario name that is known but cannot run against this daemon yet. */
export class NotAvailableError extends Error {}

function defaultShards(): number {
  return Math.max(1, Math.min(64, os.cpus().length));
}

function int(name: string, raw: string | undefined, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (raw === undefined) return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got '${raw}'`);
  return n;
}

function num(name: string, raw: string | undefined, def: number, min: number, exclusiveMin = false): number {
  if (raw === undefined) return def;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || n < min || (exclusiveMin && n === min)) {
    throw new UsageError(`--${name} must be a number ${exclusiveMin ? '>' : '>='} ${min}, got '${raw}'`);
  }
  return n;
}

const STREAM: ScenarioName[] = ['uplink', 'mixed', 'broker-outage'];
const CONNS: ScenarioName[] = ['connect-storm', 'idle'];
const STREAM_DOWN: ScenarioName[] = [...STREAM, 'downlink'];

/** Options that only mean something to some scenarios; giving one elsewhere is a mistake worth reporting. */
const APPLIES: Record<string, ScenarioName[]> = {
  devices: STREAM_DOWN,
  messages: STREAM_DOWN,
  duration: STREAM,
  rate: STREAM_DOWN,
  payload: STREAM_DOWN,
  inflight: STREAM_DOWN,
  topic: STREAM,
  'idle-timeout': STREAM_DOWN,
  qos: ['uplink', 'downlink'],
  connections: CONNS,
  steps: ['connect-storm'],
  hold: ['idle'],
  'kill-at': ['broker-outage'],
  'down-for': ['broker-outage'],
};

/**
 * Returns null when --help was asked for. Throws UsageError on bad input and
 * NotAvailableError for http.
 */
export function parseOptions(argv: string[]): Options | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        devices: { type: 'string' },
        messages: { type: 'string' },
        duration: { type: 'string' },
        rate: { type: 'string' },
        payload: { type: 'string' },
        qos: { type: 'string' },
        inflight: { type: 'string' },
        rounds: { type: 'string' },
        target: { type: 'string' },
        threads: { type: 'string' },
        topic: { type: 'string' },
        json: { type: 'string' },
        'idle-timeout': { type: 'string' },
        'keep-logs': { type: 'boolean' },
        protocol: { type: 'string' },
        ramp: { type: 'string' },
        concurrency: { type: 'string' },
        keepalive: { type: 'string' },
        shards: { type: 'string' },
        connections: { type: 'string' },
        steps: { type: 'string' },
        hold: { type: 'string' },
        'kill-at': { type: 'string' },
        'down-for': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return null;

  if (parsed.positionals.length > 1) throw new UsageError(`one scenario at a time, got ${parsed.positionals.join(', ')}`);
  const name = parsed.positionals[0] ?? 'uplink';
  if (name in UNAVAILABLE) {
    throw new NotAvailableError(`${name}: not available yet (the load harness has no ${UNAVAILABLE[name]} scenario yet)`);
  }
  if (!(SCENARIOS as readonly string[]).includes(name)) throw new UsageError(`unknown scenario '${name}'; one of ${SCENARIOS.join(', ')}`);
  const scenario = name as ScenarioName;
  for (const [opt, where] of Object.entries(APPLIES)) {
    if ((v as Record<string, unknown>)[opt] !== undefined && !where.includes(scenario)) {
      throw new UsageError(`--${opt} does not apply to ${scenario} (only to ${where.join(', ')})`);
    }
  }

  const qosRaw = v.qos ?? 'both';
  const qosMap: Record<string, Qos[]> = { '0': [0], '1': [1], '2': [2], both: [1, 0] };
  const qosList = qosMap[qosRaw];
  if (!qosList) throw new UsageError(`--qos must be 0, 1, 2 or both, got '${qosRaw}'`);
  // The downlink devices acknowledge QoS 1 only; QoS 2 would measure an unfinished handshake.
  if (scenario === 'downlink' && qosList.includes(2)) throw new UsageError(`downlink: --qos must be 0, 1 or both, got '${qosRaw}'`);
  const qos: Qos[] = scenario === 'uplink' || scenario === 'downlink' ? qosList : scenario === 'broker-outage' ? [1] : [];

  // The downlink peer is mosquitto itself serving the devices, not the bridge.
  const peer: TargetKind = scenario === 'downlink' ? 'mosquitto-direct' : 'mosquitto';
  const targetRaw = v.target ?? 'both';
  const targetMap: Record<string, TargetKind[]> = { fanout: ['fanout'], mosquitto: [peer], both: ['fanout', peer], compare: ['fanout', peer] };
  if (scenario === 'downlink') targetMap['mosquitto-direct'] = [peer];
  const targets = targetMap[targetRaw];
  if (!targets) throw new UsageError(`--target must be ${Object.keys(targetMap).join(', ')}, got '${targetRaw}'`);

  const protocolMap: Record<string, ProtocolLevel> = { '3.1.1': 4, '4': 4, '5': 5, '5.0': 5 };
  const protocol = protocolMap[v.protocol ?? '3.1.1'];
  if (!protocol) throw new UsageError(`--protocol must be 3.1.1 or 5, got '${v.protocol}'`);

  const topic = v.topic ?? 'load/{id}';
  if (!topic.includes('{id}')) throw new UsageError('--topic must contain {id}, or every device would share one topic');
  if (/[+#]/.test(topic)) throw new UsageError('--topic must not contain wildcards');

  const idleTimeoutS = num('idle-timeout', v['idle-timeout'], 10, 0, true);
  // downlink: every device is a connection of this one process (20,000 open files here).
  const devices = int('devices', v.devices, 100, 1, scenario === 'downlink' ? MAX_CONNECTIONS : 0xfffffffe);
  const rate = num('rate', v.rate, scenario === 'broker-outage' ? 2000 : 0, 0);
  const killAtS = num('kill-at', v['kill-at'], 3, 0, true);
  const downForS = num('down-for', v['down-for'], 3, 0, true);
  if (v.messages !== undefined && v.duration !== undefined) throw new UsageError('give --messages or --duration, not both');
  if (scenario === 'broker-outage' && rate === 0) throw new UsageError('broker-outage needs a paced stream: --rate > 0');

  // Run length: messages per device, or a duration (paced: turned into messages; unpaced: devices stop on time).
  let durationS: number | null = v.duration === undefined ? null : num('duration', v.duration, 0, 0, true);
  if (scenario === 'broker-outage' && durationS === null && v.messages === undefined) durationS = killAtS + downForS + 4;
  let messages: number;
  let timeBound = false;
  if (durationS === null) {
    messages = int('messages', v.messages, scenario === 'downlink' ? 1000 : 10_000, 1, 0xffffffff);
  } else if (rate > 0) {
    messages = Math.max(1, Math.round((rate * durationS) / devices));
  } else {
    messages = Math.max(1, Math.min(0xffffffff, Math.floor(TIME_BOUND_BITS / devices)));
    timeBound = true;
  }
  // The receivers keep one bit per message and broker (downlink: per device): 2e9 is 250 MB each.
  if (devices * messages > 2e9) throw new UsageError('--devices x --messages is limited to 2e9');
  if (scenario === 'broker-outage') {
    const streamS = (devices * messages) / rate;
    if (streamS <= killAtS + downForS) {
      throw new UsageError(`broker-outage: the stream (${streamS.toFixed(1)} s) must outlast --kill-at + --down-for (${killAtS + downForS} s)`);
    }
  }

  return {
    scenario,
    devices,
    messages,
    durationS,
    timeBound,
    payload: int('payload', v.payload, 64, PAYLOAD_HEADER_BYTES, 16 * 1024 * 1024),
    qos,
    // Packet ids are 16 bits and reused round-robin, so more than 65535 in flight would collide.
    inflight: int('inflight', v.inflight, 16, 1, 65535),
    rounds: int('rounds', v.rounds, 3, 1),
    targets,
    threads: int('threads', v.threads, 2, 1, 64),
    topic,
    json: v.json ?? null,
    idleTimeoutS,
    keepLogs: v['keep-logs'] ?? false,
    protocol,
    rate,
    ramp: num('ramp', v.ramp, 0, 0),
    concurrency: int('concurrency', v.concurrency, 256, 1, 100_000),
    keepalive: int('keepalive', v.keepalive, scenario === 'connect-storm' ? 60 : scenario === 'idle' ? 5 : 0, 0, 65535),
    shards: int('shards', v.shards, defaultShards(), 1, 64),
    connections: int('connections', v.connections, 5000, 1, MAX_CONNECTIONS),
    steps: int('steps', v.steps, 5, 1, 1000),
    holdS: num('hold', v.hold, 10, 0, true),
    killAtS,
    downForS,
  };
}
