// mosquitto acl_file access control, with mosquitto 2.0's semantics (src/security_default.c:
// aclfile__parse, add__acl, add__acl_pattern, mosquitto_acl_check_default; src/security.c:
// mosquitto_acl_check, acl__check_dollar), checked against the mosquitto 2.0.11 broker:
//
//  - `topic [read|write|readwrite|deny] <filter>` lines before the first `user <name>` line are
//    the anonymous clients' rules, later ones belong to the last named user (a user named twice
//    gets both sets); `pattern ...` lines apply to every client, with %c replaced by the client
//    id and %u by the username (a pattern with %u does not apply to clients without one).
//  - A client with a username gets only that user's rules and the patterns, never the
//    anonymous ones. Without rules or patterns everything is denied, so is an empty file.
//  - Within the client's own rules a matching deny wins over any grant, then a matching grant
//    allows; only when none of its own rules decided are the patterns consulted, again denies
//    first. So a user's grant beats a pattern deny, and a user's deny beats a pattern grant.
//  - If there are patterns and the client id or username contains '+' or '#', the patterns
//    deny (CVE-2017-7650). mosquitto allows '/' there since 1.4.15 and so does this.
//  - Before any rule: a topic beginning "$SYS" may not be published to (except
//    $SYS/broker/connection/+/state), one beginning "$share" can be neither published to nor
//    received. Rule filters match like subscriptions: '#' and '+' never match a leading '$'.
//  - SUBSCRIBE is not checked against the rules in 2.0 (the acl_file check returns success for
//    it: "FIXME - implement ACL subscription strings"); read access is checked per message at
//    delivery instead, retained messages included.
//
// Unlike mosquitto, which refuses to start on any bad line, a bad line is reported and skipped.

import { readFile } from 'node:fs/promises';
import { TopicTrie } from '../protocol/subscriptions';
import { matchTopic, MAX_TOPIC_BYTES, parseShared, validateTopicFilter } from '../protocol/topic';
import { intersectFilters } from '../protocol/intersect';
import { AuthError, type LineError } from './password-file';

/** Per-connection checks, created once at CONNECT by Acl.forClient. */
export interface AclChecker {
  /** May the client publish to `topic` (a topic name)? */
  canPublish(topic: string): boolean;
  /** May the client subscribe with `filter` (may contain wildcards, may be $share/group/...)? */
  canSubscribe(filter: string): boolean;
  /** May a message on `topic` be delivered to the client? */
  canReceive(topic: string): boolean;
}

export interface Acl {
  /** The checker for one connection: patterns are substituted here, once. */
  forClient(clientId: string, username: string | null): AclChecker;
  /** One-off checks; they build a checker every call, so connections should use forClient. */
  canPublish(clientId: string, username: string | null, topic: string): boolean;
  canSubscribe(clientId: string, username: string | null, filter: string): boolean;
  canReceive(clientId: string, username: string | null, topic: string): boolean;
}

export interface AclParseResult {
  acl: Acl;
  /** Lines that were skipped. mosquitto would refuse the whole file: treat them as serious. */
  errors: LineError[];
}

const READ = 1;
const WRITE = 2;
const DENY = 0;
const ACCESS: ReadonlyMap<string, number> = new Map([['read', READ], ['write', WRITE], ['readwrite', READ | WRITE], ['deny', DENY]]);
const DOLLAR = 0x24;
const SYS_BRIDGE_STATE = '$SYS/broker/connection/+/state';
const SHARED_ALLOWED = { sharedAllowed: true };
const SHARED_REFUSED = { sharedAllowed: false };
/** Beyond this many filters a set is indexed in a trie rather than scanned. */
const LINEAR_MAX = 8;

// TopicTrie.match visits every match; the visitor only raises this flag (no closure per call).
let matched = false;
function onMatch(): void {
  matched = true;
}

/** Topic filters, asked only whether any of them matches a topic name. */
class FilterSet {
  private readonly list: string[] = [];
  private trie: TopicTrie<true> | null = null;

  add(filter: string): void {
    // A "$share/..." rule could only match topic names beginning "$share", which are always
    // denied (and TopicTrie takes no shared filters). Nothing else invalid gets here but an
    // empty filter from substituting an empty client id, which, like in mosquitto, matches
    // nothing.
    if (validateTopicFilter(filter, SHARED_REFUSED) !== 0) return;
    if (this.trie !== null) {
      this.trie.add(filter, true);
      return;
    }
    if (this.list.includes(filter)) return;
    this.list.push(filter);
    if (this.list.length > LINEAR_MAX) {
      const trie = new TopicTrie<true>();
      for (const f of this.list) trie.add(f, true);
      this.trie = trie;
    }
  }

  /** Whether some topic matched by `filter` (a valid, non-shared filter) matches one of them. */
  meets(filter: string): boolean {
    const all = this.trie !== null ? this.trie.filters() : this.list;
    for (const f of all) if (intersectFilters(f, filter) !== null) return true;
    return false;
  }

