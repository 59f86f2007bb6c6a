// Username/password checks against a mosquitto password file, with the hashing on a small
// piscina pool so that files with many PBKDF2 iterations never stall the thread that asks.
// The pool belongs to the supervisor thread; socket-owning threads send it their requests.
//
// An unknown user is verified against a dummy entry that costs what most of the file's entries
// cost, so the answer time does not tell which usernames exist.

import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import {
  AuthError, DEFAULT_ITERATIONS, HASH_BYTES, parsePasswordFile, SALT_BYTES,
  type LineError, type PasswordEntry, type PasswordFile,
} from './password-file';
import type { VerifyResult, VerifyTask } from './verify.worker';

export interface AuthenticatorOptions {
  /** Pool threads; default half the cores (at least 1): authentication must not starve shards. */
  maxThreads?: number;
}

/** Worker threads above the one kept warm exit after this long without work. */
const IDLE_TIMEOUT_MS = 60_000;

async function readPasswordFile(file: string): Promise<PasswordFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new AuthError(`cannot read password file ${file}: ${e.code ?? e.message}`, file);
  }
  return parsePasswordFile(text);
}

/**
 * A stand-in for unknown users: a random salt and hash (no password matches them) with the
 * kind and iteration count most entries of the file have, mosquitto_passwd's default if none.
 */
function dummyEntry(entries: ReadonlyMap<string, PasswordEntry>): PasswordEntry {
  const counts = new Map<string, number>();
  let best: PasswordEntry | null = null;
  let bestCount = 0;
  for (const e of entries.values()) {
    const key = `${e.kind}/${e.iterations}`;
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    if (n > bestCount) {
      best = e;
      bestCount = n;
    }
  }
  return {
    username: '',
    kind: best?.kind ?? 'pbkdf2-sha512',
    iterations: best?.iterations ?? DEFAULT_ITERATIONS,
    salt: randomBytes(SALT_BYTES),
    hash: randomBytes(HASH_BYTES),
  };
}

export class Authenticator {
  private file: PasswordFile;
  private dummy: PasswordEntry;
  private readonly pool: Piscina<VerifyTask, VerifyResult>;
  /** Reloads run one after another, so an older read never replaces a newer one. */
  private reloads: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(readonly path: string, file: PasswordFile, opts: AuthenticatorOptions) {
    this.file = file;
    this.dummy = dummyEntry(file.entries);
    const maxThreads = opts.maxThreads ?? Math.max(1, Math.floor(os.availableParallelism() / 2));
    if (!Number.isInteger(maxThreads) || maxThreads < 1) throw new RangeError(`Authenticator: maxThreads must be a positive integer, got ${maxThreads}`);
    this.pool = new Piscina<VerifyTask, VerifyResult>({
      filename: join(__dirname, 'verify.worker.js'),
      minThreads: 1,
      maxThreads,
      idleTimeout: IDLE_TIMEOUT_MS,
    });
  }

  /**
   * Reads and parses the password file and starts the pool. Rejects with an AuthError
   * (code FANOUT_ERR_AUTH) naming the file when it cannot be read; lines that could not be
   * used are in `errors` (log them: mosquitto logs and drops them the same way).
   */
  static async load(file: string, opts: AuthenticatorOptions = {}): Promise<Authenticator> {
    return new Authenticator(file, await readPasswordFile(file), opts);
  }

  /** The lines of the current file that were skipped. */
  get errors(): readonly LineError[] {
    return this.file.errors;
  }

  /** Number of users. */
  get size(): number {
    return this.file.entries.size;
  }

  /** Pool counters, for metrics: threads running, verifications done and waiting. */
  get poolStats(): { threads: number; completed: number; queued: number } {
    return { threads: this.pool.threads.length, completed: this.pool.completed, queued: this.pool.queueSize };
  }

  /**
   * false for an unknown user (after the same work as for a known one: a dummy entry is
   * verified so that timing does not reveal which users exist), a wrong password, or a
   * missing password (at once: that does not depend on the user).
   */
  async verify(username: string, password: Buffer | undefined): Promise<boolean> {
    if (this.closed) throw new AuthError('authenticator is closed', this.path);
    if (password === undefined) return false;
    const entry = this.file.entries.get(username);
    const target = entry ?? this.dummy;
    // Fresh, exact-size copies: a pooled Buffer would drag its whole 8 KiB slab along.
    const result = await this.pool.run({
      kind: target.kind,
      iterations: target.iterations,
      salt: target.salt,
      hash: target.hash,
      password: new Uint8Array(password),
    });
    return entry !== undefined && result.ok;
  }

  /**
   * Re-reads the file (on SIGHUP). Rejects with an AuthError and keeps the current users when
   * the file cannot be read or has a line that cannot be used: a file caught half-written or
   * mis-edited must not lock users out. Verifications already running finish with the old data.
   */
  reload(): Promise<void> {
    const next = this.reloads.then(async () => {
      if (this.closed) throw new AuthError('authenticator is closed', this.path);
      const file = await readPasswordFile(this.path);
      if (file.errors.length > 0) {
        const first = file.errors[0];
        const more = file.errors.length > 1 ? ` (and ${file.errors.length - 1} more)` : '';
        throw new AuthError(`password file ${this.path} not reloaded, line ${first.line}: ${first.message}${more}`, this.path);
      }
      this.file = file;
      this.dummy = dummyEntry(file.entries);
    });
    this.reloads = next.catch(() => undefined);
    return next;
  }

  /** Stops the pool; verify() and reload() reject afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.destroy();
  }
}
