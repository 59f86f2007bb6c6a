// A strict reader of the Prometheus text exposition format 0.0.4, for tests: every line must be
// a HELP, a TYPE or a sample (name, optional labels with escapes, a float value), a family's
// HELP and TYPE come before its samples, and sample names belong to the declared family.
// (The npm parsers at hand drop the labels of summaries, which /metrics has.)

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromFamily {
  name: string;
  type: string;
  help: string;
  samples: PromSample[];
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: -?\\d+)?$`);
const LABEL_RE = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)/y;

export function parsePrometheus(text: string): Map<string, PromFamily> {
  const families = new Map<string, PromFamily>();
  let current: PromFamily | null = null;
  text.split('\n').forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line === '') return;
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta;
      if (!new RegExp(`^${NAME}$`).test(name)) throw new Error(`bad metric name, ${where}`);
      let f = families.get(name);
      if (f === undefined) {
        f = { name, type: 'untyped', help: '', samples: [] };
        families.set(name, f);
      } else if (f !== current) {
        throw new Error(`family ${name} declared twice, ${where}`);
      }
      current = f;
      if (kind === 'HELP') f.help = rest;
      else if (['counter', 'gauge', 'summary', 'histogram', 'untyped'].includes(rest)) f.type = rest;
      else throw new Error(`bad type, ${where}`);
      return;
    }
    if (line.startsWith('#')) return;
    const m = SAMPLE_RE.exec(line);
    if (!m) throw new Error(`not a sample, ${where}`);
    const [, name, labelText, valueText] = m;
    if (current === null) throw new Error(`sample before any TYPE, ${where}`);
    const allowed = current.type === 'summary' ? [current.name, `${current.name}_sum`, `${current.name}_count`] : [current.name];
    if (!allowed.includes(name)) throw new Error(`sample ${name} outside its family ${current.name}, ${where}`);
    const labels: Record<string, string> = {};
    if (labelText !== undefined && labelText !== '') {
      LABEL_RE.lastIndex = 0;
      while (LABEL_RE.lastIndex < labelText.length) {
        const l = LABEL_RE.exec(labelText);
        if (!l) throw new Error(`bad labels, ${where}`);
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      }
    }
    const value = valueText === 'NaN' ? Number.NaN : valueText === '+Inf' ? Infinity : valueText === '-Inf' ? -Infinity : Number(valueText);
    if (valueText !== 'NaN' && Number.isNaN(value)) throw new Error(`bad value, ${where}`);
    current.samples.push({ name, labels, value });
  });
  return families;
}
