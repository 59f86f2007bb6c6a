// TopicTrie: the subscription index that routes a topic name to every (filter, value) whose
// topic filter matches it, in time proportional to the topic's levels and the matches rather
// than to the number of subscriptions. src/protocol/topic.ts holds the reference matcher
// (matchTopic) whose semantics this must reproduce exactly.
//
// One node per filter level. A node holds
//  - children: the exact next levels, in a Map keyed by a 30-bit hash of the level (so that
//    match() can look a level up straight from the topic string, without allocating a substring
//    for it; levels whose hashes collide are chained through `next`);
//  - plus: the child for a '+' level;
//  - exact: the values of the filter that ends at this node;
//  - multi: the values of the filter that ends with '#' right below this node.
// Nodes left with nothing are pruned at once, so an emptied trie is its root alone.

import { validateTopicFilter } from './topic';

const SLASH = 0x2f;
const DOLLAR = 0x24;
const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;
/** Keep hashes small integers (Smis even with pointer compression): no boxing on Map.get. */
const HASH_MASK = 0x3fffffff;
/** A value list gets a value -> index map beyond this many values (O(1) has/remove). */
const INDEX_THRESHOLD = 8;

/** @internal Hash of topic.slice(start, end) as the trie keys it (exported for the tests). */
export function levelHash(s: string, start: number, end: number): number {
  let h = FNV_OFFSET;
  for (let i = start; i < end; i++) h = Math.imul(h ^ s.charCodeAt(i), FNV_PRIME);
  return h & HASH_MASK;
}

/** The values subscribed with one filter: an array to visit without allocating. */
class ValueList<T> {
  readonly items: T[] = [];
  private index: Map<T, number> | null = null;

  constructor(readonly filter: string) {}

  private indexOf(v: T): number {
    if (this.index !== null) return this.index.get(v) ?? -1;
    const items = this.items;
    for (let i = 0; i < items.length; i++) {
      const x = items[i];
      // SameValueZero, as the Map index compares.
      if (x === v || (x !== x && v !== v)) return i;
    }
    return -1;
  }

  has(v: T): boolean {
    return this.indexOf(v) >= 0;
  }

  add(v: T): boolean {
    if (this.indexOf(v) >= 0) return false;
    const items = this.items;
    items.push(v);
    if (this.index !== null) this.index.set(v, items.length - 1);
    else if (items.length > INDEX_THRESHOLD) this.index = new Map(items.map((x, i) => [x, i]));
    return true;
  }

  remove(v: T): boolean {
    const i = this.indexOf(v);
    if (i < 0) return false;
    const items = this.items;
    const last = items.pop() as T;
    if (i < items.length) {
      items[i] = last;
      this.index?.set(last, i);
    }
    this.index?.delete(v);
    return true;
  }
}

class Node<T> {
  /** Next node in the parent's bucket whose level has the same hash. */
  next: Node<T> | null = null;
  children: Map<number, Node<T>> | null = null;
  childCount = 0;
  plus: Node<T> | null = null;
  exact: ValueList<T> | null = null;
  multi: ValueList<T> | null = null;

  /** `level` is '+' for a parent's `plus` child; exact levels are never '+' (validated). */
  constructor(readonly parent: Node<T> | null, readonly level: string, readonly hash: number) {}

  isEmpty(): boolean {
    return this.childCount === 0 && this.plus === null && this.exact === null && this.multi === null;
  }

  findChild(s: string, start: number, end: number, hash: number): Node<T> | null {
    if (this.children === null) return null;
    let c = this.children.get(hash) ?? null;
    while (c !== null && !sameLevel(c.level, s, start, end)) c = c.next;
    return c;
  }
}

function sameLevel(level: string, s: string, start: number, end: number): boolean {
  if (level.length !== end - start) return false;
  for (let i = 0; i < level.length; i++) if (level.charCodeAt(i) !== s.charCodeAt(start + i)) return false;
  return true;
}

function pushChildren<T>(n: Node<T>, stack: Node<T>[]): void {
  if (n.plus !== null) stack.push(n.plus);
  if (n.children === null) return;
  for (const head of n.children.values()) {
    for (let c: Node<T> | null = head; c !== null; c = c.next) stack.push(c);
  }
}

function visitAll<T>(list: ValueList<T>, visit: (value: T, filter: string) => void): void {
  const items = list.items;
  const filter = list.filter;
  for (let i = 0; i < items.length; i++) visit(items[i], filter);
}

