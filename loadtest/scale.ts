// Several instances behind HAProxy (loadtest/haproxy/haproxy.cfg.example), sessions in Redis:
//  1. the QoS 1 uplink throughput of 1, 2, ... N instances, in one run, each with fresh brokers,
//     Redis and HAProxy (the `uplink` harness of the other scenarios, its devices connecting to
//     HAProxy instead of one daemon);
//  2. a reconnection storm: `--storm` devices with persistent sessions spread over N instances,
//     one instance killed (SIGKILL), and the time until every device is connected again, and
//     until every one of the killed instance's devices got a message sent to it after the kill
//     (its session, subscriptions included, resumed from Redis on another instance).
// Usage: npm run scale -- [--instances 3] [--devices 100] [--messages 300] [--storm 1000] [--shards 1]

import { parseArgs } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { Mosquitto } from '../test/helpers/mosquitto';
import { RedisServer } from '../test/helpers/redis';
import { Cluster } from '../test/helpers/cluster';
import { connectClient, urlOf } from '../test/helpers/clients';
import { HOST } from '../test/helpers/ports';
import { sleep, waitFor } from '../test/helpers/wait';
import { runUplink, type ScenarioResult } from './uplink';
import type { Target } from './targets';
import { installCleanupHandlers } from './procs';

interface Setup {
  ups: Mosquitto[];
  redis: RedisServer;
  cluster: Cluster;
}

async function setUp(instances: number, shards: number, logLevel: string): Promise<Setup> {
  const ups = [await Mosquitto.start(), await Mosquitto.start()];
  const redis = await RedisServer.start();
  const cluster = await Cluster.start(instances, {
    FANOUT_BROKERS: `b1=${ups[0].url()},b2=${ups[1].url()}`, FANOUT_SESSION_STORE: redis.url, FANOUT_SHARDS: shards,
    FANOUT_LOG_LEVEL: logLevel,
  // Two file descriptors per connection: well under the 20,000 a process may open here.
  }, 6000);
  return { ups, redis, cluster };
}

async function tearDown(s: Setup): Promise<void> {
  await s.cluster.close();
  await s.redis.close();
  for (const m of s.ups) await m.stop();
}

/** The cluster as the uplink harness sees a target: devices go to HAProxy; the instances and
 *  HAProxy are the target's processes (their CPU), the mosquittos the upstreams. */
function clusterTarget(s: Setup): Target {
  const instances = s.cluster.instances;
  const unsupported = (): never => { throw new Error('not in the scale load test'); };
  return {
    kind: 'fanout', devicePort: s.cluster.port, wsPort: null, wsPath: '/', wsServer: null, httpPort: null, tlsPort: null,
    endpoint: (transport) => {
      if (transport !== 'tcp') throw new Error('the scale load test runs over TCP only');
      return { transport, host: HOST, port: s.cluster.port, path: '/' };
    },
    upstreams: s.ups.map((m, i) => ({ name: `b${i + 1}`, port: m.port })),
    upstreamKind: 'mosquitto', sink: () => null,
    dir: s.cluster.haproxy.dir, shards: null,
    watched: () => [
      ...instances.map((d, i) => ({ name: `fanout${i + 1}`, role: 'target' as const, pid: d.proc.pid! })),
      { name: 'haproxy', role: 'target' as const, pid: s.cluster.haproxy.pid! },
      ...s.ups.map((m, i) => ({ name: `b${i + 1}`, role: 'upstream' as const, pid: m.pid! })),
    ],
    stop: () => Promise.resolve([]),
    casualties: () => instances.filter((d) => !d.running).map((d) => `${d.proxyId} exited`),
    snapshotUpstream: unsupported, killUpstream: unsupported, restartUpstream: unsupported,
  };
}

interface StormResult {
  devices: number;
  onVictim: number;
  connectMs: number;
  backMs: number;
  resumedMs: number;
  present: number;
}

