// Tests for the Authenticator (src/auth/authenticator.ts): password files made by the real
// mosquitto_passwd, verification on the piscina pool, reloads.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { Authenticator } from '../../src/auth/authenticator';
import { parsePasswordFile } from '../../src/auth/password-file';
import type { VerifyResult, VerifyTask } from '../../src/auth/verify.worker';

const MOSQUITTO_PASSWD = process.env.MOSQUITTO_PASSWD_BIN ?? 'mosquitto_passwd';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fanout-auth-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function passwd(...args: string[]): void {
  execFileSync(MOSQUITTO_PASSWD, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

let fileCount = 0;
/** A new password file with these users, made by mosquitto_passwd with `extra` options. */
function makeFile(users: Record<string, string>, extra: string[] = []): string {
  const file = path.join(dir, `passwd-${++fileCount}`);
  let first = true;
  for (const [name, pw] of Object.entries(users)) {
    passwd(...extra, ...(first ? ['-c'] : []), '-b', file, name, pw);
    first = false;
  }
  return file;
}

const pw = (s: string): Buffer => Buffer.from(s, 'utf8');

function authErrorLike(file: string, pattern: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    const e = err as { code?: string; message?: string; file?: string };
    assert.equal(e.code, 'FANOUT_ERR_AUTH');
    assert.equal(e.file, file);
    assert.ok(e.message?.includes(file), e.message);
    assert.match(e.message ?? '', pattern);
    return true;
  };
}

test('verifies users of a mosquitto_passwd file, on the pool', async (t) => {
  const file = makeFile({ alice: 'secret', bob: 'b0b' });
  passwd('-H', 'sha512', '-b', file, 'carol', 'hunter2');
  const auth = await Authenticator.load(file, { maxThreads: 2 });
  t.after(() => auth.close());
  assert.equal(auth.size, 3);
  assert.deepEqual(auth.errors, []);
  assert.equal(auth.path, file);

  const before = auth.poolStats.completed;
  assert.equal(await auth.verify('alice', pw('secret')), true);
  assert.equal(await auth.verify('bob', pw('b0b')), true);
  assert.equal(await auth.verify('carol', pw('hunter2')), true);
  assert.equal(await auth.verify('alice', pw('b0b')), false);
  assert.equal(await auth.verify('alice', pw('')), false);
  assert.equal(await auth.verify('Alice', pw('secret')), false);
  assert.equal(await auth.verify('mallory', pw('secret')), false);
  assert.equal(await auth.verify('', pw('')), false);
  // Every answer above, unknown users included, was computed on the pool.
  assert.equal(auth.poolStats.completed - before, 8);
  // No password: refused at once, whoever asks.
  assert.equal(await auth.verify('alice', undefined), false);
  assert.equal(await auth.verify('mallory', undefined), false);
  assert.equal(auth.poolStats.completed - before, 8);
  assert.ok(auth.poolStats.threads >= 1);
});

test('many verifications at once all get their own answer', async (t) => {
  const users: Record<string, string> = {};
  for (let i = 0; i < 8; i++) users[`user${i}`] = `pw${i}`;
  const auth = await Authenticator.load(makeFile(users), { maxThreads: 2 });
  t.after(() => auth.close());
  const checks: Promise<boolean>[] = [];
  const expected: boolean[] = [];
  for (let i = 0; i < 64; i++) {
    const u = i % 10; // user8 and user9 do not exist
    const right = i % 3 !== 0;
    checks.push(auth.verify(`user${u}`, pw(right ? `pw${u}` : `pw${u + 1}`)));
    expected.push(u < 8 && right);
  }
  assert.deepEqual(await Promise.all(checks), expected);
});

test('the worker task hashes on another thread', async () => {
  const file = makeFile({ alice: 'secret' });
  const entry = parsePasswordFile(fs.readFileSync(file, 'utf8')).entries.get('alice');
  assert.ok(entry);
  // The compiled worker next to the compiled authenticator, exactly as the Authenticator runs it.
  const pool = new Piscina<VerifyTask, VerifyResult>({
    filename: path.join(__dirname, '../../src/auth/verify.worker.js'),
    minThreads: 1,
    maxThreads: 1,
  });
  try {
    const task = (password: string): VerifyTask => ({ ...entry, password: pw(password) });
    const good = await pool.run(task('secret'));
    const bad = await pool.run(task('nope'));
    assert.equal(good.ok, true);
    assert.equal(bad.ok, false);
    assert.notEqual(good.threadId, threadId);
    assert.equal(good.threadId, bad.threadId);
  } finally {
    await pool.destroy();
  }
});

test('expensive hashes do not block the event loop, and unknown users cost as much', async (t) => {
  // ~200 ms of PBKDF2 per verification on an idle machine.
  const file = makeFile({ alice: 'secret', bob: 'b0b' }, ['-I', '300000']);
  const auth = await Authenticator.load(file, { maxThreads: 1 });
  t.after(() => auth.close());
  await auth.verify('alice', pw('warm-up'));

  // Event-loop turns while one verification runs: hashing on this thread would allow ~1.
  let turns = 0;
  let running = true;
  const spin = (): void => {
    turns++;
    if (running) setImmediate(spin);
  };
  setImmediate(spin);
  assert.equal(await auth.verify('bob', pw('b0b')), true);
  running = false;
  assert.ok(turns > 20, `only ${turns} event-loop turns during a verification`);

  const time = async (user: string): Promise<number> => {
    const start = performance.now();
    assert.equal(await auth.verify(user, pw('wrong')), false);
    return performance.now() - start;
  };
  const known: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 3; i++) {
    known.push(await time('alice'));
    unknown.push(await time(`nobody${i}`));
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[1];
  const [k, u] = [median(known), median(unknown)];
  assert.ok(k > 50, `a known user took ${k.toFixed(1)} ms: the file's iterations were not used`);
  // Wide bounds for busy machines: what must not happen is the dummy costing ~nothing
  // (or mosquitto_passwd's default 101 iterations, 3000 times less).
  assert.ok(u > k / 4 && u < k * 4, `unknown user ${u.toFixed(1)} ms vs known ${k.toFixed(1)} ms`);
});

test('bad lines are reported at load, the other users still work', async (t) => {
  const file = makeFile({ alice: 'secret' });
  fs.appendFileSync(file, 'plain:text-password\ngarbage\n');
  const auth = await Authenticator.load(file, { maxThreads: 1 });
  t.after(() => auth.close());
  assert.equal(auth.size, 1);
  assert.deepEqual(auth.errors.map((e) => e.line), [2, 3]);
  assert.equal(await auth.verify('alice', pw('secret')), true);
  assert.equal(await auth.verify('plain', pw('text-password')), false);
});

test('an unreadable file is a FANOUT_ERR_AUTH error naming it', async () => {
  const missing = path.join(dir, 'does-not-exist');
  await assert.rejects(Authenticator.load(missing), authErrorLike(missing, /ENOENT/));
  await assert.rejects(Authenticator.load(dir), authErrorLike(dir, /EISDIR/));
});

test('reload picks up added, changed and removed users', async (t) => {
  const file = makeFile({ alice: 'secret', bob: 'b0b' });
  const auth = await Authenticator.load(file, { maxThreads: 1 });
  t.after(() => auth.close());
  passwd('-b', file, 'carol', 'hunter2');
  passwd('-b', file, 'alice', 'new secret');
  passwd('-D', file, 'bob');
  assert.equal(await auth.verify('carol', pw('hunter2')), false);
  await auth.reload();
  assert.equal(auth.size, 2);
  assert.equal(await auth.verify('carol', pw('hunter2')), true);
  assert.equal(await auth.verify('alice', pw('new secret')), true);
  assert.equal(await auth.verify('alice', pw('secret')), false);
  assert.equal(await auth.verify('bob', pw('b0b')), false);
});

test('reload of a broken or missing file rejects and keeps the old users', async (t) => {
  const file = makeFile({ alice: 'secret', bob: 'b0b' });
  const auth = await Authenticator.load(file, { maxThreads: 1 });
  t.after(() => auth.close());
  const good = fs.readFileSync(file, 'utf8');

  // Caught half-written: the last line is cut short.
  fs.writeFileSync(file, good.slice(0, good.length - 30));
  await assert.rejects(auth.reload(), authErrorLike(file, /not reloaded, line 2: user "bob": hash is not 64 bytes/));
  fs.writeFileSync(file, 'garbage\nalso garbage\n');
  await assert.rejects(auth.reload(), authErrorLike(file, /line 1: .*\(and 1 more\)/));
  fs.rmSync(file);
  await assert.rejects(auth.reload(), authErrorLike(file, /ENOENT/));

  assert.equal(auth.size, 2);
  assert.deepEqual(auth.errors, []);
  assert.equal(await auth.verify('alice', pw('secret')), true);
  assert.equal(await auth.verify('bob', pw('b0b')), true);

  // Fixed again: reloads work after failures.
  fs.writeFileSync(file, good.split('\n')[0] + '\n');
  await auth.reload();
  assert.equal(auth.size, 1);
  assert.equal(await auth.verify('bob', pw('b0b')), false);
});

test('close stops the pool; verify and reload reject afterwards', async () => {
  const file = makeFile({ alice: 'secret' });
  const auth = await Authenticator.load(file, { maxThreads: 1 });
  await auth.close();
  await auth.close();
  await assert.rejects(auth.verify('alice', pw('secret')), { code: 'FANOUT_ERR_AUTH' });
  await assert.rejects(auth.reload(), { code: 'FANOUT_ERR_AUTH' });
});

test('maxThreads must be a positive integer', async () => {
  const file = makeFile({ alice: 'secret' });
  await assert.rejects(Authenticator.load(file, { maxThreads: 0 }), RangeError);
  await assert.rejects(Authenticator.load(file, { maxThreads: 1.5 }), RangeError);
});
