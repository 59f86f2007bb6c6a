// Process lifecycle: configuration errors (exit code 2, one line on stderr naming the variable),
// start-up failures, and the graceful shutdown on SIGTERM: exit code 0 in time, MQTT 5 devices
// told "server shutting down", brokers left with an "offline" status, and nothing that was
// acknowledged to a device lost.

import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import type { IDisconnectPacket, MqttClient } from 'mqtt';
import { Collector, closeClient, connectClient, publish, waitPoolOnline, type Received } from '../helpers/clients';
import { DaemonProcess, runDaemonToExit } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { HOST } from '../helpers/ports';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('bad configuration: exit code 2 and one line on stderr naming the variable', { timeout: 150_000 }, () => {
  const cases: Array<{ env: Record<string, string>; variable: string; prefix: string; secret?: string }> = [
    { env: { FANOUT_PORT: '99999' }, variable: 'FANOUT_PORT', prefix: 'mqtt-fanout: FANOUT_PORT="99999" is invalid: ' },
    { env: { FANOUT_ACK: 'maybe' }, variable: 'FANOUT_ACK', prefix: 'mqtt-fanout: FANOUT_ACK="maybe" is invalid: ' },
    // Through the launcher, which preloads nothing for a value it does not know.
    { env: { FANOUT_MALLOC: 'tcmalloc' }, variable: 'FANOUT_MALLOC', prefix: 'mqtt-fanout: FANOUT_MALLOC="tcmalloc" is invalid: ' },
    { env: { FANOUT_FOO: '1' }, variable: 'FANOUT_FOO', prefix: 'mqtt-fanout: FANOUT_FOO="1" ' },
    { env: { FANOUT_SHARDS: '0' }, variable: 'FANOUT_SHARDS', prefix: 'mqtt-fanout: FANOUT_SHARDS="0" is invalid: ' },
    { env: { FANOUT_BROKERS: 'b1=http://127.0.0.1:1883' }, variable: 'FANOUT_BROKERS', prefix: 'mqtt-fanout: FANOUT_BROKERS="b1=http://127.0.0.1:1883" is invalid: ' },
    {
      env: { FANOUT_BROKERS: 'b1=mqtt://user:s3cr3t-pw@127.0.0.1:99999' }, variable: 'FANOUT_BROKERS',
      prefix: 'mqtt-fanout: FANOUT_BROKERS=', secret: 's3cr3t-pw',
    },
    {
      env: { FANOUT_RECONNECT_MIN_MS: '5000', FANOUT_RECONNECT_MAX_MS: '1000' }, variable: 'FANOUT_RECONNECT_',
      prefix: 'mqtt-fanout: FANOUT_RECONNECT_',
    },
  ];
  for (const c of cases) {
    test(`${Object.entries(c.env).map(([k, v]) => `${k}=${v}`).join(' ')}`, async () => {
      const r = await runDaemonToExit({ FANOUT_RECONNECT_MIN_MS: undefined, FANOUT_RECONNECT_MAX_MS: undefined, ...c.env });
      assert.equal(r.code, 2, `exit code (signal ${r.signal}); stderr: ${r.stderr}`);
      const lines = r.stderr.split('\n').filter((l) => l !== '');
      assert.equal(lines.length, 1, `stderr must be one line: ${JSON.stringify(r.stderr)}`);
      assert.ok(lines[0].startsWith(c.prefix), `stderr ${JSON.stringify(lines[0])} should start with ${JSON.stringify(c.prefix)}`);
      assert.ok(lines[0].includes(c.variable));
      assert.doesNotMatch(r.stdout, /mqtt-fanout ready/, 'the daemon got ready with a bad configuration');
      if (c.secret) assert.ok(!r.stderr.includes(c.secret) && !r.stdout.includes(c.secret), `the password leaked: ${r.stderr}`);
    });
  }

  test('a port that is already in use: the daemon exits non-zero instead of sharing or hanging', async (t) => {
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen({ host: HOST, port: 0, exclusive: true }, () => resolve()));
    t.after(() => holder.close());
    const port = (holder.address() as net.AddressInfo).port;
    const r = await runDaemonToExit({ FANOUT_PORT: port, FANOUT_BROKERS: 'b1=mqtt://127.0.0.1:1' });
    assert.equal(r.code, 1, `exit code (signal ${r.signal}); stdout: ${r.stdout.slice(-1000)} stderr: ${r.stderr}`);
    assert.doesNotMatch(r.stdout, /mqtt-fanout ready/);
    assert.match(r.stdout, /EADDRINUSE|in use/i);
  });
});

