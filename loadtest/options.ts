// Command-line options. Validation happens here so a typo fails in a
// millisecond instead of after mosquittos and workers were started.
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { PAYLOAD_HEADER_BYTES, ProtocolLevel, Qos } from './mqtt-wire';
import type { Transport } from './mqtt-ws';
import type { TargetKind, UpstreamKind } from './targets';

export const SCENARIOS = ['uplink', 'connect-storm', 'idle', 'broker-outage', 'mixed', 'downlink', 'http', 'auth', 'per-device'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];
/** What the http scenario loads: POST /publish (once per --qos) and GET /metrics. */
export type HttpEndpoint = 'publish' | 'metrics';

/** This machine allows 20000 open files per process; the harness holds every connection in one process. */
export const MAX_CONNECTIONS = 19_000;
/** Sequence numbers per device the receivers make room for in an unpaced --duration run. */
const TIME_BOUND_BITS = 2e8;
/** Seconds of each paced step of a load sweep (--rate with a list) without --duration or --messages. */
export const SWEEP_STEP_S = 10;
/** http: sequence numbers the receivers make room for (16 MB of bitmap each); a run stops issuing at this many. */
export const MAX_HTTP_REQUESTS = 2 ** 27;

export interface Options {
  scenario: ScenarioName;
  devices: number;
  /** per-device: every device count of --devices (a comma-separated list there), a run each. */
  deviceCounts: number[];
  /** per-device: FANOUT_UPSTREAM_CONNECT_RATE of fanout-per-device; null: the daemon's default. */
  upstreamRate: number | null;
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
  /** uplink, downlink: per run; http: of the POST /publish runs. */
  qos: Qos[];
  inflight: number;
  rounds: number;
  targets: TargetKind[];
  threads: number;
  topic: string;
  json: string | null;
  idleTimeoutS: number;
  keepLogs: boolean;
  /** --cpu-prof: where each mqtt-fanout run writes the V8 CPU profiles of its threads. */
  cpuProf: string | null;
  protocol: ProtocolLevel;
  /** Total msg/s over all devices, paced per device (downlink: of the publisher); 0 = as fast as the window allows. The first of rateSteps. */
  rate: number;
  /**
   * uplink --rate 5000,20000,0 (a load sweep): each rate a run of its own for every target and
   * round, with its own run length; one step (the rate, messages, timeBound above) otherwise.
   */
  rateSteps: RateStep[];
  /** What the upstreams are: sinks (sink.ts; uplink and mixed) or mosquittos (every other scenario). */
  upstream: UpstreamKind;
  /** Connections per second while connecting; 0 = as fast as --concurrency allows. */
  ramp: number;
  /** Handshakes in flight at once while connecting. */
  concurrency: number;
  /** CONNECT keep-alive, seconds. */
  keepalive: number;
  /** FANOUT_SHARDS for the daemon (the first of shardCounts). */
  shards: number;
  /** --shards 1,2: each count a run of its own for every mqtt-fanout target (the bridge runs once). */
  shardCounts: number[];
  connections: number;
  steps: number;
  holdS: number;
  killAtS: number;
  downForS: number;
  /** uplink: how devices connect, each a run of its own per round, in the order tcp, ws, tls. */
  transports: Transport[];
  /** http: requests in all instead of a duration (autocannon's amount); null = --duration. */
  amount: number | null;
  /** http: requests in flight per connection. */
  pipelining: number;
  /** http: seconds of load before each measured run. */
  warmupS: number;
  /** http: the endpoints loaded, a run each per round. */
  endpoints: HttpEndpoint[];
}

export interface RateStep {
  rate: number;
  messages: number;
  timeBound: boolean;
}

