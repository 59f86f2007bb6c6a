// Topic filters: validation of SUBSCRIBE/UNSUBSCRIBE filters, shared-subscription parsing and
// the reference topic matcher (src/protocol/subscriptions.ts holds the fast index).
//
// Pure functions on JS strings: the filters reaching here were already checked to be
// well-formed UTF-8 (isValidMqttString in properties.ts), but may still contain U+0000 when a
// caller decoded them some other way, so validateTopicFilter checks that again.

import { RC_SHARED_SUBS_NOT_SUPPORTED } from './constants';

/** MQTT 5 reason code 0x8F: Topic Filter invalid (not in constants.ts yet). */
export const RC_TOPIC_FILTER_INVALID = 0x8f;

/** Longest topic filter (or name) in UTF-8 bytes: a 2-byte length prefix [MQTT-1.5.4]. */
export const MAX_TOPIC_BYTES = 65535;

/** Prefix of a shared subscription: `$share/{ShareName}/{filter}` [MQTT-4.8.2]. */
export const SHARED_PREFIX = '$share/';

const SLASH = 0x2f;
const PLUS = 0x2b;
const HASH = 0x23;
const DOLLAR = 0x24;

/**
 * 0 when `filter` is a valid topic filter, else the MQTT 5 reason code to answer with:
 *  - 0x8F for an empty filter, a '#' that is not alone in the last level, a '+' not alone in its
 *    level, U+0000, more than 65535 UTF-8 bytes, or a malformed shared subscription (empty
 *    ShareName, ShareName with '+' or '#', no or empty filter after the ShareName, or an invalid
 *    filter after it);
 *  - 0x9E for a well-formed shared subscription when `opts.sharedAllowed` is false (a malformed
 *    one is 0x8F either way).
 *
 * Only filters starting with exactly "$share/" are shared subscriptions; "$share" alone or
 * "$shared/x" are ordinary filters (and, beginning with '$', only match '$' topics literally).
 */
export function validateTopicFilter(filter: string, opts: { sharedAllowed: boolean }): number {
  const n = filter.length;
  if (n === 0) return RC_TOPIC_FILTER_INVALID;
  // A UTF-16 code unit takes at most 3 UTF-8 bytes, and never fewer than 1.
  if (n > MAX_TOPIC_BYTES) return RC_TOPIC_FILTER_INVALID;
  if (n > MAX_TOPIC_BYTES / 3 && Buffer.byteLength(filter, 'utf8') > MAX_TOPIC_BYTES) return RC_TOPIC_FILTER_INVALID;

  let start = 0;
  let shared = false;
  if (filter.startsWith(SHARED_PREFIX)) {
    const p = SHARED_PREFIX.length;
    const slash = filter.indexOf('/', p);
    // No '/' after the ShareName (no filter at all) or an empty ShareName.
    if (slash <= p) return RC_TOPIC_FILTER_INVALID;
    for (let i = p; i < slash; i++) {
      const c = filter.charCodeAt(i);
      if (c === PLUS || c === HASH || c === 0) return RC_TOPIC_FILTER_INVALID;
    }
    start = slash + 1;
    if (start === n) return RC_TOPIC_FILTER_INVALID;
    shared = true;
  }

  for (let i = start; i < n; i++) {
    const c = filter.charCodeAt(i);
    if (c === 0) return RC_TOPIC_FILTER_INVALID;
    if (c === PLUS) {
      if ((i > start && filter.charCodeAt(i - 1) !== SLASH) || (i + 1 < n && filter.charCodeAt(i + 1) !== SLASH)) return RC_TOPIC_FILTER_INVALID;
    } else if (c === HASH) {
      if (i + 1 !== n || (i > start && filter.charCodeAt(i - 1) !== SLASH)) return RC_TOPIC_FILTER_INVALID;
    }
  }
  if (shared && !opts.sharedAllowed) return RC_SHARED_SUBS_NOT_SUPPORTED;
  return 0;
}

/**
 * Splits `$share/{group}/{filter}` into its parts; null when `filter` does not start with
 * "$share/". Meant for filters that passed validateTopicFilter: on a malformed shared filter the
 * parts may be empty ("$share/g" gives group "g" and filter "") but it is never returned as null,
 * so a malformed shared filter can not be mistaken for an ordinary one.
 */
export function parseShared(filter: string): { group: string; filter: string } | null {
  if (!filter.startsWith(SHARED_PREFIX)) return null;
  const p = SHARED_PREFIX.length;
  const slash = filter.indexOf('/', p);
  if (slash < 0) return { group: filter.slice(p), filter: '' };
  return { group: filter.slice(p, slash), filter: filter.slice(slash + 1) };
}

/**
 * The reference matcher: does the (valid, non-shared) topic filter `filter` match the topic
 * name `topic`? '+' matches exactly one level, '#' its own level and every level below,
 * including none ('a/#' matches 'a'); levels may be empty ('a//b', '/a', 'a/'); a topic that
 * begins with '$' is not matched by a filter whose first level is '+' or '#' [MQTT-4.7.2-1].
 *
 * Naive but allocation-free (scans both strings by index); TopicTrie is the index for many
 * filters. A shared filter must be passed without its "$share/{group}/" prefix (parseShared).
 */
export function matchTopic(filter: string, topic: string): boolean {
  const fl = filter.length;
  const tl = topic.length;
  if (tl > 0 && topic.charCodeAt(0) === DOLLAR && fl > 0) {
    const c = filter.charCodeAt(0);
    if ((c === PLUS || c === HASH) && (fl === 1 || filter.charCodeAt(1) === SLASH)) return false;
  }
  // fi, ti: start of the current level in each string; past the end (length + 1) once its last
  // level was consumed.
  let fi = 0;
  let ti = 0;
  for (;;) {
    let fe = filter.indexOf('/', fi);
    if (fe < 0) fe = fl;
    const flen = fe - fi;
    if (flen === 1 && filter.charCodeAt(fi) === HASH) return true;
    if (ti > tl) return false;
    let te = topic.indexOf('/', ti);
    if (te < 0) te = tl;
    if (!(flen === 1 && filter.charCodeAt(fi) === PLUS)) {
      if (te - ti !== flen) return false;
      for (let k = 0; k < flen; k++) if (filter.charCodeAt(fi + k) !== topic.charCodeAt(ti + k)) return false;
    }
    fi = fe + 1;
    ti = te + 1;
    if (fi > fl) return ti > tl;
  }
}

/** Whether a topic name or filter (UTF-8 bytes) is within the configured length and level limits
 *  (FANOUT_MAX_TOPIC_LENGTH / _LEVELS). Levels are counted only when the topic is long enough to
 *  have too many, so the common short topic costs two comparisons. */
export function withinTopicLimits(buf: Uint8Array, start: number, len: number, maxLength: number, maxLevels: number): boolean {
  if (len > maxLength) return false;
  if (len < maxLevels) return true;
  let levels = 1;
  for (let i = start; i < start + len; i++) if (buf[i] === 0x2f && ++levels > maxLevels) return false;
  return true;
}
