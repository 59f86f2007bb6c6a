// Piscina task: one password verification on a pool thread (src/auth/authenticator.ts runs the
// pool). Buffers arrive as plain Uint8Arrays after the structured clone; they are viewed as
// Buffers again without copying.

import { threadId } from 'node:worker_threads';
import { verifyPassword, type PasswordEntry } from './password-file';

export interface VerifyTask {
  readonly kind: PasswordEntry['kind'];
  readonly iterations: number;
  readonly salt: Uint8Array;
  readonly hash: Uint8Array;
  readonly password: Uint8Array;
}

export interface VerifyResult {
  readonly ok: boolean;
  /** The thread that computed the hash (for tests and diagnostics). */
  readonly threadId: number;
}

function view(u8: Uint8Array): Buffer {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

export default function verify(task: VerifyTask): VerifyResult {
  const entry: PasswordEntry = {
    username: '',
    kind: task.kind,
    iterations: task.iterations,
    salt: view(task.salt),
    hash: view(task.hash),
  };
  return { ok: verifyPassword(entry, view(task.password)), threadId };
}