export const HELP = `Usage: npm run loadtest -- [scenario] [options]
       node dist/loadtest/cli.js [scenario] [options]

Compares mqtt-fanout (dist/src/cli.js) with a mosquitto bridge doing the same
job (--target both, "compare"), alternating targets round by round with fresh
processes (target + 2 upstreams) per run. The upstreams of uplink and mixed are
sinks by default (--upstream): stand-ins that only acknowledge and count, so
they take little of the cores; every other scenario needs real mosquittos. downlink compares it with
devices subscribed on the first upstream mosquitto directly (mosquitto-direct);
http has no peer.

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
  http            autocannon against mqtt-fanout's HTTP listener: POST
                  /publish at each --qos (every message answered 200 must
                  reach both upstreams) and GET /metrics; req/s, latency,
                  non-2xx. fanout only: mosquitto has no HTTP publish
  auth            the cost of authentication and authorisation: mqtt-fanout
                  without (fanout) and with FANOUT_PASSWORD_FILE and
                  FANOUT_ACL_FILE (fanout-auth; a user per device, $7$
                  PBKDF2-SHA512 hashes, an ACL pattern per device topic);
                  each run a connect storm of --connections, then QoS 1
                  uplink of --devices x --messages; auth/no-auth ratios
  per-device      pooled against per-device upstream mode: mqtt-fanout as it
                  is (fanout) and with FANOUT_UPSTREAM_MODE=per-device
                  (fanout-per-device: a session per device at each upstream);
                  each run a connect storm of --devices connections (held:
                  daemon RSS per device), then QoS 1 uplink of --devices x
                  --messages; --devices may list several counts (1000,5000),
                  each with both targets; per-device/pooled ratios

Stream options (uplink, mixed, broker-outage, auth; those marked * also downlink)
  --devices N      * devices (connections)                  [100]
  --messages N     * messages per device                    [10000; outage: from --duration;
                                                             auth: 1000]
                     downlink: published in all             [1000]
  --duration S       instead of --messages: with --rate, rate x S messages;
                     without, every device publishes for S seconds
                                                            [outage: kill-at + down-for + 4]
  --rate R         * total msg/s, paced per device (downlink: of the
                     publisher); 0 = as fast as the inflight
                     window allows                          [0; outage: 2000]
                     uplink: a comma-separated list is a load sweep
                     (5000,20000,50000,0): each rate a run of its own per
                     target and round; paced steps last --duration
                     (default ${SWEEP_STEP_S} s), the unpaced one --messages
                     (or --duration); one table of every step
  --payload BYTES  * payload size, >= ${PAYLOAD_HEADER_BYTES}                    [64]
  --qos Q          * uplink: 0 | 1 | 2 | both (= 1 then 0)  [both]
                     downlink: 0 | 1 | both, of the subscriptions and publishes
  --inflight N     * unacknowledged messages per device
                     (downlink: of the publisher)           [16]
  --topic PATTERN    device topic, {id} = device number     [load/{id}]
  --idle-timeout S * end a run after S s without progress   [10]
  --upstream U       uplink, mixed: sink (a stand-in that acknowledges
                     QoS 1/2 and counts, its own process, ~1 µs CPU per
                     message) or mosquitto                  [sink]
                     (broker-outage, downlink, auth, per-device, http,
                     connect-storm, idle: always mosquitto: they need a
                     real broker's sessions, routing or subscribers)
  --devices LIST     per-device: comma-separated device counts   [1000,5000]
  --upstream-rate N  per-device: FANOUT_UPSTREAM_CONNECT_RATE of
                     fanout-per-device, 0 = unpaced        [the daemon's, 1000]
  --transport T      uplink: tcp, ws (MQTT over WebSocket: binary frames,
                     subprotocol mqtt), tls (MQTT over TLS, certificates
                     made with openssl for the run), a comma-separated list
                     (tcp,tls), both (= tcp,ws) or all: a run over each per
                     round and target, in the order tcp, ws, tls [tcp]
Connection options (connect-storm, idle, auth)
  --connections N    connections, at most ${MAX_CONNECTIONS}               [5000; auth: 2000]
  --steps N          connect-storm: steps up to --connections [5]
  --hold S           idle: seconds to hold the connections  [10]
HTTP options (http; also --payload, --idle-timeout)
  --connections N    autocannon connections                 [10]
  --duration S       seconds of load per run                [10]
  --amount N         instead of --duration: requests in all
  --pipelining N     requests in flight per connection      [1]
  --warmup S         seconds of the same load before each measured
                     run (verified, not timed); 0 = none    [2]
  --qos Q            0 | 1 | 2 | both (= 0 then 1), of POST /publish [both]
  --endpoint E       publish | metrics | both               [both]
Outage options (broker-outage)
  --kill-at S        seconds into the stream b1 is killed   [3]
  --down-for S       seconds b1 stays down                  [3]
Common options
  --protocol P       3.1.1 | 5, spoken by devices           [3.1.1]
  --keepalive S      CONNECT keep-alive; idle devices ping  [0; connect-storm 60; idle 5]
  --ramp N           connections per second while connecting, 0 = unpaced [0]
  --concurrency N    handshakes in flight while connecting  [256]
  --shards N[,N..]   FANOUT_SHARDS of the daemon; a list runs each
                     count in turn (uplink reports their ratio)
                                                            [os.cpus().length = ${defaultShards()}]
  --rounds N         rounds of every target (x qos)         [3]
  --target T         fanout | mosquitto | both | compare    [both]
                     (downlink: mosquitto = mosquitto-direct, devices and
                     publisher on upstream b1 itself; also accepted by name;
                     http: fanout only, there is no peer;    [http: fanout]
                     auth: fanout | fanout-auth | both;
                     per-device: fanout | fanout-per-device | both;
                     uplink, mixed: also sink-direct, the devices on one
                     sink itself: the sink's own CPU per message)
  --threads N        load generator worker threads          [2]
  --json FILE        write every raw figure as JSON
  --keep-logs        keep each run's temp dir (configs, logs)
  --cpu-prof DIR     V8 CPU profiles of every mqtt-fanout thread, one
                     directory per run under DIR, and where each thread
                     spent its time after the run (see loadtest/profile.ts)
  -h, --help         this text

Environment: MOSQUITTO_BIN overrides the mosquitto binary.
`;

