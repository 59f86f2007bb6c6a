// dashboards/: every metric name the Grafana dashboard and the Prometheus alert rules query is one
// a running daemon exports on /metrics (a summary's or histogram's _sum/_count/_bucket series
// count as its family's), and each point of the issue has its panel or alert.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DaemonProcess } from '../helpers/daemon';
import { parsePrometheus, type PromFamily } from '../helpers/prometheus';
import { Scope } from '../helpers/wait';

const ROOT = path.resolve(__dirname, '..', '..', '..');
/** Series Prometheus itself makes, not the daemon. */
const PROMETHEUS_OWN = new Set(['up']);

const dashboard = JSON.parse(fs.readFileSync(path.join(ROOT, 'dashboards', 'grafana', 'mqtt-fanout.json'), 'utf8')) as {
  panels: { title: string; targets: { expr: string }[] }[];
};
const alertsText = fs.readFileSync(path.join(ROOT, 'dashboards', 'prometheus', 'alerts.yaml'), 'utf8');
/** alert name -> expr, from the rule file's `- alert:` and `expr:` lines. */
const alerts = new Map<string, string>();
{
  let current = '';
  for (const line of alertsText.split('\n')) {
    const name = /^\s*- alert: (\S+)$/.exec(line);
    if (name) current = name[1];
    const expr = /^\s*expr: (.+)$/.exec(line);
    if (expr) alerts.set(current, expr[1]);
  }
}

/** The metric names in a PromQL expression: identifiers not followed by `(` (functions), not in
 *  label matchers, by/on clauses or quoted strings. */
function metricNames(expr: string): string[] {
  const bare = expr.replace(/"[^"]*"/g, '""').replace(/\{[^}]*\}/g, '').replace(/\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  return [...bare.matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()/g)].map((m) => m[1])
    .filter((n) => !['and', 'or', 'unless', 'offset', 'bool', 'group_left', 'group_right'].includes(n) && !/^\d/.test(n) && !/^\d+[smhd]$/.test(n));
}

function exported(families: Map<string, PromFamily>, name: string): boolean {
  if (families.has(name)) return true;
  const m = /^(.*)_(sum|count|bucket)$/.exec(name);
  return m !== null && ['summary', 'histogram'].includes(families.get(m[1])?.type ?? '') && (m[2] !== 'bucket' || families.get(m[1])!.type === 'histogram');
}

describe('dashboards against the daemon\'s /metrics', { timeout: 60_000 }, () => {
  const scope = new Scope();
  let families: Map<string, PromFamily>;
  before(async () => {
    const d = scope.use(await DaemonProcess.start({ FANOUT_HTTP_PORT: 0 }));
    const port = Number(d.lines.find((l) => l.msg === 'mqtt-fanout ready')!.httpPort);
    families = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
  });
  after(() => scope.close());

  test('the name check itself: a made-up name fails, suffixes of a summary pass', () => {
    assert.equal(exported(families, 'fanout_no_such_metric'), false);
    assert.equal(exported(families, 'fanout_ack_latency_seconds_count'), true);
    assert.equal(exported(families, 'fanout_ack_latency_seconds_bucket'), false, 'a summary has no buckets');
    assert.deepEqual(metricNames('sum by (broker) (rate(fanout_x_total{a="b"}[5m])) / on() group_left max(fanout_y)'), ['fanout_x_total', 'fanout_y']);
  });

  test('every metric the Grafana dashboard queries is exported', () => {
    const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
    assert.ok(exprs.length >= 10);
    for (const expr of exprs) {
      const names = metricNames(expr);
      assert.ok(names.length > 0, `no metric in ${expr}`);
      for (const name of names) assert.ok(exported(families, name), `${name} (in ${expr}) is not on /metrics`);
    }
    const queried = new Set(exprs.flatMap(metricNames));
    for (const name of ['fanout_broker_messages_out_total', 'fanout_broker_messages_in_total', 'fanout_ack_latency_seconds', 'fanout_broker_rtt_seconds',
      'fanout_connections', 'fanout_drops_total', 'fanout_ring_fill_bytes', 'fanout_spool_bytes', 'fanout_thread_heap_used_bytes']) {
      assert.ok(queried.has(name), `the dashboard charts ${name}`);
    }
  });

  test('every metric the alert rules query is exported; broker down, drops, spool filling and readiness are covered', () => {
    assert.deepEqual([...alerts.keys()], ['FanoutBrokerDown', 'FanoutDrops', 'FanoutSpoolFilling', 'FanoutNotReady']);
    for (const [alert, expr] of alerts) {
      for (const name of metricNames(expr)) {
        assert.ok(PROMETHEUS_OWN.has(name) || exported(families, name), `${alert}: ${name} is not on /metrics`);
      }
    }
    assert.match(alerts.get('FanoutBrokerDown')!, /fanout_broker_connections_up/);
    assert.match(alerts.get('FanoutDrops')!, /fanout_drops_total/);
    assert.match(alerts.get('FanoutSpoolFilling')!, /fanout_spool_/);
    assert.match(alerts.get('FanoutNotReady')!, /fanout_ready == 0/);
    assert.equal((alertsText.match(/^\s+severity: /gm) ?? []).length, alerts.size, 'each rule has a severity');
  });
});
