// FANOUT_UPSTREAM_CONNECT_RATE: the sessions a writer opens at its broker go out at most `rate`
// per second, first come first served, so a storm of devices (or every session coming back after
// the broker restarted) reaches the broker as a steady stream. A token bucket holding a tenth of
// a second's worth: short bursts pass at once, longer ones are spread out.

export class ConnectPacer<T> {
  private queue: T[] = [];
  private head = 0;
  private tokens: number;
  private readonly capacity: number;
  private last: number;
  private timer: NodeJS.Timeout | null = null;

  /** `start` opens one item's connection; `rate` 0 starts every item at once. */
  constructor(private readonly rate: number, private readonly start: (item: T) => void, private readonly now: () => number = Date.now) {
    this.capacity = Math.max(1, Math.ceil(rate / 10));
    this.tokens = this.capacity;
    this.last = now();
  }

  /** Items waiting for their turn. */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  push(item: T): void {
    if (this.rate === 0) {
      this.start(item);
      return;
    }
    this.queue.push(item);
    this.drain();
  }

  /** Takes an item out of the queue (its device left); false when it was not waiting. */
  remove(item: T): boolean {
    const i = this.queue.indexOf(item, this.head);
    if (i < 0) return false;
    this.queue.splice(i, 1);
    return true;
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.queue = [];
    this.head = 0;
  }

  private drain(): void {
    const now = this.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
    while (this.head < this.queue.length && this.tokens >= 1) {
      this.tokens--;
      const item = this.queue[this.head];
      this.queue[this.head++] = undefined as unknown as T;
      this.start(item);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (this.head < this.queue.length && this.timer === null) {
      const ms = Math.max(1, Math.ceil(((1 - this.tokens) * 1000) / this.rate));
      this.timer = setTimeout(() => {
        this.timer = null;
        this.drain();
      }, ms);
    }
  }
}
