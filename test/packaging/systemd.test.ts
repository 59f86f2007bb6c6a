// packaging/systemd: the unit passes `systemd-analyze verify` where systemd is installed, has the
// directives operators rely on (reload = SIGHUP, restart on failure, descriptors, hardening), and
// the environment file example is a configuration the daemon accepts (`--check`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runDaemonToExit } from '../helpers/daemon';

const DIR = path.resolve(__dirname, '..', '..', '..', 'packaging', 'systemd');
const UNIT = path.join(DIR, 'mqtt-fanout.service');
const ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => fs.existsSync(p));

/** `Key=value` lines of the unit, by key (a key may repeat). */
function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) out.set(m[1], [...(out.get(m[1]) ?? []), m[2]]);
  }
  return out;
}

test('systemd-analyze verify accepts the unit', { skip: ANALYZE === undefined ? 'systemd-analyze is not installed (systemd absent)' : false }, () => {
  const r = spawnSync(ANALYZE!, ['verify', UNIT], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // verify reports unknown directives and bad values on stderr without failing.
  assert.equal(r.stderr.trim(), '', r.stderr);
});

test('the unit reloads with SIGHUP, restarts on failure but not on a bad configuration, raises LimitNOFILE, runs as its own user, hardened', () => {
  const d = directives(fs.readFileSync(UNIT, 'utf8'));
  const one = (key: string): string => {
    const values = d.get(key) ?? [];
    assert.equal(values.length, 1, `${key} appears once`);
    return values[0];
  };
  assert.equal(one('ExecReload'), '/bin/kill -HUP $MAINPID');
  assert.equal(one('Restart'), 'on-failure');
  assert.equal(one('RestartPreventExitStatus'), '2');
  assert.ok(Number(one('LimitNOFILE')) >= 65536);
  assert.equal(one('User'), 'mqtt-fanout');
  for (const [key, value] of [['NoNewPrivileges', 'true'], ['ProtectSystem', 'strict'], ['ProtectHome', 'true'], ['PrivateTmp', 'true']]) {
    assert.equal(one(key), value, key);
  }
  // Started through the launcher (jemalloc), checked first.
  assert.match(one('ExecStart'), /\/src\/mqtt-fanout$/);
  assert.match(one('ExecStartPre'), /\/src\/mqtt-fanout --check$/);
  assert.equal(one('EnvironmentFile'), '/etc/mqtt-fanout/mqtt-fanout.env');
});

test('the environment file example passes --check', async () => {
  const spool = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-env-'));
  try {
    const env: Record<string, string | undefined> = {
      FANOUT_HOST: undefined, FANOUT_PORT: undefined, FANOUT_SHARDS: undefined, FANOUT_LOG_LEVEL: undefined, FANOUT_PROXY_ID: undefined,
      FANOUT_RECONNECT_MIN_MS: undefined, FANOUT_RECONNECT_MAX_MS: undefined, FANOUT_SHUTDOWN_TIMEOUT_MS: undefined,
    };
    const lines = fs.readFileSync(path.join(DIR, 'mqtt-fanout.env'), 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    assert.ok(lines.length > 3);
    for (const line of lines) {
      const at = line.indexOf('=');
      assert.ok(at > 0, `a VAR=value line: ${line}`);
      env[line.slice(0, at)] = line.slice(at + 1);
    }
    env.FANOUT_SPOOL_DIR = spool;
    const r = await runDaemonToExit(env, 15_000, ['--check']);
    assert.equal(r.code, 0, r.stderr);
    const shown = JSON.parse(r.stdout) as { brokers: { name: string }[]; logFormat: string };
    assert.deepEqual(shown.brokers.map((b) => b.name), ['cloud', 'site']);
    assert.equal(shown.logFormat, 'json');
  } finally {
    fs.rmSync(spool, { recursive: true, force: true });
  }
});
