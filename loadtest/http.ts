// Scenario "http": autocannon against mqtt-fanout's HTTP listener. POST /publish
// runs check delivery the way uplink does: every body carries the receivers'
// payload header (publisher 0, a sequence number, the send time), each
// response is matched to the request it answers, and receivers on both
// upstreams must hold every sequence number that was answered 200. GET
// /metrics runs measure the scrape alone. There is no peer: mosquitto has no
// HTTP publish endpoint.
//
// Matching responses to requests: autocannon writes requests on each
// connection in order and HTTP/1.1 answers them in order (pipelining too), so
// a FIFO of sequence numbers per connection, filled as setupRequest builds
// them and emptied as 'response' events come, says which request each status
// belongs to. A connection autocannon resets (timeout, error) loses what it
// had in flight: those requests count as unanswered, like those still in
// flight when the run ends.
import { PassThrough } from 'node:stream';
import autocannon from 'autocannon';
import { LatencySummary, newHistogram, recordMs, summarize } from './latency';
import { PROBE_ID, Qos, wallNow } from './mqtt-wire';
import type { HttpEndpoint } from './options';
import { readCpuSeconds, ResourceReport, resourceReport, UsageMeter } from './proc-usage';
import { sleep } from './procs';
import { Receiver } from './receiver';
import type { Target } from './targets';

export interface HttpJob {
  endpoint: HttpEndpoint;
  /** Of POST /publish; ignored for metrics. */
  qos: Qos;
  connections: number;
  /** Seconds of load, or null when `amount` bounds the run. */
  durationS: number | null;
  amount: number | null;
  pipelining: number;
  /** Seconds of the same load before the measured one (its requests are verified too, not timed). */
  warmupS: number;
  payload: number;
  idleTimeoutS: number;
  runTag: string;
  /** Sequence numbers the receivers make room for; requests beyond count as unverifiable. */
  capacity: number;
}

export interface HttpDelivery {
  broker: string;
  /** Answered 200 and not received. */
  missing: number;
  duplicates: number;
  /** Received although not answered 200 (unanswered when the run ended, or a non-2xx that went out anyway). */
  extra: number;
}

export interface HttpResult {
  endpoint: HttpEndpoint;
  qos: Qos | null;
  connections: number;
  pipelining: number;
  /** Length of the load, s (autocannon's). */
  durationS: number;
  /** autocannon: responses per second, mean of its one-second samples. */
  reqPerSec: number;
  /**
   * CPU of this process (autocannon and the receivers, one thread) over the load, % of one core:
   * near 100 the load generator, not the daemon, set req/s.
   */
  harnessCpuPct: number;
  /** Requests written, the warm-up's included. */
  sent: number;
  responses: number;
  ok2xx: number;
  non2xx: number;
  statusCodes: Record<string, number>;
  /** autocannon's connection errors and timeouts. */
  errors: number;
  timeouts: number;
  /** Seconds of warm-up load before the measured run. */
  warmupS: number;
  /** Requests without an answer: in flight at the end (of the warm-up too), or lost with a reset connection. */
  unanswered: number;
  /** Request to response, 2xx only, µs resolution (autocannon's own histogram keeps whole ms). */
  latency: LatencySummary;
  /** autocannon's own figures, as its command prints them: every response, whole milliseconds. */
  autocannon: {
    /** ms: autocannon's latency percentiles, mean, standard deviation and maximum. */
    latency: AutocannonLatency;
    /** autocannon.printResult: its latency, req/s and bytes/s table and its status codes, as the
     *  autocannon command prints them. */
    table: string;
  };
  /** POST /publish only. */
  delivery: {
    endedBy: 'complete' | 'idle-timeout';
    /** Answered 200: these must reach every broker. */
    answered200: number;
    /** Responses that matched no request (the FIFO bookkeeping went wrong; must be 0). */
    unmatched: number;
    /** Sequence numbers beyond the receivers' room, not verified. */
    beyondCapacity: number;
    brokers: HttpDelivery[];
    /** POST written to arrival at an upstream subscriber. */
    e2e: LatencySummary;
    /** From the end of the load until every 200 was at every broker (or the idle timeout), ms. */
    settleMs: number;
  } | null;
  /** Per 2xx response: the daemon's CPU (all threads) and the upstreams', over the load and the settling. */
  resources: ResourceReport;
}

/** The latency figures of autocannon's own tables, in ms (whole milliseconds). */
export interface AutocannonLatency {
  p2_5: number;
  p50: number;
  p90: number;
  p97_5: number;
  p99: number;
  p99_9: number;
  average: number;
  stddev: number;
  max: number;
}

