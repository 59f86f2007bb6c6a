// What a device connection needs from its shard. Kept as an interface so connections can be
// driven by tests without threads.

import type { Logger } from 'pino';
import type { Packet } from 'mqtt-packet';
import type { Config } from '../config/types';
import type { PublishView } from '../protocol/publish';
import type { InflightTable } from './inflight';
import type { Uplink, UplinkMessage } from './uplink';
import type { DeviceConnection } from './connection';
import type { ShardStats } from '../metrics/stats';
import type { Session, SessionLimits } from './session';
import type { AclChecker } from '../auth/acl';
import type { ShardSubscriptions } from './subscriptions';
import type { DeviceUpstreams } from './device-upstreams';

export interface ShardContext {
  readonly config: Config;
  readonly log: Logger;
  readonly uplink: Uplink;
  readonly inflight: InflightTable;
  readonly stats: ShardStats;
  readonly subs: ShardSubscriptions;
  readonly limits: SessionLimits;
  /** Per-device upstream mode: the devices' own sessions at the brokers; null when no broker has it. */
  readonly upstream: DeviceUpstreams | null;
  /** A password file is configured: CONNECTs with a user name are verified. */
  readonly checksPasswords: boolean;
  /** Verifies a password off this thread; `done` runs on this thread. */
  authenticate(username: string, password: Buffer | undefined, done: (ok: boolean) => void): void;
  /** The ACL checker for a device, null without FANOUT_ACL_FILE. */
  aclFor(clientId: string, username: string | null): AclChecker | null;
  /** Counts (and logs, rate-limited) a refusal by authentication or ACL. */
  denied(what: 'anonymous' | 'password' | 'publish' | 'subscribe', conn: DeviceConnection): void;
  /** Device connections open on every shard (FANOUT_MAX_CONNECTIONS). */
  openConnections(): number;
  /** The device is over FANOUT_MAX_PUBLISH_RATE: resume it in `ms`. */
  throttled(conn: DeviceConnection, ms: number): void;
  /** A device acknowledged a delivery: a downlink waiting for queue room may go on. */
  deliveryRoom(): void;
  /** Whether FANOUT_TRACE_CLIENTS covers this client id. */
  traces(clientId: string): boolean;
  /** The session a CONNECT gets: resumed (present) or new; null when it must come from another
   *  shard first (the shard then calls conn.sessionReady()). Claims the client id. */
  openSession(conn: DeviceConnection, clean: boolean, expiryMs: number): { session: Session; present: boolean } | null;
  /** Scratch objects reused for every publish on this shard. */
  readonly view: PublishView;
  readonly msg: UplinkMessage;
  /** Parses a complete non-PUBLISH packet with mqtt-packet; null when malformed. */
  parse(version: number, packet: Buffer): Packet | null;
  /** The connection paused on backpressure. */
  blocked(conn: DeviceConnection): void;
  /** The connection's own reason to pause may be gone (an inflight slot freed). */
  wake(conn: DeviceConnection): void;
  /** The connection has bytes to flush at the end of this turn. */
  dirty(conn: DeviceConnection): void;
  /** A connection whose socket closed with input still to handle (see endOfInput) has handled
   *  it, or was ended meanwhile: the close is completed now. */
  closeDeferred(conn: DeviceConnection): void;
}
