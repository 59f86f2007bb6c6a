import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parser, IConnectPacket, IPublishPacket, Packet } from 'mqtt-packet';
import { runBrokerOutage } from '../../loadtest/broker-outage';
import { runConnectStorm } from '../../loadtest/connect-storm';
import { DevicePool, downlinkTopic, runDownlink } from '../../loadtest/downlink';
import { runHttp } from '../../loadtest/http';
import { runIdle } from '../../loadtest/idle';
import { ackFrame, encodeConnect, filterFor, Framer, PACKET, parseConnack, publishLayout, topicFor, writeVarint } from '../../loadtest/mqtt-wire';
import { bridgeConf, upstreamConf } from '../../loadtest/mosquitto-conf';
import { MAX_CONNECTIONS, parseOptions, UsageError } from '../../loadtest/options';
import type { RunRecord } from '../../loadtest/output';
import { readCpuSeconds, readRssKB, UsageMeter } from '../../loadtest/proc-usage';
import { renderIdle, renderStorm } from '../../loadtest/report-connections';
import { renderMixed } from '../../loadtest/report-mixed';
import { renderDownlink } from '../../loadtest/report-downlink';
import { renderHttp } from '../../loadtest/report-http';
import { renderOutage } from '../../loadtest/report-outage';
import { renderReport } from '../../loadtest/report';
import { connectionJob, downlinkJob, httpJob, uplinkJob } from '../../loadtest/scenarios';
import { startTarget, Target, TargetKind } from '../../loadtest/targets';
import { runUplink, ScenarioResult } from '../../loadtest/uplink';
import { deviceCredentials, writeAuthFiles } from '../../loadtest/auth-files';
import { runAuth, type AuthResult } from '../../loadtest/auth';
import { ConnectError, connectRaw } from '../../loadtest/mqtt-wire';
import type { Transport } from '../../loadtest/mqtt-ws';
import { renderAuth } from '../../loadtest/report-auth';
import { runPerDevice, type PerDeviceResult } from '../../loadtest/per-device';
import { renderPerDevice } from '../../loadtest/report-per-device';
import { parseAclFile } from '../../src/auth/acl';
import { parsePasswordFile, verifyPassword } from '../../src/auth/password-file';

function frames(bytes: Buffer, chunkSize: number): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  const framer = new Framer((header, buf, start, length) => out.push({ type: header >> 4, body: Buffer.from(buf.subarray(start, start + length)) }));
  for (let i = 0; i < bytes.length; i += chunkSize) framer.push(bytes.subarray(i, i + chunkSize));
  return out;
}

function parseAll(frame: Buffer, protocolVersion: 4 | 5): Packet[] {
  const packets: Packet[] = [];
  const p = parser({ protocolVersion });
  p.on('packet', (pkt: Packet) => packets.push(pkt));
  p.on('error', (err: Error) => assert.fail(err));
  p.parse(frame);
  return packets;
}

function opts(argv: string[]): NonNullable<ReturnType<typeof parseOptions>> {
  const o = parseOptions(argv);
  assert.ok(o);
  return o;
}

/** A record as cli.ts makes it, for the renderers. */
function record<R>(target: Target, result: R): RunRecord<R> {
  return { scenario: 'uplink', round: 1, target: target.kind, transport: 'tcp', qos: null, shards: target.shards, error: null, result, notes: [] };
}

async function withMosquitto<T>(
  setup: { qos?: 0 | 1 | 2; recoverable?: string; kind?: TargetKind; ws?: boolean; http?: boolean; tls?: boolean; auth?: { users: number; topicPattern: string } },
  body: (t: Target) => Promise<T>,
): Promise<T> {
  const target = await startTarget(setup.kind ?? 'mosquitto', {
    upstreams: 2,
    qos: setup.qos ?? 1,
    recoverable: setup.recoverable ?? null,
    shards: 2,
    daemonLogLevel: 'info',
    keepLogs: false,
    ws: setup.ws,
    http: setup.http,
    tls: setup.tls,
    auth: setup.auth,
  });
  try {
    return await body(target);
  } finally {
    assert.deepEqual(await target.stop(), []);
  }
}

test('Framer reassembles frames cut at every possible boundary', () => {
  const big = Buffer.alloc(3 + 200);
  big[0] = 0x30;
  const bodyStart = writeVarint(big, 1, 200); // two-byte remaining length
  big.fill(7, bodyStart);
  const acks = Buffer.alloc(8);
  ackFrame(PACKET.PUBACK, 1, acks, 0);
  ackFrame(PACKET.PUBCOMP, 65535, acks, 4);
  const stream = Buffer.concat([acks, big.subarray(0, bodyStart + 200), acks]);
  for (const size of [1, 2, 3, 5, 64, stream.length]) {
    const got = frames(stream, size);
    assert.deepEqual(got.map((f) => f.type), [4, 7, 3, 4, 7], `chunk size ${size}`);
    assert.equal(got[1].body.readUInt16BE(0), 65535);
    assert.equal(got[2].body.length, 200);
  }
});

