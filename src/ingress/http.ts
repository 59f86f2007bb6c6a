// The HTTP listener (FANOUT_HTTP_PORT) on the supervisor thread: Prometheus metrics, health and
// readiness for orchestrators, POST /publish for systems that cannot speak MQTT, and the live
// dashboard. Publishes are handed to a shard and routed exactly like a device's.

import { isValidMqttString } from '../protocol/properties';
import * as http from 'node:http';
import type { Logger } from 'pino';
import type { MetricsCollector } from '../metrics/collector';
import { RateLimitedLog } from '../log';
import { DASHBOARD_HTML } from './dashboard';
import { aclRefusal, adminRefusal, authenticateHttp, WWW_AUTHENTICATE, WWW_AUTHENTICATE_ADMIN, type HttpAuthRules, type HttpRefusal } from './http-auth';

export interface HttpDeps {
  host: string;
  port: number;
  maxPacketSize: number;
  /** FANOUT_MAX_TOPIC_LENGTH and FANOUT_MAX_TOPIC_LEVELS, as for devices. */
  topicLimits: TopicLimits;
  /** Authentication and ACL, as for devices (see http-auth.ts). */
  auth: HttpAuthRules;
  log: Logger;
  metrics: MetricsCollector;
  /** Every broker that must be connected is. */
  ready(): { ready: boolean; brokers: { name: string; up: number }[] };
  /** Routes a message; resolves with 0 or the first refusal reason once it is acknowledged as
   *  FANOUT_ACK says (QoS 0: once it is in the rings). */
  publish(topic: string, payload: Buffer, qos: number, retain: boolean): Promise<number>;
  /** FANOUT_ADMIN_TOKEN: the Bearer token of the admin endpoints; null: they answer 403. */
  adminToken: string | null;
  /** POST /admin/reload: re-reads the configuration; the answer's body is the JSON summary. */
  reload(): Promise<{ status: number; body: unknown }>;
  /** FANOUT_TEST_HOOKS only: makes a thread fail; false when there is no such thread. */
  testCrash?: (thread: string, kind: 'throw' | 'oom' | 'dump' | 'heap') => boolean;
}

/** How long POST /publish waits for the brokers before answering 504. */
const PUBLISH_TIMEOUT_MS = 30_000;

export interface TopicLimits {
  maxTopicLength: number;
  maxTopicLevels: number;
}

export interface PublishParams {
  topic: string;
  qos: number;
  retain: boolean;
}

