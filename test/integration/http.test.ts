// The HTTP listener: /metrics parsed with a Prometheus text-format parser, /healthz, /readyz
// following the brokers' state, POST /publish end to end to two brokers (and answering only
// once they acknowledged), every bad-input case, and the dashboard's data.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePrometheus, type PromFamily } from '../helpers/prometheus';
import { Collector, closeClient, connectClient, publish, waitPoolOnline } from '../helpers/clients';
import { DaemonProcess } from '../helpers/daemon';
import { Mosquitto } from '../helpers/mosquitto';
import { Scope, sleep, waitFor } from '../helpers/wait';

let seq = 0;
const unique = (p: string): string => `${p}/${process.pid}-${++seq}`;

describe('HTTP: metrics, health, publish', { timeout: 120_000 }, () => {
  const scope = new Scope();
  let b1: Mosquitto;
  let b2: Mosquitto;
  let daemon: DaemonProcess;
  let base = '';
  let at1: Collector;
  let at2: Collector;

  before(async () => {
    b1 = scope.use(await Mosquitto.start());
    b2 = scope.use(await Mosquitto.start());
    daemon = scope.use(await DaemonProcess.start({
      FANOUT_BROKERS: `b1=${b1.url({ pool: 1, protocol: '3.1.1' })},b2=${b2.url({ pool: 1, protocol: 5 })}`,
      FANOUT_HTTP_PORT: 0,
      FANOUT_WS_PORT: 0,
    }));
    const ready = daemon.lines.find((l) => l.msg === 'mqtt-fanout ready')!;
    base = `http://127.0.0.1:${Number(ready.httpPort)}`;
    await waitPoolOnline(b1.port, daemon.proxyId, 'b1', 1);
    await waitPoolOnline(b2.port, daemon.proxyId, 'b2', 1);
    at1 = scope.use(await Collector.start(b1.port, 'http/#', { qos: 2, protocolVersion: 5, rap: true }));
    at2 = scope.use(await Collector.start(b2.port, 'http/#', { qos: 2, protocolVersion: 5, rap: true }));
  });
  after(() => scope.close());

  type Families = Map<string, PromFamily>;
  const metrics = async (): Promise<Families> => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return parsePrometheus(await res.text());
  };
  const family = (all: Families, name: string): PromFamily => {
    const f = all.get(name);
    assert.ok(f, `metric ${name} is exposed`);
    return f;
  };
  /** The value of the one sample of `name` (a family member name) whose labels include `labels`. */
  const value = (all: Families, familyName: string, labels: Record<string, string>, name = familyName): number => {
    const m = family(all, familyName).samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
    assert.ok(m, `${name}${JSON.stringify(labels)} is exposed`);
    return m.value;
  };

  test('GET /healthz answers 200', async () => {
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 200);
  });

  test('GET /metrics: connections by transport and shard, publishes, messages per broker and QoS, ring fill, latency summaries', async (t) => {
    const tcp = await connectClient(daemon.port, { clientId: unique('m-tcp') });
    t.after(() => closeClient(tcp));
    const ws = await connectClient(`ws://127.0.0.1:${daemon.wsPort}/mqtt`, { clientId: unique('m-ws') });
    t.after(() => closeClient(ws));
    for (let i = 0; i < 20; i++) await publish(tcp, unique('http/m'), `m${i}`, { qos: 1 });
    // Latency histograms reach the supervisor once a second: wait until this traffic is in.
    const counted = (f: Families, broker: string): number =>
      f.get('fanout_broker_rtt_seconds')?.samples.find((x) => x.name === 'fanout_broker_rtt_seconds_count' && x.labels.broker === broker)?.value ?? 0;
    const all = await waitFor('the round trips in /metrics', async () => {
      const f = await metrics();
      return counted(f, 'b1') >= 20 && counted(f, 'b2') >= 20 && (f.get('fanout_ack_latency_seconds')?.samples.find((x) => x.name === 'fanout_ack_latency_seconds_count')?.value ?? 0) >= 20 ? f : null;
    }, { timeoutMs: 15_000, intervalMs: 250 });
    const conns = family(all, 'fanout_connections');
    assert.equal(conns.type, 'gauge');
    const byTransport = (tr: string): number => conns.samples.filter((m) => m.labels.transport === tr).reduce((n, m) => n + m.value, 0);
    assert.equal(byTransport('tcp'), 1);
    assert.equal(byTransport('ws'), 1);
    assert.deepEqual(new Set(conns.samples.map((m) => m.labels.shard)), new Set(['0', '1']), 'one series per shard');
    const published = family(all, 'fanout_device_publishes_total').samples.reduce((n, m) => n + m.value, 0);
    assert.ok(published >= 20, `device publishes counted: ${published}`);
    for (const broker of ['b1', 'b2']) {
      assert.ok(value(all, 'fanout_broker_messages_out_total', { broker, qos: '1' }) >= 20, `QoS 1 messages to ${broker}`);
      assert.equal(value(all, 'fanout_broker_connections_up', { broker }), 1);
      assert.equal(value(all, 'fanout_ring_fill_bytes', { broker, shard: '0', direction: 'up' }), 0);
      assert.equal(family(all, 'fanout_broker_rtt_seconds').type, 'summary');
      assert.ok(value(all, 'fanout_broker_rtt_seconds', { broker }, 'fanout_broker_rtt_seconds_count') >= 20, `round trips measured at ${broker}`);
      assert.ok(value(all, 'fanout_broker_rtt_seconds', { broker, quantile: '0.99' }) > 0);
    }
    assert.ok(value(all, 'fanout_ack_latency_seconds', {}, 'fanout_ack_latency_seconds_count') >= 20, 'every QoS 1 publish is in the ack latency');
    for (const q of ['0.5', '0.9', '0.99', '0.999']) assert.ok(value(all, 'fanout_ack_latency_seconds', { quantile: q }) > 0, `quantile ${q}`);
    assert.ok(family(all, 'fanout_drops_total').samples.length > 0);
    // Each thread's memory, sampled once a second: heap in use within what V8 committed.
    for (const thread of ['main', 'shard-0', 'shard-1', 'writer-b1', 'writer-b2']) {
      const used = value(all, 'fanout_thread_heap_used_bytes', { thread });
      assert.ok(used > 0 && used <= value(all, 'fanout_thread_heap_committed_bytes', { thread }), `${thread}: heap used within committed`);
      assert.ok(value(all, 'fanout_thread_external_bytes', { thread }) > 0, `${thread}: external memory`);
    }
    assert.ok(value(all, 'fanout_process_resident_bytes', {}) > 0);
  });

  test('GET /metrics: messages by broker and QoS, and bytes, in and out, count exactly the traffic sent', async (t) => {
    const id = unique('exact');
    const dev = await connectClient(daemon.port, { clientId: `${id}-dev` });
    t.after(() => closeClient(dev));
    let received = 0;
    dev.on('message', () => { received++; });
    const down = `http/down/${id}`;
    await dev.subscribeAsync(`${down}/#`, { qos: 2 });
    const upstream = await connectClient(b1.port, { clientId: `${id}-up` });
    t.after(() => closeClient(upstream));
    const snapshot = async (): Promise<Record<string, number>> => {
      const all = await metrics();
      const total = (name: string): number => family(all, name).samples.reduce((n, m) => n + m.value, 0);
      const out: Record<string, number> = { deviceBytesOut: total('fanout_device_bytes_out_total') };
      for (const broker of ['b1', 'b2']) {
        out[`${broker}BytesIn`] = value(all, 'fanout_broker_bytes_in_total', { broker });
        out[`${broker}BytesOut`] = family(all, 'fanout_broker_bytes_out_total').samples.filter((x) => x.labels.broker === broker).reduce((n, x) => n + x.value, 0);
        for (const qos of ['0', '1', '2']) {
          out[`${broker}BytesOut${qos}`] = value(all, 'fanout_broker_bytes_out_total', { broker, qos });
          out[`${broker}In${qos}`] = value(all, 'fanout_broker_messages_in_total', { broker, qos });
          out[`${broker}Out${qos}`] = value(all, 'fanout_broker_messages_out_total', { broker, qos });
        }
      }
      return out;
    };
    // MQTT 3.1.1 PUBLISH: fixed header, remaining length, topic, packet id for QoS 1/2, payload.
    const publishSize = (topic: string, payloadLen: number, qos: number): number => {
      const rest = 2 + Buffer.byteLength(topic) + (qos > 0 ? 2 : 0) + payloadLen;
      return 1 + (rest < 128 ? 1 : rest < 16384 ? 2 : 3) + rest;
    };
    const payload = Buffer.alloc(1000, 1);
    // Counters are refreshed once a second: wait until nothing moves before taking the baseline.
    await sleep(1200);
    const base = await snapshot();

    // Broker -> device: 3 messages at QoS 0, 7 at QoS 1, 2 at QoS 2, from b1 (which serves subscriptions).
    const plan: [number, number][] = [[0, 3], [1, 7], [2, 2]];
    let downBytes = 0;
    for (const [qos, n] of plan) {
      for (let i = 0; i < n; i++) {
        const topic = `${down}/q${qos}/${i}`;
        await publish(upstream, topic, payload, { qos: qos as 0 | 1 | 2 });
        downBytes += publishSize(topic, payload.length, qos);
      }
    }
    // Device -> brokers: 5 messages at QoS 2, forwarded to both.
    const upTopic = unique('http/up');
    for (let i = 0; i < 5; i++) await publish(dev, upTopic, payload, { qos: 2 });
    const upBytes = 5 * publishSize(upTopic, payload.length, 2);
    await waitFor('the device to receive the 12 messages', () => received === 12);

    // Each QoS 2 message also carries a PUBREL (4 bytes) from the broker, and to the device.
    const pubrels = 2 * 4;
    const diff = (now: Record<string, number>): Record<string, number> =>
      Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - base[k]]));
    const d = await waitFor('the traffic in /metrics', async () => {
      const x = diff(await snapshot());
      return x.b1In1 >= 7 && x.b1In2 >= 2 && x.b1Out2 >= 5 && x.b2Out2 >= 5 && x.b1BytesIn >= downBytes + pubrels
        && x.deviceBytesOut >= downBytes + pubrels ? x : null;
    }, { timeoutMs: 15_000, intervalMs: 250 });
    assert.deepEqual([d.b1In0, d.b1In1, d.b1In2], [3, 7, 2], 'messages from b1 by QoS');
    assert.deepEqual([d.b2In0, d.b2In1, d.b2In2], [0, 0, 0], 'b2 serves no subscription');
    for (const broker of ['b1', 'b2']) assert.deepEqual([d[`${broker}Out0`], d[`${broker}Out1`], d[`${broker}Out2`]], [0, 0, 5], `messages to ${broker} by QoS`);
    assert.equal(d.b1BytesOut, upBytes, 'PUBLISH bytes to b1 (MQTT 3.1.1)');
    assert.deepEqual([d.b1BytesOut0, d.b1BytesOut1, d.b1BytesOut2], [0, 0, upBytes], 'PUBLISH bytes to b1 by QoS');
    assert.ok(d.b2BytesOut >= upBytes, `PUBLISH bytes to b2: ${d.b2BytesOut}`);
    assert.deepEqual([d.b2BytesOut0, d.b2BytesOut1, d.b2BytesOut2], [0, 0, d.b2BytesOut], 'PUBLISH bytes to b2 by QoS: all QoS 2');
    // At QoS 0 and 1 too, each under its label and in the broker's total.
    const before = await snapshot();
    const q0 = unique('http/bq0');
    const q1 = unique('http/bq1');
    await publish(dev, q0, payload, { qos: 0 });
    await publish(dev, q1, payload, { qos: 1 });
    const e = await waitFor('the QoS 0 and 1 bytes in /metrics', async () => {
      const now = await snapshot();
      const x = Object.fromEntries(Object.entries(now).map(([k, v]) => [k, v - before[k]]));
      return x.b1BytesOut1 >= publishSize(q1, payload.length, 1) && x.b1BytesOut0 >= publishSize(q0, payload.length, 0) ? x : null;
    }, { timeoutMs: 15_000, intervalMs: 250 });
    assert.equal(e.b1BytesOut0, publishSize(q0, payload.length, 0), 'QoS 0 bytes to b1');
    assert.equal(e.b1BytesOut1, publishSize(q1, payload.length, 1), 'QoS 1 bytes to b1');
    assert.equal(e.b1BytesOut2, 0);
    assert.equal(e.b1BytesOut, publishSize(q0, payload.length, 0) + publishSize(q1, payload.length, 1), 'bytes to b1 over every QoS');
    // The 5 QoS 2 publishes are acknowledged with a PUBREC and a PUBCOMP (4 bytes each, with
    // MQTT 3.1.1), by each broker and to the device. Keep-alive answers (2 bytes) may come in
    // between; nothing else should.
    const acks = 5 * 2 * 4;
    const near = (got: number, expected: number, what: string): void =>
      assert.ok(got >= expected && got <= expected + 8, `${what}: ${got}, expected ${expected}`);
    near(d.b1BytesIn, downBytes + pubrels + acks, 'bytes from b1');
    // MQTT 5 acknowledgements may carry a reason code.
    assert.ok(d.b2BytesIn >= acks && d.b2BytesIn <= 5 * 2 * 6 + 8, `bytes from b2 are only acknowledgements: ${d.b2BytesIn}`);
    near(d.deviceBytesOut, downBytes + pubrels + acks, 'bytes to devices');
  });

  const gauges = async (): Promise<Record<string, number>> => {
    const all = await metrics();
    const total = (name: string): number => family(all, name).samples.reduce((n, m) => n + m.value, 0);
    return {
      inflight1: value(all, 'fanout_broker_inflight', { broker: 'b1' }), inflight2: value(all, 'fanout_broker_inflight', { broker: 'b2' }),
      reconnects1: value(all, 'fanout_broker_reconnects_total', { broker: 'b1' }), reconnects2: value(all, 'fanout_broker_reconnects_total', { broker: 'b2' }),
      up1: value(all, 'fanout_broker_connections_up', { broker: 'b1' }), up2: value(all, 'fanout_broker_connections_up', { broker: 'b2' }),
      pauses: total('fanout_backpressure_pauses_total'),
    };
  };

  test('GET /metrics: with b2 stalled, fanout_broker_inflight of b2 rises to the device window (100) and the device is paused (fanout_backpressure_pauses_total); after SIGCONT it goes back to 0', async (t) => {
    const dev = await connectClient(daemon.port, { clientId: unique('stall'), protocolVersion: 4 });
    t.after(() => closeClient(dev));
    const before = await waitFor('nothing in flight', async () => {
      const g = await gauges();
      return g.inflight1 === 0 && g.inflight2 === 0 ? g : null;
    }, { timeoutMs: 10_000, intervalMs: 250 });
    const topic = unique('http/stall');
    b2.pause();
    // An MQTT 3.1.1 device with 120 QoS 1 publishes at once, more than FANOUT_MAX_INFLIGHT.
    const all = Promise.all(Array.from({ length: 120 }, (_, i) => dev.publishAsync(topic, String(i), { qos: 1 })));
    try {
      const during = await waitFor('100 messages in flight at b2', async () => {
        const g = await gauges();
        return g.inflight2 === 100 ? g : null;
      }, { timeoutMs: 10_000, intervalMs: 250, detail: () => 'see fanout_broker_inflight' });
      assert.equal(during.inflight1, 0, 'b1 acknowledges as it goes');
      assert.ok(during.pauses > before.pauses, `backpressure pauses: ${before.pauses} -> ${during.pauses}`);
      assert.equal(during.reconnects2, before.reconnects2, 'a stalled broker is no reconnect');
    } finally {
      b2.resume();
    }
    await all;
    await waitFor('nothing in flight again', async () => (await gauges()).inflight2 === 0, { timeoutMs: 10_000, intervalMs: 250 });
    await at2.waitForCount(120, (m) => m.topic === topic, 10_000, 'the 120 messages at b2');
  });

  test('POST /publish reaches both brokers with its QoS and retain flag, and answers 200', async () => {
    const topic = unique('http/pub');
    const res = await fetch(`${base}/publish?topic=${encodeURIComponent(topic)}&qos=1&retain=true`, { method: 'POST', body: 'from http' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { ok: true, qos: 1 });
    for (const c of [at1, at2]) {
      const [m] = await c.waitForCount(1, (x) => x.topic === topic, 10_000, 'the HTTP publish at a broker');
      assert.equal(m.payload.toString(), 'from http');
      assert.equal(m.qos, 1);
      assert.equal(m.retain, true);
    }
  });

  test('POST /publish at QoS 1 answers only after every broker acknowledged: with b2 down it waits for b2', async () => {
    await b2.stop();
    try {
      const topic = unique('http/wait');
      let answered = false;
      const pending = fetch(`${base}/publish?topic=${encodeURIComponent(topic)}&qos=1`, { method: 'POST', body: 'held' }).then((r) => {
        answered = true;
        return r;
      });
      await at1.waitForCount(1, (x) => x.topic === topic, 10_000, 'the message at b1');
      await sleep(500);
      assert.equal(answered, false, 'answered before b2 acknowledged');
      await b2.start();
      const res = await pending;
      assert.equal(res.status, 200);
    } finally {
      if (!b2.running) await b2.start();
    }
  });

  test('GET /readyz is 503 while a broker is down and 200 again once it is back; fanout_ready follows it', async () => {
    await waitFor('readyz 200', async () => (await fetch(`${base}/readyz`)).status === 200, { timeoutMs: 15_000 });
    assert.equal(value(await metrics(), 'fanout_ready', {}), 1);
    await b1.stop();
    try {
      const res = await waitFor('readyz 503', async () => {
        const r = await fetch(`${base}/readyz`);
        return r.status === 503 ? r : null;
      }, { timeoutMs: 10_000 });
      const body = await res.json() as { ready: boolean; brokers: { name: string; up: number }[] };
      assert.equal(body.ready, false);
      assert.equal(body.brokers.find((b) => b.name === 'b1')?.up, 0);
      assert.equal(value(await metrics(), 'fanout_ready', {}), 0);
    } finally {
      await b1.start();
    }
    await waitFor('readyz 200 again', async () => (await fetch(`${base}/readyz`)).status === 200, { timeoutMs: 15_000 });
    assert.equal(value(await metrics(), 'fanout_ready', {}), 1);
  });

  test('POST /publish bad input: each case gets a 4xx JSON error naming the problem', async () => {
    const cases: [string, RequestInit, number, RegExp][] = [
      ['/publish', { method: 'POST', body: 'x' }, 400, /topic is required/],
      ['/publish?topic=a/%2B', { method: 'POST', body: 'x' }, 400, /wildcards/],
      ['/publish?topic=a/%23', { method: 'POST', body: 'x' }, 400, /wildcards/],
      ['/publish?topic=a&qos=3', { method: 'POST', body: 'x' }, 400, /qos must be 0, 1 or 2/],
      ['/publish?topic=a&retain=maybe', { method: 'POST', body: 'x' }, 400, /retain must be true or false/],
      ['/publish?topic=a', { method: 'POST', body: Buffer.alloc(262145) }, 413, /FANOUT_MAX_PACKET_SIZE/],
      ['/publish?topic=a', { method: 'GET' }, 405, /use POST/],
      ['/nothing-here', { method: 'GET' }, 404, /no route/],
    ];
    for (const [path, init, status, error] of cases) {
      const res = await fetch(`${base}${path}`, init);
      assert.equal(res.status, status, `${init.method} ${path}`);
      const body = await res.json() as { error: string };
      assert.match(body.error, error, `${init.method} ${path}`);
    }
  });

  test('GET / serves the dashboard page and /api/stats the numbers it shows', async () => {
    const page = await fetch(`${base}/`);
    assert.equal(page.status, 200);
    const html = await page.text();
    assert.match(html, /<canvas id="chartIn">/);
    assert.doesNotMatch(html, /https?:\/\//, 'no external resources (CDN)');
    const stats = await (await fetch(`${base}/api/stats`)).json() as { brokers: { name: string }[]; history: unknown[] };
    assert.deepEqual(stats.brokers.map((b) => b.name), ['b1', 'b2']);
    assert.ok(stats.history.length > 0);
  });

  test('GET /metrics: a broker restart adds to fanout_broker_reconnects_total of that broker only', async () => {
    const before = await waitFor('both brokers up', async () => {
      const g = await gauges();
      return g.up1 === 1 && g.up2 === 1 ? g : null;
    }, { timeoutMs: 15_000, intervalMs: 250 });
    await b2.restart();
    const after = await waitFor('b2 reconnected', async () => {
      const g = await gauges();
      return g.up2 === 1 && g.reconnects2 > before.reconnects2 ? g : null;
    }, { timeoutMs: 15_000, intervalMs: 250 });
    assert.equal(after.reconnects1, before.reconnects1, 'b1 did not reconnect');
  });
});
