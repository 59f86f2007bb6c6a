// Copying a record's bytes into a SharedArrayBuffer-backed buffer, as the shards and writers do
// per message: Buffer#copy vs TypedArray#set vs copyBytes (a loop for short runs), by length.
//
//   node dist/bench/copy.bench.js

import { copyBytes } from '../src/protocol/bytes';
import { emit, measure, median, si, table } from './common';

const SIZES = [8, 32, 64, 256, 1024];
const BATCH = 1000;

const shared = Buffer.from(new SharedArrayBuffer(1 << 20));
const heap = Buffer.alloc(4096, 7);

function main(): void {
  const rows: string[][] = [];
  for (const size of SIZES) {
    const variants: [string, () => void][] = [
      ['Buffer#copy', () => { for (let i = 0; i < BATCH; i++) heap.copy(shared, (i * 1024) & 0xfffff, 0, size); }],
      ['TypedArray#set', () => { for (let i = 0; i < BATCH; i++) shared.set(heap.subarray(0, size), (i * 1024) & 0xfffff); }],
      ['copyBytes', () => { for (let i = 0; i < BATCH; i++) copyBytes(heap, 0, size, shared, (i * 1024) & 0xfffff); }],
    ];
    for (const [name, op] of variants) {
      const runs = measure(op, BATCH);
      const value = median(runs);
      emit({ bench: 'copy', case: `${size} B heap -> SAB`, variant: name, value, unit: 'copies/s', runs: runs.length });
      rows.push([`${size} B`, name, `${si(value)} copies/s`]);
    }
  }
  console.log(table(['size', 'variant', 'median'], rows, 2));
}

main();
