// The part of autocannon's programmatic API the http scenario uses (the package
// ships no types). Field names as in autocannon 9's README and lib/.
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events';

  namespace autocannon {
    interface Request {
      method?: string;
      path?: string;
      headers?: Record<string, string>;
      body?: string | Buffer;
      /** Called before each request is built; returns the request to send. */
      setupRequest?: (req: Request, context: Record<string, unknown>) => Request;
    }

    /** One connection. Emits 'request' before it builds and writes a request, 'response' (status, bytes, ms) after each, 'timeout', 'connError'. */
    interface Client extends EventEmitter {
      /** Requests this connection has written so far. */
      reqsMade: number;
    }

    interface Options {
      url: string;
      connections?: number;
      /** Seconds. */
      duration?: number;
      /** Requests in all, instead of a duration. */
      amount?: number;
      pipelining?: number;
      /** Seconds a request may take before the connection is reset. */
      timeout?: number;
      method?: string;
      path?: string;
      headers?: Record<string, string>;
      requests?: Request[];
      setupClient?: (client: Client) => void;
    }

    interface Stats {
      average: number;
      mean: number;
      stddev: number;
      min: number;
      max: number;
      p1: number;
      p2_5: number;
      p10: number;
      p25: number;
      p50: number;
      p75: number;
      p90: number;
      p97_5: number;
      p99: number;
      p99_9: number;
      p99_99: number;
      p99_999: number;
      total?: number;
      sent?: number;
      totalCount?: number;
    }

    interface Result {
      /** Seconds. */
      duration: number;
      start: Date;
      finish: Date;
      errors: number;
      timeouts: number;
      non2xx: number;
      resets: number;
      mismatches: number;
      '1xx': number;
      '2xx': number;
      '3xx': number;
      '4xx': number;
      '5xx': number;
      statusCodeStats: Record<string, { count: number }>;
      /** ms, recorded as whole milliseconds. */
      latency: Stats;
      /** Responses per second, sampled every second; `sent` is requests written. */
      requests: Stats;
      /** Bytes per second. */
      throughput: Stats;
    }

    interface Instance extends EventEmitter {
      stop(): void;
    }

    interface PrintOptions {
      /** Colours are used only when this stream is a terminal. */
      outputStream?: NodeJS.WritableStream;
      renderResultsTable?: boolean;
      /** The table of every latency percentile autocannon keeps. */
      renderLatencyTable?: boolean;
      renderStatusCodes?: boolean;
      verbose?: boolean;
    }

    /** The tables the autocannon command prints, as text. */
    function printResult(result: Result, opts?: PrintOptions): string;
  }

  function autocannon(opts: autocannon.Options, cb: (err: Error | null, result: autocannon.Result) => void): autocannon.Instance;
  export = autocannon;
}
