import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig, redactedConfig, redactUrl, type BrokerConfig } from '../../src/config';

const SECRET = 'S3cr3t-pw';

function brokers(value: string): readonly BrokerConfig[] {
  return loadConfig({ FANOUT_BROKERS: value }).brokers;
}

function brokerError(value: string): ConfigError {
  try {
    loadConfig({ FANOUT_BROKERS: value });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected FANOUT_BROKERS=${JSON.stringify(value)} to be rejected`);
}

/** Names the variable, shows the offending entry (password as ***) and says what is allowed. */
function assertRejected(value: string, shownEntry: string, reason: string): void {
  const err = brokerError(value);
  assert.equal(err.variable, 'FANOUT_BROKERS');
  assert.equal(err.value, shownEntry);
  assert.equal(err.message, `FANOUT_BROKERS=${JSON.stringify(shownEntry)} is invalid: ${reason}`);
  assert.ok(!err.message.includes(SECRET) && !String(err.value).includes(SECRET), err.message);
}

const PARAM_DEFAULTS = {
  maxQos: 2, retain: 'forward', pool: 4, protocolVersion: 5, keepalive: 60, inflight: 0, ca: null, cert: null, key: null, insecure: false,
};

test('a minimal entry gets the default port and parameters', () => {
  const config = loadConfig({ FANOUT_BROKERS: 'local=mqtt://localhost' });
  assert.equal(config.embeddedBroker, false);
  assert.deepEqual(config.brokers, [{
    name: 'local', transport: 'mqtt', host: 'localhost', port: 1883, ...PARAM_DEFAULTS,
    redactedUrl: 'mqtt://localhost',
  }]);
  assert.equal(brokers('tls=mqtts://broker.example.com')[0].port, 8883);
});

test('every URL part and parameter is converted', () => {
  const [broker] = brokers(
    `cloud=mqtts://dev%20ice:${SECRET}%2C%40@[2001:db8::1]:8884` +
      '?maxQos=1&retain=strip&pool=64&protocol=5&keepalive=0&inflight=65535',
  );
  assert.deepEqual(broker, {
    name: 'cloud', transport: 'mqtts', host: '2001:db8::1', port: 8884,
    username: 'dev ice', password: `${SECRET},@`,
    maxQos: 1, retain: 'strip', pool: 64, protocolVersion: 5, keepalive: 0, inflight: 65535,
    ca: null, cert: null, key: null, insecure: false,
    redactedUrl: 'mqtts://dev%20ice:***@[2001:db8::1]:8884?maxQos=1&retain=strip&pool=64&protocol=5&keepalive=0&inflight=65535',
  });
});

test('several entries keep their order; spaces around entries are ignored', () => {
  const list = brokers(' a=mqtt://10.0.0.1:1884 , b_2=mqtt://user@b.example ,C-3=mqtts://c ');
  assert.deepEqual(list.map((b) => [b.name, b.host, b.port, b.username, b.password]), [
    ['a', '10.0.0.1', 1884, undefined, undefined],
    ['b_2', 'b.example', 1883, 'user', undefined],
    ['C-3', 'c', 8883, undefined, undefined],
  ]);
  assert.ok(!('password' in list[1]), 'no password key when none was given');
});

test('protocol accepts 3.1.1, 4, 5 and 5.0', () => {
  for (const [raw, version] of [['3.1.1', 4], ['4', 4], ['5', 5], ['5.0', 5]] as const) {
    assert.equal(brokers(`a=mqtt://h?protocol=${raw}`)[0].protocolVersion, version);
  }
});

test('each parameter rejects values outside its allowed set', () => {
  const cases: ReadonlyArray<[string, string, string]> = [
    ['maxQos', '3', 'maxQos must be 0, 1 or 2'],
    ['retain', 'keep', 'retain must be forward or strip'],
    ['pool', '0', 'pool must be an integer from 1 to 64'],
    ['pool', '65', 'pool must be an integer from 1 to 64'],
    ['pool', '1e1', 'pool must be an integer from 1 to 64'],
    ['protocol', '3', 'protocol must be 3.1.1 (or 4) or 5 (or 5.0)'],
    ['keepalive', '65536', 'keepalive must be an integer from 0 to 65535'],
    ['keepalive', '-1', 'keepalive must be an integer from 0 to 65535'],
    ['inflight', '0', 'inflight must be auto or an integer from 1 to 65535'],
    ['inflight', '', 'inflight must be auto or an integer from 1 to 65535'],
  ];
  for (const [param, value, reason] of cases) {
    const entry = `cloud=mqtt://u:***@h:1883?${param}=${value}`;
    assertRejected(`ok=mqtt://x,cloud=mqtt://u:${SECRET}@h:1883?${param}=${value}`, entry, `broker "cloud": ${reason}`);
  }
  assertRejected('cloud=mqtt://h?pool', 'cloud=mqtt://h?pool', 'broker "cloud": pool must be an integer from 1 to 64');
});

