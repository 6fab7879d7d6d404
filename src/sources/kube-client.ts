// HTTP access to the Kubernetes API for the Kubernetes source: loading the
// configuration, authenticated GETs, API errors with their Retry-After, and
// the JSON-lines reader for watch streams.
//
// Built on @kubernetes/client-node's own pieces: KubeConfig (kubeconfig and
// in-cluster loading, every authenticator, TLS and proxy dispatchers),
// RequestContext and IsomorphicFetchHttpLibrary (the library's undici fetch).
// What the library does not give us, and is added here: the response headers
// of a failed watch (its Watch keeps only the status code, so Retry-After is
// lost), the API server's Status body (reason, message), and an abort signal
// on every request so stop() cuts lists and watches at once.
//
// Secrets: request headers (the bearer token) are never logged or put in an
// error. Messages that come from outside (kubeconfig parse errors, which
// quote the offending line, and authenticator failures) go through
// redactSecrets() first.

import {
  HttpMethod,
  IsomorphicFetchHttpLibrary,
  KubeConfig,
  RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';

/** How long a Retry-After is believed at most; a broken proxy must not park a watch for a day. */
const MAX_RETRY_AFTER_MS = 10 * 60_000;
/** Longest error body read (a Status is small; an HTML error page from a proxy need not be read whole). */
const MAX_ERROR_BODY_CHARS = 64 * 1024;

/** Replaces anything that looks like a credential in a message. */
export function redactSecrets(text: string): string {
  return text
    .replace(/\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+/gi, '$1 [redacted]')
    .replace(/\b(token|password|client-key-data|client-certificate-data|id-token|refresh-token|access-token)(["']?\s*[:=]\s*["']?)[^\s"',}]+/gi, '$1$2[redacted]');
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * A short description of a failure, safe to log: the message and, for
 * network errors, the cause's code (`ECONNREFUSED`), never headers.
 */
export function describeFailure(err: unknown): string {
  if (err instanceof KubeApiError) return err.message;
  let msg = errMessage(err);
  const cause = err instanceof Error ? err.cause : undefined;
  if (cause instanceof Error) {
    const code = 'code' in cause && typeof cause.code === 'string' ? cause.code : undefined;
    msg += `: ${code ?? cause.message}`;
  }
  return redactSecrets(msg);
}

/** Parses Retry-After (delta-seconds or an HTTP-date) into milliseconds from now. */
export function parseRetryAfter(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const v = value.trim();
  if (v === '') return undefined;
  let ms: number;
  if (/^\d+$/.test(v)) ms = Number(v) * 1000;
  else {
    const at = Date.parse(v);
    if (Number.isNaN(at)) return undefined;
    ms = Math.max(0, at - now);
  }
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A `Status` object as the API server sends it with a failure. */
export interface KubeStatus {
  code?: number;
  reason?: string;
  message?: string;
  details?: { retryAfterSeconds?: number };
}

export function asStatus(v: unknown): KubeStatus | undefined {
  if (!isRecord(v) || v['kind'] !== 'Status') return undefined;
  const s: KubeStatus = {};
  if (typeof v['code'] === 'number') s.code = v['code'];
  if (typeof v['reason'] === 'string') s.reason = v['reason'];
  if (typeof v['message'] === 'string') s.message = v['message'];
  const d = v['details'];
  if (isRecord(d) && typeof d['retryAfterSeconds'] === 'number') s.details = { retryAfterSeconds: d['retryAfterSeconds'] };
  return s;
}

/**
 * A failed API request (an HTTP error, or an ERROR event in a watch).
 * `statusCode` is what the library's ListWatch looks at to re-list on 410.
 */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  readonly statusCode: number;
  readonly reason: string | undefined;
  /** From the Retry-After header, else the Status's details.retryAfterSeconds. */
  readonly retryAfterMs: number | undefined;

  constructor(statusCode: number, what: string, status: KubeStatus | undefined, retryAfterMs: number | undefined) {
    const detail = status?.message !== undefined && status.message !== '' ? `: ${redactSecrets(status.message)}` : '';
    super(`${what}: HTTP ${statusCode}${status?.reason !== undefined ? ` ${status.reason}` : ''}${detail}`);
    this.statusCode = statusCode;
    this.reason = status?.reason;
    this.retryAfterMs = retryAfterMs;
  }

  static async fromResponse(res: KubeResponse, what: string): Promise<KubeApiError> {
    let status: KubeStatus | undefined;
    try {
      const text = await res.text();
      status = asStatus(JSON.parse(text.slice(0, MAX_ERROR_BODY_CHARS)) as unknown);
    } catch {
      // Not a Status (a proxy's error page, an empty body): the code says enough.
    }
    const fromStatus = status?.details?.retryAfterSeconds;
    const retryAfterMs = parseRetryAfter(res.headers['retry-after']) ?? (fromStatus !== undefined ? Math.min(fromStatus * 1000, MAX_RETRY_AFTER_MS) : undefined);
    return new KubeApiError(res.status, what, status, retryAfterMs);
  }

  static fromStatus(status: KubeStatus, what: string): KubeApiError {
    const s = status.details?.retryAfterSeconds;
    return new KubeApiError(status.code ?? 500, what, status, s !== undefined ? Math.min(s * 1000, MAX_RETRY_AFTER_MS) : undefined);
  }
}

/** The configuration is unusable: retrying will not help. */
export class KubeConfigError extends Error {
  override readonly name = 'KubeConfigError';
}

/**
 * Loads the client configuration: the given kubeconfig file; else the
 * in-cluster service account when running in a pod; else the usual
 * KUBECONFIG / ~/.kube/config lookup. Refuses the library's last-resort
 * default (http://localhost:8080, no credentials): an agent that silently
 * talks to nothing would never sync.
 */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new KubeConfig();
  const where = path !== undefined ? `kubeconfig ${path}` : 'Kubernetes client configuration';
  try {
    if (path !== undefined) kc.loadFromFile(path);
    else if ((process.env['KUBERNETES_SERVICE_HOST'] ?? '') !== '') kc.loadFromCluster();
    else kc.loadFromDefault();
  } catch (err) {
    // js-yaml errors quote the offending line, which may hold a token.
    const reason = isRecord(err) && typeof err['reason'] === 'string' ? err['reason'] : errMessage(err);
    const code = isRecord(err) && typeof err['code'] === 'string' ? ` (${err['code']})` : '';
    // No `cause`: a logger would serialise it, quoted line and all.
    throw new KubeConfigError(`cannot load ${where}: ${redactSecrets(reason)}${code}`);
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null) throw new KubeConfigError(`${where}: no current cluster (is current-context set?)`);
  if (path === undefined && cluster.name === 'cluster' && cluster.server === 'http://localhost:8080') {
    throw new KubeConfigError(
      'no Kubernetes configuration found: not running in a pod (KUBERNETES_SERVICE_HOST is unset), no KUBECONFIG and no ~/.kube/config; pass --kubeconfig',
    );
  }
  if (cluster.server.startsWith('http:') && cluster.skipTLSVerify !== true) {
    throw new KubeConfigError(`${where}: server ${cluster.server} is plain HTTP; the client refuses it unless insecure-skip-tls-verify is set`);
  }
  return kc;
}

/** A response whose body has not been consumed yet. */
export interface KubeResponse {
  status: number;
  /** Lower-cased header names. */
  headers: Record<string, string>;
  text(): Promise<string>;
  stream(): ReadableStream<Uint8Array> | null;
  /** Frees the connection; call once the body is consumed or abandoned. */
  release(): void;
}

type Dispatcher = NonNullable<ReturnType<RequestContext['getDispatcher']>>;

/**
 * Authenticated GETs against the current cluster. Credentials are applied
 * per request, so a rotated service-account token (the library re-reads the
 * token file every minute) is picked up without a restart. The library
 * builds a new TLS dispatcher per request for TLS clusters; each is closed
 * when its request is released, so nothing lingers after stop().
 */
export class KubeClient {
  readonly server: string;
  private readonly http = new IsomorphicFetchHttpLibrary();

  constructor(private readonly kc: KubeConfig) {
    const cluster = kc.getCurrentCluster();
    if (cluster === null) throw new KubeConfigError('no current cluster');
    this.server = cluster.server.replace(/\/+$/, '');
  }

  /**
   * Applies the credentials once, so a configuration that cannot work (an
   * unreadable token or certificate file, a failing exec plugin) is
   * reported at start() rather than retried forever.
   */
  async verify(): Promise<void> {
    const ctx = new RequestContext(`${this.server}/`, HttpMethod.GET);
    try {
      await this.kc.applySecurityAuthentication(ctx);
    } catch (err) {
      throw new KubeConfigError(`cannot apply the Kubernetes credentials: ${describeFailure(err)}`);
    }
    const d = ctx.getDispatcher();
    if (d !== undefined) await d.close();
  }

  async get(pathAndQuery: string, signal: AbortSignal): Promise<KubeResponse> {
    const ctx = new RequestContext(`${this.server}${pathAndQuery}`, HttpMethod.GET);
    await this.kc.applySecurityAuthentication(ctx);
    ctx.setHeaderParam('Accept', 'application/json');
    ctx.setSignal(signal);
    const dispatcher: Dispatcher | undefined = ctx.getDispatcher();
    let released = false;
    const release = (): void => {
      if (released || dispatcher === undefined) return;
      released = true;
      // destroy(), not close(): an abandoned watch body would keep close() waiting.
      dispatcher.destroy().catch(() => undefined);
    };
    let res: ResponseContext;
    try {
      res = await this.http.send(ctx).toPromise();
    } catch (err) {
      release();
      throw err;
    }
    return {
      status: res.httpStatusCode,
      headers: res.headers,
      text: () => res.body.text(),
      stream: () => res.body.stream(),
      release,
    };
  }
}

/**
 * Splits a watch stream into its JSON lines. A line longer than maxChars
 * (an object far beyond anything etcd stores) fails the stream rather than
 * growing a buffer without bound.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>, maxChars: number): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let nl = buf.indexOf('\n', start); nl >= 0; nl = buf.indexOf('\n', start)) {
      const line = buf.slice(start, nl);
      start = nl + 1;
      if (line.trim() !== '') yield line;
    }
    buf = buf.slice(start);
    if (buf.length > maxChars) throw new Error(`watch event over ${maxChars} characters`);
  }
  buf += decoder.decode();
  if (buf.trim() !== '') yield buf;
}
