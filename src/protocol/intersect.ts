// Intersection of two topic filters: the one filter matching exactly the topics both match.
// Used when a device subscription has to be narrowed to what a route may bring in from a
// broker (src/config/routes.ts), so it runs per SUBSCRIBE, not per message, and may allocate.

/**
 * The most specific topic filter matching exactly the topics matched by both `a` and `b`, or
 * null when no topic matches both. Both must be valid, non-shared filters (validateTopicFilter
 * returns 0 for them; strip "$share/{group}/" with parseShared first).
 *
 * Level by level: equal literals stay, a literal against '+' is the literal, '+' against '+' is
 * '+', and '#' against the rest of the other filter is that rest ('#' also matches its parent
 * level, so `a/#` ∩ `a` is `a`). A first level that is '+' or '#' does not match topics
 * starting with '$' [MQTT-4.7.2-1], so such a filter never meets a literal '$' first level:
 * `#` ∩ `$SYS/#` is null while `$SYS/#` ∩ `$SYS/+` is `$SYS/+`. Topic names are never empty,
 * so `+` ∩ `/#`, which only the empty topic would match, is null too.
 */
export function intersectFilters(a: string, b: string): string | null {
  const la = a.split('/');
  const lb = b.split('/');
  if (hidesDollar(la[0], lb[0]) || hidesDollar(lb[0], la[0])) return null;
  const out: string[] = [];
  for (let i = 0; ; i++) {
    const x = la[i];
    const y = lb[i];
    if (x === '#') return joinRest(out, lb, i);
    if (y === '#') return joinRest(out, la, i);
    // One filter ran out of levels: only the same depth leaves topics in common.
    if (x === undefined || y === undefined) return x === y ? nonEmpty(out.join('/')) : null;
    if (x === '+') out.push(y);
    else if (y === '+' || x === y) out.push(x);
    else return null;
  }
}

/** A wildcard first level meets a literal first level that starts with '$'. */
function hidesDollar(first: string, other: string): boolean {
  return (first === '+' || first === '#') && other.charCodeAt(0) === 0x24 /* $ */;
}

/** The levels so far followed by the other filter's remaining levels (none: the parent). */
function joinRest(out: string[], rest: readonly string[], from: number): string | null {
  for (let i = from; i < rest.length; i++) out.push(rest[i]);
  return nonEmpty(out.join('/'));
}

/** `+` ∩ `/#` would be the empty filter, yet no topic name is empty [MQTT-4.7.3-1]. */
function nonEmpty(filter: string): string | null {
  return filter === '' ? null : filter;
}
