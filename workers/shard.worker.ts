import { parentPort, workerData } from 'node:worker_threads';
import { createWorkerLogger } from '../src/log';
import { Shard, type ShardOptions } from '../src/shard/shard';

const data = workerData as Omit<ShardOptions, 'port' | 'log'>;
const log = createWorkerLogger(data.config.logLevel, parentPort!, `shard-${data.index}`);
const shard = new Shard({ ...data, port: parentPort!, log });

// A bug that escapes every handler ends the thread (and the supervisor stops the daemon with
// exit code 1); uWS apps must be closed first, or their open handles abort the whole process.
process.once('uncaughtException', (err) => {
  try {
    shard.closeWebSockets();
  } finally {
    setImmediate(() => { throw err; });
  }
});

shard.start();