/** autocannon's own view of a run: the figures and the text its command would print. */
export function autocannonView(result: autocannon.Result): HttpResult['autocannon'] {
  const l = result.latency;
  return {
    latency: { p2_5: l.p2_5, p50: l.p50, p90: l.p90, p97_5: l.p97_5, p99: l.p99, p99_9: l.p99_9, average: l.average, stddev: l.stddev, max: l.max },
    // A stream that is no terminal: plain text, without colour codes.
    table: autocannon.printResult(result, { outputStream: new PassThrough(), renderStatusCodes: true }),
  };
}

/** autocannon resets a connection after this long without an answer; above the daemon's 30 s, so its 504 shows. */
const REQUEST_TIMEOUT_S = 35;

export function httpTopic(runTag: string): { topic: string; filter: string } {
  return { topic: `http/${runTag}/p`, filter: `http/${runTag}/#` };
}

function publishPath(topic: string, qos: Qos): string {
  return `/publish?topic=${encodeURIComponent(topic)}&qos=${qos}`;
}

/** POSTs a probe until every receiver saw it: the whole path is live before the clock starts. */
async function probe(port: number, topic: string, payload: number, receivers: Receiver[], timeoutMs = 20_000): Promise<void> {
  const body = Buffer.alloc(payload);
  body.writeUInt32BE(PROBE_ID, 0);
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (!receivers.every((r) => r.probeSeen)) {
    if (Date.now() > deadline) {
      const missing = receivers.filter((r) => !r.probeSeen).map((r) => r.opts.broker);
      throw new Error(`probe POST did not reach ${missing.join(', ')} within ${timeoutMs} ms (last answer: ${last})`);
    }
    try {
      const res = await fetch(`http://127.0.0.1:${port}${publishPath(topic, 0)}`, { method: 'POST', body });
      last = `${res.status} ${await res.text()}`.trim();
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
}

interface Tracking {
  next: number;
  /** Bit n: sequence n was answered 200. */
  ok: Uint8Array;
  answered200: number;
  unmatched: number;
  lost: number;
  fifos: number[][];
}

function runAutocannon(opts: autocannon.Options): Promise<autocannon.Result> {
  return new Promise((resolve, reject) => {
    autocannon(opts, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

export async function runHttp(target: Target, job: HttpJob, onProgress?: (text: string) => void): Promise<HttpResult> {
  if (target.httpPort === null) throw new Error(`${target.kind} was started without an HTTP listener`);
  const port = target.httpPort;
  const publish = job.endpoint === 'publish';
  const { topic, filter } = httpTopic(job.runTag);
  const receivers: Receiver[] = [];
  const hist = newHistogram();
  let meter: UsageMeter | null = null;
  const t: Tracking = { next: 0, ok: new Uint8Array(publish ? Math.ceil(job.capacity / 8) : 0), answered200: 0, unmatched: 0, lost: 0, fifos: [] };
  try {
    if (publish) {
      for (const up of target.upstreams) {
        receivers.push(
          await Receiver.connect({ broker: up.name, port: up.port, filter, devices: 1, messages: job.capacity, clientId: `${job.runTag}recv-${up.name}` }),
        );
      }
      await probe(port, topic, job.payload, receivers);
    }
    // The connection whose request setupRequest is building: set by its 'request' event. Null for the
    // request autocannon builds in a Client's constructor, before setupClient: that one is `orphan`.
    let building: number[] | null = null;
    let orphan: number | null = null;
    const setupRequest = (req: autocannon.Request): autocannon.Request => {
      const seq = t.next++;
      const body = Buffer.alloc(job.payload);
      body.writeUInt32BE(seq, 4);
      body.writeDoubleBE(wallNow(), 8);
      req.body = body;
      if (building !== null) building.push(seq);
      else orphan = seq;
      building = null;
      return req;
    };
    const setupClient = (client: autocannon.Client): void => {
      const fifo: number[] = [];
      t.fifos.push(fifo);
      if (orphan !== null) fifo.push(orphan);
      orphan = null;
      // A connection's first request was built with the Client; every later one is built after this event.
      client.on('request', () => (building = client.reqsMade > 0 ? fifo : null));
      client.on('response', (status: number, _bytes: number, responseMs: number) => {
        if (status >= 200 && status < 300) recordMs(hist, responseMs);
        if (!publish) return;
        const seq = fifo.shift();
        if (seq === undefined) t.unmatched++;
        else if (status === 200 && seq < job.capacity) {
          t.ok[seq >>> 3] |= 1 << (seq & 7);
          t.answered200++;
        }
      });
      // A timeout reconnects and writes `pipelining` new requests before it is reported: those stay.
      client.on('timeout', () => (t.lost += fifo.splice(0, Math.max(0, fifo.length - job.pipelining)).length));
      // A connection error is reported before the new connection writes anything.
      client.on('connError', () => (t.lost += fifo.splice(0).length));
    };
    const request: autocannon.Request = publish
      ? { method: 'POST', path: publishPath(topic, job.qos), headers: { 'content-type': 'application/octet-stream' }, setupRequest }
      : { method: 'GET', path: '/metrics' };
    const load = { url: `http://127.0.0.1:${port}`, connections: job.connections, pipelining: job.pipelining, timeout: REQUEST_TIMEOUT_S, requests: [request], setupClient };
    let phase = 'warm-up';
    let harnessCpu = NaN;
    let startedAt = Date.now();
    const progress = setInterval(() => onProgress?.(`${phase} ${((Date.now() - startedAt) / 1000).toFixed(1)}s${publish ? ` sent ${t.next} answered 200 ${t.answered200}` : ''}`), 250);
    let result: autocannon.Result;
    try {
      // The first seconds run several times slower (JIT of the daemon's HTTP path and of autocannon): not what a service sees.
      if (job.warmupS > 0) await runAutocannon({ ...load, duration: job.warmupS });
      hist.reset();
      phase = 'load';
      meter = new UsageMeter(target.watched()).start();
      startedAt = Date.now();
      harnessCpu = readCpuSeconds(process.pid) ?? NaN;
      result = await runAutocannon({ ...load, ...(job.amount !== null ? { amount: job.amount } : { duration: job.durationS ?? 10 }) });
      harnessCpu = (readCpuSeconds(process.pid) ?? NaN) - harnessCpu;
    } finally {
      clearInterval(progress);
    }
    const loadEnd = Date.now();
    const harnessCpuPct = (harnessCpu * 100_000) / Math.max(1, loadEnd - startedAt);

    let delivery: HttpResult['delivery'] = null;
    if (publish) {
      const written = t.next;
      let endedBy: 'complete' | 'idle-timeout' = 'complete';
      let lastDistinct = -1;
      let lastProgressAt = Date.now();
      for (;;) {
        if (receivers.every((r) => r.compare(t.ok, written).missing === 0)) break;
        const broken = receivers.find((r) => r.error !== null);
        if (broken) throw new Error([`receiver ${broken.opts.broker}: ${broken.error}`, ...target.casualties()].join('; '));
        const distinct = receivers.reduce((n, r) => n + r.distinct, 0);
        if (distinct !== lastDistinct) {
          lastDistinct = distinct;
          lastProgressAt = Date.now();
        } else if (Date.now() - lastProgressAt > job.idleTimeoutS * 1000) {
          endedBy = 'idle-timeout';
          break;
        }
        onProgress?.(`waiting for deliveries: ${receivers.map((r) => `${r.opts.broker} ${r.distinct}`).join(' ')} of ${t.answered200} answered 200`);
        await sleep(100);
      }
      const settleMs = Date.now() - loadEnd;
      // Late duplicates would otherwise go unseen.
      await sleep(200);
      const e2eHist = newHistogram();
      for (const r of receivers) e2eHist.add(r.hist);
      const e2e = summarize(e2eHist);
      e2eHist.destroy();
      delivery = {
        endedBy,
        answered200: t.answered200,
        unmatched: t.unmatched,
        beyondCapacity: Math.max(0, written - job.capacity),
        brokers: receivers.map((r) => ({ broker: r.opts.broker, ...r.compare(t.ok, written), duplicates: r.duplicates })),
        e2e,
        settleMs,
      };
    }
    const procs = meter?.stop() ?? [];
    meter = null;
    const windowS = (Date.now() - startedAt) / 1000;
    const statusCodes = Object.fromEntries(Object.entries(result.statusCodeStats).map(([code, s]) => [code, s.count]));
    const responses = Object.values(statusCodes).reduce((a, b) => a + b, 0);
    const ok2xx = result['2xx'];
    return {
      endpoint: job.endpoint,
      qos: publish ? job.qos : null,
      connections: job.connections,
      pipelining: job.pipelining,
      warmupS: job.warmupS,
      durationS: result.duration,
      reqPerSec: result.requests.average,
      harnessCpuPct,
      sent: publish ? t.next : (result.requests.sent ?? responses),
      responses,
      ok2xx,
      non2xx: result.non2xx,
      statusCodes,
      errors: result.errors,
      timeouts: result.timeouts,
      unanswered: publish ? t.lost + t.fifos.reduce((n, f) => n + f.length, 0) : Math.max(0, (result.requests.sent ?? responses) - responses),
      latency: summarize(hist),
      autocannon: autocannonView(result),
      delivery,
      resources: resourceReport(procs, 'req', ok2xx, windowS),
    };
  } finally {
    meter?.stop();
    hist.destroy();
    await Promise.all(receivers.map((r) => r.close()));
    for (const r of receivers) r.destroy();
  }
}
