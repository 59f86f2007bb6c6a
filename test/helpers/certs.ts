// Certificates made for a test run with Debian's openssl (no private key is checked in): a CA,
// server certificates for 127.0.0.1, and client certificates with a chosen common name.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Pki {
  dir: string;
  caCert: string;
  /** Makes a certificate signed by this CA; returns the cert and key paths. */
  issue(name: string, cn: string, opts?: { server?: boolean }): { cert: string; key: string };
  remove(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makePki(label = 'ca'): Pki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `fanout-pki-${label}-`));
  // mosquitto started as root drops to its own user: it must be able to read these test files.
  fs.chmodSync(dir, 0o755);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=mqtt-fanout test ${label}`, '-keyout', 'ca.key', '-out', 'ca.pem'], dir);
  fs.chmodSync(path.join(dir, 'ca.pem'), 0o644);
  let serial = 1;
  return {
    dir,
    caCert: path.join(dir, 'ca.pem'),
    issue(name, cn, opts = {}) {
      const key = path.join(dir, `${name}.key`);
      const cert = path.join(dir, `${name}.pem`);
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`,
        '-keyout', key, '-out', `${name}.csr`], dir);
      const ext = path.join(dir, `${name}.ext`);
      fs.writeFileSync(ext, opts.server
        ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
        : 'extendedKeyUsage=clientAuth\n');
      openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', String(serial++),
        '-days', '2', '-extfile', ext, '-out', cert], dir);
      fs.chmodSync(key, 0o644);
      return { cert, key };
    },
    remove() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