  matches(topic: string): boolean {
    if (this.trie !== null) {
      matched = false;
      this.trie.match(topic, onMatch);
      return matched;
    }
    const list = this.list;
    for (let i = 0; i < list.length; i++) if (matchTopic(list[i], topic)) return true;
    return false;
  }
}

/** One list of mosquitto rules, split by what they do. */
class RuleSet {
  readonly deny = new FilterSet();
  readonly read = new FilterSet();
  readonly write = new FilterSet();

  add(filter: string, access: number): void {
    if (access === DENY) this.deny.add(filter);
    if (access & READ) this.read.add(filter);
    if (access & WRITE) this.write.add(filter);
  }

  denies(topic: string): boolean {
    return this.deny.matches(topic);
  }

  grants(topic: string, access: number): boolean {
    return (access === WRITE ? this.write : this.read).matches(topic);
  }
}

interface Template {
  readonly topic: string;
  readonly access: number;
  readonly needsUsername: boolean;
}

/** acl__check_dollar: rules for '$' topics that no acl_file rule can lift. */
function dollarAllowed(topic: string, access: number): boolean {
  if (topic.startsWith('$SYS')) return access === READ || matchTopic(SYS_BRIDGE_STATE, topic);
  return !topic.startsWith('$share');
}

class ClientAcl implements AclChecker {
  constructor(
    private readonly own: RuleSet | null,
    private readonly hasPatterns: boolean,
    private readonly fixedPatterns: RuleSet | null,
    private readonly clientPatterns: RuleSet | null,
  ) {}

  canPublish(topic: string): boolean {
    return this.check(topic, WRITE);
  }

  canReceive(topic: string): boolean {
    return this.check(topic, READ);
  }

  /**
   * mosquitto 2.0's acl_file does not check SUBSCRIBE at all (read access is checked for each
   * message delivered, as canReceive does here). This proxy is stricter where it costs nothing:
   * a filter that no read rule of the client can ever match is refused (SUBACK 0x87 / 0x80);
   * any other valid filter is granted and its messages filtered at delivery.
   */
  canSubscribe(filter: string): boolean {
    if (validateTopicFilter(filter, SHARED_ALLOWED) !== 0) return false;
    const plain = parseShared(filter)?.filter ?? filter;
    return (this.own !== null && this.own.read.meets(plain))
      || (this.fixedPatterns !== null && this.fixedPatterns.read.meets(plain))
      || (this.clientPatterns !== null && this.clientPatterns.read.meets(plain));
  }

  private check(topic: string, access: number): boolean {
    if (topic.charCodeAt(0) === DOLLAR && !dollarAllowed(topic, access)) return false;
    const own = this.own;
    if (own !== null) {
      if (own.denies(topic)) return false;
      if (own.grants(topic, access)) return true;
    }
    if (!this.hasPatterns) return false;
    const fixed = this.fixedPatterns;
    const client = this.clientPatterns;
    if ((fixed !== null && fixed.denies(topic)) || (client !== null && client.denies(topic))) return false;
    return (fixed !== null && fixed.grants(topic, access)) || (client !== null && client.grants(topic, access));
  }
}

class AclFile implements Acl {
  constructor(
    private readonly anonymous: RuleSet | null,
    private readonly users: ReadonlyMap<string, RuleSet>,
    private readonly hasPatterns: boolean,
    private readonly fixedPatterns: RuleSet | null,
    private readonly templates: readonly Template[],
  ) {}

