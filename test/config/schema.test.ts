import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, redactedConfig, type Config } from '../../src/config';
import { boolean, defaultProxyId } from '../../src/config/schema';
import { makePki } from '../helpers/certs';

function configError(env: NodeJS.ProcessEnv, opts?: { cpus?: number }): ConfigError {
  try {
    loadConfig(env, opts);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${JSON.stringify(env)} to be rejected`);
}

/** The message must name the variable, quote the value it got and say what is allowed. */
function assertRejected(variable: string, value: string, allowed: string, env: NodeJS.ProcessEnv = { [variable]: value }): void {
  const err = configError(env);
  assert.equal(err.variable, variable);
  assert.equal(err.value, value);
  assert.ok(err.message.startsWith(`${variable}=${JSON.stringify(value)} is invalid: `), err.message);
  assert.ok(err.message.includes(allowed), `"${err.message}" lacks "${allowed}"`);
}

const DEFAULTS = {
  host: '0.0.0.0',
  port: 1883,
  wsPort: null,
  wssPort: null,
  wsPath: '/mqtt',
  httpPort: null,
  tlsPort: null,
  tlsCert: null,
  tlsKey: null,
  tlsCa: null,
  tlsRequireClientCert: false,
  tlsIdentityAsUsername: false,
  shards: 4,
  brokers: [],
  brokersFile: null,
  coverFilters: true,
  maxPacketSize: 262144,
  maxInflight: 100,
  passwordFile: null,
  aclFile: null,
  allowAnonymous: true,
  maxConnections: 100000,
  maxConnectRate: 0,
  maxTopicLength: 1024,
  maxTopicLevels: 32,
  maxSubscriptions: 1000,
  maxPublishRate: 0,
  maxQueuedMessages: 1000,
  queueOverflow: 'block',
  sessionExpiryMaxS: 86400,
  sessionStore: null,
  pendingThrottleMs: 10,
  ringBytes: 4194304,
  uplinkQueueBytes: 524288,
  ack: 'all',
  spoolDir: null,
  spoolFsyncMs: 10,
  spoolMaxBytes: 1073741824,
  spoolOverflow: 'block',
  conflateTopics: null,
  threadHeapMb: 4096,
  threadYoungMb: 24,
  malloc: 'auto',
  adminToken: null,
  testHooks: false,
  logLevel: 'info',
  logFormat: 'json',
  traceClients: null,
  proxyId: defaultProxyId(os.hostname()),
  statusTopic: 'fanout/status/{clientId}',
  connectTimeoutMs: 10000,
  shutdownTimeoutMs: 10000,
  reconnectMinMs: 100,
  reconnectMaxMs: 10000,
  upstreamMode: 'pooled',
  upstreamClientId: '{clientId}-{broker}',
  upstreamConnectRate: 1000,
  upstreamConnectTimeoutMs: 20000,
  embeddedBroker: true,
  routes: [],
};

test('an empty environment yields the documented defaults', () => {
  assert.deepEqual(loadConfig({}, { cpus: 4, tty: false }), DEFAULTS);
});

test('FANOUT_LOG_FORMAT: pretty by default on a terminal, json elsewhere, either when asked for', () => {
  assert.equal(loadConfig({}, { tty: true }).logFormat, 'pretty');
  assert.equal(loadConfig({}, { tty: false }).logFormat, 'json');
  assert.equal(loadConfig({ FANOUT_LOG_FORMAT: 'json' }, { tty: true }).logFormat, 'json');
  assert.equal(loadConfig({ FANOUT_LOG_FORMAT: 'pretty' }, { tty: false }).logFormat, 'pretty');
  assertRejected('FANOUT_LOG_FORMAT', 'text', 'expected json or pretty');
});

const NAMES = [
  'FANOUT_HOST', 'FANOUT_PORT', 'FANOUT_WS_PORT', 'FANOUT_WSS_PORT', 'FANOUT_WS_PATH', 'FANOUT_HTTP_PORT', 'FANOUT_TLS_PORT', 'FANOUT_TLS_CERT',
    'FANOUT_TLS_KEY', 'FANOUT_TLS_CA', 'FANOUT_TLS_REQUIRE_CLIENT_CERT', 'FANOUT_TLS_CN_AS_USERNAME', 'FANOUT_SHARDS',
  'FANOUT_BROKERS', 'FANOUT_ROUTES', 'FANOUT_COVER_FILTERS', 'FANOUT_MAX_PACKET_SIZE',
  'FANOUT_MAX_INFLIGHT', 'FANOUT_PASSWORD_FILE', 'FANOUT_ACL_FILE', 'FANOUT_ALLOW_ANONYMOUS', 'FANOUT_MAX_CONNECTIONS', 'FANOUT_MAX_CONNECT_RATE', 'FANOUT_MAX_TOPIC_LENGTH',
    'FANOUT_MAX_TOPIC_LEVELS', 'FANOUT_MAX_SUBSCRIPTIONS', 'FANOUT_MAX_PUBLISH_RATE', 'FANOUT_MAX_QUEUED_MESSAGES', 'FANOUT_QUEUE_OVERFLOW', 'FANOUT_SESSION_EXPIRY_MAX',
    'FANOUT_SESSION_STORE',
  'FANOUT_PENDING_THROTTLE_MS', 'FANOUT_RING_BYTES', 'FANOUT_UPLINK_QUEUE_BYTES', 'FANOUT_ACK', 'FANOUT_SPOOL_DIR', 'FANOUT_SPOOL_FSYNC_MS', 'FANOUT_SPOOL_MAX_BYTES',
  'FANOUT_SPOOL_OVERFLOW', 'FANOUT_CONFLATE_TOPICS', 'FANOUT_THREAD_HEAP_MB', 'FANOUT_THREAD_YOUNG_MB', 'FANOUT_MALLOC', 'FANOUT_TEST_HOOKS', 'FANOUT_LOG_LEVEL', 'FANOUT_LOG_FORMAT', 'FANOUT_TRACE_CLIENTS', 'FANOUT_PROXY_ID',
  'FANOUT_STATUS_TOPIC', 'FANOUT_CONNECT_TIMEOUT_MS', 'FANOUT_SHUTDOWN_TIMEOUT_MS', 'FANOUT_RECONNECT_MIN_MS',
  'FANOUT_RECONNECT_MAX_MS', 'FANOUT_UPSTREAM_MODE', 'FANOUT_UPSTREAM_CLIENT_ID', 'FANOUT_UPSTREAM_CONNECT_RATE',
  'FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS',
];

test('an empty value counts as unset', () => {
  assert.deepEqual(loadConfig(Object.fromEntries(NAMES.map((name) => [name, ''])), { cpus: 4, tty: false }), DEFAULTS);
});

test('other variables are ignored', () => {
  assert.deepEqual(loadConfig({ PATH: '/bin', PORT: 'x', fanout_port: 'x' }, { cpus: 4, tty: false }), DEFAULTS);
});

test('the shard default follows the CPU count within 1..64', () => {
  assert.equal(loadConfig({}, { cpus: 1 }).shards, 1);
  assert.equal(loadConfig({}, { cpus: 0 }).shards, 1);
  assert.equal(loadConfig({}, { cpus: 128 }).shards, 64);
  assert.equal(loadConfig({}).shards, Math.min(64, os.availableParallelism()));
});

test('the proxy id default is the sanitized host name, at most 64 characters', () => {
  assert.equal(defaultProxyId('edge-1.example.com'), 'fanout-edge-1-example-com');
  assert.equal(defaultProxyId('héllo wörld'), 'fanout-h-llo-w-rld');
  assert.equal(defaultProxyId('x'.repeat(100)), `fanout-${'x'.repeat(57)}`);
  assert.match(loadConfig({}).proxyId, /^fanout-[A-Za-z0-9_-]{0,57}$/);
});

test('every variable is converted to its typed field', () => {
  const config = loadConfig({
    FANOUT_HOST: '::1',
    FANOUT_PORT: '0',
    FANOUT_WS_PORT: '8083',
    FANOUT_WS_PATH: '/ws/mqtt-1.0',
    FANOUT_HTTP_PORT: '0',
    FANOUT_SHARDS: '64',
    FANOUT_MAX_PACKET_SIZE: '64',
    FANOUT_MAX_INFLIGHT: '65535',
    FANOUT_MAX_QUEUED_MESSAGES: '10000000',
    FANOUT_QUEUE_OVERFLOW: 'drop-new',
    FANOUT_SESSION_EXPIRY_MAX: '0',
    FANOUT_PENDING_THROTTLE_MS: '60000',
    FANOUT_RING_BYTES: '1073741824',
    FANOUT_ACK: 'local',
    FANOUT_LOG_LEVEL: 'silent',
    FANOUT_LOG_FORMAT: 'pretty',
    FANOUT_TRACE_CLIENTS: 'sensor-*,gw-??',
    FANOUT_PROXY_ID: 'edge_01-a',
    FANOUT_STATUS_TOPIC: 'site/7/{clientId}/status',
    FANOUT_CONNECT_TIMEOUT_MS: '100',
    FANOUT_SHUTDOWN_TIMEOUT_MS: '0',
    FANOUT_RECONNECT_MIN_MS: '10',
    FANOUT_RECONNECT_MAX_MS: '10',
    FANOUT_COVER_FILTERS: 'false',
  }, { cpus: 2 });
  assert.deepEqual(config, {
    ...DEFAULTS,
    host: '::1', port: 0, wsPort: 8083, wsPath: '/ws/mqtt-1.0', httpPort: 0, traceClients: 'sensor-*,gw-??',
    shards: 64, maxPacketSize: 64, maxInflight: 65535,
    maxQueuedMessages: 10000000, queueOverflow: 'drop-new', sessionExpiryMaxS: 0, pendingThrottleMs: 60000,
    ringBytes: 1073741824, ack: 'local', logLevel: 'silent', logFormat: 'pretty', proxyId: 'edge_01-a',
    statusTopic: 'site/7/{clientId}/status', connectTimeoutMs: 100, shutdownTimeoutMs: 0,
    reconnectMinMs: 10, reconnectMaxMs: 10, coverFilters: false,
  });
});

const INTEGERS: ReadonlyArray<[string, keyof Config, number, number]> = [
  ['FANOUT_PORT', 'port', 0, 65535],
  ['FANOUT_WS_PORT', 'wsPort', 0, 65535],
  ['FANOUT_HTTP_PORT', 'httpPort', 0, 65535],
  ['FANOUT_SHARDS', 'shards', 1, 64],
  ['FANOUT_MAX_PACKET_SIZE', 'maxPacketSize', 64, 268435455],
  ['FANOUT_MAX_INFLIGHT', 'maxInflight', 1, 65535],
  ['FANOUT_MAX_QUEUED_MESSAGES', 'maxQueuedMessages', 1, 10000000],
  ['FANOUT_MAX_CONNECTIONS', 'maxConnections', 1, 10000000],
  ['FANOUT_MAX_CONNECT_RATE', 'maxConnectRate', 0, 1000000],
  ['FANOUT_MAX_TOPIC_LENGTH', 'maxTopicLength', 1, 65535],
  ['FANOUT_MAX_TOPIC_LEVELS', 'maxTopicLevels', 1, 65535],
  ['FANOUT_MAX_SUBSCRIPTIONS', 'maxSubscriptions', 1, 10000000],
  ['FANOUT_MAX_PUBLISH_RATE', 'maxPublishRate', 0, 10000000],
  ['FANOUT_SESSION_EXPIRY_MAX', 'sessionExpiryMaxS', 0, 4294967295],
  ['FANOUT_PENDING_THROTTLE_MS', 'pendingThrottleMs', 0, 60000],
  ['FANOUT_CONNECT_TIMEOUT_MS', 'connectTimeoutMs', 100, 600000],
  ['FANOUT_SHUTDOWN_TIMEOUT_MS', 'shutdownTimeoutMs', 0, 600000],
  ['FANOUT_UPSTREAM_CONNECT_RATE', 'upstreamConnectRate', 0, 1000000],
  ['FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS', 'upstreamConnectTimeoutMs', 1000, 600000],
];

test('integers accept plain decimal digits within range only', () => {
  for (const [variable, key, min, max] of INTEGERS) {
    const allowed = `expected an integer from ${min} to ${max}`;
    for (const bad of [String(min - 1), String(max + 1), '1e3', '12abc', ' 5', '5 ', '+5', '0x10', '1.0', 'NaN', '9'.repeat(400)]) {
      assertRejected(variable, bad, allowed);
    }
    // The largest packet size needs a ring that can hold two of them.
    const ring = variable === 'FANOUT_MAX_PACKET_SIZE' ? { FANOUT_RING_BYTES: '1073741824' } : {};
    assert.equal(loadConfig({ ...ring, [variable]: String(min) })[key], min);
    assert.equal(loadConfig({ ...ring, [variable]: String(max) })[key], max);
  }
  assert.equal(loadConfig({ FANOUT_PORT: '08080' }).port, 8080);
});

test('reconnect delays have their own ranges', () => {
  assertRejected('FANOUT_RECONNECT_MIN_MS', '9', 'expected an integer from 10 to 600000');
  assertRejected('FANOUT_RECONNECT_MIN_MS', '600001', 'expected an integer from 10 to 600000');
  assertRejected('FANOUT_RECONNECT_MAX_MS', '3600001', 'expected an integer from 10 to 3600000');
  assert.equal(loadConfig({ FANOUT_RECONNECT_MAX_MS: '3600000' }).reconnectMaxMs, 3600000);
});

test('the reconnect maximum may not be below the minimum; the variable that was set is blamed', () => {
  const both = { FANOUT_RECONNECT_MIN_MS: '5000', FANOUT_RECONNECT_MAX_MS: '4999' };
  assertRejected('FANOUT_RECONNECT_MAX_MS', '4999', 'at least FANOUT_RECONNECT_MIN_MS (which is 5000)', both);
  assertRejected('FANOUT_RECONNECT_MAX_MS', '50', 'at least FANOUT_RECONNECT_MIN_MS (which is 100)');
  assertRejected('FANOUT_RECONNECT_MIN_MS', '20000', 'at most FANOUT_RECONNECT_MAX_MS (which is 10000)');
});

test('the ring size must be a power of two within range', () => {
  const allowed = 'expected a power of two from 65536 to 1073741824';
  for (const bad of ['65535', '100000', '32768', '2147483648', '0']) assertRejected('FANOUT_RING_BYTES', bad, allowed);
  assert.equal(loadConfig({ FANOUT_RING_BYTES: '65536', FANOUT_MAX_PACKET_SIZE: '32704' }).ringBytes, 65536);
});

test('enumerations accept exactly the listed words', () => {
  for (const bad of ['ALL', 'some', ' all']) assertRejected('FANOUT_ACK', bad, 'expected all, any, local, or a number of brokers k from 1 to those in FANOUT_BROKERS');
  for (const bad of ['INFO', 'verbose']) {
    assertRejected('FANOUT_LOG_LEVEL', bad, 'expected fatal, error, warn, info, debug, trace or silent');
  }
  assert.equal(loadConfig({ FANOUT_ACK: 'any', FANOUT_LOG_LEVEL: 'trace' }).ack, 'any');
  for (const bad of ['drop', 'DROP-OLDEST', 'drop_new']) {
    assertRejected('FANOUT_QUEUE_OVERFLOW', bad, 'expected block, drop-oldest or drop-new');
  }
  assert.equal(loadConfig({ FANOUT_QUEUE_OVERFLOW: 'drop-oldest' }).queueOverflow, 'drop-oldest');
});

test('FANOUT_ACK=k: a number of brokers from 1 to those in FANOUT_BROKERS', () => {
  const three = { FANOUT_BROKERS: 'a=mqtt://h1,b=mqtt://h2,c=mqtt://h3' };
  assert.equal(loadConfig({ ...three, FANOUT_ACK: '2' }).ack, 2);
  assert.equal(loadConfig({ ...three, FANOUT_ACK: '3' }).ack, 3);
  assert.equal(loadConfig({ FANOUT_ACK: '1' }).ack, 1, 'the embedded broker is one broker');
  const allowed = 'expected all, any, local, or a number of brokers k from 1 to those in FANOUT_BROKERS';
  for (const bad of ['0', '-1', '1.5', '02x', '32']) assertRejected('FANOUT_ACK', bad, allowed, { ...three, FANOUT_ACK: bad });
  assertRejected('FANOUT_ACK', '4', `${allowed} (FANOUT_BROKERS has 3)`, { ...three, FANOUT_ACK: '4' });
  assertRejected('FANOUT_ACK', '2', `${allowed} (FANOUT_BROKERS is not set: the embedded broker is the only one)`);
});

test('the spool variables: fsync wait or off, bound, overflow policy, conflated filters, and a usable folder', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-spool-config-'));
  try {
    const spool = { FANOUT_SPOOL_DIR: path.join(dir, 'new', 'spool') };
    const c = loadConfig({ ...spool, FANOUT_SPOOL_FSYNC_MS: 'off', FANOUT_SPOOL_MAX_BYTES: '1048576', FANOUT_SPOOL_OVERFLOW: 'drop-oldest',
      FANOUT_CONFLATE_TOPICS: 'devices/+/telemetry, sensors/#' });
    assert.equal(c.spoolDir, spool.FANOUT_SPOOL_DIR);
    assert.ok(fs.statSync(spool.FANOUT_SPOOL_DIR).isDirectory(), 'the folder is created at start-up');
    assert.equal(c.spoolFsyncMs, -1);
    assert.equal(c.spoolMaxBytes, 1048576);
    assert.equal(c.spoolOverflow, 'drop-oldest');
    assert.deepEqual(c.conflateTopics, ['devices/+/telemetry', 'sensors/#']);
    assert.equal(loadConfig({ FANOUT_SPOOL_FSYNC_MS: '0' }).spoolFsyncMs, 0);
    for (const bad of ['never', '-1', '60001', 'OFF']) assertRejected('FANOUT_SPOOL_FSYNC_MS', bad, 'expected an integer from 0 to 60000, or off');
    assertRejected('FANOUT_SPOOL_MAX_BYTES', '1048575', 'expected an integer from 1048576 to 1125899906842624');
    assertRejected('FANOUT_SPOOL_OVERFLOW', 'drop-new', 'expected block or drop-oldest');
    for (const bad of ['a/#/b', 'a+', '', 'x,,y', '$share/g/x']) {
      if (bad === '') continue; // empty counts as unset
      assertRejected('FANOUT_CONFLATE_TOPICS', bad, 'expected comma-separated MQTT topic filters', { ...spool, FANOUT_CONFLATE_TOPICS: bad });
    }
    assertRejected('FANOUT_CONFLATE_TOPICS', 'a/+', 'conflation works on the spool, and FANOUT_SPOOL_DIR is not set');
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    assertRejected('FANOUT_SPOOL_DIR', path.join(file, 'spool'), 'expected a folder this process can create, read and write (ENOTDIR)');
    assertRejected('FANOUT_THREAD_HEAP_MB', '31', 'expected an integer from 32 to 1048576');
    assertRejected('FANOUT_THREAD_YOUNG_MB', '2048', 'expected an integer from 0 to 1024');
    assert.equal(loadConfig({ FANOUT_THREAD_YOUNG_MB: '16' }).threadYoungMb, 16);
    assertRejected('FANOUT_MALLOC', 'tcmalloc', 'expected auto, jemalloc or system');
    assert.equal(loadConfig({ FANOUT_MALLOC: 'system' }).malloc, 'system');
    assert.equal(loadConfig({ FANOUT_MALLOC: 'jemalloc' }).malloc, 'jemalloc');
    assert.equal(loadConfig({ FANOUT_TEST_HOOKS: 'true' }).testHooks, true);
    assertRejected('FANOUT_TEST_HOOKS', 'on', 'expected true, false, 1, 0, yes or no');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the listen host must be a host name or an IP address', () => {
  for (const good of ['localhost', '127.0.0.1', '::', 'fe80::1', 'edge-1.example.com', 'svc_a.local']) {
    assert.equal(loadConfig({ FANOUT_HOST: good }).host, good);
  }
  for (const bad of ['bad host', 'a..b', '-x.com', '[::1]', 'h:1883', `${'a'.repeat(64)}.com`]) {
    assertRejected('FANOUT_HOST', bad, 'expected a host name, an IPv4 or an IPv6 address');
  }
});

test('the proxy id is 1 to 64 characters from [A-Za-z0-9_-]', () => {
  assert.equal(loadConfig({ FANOUT_PROXY_ID: 'a'.repeat(64) }).proxyId, 'a'.repeat(64));
  for (const bad of ['a'.repeat(65), 'a.b', 'a b', 'é']) {
    assertRejected('FANOUT_PROXY_ID', bad, 'expected 1 to 64 characters from [A-Za-z0-9_-]');
  }
});

test('the status topic has no wildcards and no placeholder but {clientId}', () => {
  const allowed = 'expected an MQTT topic name without + or #, which may contain {clientId} (no other braces)';
  for (const bad of ['status/+', 'status/#', 'a/{clientid}', 'a/{id}', 'a/{', 'a\0b', 'x'.repeat(65536)]) {
    assertRejected('FANOUT_STATUS_TOPIC', bad, allowed);
  }
  assert.equal(loadConfig({ FANOUT_STATUS_TOPIC: '{clientId}' }).statusTopic, '{clientId}');
});

test('an unknown FANOUT_ variable is rejected with the closest known name', () => {
  const err = configError({ FANOUT_PROT: '1' });
  assert.equal(err.message, 'FANOUT_PROT="1" is not a known variable (did you mean FANOUT_PORT?)');
  assert.equal(err.variable, 'FANOUT_PROT');
  assert.equal(err.value, '1');
  assert.match(configError({ FANOUT_LOGLEVEL: 'info' }).message, /\(did you mean FANOUT_LOG_LEVEL\?\)$/);
  assert.match(configError({ FANOUT_SHARD: '2' }).message, /\(did you mean FANOUT_SHARDS\?\)$/);
});

test('an unknown variable far from every known name gets no suggestion', () => {
  assert.equal(configError({ FANOUT_COLOUR: 'red' }).message, 'FANOUT_COLOUR="red" is not a known variable');
});

test('an unknown variable that is empty counts as unset', () => {
  assert.equal(loadConfig({ FANOUT_PROT: '' }).port, 1883);
});

test('the first problem is reported: unknown names first, then variables in declaration order', () => {
  assert.equal(configError({ FANOUT_PORT: 'x', FANOUT_ZZZ: '1', FANOUT_AAA: '1' }).variable, 'FANOUT_AAA');
  assert.equal(configError({ FANOUT_ACK: 'x', FANOUT_PORT: 'x', FANOUT_HOST: '!' }).variable, 'FANOUT_HOST');
  assert.equal(configError({ FANOUT_RECONNECT_MAX_MS: '50', FANOUT_ACK: 'x' }).variable, 'FANOUT_ACK');
});

test('a ConfigError is a one-line Error with code, variable and value', () => {
  const err = configError({ FANOUT_PORT: '70000' });
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'ConfigError');
  assert.equal(err.code, 'FANOUT_ERR_CONFIG');
  assert.equal(err.message, 'FANOUT_PORT="70000" is invalid: expected an integer from 0 to 65535');
  const multiline = configError({ FANOUT_ACK: 'all\nFANOUT_PORT=1' });
  assert.equal(multiline.message, 'FANOUT_ACK="all\\nFANOUT_PORT=1" is invalid: expected all, any, local, or a number of brokers k from 1 to those in FANOUT_BROKERS');
});

test('the config is deeply frozen', () => {
  const config = loadConfig({ FANOUT_BROKERS: 'a=mqtt://h' });
  const mutable = config as unknown as Record<string, unknown> & { brokers: Array<Record<string, unknown>> };
  assert.throws(() => { mutable.port = 1; }, TypeError);
  assert.throws(() => { mutable.extra = 1; }, TypeError);
  assert.throws(() => { mutable.brokers.push({}); }, TypeError);
  assert.throws(() => { mutable.brokers[0].pool = 9; }, TypeError);
  assert.equal(config.port, 1883);
});

test('the boolean rule accepts true/false/1/0/yes/no only', () => {
  const { schema, allowed } = boolean();
  assert.equal(allowed, 'true, false, 1, 0, yes or no');
  for (const word of ['true', '1', 'yes']) assert.equal(schema.parse(word), true);
  for (const word of ['false', '0', 'no']) assert.equal(schema.parse(word), false);
  for (const word of ['TRUE', 'on', '']) {
    const result = schema.safeParse(word);
    assert.ok(!result.success && result.error.issues[0].message === `expected ${allowed}`);
  }
});

test('FANOUT_RING_BYTES must hold two packets of FANOUT_MAX_PACKET_SIZE', () => {
  assert.throws(
    () => loadConfig({ FANOUT_RING_BYTES: '65536', FANOUT_MAX_PACKET_SIZE: '262144' }),
    (err: ConfigError) => err.code === 'FANOUT_ERR_CONFIG' && err.variable === 'FANOUT_RING_BYTES' &&
      err.message === 'FANOUT_RING_BYTES="65536" is invalid: expected at least twice FANOUT_MAX_PACKET_SIZE plus 128 (524416); raise it or lower FANOUT_MAX_PACKET_SIZE',
  );
  assert.equal(loadConfig({ FANOUT_RING_BYTES: '65536', FANOUT_MAX_PACKET_SIZE: '32704' }).ringBytes, 65536);
});

test('FANOUT_WS_PATH must be a plain URL path starting with /', () => {
  for (const bad of ['mqtt', '/mq tt', '/mqtt?x=1', '/a#b', `/${'a'.repeat(300)}`]) {
    assertRejected('FANOUT_WS_PATH', bad, 'a URL path starting with / (letters, digits and -._~/ only)');
  }
  assert.equal(loadConfig({ FANOUT_WS_PATH: '/' }).wsPath, '/');
});

test('FANOUT_TRACE_CLIENTS takes globs up to 4096 characters', () => {
  assertRejected('FANOUT_TRACE_CLIENTS', 'x'.repeat(4097), 'comma-separated globs on client ids');
  assert.equal(loadConfig({ FANOUT_TRACE_CLIENTS: 'a*,b?' }).traceClients, 'a*,b?');
});

test('FANOUT_ALLOW_ANONYMOUS defaults to false with a password file, true without; the files must be readable', () => {
  assert.equal(loadConfig({ FANOUT_PASSWORD_FILE: __filename }).allowAnonymous, false);
  assert.equal(loadConfig({ FANOUT_PASSWORD_FILE: __filename, FANOUT_ALLOW_ANONYMOUS: 'true' }).allowAnonymous, true);
  assert.equal(loadConfig({ FANOUT_ALLOW_ANONYMOUS: 'false' }).allowAnonymous, false);
  for (const variable of ['FANOUT_PASSWORD_FILE', 'FANOUT_ACL_FILE']) {
    const err = configError({ [variable]: '/nonexistent/file' });
    assert.equal(err.message, `${variable}="/nonexistent/file" is invalid: expected a readable file (ENOENT)`);
  }
});

test('FANOUT_WSS_PORT: a port from 0 to 65535, needing the TLS certificate and key, on a port of its own', () => {
  for (const bad of ['-1', '65536', 'x']) assertRejected('FANOUT_WSS_PORT', bad, 'expected an integer from 0 to 65535');
  assert.equal(configError({ FANOUT_WSS_PORT: '0' }).message, 'FANOUT_TLS_CERT="" is invalid: expected a certificate file: FANOUT_WSS_PORT is set');
  const pki = makePki('config');
  try {
    const { cert, key } = pki.issue('server', 'server', { server: true });
    assert.equal(configError({ FANOUT_WSS_PORT: '0', FANOUT_TLS_CERT: cert }).message,
      'FANOUT_TLS_KEY="" is invalid: expected a private key file: FANOUT_WSS_PORT is set');
    const tls = { FANOUT_TLS_CERT: cert, FANOUT_TLS_KEY: key };
    assert.equal(loadConfig({ ...tls, FANOUT_WSS_PORT: '0' }).wssPort, 0);
    assert.equal(loadConfig({ ...tls, FANOUT_WSS_PORT: '65535' }).wssPort, 65535);
    // Port 0 twice is two free ports, not a clash.
    assert.equal(loadConfig({ ...tls, FANOUT_WSS_PORT: '0', FANOUT_PORT: '0', FANOUT_WS_PORT: '0' }).wssPort, 0);
    for (const other of ['FANOUT_PORT', 'FANOUT_WS_PORT', 'FANOUT_TLS_PORT', 'FANOUT_HTTP_PORT']) {
      assertRejected('FANOUT_WSS_PORT', '8884', `expected a port no other listener uses (${other} is 8884)`, { ...tls, FANOUT_WSS_PORT: '8884', [other]: '8884' });
    }
    assert.match(configError({ ...tls, FANOUT_TLS_KEY: cert, FANOUT_WSS_PORT: '0' }).message,
      /^FANOUT_TLS_CERT=".*" is invalid: the certificate, key \(FANOUT_TLS_KEY\) and CA files do not make a TLS context/);
  } finally {
    pki.remove();
  }
});

test('FANOUT_SESSION_STORE: memory (the default) or a Redis URL, whose password is never shown', () => {
  assert.equal(loadConfig({ FANOUT_SESSION_STORE: 'memory' }).sessionStore, null);
  assert.equal(loadConfig({ FANOUT_SESSION_STORE: 'redis://127.0.0.1:6379' }).sessionStore, 'redis://127.0.0.1:6379');
  assert.equal(loadConfig({ FANOUT_SESSION_STORE: 'rediss://u:secret@redis.example.com/2' }).sessionStore, 'rediss://u:secret@redis.example.com/2');
  for (const bad of ['redis', 'http://127.0.0.1', 'redis://', 'redis://host/x', 'redis://host:6379/0?timeout=1']) {
    assertRejected('FANOUT_SESSION_STORE', bad, 'expected memory, or a redis:// or rediss:// URL (redis://[user[:password]@]host[:port][/db])');
  }
  const shown = JSON.stringify(redactedConfig(loadConfig({ FANOUT_SESSION_STORE: 'redis://u:secret@127.0.0.1' })));
  assert.ok(!shown.includes('secret') && shown.includes('***'), shown);
});
