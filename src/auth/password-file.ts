// mosquitto password files, as written by `mosquitto_passwd` (mosquitto 2.0), one user a line:
//
//   username:$7$<iterations>$<base64 salt>$<base64 hash>   PBKDF2-HMAC-SHA512 (2.0's default)
//   username:$6$<base64 salt>$<base64 hash>                SHA512(password || salt) (1.6 and older)
//
// The salt is 12 bytes and the hash 64, as the broker requires when it loads the file
// (mosquitto src/security_default.c, unpwd__decode_passwords). A line the broker would drop is
// reported here with its number and skipped; messages never quote the hash field, which for an
// unconverted plain-text file would be the password itself.

import { createHash, pbkdf2Sync, timingSafeEqual } from 'node:crypto';

/** Errors of the auth modules: unreadable files, closed authenticator. Checked by `code`. */
export class AuthError extends Error {
  readonly code = 'FANOUT_ERR_AUTH';

  constructor(message: string, readonly file?: string) {
    super(message);
    this.name = 'AuthError';
  }
}

/** A line that was skipped, and why (1-based line number). */
export interface LineError {
  readonly line: number;
  readonly message: string;
}

export interface PasswordEntry {
  readonly username: string;
  readonly kind: 'pbkdf2-sha512' | 'sha512';
  /** PBKDF2 iterations; 1 for 'sha512'. */
  readonly iterations: number;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

export interface PasswordFile {
  readonly entries: ReadonlyMap<string, PasswordEntry>;
  readonly errors: readonly LineError[];
}

export const SALT_BYTES = 12;
export const HASH_BYTES = 64;
/** mosquitto_passwd's default PBKDF2 iteration count (PW_DEFAULT_ITERATIONS). */
export const DEFAULT_ITERATIONS = 101;
/** The broker keeps iterations in a C int. */
const MAX_ITERATIONS = 0x7fffffff;
const MAX_USERNAME_BYTES = 65535;

// C isspace(): what mosquitto's misc__trimblanks() strips, and no Unicode spaces.
const ASCII_BLANKS = /^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const DIGITS = /^[0-9]+$/;

function trimBlanks(s: string): string {
  return s.replace(ASCII_BLANKS, '');
}

/**
 * Strict base64 of exactly `bytes` bytes, in a buffer of its own: Buffer.from() may return a
 * slice of the shared 8 KiB pool, which postMessage would copy whole into the worker.
 */
function decodeBase64(s: string, bytes: number): Buffer | null {
  if (s.length % 4 !== 0 || !BASE64.test(s)) return null;
  const decoded = Buffer.from(s, 'base64');
  if (decoded.length !== bytes) return null;
  const own = Buffer.alloc(bytes);
  decoded.copy(own);
  return own;
}

/** The hash part of an entry, or what is wrong with it. */
function parseHash(field: string): Omit<PasswordEntry, 'username'> | string {
  const parts = field.split('$');
  if (parts[0] !== '' || (parts[1] !== '6' && parts[1] !== '7')) {
    return 'password is not a mosquitto $6$ or $7$ hash (a plain-text file must first be converted with mosquitto_passwd -U)';
  }
  const pbkdf2 = parts[1] === '7';
  if (parts.length !== (pbkdf2 ? 5 : 4)) {
    return pbkdf2
      ? 'malformed $7$ hash: expected $7$<iterations>$<salt>$<hash>'
      : 'malformed $6$ hash: expected $6$<salt>$<hash>';
  }
  let iterations = 1;
  if (pbkdf2) {
    const text = parts[2];
    iterations = DIGITS.test(text) ? Number(text) : NaN;
    if (!(iterations >= 1 && iterations <= MAX_ITERATIONS)) return `invalid iteration count (must be 1 to ${MAX_ITERATIONS})`;
  }
  const salt = decodeBase64(parts[pbkdf2 ? 3 : 2], SALT_BYTES);
  if (salt === null) return `salt is not ${SALT_BYTES} bytes of base64`;
  const hash = decodeBase64(parts[pbkdf2 ? 4 : 3], HASH_BYTES);
  if (hash === null) return `hash is not ${HASH_BYTES} bytes of base64`;
  return { kind: pbkdf2 ? 'pbkdf2-sha512' : 'sha512', iterations, salt, hash };
}

/**
 * Parses a password file. Blank lines and lines starting with '#' are ignored; a line that is
 * not `username:hash` with a valid $6$ or $7$ hash is reported and skipped, and so is a
 * repeated username (the first line for a user stays: every line in `errors` is unused).
 * As in mosquitto, blanks around the username and the hash are trimmed and anything after a
 * second ':' is ignored.
 */
export function parsePasswordFile(text: string): PasswordFile {
  const entries = new Map<string, PasswordEntry>();
  const firstLine = new Map<string, number>();
  const errors: LineError[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const content = trimBlanks(i === 0 ? lines[i].replace(/^\uFEFF/, '') : lines[i]);
    if (content === '' || content.startsWith('#')) continue;
    const colon = content.indexOf(':');
    if (colon < 0) {
      errors.push({ line, message: 'no ":" between username and password hash' });
      continue;
    }
    const username = trimBlanks(content.slice(0, colon));
    if (username === '') {
      errors.push({ line, message: 'empty username' });
      continue;
    }
    if (Buffer.byteLength(username, 'utf8') > MAX_USERNAME_BYTES) {
      errors.push({ line, message: `username longer than ${MAX_USERNAME_BYTES} bytes` });
      continue;
    }
    const rest = content.slice(colon + 1);
    const end = rest.indexOf(':');
    const field = trimBlanks(end < 0 ? rest : rest.slice(0, end));
    const user = JSON.stringify(username);
    if (field === '') {
      errors.push({ line, message: `user ${user}: no password hash` });
      continue;
    }
    const parsed = parseHash(field);
    if (typeof parsed === 'string') {
      errors.push({ line, message: `user ${user}: ${parsed}` });
      continue;
    }
    const first = firstLine.get(username);
    if (first !== undefined) {
      errors.push({ line, message: `user ${user} is already defined on line ${first}; this line is ignored` });
      continue;
    }
    firstLine.set(username, line);
    entries.set(username, Object.freeze({ username, ...parsed }));
  }
  return { entries, errors };
}

/**
 * Does `password` hash to `entry.hash`? The password is taken as the exact bytes the client
 * sent, where mosquitto's C strings stop at a 0 byte: "pw\0x" does not pass for "pw" here
 * (but "pw\0" does for a $7$ entry, as HMAC pads short keys with zeros). The comparison takes
 * the same time wherever the hashes differ.
 */
export function verifyPassword(entry: PasswordEntry, password: Buffer): boolean {
  const actual = entry.kind === 'pbkdf2-sha512'
    ? pbkdf2Sync(password, entry.salt, entry.iterations, HASH_BYTES, 'sha512')
    : createHash('sha512').update(password).update(entry.salt).digest();
  return actual.length === entry.hash.length && timingSafeEqual(actual, entry.hash);
}
