// Record layouts carried by the rings.
//
// Uplink (shard -> writer), one per device PUBLISH per broker:
//   0 u8  kind (REC_PUBLISH)
//   1 u8  flags: bits 0-1 QoS, bit 2 retain, bit 3 the publisher speaks MQTT 5, bit 4 traced
//   2 u16 topic length
//   4 u32 MQTT 5 property bytes length (Topic Alias already removed)
//   8 u32 ack token (NO_TOKEN when the shard waits for no acknowledgement)
//  12 u32 device key: keeps one device's messages on one broker connection, in order
//  16 topic | properties | payload
//
// Ack (writer -> shard): u32 token, u8 reason code (0 = accepted by the broker).

export const REC_PUBLISH = 1;
export const UPLINK_HEADER = 16;
export const NO_TOKEN = 0xffffffff;
export const ACK_RECORD = 8;

export const FLAG_RETAIN = 4;
export const FLAG_V5 = 8;
/** The device is traced (FANOUT_TRACE_CLIENTS). */
export const FLAG_TRACE = 16;

// Downlink (writer -> shard), one per broker PUBLISH per shard that holds a matching filter:
//   0 u8  kind (REC_DELIVER)
//   1 u8  flags: bits 0-1 QoS, bit 2 retain
//   2 u16 local topic length
//   4 u32 MQTT 5 property bytes to pass on (no Subscription Identifier, Topic Alias or Message
//         Expiry Interval: those are per hop)
//   8 u32 request: 0 for a live message to every matching subscription; else the shard's
//         subscribe request this retained message answers, and only it
//  12 u32 Message Expiry Interval in seconds, NO_EXPIRY when absent
//  16 u32 sequence number of the message on this broker's downlink
//  20 topic | properties | payload
export const REC_DELIVER = 2;
export const DOWNLINK_HEADER = 20;
export const NO_EXPIRY = 0xffffffff;

// Per-device upstream mode (src/broker/device-sessions.ts, src/shard/device-upstreams.ts).
//
// Uplink, a device left: its session at the broker ends, after the publishes it sent before
// (the ring keeps their order). Same 16-byte header as REC_PUBLISH:
//   0 u8  kind (REC_DEVICE_CLOSE)
//   1 u8  how: CLOSE_LOST (no DISCONNECT: the broker publishes the will), CLOSE_CLEAN (the
//         device sent DISCONNECT), CLOSE_QUIET (the device was never answered, or the proxy
//         shuts down: DISCONNECT 0x00, no will)
//   2 u8  the device's DISCONNECT reason code
//   3 u8  1 when the device's DISCONNECT set a session expiry interval
//   4 u32 that session expiry interval, in seconds
//   8 u32 NO_TOKEN
//  12 u32 device key
export const REC_DEVICE_CLOSE = 3;
export const CLOSE_LOST = 0;
export const CLOSE_CLEAN = 1;
export const CLOSE_QUIET = 2;

// Downlink, a message the broker sent on one device's own session, for that device only:
//   0 u8  kind (REC_DELIVER_DEVICE)
//   1..19 as REC_DELIVER, with the device key in place of the request (8) and no sequence (16)
//  20 u32 the shard's id of the device's upstream subscription the broker named (MQTT 5
//         Subscription Identifier), 0 when none or several
//  24 topic | properties | payload
export const REC_DELIVER_DEVICE = 3;
export const DEVICE_DOWNLINK_HEADER = 24;