export class UsageError extends Error {}

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

const STREAM: ScenarioName[] = ['uplink', 'mixed', 'broker-outage', 'auth', 'per-device'];
const CONNS: ScenarioName[] = ['connect-storm', 'idle', 'auth'];
const STREAM_DOWN: ScenarioName[] = [...STREAM, 'downlink'];
const HTTP: ScenarioName[] = ['http'];

/** Options that only mean something to some scenarios; giving one elsewhere is a mistake worth reporting. */
const APPLIES: Record<string, ScenarioName[]> = {
  devices: STREAM_DOWN,
  messages: STREAM_DOWN,
  duration: [...STREAM, ...HTTP],
  rate: STREAM_DOWN,
  payload: [...STREAM_DOWN, ...HTTP],
  inflight: STREAM_DOWN,
  topic: STREAM,
  'idle-timeout': [...STREAM_DOWN, ...HTTP],
  qos: ['uplink', 'downlink', ...HTTP],
  transport: ['uplink'],
  connections: [...CONNS, ...HTTP],
  amount: HTTP,
  pipelining: HTTP,
  warmup: HTTP,
  endpoint: HTTP,
  steps: ['connect-storm'],
  hold: ['idle'],
  'kill-at': ['broker-outage'],
  'down-for': ['broker-outage'],
  'upstream-rate': ['per-device'],
  upstream: ['uplink', 'mixed'],
};

const TRANSPORT_ORDER: readonly Transport[] = ['tcp', 'ws', 'tls'];

/** tcp | ws | tls | both (tcp,ws) | all, or a comma-separated list; always in the order tcp, ws, tls. */
function parseTransports(raw: string): Transport[] {
  const words = raw === 'both' ? ['tcp', 'ws'] : raw === 'all' ? [...TRANSPORT_ORDER] : raw.split(',').map((w) => w.trim());
  const bad = words.find((w) => !(TRANSPORT_ORDER as readonly string[]).includes(w));
  if (bad !== undefined || words.length === 0) {
    throw new UsageError(`--transport must be tcp, ws, tls, a comma-separated list of them, both (tcp,ws) or all, got '${raw}'`);
  }
  return TRANSPORT_ORDER.filter((t) => words.includes(t));
}

