// Logging: JSON lines through pino. The supervisor's logger writes through a pino transport, a
// thread of its own, so no socket-owning thread ever waits on stdout. Workers hand their lines
// to the supervisor (logs are per event, never per message), which passes them on unchanged.
// FANOUT_LOG_FORMAT=pretty makes that transport pino-pretty: every line, the workers' included,
// is formatted there, so formatting costs the shards and writers nothing.

import pino, { type Logger } from 'pino';
import type { MessagePort } from 'node:worker_threads';
import type { LogFormat, LogLevel } from './config/types';

export interface LogLine {
  t: 'log';
  line: string;
}

export interface MainLog {
  logger: Logger;
  /** Writes a line produced by a worker's logger. */
  relay(line: string): void;
  /** Flushes the transport; call before exiting. */
  flush(): Promise<void>;
}

/** pino-pretty runs in the transport's thread, whose stdout is not the terminal: it is told
 *  whether to colour. */
function transportTarget(format: LogFormat): pino.TransportSingleOptions {
  if (format === 'json') return { target: 'pino/file', options: { destination: 1 } };
  return {
    target: 'pino-pretty',
    options: { destination: 1, colorize: process.stdout.isTTY === true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname' },
  };
}

export function createMainLogger(level: LogLevel, format: LogFormat = 'json'): MainLog {
  const stream = pino.transport(transportTarget(format));
  const logger = pino({ level, base: { pid: process.pid }, redact: ['password', '*.password'] }, stream);
  return {
    logger,
    relay: (line) => stream.write(line),
    // The transport ends itself on process exit; ending it here would make any later line
    // (a worker's last words) fail with "SonicBoom destroyed".
    flush: () => new Promise((resolve) => {
      logger.flush(() => resolve());
      setTimeout(resolve, 1000).unref();
    }),
  };
}

export function createWorkerLogger(level: LogLevel, port: MessagePort, thread: string): Logger {
  const destination = {
    write(line: string): void {
      const m: LogLine = { t: 'log', line };
      port.postMessage(m);
    },
  };
  return pino({ level, base: { pid: process.pid, thread }, redact: ['password', '*.password'] }, destination);
}

/**
 * A warning that may fire per message (drops, refusals): logged at most once per interval per
 * key, with the number of occurrences since the last line, so a flood cannot flood the log.
 */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number; fields: Record<string, unknown>; msg: string }>();

  constructor(private readonly logger: Logger, private readonly intervalMs = 5000) {}

  /** Logs at most one line per `key` per interval; `occurrences` counts the ones it stands for. */
  warn(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const entry = this.last.get(key);
    if (entry !== undefined && now - entry.at < this.intervalMs) {
      entry.suppressed++;
      entry.fields = fields;
      return;
    }
    const occurrences = 1 + (entry?.suppressed ?? 0);
    this.last.set(key, { at: now, suppressed: 0, fields, msg });
    this.logger.warn({ ...fields, occurrences }, msg);
  }

  /** Logs what was held back for longer than the interval (call it from a timer, and once at
   *  the end), so a burst of problems is never reported as just its first occurrence. */
  flush(force = false): void {
    const now = Date.now();
    for (const [key, entry] of this.last) {
      if (entry.suppressed > 0 && (force || now - entry.at >= this.intervalMs)) {
        this.logger.warn({ ...entry.fields, occurrences: entry.suppressed }, entry.msg);
        this.last.set(key, { ...entry, at: now, suppressed: 0 });
      }
    }
  }
}
