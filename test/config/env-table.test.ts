import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describeBrokerParams, describeEnv } from '../../src/config';
import { END_MARKER, README_PATH, readSection, renderEnvTable, replaceSection, START_MARKER } from '../../src/config/env-table';

test('README.md documents exactly the declared variables (run `npm run docs:env` to fix)', () => {
  const section = readSection(readFileSync(README_PATH, 'utf8'));
  assert.notEqual(section, undefined, `README.md lacks ${START_MARKER} ... ${END_MARKER}`);
  assert.equal(section, renderEnvTable());
});

test('describeEnv lists every variable once, in declaration order, fully documented', () => {
  const rows = describeEnv();
  assert.deepEqual(rows.map((row) => row.name), [
    'FANOUT_HOST', 'FANOUT_PORT', 'FANOUT_WS_PORT', 'FANOUT_WSS_PORT', 'FANOUT_WS_PATH', 'FANOUT_HTTP_PORT', 'FANOUT_TLS_PORT', 'FANOUT_TLS_CERT',
    'FANOUT_TLS_KEY', 'FANOUT_TLS_CA', 'FANOUT_TLS_REQUIRE_CLIENT_CERT', 'FANOUT_TLS_CN_AS_USERNAME', 'FANOUT_SHARDS',
    'FANOUT_BROKERS', 'FANOUT_BROKERS_FILE', 'FANOUT_ROUTES', 'FANOUT_COVER_FILTERS', 'FANOUT_MAX_PACKET_SIZE',
    'FANOUT_MAX_INFLIGHT', 'FANOUT_PASSWORD_FILE', 'FANOUT_ACL_FILE', 'FANOUT_ALLOW_ANONYMOUS', 'FANOUT_MAX_CONNECTIONS', 'FANOUT_MAX_CONNECT_RATE', 'FANOUT_MAX_TOPIC_LENGTH',
    'FANOUT_MAX_TOPIC_LEVELS', 'FANOUT_MAX_SUBSCRIPTIONS', 'FANOUT_MAX_PUBLISH_RATE', 'FANOUT_MAX_QUEUED_MESSAGES', 'FANOUT_QUEUE_OVERFLOW', 'FANOUT_SESSION_EXPIRY_MAX',
    'FANOUT_SESSION_STORE',
    'FANOUT_PENDING_THROTTLE_MS', 'FANOUT_RING_BYTES', 'FANOUT_UPLINK_QUEUE_BYTES', 'FANOUT_ACK', 'FANOUT_SPOOL_DIR', 'FANOUT_SPOOL_FSYNC_MS', 'FANOUT_SPOOL_MAX_BYTES',
    'FANOUT_SPOOL_OVERFLOW', 'FANOUT_CONFLATE_TOPICS', 'FANOUT_THREAD_HEAP_MB', 'FANOUT_THREAD_YOUNG_MB', 'FANOUT_MALLOC', 'FANOUT_ADMIN_TOKEN', 'FANOUT_TEST_HOOKS', 'FANOUT_LOG_LEVEL', 'FANOUT_LOG_FORMAT', 'FANOUT_TRACE_CLIENTS', 'FANOUT_PROXY_ID',
    'FANOUT_STATUS_TOPIC', 'FANOUT_CONNECT_TIMEOUT_MS', 'FANOUT_SHUTDOWN_TIMEOUT_MS', 'FANOUT_RECONNECT_MIN_MS',
    'FANOUT_RECONNECT_MAX_MS', 'FANOUT_UPSTREAM_MODE', 'FANOUT_UPSTREAM_CLIENT_ID', 'FANOUT_UPSTREAM_CONNECT_RATE',
    'FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS',
  ]);
  for (const row of rows) {
    assert.ok(row.default && row.allowed && row.description, `${row.name} is fully documented`);
    assert.ok(!/\n/.test(Object.values(row).join('')), `${row.name} has no line breaks`);
  }
  const port = rows.find((row) => row.name === 'FANOUT_PORT');
  assert.deepEqual([port?.default, port?.allowed], ['1883', 'an integer from 0 to 65535']);
});

test('machine-dependent defaults are documented in words, so the table is the same everywhere', () => {
  const byName = new Map(describeEnv().map((row) => [row.name, row.default]));
  assert.equal(byName.get('FANOUT_SHARDS'), 'number of CPUs, at most 64');
  assert.match(byName.get('FANOUT_PROXY_ID') ?? '', /^fanout- \+ host name/);
});

test('describeBrokerParams lists the URL parameters with their defaults', () => {
  assert.deepEqual(describeBrokerParams().map((row) => [row.name, row.default]), [
    ['maxQos', '2'], ['retain', 'forward'], ['pool', '4'], ['protocol', '5'], ['keepalive', '60'], ['inflight', 'auto'],
    ['ca', ''], ['cert', ''], ['key', ''], ['insecure', 'false'],
    ['mode', 'FANOUT_UPSTREAM_MODE'], ['credentials', 'passthrough'], ['credentialsMap', ''], ['failover', 'none'], ['primaryCheckMs', '30000'],
  ]);
});

test('the rendered table has one row per variable and per URL parameter', () => {
  const rendered = renderEnvTable();
  assert.ok(rendered.startsWith('\n') && rendered.endsWith('\n'), 'markers stay on their own lines');
  for (const { name } of [...describeEnv(), ...describeBrokerParams()]) {
    assert.equal(rendered.split('\n').filter((line) => line.startsWith(`| \`${name}\` |`)).length, 1, name);
  }
  for (const line of rendered.split('\n').filter((l) => l.startsWith('| `'))) {
    assert.equal(line.replace(/\\\|/g, '').split('|').length, 6, `four cells in: ${line}`);
  }
});

test('replaceSection swaps only the text between the markers', () => {
  const readme = `# T\n\n${START_MARKER}\nold\n${END_MARKER}\n\nrest\n`;
  const updated = replaceSection(readme, '\nnew\n');
  assert.equal(updated, `# T\n\n${START_MARKER}\nnew\n${END_MARKER}\n\nrest\n`);
  assert.equal(readSection(updated), '\nnew\n');
  assert.equal(replaceSection(updated, '\nnew\n'), updated);
});

test('missing or swapped markers are an error, not a silent append', () => {
  assert.throws(() => replaceSection('# T\n', 'x'), /must contain/);
  assert.throws(() => replaceSection(`${END_MARKER}\n${START_MARKER}`, 'x'), /must contain/);
  assert.equal(readSection('# T\n'), undefined);
});
