// Chaos: a QoS 1 stream through the proxy to two real mosquittos, every message counted by device
// and sequence at both, while something breaks: a broker frozen for 10 s, the network to a broker
// cut or silently partitioned, a shard thread or a writer thread failing (uncaught error, out of
// memory). Every message a device saw acknowledged must arrive at both brokers; duplicates are
// allowed at QoS 1 and reported. The other chaos cases are elsewhere: a broker killed and
// restarted (resilience.test.ts) and the daemon itself killed with the spool on (spool.test.ts).

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Relay } from '../helpers/relay';
import { Stream, Tally } from '../helpers/stream';
import { Scope, sleep, waitFor, withTimeout } from '../helpers/wait';

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0 : Number(m[1]) / 1024;
}

function httpPortOf(daemon: DaemonProcess): number {
  return Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
}

async function crash(daemon: DaemonProcess, thread: string, kind: 'throw' | 'oom' = 'throw'): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${httpPortOf(daemon)}/test/crash?thread=${thread}&kind=${kind}`, { method: 'POST' });
  assert.equal(res.status, 202, await res.text());
}

interface Setup {
  b1: Mosquitto;
  b2: Mosquitto;
  /** In front of b1 when asked for. */
  relay: Relay | null;
  daemon: DaemonProcess;
  at1: Tally;
  at2: Tally;
  run: string;
}

/** Two brokers (b1 behind a relay if `relayed`), a daemon, and tallies at both brokers. */
async function setup(s: Scope, name: string, env: Record<string, string | number>, relayed = false): Promise<Setup> {
  const b1 = s.use(await Mosquitto.start());
  const b2 = s.use(await Mosquitto.start());
  const relay = relayed ? s.use(await Relay.start(b1.port)) : null;
  // keepalive=2 behind the relay: a silent partition is noticed within 3 s.
  const b1Url = relay === null ? b1.url({ pool: 2 }) : relay.url({ pool: 2, keepalive: 2 });
  const daemon = s.use(await DaemonProcess.start({
    FANOUT_BROKERS: `b1=${b1Url},b2=${b2.url({ pool: 2 })}`, FANOUT_HTTP_PORT: 0, FANOUT_TEST_HOOKS: 'true', ...env,
  }));
  await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 2);
  await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 2);
  const run = `chaos/${name}/${process.pid}`;
  return { b1, b2, relay, daemon, run, at1: s.use(await Tally.start(b1.port, run)), at2: s.use(await Tally.start(b2.port, run)) };
}

async function allArrive(t: { diagnostic(m: string): void }, x: Setup, stream: Stream, timeoutMs = 60_000): Promise<void> {
  const acked = [...stream.acked];
  await x.at1.waitAll(acked, 'b1', timeoutMs);
  await x.at2.waitAll(acked, 'b2', timeoutMs);
  t.diagnostic(`${acked.length} acknowledged, all at both brokers; duplicates b1 ${x.at1.duplicates}, b2 ${x.at2.duplicates}`);
}

describe('chaos', { timeout: 300_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('a broker stopped (SIGSTOP) for 10 s with the spool: the other broker\'s stream goes on, memory stays bounded, nothing is lost after SIGCONT', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-chaos-'));
    s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
    const x = await setup(s, 'sigstop', { FANOUT_SPOOL_DIR: dir, FANOUT_ACK: 'local' });
    const stream = s.use(await Stream.connect(x.daemon.port, x.run, { devices: 4, messages: 100_000, window: 10, gapMs: 5 }));
    const publishing = stream.publishAll();
    await waitFor('the stream to flow', () => x.at1.seen.size > 200, { timeoutMs: 20_000 });
    const rssBefore = rssMb(x.daemon.proc.pid!);
    x.b2.pause();
    s.defer(() => x.b2.resume());
    const atStop = x.at1.seen.size;
    await sleep(10_000);
    const during = x.at1.seen.size - atStop;
    const rssDuring = rssMb(x.daemon.proc.pid!);
    x.b2.resume();
    stream.stop();
    await publishing;
    assert.deepEqual(stream.errors, []);
    t.diagnostic(`b1 received ${during} messages during the 10 s b2 was stopped; daemon RSS ${rssBefore.toFixed(0)} -> ${rssDuring.toFixed(0)} MB`);
    assert.ok(during > 1000, `b1's stream went on while b2 was stopped (${during} messages)`);
    assert.ok(rssDuring - rssBefore < 150, `memory stays bounded: the backlog is on disk (RSS grew ${(rssDuring - rssBefore).toFixed(0)} MB)`);
    await allArrive(t, x, stream);
  });

  for (const fault of ['cut', 'blackhole'] as const) {
    test(`the network to a broker ${fault === 'cut' ? 'cut (connections reset, new ones refused)' : 'partitioned silently (nothing passes, nobody is told)'} for 4 s and restored: nothing lost`, async (t) => {
      const s = new Scope();
      t.after(() => s.close());
      const x = await setup(s, `net-${fault}`, {}, true);
      const r = x.relay!;
      const stream = s.use(await Stream.connect(x.daemon.port, x.run, { devices: 4, messages: 600, window: 10, gapMs: 5 }));
      const publishing = stream.publishAll();
      await waitFor('the stream to flow', () => x.at1.seen.size > 200, { timeoutMs: 20_000 });
      if (fault === 'cut') r.cut();
      else r.blackhole();
      const ackedAtFault = stream.acked.size;
      await sleep(4000);
      const ackedDuring = stream.acked.size - ackedAtFault;
      r.restore();
      await publishing;
      assert.deepEqual(stream.errors, []);
      t.diagnostic(`${ackedDuring} acknowledged during the fault (FANOUT_ACK=all: the devices wait for b1); relay connections ${r.connections}`);
      assert.ok(ackedDuring < 100, `without a spool the devices are slowed down, not acknowledged past b1 (${ackedDuring})`);
      await allArrive(t, x, stream);
      if (fault === 'blackhole') {
        assert.ok(await x.daemon.waitForLog((l) => l.msg === 'dropping broker connection' && l.why === 'keep-alive timeout', 5000), 'the silent partition was noticed by the keep-alive');
      }
    });
  }

  test('a shard thread fails (uncaught error): devices on the other shard are untouched, its own reconnect at once, nothing acknowledged is lost', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const x = await setup(s, 'shard', { FANOUT_SHARDS: 2 });
    const stream = s.use(await Stream.connect(x.daemon.port, x.run, { devices: 16, messages: 150, window: 5, gapMs: 10, reconnect: true }));
    const publishing = stream.publishAll();
    await waitFor('the stream to flow', () => stream.acked.size > 300, { timeoutMs: 20_000 });
    await crash(x.daemon, 'shard-0');
    await x.daemon.waitForLog((l) => l.msg === 'shard restarted', 15_000);
    await waitFor('every device to be connected again', () => stream.connected() === 16, { timeoutMs: 10_000 });
    await publishing;
    const dropped = stream.closes.filter((n) => n > 0).length;
    t.diagnostic(`${dropped} of 16 devices lost their connection with the failed shard and reconnected`);
    assert.ok(dropped > 0 && dropped < 16, `the failed shard's devices (and only they) were disconnected (${dropped} of 16)`);
    assert.ok(x.daemon.running, 'the daemon runs on');
    await allArrive(t, x, stream);
  });

  for (const spool of [false, true]) {
    test(`a writer thread fails (uncaught error) ${spool ? 'with the spool: it replays from the spool' : 'without a spool: devices whose publishes it held send them again'}; nothing acknowledged is lost`, async (t) => {
      const s = new Scope();
      t.after(() => s.close());
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-chaos-'));
      s.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
      const x = await setup(s, `writer-${spool}`, spool ? { FANOUT_SPOOL_DIR: dir } : {});
      const stream = s.use(await Stream.connect(x.daemon.port, x.run, { devices: 6, messages: 300, window: 10, gapMs: 5, reconnect: true }));
      const publishing = stream.publishAll();
      await waitFor('the stream to flow', () => stream.acked.size > 300, { timeoutMs: 20_000 });
      await crash(x.daemon, 'writer-b1');
      await x.daemon.waitForLog((l) => l.msg === 'writer recovered after a restart', 15_000);
      await withTimeout(publishing, 60_000, 'every publish to be acknowledged').catch((err: Error) => {
        throw new Error(`${err.message}: ${stream.acked.size} of 1800 so far, connection closes ${JSON.stringify(stream.closes)}, `
          + `daemon: ${JSON.stringify(x.daemon.lines.filter((l) => l.level >= 40 || /recovered|restart/.test(String(l.msg))).slice(-8))}`);
      });
      assert.deepEqual(stream.errors, []);
      assert.equal(stream.acked.size, 1800, 'every publish was acknowledged in the end');
      await allArrive(t, x, stream);
      const recovered = x.daemon.lines.find((l) => l.msg === 'writer recovered after a restart')!;
      t.diagnostic(`recovered writer: ${JSON.stringify({ unanswered: recovered.unanswered, spool: recovered.spool })}; device reconnects ${stream.closes.reduce((a, b) => a + b, 0)}`);
    });
  }

  test('a shard runs out of memory (FANOUT_THREAD_HEAP_MB), with a uWS WebSocket listener: it alone is restarted', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const x = await setup(s, 'oom', { FANOUT_SHARDS: 2, FANOUT_THREAD_HEAP_MB: 64, FANOUT_WS_PORT: 0 });
    const stream = s.use(await Stream.connect(x.daemon.port, x.run, { devices: 8, messages: 200, window: 5, gapMs: 10, reconnect: true }));
    const publishing = stream.publishAll();
    await waitFor('the stream to flow', () => stream.acked.size > 200, { timeoutMs: 20_000 });
    await crash(x.daemon, 'shard-1', 'oom');
    await x.daemon.waitForLog((l) => l.msg === 'shard restarted', 20_000);
    await publishing;
    assert.ok(x.daemon.running, 'the daemon runs on');
    assert.ok(await x.daemon.waitForLog((l) => l.thread === 'shard-1' && typeof l.msg === 'string' && l.msg.startsWith('shard heap nearly exhausted'), 5000), 'the heap watch caught it');
    await allArrive(t, x, stream);
  });
});