/**
 * Index of (topic filter, value) pairs. Filters must be valid and not shared (pass the filter
 * part of parseShared for those): add() throws a RangeError otherwise. Values are compared with
 * SameValueZero (like Map keys).
 */
export class TopicTrie<T> {
  private readonly root = new Node<T>(null, '', 0);
  private pairs = 0;
  /** match()'s stack of pending '+' branches: the node and where its level begins. */
  private readonly stackNodes: Node<T>[] = [];
  private readonly stackStarts: number[] = [];
  private sp = 0;

  /** Number of (filter, value) pairs. */
  get size(): number {
    return this.pairs;
  }

  /** Subscribes `value` with `filter`; true if the pair is new. */
  add(filter: string, value: T): boolean {
    const rc = validateTopicFilter(filter, { sharedAllowed: false });
    if (rc !== 0) throw new RangeError(`TopicTrie: not a valid non-shared topic filter (reason 0x${rc.toString(16)}): ${JSON.stringify(filter)}`);
    const levels = filter.split('/');
    const last = levels.length - 1;
    const multi = levels[last] === '#';
    let node = this.root;
    for (let i = 0; i < (multi ? last : levels.length); i++) {
      const level = levels[i];
      if (level === '+') {
        node.plus ??= new Node<T>(node, '+', 0);
        node = node.plus;
        continue;
      }
      const h = levelHash(level, 0, level.length);
      let child = node.findChild(level, 0, level.length, h);
      if (child === null) {
        child = new Node<T>(node, level, h);
        node.children ??= new Map();
        child.next = node.children.get(h) ?? null;
        node.children.set(h, child);
        node.childCount++;
      }
      node = child;
    }
    let list: ValueList<T>;
    if (multi) list = node.multi ??= new ValueList<T>(filter);
    else list = node.exact ??= new ValueList<T>(filter);
    if (!list.add(value)) return false;
    this.pairs++;
    return true;
  }

  /** Unsubscribes `value` from `filter`; true if the pair was there. */
  remove(filter: string, value: T): boolean {
    const found = this.find(filter);
    if (found === null) return false;
    const { node, multi } = found;
    const list = multi ? node.multi : node.exact;
    if (list === null || !list.remove(value)) return false;
    this.pairs--;
    if (list.items.length === 0) {
      if (multi) node.multi = null;
      else node.exact = null;
      this.prune(node);
    }
    return true;
  }

  /** True if some value is subscribed with exactly this filter. */
  has(filter: string): boolean {
    const found = this.find(filter);
    if (found === null) return false;
    return (found.multi ? found.node.multi : found.node.exact) !== null;
  }

  /** True if `value` is subscribed with exactly this filter. */
  hasValue(filter: string, value: T): boolean {
    const found = this.find(filter);
    if (found === null) return false;
    const list = found.multi ? found.node.multi : found.node.exact;
    return list !== null && list.has(value);
  }

  /**
   * Calls `visit` once for every (filter, value) pair whose filter matches the topic name
   * `topic`: a value subscribed with several matching filters is visited once per filter.
   * Allocates nothing itself (beyond growing a reusable stack when it meets deeper '+' nesting
   * than before). `visit` may call match() again but must not add to or remove from this trie.
   */
  match(topic: string, visit: (value: T, filter: string) => void): void {
    // Depth-first over the trie, iteratively: a valid filter may have 30,000 '+' levels, too
    // deep for recursion. Pending '+' branches go on a stack kept on the instance (no
    // allocation once it has grown); `sp` is published before every visit, so that a match
    // called from `visit` stacks its branches above ours.
    const nodes = this.stackNodes;
    const starts = this.stackStarts;
    const root = this.root;
    const len = topic.length;
    const base = this.sp;
    let sp = base;
    let node = root;
    // `start`: where the current level begins; len + 1 once every level is consumed.
    let start = 0;
    // The first level of a '$' topic, which '+' and '#' do not match.
    let dollar = len > 0 && topic.charCodeAt(0) === DOLLAR;
    try {
      for (;;) {
        // '#' below this node matches the rest of the topic, including nothing at all.
        if (node.multi !== null && !dollar) {
          this.sp = sp;
          visitAll(node.multi, visit);
        }
        let next: Node<T> | null = null;
        if (start > len) {
          if (node.exact !== null) {
            this.sp = sp;
            visitAll(node.exact, visit);
          }
        } else {
          let end = start;
          let h = FNV_OFFSET;
          for (; end < len; end++) {
            const c = topic.charCodeAt(end);
            if (c === SLASH) break;
            h = Math.imul(h ^ c, FNV_PRIME);
          }
          if (node.plus !== null && !dollar) {
            nodes[sp] = node.plus;
            starts[sp] = end + 1;
            sp++;
          }
          dollar = false;
          next = node.findChild(topic, start, end, h & HASH_MASK);
          start = end + 1;
        }
        if (next !== null) {
          node = next;
          continue;
        }
        if (sp === base) return;
        sp--;
        node = nodes[sp];
        start = starts[sp];
        nodes[sp] = root; // drop the reference (pruned nodes must not linger here)
      }
    } finally {
      this.sp = base;
    }
  }

