// Byte copies on the hot path. Buffer#copy goes through a slow JavaScript path for buffers
// backed by a SharedArrayBuffer in Node 20 (bench/copy.bench.ts); short runs are copied by a
// loop, longer ones by TypedArray#set.

const LOOP_MAX = 48;

/** Copies src[start, end) to dst at `at`; returns the number of bytes copied. */
export function copyBytes(src: Uint8Array, start: number, end: number, dst: Uint8Array, at: number): number {
  const n = end - start;
  if (n <= LOOP_MAX) {
    for (let i = 0; i < n; i++) dst[at + i] = src[start + i];
  } else {
    dst.set(src.subarray(start, end), at);
  }
  return n;
}