test('publishLayout builds 3.1.1 and 5.0 frames a standard parser accepts', () => {
  for (const protocol of [4, 5] as const) {
    for (const qos of [0, 1, 2] as const) {
      const { template, pidOffset, payloadOffset } = publishLayout(topicFor('devices/{id}/telemetry', 42), qos, 300, 42, protocol);
      const frame = Buffer.from(template);
      if (pidOffset >= 0) frame.writeUInt16BE(9, pidOffset);
      frame.writeUInt32BE(5, payloadOffset + 4);
      const packets = parseAll(frame, protocol);
      assert.equal(packets.length, 1);
      const pub = packets[0] as IPublishPacket;
      assert.equal(pub.topic, 'devices/42/telemetry');
      assert.equal(pub.qos, qos);
      const payload = pub.payload as Buffer;
      assert.equal(payload.length, 300, `protocol ${protocol} qos ${qos}`);
      assert.equal(payload.readUInt32BE(0), 42);
      assert.equal(payload.readUInt32BE(4), 5);
      if (qos > 0) assert.equal(pub.messageId, 9);
    }
  }
});

test('CONNECT carries protocol level, keep-alive and clean flag; a 5.0 CONNACK yields its Receive Maximum', () => {
  const c5 = parseAll(encodeConnect('dev-1', { protocol: 5, keepalive: 30, clean: false }), 5)[0] as IConnectPacket;
  assert.deepEqual([c5.protocolVersion, c5.keepalive, c5.clean, c5.clientId], [5, 30, false, 'dev-1']);
  const c4 = parseAll(encodeConnect('dev-2'), 4)[0] as IConnectPacket;
  assert.deepEqual([c4.protocolVersion, c4.keepalive, c4.clean], [4, 0, true]);
  // flags 0, reason 0, properties: length 3, Receive Maximum (0x21) = 20
  const body = Buffer.from([0x00, 0x00, 0x03, 0x21, 0x00, 0x14]);
  assert.deepEqual(parseConnack(body, 0, body.length, 5), { code: 0, info: { sessionPresent: false, receiveMaximum: 20 } });
  assert.equal(parseConnack(Buffer.from([0x01, 0x05]), 0, 2, 4).code, 5);
});

test('filterFor covers every topic the pattern produces', () => {
  assert.equal(filterFor('load/{id}'), 'load/#');
  assert.equal(filterFor('devices/{id}/telemetry'), 'devices/#');
  assert.equal(filterFor('{id}/up'), '#');
});

