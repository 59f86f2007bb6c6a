import { parentPort, workerData } from 'node:worker_threads';
import { createWorkerLogger } from '../src/log';
import { Writer, type WriterOptions } from '../src/broker/writer';

const data = workerData as Omit<WriterOptions, 'port' | 'log'>;
const log = createWorkerLogger(data.config.logLevel, parentPort!, `writer-${data.broker.name}`);
new Writer({ ...data, port: parentPort!, log }).start();