test('an unknown parameter is named along with the known ones', () => {
  assertRejected(`a=mqtt://u:${SECRET}@h?qos=1`, 'a=mqtt://u:***@h?qos=1',
    'broker "a": unknown parameter "qos", known parameters are maxQos, retain, pool, protocol, keepalive, inflight, ca, cert, key, insecure, mode, credentials, credentialsMap, failover, primaryCheckMs');
});

test('failover: further addresses in order, the port defaulting to the scheme\'s, with primaryCheckMs', () => {
  const [a, b] = brokers('a=mqtt://h1:1884?failover=h2;10.0.0.3:1885;[::1]:1886,b=mqtts://h1?failover=h2&primaryCheckMs=0');
  assert.deepEqual(a.failover, [{ host: 'h2', port: 1883 }, { host: '10.0.0.3', port: 1885 }, { host: '::1', port: 1886 }]);
  assert.equal(a.primaryCheckMs, 30000, 'the default');
  assert.deepEqual([b.failover, b.primaryCheckMs], [[{ host: 'h2', port: 8883 }], 0]);
  const c = brokers('c=mqtt://h1')[0];
  assert.ok(!('failover' in c) && !('primaryCheckMs' in c), 'neither without failover');
  const allowed = 'failover must be host[:port] addresses separated by ; (host names, IPv4 or [IPv6] addresses), each once and none the URL\'s own';
  for (const bad of ['h2;', ';h2', 'h2:0', 'h2:65536', 'h2:x', '::1', '[zz]', 'bad_host-', 'h1:1884', 'h2;h2:1883']) {
    assertRejected(`a=mqtt://h1:1884?failover=${bad}`, `a=mqtt://h1:1884?failover=${bad}`, `broker "a": ${allowed}`);
  }
  assertRejected('a=mqtt://h1?failover=h2&primaryCheckMs=86400001', 'a=mqtt://h1?failover=h2&primaryCheckMs=86400001',
    'broker "a": primaryCheckMs must be an integer from 0 to 86400000');
  assertRejected('a=mqtt://h1?primaryCheckMs=1000', 'a=mqtt://h1?primaryCheckMs=1000', 'broker "a": primaryCheckMs goes with failover');
  assertRejected('a=mqtt://h1?failover=h2&mode=per-device', 'a=mqtt://h1?failover=h2&mode=per-device',
    'broker "a": failover applies to pooled brokers only, and this one is per-device (mode or FANOUT_UPSTREAM_MODE)');
});

test('TLS parameters: readable files (percent-decoded), cert with key, insecure, mqtts only', () => {
  const file = __filename; // any readable file
  const [b] = brokers(`a=mqtts://h?ca=${encodeURIComponent(file)}&cert=${file}&key=${file}&insecure=true`);
  assert.deepEqual([b.ca, b.cert, b.key, b.insecure], [file, file, file, true]);
  const allowed = 'a readable file path (percent-encoded where needed)';
  assertRejected('a=mqtts://h?ca=/nonexistent/ca.pem', 'a=mqtts://h?ca=/nonexistent/ca.pem', `broker "a": ca must be ${allowed}`);
  assertRejected(`a=mqtts://h?cert=${file}`, `a=mqtts://h?cert=${file}`, 'broker "a": cert and key go together');
  assertRejected('a=mqtts://h?insecure=yes', 'a=mqtts://h?insecure=yes', 'broker "a": insecure must be true or false');
  assertRejected(`a=mqtt://h?ca=${file}`, `a=mqtt://h?ca=${file}`, 'broker "a": ca, cert, key and insecure apply to mqtts:// brokers only');
});

test('a parameter given twice is rejected', () => {
  assertRejected('a=mqtt://h?pool=1&pool=2', 'a=mqtt://h?pool=1&pool=2', 'broker "a": parameter "pool" is given more than once');
});

test('broker names are 1 to 32 characters from [A-Za-z0-9_-] and unique', () => {
  for (const name of ['', 'a.b', 'a b', 'x'.repeat(33)]) {
    const entry = `${name}=mqtt://u:***@h`;
    assertRejected(`${name}=mqtt://u:${SECRET}@h`, entry, `broker name "${name}" must be 1 to 32 characters from [A-Za-z0-9_-]`);
  }
  assert.equal(brokers(`${'x'.repeat(32)}=mqtt://h`)[0].name, 'x'.repeat(32));
  assertRejected('a=mqtt://h1,b=mqtt://h2,a=mqtt://h3', 'a=mqtt://h3', 'broker name "a" is used more than once');
});

test('entries must be name=url and may not be empty', () => {
  assertRejected(`mqtt://u:${SECRET}@h`, 'mqtt://u:***@h',
    'expected name=url, url being mqtt://[user[:password]@]host[:port][?param=value&...] or mqtts://...');
  const listAllowed = 'a comma-separated list of name=url, url being mqtt[s]://[user[:password]@]host[:port][?param=value&...]';
  assertRejected('a=mqtt://h,', '', `empty entry, expected ${listAllowed}`);
  assertRejected('a=mqtt://h,,b=mqtt://h', '', `empty entry, expected ${listAllowed}`);
});

