// Per-device upstream mode's configuration: FANOUT_UPSTREAM_MODE and the URL's mode,
// FANOUT_UPSTREAM_CLIENT_ID, FANOUT_UPSTREAM_CONNECT_RATE, FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS, and
// the URL's credentials and credentialsMap. Every error message names the variable, the value
// and what is allowed.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ConfigError, loadConfig } from '../../src/config';
import { runDaemonToExit } from '../helpers/daemon';
import {
  isClientIdTemplate, mappedCredentials, parseCredentialsMap, perDeviceBrokers, upstreamClientId,
} from '../../src/config/upstream';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-upstream-config-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(content: string): string {
  const p = path.join(dir, `map-${++n}.json`);
  fs.writeFileSync(p, content);
  return p;
}

function configError(env: NodeJS.ProcessEnv): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${JSON.stringify(env)} to be rejected`);
}

/** The whole message: the variable, its value quoted, "is invalid: " and the reason. */
function assertMessage(env: NodeJS.ProcessEnv, variable: string, value: string, reason: string): void {
  const err = configError(env);
  assert.equal(err.variable, variable);
  assert.equal(err.value, value);
  assert.equal(err.message, `${variable}=${JSON.stringify(value)} is invalid: ${reason}`);
}

const TEMPLATE_ALLOWED = 'expected a template containing {clientId} (the device\'s client id), optionally {broker} (the broker\'s name), '
  + 'other characters from [A-Za-z0-9_.:-] only, at most 128 characters';

test('the per-device settings have their documented defaults', () => {
  const c = loadConfig({});
  assert.deepEqual([c.upstreamMode, c.upstreamClientId, c.upstreamConnectRate, c.upstreamConnectTimeoutMs],
    ['pooled', '{clientId}-{broker}', 1000, 20000]);
});

test('FANOUT_UPSTREAM_MODE is pooled or per-device; a URL mode overrides it per broker', () => {
  for (const bad of ['per_device', 'PER-DEVICE', 'device', 'pool']) {
    assertMessage({ FANOUT_UPSTREAM_MODE: bad }, 'FANOUT_UPSTREAM_MODE', bad, 'expected pooled or per-device');
  }
  const brokers = 'a=mqtt://h1,b=mqtt://h2?mode=pooled,c=mqtt://h3?mode=per-device';
  const pooled = loadConfig({ FANOUT_BROKERS: brokers });
  assert.deepEqual(perDeviceBrokers(pooled), [false, false, true]);
  const perDevice = loadConfig({ FANOUT_BROKERS: brokers, FANOUT_UPSTREAM_MODE: 'per-device' });
  assert.deepEqual(perDeviceBrokers(perDevice), [true, false, true]);
  assert.ok(!('mode' in perDevice.brokers[0]), 'a broker without mode in its URL follows the variable');
  const err = configError({ FANOUT_BROKERS: 'a=mqtt://h?mode=device' });
  assert.equal(err.message, 'FANOUT_BROKERS="a=mqtt://h?mode=device" is invalid: broker "a": mode must be pooled or per-device');
});

test('FANOUT_UPSTREAM_CLIENT_ID must contain {clientId}; it may contain {broker} and plain characters only', () => {
  for (const bad of ['{broker}', 'device-{broker}', '{clientid}-{broker}', '{clientId}-{proxy}', '{clientId} {broker}',
    '{clientId}/{broker}', '{clientId}{', `{clientId}${'x'.repeat(120)}`, 'fixed']) {
    assertMessage({ FANOUT_UPSTREAM_CLIENT_ID: bad }, 'FANOUT_UPSTREAM_CLIENT_ID', bad, TEMPLATE_ALLOWED);
  }
  for (const good of ['{clientId}', '{clientId}-{broker}', 'site7.{broker}:{clientId}_x', '{broker}-{clientId}-{clientId}']) {
    assert.equal(loadConfig({ FANOUT_UPSTREAM_CLIENT_ID: good }).upstreamClientId, good);
    assert.ok(isClientIdTemplate(good));
  }
  assert.equal(upstreamClientId('{clientId}-{broker}', 'sensor-1', 'cloud'), 'sensor-1-cloud');
  assert.equal(upstreamClientId('{broker}.{clientId}.{clientId}', 'é', 'b'), 'b.é.é');
});

test('the daemon stops at start-up on a template without {clientId}: exit code 2 and one line saying what is allowed', async () => {
  const r = await runDaemonToExit({ FANOUT_UPSTREAM_MODE: 'per-device', FANOUT_UPSTREAM_CLIENT_ID: 'device-{broker}' });
  assert.equal(r.code, 2, `exit code (signal ${r.signal}); stderr: ${r.stderr}`);
  assert.equal(r.stderr, `mqtt-fanout: FANOUT_UPSTREAM_CLIENT_ID="device-{broker}" is invalid: ${TEMPLATE_ALLOWED}\n`);
});

test('FANOUT_UPSTREAM_CONNECT_RATE and FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS are integers within their ranges', () => {
  for (const bad of ['-1', '1000001', '1.5', 'fast']) {
    assertMessage({ FANOUT_UPSTREAM_CONNECT_RATE: bad }, 'FANOUT_UPSTREAM_CONNECT_RATE', bad, 'expected an integer from 0 to 1000000');
  }
  for (const bad of ['999', '600001', '20s']) {
    assertMessage({ FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS: bad }, 'FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS', bad, 'expected an integer from 1000 to 600000');
  }
  assert.equal(loadConfig({ FANOUT_UPSTREAM_CONNECT_RATE: '0' }).upstreamConnectRate, 0);
  assert.equal(loadConfig({ FANOUT_UPSTREAM_CONNECT_TIMEOUT_MS: '1000' }).upstreamConnectTimeoutMs, 1000);
});

test('credentials: passthrough, fixed or map; fixed needs a user name, map needs its file and a valid one', () => {
  assert.equal(loadConfig({ FANOUT_BROKERS: 'a=mqtt://h?credentials=passthrough' }).brokers[0].credentials, 'passthrough');
  assert.equal(loadConfig({ FANOUT_BROKERS: 'a=mqtt://u:p@h?credentials=fixed' }).brokers[0].credentials, 'fixed');
  const bad = (brokers: string, reason: string): void => {
    assertMessage({ FANOUT_BROKERS: brokers }, 'FANOUT_BROKERS', brokers.replace(/:[^:@/]*@/, ':***@'), reason);
  };
  bad('a=mqtt://h?credentials=own', 'broker "a": credentials must be passthrough, fixed or map');
  bad('a=mqtt://h?credentials=fixed', 'broker "a": credentials=fixed needs a user name (in the URL or FANOUT_BROKER_A_USERNAME_FILE)');
  bad('a=mqtt://h?credentials=map', 'broker "a": credentials=map needs credentialsMap');
  const map = file('{"dev-1": {"username": "u1", "password": "p1"}, "*": {"username": "anyone"}}');
  bad(`a=mqtt://h?credentialsMap=${map}`, 'broker "a": credentialsMap goes with credentials=map');
  bad(`a=mqtt://h?credentials=map&credentialsMap=${dir}/missing.json`, 'broker "a": credentialsMap must be a readable file path (percent-encoded where needed)');
  const notJson = file('dev-1 u1 p1');
  const e = configError({ FANOUT_BROKERS: `a=mqtt://h?credentials=map&credentialsMap=${notJson}` });
  assert.match(e.message, new RegExp(`broker "a": credentialsMap "${notJson}": not JSON \\(.*\\); expected a JSON object mapping device user names`));
  const noUser = file('{"dev-1": {"password": "s3cret"}}');
  const e2 = configError({ FANOUT_BROKERS: `a=mqtt://h?credentials=map&credentialsMap=${noUser}` });
  assert.ok(e2.message.endsWith(`broker "a": credentialsMap "${noUser}": entry "dev-1" needs a username of 1 to 65535 bytes`), e2.message);
  assert.ok(!e2.message.includes('s3cret'), 'a password from the map is in the message');
  const broker = loadConfig({ FANOUT_BROKERS: `a=mqtt://h?mode=per-device&credentials=map&credentialsMap=${map}` }).brokers[0];
  assert.deepEqual([broker.mode, broker.credentials, broker.credentialsMap], ['per-device', 'map', map]);
});

