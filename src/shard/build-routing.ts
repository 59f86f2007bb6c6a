// The downlink routing of a configuration. Until routes are configured the first broker serves
// every device subscription under the same names.

import type { Config } from '../config/types';
import type { DownlinkRouting } from './routing';

export function buildRouting(config: Config): DownlinkRouting {
  void config;
  return {
    inFilters: (broker, localFilter) => (broker === 0 ? [{ upstream: localFilter, qos: 2 }] : []),
    localTopics: (broker, remoteTopic, out) => {
      out.length = 0;
      if (broker !== 0) return 0;
      out.push(remoteTopic);
      return 1;
    },
  };
}
