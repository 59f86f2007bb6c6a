// The fanout_sessions gauge under client-id races: persistent CONNECTs with one client id
// arriving together on different shards, some closed before their session arrived from the
// other shard. Every session is counted in once and out once: the gauge never goes below 0
// and is back at 0 once the sessions expired.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as mqttPacket from 'mqtt-packet';
import { parsePrometheus } from '../helpers/prometheus';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

describe('session count', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let daemon: DaemonProcess;
  let base = '';

  before(async () => {
    const broker = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${broker.url({ pool: 1 })}`,
      FANOUT_SHARDS: 2,
      FANOUT_HTTP_PORT: 0,
      FANOUT_SESSION_EXPIRY_MAX: 1,
      FANOUT_MAX_CONNECT_RATE: 0,
    }));
    base = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}`;
  });
  after(() => scope.close());

  /** fanout_sessions by shard. */
  const sessions = async (): Promise<number[]> => {
    const f = parsePrometheus(await (await fetch(`${base}/metrics`)).text()).get('fanout_sessions');
    assert.ok(f, 'fanout_sessions is exposed');
    return f.samples.map((s) => s.value);
  };

  /** A raw socket that sends a persistent CONNECT and stays open for `holdMs`. */
  const connectFor = (clientId: string, version: 4 | 5, holdMs: number): Promise<void> => new Promise((resolve) => {
    const socket = net.connect(daemon.port, '127.0.0.1', () => {
      socket.write(mqttPacket.generate({
        cmd: 'connect', protocolId: 'MQTT', protocolVersion: version, clientId, clean: false, keepalive: 30,
        properties: version === 5 ? { sessionExpiryInterval: 60 } : undefined,
      }));
      setTimeout(() => socket.destroy(), holdMs);
    });
    socket.on('error', () => { /* closed by a takeover */ });
    socket.on('close', () => resolve());
  });

  test('simultaneous persistent CONNECTs with one client id, some gone before their session arrived: never below 0, back to 0 after expiry', async (t) => {
    const lowest: number[] = [];
    for (let round = 0; round < 30; round++) {
      const id = `count-${process.pid}-${round % 5}`;
      const version = round % 2 === 0 ? 4 : 5;
      // Held 0-40 ms: some close while their session is still on its way from the other shard.
      await Promise.all(Array.from({ length: 4 }, (_, i) => connectFor(id, version, (i * 13 + round) % 41)));
      lowest.push(Math.min(...await sessions()));
    }
    t.diagnostic(`fanout_sessions by shard, lowest seen per round: ${lowest.join(' ')}`);
    await sleep(1500);
    let last: number[] = [];
    const final = await waitFor('every session to expire', async () => {
      last = await sessions();
      lowest.push(Math.min(...last));
      return last.reduce((a, b) => a + b, 0) === 0 ? last : null;
    }, { timeoutMs: 15_000, intervalMs: 200, detail: () => `fanout_sessions by shard: ${JSON.stringify(last)}` });
    assert.deepEqual(final.map((v) => Math.max(v, 0)), final, 'no shard counts fewer than 0 sessions');
    assert.ok(Math.min(...lowest) >= 0, `a shard counted ${Math.min(...lowest)} sessions`);
  });
});
