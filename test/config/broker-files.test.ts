import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { brokerEnvName, ConfigError, credentialVariable, loadConfig, redactedConfig } from '../../src/config';

const SECRET = 'S3cr3t-from-file';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-broker-files-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** A file holding exactly `content`. */
function file(content: string | Buffer): string {
  const p = path.join(dir, `secret-${++n}`);
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

/** One message naming the variable and the path (never what a file holds), then the reason. */
function assertRejected(env: NodeJS.ProcessEnv, variable: string, reason: string): void {
  const err = configError(env);
  assert.equal(err.variable, variable);
  assert.equal(err.value, env[variable]);
  assert.equal(err.message, `${variable}=${JSON.stringify(env[variable])} is invalid: ${reason}`);
  assert.equal(err.code, 'FANOUT_ERR_CONFIG');
  assert.ok(!err.message.includes(SECRET), err.message);
}

test('<NAME> is the broker name upper-cased, other characters than letters and digits as _', () => {
  assert.equal(brokerEnvName('cloud'), 'CLOUD');
  assert.equal(brokerEnvName('cloud-eu_2'), 'CLOUD_EU_2');
  assert.equal(credentialVariable('site-1', 'PASSWORD'), 'FANOUT_BROKER_SITE_1_PASSWORD_FILE');
  assert.equal(credentialVariable('Site', 'USERNAME'), 'FANOUT_BROKER_SITE_USERNAME_FILE');
});

test('a password file gives the broker its password, less one trailing newline; the URL keeps the user name', () => {
  const pw = file(`${SECRET}\n`);
  const config = loadConfig({ FANOUT_BROKERS: 'cloud-eu=mqtt://proxy@h,site=mqtt://h2', FANOUT_BROKER_CLOUD_EU_PASSWORD_FILE: pw });
  const [cloud, site] = config.brokers;
  assert.deepEqual([cloud.username, cloud.password, cloud.passwordFile, cloud.usernameFile], ['proxy', SECRET, pw, undefined]);
  assert.equal(cloud.redactedUrl, 'mqtt://proxy@h');
  assert.ok(!('password' in site) && !('passwordFile' in site), 'the other broker is untouched');
  assert.ok(Object.isFrozen(cloud), 'the config stays frozen');
});

test('user name and password both from files; CRLF and no newline at all are fine too', () => {
  const config = loadConfig({
    FANOUT_BROKERS: 'a=mqtt://h,b=mqtts://h2',
    FANOUT_BROKER_A_USERNAME_FILE: file('device proxy\r\n'),
    FANOUT_BROKER_A_PASSWORD_FILE: file(`${SECRET} with spaces, colons: and @`),
    FANOUT_BROKER_B_USERNAME_FILE: file('only-a-user\n'),
  });
  const [a, b] = config.brokers;
  assert.deepEqual([a.username, a.password], ['device proxy', `${SECRET} with spaces, colons: and @`]);
  assert.deepEqual([b.username, b.password], ['only-a-user', undefined]);
  // Whitespace other than the one trailing newline belongs to the value.
  assert.equal(loadConfig({ FANOUT_BROKERS: 'a=mqtt://u@h', FANOUT_BROKER_A_PASSWORD_FILE: file(` ${SECRET} \n`) }).brokers[0].password, ` ${SECRET} `);
});

test('an empty value counts as unset', () => {
  const [a] = loadConfig({ FANOUT_BROKERS: 'a=mqtt://u:pw@h', FANOUT_BROKER_A_PASSWORD_FILE: '', FANOUT_BROKER_B_PASSWORD_FILE: '' }).brokers;
  assert.equal(a.password, 'pw');
});

test('the printed configuration shows a password from a file as ***, and where it came from', () => {
  const pw = file(`${SECRET}\n`);
  const config = loadConfig({ FANOUT_BROKERS: 'a=mqtt://u@h', FANOUT_BROKER_A_PASSWORD_FILE: pw });
  const text = JSON.stringify(redactedConfig(config));
  assert.ok(!text.includes(SECRET), text);
  const [a] = (redactedConfig(config) as { brokers: Array<Record<string, unknown>> }).brokers;
  assert.deepEqual([a.username, a.password, a.passwordFile], ['u', '***', pw]);
});

test('a missing or unreadable file stops start-up, naming the variable and the path', () => {
  const env = { FANOUT_BROKERS: 'a=mqtt://u@h', FANOUT_BROKER_A_PASSWORD_FILE: path.join(dir, 'nonexistent') };
  assertRejected(env, 'FANOUT_BROKER_A_PASSWORD_FILE', 'expected a readable file holding the password (ENOENT)');
  assertRejected({ FANOUT_BROKERS: 'a=mqtt://h', FANOUT_BROKER_A_USERNAME_FILE: dir }, 'FANOUT_BROKER_A_USERNAME_FILE',
    'expected a readable file holding the user name (EISDIR)');
});

test('a file variable for a broker that does not exist is rejected with the names that do', () => {
  assertRejected({ FANOUT_BROKERS: 'cloud=mqtt://u@h,site-1=mqtt://h', FANOUT_BROKER_CLUOD_PASSWORD_FILE: file(SECRET) },
    'FANOUT_BROKER_CLUOD_PASSWORD_FILE',
    'no broker of FANOUT_BROKERS has the <NAME> CLUOD; expected FANOUT_BROKER_<NAME>_PASSWORD_FILE with <NAME> one of CLOUD, SITE_1, '
      + "<NAME> being a broker's name in FANOUT_BROKERS upper-cased, with _ for any character other than a letter or a digit");
  assertRejected({ FANOUT_BROKER_CLOUD_USERNAME_FILE: file('u') }, 'FANOUT_BROKER_CLOUD_USERNAME_FILE',
    'FANOUT_BROKERS is not set, so there is no broker CLOUD (the embedded broker takes no credentials); expected '
      + "FANOUT_BROKER_<NAME>_USERNAME_FILE, <NAME> being a broker's name in FANOUT_BROKERS upper-cased, with _ for any character other than a letter or a digit");
});

test('two brokers with the same <NAME> cannot be told apart by a file variable', () => {
  assertRejected({ FANOUT_BROKERS: 'a-b=mqtt://u@h,a_b=mqtt://u@h2', FANOUT_BROKER_A_B_PASSWORD_FILE: file(SECRET) }, 'FANOUT_BROKER_A_B_PASSWORD_FILE',
    'brokers "a-b" and "a_b" both make the <NAME> A_B; rename one of them in FANOUT_BROKERS to tell them apart');
  // Without a file variable for them the two names are fine, as before.
  assert.equal(loadConfig({ FANOUT_BROKERS: 'a-b=mqtt://h,a_b=mqtt://h2' }).brokers.length, 2);
});

test('a password or user name in the URL and in a file at once is refused', () => {
  assertRejected({ FANOUT_BROKERS: `a=mqtt://u:${SECRET}@h`, FANOUT_BROKER_A_PASSWORD_FILE: file(SECRET) }, 'FANOUT_BROKER_A_PASSWORD_FILE',
    'broker "a" has a password in its FANOUT_BROKERS URL already; expected one or the other: remove it from the URL or unset FANOUT_BROKER_A_PASSWORD_FILE');
  assertRejected({ FANOUT_BROKERS: 'a=mqtt://u@h', FANOUT_BROKER_A_USERNAME_FILE: file('v') }, 'FANOUT_BROKER_A_USERNAME_FILE',
    'broker "a" has a user name in its FANOUT_BROKERS URL already; expected one or the other: remove it from the URL or unset FANOUT_BROKER_A_USERNAME_FILE');
});

test('a password needs a user name, from the URL or from a file', () => {
  assertRejected({ FANOUT_BROKERS: 'a=mqtt://h', FANOUT_BROKER_A_PASSWORD_FILE: file(SECRET) }, 'FANOUT_BROKER_A_PASSWORD_FILE',
    'broker "a" has no user name to go with the password; expected one in its FANOUT_BROKERS URL (user@host) or in FANOUT_BROKER_A_USERNAME_FILE');
});

test('the content must be one non-empty line of UTF-8 of at most 65535 bytes', () => {
  const base = { FANOUT_BROKERS: 'a=mqtt://u@h' };
  const v = 'FANOUT_BROKER_A_PASSWORD_FILE';
  for (const empty of ['', '\n', '\r\n']) assertRejected({ ...base, [v]: file(empty) }, v, 'expected a file holding the password: it is empty');
  for (const twoLines of [`${SECRET}\n\n`, `u\n${SECRET}\n`, `${SECRET}\r`]) {
    assertRejected({ ...base, [v]: file(twoLines) }, v, 'expected the password on one line (one trailing newline is dropped): the file has more');
  }
  assertRejected({ ...base, [v]: file(Buffer.from([0x70, 0xff, 0x77])) }, v, 'expected the password as UTF-8 text');
  assertRejected({ ...base, [v]: file('x'.repeat(65536)) }, v, 'expected a password of at most 65535 bytes, as MQTT allows');
  assert.equal(loadConfig({ ...base, [v]: file('x'.repeat(65535)) }).brokers[0].password?.length, 65535);
});

test('problems are reported in order: unknown variables, then FANOUT_BROKERS, then the files (sorted by name)', () => {
  const bad = path.join(dir, 'nonexistent');
  assert.throws(() => loadConfig({ FANOUT_BROKERS: 'a=mqtt://h', FANOUT_BROKER_A_PASSWORD_FILE: bad, FANOUT_PROT: '1' }), { variable: 'FANOUT_PROT' });
  assert.throws(() => loadConfig({ FANOUT_BROKERS: 'a=mqtt://h:0', FANOUT_BROKER_A_PASSWORD_FILE: bad }), { variable: 'FANOUT_BROKERS' });
  assert.throws(() => loadConfig({ FANOUT_BROKERS: 'a=mqtt://h,b=mqtt://h', FANOUT_BROKER_B_USERNAME_FILE: bad, FANOUT_BROKER_A_USERNAME_FILE: bad }),
    { variable: 'FANOUT_BROKER_A_USERNAME_FILE' });
});

test('a misspelt file variable is unknown, and the right name of a configured broker is suggested', () => {
  const err = configError({ FANOUT_BROKERS: 'cloud=mqtt://u@h', FANOUT_BROKER_CLOUD_PASWORD_FILE: '/run/secrets/pw' });
  assert.equal(err.message, 'FANOUT_BROKER_CLOUD_PASWORD_FILE="/run/secrets/pw" is not a known variable (did you mean FANOUT_BROKER_CLOUD_PASSWORD_FILE?)');
  assert.match(configError({ FANOUT_BROKERS: 'cloud=mqtt://u@h', FANOUT_BROKERS_CLOUD_PASSWORD_FILE: '/x' }).message,
    /\(did you mean FANOUT_BROKER_CLOUD_PASSWORD_FILE\?\)$/);
});
