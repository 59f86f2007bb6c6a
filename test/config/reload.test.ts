import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, type Config } from '../../src/config';
import { applyPlan, planReload } from '../../src/config/reload';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-reload-'));
let n = 0;

function brokersFile(text: string): string {
  const file = path.join(dir, `brokers-${++n}.txt`);
  fs.writeFileSync(file, text);
  return file;
}

function load(text: string, env: NodeJS.ProcessEnv = {}): Config {
  return loadConfig({ FANOUT_BROKERS_FILE: brokersFile(text), ...env }, { cpus: 2 });
}

function rejected(env: NodeJS.ProcessEnv): ConfigError {
  try {
    loadConfig(env, { cpus: 2 });
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err;
  }
  assert.fail('expected a ConfigError');
}

test('FANOUT_BROKERS_FILE holds entries one per line or comma-separated, with comments and blank lines', () => {
  const c = load('# upstreams\na=mqtt://127.0.0.1:1\n\n  b=mqtt://127.0.0.1:2?pool=2 , c=mqtt://127.0.0.1:3\n');
  assert.deepEqual(c.brokers.map((b) => [b.name, b.port]), [['a', 1], ['b', 2], ['c', 3]]);
  assert.equal(c.brokers[1].pool, 2);
  assert.equal(c.embeddedBroker, false);
  assert.equal(c.brokersFile, path.join(dir, `brokers-${n}.txt`));
});

test('FANOUT_BROKERS_FILE errors name the variable, the file and what is wrong', () => {
  const missing = path.join(dir, 'none.txt');
  let err = rejected({ FANOUT_BROKERS_FILE: missing });
  assert.equal(err.variable, 'FANOUT_BROKERS_FILE');
  assert.equal(err.message, `FANOUT_BROKERS_FILE=${JSON.stringify(missing)} is invalid: expected a readable file holding the broker list (ENOENT)`);
  const empty = brokersFile('# nothing\n\n');
  err = rejected({ FANOUT_BROKERS_FILE: empty });
  assert.equal(err.message, `FANOUT_BROKERS_FILE=${JSON.stringify(empty)} is invalid: expected at least one name=url entry: the file has none`);
  const both = brokersFile('a=mqtt://127.0.0.1:1');
  err = rejected({ FANOUT_BROKERS_FILE: both, FANOUT_BROKERS: 'a=mqtt://127.0.0.1:1' });
  assert.match(err.message, /expected it or FANOUT_BROKERS, not both/);
  const bad = brokersFile('a=ftp://u:secret@127.0.0.1:1');
  err = rejected({ FANOUT_BROKERS_FILE: bad });
  assert.equal(err.variable, 'FANOUT_BROKERS_FILE');
  assert.equal(err.value, bad);
  assert.ok(err.message.startsWith(`FANOUT_BROKERS_FILE=${JSON.stringify(bad)} is invalid: entry "a=ftp://u:***@127.0.0.1:1": `), err.message);
  assert.ok(!err.message.includes('secret'));
});

test('FANOUT_ADMIN_TOKEN takes 16 to 256 printable characters and is redacted from the shown config', () => {
  assert.equal(loadConfig({ FANOUT_ADMIN_TOKEN: 'x'.repeat(16) }).adminToken, 'x'.repeat(16));
  const err = rejected({ FANOUT_ADMIN_TOKEN: 'short' });
  assert.equal(err.message, 'FANOUT_ADMIN_TOKEN="short" is invalid: expected 16 to 256 printable ASCII characters without spaces');
});

