import { parentPort, workerData } from 'node:worker_threads';
import { createWorkerLogger } from '../src/log';
import { Shard, type ShardOptions } from '../src/shard/shard';

const data = workerData as Omit<ShardOptions, 'port' | 'log'>;
const log = createWorkerLogger(data.config.logLevel, parentPort!, `shard-${data.index}`);
new Shard({ ...data, port: parentPort!, log }).start();