test('only mqtt and mqtts URLs without path or fragment are accepted', () => {
  assertRejected(`a=http://u:${SECRET}@h`, 'a=http://u:***@h', 'broker "a": scheme "http" is not supported, expected mqtt or mqtts');
  assertRejected('a=ws://h', 'a=ws://h', 'broker "a": scheme "ws" is not supported, expected mqtt or mqtts');
  const shape = 'broker "a": url must be mqtt://[user[:password]@]host[:port][?param=value&...] or mqtts://...';
  for (const url of ['mqtt://h/topic', 'mqtt://h#x', 'mqtt:/h', 'h:1883', 'mqtt://[::1']) {
    assertRejected(`a=${url}`, `a=${url}`, shape);
  }
  assertRejected(`a=mqtt://u:${SECRET}@h/x`, 'a=mqtt://u:***@h/x', shape);
});

test('hosts must be host names, IPv4 or bracketed IPv6 addresses', () => {
  const allowed = 'must be a host name, an IPv4 address or an [IPv6] address';
  for (const host of ['', 'bad_-', '-x', 'a..b', '[not-ipv6]', '[]']) {
    assertRejected(`a=mqtt://u:${SECRET}@${host}:1883`, `a=mqtt://u:***@${host}:1883`, `broker "a": host "${host}" ${allowed}`);
  }
  assert.equal(brokers('a=mqtt://[::1]')[0].host, '::1');
  assert.equal(brokers('a=mqtt://192.168.1.10:1')[0].port, 1);
});

test('ports must be integers from 1 to 65535', () => {
  for (const port of ['0', '65536', 'x', '', '1e3', '-1']) {
    assertRejected(`a=mqtt://h:${port}`, `a=mqtt://h:${port}`, 'broker "a": port must be an integer from 1 to 65535');
  }
  assert.equal(brokers('a=mqtt://h:65535')[0].port, 65535);
});

test('malformed percent-encoding is reported without echoing the part', () => {
  assertRejected(`a=mqtt://u:${SECRET}%zz@h`, 'a=mqtt://u:***@h', 'broker "a": password is not valid percent-encoding');
  assertRejected('a=mqtt://%E0%A4@h', 'a=mqtt://%E0%A4@h', 'broker "a": user name is not valid percent-encoding');
});

test('a raw @ in the password still parses and is still redacted', () => {
  const [broker] = brokers(`a=mqtt://u:${SECRET}@x@h`);
  assert.equal(broker.password, `${SECRET}@x`);
  assert.equal(broker.host, 'h');
  assert.equal(broker.redactedUrl, 'mqtt://u:***@h');
});

test('redactUrl replaces only the password', () => {
  assert.equal(redactUrl(`mqtt://u:${SECRET}@h:1883?pool=2`), 'mqtt://u:***@h:1883?pool=2');
  assert.equal(redactUrl(`mqtts://:${SECRET}@h`), 'mqtts://:***@h');
  assert.equal(redactUrl('mqtt://user@h:1883'), 'mqtt://user@h:1883');
  assert.equal(redactUrl('mqtt://h:1883'), 'mqtt://h:1883');
  assert.equal(redactUrl(`name=mqtt://u:${SECRET}@h`), 'name=mqtt://u:***@h');
});

test('redactedConfig never contains a broker password', () => {
  const config = loadConfig({
    FANOUT_BROKERS: `a=mqtt://u:${SECRET}@h,b=mqtt://u:${encodeURIComponent(`${SECRET}/:@`)}@h,c=mqtt://nopw@h`,
  });
  assert.equal(config.brokers[1].password, `${SECRET}/:@`, 'the real config keeps the password for connecting');
  const text = JSON.stringify(redactedConfig(config));
  assert.ok(!text.includes(SECRET), text);
  const [a, b, c] = (redactedConfig(config) as { brokers: Array<Record<string, unknown>> }).brokers;
  assert.deepEqual([a.password, b.password, c.password], ['***', '***', undefined]);
  assert.equal(a.redactedUrl, 'mqtt://u:***@h');
  assert.equal(c.username, 'nopw');
  assert.equal((redactedConfig(config) as { port: number }).port, 1883);
});

test('a URL with a password in an unrelated variable is redacted too', () => {
  assert.throws(() => loadConfig({ FANOUT_HOST: 'h', FANOUT_BROKER: `a=mqtt://u:${SECRET}@h` }), {
    message: 'FANOUT_BROKER="a=mqtt://u:***@h" is not a known variable (did you mean FANOUT_BROKERS?)',
    value: 'a=mqtt://u:***@h',
  });
  assert.throws(() => loadConfig({ FANOUT_HOST: `mqtt://u:${SECRET}@h` }), {
    message: 'FANOUT_HOST="mqtt://u:***@h" is invalid: expected a host name, an IPv4 or an IPv6 address',
    value: 'mqtt://u:***@h',
  });
});
