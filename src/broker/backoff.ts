// Reconnect delay: exponential from min to max with "equal jitter" (half fixed, half random,
// floored at min),
// so a fleet of writers does not reconnect in lock-step after a broker restart.

export function nextBackoff(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  // Never below the configured minimum, never above the maximum.
  return Math.round(Math.max(minMs, base / 2 + random() * (base / 2)));
}