/** Returns null when --help was asked for. Throws UsageError on bad input. */
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
        'cpu-prof': { type: 'string' },
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
        transport: { type: 'string' },
        amount: { type: 'string' },
        pipelining: { type: 'string' },
        warmup: { type: 'string' },
        endpoint: { type: 'string' },
        'upstream-rate': { type: 'string' },
        upstream: { type: 'string' },
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
  if (!(SCENARIOS as readonly string[]).includes(name)) throw new UsageError(`unknown scenario '${name}'; one of ${SCENARIOS.join(', ')}`);
  const scenario = name as ScenarioName;
  for (const [opt, where] of Object.entries(APPLIES)) {
    if ((v as Record<string, unknown>)[opt] !== undefined && !where.includes(scenario)) {
      throw new UsageError(`--${opt} does not apply to ${scenario} (only to ${where.join(', ')})`);
    }
  }

  const qosRaw = v.qos ?? 'both';
  // http: the cheap endpoint first, as the issue lists them.
  const qosMap: Record<string, Qos[]> = { '0': [0], '1': [1], '2': [2], both: scenario === 'http' ? [0, 1] : [1, 0] };
  const qosList = qosMap[qosRaw];
  if (!qosList) throw new UsageError(`--qos must be 0, 1, 2 or both, got '${qosRaw}'`);
  // The downlink devices acknowledge QoS 1 only; QoS 2 would measure an unfinished handshake.
  if (scenario === 'downlink' && qosList.includes(2)) throw new UsageError(`downlink: --qos must be 0, 1 or both, got '${qosRaw}'`);
  const endpointMap: Record<string, HttpEndpoint[]> = { publish: ['publish'], metrics: ['metrics'], both: ['publish', 'metrics'] };
  const endpoints = endpointMap[v.endpoint ?? 'both'];
  if (!endpoints) throw new UsageError(`--endpoint must be publish, metrics or both, got '${v.endpoint}'`);
  if (v.qos !== undefined && !endpoints.includes('publish')) throw new UsageError('--qos is the QoS of POST /publish: it needs --endpoint publish or both');
  const qos: Qos[] =
    scenario === 'uplink' || scenario === 'downlink'
      ? qosList
      : scenario === 'http'
        ? endpoints.includes('publish')
          ? qosList
          : []
        : scenario === 'broker-outage' || scenario === 'auth' || scenario === 'per-device'
          ? [1]
          : [];

  const transports = parseTransports(v.transport ?? 'tcp');

  // The downlink peer is mosquitto itself serving the devices, not the bridge; auth's is mqtt-fanout with auth.
  const peer: TargetKind = scenario === 'downlink' ? 'mosquitto-direct' : scenario === 'auth' ? 'fanout-auth' : scenario === 'per-device' ? 'fanout-per-device' : 'mosquitto';
  const targetRaw = v.target ?? (scenario === 'http' ? 'fanout' : 'both');
  const targetMap: Record<string, TargetKind[]> = { fanout: ['fanout'], both: ['fanout', peer], compare: ['fanout', peer] };
  if (scenario !== 'auth' && scenario !== 'per-device') targetMap.mosquitto = [peer];
  if (scenario === 'downlink' || scenario === 'auth' || scenario === 'per-device') targetMap[peer] = [peer];
  if (scenario === 'uplink' || scenario === 'mixed') targetMap['sink-direct'] = ['sink-direct'];
  if (scenario === 'http' && targetRaw !== 'fanout') {
    throw new UsageError(`http: --target must be fanout: mosquitto has no HTTP publish endpoint, so this scenario has no peer (got '${targetRaw}')`);
  }
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
  // per-device: a list of counts, each a run; every device is a connection of this process.
  const deviceCounts = scenario === 'per-device'
    ? (v.devices ?? '1000,5000').split(',').map((d) => int('devices', d.trim(), 0, 1, MAX_CONNECTIONS))
    : [int('devices', v.devices, 100, 1, scenario === 'downlink' ? MAX_CONNECTIONS : 0xfffffffe)];
  const devices = deviceCounts[0];
  const shardCounts = v.shards === undefined ? [defaultShards()] : [...new Set(v.shards.split(',').map((s) => int('shards', s.trim(), 0, 1, 64)))];
  const rateList = (v.rate ?? String(scenario === 'broker-outage' ? 2000 : 0)).split(',').map((r) => num('rate', r.trim(), 0, 0));
  if (rateList.length > 1 && scenario !== 'uplink') throw new UsageError(`--rate takes a list (a load sweep) in uplink only, got '${v.rate}'`);
  const rates = [...new Set(rateList)];
  const sweep = rates.length > 1;
  const rate = rates[0];
  const upstreamRaw = v.upstream ?? (scenario === 'uplink' || scenario === 'mixed' ? 'sink' : 'mosquitto');
  if (upstreamRaw !== 'sink' && upstreamRaw !== 'mosquitto') throw new UsageError(`--upstream must be sink or mosquitto, got '${upstreamRaw}'`);
  const upstream: UpstreamKind = upstreamRaw;
  const killAtS = num('kill-at', v['kill-at'], 3, 0, true);
  const downForS = num('down-for', v['down-for'], 3, 0, true);
  if (v.messages !== undefined && v.duration !== undefined) throw new UsageError('give --messages or --duration, not both');
  if (scenario === 'broker-outage' && rate === 0) throw new UsageError('broker-outage needs a paced stream: --rate > 0');

  // Run length: messages per device, or a duration (paced: turned into messages; unpaced: devices stop on time).
  // http: a duration (autocannon's), or --amount requests.
  if (v.amount !== undefined && v.duration !== undefined) throw new UsageError('give --amount or --duration, not both');
  const amount = v.amount === undefined ? null : int('amount', v.amount, 0, 1, MAX_HTTP_REQUESTS);
  let durationS: number | null = v.duration === undefined ? (scenario === 'http' && amount === null ? 10 : null) : num('duration', v.duration, 0, 0, true);
  if (scenario === 'broker-outage' && durationS === null && v.messages === undefined) durationS = killAtS + downForS + 4;
  // A sweep's paced steps last SWEEP_STEP_S unless told otherwise; its unpaced step runs as a single rate would.
  const stepOf = (r: number): RateStep => {
    const d = sweep && r > 0 && durationS === null && v.messages === undefined ? SWEEP_STEP_S : durationS;
    if (scenario === 'http') {
      // Not used: http sizes its receivers from --amount (or MAX_HTTP_REQUESTS).
      return { rate: r, messages: 0, timeBound: false };
    }
    if (d === null) {
      return { rate: r, messages: int('messages', v.messages, scenario === 'downlink' || scenario === 'auth' ? 1000 : scenario === 'per-device' ? 100 : 10_000, 1, 0xffffffff), timeBound: false };
    }
    if (r > 0) return { rate: r, messages: Math.max(1, Math.round((r * d) / devices)), timeBound: false };
    return { rate: r, messages: Math.max(1, Math.min(0xffffffff, Math.floor(TIME_BOUND_BITS / devices))), timeBound: true };
  };
  const rateSteps = rates.map(stepOf);
  const { messages, timeBound } = rateSteps[0];
  const connections = int('connections', v.connections, scenario === 'http' ? 10 : scenario === 'auth' ? 2000 : 5000, 1, MAX_CONNECTIONS);
  // autocannon gives each connection a share of --amount; a connection with none is an error there.
  if (amount !== null && amount < connections) throw new UsageError(`--amount (${amount}) must be at least --connections (${connections})`);
  // The receivers keep one bit per message and broker (downlink: per device): 2e9 is 250 MB each.
  if (Math.max(...deviceCounts) * Math.max(...rateSteps.map((s) => s.messages)) > 2e9) throw new UsageError('--devices x --messages is limited to 2e9');
  if (scenario === 'broker-outage') {
    const streamS = (devices * messages) / rate;
    if (streamS <= killAtS + downForS) {
      throw new UsageError(`broker-outage: the stream (${streamS.toFixed(1)} s) must outlast --kill-at + --down-for (${killAtS + downForS} s)`);
    }
  }

  return {
    scenario,
    devices,
    deviceCounts,
    upstreamRate: v['upstream-rate'] === undefined ? null : int('upstream-rate', v['upstream-rate'], 0, 0, 1_000_000),
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
    cpuProf: v['cpu-prof'] ?? null,
    protocol,
    rate,
    rateSteps,
    upstream,
    ramp: num('ramp', v.ramp, 0, 0),
    concurrency: int('concurrency', v.concurrency, 256, 1, 100_000),
    keepalive: int('keepalive', v.keepalive, scenario === 'connect-storm' ? 60 : scenario === 'idle' ? 5 : 0, 0, 65535),
    shards: shardCounts[0],
    shardCounts,
    connections,
    steps: int('steps', v.steps, 5, 1, 1000),
    holdS: num('hold', v.hold, 10, 0, true),
    killAtS,
    downForS,
    transports: scenario === 'uplink' ? transports : ['tcp'],
    amount,
    pipelining: int('pipelining', v.pipelining, 1, 1, 1024),
    warmupS: num('warmup', v.warmup, 2, 0),
    endpoints: scenario === 'http' ? endpoints : [],
  };
}
