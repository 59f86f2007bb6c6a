// Covered filters (FANOUT_COVER_FILTERS, src/broker/downlink.ts) against a real mosquitto: a
// device filter under another device's broader one is served by the broader subscription (the
// broker holds one subscription, and sends one copy), its retained messages still come, and when
// the broader one goes mid-stream the narrower one gets its own subscription with nothing
// missed. Once with an MQTT 5 broker entry with a pool of 2 (retained messages fetched on the
// second connection) and once with MQTT 3.1.1 and one connection (the filter is subscribed for
// its retained messages, then handed to its cover).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeClient, connectClient, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { parsePrometheus } from '../helpers/prometheus';
import { connectDeviceTo, unique } from '../helpers/target';
import { Scope, waitFor } from '../helpers/wait';

for (const entry of [{ protocol: 5, pool: 2 }, { protocol: 4, pool: 1 }] as const) {
  describe(`covered filters, broker entry MQTT ${entry.protocol === 5 ? '5' : '3.1.1'} with a pool of ${entry.pool}`, { timeout: 90_000 }, () => {
    const scope = new Scope();
    let up: Mosquitto;
    let daemon: DaemonProcess;
    let metricsUrl = '';

    before(async () => {
      up = scope.use(await Mosquitto.start());
      daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: entry.pool, protocol: entry.protocol })}`, FANOUT_HTTP_PORT: 0 }));
      metricsUrl = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}/metrics`;
      await waitPoolOnline(up.port, daemon.proxyId, 'up', entry.pool);
    });
    after(() => scope.close());

    const gauges = async (): Promise<{ filters: number; covered: number }> => {
      const m = parsePrometheus(await (await fetch(metricsUrl)).text());
      const of = (name: string): number => {
        const f = m.get(name);
        assert.ok(f, `${name} is exposed`);
        return f.samples.filter((s) => s.labels.broker === 'up').reduce((n, s) => n + s.value, 0);
      };
      return { filters: of('fanout_upstream_filters'), covered: of('fanout_upstream_filters_covered') };
    };

    test('a filter under a broader one: one subscription at the broker, its retained message, one copy of each message; the broader one leaves mid-stream and nothing is missed', async (t) => {
      const base = unique('cov');
      const pub = await connectClient(up.port, { clientId: `${base}-pub` });
      t.after(() => closeClient(pub));
      await pub.publishAsync(`${base}/a`, 'kept', { qos: 1, retain: true });
      t.after(() => pub.publishAsync(`${base}/a`, '', { qos: 1, retain: true }).then(() => undefined, () => undefined));

      const wide = await connectDeviceTo(daemon.port, { clientId: `${base}-wide`, protocolVersion: 5 }, 'wide');
      t.after(() => wide.close());
      await wide.subscribeOk(`${base}/#`, { qos: 1 });
      await wide.waitFor(1, (m) => m.retain && m.text === 'kept', 'the retained message (wide)');
      const narrow = await connectDeviceTo(daemon.port, { clientId: `${base}-narrow`, protocolVersion: 4 }, 'narrow');
      t.after(() => narrow.close());
      await narrow.subscribeOk(`${base}/a`, { qos: 1 });
      await narrow.waitFor(1, (m) => m.retain && m.text === 'kept', 'the retained message (narrow)');
      await waitFor('one subscription at the broker, one filter covered', async () => {
        const g = await gauges();
        return g.filters === 1 && g.covered === 1;
      }, { timeoutMs: 5000, intervalMs: 100 });

      for (let i = 0; i < 20; i++) await pub.publishAsync(`${base}/a`, `one-${i}`, { qos: 1 });
      await narrow.waitFor(20, (m) => m.text.startsWith('one-'), '20 messages (narrow)');
      await wide.waitFor(20, (m) => m.text.startsWith('one-'), '20 messages (wide)');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(narrow.count((m) => m.text.startsWith('one-')), 20, 'one copy each (narrow)');
      assert.equal(wide.count((m) => m.text.startsWith('one-')), 20, 'one copy each (wide)');

      // A stream; the broader filter is released in the middle of it.
      const N = 400;
      const sending = (async () => {
        for (let i = 0; i < N; i++) {
          await pub.publishAsync(`${base}/a`, `s-${i}`, { qos: 1 });
          if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
        }
      })();
      await narrow.waitFor(N / 4, (m) => m.text.startsWith('s-'), 'a quarter of the stream', 20_000);
      await wide.unsubscribe(`${base}/#`);
      await sending;
      await narrow.waitFor(N, (m) => m.text.startsWith('s-'), 'the whole stream', 20_000);
      const got = new Set(narrow.messages.filter((m) => m.text.startsWith('s-')).map((m) => m.text));
      const missing = Array.from({ length: N }, (_, i) => `s-${i}`).filter((s) => !got.has(s));
      assert.deepEqual(missing, [], 'nothing missed while the cover went');
      await waitFor('the narrow filter has a subscription of its own', async () => {
        const g = await gauges();
        return g.filters === 1 && g.covered === 0;
      }, { timeoutMs: 5000, intervalMs: 100 });
    });
  });
}

describe('FANOUT_COVER_FILTERS=false: one subscription per distinct filter', { timeout: 60_000 }, () => {
  const scope = new Scope();
  after(() => scope.close());

  test('a filter under a broader one has a subscription of its own', async (t) => {
    const up = scope.use(await Mosquitto.start());
    const daemon = scope.use(await DaemonProcess.start({ FANOUT_BROKERS: `up=${up.url({ pool: 1 })}`, FANOUT_HTTP_PORT: 0, FANOUT_COVER_FILTERS: 'false' }));
    await waitPoolOnline(up.port, daemon.proxyId, 'up', 1);
    const url = `http://127.0.0.1:${Number(daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort)}/metrics`;
    const base = unique('nocov');
    const dev = await connectDeviceTo(daemon.port, { clientId: `${base}-d`, protocolVersion: 5 }, 'device');
    t.after(() => dev.close());
    await dev.subscribeOk([`${base}/#`, `${base}/a`], { qos: 1 });
    await new Promise((r) => setTimeout(r, 1000));
    const m = parsePrometheus(await (await fetch(url)).text());
    const sum = (name: string): number => m.get(name)!.samples.filter((s) => s.labels.broker === 'up').reduce((n, s) => n + s.value, 0);
    assert.equal(sum('fanout_upstream_filters'), 2);
    assert.equal(sum('fanout_upstream_filters_covered'), 0);
  });
});