/** Checks the query of POST /publish; a string is the error to answer with 400. */
export function parsePublishQuery(query: URLSearchParams, limits: TopicLimits): PublishParams | string {
  const topic = query.get('topic');
  if (topic === null || topic === '') return 'topic is required (?topic=...)';
  if (/[+#]/.test(topic)) return 'topic must not contain the wildcards + or #';
  const bytes = Buffer.from(topic);
  if (!isValidMqttString(bytes, 0, bytes.length)) return 'topic must not contain U+0000, control characters (U+0001-U+001F, U+007F-U+009F) or non-characters';
  if (bytes.length > limits.maxTopicLength) return `topic is longer than FANOUT_MAX_TOPIC_LENGTH (${limits.maxTopicLength} bytes)`;
  if (topic.split('/').length > limits.maxTopicLevels) return `topic has more levels than FANOUT_MAX_TOPIC_LEVELS (${limits.maxTopicLevels})`;
  const qosText = query.get('qos') ?? '0';
  if (!/^[012]$/.test(qosText)) return `qos must be 0, 1 or 2, got ${JSON.stringify(qosText)}`;
  const retainText = (query.get('retain') ?? 'false').toLowerCase();
  if (!['true', 'false', '1', '0'].includes(retainText)) return `retain must be true or false, got ${JSON.stringify(retainText)}`;
  return { topic, qos: Number(qosText), retain: retainText === 'true' || retainText === '1' };
}

export function startHttp(deps: HttpDeps): Promise<http.Server & { boundPort: number }> {
  const json = (res: http.ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'GET /healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case 'GET /readyz': {
        const r = deps.ready();
        json(res, r.ready ? 200 : 503, r);
        return;
      }
      case 'GET /metrics':
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(deps.metrics.prometheus());
        return;
      case 'GET /api/stats':
        json(res, 200, deps.metrics.snapshot());
        return;
      case 'GET /':
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(DASHBOARD_HTML);
        return;
      case 'POST /publish':
        void publish(url, req, res);
        return;
      case 'POST /admin/reload':
        void adminReload(req, res);
        return;
      default:
        if (route === 'POST /test/crash' && deps.testCrash !== undefined) testCrash(url, res, deps.testCrash);
        else if (url.pathname === '/publish') json(res, 405, { error: 'use POST /publish?topic=...&qos=...&retain=... with the payload as body' });
        else json(res, 404, { error: `no route for ${route}` });
    }
  });

  const testCrash = (url: URL, res: http.ServerResponse, crash: NonNullable<HttpDeps['testCrash']>): void => {
    const thread = url.searchParams.get('thread') ?? '';
    const kind = url.searchParams.get('kind') ?? 'throw';
    if (kind !== 'throw' && kind !== 'oom' && kind !== 'dump' && kind !== 'heap') json(res, 400, { error: 'kind must be throw, oom, dump or heap' });
    else if (!crash(thread, kind)) json(res, 404, { error: `no thread ${JSON.stringify(thread)} (shard-<n> or writer-<broker>)` });
    else json(res, 202, { thread, kind });
  };

  const warnings = new RateLimitedLog(deps.log);
  const refuse = (req: http.IncomingMessage, res: http.ServerResponse, r: HttpRefusal): void => {
    req.resume();
    warnings.warn(`publish-${r.status}`, { username: r.username ?? undefined, status: r.status, address: req.socket.remoteAddress, reason: r.error }, 'POST /publish refused');
    if (r.status === 401) res.setHeader('www-authenticate', WWW_AUTHENTICATE);
    json(res, r.status, { error: r.error });
  };

  const adminReload = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    req.resume();
    const refusal = adminRefusal(req.headers.authorization, deps.adminToken);
    if (refusal !== null) {
      warnings.warn(`admin-${refusal.status}`, { status: refusal.status, address: req.socket.remoteAddress, reason: refusal.error }, 'POST /admin/reload refused');
      if (refusal.status === 401) res.setHeader('www-authenticate', WWW_AUTHENTICATE_ADMIN);
      json(res, refusal.status, { error: refusal.error });
      return;
    }
    try {
      const { status, body } = await deps.reload();
      json(res, status, body);
    } catch (err) {
      deps.log.error({ err }, 'POST /admin/reload failed');
      json(res, 500, { error: (err as Error).message });
    }
  };

  const publish = async (url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    // Who asks comes first: an unauthenticated request learns nothing about its topic.
    const who = await authenticateHttp(req.headers.authorization, deps.auth);
    if ('status' in who) {
      refuse(req, res, who);
      return;
    }
    const params = parsePublishQuery(url.searchParams, deps.topicLimits);
    if (typeof params === 'string') {
      req.resume();
      json(res, 400, { error: params });
      return;
    }
    const denied = aclRefusal(who.username, params.topic, deps.auth);
    if (denied !== null) {
      refuse(req, res, denied);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > deps.maxPacketSize) tooLarge = true;
      else chunks.push(chunk);
    }
    if (tooLarge) {
      json(res, 413, { error: `payload larger than FANOUT_MAX_PACKET_SIZE (${deps.maxPacketSize} bytes)` });
      return;
    }
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), PUBLISH_TIMEOUT_MS).unref());
    const reason = await Promise.race([deps.publish(params.topic, Buffer.concat(chunks), params.qos, params.retain), timeout]);
    if (reason === 'timeout') json(res, 504, { error: 'accepted, but the brokers have not acknowledged it yet', qos: params.qos });
    else if (reason >= 0x80) json(res, 502, { error: 'a broker refused the message', reason });
    else json(res, 200, { ok: true, qos: params.qos });
  };

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: deps.host, port: deps.port }, () => {
      server.off('error', reject);
      server.on('error', (err) => deps.log.error({ err }, 'HTTP listener error'));
      resolve(Object.assign(server, { boundPort: (server.address() as { port: number }).port }));
    });
  });
}
