// Command-line options. Validation happens here so a typo fails in a
// millisecond instead of after mosquittos and workers were started.
import { parseArgs } from 'node:util';
import { PAYLOAD_HEADER_BYTES, Qos } from './mqtt-wire';
import type { TargetKind } from './targets';

export interface Options {
  devices: number;
  messages: number;
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
}

export const HELP = `Usage: npm run loadtest -- [options]
       node dist/loadtest/cli.js [options]

Uplink load test: N devices publish M messages each; every message must reach
2 upstream mosquittos. Compares mqtt-fanout (dist/src/cli.js) with a mosquitto
bridge doing the same job, alternating targets with fresh processes per run.

  --devices N        devices (connections)                  [100]
  --messages N       messages per device                    [10000]
  --payload BYTES    payload size, >= ${PAYLOAD_HEADER_BYTES}                     [64]
  --qos Q            0 | 1 | 2 | both (= 1 then 0)          [both]
  --inflight N       unacknowledged messages per device     [16]
  --rounds N         rounds of every target x qos           [3]
  --target T         fanout | mosquitto | both              [both]
  --threads N        publisher worker threads               [2]
  --topic PATTERN    device topic, {id} = device number     [load/{id}]
  --json FILE        write every raw figure as JSON
  --idle-timeout S   end a run after S s without progress   [10]
  --keep-logs        keep each run's temp dir (configs, logs)
  -h, --help         this text

Environment: MOSQUITTO_BIN overrides the mosquitto binary.
`;

export class UsageError extends Error {}

function int(name: string, raw: string | undefined, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (raw === undefined) return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got '${raw}'`);
  return n;
}

/** Returns null when --help was asked for. */
export function parseOptions(argv: string[]): Options | null {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        devices: { type: 'string' },
        messages: { type: 'string' },
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
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return null;

  const qosRaw = v.qos ?? 'both';
  const qosMap: Record<string, Qos[]> = { '0': [0], '1': [1], '2': [2], both: [1, 0] };
  const qos = qosMap[qosRaw];
  if (!qos) throw new UsageError(`--qos must be 0, 1, 2 or both, got '${qosRaw}'`);

  const targetRaw = v.target ?? 'both';
  const targetMap: Record<string, TargetKind[]> = { fanout: ['fanout'], mosquitto: ['mosquitto'], both: ['fanout', 'mosquitto'] };
  const targets = targetMap[targetRaw];
  if (!targets) throw new UsageError(`--target must be fanout, mosquitto or both, got '${targetRaw}'`);

  const topic = v.topic ?? 'load/{id}';
  if (!topic.includes('{id}')) throw new UsageError('--topic must contain {id}, or every device would share one topic');
  if (/[+#]/.test(topic)) throw new UsageError('--topic must not contain wildcards');

  const idle = Number(v['idle-timeout'] ?? '10');
  if (!Number.isFinite(idle) || idle <= 0) throw new UsageError(`--idle-timeout must be a positive number of seconds`);

  const devices = int('devices', v.devices, 100, 1, 0xfffffffe);
  const messages = int('messages', v.messages, 10_000, 1, 0xffffffff);
  // The receivers keep one bit per message and broker: 2e9 is 250 MB each.
  if (devices * messages > 2e9) throw new UsageError('--devices x --messages is limited to 2e9');

  return {
    devices,
    messages,
    payload: int('payload', v.payload, 64, PAYLOAD_HEADER_BYTES, 16 * 1024 * 1024),
    qos,
    // Packet ids are 16 bits and reused round-robin, so more than 65535 in flight would collide.
    inflight: int('inflight', v.inflight, 16, 1, 65535),
    rounds: int('rounds', v.rounds, 3, 1),
    targets,
    threads: int('threads', v.threads, 2, 1, 64),
    topic,
    json: v.json ?? null,
    idleTimeoutS: idle,
    keepLogs: v['keep-logs'] ?? false,
  };
}