test('bridge config carries the lossless tuning for every upstream; durable adds the outage settings', () => {
  const ups = [{ name: 'b1', port: 1001 }, { name: 'b2', port: 1002 }];
  const conf = bridgeConf(1000, ups, 1);
  for (const line of ['max_queued_messages 0', 'max_inflight_messages 100', 'connection b2', 'address 127.0.0.1:1002']) {
    assert.ok(conf.split('\n').includes(line), line);
  }
  assert.equal(conf.match(/^topic # out 1$/gm)?.length, 2);
  assert.equal(conf.match(/^try_private false$/gm)?.length, 2);
  assert.equal(conf.match(/^cleansession true$/gm)?.length, 2);
  const durable = bridgeConf(1000, ups, 1, true);
  assert.equal(durable.match(/^local_cleansession false$/gm)?.length, 2);
  assert.equal(durable.match(/^restart_timeout 1 10$/gm)?.length, 2);
  assert.ok(!conf.includes('websockets'));
  const ws = bridgeConf(1000, ups, 1, false, 1005).split('\n');
  assert.deepEqual(ws.slice(0, 3), ['listener 1000 127.0.0.1', 'listener 1005 127.0.0.1', 'protocol websockets']);
  assert.ok(upstreamConf(1001).includes('persistence false'));
  assert.ok(upstreamConf(1001, { dir: '/x', file: 'b1.db' }).includes('autosave_interval 0'));
});

test('options: defaults, validation and help', () => {
  const o = opts([]);
  assert.equal(o.scenario, 'uplink');
  assert.deepEqual([o.devices, o.messages, o.payload, o.inflight, o.rounds, o.threads], [100, 10000, 64, 16, 3, 2]);
  assert.deepEqual(o.qos, [1, 0]);
  assert.deepEqual(o.targets, ['fanout', 'mosquitto']);
  assert.deepEqual([o.protocol, o.rate, o.ramp, o.keepalive, o.durationS, o.timeBound], [4, 0, 0, 0, null, false]);
  assert.equal(o.shards, Math.min(64, os.cpus().length));
  assert.equal(parseOptions(['--help']), null);
  assert.throws(() => parseOptions(['--payload', '8']), UsageError);
  assert.throws(() => parseOptions(['--topic', 'load/+']), UsageError);
  assert.throws(() => parseOptions(['--bogus']), UsageError);
});

test('options: scenario names', () => {
  assert.equal(opts(['uplink', '--qos', '2']).scenario, 'uplink');
  for (const name of ['connect-storm', 'idle', 'broker-outage', 'mixed'] as const) assert.equal(opts([name]).scenario, name);
  // The scenario may stand anywhere among the options.
  assert.equal(opts(['--rounds', '1', 'idle']).scenario, 'idle');
  assert.equal(opts(['http']).scenario, 'http');
  assert.throws(() => parseOptions(['storm']), UsageError);
  assert.throws(() => parseOptions(['idle', 'mixed']), UsageError);
  assert.deepEqual(opts(['--target', 'compare']).targets, ['fanout', 'mosquitto']);
  assert.deepEqual(opts(['mixed']).qos, []);
  assert.deepEqual(opts(['broker-outage']).qos, [1]);
});

test('options: the new options and their per-scenario defaults', () => {
  assert.equal(opts(['--protocol', '5']).protocol, 5);
  assert.equal(opts(['--protocol', '3.1.1']).protocol, 4);
  assert.throws(() => parseOptions(['--protocol', '3']), UsageError);
  const paced = opts(['--rate', '2000', '--devices', '100', '--duration', '5']);
  assert.deepEqual([paced.rate, paced.messages, paced.durationS, paced.timeBound], [2000, 100, 5, false]);
  const timed = opts(['--duration', '2.5', '--devices', '10']);
  assert.deepEqual([timed.durationS, timed.timeBound], [2.5, true]);
  assert.ok(timed.messages * 10 <= 2e9 && timed.messages > 1000);
  assert.throws(() => parseOptions(['--duration', '5', '--messages', '10']), UsageError);
  assert.throws(() => parseOptions(['--duration', '0']), UsageError);
  assert.throws(() => parseOptions(['--rate', '-1']), UsageError);
  assert.deepEqual([opts(['--ramp', '500']).ramp, opts(['--keepalive', '30']).keepalive, opts(['--shards', '3']).shards], [500, 30, 3]);
  assert.throws(() => parseOptions(['--shards', '0']), UsageError);
  assert.throws(() => parseOptions(['--keepalive', '70000']), UsageError);
  const storm = opts(['connect-storm']);
  assert.deepEqual([storm.connections, storm.steps, storm.keepalive], [5000, 5, 60]);
  assert.equal(opts(['connect-storm', '--connections', String(MAX_CONNECTIONS)]).connections, MAX_CONNECTIONS);
  assert.throws(() => parseOptions(['connect-storm', '--connections', String(MAX_CONNECTIONS + 1)]), UsageError);
  const idle = opts(['idle']);
  assert.deepEqual([idle.connections, idle.holdS, idle.keepalive], [5000, 10, 5]);
  const outage = opts(['broker-outage']);
  assert.deepEqual([outage.rate, outage.killAtS, outage.downForS, outage.durationS, outage.messages], [2000, 3, 3, 10, 200]);
  assert.throws(() => parseOptions(['broker-outage', '--rate', '0']), UsageError);
  // The stream must still run when b1 is back.
  assert.throws(() => parseOptions(['broker-outage', '--duration', '5', '--kill-at', '3', '--down-for', '3']), UsageError);
  // Options of other scenarios are mistakes, not silently ignored.
  assert.throws(() => parseOptions(['idle', '--devices', '10']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--hold', '5']), UsageError);
  assert.throws(() => parseOptions(['mixed', '--qos', '1']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--kill-at', '1']), UsageError);
});

test('options: downlink compares with mosquitto-direct; --messages is the publisher\'s total', () => {
  const d = opts(['downlink']);
  assert.deepEqual([d.devices, d.messages, d.rate, d.inflight, d.payload], [100, 1000, 0, 16, 64]);
  assert.deepEqual(d.qos, [1, 0]);
  assert.deepEqual(d.targets, ['fanout', 'mosquitto-direct']);
  assert.deepEqual(opts(['downlink', '--target', 'mosquitto']).targets, ['mosquitto-direct']);
  assert.deepEqual(opts(['downlink', '--target', 'mosquitto-direct', '--qos', '0']).qos, [0]);
  assert.equal(opts(['downlink', '--devices', String(MAX_CONNECTIONS)]).devices, MAX_CONNECTIONS);
  assert.throws(() => parseOptions(['downlink', '--devices', String(MAX_CONNECTIONS + 1)]), UsageError);
  assert.throws(() => parseOptions(['downlink', '--qos', '2']), UsageError);
  assert.throws(() => parseOptions(['downlink', '--topic', 'x/{id}']), UsageError);
  assert.throws(() => parseOptions(['downlink', '--duration', '5']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--target', 'mosquitto-direct']), UsageError);
});

test('options: --transport (uplink only) and the http scenario', () => {
  assert.deepEqual(opts([]).transports, ['tcp']);
  assert.deepEqual(opts(['--transport', 'ws']).transports, ['ws']);
  assert.deepEqual(opts(['uplink', '--transport', 'both']).transports, ['tcp', 'ws']);
  assert.throws(() => parseOptions(['--transport', 'quic']), UsageError);
  assert.throws(() => parseOptions(['mixed', '--transport', 'ws']), UsageError);
  assert.throws(() => parseOptions(['downlink', '--transport', 'ws']), UsageError);
  const h = opts(['http']);
  assert.deepEqual([h.connections, h.durationS, h.amount, h.pipelining, h.warmupS, h.payload], [10, 10, null, 1, 2, 64]);
  assert.deepEqual([h.qos, h.endpoints, h.targets, h.transports], [[0, 1], ['publish', 'metrics'], ['fanout'], ['tcp']]);
  const a = opts(['http', '--amount', '500', '--connections', '5', '--pipelining', '4', '--qos', '1', '--endpoint', 'publish']);
  assert.deepEqual([a.amount, a.durationS, a.connections, a.pipelining, a.qos, a.endpoints], [500, null, 5, 4, [1], ['publish']]);
  assert.deepEqual(opts(['http', '--endpoint', 'metrics']).qos, []);
  assert.throws(() => parseOptions(['http', '--endpoint', 'metrics', '--qos', '1']), UsageError);
  assert.throws(() => parseOptions(['http', '--amount', '5', '--connections', '10']), UsageError);
  assert.throws(() => parseOptions(['http', '--amount', '500', '--duration', '5']), UsageError);
  // No peer for HTTP publish: asking for one is an error that says so.
  assert.throws(() => parseOptions(['http', '--target', 'both']), (err: Error) => err instanceof UsageError && err.message.includes('no peer'));
  assert.throws(() => parseOptions(['http', '--devices', '10']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--pipelining', '2']), UsageError);
});

test('options: --transport takes tls and lists, always run in the order tcp, ws, tls', () => {
  assert.deepEqual(opts(['--transport', 'tls']).transports, ['tls']);
  assert.deepEqual(opts(['--transport', 'tcp,tls']).transports, ['tcp', 'tls']);
  assert.deepEqual(opts(['--transport', 'tls,tcp']).transports, ['tcp', 'tls']);
  assert.deepEqual(opts(['--transport', 'all']).transports, ['tcp', 'ws', 'tls']);
  assert.deepEqual(opts(['--transport', 'tls, ws']).transports, ['ws', 'tls']);
  for (const bad of ['tcp,quic', 'tcp,', '', 'TLS']) assert.throws(() => parseOptions(['--transport', bad]), UsageError, bad);
});

test('options: the auth scenario compares fanout with fanout-auth, QoS 1, a storm and a stream', () => {
  const a = opts(['auth']);
  assert.deepEqual([a.targets, a.qos, a.transports], [['fanout', 'fanout-auth'], [1], ['tcp']]);
  assert.deepEqual([a.connections, a.devices, a.messages, a.inflight, a.payload], [2000, 100, 1000, 16, 64]);
  assert.deepEqual(opts(['auth', '--target', 'fanout-auth']).targets, ['fanout-auth']);
  assert.deepEqual(opts(['auth', '--target', 'fanout']).targets, ['fanout']);
  const sized = opts(['auth', '--connections', '300', '--devices', '20', '--messages', '50', '--rate', '500']);
  assert.deepEqual([sized.connections, sized.devices, sized.messages, sized.rate], [300, 20, 50, 500]);
  assert.throws(() => parseOptions(['auth', '--target', 'mosquitto']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--target', 'fanout-auth']), UsageError);
  for (const misplaced of [['--qos', '0'], ['--transport', 'tls'], ['--steps', '2'], ['--hold', '1']]) {
    assert.throws(() => parseOptions(['auth', ...misplaced]), UsageError, misplaced.join(' '));
  }
});

test('options: the per-device scenario compares fanout with fanout-per-device over a list of device counts', () => {
  const p = opts(['per-device']);
  assert.deepEqual([p.targets, p.qos, p.deviceCounts, p.devices, p.messages, p.upstreamRate], [['fanout', 'fanout-per-device'], [1], [1000, 5000], 1000, 100, null]);
  const q = opts(['per-device', '--devices', '200, 50', '--messages', '10', '--upstream-rate', '0', '--target', 'fanout-per-device']);
  assert.deepEqual([q.deviceCounts, q.messages, q.upstreamRate, q.targets], [[200, 50], 10, 0, ['fanout-per-device']]);
  assert.throws(() => parseOptions(['per-device', '--devices', '100,x']), UsageError);
  assert.throws(() => parseOptions(['per-device', '--devices', String(MAX_CONNECTIONS + 1)]), UsageError);
  assert.throws(() => parseOptions(['per-device', '--target', 'mosquitto']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--upstream-rate', '10']), UsageError);
  assert.throws(() => parseOptions(['uplink', '--target', 'fanout-per-device']), UsageError);
  assert.throws(() => parseOptions(['per-device', '--connections', '10']), UsageError);
});

test('auth files: the password file is what the daemon verifies ($7$, 101 iterations), the ACL covers each device\'s topic', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lt-auth-files-'));
  try {
    const { passwordFile, aclFile } = writeAuthFiles(dir, 3, 'site/{id}/telemetry');
    const parsed = parsePasswordFile(fs.readFileSync(passwordFile, 'utf8'));
    assert.deepEqual(parsed.errors, []);
    assert.deepEqual([...parsed.entries.keys()], ['0', '1', '2', 'probe']);
    for (const id of [0, 2, 'probe'] as const) {
      const entry = parsed.entries.get(String(id))!;
      assert.deepEqual([entry.kind, entry.iterations], ['pbkdf2-sha512', 101]);
      assert.equal(verifyPassword(entry, Buffer.from(deviceCredentials(id).password)), true);
      assert.equal(verifyPassword(entry, Buffer.from(deviceCredentials(1).password)), false);
    }
    const acl = parseAclFile(fs.readFileSync(aclFile, 'utf8'));
    assert.deepEqual(acl.errors, []);
    assert.match(fs.readFileSync(aclFile, 'utf8'), /^pattern write site\/%u\/telemetry$/m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('proc usage: CPU and RSS of a live process, one account across a restart', async () => {
  assert.ok((readRssKB(process.pid) ?? 0) > 1000);
  assert.ok((readCpuSeconds(process.pid) ?? -1) >= 0);
  assert.equal(readRssKB(0x7ffffff0), null);
  const meter = new UsageMeter([{ name: 'me', role: 'target', pid: process.pid }]).start();
  const until = Date.now() + 150;
  while (Date.now() < until) Math.sqrt(Math.random());
  meter.retire('me');
  meter.attach('me', process.pid);
  const [me] = meter.stop();
  assert.deepEqual(me.pids, [process.pid, process.pid]);
  assert.ok(me.cpuSeconds >= 0.05, `cpu ${me.cpuSeconds}`);
  assert.ok(me.peakRssKB > 1000 && me.samples.length >= 2);
});

test('uplink through a mosquitto bridge delivers everything to both upstreams', { timeout: 60_000 }, async () => {
  await withMosquitto({}, async (target) => {
    const r = await runUplink(target, {
      devices: 4,
      messages: 250,
      payload: 64,
      qos: 1,
      inflight: 8,
      threads: 2,
      topicPattern: 'load/{id}',
      idleTimeoutS: 10,
      runTag: `lttest${process.pid}-`,
    });
    assert.equal(r.endedBy, 'complete');
    assert.equal(r.publisher.acked, 1000);
    assert.deepEqual(r.brokers.map((b) => [b.broker, b.distinct, b.missing, b.duplicates]), [['b1', 1000, 0, 0], ['b2', 1000, 0, 0]]);
    assert.ok(r.msgPerSec > 0 && r.e2e.count === 2000);
    assert.equal(r.resources.unit, 'msg');
    assert.equal(r.resources.units, 1000);
    assert.ok(r.resources.targetPeakRssKB > 0 && r.resources.processes.length === 3);
    assert.ok(Number.isFinite(r.resources.targetCpuUs) && Number.isFinite(r.resources.upstreamCpuUs));
  });
});

test('mixed: QoS 0, 1 and 2 devices at once over MQTT 5, reported per QoS', { timeout: 60_000 }, async () => {
  await withMosquitto({ qos: 2 }, async (target) => {
    const o = opts(['mixed', '--devices', '6', '--messages', '100', '--protocol', '5', '--rate', '3000']);
    const r = await runUplink(target, uplinkJob(o, 'mixed', `ltmix${process.pid}-`));
    assert.equal(r.endedBy, 'complete');
    assert.deepEqual(r.byQos?.map((q) => [q.qos, q.devices, q.sent, q.qos > 0 ? q.acked : 0]), [[0, 2, 200, 0], [1, 2, 200, 200], [2, 2, 200, 200]]);
    for (const q of r.byQos ?? []) {
      assert.ok(q.msgPerSec > 0 && q.e2e.count === 400, `qos ${q.qos}`);
      assert.deepEqual(q.brokers.map((b) => b.missing), [0, 0]);
    }
    const text = renderMixed([record(target, r)]);
    assert.match(text, /^1\s+mosquitto\s+2\s+2\s+[\d,]+/m);
  });
});

test('connect-storm: steps of connections against a mosquitto, with rates and CPU per connection', { timeout: 60_000 }, async () => {
  await withMosquitto({}, async (target) => {
    const o = opts(['connect-storm', '--connections', '40', '--steps', '2', '--protocol', '5']);
    const r = await runConnectStorm(target, { ...connectionJob(o, `ltstorm${process.pid}-`), steps: o.steps });
    assert.deepEqual([r.ok, r.refused, r.timeouts, r.errors, r.steps.length], [40, 0, 0, 0, 2]);
    assert.deepEqual(r.steps.map((s) => [s.heldBefore, s.ok]), [[0, 20], [20, 20]]);
    assert.ok(r.connPerSec > 0 && r.timeToAllMs > 0 && r.connect.count === 40);
    assert.equal(r.resources.unit, 'conn');
    const text = renderStorm([record(target, r)]);
    assert.match(text, /^1\s+mosquitto\s+-\s+40\/40\s+[\d,]+\s+\d+\.\d\d/m);
  });
});

test('idle: held connections ping at keep-alive; RSS per connection is reported', { timeout: 60_000 }, async () => {
  await withMosquitto({}, async (target) => {
    const o = opts(['idle', '--connections', '30', '--hold', '1.2', '--keepalive', '1']);
    const r = await runIdle(target, { ...connectionJob(o, `ltidle${process.pid}-`), holdS: o.holdS });
    assert.equal(r.connected.ok, 30);
    assert.equal(r.hold.dropped, 0);
    assert.ok(r.hold.pingsSent >= 30 && r.hold.pongs > 0, `pings ${r.hold.pingsSent} pongs ${r.hold.pongs}`);
    assert.ok(r.rssBeforeKB > 0 && r.rssAfterKB > 0 && Number.isFinite(r.rssPerConnKB));
    const text = renderIdle([record(target, r)]);
    assert.match(text, /^1\s+mosquitto\s+-\s+30\/30\s+1\.2\s+\d+\.\d\s+\d+\.\d\s+-?\d+\.\d\d/m);
  });
});

test('broker-outage: b1 killed and restarted mid-stream, nothing missing, recovery measured', { timeout: 60_000 }, async () => {
  await withMosquitto({ recoverable: 'b1' }, async (target) => {
    const o = opts(['broker-outage', '--devices', '10', '--rate', '400', '--kill-at', '0.4', '--down-for', '0.4', '--duration', '1.5']);
    const r = await runBrokerOutage(target, { ...uplinkJob(o, 1, `ltout${process.pid}-`), killAtS: o.killAtS, downForS: o.downForS });
    assert.equal(r.endedBy, 'complete');
    assert.deepEqual(r.brokers.map((b) => [b.broker, b.expected, b.missing]), [['b1', 600, 0], ['b2', 600, 0]]);
    // Timers and the run's clock differ by up to a millisecond: 0.7997 s has been seen for 0.8.
    assert.ok(r.outage.killedAtS >= 0.399 && r.outage.restartedAtS >= 0.799, JSON.stringify(r.outage));
    assert.ok(r.outage.recoveryMs > 0, `recovery ${r.outage.recoveryMs}`);
    assert.equal(r.outage.reconnects, 1);
    // b1's CPU is accounted over both of its processes.
    assert.equal(r.resources.processes.find((p) => p.name === 'upstream-b1')?.pids.length, 2);
    const text = renderOutage([record(target, r)]);
    assert.match(text, /^1\s+mosquitto\s+-\s+[\d,]+\s+0\.\d\d\s+\d\.\d\d\s+\d+\.\d{3}\s+b1=0 b2=0/m);
  });
});

test('downlink: devices subscribed on mosquitto directly get every message once; gaps are found per device', { timeout: 60_000 }, async () => {
  await withMosquitto({ kind: 'mosquitto-direct' }, async (target) => {
    assert.deepEqual(target.watched().map((p) => [p.name, p.role]), [['upstream-b1', 'target']]);
    const o = opts(['downlink', '--devices', '20', '--messages', '200', '--qos', '1', '--inflight', '8']);
    const r = await runDownlink(target, downlinkJob(o, 1, `ltdl${process.pid}-`));
    assert.equal(r.endedBy, 'complete');
    assert.deepEqual([r.published, r.expected, r.delivered, r.missing, r.duplicates, r.publisher.acked], [200, 4000, 4000, 0, 0, 200]);
    assert.deepEqual([r.devicesStats.incomplete, r.devicesStats.firstMissing, r.devicesStats.qosMismatch, r.devicesStats.foreign], [0, -1, 0, 0]);
    assert.deepEqual([r.subscribe.ok, r.e2e.count], [20, 4000]);
    assert.ok(r.deliveriesPerSec > 0 && r.resources.units === 4000 && Number.isFinite(r.resources.targetCpuUs));
    const text = renderDownlink([{ ...record(target, r), scenario: 'downlink', qos: 1 }]);
    assert.match(text, /^1\s+mosquitto-direct\s+1\s+-\s+20\s+200\s+[\d,]+\s+[\d,]+\s+0\s+0\s/m);
    // Devices that were sent nothing lack every expected sequence number.
    const job = downlinkJob(opts(['downlink', '--devices', '3', '--messages', '10', '--qos', '0']), 0, `ltdlgap${process.pid}-`);
    const pool = await DevicePool.start(job, '127.0.0.1', target.devicePort, downlinkTopic(job.runTag).filter);
    const gaps = await pool.close(4);
    assert.deepEqual([gaps.devices, gaps.distinct, gaps.incomplete, gaps.firstMissing, gaps.lastMissing], [3, 0, 3, 0, 3]);
  });
});

const smallUplink = (runTag: string, qos: 0 | 1, transport: Transport): Parameters<typeof runUplink>[1] => ({
  devices: 4,
  messages: 250,
  payload: 64,
  qos,
  inflight: 8,
  threads: 2,
  topicPattern: 'load/{id}',
  idleTimeoutS: 10,
  runTag,
  transport,
});

test('uplink over WebSocket through the mosquitto bridge; the report sets ws beside tcp', { timeout: 60_000 }, async () => {
  await withMosquitto({ ws: true }, async (target) => {
    assert.equal(target.wsServer, 'mosquitto');
    const records: RunRecord<ScenarioResult>[] = [];
    for (const transport of ['tcp', 'ws'] as const) {
      const r = await runUplink(target, smallUplink(`ltws${process.pid}${transport}-`, 1, transport));
      assert.equal(r.endedBy, 'complete', transport);
      assert.equal(r.transport, transport);
      assert.equal(r.wsServer, transport === 'ws' ? 'mosquitto' : null);
      assert.equal(r.publisher.acked, 1000, transport);
      assert.deepEqual(r.brokers.map((b) => [b.distinct, b.missing, b.duplicates]), [[1000, 0, 0], [1000, 0, 0]], transport);
      records.push({ ...record(target, r), transport, qos: 1 });
    }
    const text = renderReport(records);
    assert.match(text, /^1\s+mosquitto\s+ws\s+1\s+-\s+[\d,]+\s+[\d,]+\s+b1=0 b2=0\s+b1=0 b2=0\s+complete$/m);
    assert.match(text, /^ws\/tcp msg\/s:\s+mosquitto qos1 \d+\.\d\dx$/m);
    assert.match(text, /served by mosquitto mosquitto/);
    assert.match(text, /^ {2}deliv\/s: {4}mosquitto qos1 \d+\.\d\dx \(\d+\.\d\d\)$/m);
  });
});

test('mqtt-fanout: uplink over its WebSocket listener, and the http scenario verifying every 200 at both upstreams', { timeout: 90_000 }, async () => {
  await withMosquitto({ kind: 'fanout', ws: true, http: true }, async (target) => {
    assert.ok(target.wsPort !== null && target.httpPort !== null);
    assert.equal(target.wsPath, '/mqtt');
    const up = await runUplink(target, smallUplink(`ltfws${process.pid}-`, 0, 'ws'));
    assert.equal(up.endedBy, 'complete');
    assert.deepEqual(up.brokers.map((b) => [b.distinct, b.missing, b.duplicates]), [[1000, 0, 0], [1000, 0, 0]]);
    assert.ok(up.wsServer === 'uWebSockets.js' || up.wsServer === 'ws', String(up.wsServer));

    const o = opts(['http', '--amount', '300', '--connections', '3', '--pipelining', '4', '--warmup', '0.3', '--payload', '100']);
    const pub = await runHttp(target, httpJob(o, 'publish', 1, `lthttp${process.pid}-`));
    // autocannon's amount counts requests written: a connection stops at its share with pipelining - 1 unanswered.
    assert.deepEqual([pub.qos, pub.non2xx, pub.errors, pub.ok2xx, pub.latency.count], [1, 0, 0, 300 - 3 * 3, 291]);
    const d = pub.delivery;
    assert.ok(d);
    assert.deepEqual([d.endedBy, d.unmatched, d.beyondCapacity], ['complete', 0, 0]);
    // Every request is answered 200 or was in flight when a load stopped; nothing answered 200 is missing.
    assert.equal(d.answered200 + pub.unanswered, pub.sent);
    assert.ok(d.answered200 >= 291, `answered ${d.answered200}`);
    assert.deepEqual(d.brokers.map((b) => [b.broker, b.missing, b.duplicates]), [['b1', 0, 0], ['b2', 0, 0]]);
    assert.ok(d.brokers.every((b) => b.extra <= pub.unanswered));
    assert.equal(d.e2e.count, 2 * (d.answered200 + d.brokers[0].extra));
    assert.equal(pub.resources.unit, 'req');
    assert.ok(pub.harnessCpuPct > 0 && pub.harnessCpuPct < 400, `harness ${pub.harnessCpuPct}`);

    const metrics = await runHttp(target, httpJob(opts(['http', '--amount', '20', '--connections', '2', '--warmup', '0']), 'metrics', 0, `ltmet${process.pid}-`));
    assert.deepEqual([metrics.qos, metrics.ok2xx, metrics.non2xx, metrics.delivery], [null, 20, 0, null]);
    const text = renderHttp([
      { ...record(target, pub), scenario: 'http', qos: 1 },
      { ...record(target, metrics), scenario: 'http', qos: null },
    ]);
    assert.match(text, /No peer: mosquitto has no HTTP publish endpoint/);
    assert.match(text, /^1\s+POST \/publish\s+1\s+3\s+4\s+0\.3\s+[\d.]+\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+0\s+0\s+\d+\s+\d+$/m);
    assert.match(text, /^1\s+1\s+[\d,]+\s+b1=0 b2=0\s+b1=0 b2=0\s+/m);
    assert.match(text, /^GET \/metrics\s+-\s+1\s+[\d,]+\s+0\s+0\s+-\s+-/m);
    // autocannon's own figures and tables, beside the harness's histogram, and in the JSON.
    for (const r of [pub, metrics]) {
      const a = r.autocannon.latency;
      assert.ok(Number.isFinite(a.p50) && a.p2_5 <= a.p50 && a.p50 <= a.p99 && a.p99 <= a.max, JSON.stringify(a));
      assert.match(r.autocannon.table, /Latency/);
      assert.match(r.autocannon.table, /2\.5%.*50%.*97\.5%.*99%/);
      assert.match(r.autocannon.table, /Req\/Sec/);
      assert.match(r.autocannon.table, /Code.*Count/);
      assert.ok(!r.autocannon.table.includes('\u001b['), 'no colour codes');
      assert.ok(text.includes(r.autocannon.table.trimEnd()), 'the report prints autocannon\'s table');
      assert.deepEqual(JSON.parse(JSON.stringify(r)).autocannon, r.autocannon, 'kept in the JSON');
    }
    assert.match(text, /Latency, ms, as autocannon measures it/);
    assert.match(text, /^1\s+POST \/publish\s+1(\s+\d+){6}\s+[\d.]+\s+[\d.]+\s+[\d.]+$/m);
  });
});

test('uplink over TLS through the bridge and through mqtt-fanout; the report sets tls beside tcp, with ratios per round', { timeout: 90_000 }, async () => {
  const records: RunRecord<ScenarioResult>[] = [];
  for (const kind of ['mosquitto', 'fanout'] as const) {
    await withMosquitto({ kind, tls: true }, async (target) => {
      assert.ok(target.tlsPort !== null && target.endpoint('tls').ca?.includes('BEGIN CERTIFICATE'));
      for (const transport of ['tcp', 'tls'] as const) {
        const r = await runUplink(target, smallUplink(`lttls${process.pid}${kind[0]}${transport}-`, 1, transport));
        assert.equal(r.endedBy, 'complete', `${kind} ${transport}`);
        assert.equal(r.publisher.acked, 1000, `${kind} ${transport}`);
        assert.deepEqual(r.brokers.map((b) => [b.distinct, b.missing, b.duplicates]), [[1000, 0, 0], [1000, 0, 0]], `${kind} ${transport}`);
        if (transport === 'tls') assert.match(String(r.tlsSession), /^TLSv1\.[23] \S+$/);
        else assert.equal(r.tlsSession, null);
        records.push({ ...record(target, r), transport, qos: 1 });
      }
    });
  }
  const text = renderReport(records);
  assert.match(text, /^1\s+fanout\s+tls\s+1\s+2\s+[\d,]+\s+[\d,]+\s+b1=0 b2=0\s+b1=0 b2=0\s+complete$/m);
  assert.match(text, /^TLS \(tls runs\): .*mosquitto TLSv1\.\d \S+, fanout TLSv1\.\d \S+\.$/m);
  assert.match(text, /^tls\/tcp msg\/s:\s+mosquitto qos1 \d+\.\d\dx, fanout qos1 \d+\.\d\dx$/m);
  assert.match(text, /^fanout\/mosquitto over tls msg\/s:\s+qos1 \d+\.\d\dx$/m);
  assert.match(text, /^tls\/tcp round by round, median \(each round\):$/m);
  assert.match(text, /^ {2}cpu µs\/msg: mosquitto qos1 \d+\.\d\dx \(\d+\.\d\d\), fanout qos1 \d+\.\d\dx \(\d+\.\d\d\)$/m);
  // A target started without the listener says so instead of connecting elsewhere.
  await withMosquitto({}, async (target) => assert.throws(() => target.endpoint('tls'), /without a TLS listener/));
});

test('auth: a connect storm and a QoS 1 stream against mqtt-fanout without and with password and ACL files', { timeout: 120_000 }, async () => {
  const o = opts(['auth', '--connections', '60', '--devices', '4', '--messages', '100', '--topic', 'site/{id}/up']);
  const records: RunRecord<AuthResult>[] = [];
  for (const kind of ['fanout', 'fanout-auth'] as const) {
    const auth = kind === 'fanout-auth' ? { users: Math.max(o.devices, o.connections), topicPattern: o.topic } : undefined;
    await withMosquitto({ kind, auth }, async (target) => {
      const tag = `ltauth${process.pid}${kind === 'fanout' ? 'o' : 'a'}-`;
      const r = await runAuth(target, { connection: connectionJob(o, tag), uplink: uplinkJob(o, 1, tag) });
      assert.equal(r.auth, kind === 'fanout-auth');
      assert.deepEqual([r.storm.ok, r.storm.refused, r.storm.timeouts, r.storm.errors, r.storm.steps.length], [60, 0, 0, 0, 1], kind);
      assert.equal(r.uplink.endedBy, 'complete', kind);
      assert.equal(r.uplink.publisher.acked, 400, kind);
      // Nothing the ACL should allow was dropped (MQTT 3.1.1 devices get a PUBACK for a denied publish too).
      assert.deepEqual(r.uplink.brokers.map((b) => [b.distinct, b.missing]), [[400, 0], [400, 0]], kind);
      if (kind === 'fanout-auth') {
        // The files are in force: no password, or another device's, is refused (CONNACK 0x05).
        const refused = async (creds: { username?: string; password?: string }): Promise<string> => {
          const err = await connectRaw('127.0.0.1', target.devicePort, `${tag}x`, () => undefined, creds).then(
            (socket) => { socket.destroy(); return null; },
            (e: unknown) => e,
          );
          assert.ok(err instanceof ConnectError && err.kind === 'refused', String(err));
          return err.message;
        };
        assert.match(await refused({}), /code 5$/);
        assert.match(await refused({ username: '1', password: deviceCredentials(2).password }), /code 5$/);
      }
      records.push({ ...record(target, r), scenario: 'auth', qos: 1 });
    });
  }
  const text = renderAuth(records);
  assert.match(text, /^1\s+fanout-auth\s+60\/60\s+[\d,]+\s/m);
  assert.match(text, /^1\s+fanout-auth\s+[\d,]+\s+[\d,]+\s+.*b1=0 b2=0\s+b1=0 b2=0\s+complete$/m);
  for (const figure of ['conn/s', 'cpu µs/conn', 'msg/s', 'cpu µs/msg']) {
    assert.match(text, new RegExp(`^${figure.replace('/', '\\/')}\\s+\\d+\\.\\d\\dx\\s+\\d+\\.\\d\\dx\\s+\\d+\\.\\d\\d$`, 'm'), figure);
  }
});

test('per-device: a connect storm (RSS per device) and a QoS 1 stream against mqtt-fanout pooled and per-device', { timeout: 120_000 }, async () => {
  const o = opts(['per-device', '--devices', '30', '--messages', '20']);
  const records: RunRecord<PerDeviceResult>[] = [];
  for (const kind of ['fanout', 'fanout-per-device'] as const) {
    await withMosquitto({ kind }, async (target) => {
      const tag = `ltpd${process.pid}${kind === 'fanout' ? 'o' : 'p'}-`;
      const job = { ...o, connections: 30 };
      const r = await runPerDevice(target, { connection: connectionJob(job, tag), uplink: uplinkJob(job, 1, tag) });
      assert.equal(r.perDevice, kind === 'fanout-per-device');
      assert.deepEqual([r.storm.ok, r.storm.refused, r.storm.timeouts, r.storm.errors], [30, 0, 0, 0], kind);
      assert.ok(Number.isFinite(r.rssPerDeviceKB) && r.rssHeldKB > 0, kind);
      assert.equal(r.uplink.endedBy, 'complete', kind);
      assert.deepEqual(r.uplink.brokers.map((b) => [b.distinct, b.missing, b.duplicates]), [[600, 0, 0], [600, 0, 0]], kind);
      records.push({ ...record(target, r), scenario: 'per-device', qos: 1, devices: 30 });
    });
  }
  const text = renderPerDevice(records);
  assert.match(text, /^1\s+30\s+fanout-per-device\s+30\/30\s+[\d,]+\s/m);
  assert.match(text, /^1\s+30\s+fanout-per-device\s+[\d,]+\s+[\d,]+\s+.*b1=0 b2=0\s+b1=0 b2=0\s+complete$/m);
  for (const figure of ['conn/s', 'cpu µs/conn', 'RSS KB/device', 'msg/s', 'cpu µs/msg']) {
    assert.match(text, new RegExp(`^30\\s+${figure.replace('/', '\\/')}\\s+-?\\d+\\.\\d\\dx\\s+-?\\d+\\.\\d\\dx\\s+-?\\d+\\.\\d\\d$`, 'm'), figure);
  }
});
