// Per-device upstream mode: the control messages between a shard and a broker's writer, on the
// MessagePort they already share for subscriptions. They are rare (one device CONNECT, SUBSCRIBE
// or UNSUBSCRIBE each); publishes and broker messages keep to the rings, and a device's end
// travels in its uplink ring (REC_DEVICE_CLOSE) so that it comes after its last publishes.

/** A device subscription as the device's session at a broker holds it. */
export interface DeviceSub {
  /** The filter at the broker (after routes), `$share/{group}/` included for shared ones. */
  filter: string;
  qos: number;
  nl: boolean;
  rap: boolean;
  rh: number;
  /** The shard's id of this upstream filter in the device's session: an MQTT 5 broker names it
   *  (Subscription Identifier) in what it sends, so the shard knows which subscriptions a copy
   *  is for. */
  sid: number;
}

/** The device's last will, as its CONNECT gave it (MQTT 5 properties included). */
export interface DeviceWill {
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1 | 2;
  retain: boolean;
  properties?: Record<string, unknown>;
}

export interface DeviceOpen {
  t: 'dev-open';
  shard: number;
  /** The device connection's id on its shard (the uplink records' device key). */
  key: number;
  clientId: string;
  /** The user name the device goes by (its certificate's CN where configured) and its password. */
  username: string | null;
  password: Uint8Array | null;
  /** The device's protocol level. */
  version: number;
  clean: boolean;
  /** Session expiry in seconds (capped by FANOUT_SESSION_EXPIRY_MAX); 0: the session ends with the connection. */
  expiryS: number;
  will: DeviceWill | null;
  /** The largest packet the device takes (MQTT 5 Maximum Packet Size), 0 when it set none. */
  maxPacketSize: number;
  userProperties: Record<string, string | string[]> | null;
  trace: boolean;
  /** What the proxy's session of the device holds at this broker: subscribed again when the
   *  broker has no session of it. */
  subs: DeviceSub[];
}

export type ShardToDevices =
  /** One turn's messages in one postMessage: it costs tens of microseconds, a share of a connection. */
  | { t: 'dev-batch'; ms: ShardToDevices[] }
  | DeviceOpen
  | { t: 'dev-sub'; shard: number; key: number; req: number; subs: DeviceSub[] }
  | { t: 'dev-unsub'; shard: number; key: number; filters: string[] };

/** Why a session did not open: the broker refused it (code: its CONNACK code, in `version`), it
 *  timed out, the process ran out of file descriptors, no credentials for the device (map), or
 *  the device was gone before it could open. */
export type OpenFailure = 'refused' | 'timeout' | 'files' | 'no-credentials' | 'gone';

export type DevicesToShard =
  | { t: 'dev-batch'; ms: DevicesToShard[] }
  | { t: 'dev-opened'; broker: number; key: number; ok: true; present: boolean }
  | { t: 'dev-opened'; broker: number; key: number; ok: false; why: OpenFailure; code: number; version: number }
  | { t: 'dev-suback'; broker: number; key: number; req: number; codes: number[] }
  /** Records for the device wait at the writer (its session cannot send): stop reading it. */
  | { t: 'dev-hold'; broker: number; key: number; held: boolean }
  /** The broker refused the device's session when it was re-established: the device must go. */
  | { t: 'dev-refused'; broker: number; key: number; code: number; version: number };