  /**
   * Calls `visit` for every (filter, value) pair whose filter covers `filter`: matches every
   * topic name `filter` matches (so `#`, `a/#`, `a/+` and `a/b` itself cover `a/b`; `a/#` covers
   * `a`; `+/#` covers `a/+`; nothing but `#`-free literals and '$' first levels cover `$SYS/x`).
   * `filter` must be valid and not shared.
   */
  forEachCovering(filter: string, visit: (value: T, filter: string) => void): void {
    const levels = filter.split('/');
    const dollar = levels[0].charCodeAt(0) === DOLLAR;
    const nodes: Node<T>[] = [this.root];
    const depths: number[] = [0];
    for (let node = nodes.pop(); node !== undefined; node = nodes.pop()) {
      const i = depths.pop() as number;
      // A wildcard first level never matches a topic that starts with '$' [MQTT-4.7.2-1].
      const wild = i > 0 || !dollar;
      if (node.multi !== null && wild) visitAll(node.multi, visit);
      if (i === levels.length) {
        if (node.exact !== null) visitAll(node.exact, visit);
        continue;
      }
      const level = levels[i];
      if (level === '#') continue; // only a '#' covers a '#'
      if (node.plus !== null && wild) {
        nodes.push(node.plus);
        depths.push(i + 1);
      }
      if (level !== '+') {
        const child = node.findChild(level, 0, level.length, levelHash(level, 0, level.length));
        if (child !== null) {
          nodes.push(child);
          depths.push(i + 1);
        }
      }
    }
  }

  /** The distinct filters that have at least one value. */
  filters(): string[] {
    const out: string[] = [];
    const stack: Node<T>[] = [this.root];
    for (let n = stack.pop(); n !== undefined; n = stack.pop()) {
      if (n.exact !== null) out.push(n.exact.filter);
      if (n.multi !== null) out.push(n.multi.filter);
      pushChildren(n, stack);
    }
    return out;
  }

  /** Number of trie nodes, root included (1 when empty): for tests of the pruning. */
  nodeCount(): number {
    let count = 0;
    const stack: Node<T>[] = [this.root];
    for (let n = stack.pop(); n !== undefined; n = stack.pop()) {
      count++;
      pushChildren(n, stack);
    }
    return count;
  }

  /** The node a filter's values live on, without creating anything; null if absent. */
  private find(filter: string): { node: Node<T>; multi: boolean } | null {
    let node: Node<T> | null = this.root;
    let start = 0;
    const len = filter.length;
    for (;;) {
      let end = filter.indexOf('/', start);
      if (end < 0) end = len;
      if (end === len && end - start === 1 && filter.charCodeAt(start) === 0x23) return { node, multi: true };
      if (end - start === 1 && filter.charCodeAt(start) === 0x2b) node = node.plus;
      else node = node.findChild(filter, start, end, levelHash(filter, start, end));
      if (node === null) return null;
      if (end === len) return { node, multi: false };
      start = end + 1;
    }
  }

  /** Detaches `node` and then its ancestors for as long as they are left empty. */
  private prune(node: Node<T>): void {
    for (let parent = node.parent; parent !== null && node.isEmpty(); node = parent, parent = node.parent) {
      if (parent.plus === node) {
        parent.plus = null;
        continue;
      }
      const children = parent.children as Map<number, Node<T>>;
      const head = children.get(node.hash) as Node<T>;
      if (head === node) {
        if (node.next === null) children.delete(node.hash);
        else children.set(node.hash, node.next);
      } else {
        let prev = head;
        while (prev.next !== node) prev = prev.next as Node<T>;
        prev.next = node.next;
      }
      node.next = null;
      if (--parent.childCount === 0) parent.children = null;
    }
  }
}
