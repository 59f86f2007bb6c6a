// Per-device upstream mode, the configuration side: which brokers give each device a session of
// its own, the client id template of those sessions, and the credentials map file of brokers
// with `credentials=map`. Threads that need them (shards, writers) call these on the frozen
// Config they were given, so the rules live in one place.

import * as fs from 'node:fs';
import type { BrokerConfig, Config, UpstreamMode } from './types';

/** The mode a broker runs in: its URL's `mode`, else FANOUT_UPSTREAM_MODE. */
export function upstreamModeOf(config: Pick<Config, 'upstreamMode'>, broker: BrokerConfig): UpstreamMode {
  return broker.mode ?? config.upstreamMode;
}

/** Per broker index: true where every device has a session of its own. */
export function perDeviceBrokers(config: Pick<Config, 'upstreamMode' | 'brokers'>): boolean[] {
  return config.brokers.map((b) => upstreamModeOf(config, b) === 'per-device');
}

export const CLIENT_ID_TEMPLATE_ALLOWED =
  'a template containing {clientId} (the device\'s client id), optionally {broker} (the broker\'s name), '
  + 'other characters from [A-Za-z0-9_.:-] only, at most 128 characters';

/** Whether `raw` is a usable FANOUT_UPSTREAM_CLIENT_ID: without {clientId} every device would
 *  log in as the same client at a broker and take the others' sessions over. */
export function isClientIdTemplate(raw: string): boolean {
  if (raw.length > 128 || !raw.includes('{clientId}')) return false;
  return /^[A-Za-z0-9_.:-]*$/.test(raw.replaceAll('{clientId}', '').replaceAll('{broker}', ''));
}

/** The client id of a device's session at `broker`. */
export function upstreamClientId(template: string, clientId: string, broker: string): string {
  return template.replaceAll('{clientId}', clientId).replaceAll('{broker}', broker);
}

export interface MappedCredentials {
  readonly username: string;
  readonly password?: string;
}

/** A credentials map: device user name (or "*" for any other device) -> broker credentials. */
export type CredentialsMap = ReadonlyMap<string, MappedCredentials>;

export const CREDENTIALS_MAP_ALLOWED =
  'a JSON object mapping device user names (or "*" for every other device) to {"username": ..., "password": ...}';

/** Parses a credentials map file's text; throws an Error saying what is wrong (never a password). */
export function parseCredentialsMap(text: string): CredentialsMap {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (${(err as Error).message}); expected ${CREDENTIALS_MAP_ALLOWED}`, { cause: err });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new Error(`expected ${CREDENTIALS_MAP_ALLOWED}`);
  }
  const map = new Map<string, MappedCredentials>();
  for (const [device, value] of Object.entries(parsed as Record<string, unknown>)) {
    const entry = value as Record<string, unknown> | null;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new Error(`entry ${JSON.stringify(device)} is not an object; expected ${CREDENTIALS_MAP_ALLOWED}`);
    }
    const extra = Object.keys(entry).find((k) => k !== 'username' && k !== 'password');
    if (extra !== undefined) throw new Error(`entry ${JSON.stringify(device)} has an unknown key ${JSON.stringify(extra)}; expected username and password`);
    if (typeof entry.username !== 'string' || entry.username === '' || Buffer.byteLength(entry.username) > 65535) {
      throw new Error(`entry ${JSON.stringify(device)} needs a username of 1 to 65535 bytes`);
    }
    if (entry.password !== undefined && (typeof entry.password !== 'string' || Buffer.byteLength(entry.password) > 65535)) {
      throw new Error(`entry ${JSON.stringify(device)}: password must be a string of at most 65535 bytes`);
    }
    map.set(device, entry.password === undefined ? { username: entry.username } : { username: entry.username, password: entry.password });
  }
  return map;
}

/** Reads and parses a credentials map file; throws as parseCredentialsMap does, or with the errno. */
export function loadCredentialsMap(path: string): CredentialsMap {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot be read (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`, { cause: err });
  }
  return parseCredentialsMap(text);
}

/** The map's credentials for a device: by its user name, else "*"; undefined when neither. */
export function mappedCredentials(map: CredentialsMap, username: string | null): MappedCredentials | undefined {
  return (username === null ? undefined : map.get(username)) ?? map.get('*');
}