  forClient(clientId: string, username: string | null): AclChecker {
    const own = username === null ? this.anonymous : this.users.get(username) ?? null;
    if (!this.hasPatterns) return new ClientAcl(own, false, null, null);
    if (/[+#]/.test(clientId) || (username !== null && /[+#]/.test(username))) {
      // Patterns without rule sets: they deny whatever the client's own rules left undecided.
      return new ClientAcl(own, true, null, null);
    }
    let client: RuleSet | null = null;
    for (const t of this.templates) {
      if (t.needsUsername && username === null) continue;
      // A function replacement: '$' in an id must not act as a replacement pattern.
      const filter = t.topic.replace(/%([cu])/g, (_m, k: string) => (k === 'c' ? clientId : username as string));
      client ??= new RuleSet();
      client.add(filter, t.access);
    }
    return new ClientAcl(own, true, this.fixedPatterns, client);
  }

  canPublish(clientId: string, username: string | null, topic: string): boolean {
    return this.forClient(clientId, username).canPublish(topic);
  }

  canSubscribe(clientId: string, username: string | null, filter: string): boolean {
    return this.forClient(clientId, username).canSubscribe(filter);
  }

  canReceive(clientId: string, username: string | null, topic: string): boolean {
    return this.forClient(clientId, username).canReceive(topic);
  }
}

/** mosquitto_sub_topic_check: '+' alone in its level, '#' alone in the last one ("$share/" is plain text here). */
function isValidRuleFilter(filter: string): boolean {
  const n = filter.length;
  if (n === 0 || Buffer.byteLength(filter, 'utf8') > MAX_TOPIC_BYTES) return false;
  for (let i = 0; i < n; i++) {
    const c = filter[i];
    if (c === '\0') return false;
    if (c === '+' && ((i > 0 && filter[i - 1] !== '/') || (i + 1 < n && filter[i + 1] !== '/'))) return false;
    if (c === '#' && ((i > 0 && filter[i - 1] !== '/') || i + 1 !== n)) return false;
  }
  return true;
}

// C isspace(), as mosquitto trims lines, topics and usernames; tokens are split on ' ' only.
const TRAILING_BLANKS = /[ \t\n\v\f\r]+$/;
const LEADING_BLANKS = /^[ \t\n\v\f\r]+/;

function trimBlanks(s: string): string {
  return s.replace(LEADING_BLANKS, '').replace(TRAILING_BLANKS, '');
}

/** strtok_r(s, " "): the next token from `pos` and where the rest begins. */
function nextToken(s: string, pos: number): { token: string; rest: number } | null {
  while (pos < s.length && s[pos] === ' ') pos++;
  if (pos >= s.length) return null;
  const end = s.indexOf(' ', pos);
  if (end < 0) return { token: s.slice(pos), rest: s.length };
  return { token: s.slice(pos, end), rest: end + 1 };
}

/**
 * Parses an acl_file. Blank lines and lines starting with '#' are ignored (leading blanks are
 * allowed before both, which mosquitto would reject). A line mosquitto would reject is
 * reported and skipped; after an invalid `user` line the `topic` lines up to the next valid
 * `user` line are skipped as well, so they can not end up with the previous user.
 */
export function parseAclFile(text: string): AclParseResult {
  const errors: LineError[] = [];
  let anonymous: RuleSet | null = null;
  const users = new Map<string, RuleSet>();
  let fixedPatterns: RuleSet | null = null;
  const templates: Template[] = [];
  let hasPatterns = false;
  /** The section `topic` lines go to: undefined before any user line, null after a bad one. */
  let section: RuleSet | null | undefined;
  let badUserLine = 0;

  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const s = trimBlanks(i === 0 ? lines[i].replace(/^\uFEFF/, '') : lines[i]);
    if (s === '' || s.startsWith('#')) continue;
    const first = nextToken(s, 0) as { token: string; rest: number };
    const keyword = first.token;
    if (keyword === 'user') {
      const rest = s.slice(first.rest);
      if (rest === '') {
        errors.push({ line, message: 'missing username after "user"' });
        section = null;
        badUserLine = line;
        continue;
      }
      const name = trimBlanks(rest);
      section = users.get(name);
      if (section === undefined) {
        section = new RuleSet();
        users.set(name, section);
      }
      continue;
    }
    if (keyword !== 'topic' && keyword !== 'pattern') {
      errors.push({ line, message: `unknown keyword ${JSON.stringify(keyword)} (expected topic, pattern or user)` });
      continue;
    }
    const second = nextToken(s, first.rest);
    if (second === null) {
      errors.push({ line, message: `missing topic after "${keyword}"` });
      continue;
    }
    let topic = second.token;
    let access = READ | WRITE;
    const rest = s.slice(second.rest);
    if (rest !== '') {
      const a = ACCESS.get(second.token);
      if (a === undefined) {
        errors.push({ line, message: `invalid access type ${JSON.stringify(second.token)} (expected read, write, readwrite or deny)` });
        continue;
      }
      access = a;
      topic = trimBlanks(rest);
    }
    if (!isValidRuleFilter(topic)) {
      errors.push({ line, message: `invalid topic filter ${JSON.stringify(topic)}` });
      continue;
    }
    if (keyword === 'pattern') {
      hasPatterns = true;
      if (/%[cu]/.test(topic)) {
        templates.push({ topic, access, needsUsername: topic.includes('%u') });
      } else {
        fixedPatterns ??= new RuleSet();
        fixedPatterns.add(topic, access);
      }
      continue;
    }
    if (section === null) {
      errors.push({ line, message: `rule skipped: the user line before it (line ${badUserLine}) is invalid` });
      continue;
    }
    if (section === undefined) section = anonymous ??= new RuleSet();
    section.add(topic, access);
  }
  return { acl: new AclFile(anonymous, users, hasPatterns, fixedPatterns, templates), errors };
}

/** Reads and parses an acl_file; an AuthError (code FANOUT_ERR_AUTH) when it cannot be read. */
export async function loadAclFile(path: string): Promise<AclParseResult> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new AuthError(`cannot read ACL file ${path}: ${e.code ?? e.message}`, path);
  }
  return parseAclFile(text);
}
