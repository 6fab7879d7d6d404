// Live verdict streams for `weir observe`: each subscriber is an HTTP
// response on the local API receiving one JSON line per violation or audit
// event that passes its filter. A slow reader never slows the agent: while a
// subscriber's socket buffer is full (write() returned false, no 'drain'
// yet) its events are dropped and counted, and the next line it gets says
// how many it missed.
import type { ServerResponse } from 'node:http';
import type { Violation } from './agent.js';

export interface ObserveFilter {
  namespace?: string;
  /** NAME, or NAMESPACE/NAME. */
  pod?: string;
  domain?: string;
  verdict?: string;
  policy?: string;
}

interface Subscriber {
  filter: ObserveFilter;
  res: ServerResponse;
  blocked: boolean;
  missed: number;
}

export function matches(f: ObserveFilter, v: Violation): boolean {
  if (f.namespace !== undefined && v.namespace !== f.namespace) return false;
  if (f.pod !== undefined && (f.pod.includes('/') ? `${v.namespace}/${v.pod}` : v.pod) !== f.pod) return false;
  if (f.domain !== undefined && v.domain !== f.domain) return false;
  if (f.verdict !== undefined && v.verdict !== f.verdict) return false;
  if (f.policy !== undefined && v.policy !== f.policy && !v.policy.endsWith(`/${f.policy}`)) return false;
  return true;
}

export class ObserveHub {
  private readonly subs = new Set<Subscriber>();
  /** Events not delivered to a subscriber because its reader was behind. */
  dropped = 0;

  get size(): number {
    return this.subs.size;
  }

  subscribe(filter: ObserveFilter, res: ServerResponse): () => void {
    const sub: Subscriber = { filter, res, blocked: false, missed: 0 };
    const onDrain = (): void => {
      sub.blocked = false;
    };
    res.on('drain', onDrain);
    this.subs.add(sub);
    return () => {
      res.off('drain', onDrain);
      this.subs.delete(sub);
    };
  }

  publish(v: Violation): void {
    if (this.subs.size === 0) return;
    let line: string | undefined;
    for (const s of this.subs) {
      if (!matches(s.filter, v)) continue;
      if (s.blocked || s.res.writableEnded) {
        s.missed++;
        this.dropped++;
        continue;
      }
      line ??= `${JSON.stringify({ type: 'verdict', ...v })}\n`;
      const out = s.missed > 0 ? `${JSON.stringify({ type: 'missed', count: s.missed })}\n${line}` : line;
      s.missed = 0;
      if (!s.res.write(out)) s.blocked = true;
    }
  }
}