test('a user name from FANOUT_BROKER_<NAME>_USERNAME_FILE is enough for credentials=fixed', () => {
  const user = file('proxy\n');
  const broker = loadConfig({ FANOUT_BROKERS: 'cloud=mqtt://h?credentials=fixed', FANOUT_BROKER_CLOUD_USERNAME_FILE: user }).brokers[0];
  assert.equal(broker.username, 'proxy');
});

test('a credentials map looks devices up by user name, then "*"; entries are checked one by one', () => {
  const map = parseCredentialsMap('{"dev-1": {"username": "u1", "password": "p1"}, "*": {"username": "anyone"}}');
  assert.deepEqual(mappedCredentials(map, 'dev-1'), { username: 'u1', password: 'p1' });
  assert.deepEqual(mappedCredentials(map, 'dev-2'), { username: 'anyone' });
  assert.deepEqual(mappedCredentials(map, null), { username: 'anyone' });
  assert.equal(mappedCredentials(parseCredentialsMap('{"dev-1": {"username": "u1"}}'), 'dev-2'), undefined);
  for (const [text, reason] of [
    ['[]', 'expected a JSON object'],
    ['{"d": "u:p"}', 'entry "d" is not an object'],
    ['{"d": {"username": "u", "pass": "p"}}', 'entry "d" has an unknown key "pass"'],
    ['{"d": {"username": ""}}', 'entry "d" needs a username'],
    ['{"d": {"username": "u", "password": 7}}', 'entry "d": password must be a string'],
  ] as const) {
    assert.throws(() => parseCredentialsMap(text), (err: Error) => err.message.includes(reason), text);
  }
});