describe('graceful shutdown', { timeout: 150_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('SIGTERM with connected devices: exit 0 in time, MQTT 5 devices get DISCONNECT 0x8B, brokers see "offline", acknowledged messages are at the brokers', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const SHUTDOWN_MS = 3000;
    const b1 = s.use(await Mosquitto.start());
    const b2 = s.use(await Mosquitto.start());
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 2 })},b2=${b2.url({ pool: 2, protocol: 5 })}`,
      FANOUT_SHUTDOWN_TIMEOUT_MS: SHUTDOWN_MS,
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 2);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 2);
    const run = `life/${process.pid}-${Date.now()}`;
    const at1 = s.use(await Collector.start(b1.port, `${run}/#`, { qos: 1 }));
    const at2 = s.use(await Collector.start(b2.port, `${run}/#`, { qos: 1 }));

    interface Device { client: MqttClient; v5: boolean; disconnects: IDisconnectPacket[]; closed: boolean }
    const devices: Device[] = [];
    for (let i = 0; i < 6; i++) {
      const v5 = i % 2 === 0;
      const client = await connectClient(daemon.port, { protocolVersion: v5 ? 5 : 4, clientId: `life-${process.pid}-${i}` });
      s.defer(() => closeClient(client));
      const d: Device = { client, v5, disconnects: [], closed: false };
      client.on('disconnect', (p: IDisconnectPacket) => d.disconnects.push(p));
      client.on('close', () => { d.closed = true; });
      client.on('error', () => undefined);
      devices.push(d);
    }
    // Acknowledged before SIGTERM.
    const acked: string[] = [];
    await Promise.all(devices.map(async (d, i) => {
      for (let k = 0; k < 50; k++) {
        const topic = `${run}/before/${i}/${k}`;
        await publish(d.client, topic, topic, { qos: 1 });
        acked.push(topic);
      }
    }));
    // One device keeps publishing through the shutdown: whatever of that is acknowledged must
    // be at the brokers too.
    const streamer = devices[1];
    let streaming = true;
    const during = (async () => {
      for (let k = 0; streaming && !streamer.closed; k++) {
        const topic = `${run}/during/${k}`;
        streamer.client.publish(topic, topic, { qos: 1 }, (err) => { if (!err) acked.push(topic); });
        await sleep(5);
      }
    })();
    await sleep(200);

    const exit = await daemon.stop(SHUTDOWN_MS + 10_000);
    streaming = false;
    await during;
    assert.ok(exit.ms <= SHUTDOWN_MS + 3000, `took ${exit.ms} ms to exit (FANOUT_SHUTDOWN_TIMEOUT_MS=${SHUTDOWN_MS})`);

    await waitFor('every device connection to be closed', () => devices.every((d) => d.closed), { timeoutMs: 5000 });
    for (const [i, d] of devices.entries()) {
      if (d.v5) assert.deepEqual(d.disconnects.map((p) => p.reasonCode), [0x8b], `device ${i} (MQTT 5): DISCONNECT reason codes`);
      else assert.deepEqual(d.disconnects, [], `device ${i} (MQTT 3.1.1) must not get a DISCONNECT`);
    }

    // Retained status of every broker connection is "offline" now.
    for (const [name, b, pool] of [['b1', b1, 2], ['b2', b2, 2]] as const) {
      const status = await Collector.start(b.port, 'fanout/status/+', { qos: 1 });
      t.after(() => status.close());
      const mine = (m: Received): boolean => m.topic.startsWith(`fanout/status/${daemon.proxyId}-${name}-`);
      await status.waitForCount(pool, mine, 5000, `${pool} retained status messages on ${name}`);
      const got = Object.fromEntries(status.messages.filter(mine).map((m) => [m.topic, m.payload.toString()]));
      const expected = Object.fromEntries(Array.from({ length: pool }, (_, n) => [`fanout/status/${daemon.proxyId}-${name}-${n}`, 'offline']));
      assert.deepEqual(got, expected, `${name}: retained status after the shutdown`);
    }

    // Everything acknowledged (before and during the shutdown) is at both brokers.
    t.diagnostic(`${acked.length} messages acknowledged, ${acked.filter((x) => x.includes('/during/')).length} of them while shutting down`);
    for (const [name, c] of [['b1', at1], ['b2', at2]] as const) {
      await waitFor(`every acknowledged message at ${name}`, () => acked.every((topic) => c.messages.some((m) => m.topic === topic)), {
        timeoutMs: 5000, detail: () => `missing: ${acked.filter((topic) => !c.messages.some((m) => m.topic === topic)).slice(0, 10).join(', ')}`,
      });
    }
    // Checked last so that the checks above run whatever the exit status.
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit status; stderr: ${daemon.stderr}`);
    assert.equal(daemon.stderr, '', 'stderr after a graceful shutdown');
  });

  test('SIGTERM while a broker is stalled (SIGSTOP) with messages pending: exit 0 within FANOUT_SHUTDOWN_TIMEOUT_MS + 3 s', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const SHUTDOWN_MS = 2000;
    const b1 = s.use(await Mosquitto.start());
    const b2 = s.use(await Mosquitto.start());
    s.defer(() => b2.resume());
    const daemon = s.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })},b2=${b2.url({ pool: 1 })}`, FANOUT_SHUTDOWN_TIMEOUT_MS: SHUTDOWN_MS,
    }));
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    const client = await connectClient(daemon.port, { clientId: `life-stall-${process.pid}` });
    s.defer(() => closeClient(client));
    client.on('error', () => undefined);
    b2.pause();
    for (let i = 0; i < 10; i++) client.publish(`life/stall/${i}`, 'x', { qos: 1 });
    await sleep(300);
    const exit = await daemon.stop(SHUTDOWN_MS + 10_000);
    assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit status; stderr: ${daemon.stderr}`);
    assert.ok(exit.ms <= SHUTDOWN_MS + 3000, `took ${exit.ms} ms to exit (FANOUT_SHUTDOWN_TIMEOUT_MS=${SHUTDOWN_MS})`);
  });

  test('SIGTERM on idle daemons: exit code 0 and nothing on stderr, every time (6 daemons)', async (t) => {
    const s = new Scope();
    t.after(() => s.close());
    const b1 = s.use(await Mosquitto.start());
    // Six start-ups at once on a 2-core machine: a generous start-up time (this test is about the
    // exit), and every daemon that did start is cleaned up even if another one did not.
    const started = await Promise.allSettled(Array.from({ length: 6 }, () => DaemonProcess.start({ FANOUT_BROKERS: `b1=${b1.url({ pool: 1 })}`, FANOUT_SHARDS: 1 }, 90_000)));
    const daemons: DaemonProcess[] = [];
    for (const r of started) if (r.status === 'fulfilled') daemons.push(s.use(r.value));
    const failed = started.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
    for (const d of daemons) await waitPoolOnline(b1.port, d.proxyId, 'b1', 1);
    const exits = await Promise.all(daemons.map((d) => d.stop(15_000)));
    const bad = exits.map((e, i) => ({ code: e.code, signal: e.signal, stderr: daemons[i].stderr.split('\n').slice(0, 5).join(' | ') }))
      .filter((e) => e.code !== 0 || e.signal !== null || e.stderr !== '');
    assert.deepEqual(bad, [], `${bad.length} of ${daemons.length} daemons did not exit cleanly on SIGTERM`);
  });
});
