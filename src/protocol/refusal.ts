// The CONNACK code a device gets when one of its sessions at the brokers (per-device upstream
// mode) could not be opened: the broker's own refusal, in the device's protocol level, or the
// proxy's reason when no broker answered.

import type { OpenFailure } from '../broker/device-protocol';
import {
  CONNACK_V4_BAD_PROTOCOL, CONNACK_V4_ID_REJECTED, CONNACK_V4_NOT_AUTHORIZED, CONNACK_V4_UNAVAILABLE, RC_BAD_CREDENTIALS,
  RC_CLIENT_ID_NOT_VALID, RC_NOT_AUTHORIZED, RC_QUOTA_EXCEEDED, RC_SERVER_UNAVAILABLE, RC_UNSPECIFIED, RC_UNSUPPORTED_PROTOCOL,
} from './constants';

export const CONNACK_V4_BAD_CREDENTIALS = 0x04;

/** MQTT 3.1.1 return code -> the MQTT 5 reason code with the same meaning [MQTT 5, 3.2.2.2]. */
const V4_TO_V5: Record<number, number> = {
  [CONNACK_V4_BAD_PROTOCOL]: RC_UNSUPPORTED_PROTOCOL,
  [CONNACK_V4_ID_REJECTED]: RC_CLIENT_ID_NOT_VALID,
  [CONNACK_V4_UNAVAILABLE]: RC_SERVER_UNAVAILABLE,
  [CONNACK_V4_BAD_CREDENTIALS]: RC_BAD_CREDENTIALS,
  [CONNACK_V4_NOT_AUTHORIZED]: RC_NOT_AUTHORIZED,
};

/** MQTT 5 reason codes a 3.1.1 device can be told; anything else is "server unavailable". */
const V5_TO_V4: Record<number, number> = {
  [RC_UNSUPPORTED_PROTOCOL]: CONNACK_V4_BAD_PROTOCOL,
  [RC_CLIENT_ID_NOT_VALID]: CONNACK_V4_ID_REJECTED,
  [RC_BAD_CREDENTIALS]: CONNACK_V4_BAD_CREDENTIALS,
  [RC_NOT_AUTHORIZED]: CONNACK_V4_NOT_AUTHORIZED,
  0x8a: CONNACK_V4_NOT_AUTHORIZED, // Banned
  0x8c: CONNACK_V4_NOT_AUTHORIZED, // Bad authentication method
};

/** A broker's CONNACK refusal `code`, spoken in protocol level `brokerVersion`, as the code for a
 *  device of protocol level `deviceVersion`. */
export function translateRefusal(code: number, brokerVersion: number, deviceVersion: number): number {
  const v5 = brokerVersion === 5 ? (code >= 0x80 ? code : RC_UNSPECIFIED) : (V4_TO_V5[code] ?? RC_SERVER_UNAVAILABLE);
  if (deviceVersion === 5) return v5;
  return V5_TO_V4[v5] ?? CONNACK_V4_UNAVAILABLE;
}

/** The CONNACK code for a device whose session at a broker did not open for `why`. */
export function refusalFor(why: OpenFailure, code: number, brokerVersion: number, deviceVersion: number): number {
  const v5 = deviceVersion === 5;
  switch (why) {
    case 'refused': return translateRefusal(code, brokerVersion, deviceVersion);
    case 'no-credentials': return v5 ? RC_NOT_AUTHORIZED : CONNACK_V4_NOT_AUTHORIZED;
    case 'files': return v5 ? RC_QUOTA_EXCEEDED : CONNACK_V4_UNAVAILABLE;
    default: return v5 ? RC_SERVER_UNAVAILABLE : CONNACK_V4_UNAVAILABLE;
  }
}