test('a reload plan adds, removes and changes brokers by name, the others unchanged', () => {
  const current = load('a=mqtt://127.0.0.1:1\nb=mqtt://127.0.0.1:2\nc=mqtt://127.0.0.1:3');
  const next = load('a=mqtt://127.0.0.1:1\nc=mqtt://127.0.0.1:3?pool=1\nd=mqtt://127.0.0.1:4');
  const check = planReload({ ...current, brokersFile: next.brokersFile }, next);
  assert.ok(check.ok);
  assert.deepEqual(check.plan.added.map((b) => b.name), ['d']);
  assert.deepEqual(check.plan.removed, [1]);
  assert.deepEqual(check.plan.changed.map((c) => [c.slot, c.broker.name, c.broker.pool]), [[2, 'c', 1]]);
  assert.deepEqual(check.plan.unchanged, ['a']);
  const slots = applyPlan(current, check.plan);
  assert.deepEqual(slots.map((b) => [b.name, b.retired === true]), [['a', false], ['b', true], ['c', false], ['d', false]]);
  // The retired slot stays; a later reload sees only the live ones.
  const again = planReload({ ...current, brokersFile: next.brokersFile, brokers: slots }, next);
  assert.ok(again.ok);
  assert.deepEqual([again.plan.added.length, again.plan.removed.length, again.plan.changed.length], [0, 0, 0]);
});

test('a reload is refused when a setting that needs a restart changed, naming it', () => {
  const current = load('a=mqtt://127.0.0.1:1');
  const next = load('a=mqtt://127.0.0.1:1', { FANOUT_SHARDS: '1' });
  const check = planReload({ ...current, brokersFile: next.brokersFile }, next);
  assert.ok(!check.ok);
  assert.equal(check.variable, 'FANOUT_BROKERS_FILE');
  assert.match(check.message, /not applied: FANOUT_SHARDS changed, which needs a restart/);
  assert.match(check.message, /the configuration in force stays$/);
});

test('a reload may not move the subscriptions off the first broker without FANOUT_ROUTES', () => {
  const current = load('a=mqtt://127.0.0.1:1\nb=mqtt://127.0.0.1:2');
  const next = load('b=mqtt://127.0.0.1:2');
  const check = planReload({ ...current, brokersFile: next.brokersFile }, next);
  assert.ok(!check.ok);
  assert.match(check.message, /without FANOUT_ROUTES the first broker serves the device subscriptions; expected "a" to stay first/);
});

test('a reload refuses to add, remove or change a per-device broker', () => {
  const current = load('a=mqtt://127.0.0.1:1');
  const next = load('a=mqtt://127.0.0.1:1\nd=mqtt://127.0.0.1:4?mode=per-device');
  const check = planReload({ ...current, brokersFile: next.brokersFile }, next);
  assert.ok(!check.ok);
  assert.match(check.message, /broker "d" is in per-device upstream mode/);
});

test('a reload refuses more broker slots than the in-flight table has bits for', () => {
  const list = (from: number, to: number): string => Array.from({ length: to - from }, (_, i) => `b${from + i}=mqtt://127.0.0.1:${from + i + 1}`).join('\n');
  const first = load(list(0, 30));
  // One more slot used by a broker an earlier reload removed.
  const current = { ...first, brokers: [...first.brokers, { ...first.brokers[0], name: 'gone', retired: true }] };
  const next = load(`${list(0, 29)}\nx=mqtt://127.0.0.1:100\ny=mqtt://127.0.0.1:101`);
  const check = planReload({ ...current, brokersFile: next.brokersFile }, next);
  assert.ok(!check.ok);
  assert.match(check.message, /this run has used 31 broker slots and can have at most 31/);
});

test('with FANOUT_BROKERS_FILE, FANOUT_ROUTES may name a broker a reload adds later; with FANOUT_BROKERS it may not', () => {
  const c = load('a=mqtt://127.0.0.1:1', { FANOUT_ROUTES: 'a # both; later # out' });
  assert.deepEqual(c.routes.map((r) => r.broker), ['a', 'later']);
  const err = rejected({ FANOUT_BROKERS: 'a=mqtt://127.0.0.1:1', FANOUT_ROUTES: 'a # both; later # out' });
  assert.equal(err.variable, 'FANOUT_ROUTES');
  assert.match(err.message, /broker "later" is not in FANOUT_BROKERS/);
  const bad = rejected({ FANOUT_BROKERS_FILE: brokersFile('a=mqtt://127.0.0.1:1'), FANOUT_ROUTES: 'a # both; no~name # out' });
  assert.equal(bad.variable, 'FANOUT_ROUTES');
});
