// What the downlink needs from the routes (FANOUT_ROUTES): which upstream filters serve a
// device's filter at each broker, and the local topics of a message a broker sends.

export interface DownlinkRouting {
  /** Upstream filters to hold at `broker` for a device filter (empty: that broker does not serve it). */
  inFilters(broker: number, localFilter: string): { upstream: string; qos: number }[];
  /** Local topics of a message received from `broker` on `remoteTopic`, written into `out`; returns the count. */
  localTopics(broker: number, remoteTopic: string, out: string[]): number;
}
