// The durable spool (FANOUT_SPOOL_DIR) against two real mosquittos: a broker that is away holds
// back neither the devices nor the other broker (FANOUT_ACK=local acknowledges once the message
// is on disk); a kill -9 of the daemon loses nothing it acknowledged; the bound blocks or drops
// the oldest; telemetry topics are conflated while a broker is away; a torn spool tail is
// skipped with a log line.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connectClient, closeClient, Collector, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { Stream, Tally } from '../helpers/stream';
import { Scope, sleep, waitFor } from '../helpers/wait';

const tmpSpool = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-spool-'));

async function metric(daemon: DaemonProcess, name: string, labels: Record<string, string>): Promise<number> {
  const httpPort = Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
  const families = parsePrometheus(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text());
  const sample = families.get(name)?.samples.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(sample, `${name}${JSON.stringify(labels)} is exposed`);
  return sample.value;
}

describe('durable spool', { timeout: 180_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('FANOUT_ACK=local: a stopped broker holds back neither the devices nor the other broker; it gets everything after SIGCONT', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const b2 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1 })}`,
      FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local', FANOUT_HTTP_PORT: 0,
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    const run = `spool/stop/${process.pid}`;
    const at1 = s.use(await Tally.start(b1.port, run));
    const at2 = s.use(await Tally.start(b2.port, run));
    b2.pause();
    s.defer(() => b2.resume());
    const stream = s.use(await Stream.connect(daemon.port, run, { devices: 4, messages: 500, window: 20 }));
    // Without the spool the devices would wait for b2's acknowledgements: here all complete.
    await stream.publishAll();
    assert.deepEqual(stream.errors, []);
    assert.equal(stream.acked.size, 2000);
    await at1.waitAll(stream.acked, 'b1 while b2 is stopped');
    assert.equal(at2.seen.size, 0, 'b2 is stopped: it cannot have received anything');
    await sleep(1100); // the writers publish their counters once a second
    const unsent = await metric(daemon, 'fanout_spool_unsent_bytes', { broker: 'b2' });
    const inflight = await metric(daemon, 'fanout_broker_inflight', { broker: 'b2' });
    const held = await metric(daemon, 'fanout_spool_bytes', { broker: 'b2' });
    assert.ok(unsent + inflight >= 2000 && held > 0, `b2's spool holds its backlog (${unsent} bytes unsent, ${inflight} in flight, ${held} bytes held)`);
    b2.resume();
    await at2.waitAll(stream.acked, 'b2 after SIGCONT', 60_000);
    t.diagnostic(`duplicates: b1 ${at1.duplicates}, b2 ${at2.duplicates}`);
  });

  test('kill -9 of the daemon with a backlog for a broker that is down: after a restart every acknowledged message arrives', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const b2 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const env = {
      FANOUT_BROKERS: `b1=${b1.url({ pool: 2 })},b2=${b2.url({ pool: 2 })}`,
      FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local', FANOUT_SPOOL_FSYNC_MS: 5,
    };
    const first = s.use(await DaemonProcess.start(env));
    await waitPoolOnline(b1.port, first.proxyId, 'b1', 2);
    await waitPoolOnline(b2.port, first.proxyId, 'b2', 2);
    const run = `spool/kill/${process.pid}`;
    const at1 = s.use(await Tally.start(b1.port, run));
    const at2 = s.use(await Tally.start(b2.port, run));
    await b2.stop();
    const stream = s.use(await Stream.connect(first.port, run, { devices: 5, messages: 2000, window: 20 }));
    // Never awaited: publishes in flight when the daemon dies stay pending in mqtt.js.
    void stream.publishAll();
    await waitFor('1,500 acknowledgements', () => stream.acked.size >= 1500, { timeoutMs: 60_000 });
    first.proc.kill('SIGKILL');
    await first.exited;
    stream.stop();
    const acked = [...stream.acked];
    t.diagnostic(`daemon killed after ${acked.length} acknowledgements`);
    await stream.close();
    await b2.start();
    const second = s.use(await DaemonProcess.start({ ...env, FANOUT_PROXY_ID: first.proxyId }));
    await at1.waitAll(acked, 'b1 after the restart', 60_000);
    await at2.waitAll(acked, 'b2 (down during the first run) after the restart', 60_000);
    t.diagnostic(`duplicates after the restart: b1 ${at1.duplicates}, b2 ${at2.duplicates}`);
    assert.ok(await second.waitForLog((l) => l.msg === 'spool: replaying what the previous run left unfinished' && l.dir === path.join(dir, 'b2'), 5000),
      'the restarted daemon says it replays b2\'s spool');
  });

  test('FANOUT_SPOOL_OVERFLOW=block: a full spool slows the devices down, and nothing is lost', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1, inflight: 20 })}`, FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local',
      FANOUT_SPOOL_MAX_BYTES: 1048576, FANOUT_RING_BYTES: 65536, FANOUT_MAX_PACKET_SIZE: 16384,
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    const run = `spool/block/${process.pid}`;
    const at1 = s.use(await Tally.start(b1.port, run));
    b1.pause();
    s.defer(() => b1.resume());
    // 3 MiB of messages against a 1 MiB spool (and a 64 KiB ring).
    const stream = s.use(await Stream.connect(daemon.port, run, { devices: 2, messages: 1500, window: 10, payloadBytes: 1000 }));
    const publishing = stream.publishAll();
    let plateau = -1;
    await waitFor('the acknowledgements to stop growing', async () => {
      const before = stream.acked.size;
      await sleep(1500);
      if (stream.acked.size === before && before > 0) plateau = before;
      return plateau >= 0;
    }, { timeoutMs: 60_000 });
    assert.ok(plateau < 3000, `devices are held back by the full spool (${plateau} of 3000 acknowledged)`);
    assert.ok(plateau > 500, `the spool took about its bound first (${plateau} acknowledged)`);
    b1.resume();
    await publishing;
    assert.deepEqual(stream.errors, []);
    await at1.waitAll(stream.all(), 'b1 after SIGCONT', 60_000);
    t.diagnostic(`acknowledgements stopped at ${plateau} while b1 was stopped; duplicates ${at1.duplicates}`);
  });

  test('FANOUT_SPOOL_OVERFLOW=drop-oldest: the devices go on, the oldest messages are dropped and counted, the newest arrive', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const daemon = s.use(await DaemonProcess.start({
      // 20 in flight: the rest waits in the spool, not in the socket towards the stopped broker.
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1, inflight: 20 })}`, FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local', FANOUT_HTTP_PORT: 0,
      FANOUT_SPOOL_MAX_BYTES: 1048576, FANOUT_SPOOL_OVERFLOW: 'drop-oldest', FANOUT_RING_BYTES: 65536, FANOUT_MAX_PACKET_SIZE: 16384,
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    const run = `spool/drop/${process.pid}`;
    const at1 = s.use(await Tally.start(b1.port, run));
    b1.pause();
    s.defer(() => b1.resume());
    const stream = s.use(await Stream.connect(daemon.port, run, { devices: 1, messages: 3000, window: 10, payloadBytes: 1000 }));
    await stream.publishAll();
    assert.equal(stream.acked.size, 3000, 'every publish was acknowledged: the full spool dropped instead of blocking');
    await sleep(1100); // the writers publish their counters once a second
    const dropped = await metric(daemon, 'fanout_spool_dropped_total', { broker: 'b1' });
    assert.ok(dropped > 0, 'drops are counted');
    assert.ok(await daemon.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('spool full: oldest messages dropped'), 5000), 'and logged');
    b1.resume();
    const newest = stream.all().slice(-200);
    await at1.waitAll(newest, 'b1: the newest messages', 60_000);
    const arrived = at1.seen.size;
    t.diagnostic(`dropped ${dropped}, arrived ${arrived} of 3000`);
    assert.ok(arrived + dropped >= 3000, `what did not arrive was dropped and counted (${arrived} arrived, ${dropped} dropped)`);
    assert.ok(at1.missing(stream.all().slice(0, 100)).length > 0, 'the oldest went first');
  });

  test('FANOUT_CONFLATE_TOPICS: while a broker is away only the newest message of each telemetry topic is kept; other topics keep everything', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })}`, FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local', FANOUT_HTTP_PORT: 0,
      FANOUT_CONFLATE_TOPICS: 'conf/+/telemetry',
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    const seen = s.use(await Collector.start(b1.port, 'conf/#', { qos: 1, reconnect: true }));
    await b1.stop();
    // Conflation applies while the broker is away: once the writer has seen it go.
    await daemon.waitForLog((l) => l.msg === 'broker connection lost' && l.broker === 'b1');
    const device = await connectClient(daemon.port, { clientId: `conf-${process.pid}` });
    s.defer(() => closeClient(device));
    for (let i = 0; i < 10; i++) {
      for (const d of ['a', 'b', 'c']) await publish(device, `conf/${d}/telemetry`, `${d}${i}`, { qos: 1 });
      await publish(device, 'conf/a/events', `event${i}`, { qos: 1 });
    }
    await b1.start();
    await seen.waitForCount(13, () => true, 30_000, '3 telemetry + 10 events');
    await sleep(500);
    const telemetry = seen.messages.filter((m) => m.topic.endsWith('/telemetry')).map((m) => m.payload.toString()).sort();
    const events = seen.messages.filter((m) => m.topic.endsWith('/events')).map((m) => m.payload.toString());
    assert.deepEqual(telemetry, ['a9', 'b9', 'c9']);
    assert.deepEqual(events, Array.from({ length: 10 }, (_, i) => `event${i}`), 'events are kept, in order');
    await sleep(1100);
    assert.equal(await metric(daemon, 'fanout_spool_conflated_total', { broker: 'b1' }), 27);
  });

  test('a torn tail in the spool (power loss) is skipped with a log line; what precedes it is delivered', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    const dir = tmpSpool();
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const env = { FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })}`, FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local' };
    const first = s.use(await DaemonProcess.start(env));
    await waitPoolOnline(b1.port, first.proxyId, 'b1', 1);
    const run = `spool/torn/${process.pid}`;
    const at1 = s.use(await Tally.start(b1.port, run));
    await b1.stop();
    const stream = s.use(await Stream.connect(first.port, run, { devices: 1, messages: 100, window: 5 }));
    await stream.publishAll();
    await stream.close();
    await first.stop();
    // Cut the last entry in half, as a power loss during the write would.
    const segs = fs.readdirSync(path.join(dir, 'b1')).filter((f) => f.endsWith('.seg')).sort();
    const last = segs.map((f) => path.join(dir, 'b1', f)).filter((f) => fs.statSync(f).size > 0).pop()!;
    fs.truncateSync(last, fs.statSync(last).size - 20);
    await b1.start();
    const second = s.use(await DaemonProcess.start({ ...env, FANOUT_PROXY_ID: first.proxyId }));
    await at1.waitAll(stream.all().slice(0, 99), 'b1: the 99 whole entries', 30_000);
    const warn = await second.waitForLog((l) => l.msg === 'spool: corrupt or truncated entries skipped');
    assert.ok(Number(warn.skippedBytes) > 0);
    assert.equal(at1.seen.has(stream.key(0, 99)), false, 'the torn entry is not delivered');
    assert.ok(second.running, 'the daemon serves on');
  });
});