async function storm(s: Setup, devices: number): Promise<StormResult> {
  const clients: { c: MqttClient; id: string; connects: number; present: boolean; got: boolean }[] = [];
  const started = Date.now();
  for (let i = 0; i < devices; i += 100) {
    await Promise.all(Array.from({ length: Math.min(100, devices - i) }, async (_, k) => {
      const id = `storm-${i + k}`;
      const c = mqtt.connect(urlOf(s.cluster.port), { clientId: id, clean: false, reconnectPeriod: 200, keepalive: 60, resubscribe: false, connectTimeout: 30_000 });
      const d = { c, id, connects: 0, present: false, got: false };
      c.on('error', () => undefined);
      c.on('connect', (ack) => { d.connects++; d.present = ack.sessionPresent; });
      c.on('message', () => { d.got = true; });
      clients.push(d);
      await new Promise<void>((resolve) => c.once('connect', () => resolve()));
      await c.subscribeAsync(`storm/${id}`, { qos: 1 });
    }));
  }
  const connectMs = Date.now() - started;
  const victim = s.cluster.instances[0];
  const onVictim: typeof clients = [];
  for (const d of clients) {
    const owner = await s.redis.command(['GET', `fanout:own:${d.id}`]);
    if (owner.includes(`${victim.proxyId}:`)) onVictim.push(d);
  }
  const before = new Map(onVictim.map((d) => [d, d.connects]));
  await victim.close();
  const killed = Date.now();
  await waitFor('every device back', () => clients.every((d) => d.c.connected) && onVictim.every((d) => d.connects > before.get(d)!), { timeoutMs: 300_000, intervalMs: 20 });
  const backMs = Date.now() - killed;
  // A message to each of them proves the session resumed with its subscription.
  const pub = await connectClient(s.ups[0].port, { clientId: 'storm-publisher', clean: true });
  for (const d of onVictim) await pub.publishAsync(`storm/${d.id}`, 'x', { qos: 1 });
  await waitFor('the message at every device of the killed instance', () => onVictim.every((d) => d.got), {
    timeoutMs: 60_000,
    detail: () => {
      const missing = onVictim.filter((d) => !d.got);
      return `${missing.length} of ${onVictim.length} without it, e.g. ${missing.slice(0, 5).map((d) => `${d.id} (connects ${d.connects}, present ${d.present})`).join(', ')}`;
    },
  });
  const resumedMs = Date.now() - killed;
  await pub.endAsync(true);
  const present = onVictim.filter((d) => d.present).length;
  await Promise.all(clients.map((d) => d.c.endAsync(true)));
  return { devices, onVictim: onVictim.length, connectMs, backMs, resumedMs, present };
}

const int = (n: number): string => Math.round(n).toLocaleString('en-US');

async function main(): Promise<void> {
  installCleanupHandlers();
  const { values: v } = parseArgs({ options: {
    instances: { type: 'string', default: '3' }, devices: { type: 'string', default: '100' }, messages: { type: 'string', default: '300' },
    storm: { type: 'string', default: '1000' }, shards: { type: 'string', default: '1' }, inflight: { type: 'string', default: '16' },
    'log-level': { type: 'string', default: 'info' },
  } });
  const max = Number(v.instances);
  const shards = Number(v.shards);
  const job = {
    devices: Number(v.devices), messages: Number(v.messages), payload: 64, qos: 1 as const, inflight: Number(v.inflight), threads: 2,
    topicPattern: 'load/{id}', idleTimeoutS: 15, protocol: 4 as const, keepalive: 60, transport: 'tcp' as const,
  };
  console.log(`scale: ${job.devices} devices x ${job.messages} QoS 1 messages of ${job.payload} B, inflight ${job.inflight}, `
    + `FANOUT_SHARDS=${shards} per instance, 2 mosquittos, Redis session store, HAProxy; storm of ${v.storm} persistent sessions`);
  const rows: { n: number; r: ScenarioResult }[] = [];
  // --messages 0: the storm only.
  for (let n = 1; n <= max && job.messages > 0; n++) {
    const s = await setUp(n, shards, v['log-level']!);
    try {
      const r = await runUplink(clusterTarget(s), { ...job, runTag: `scale${n}-` });
      rows.push({ n, r });
      const missing = r.brokers.reduce((m, b) => m + b.missing, 0);
      console.log(`${n} instance(s): ${int(r.msgPerSec)} msg/s acknowledged, ${int(r.deliveredPerSec)} msg/s delivered (slowest broker), `
        + `missing ${missing}, e2e p50 ${r.e2e.p50Ms.toFixed(1)} ms p99 ${r.e2e.p99Ms.toFixed(1)} ms, `
        + `cpu ${r.resources.targetCpuUs.toFixed(1)} µs/msg (instances + haproxy), upstreams ${r.resources.upstreamCpuUs.toFixed(1)} µs/msg`);
    } finally {
      await tearDown(s);
    }
    await sleep(500);
  }
  if (rows.length > 1) console.log(`ratio ${max} instances / 1: ${(rows.at(-1)!.r.msgPerSec / rows[0].r.msgPerSec).toFixed(2)}`);
  if (Number(v.storm) > 0) {
    const s = await setUp(max, shards, v['log-level']!);
    try {
      const r = await storm(s, Number(v.storm));
      console.log(`storm: ${r.devices} devices connected and subscribed in ${int(r.connectMs)} ms; instance 1 (${r.onVictim} devices) killed; `
        + `all devices connected again after ${int(r.backMs)} ms, session present for ${r.present} of ${r.onVictim}; `
        + `a message sent after that reached every one of them ${int(r.resumedMs)} ms after the kill`);
    } finally {
      await tearDown(s);
    }
  }
}

main().then(() => process.exit(0), (err: unknown) => {
  console.error(err instanceof Error ? err.stack : err);
  process.exit(1);
});
