// Certificates for the TLS runs, made at run time with openssl in the run's temp dir (no key is
// ever checked in): a CA and a server certificate for 127.0.0.1, both ECDSA P-256, the kind a
// device fleet would use. The devices verify the target against the CA, as real ones do.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ServerCerts {
  /** PEM text of the CA, for the devices. */
  caPem: string;
  caPath: string;
  certPath: string;
  keyPath: string;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim() ?? '';
    throw new Error(`openssl ${args[0]} failed (is openssl installed?): ${stderr || (err as Error).message}`, { cause: err });
  }
}

/** Writes ca.pem, server.pem and server.key under `dir`/tls. */
export function makeServerCerts(dir: string): ServerCerts {
  const tlsDir = path.join(dir, 'tls');
  fs.mkdirSync(tlsDir);
  // A mosquitto started as root drops to its own user before it loads certificates: that user
  // must reach (the run's dir) and read these files.
  fs.chmodSync(dir, 0o711);
  fs.chmodSync(tlsDir, 0o755);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=mqtt-fanout loadtest CA', '-keyout', 'ca.key', '-out', 'ca.pem'], tlsDir);
  openssl(['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr'], tlsDir);
  fs.writeFileSync(path.join(tlsDir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', '1', '-days', '2', '-extfile', 'server.ext', '-out', 'server.pem'], tlsDir);
  for (const f of ['ca.pem', 'server.pem', 'server.key']) fs.chmodSync(path.join(tlsDir, f), 0o644);
  const caPath = path.join(tlsDir, 'ca.pem');
  return { caPem: fs.readFileSync(caPath, 'utf8'), caPath, certPath: path.join(tlsDir, 'server.pem'), keyPath: path.join(tlsDir, 'server.key') };
}
