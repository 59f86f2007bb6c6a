// A sink (sink.ts) as a process of its own: `node sink.child.js [port]`, started
// by the harness with an IPC channel. It listens on 127.0.0.1 (port 0: one the
// kernel picks), says so, pushes its live counts every LIVE_EVERY_MS and answers
// configure and tally requests. SIGTERM or a lost channel ends it with code 0.
import { FromSink, LIVE_EVERY_MS, SinkServer, ToSink } from './sink';

const send = (msg: FromSink): void => {
  if (process.connected) process.send?.(msg);
};

async function main(): Promise<void> {
  if (!process.send) throw new Error('sink.child must be started with an IPC channel');
  const sink = new SinkServer();
  const port = await sink.listen(Number(process.argv[2] ?? 0));
  const stop = (): void => {
    void sink.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('disconnect', stop);
  process.on('message', (msg: ToSink) => {
    if (msg.type === 'configure') {
      sink.configure(msg.shape);
      send({ type: 'configured' });
    } else if (msg.type === 'watch') sink.tally.watchSentAfter(msg.wallMs);
    else if (msg.type === 'tally') send({ type: 'tally', id: msg.id, tally: sink.tally.tally(msg.broker, msg.expected) });
  });
  setInterval(() => send({ type: 'live', counts: sink.tally.live(), connections: sink.connections }), LIVE_EVERY_MS);
  send({ type: 'listening', port });
}

main().catch((err: unknown) => {
  process.stderr.write(`sink failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
