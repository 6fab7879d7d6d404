// The agent's local API: HTTP over a Unix socket that only root can open
// (the socket is created mode 0600 in a directory of mode 0700). It answers
// questions about this node's live state for `weir explain`, and later
// `weir status` and `weir observe`. It is never served on a TCP port: what
// it tells (which pod may reach what, and why) is for the node's operator.
//
// Routes are JSON in, JSON out. A handler throws LocalApiError for a bad
// request (400 with the message); anything else is a 500 whose message is
// logged, not sent.
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import type { Logger } from 'pino';

export const DEFAULT_API_SOCKET = '/run/weir/weir.sock';

export class LocalApiError extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

export type Handler = (query: URLSearchParams, req: IncomingMessage, res: ServerResponse) => unknown;

export class LocalApi {
  private server: Server | null = null;

  constructor(
    private readonly path: string,
    private readonly routes: Record<string, Handler>,
    private readonly log: Logger,
  ) {}

  async listen(): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    removeStaleSocket(this.path);
    const server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // The socket is created with the process umask; tighten it before anyone can connect.
      const old = process.umask(0o177);
      try {
        server.listen(this.path, () => resolve());
      } finally {
        process.umask(old);
      }
    });
    chmodSync(this.path, 0o600);
    this.server = server;
    this.log.info({ socket: this.path }, 'local API listening');
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = null;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://weir');
    const route = this.routes[url.pathname];
    if (req.method !== 'GET' || !route) {
      reply(res, 404, { error: `no such endpoint: ${req.method ?? ''} ${url.pathname}` });
      return;
    }
    Promise.resolve()
      .then(() => route(url.searchParams, req, res))
      .then((body) => {
        if (body !== undefined && !res.headersSent) reply(res, 200, body);
      })
      .catch((err: unknown) => {
        if (err instanceof LocalApiError) {
          reply(res, err.status, { error: err.message });
          return;
        }
        this.log.error({ err, path: url.pathname }, 'local API request failed');
        if (!res.headersSent) reply(res, 500, { error: 'internal error (see the agent log)' });
      });
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
}

/** A socket file left by an agent that died is removed; anything else at that path is an error. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  unlinkSync(path);
}

/** A GET to the agent's local API; resolves with the status and the parsed JSON body. */
export function queryLocalApi(socket: string, pathAndQuery: string, timeoutMs = 10_000): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: pathAndQuery, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown });
        } catch {
          reject(new Error(`the agent answered ${res.statusCode ?? 0} with a body that is not JSON: ${text.slice(0, 200)}`));
        }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from the agent at ${socket} within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new Error(`no agent is listening on ${socket} (is weir agent running on this node? is --api-socket the same?)`));
      } else if (err.code === 'EACCES') {
        reject(new Error(`permission denied on ${socket}: the local API is for root only`));
      } else reject(err);
    });
    req.end();
  });
}
