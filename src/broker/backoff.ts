// Reconnect delay: exponential from min to max with "equal jitter" (half fixed, half random),
// so a fleet of writers does not reconnect in lock-step after a broker restart.

export function nextBackoff(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(base / 2 + random() * (base / 2));
}
