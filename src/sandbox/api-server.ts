// A stand-in kube-apiserver (part of the sandbox toolkit: the tests and the
// propagation bench use it; no test-framework imports here): the list/watch
// protocol over plain HTTP on 127.0.0.1, for the resources weir reads,
// behaving the way the real server does where a client can tell:
//
// - One cluster-wide resourceVersion counter; every create, update and
//   delete takes the next value. Lists carry it in metadata.resourceVersion.
// - List items of built-in kinds have no apiVersion/kind (only the List
//   does); custom resources (weir.dev) keep theirs.
// - `?watch=true&resourceVersion=N` streams, chunked, one JSON object per
//   line (`{"type": ..., "object": ...}`), every change after N, then live
//   changes. Without a resourceVersion (or with "0") it first sends the
//   current objects as ADDED.
// - A resourceVersion older than the retained window is answered as the
//   real server does: HTTP 200 and one ERROR event carrying a Status with
//   code 410 (reason Expired), then the end of the stream. `goneAs: 'http'`
//   answers HTTP 410 with a Status instead, as some paths of the real server do.
//   The window: compact() drops every change so far; `windowSize` keeps only
//   the latest N changes.
// - `allowWatchBookmarks=true` gets BOOKMARK events (an object of the
//   resource's kind with only metadata.resourceVersion, the current one)
//   every bookmarkIntervalMs, and on bookmark().
// - `fieldSelector` for pods (spec.nodeName, status.phase, metadata.*) and
//   metadata.name / metadata.namespace elsewhere; an object that starts or
//   stops matching is sent as ADDED / DELETED, as the real server does.
//   Simple `labelSelector`s (k=v, k!=v, k, !k).
// - `timeoutSeconds` ends the watch cleanly after that long.
// - Bearer-token authentication (401 with a Status otherwise).
// - RBAC, when given rules (`rbac: { rules, user }`, or setRbac()): every
//   authenticated request is authorized as kube-apiserver's RBAC authorizer
//   does, before anything else is done with it. The attributes come from the
//   method and path as RequestInfo derives them: verb (GET of a collection:
//   list, or watch with watch=true; GET of an object: get; POST create, PUT
//   update, PATCH patch, DELETE delete, or deletecollection without a name;
//   the legacy /watch/ path form), API group ('' for /api/v1), resource and
//   subresource (`pods/log`), namespace, name (also a list's fieldSelector
//   metadata.name=X). A rule matches on verbs, apiGroups, resources
//   (`*`, `*` before a slash and a subresource), resourceNames and, for
//   non-resource requests, nonResourceURLs (exact or a trailing `*`).
//   Non-resource requests are authorized by path, and every authenticated
//   user has the bootstrap roles system:discovery (/api, /api/*, /apis,
//   /apis/*, /version, /openapi/*, health paths; not `/`),
//   system:public-info-viewer and system:basic-user. A denied request gets
//   403 with kube-apiserver's Forbidden Status (message `pods is forbidden:
//   User "..." cannot list resource "pods" in API group "" at the cluster
//   scope`, details {name, group, kind} with empty ones left out). The
//   request log records each decision (RequestRecord.authorization).
// - Failures as Status objects: failNext(n, status, retryAfter) answers the
//   next n matching requests with that status (and a Retry-After header).
// - Discovery: /version, /api, /api/v1, /apis, /apis/<group>/<version>.
// - Writes, for the resources weir writes (events.k8s.io/v1 Events): POST
//   (201; 409 AlreadyExists; a namespace in the body must match the path's),
//   PATCH with application/merge-patch+json or
//   application/strategic-merge-patch+json (both applied as a JSON merge
//   patch, RFC 7386, which is what a strategic merge patch of an Event's
//   scalar fields and `series` amounts to; any other patch type: 415; a
//   stale metadata.resourceVersion in the patch: 409 Conflict), DELETE, and
//   GET of one object or a list. Events are validated as kube-apiserver
//   validates writes through events.k8s.io/v1 (422 Invalid): eventTime
//   required as a MicroTime (RFC 3339 with exactly six fractional digits),
//   type Normal or Warning, reportingController a qualified name,
//   reportingInstance, action and reason required and at most 128
//   characters, note at most 1024 bytes, series.count at least 2 with a
//   lastObservedTime, the regarding object's namespace equal to the Event's
//   (cluster-scoped objects: the Event in default or kube-system), the
//   deprecated core fields unset; on update every field but series and
//   metadata is immutable. Other resources answer writes with 405.
//   The request log records each write's content type and parsed body.
//
// Control: create/update/apply/delete, compact, dropWatches (cut every open
// watch mid-stream), endWatches (end them cleanly), bookmark, failNext,
// hangNext (accept a request and never answer),
// serve/unserve (a CRD installed or not: 404), stop/start (an outage: the
// state survives, the port is kept), and a request log so tests can assert
// what a client asked for.

import { randomBytes, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';

export interface FakeResource {
  plural: string;
  group: string;
  version: string;
  kind: string;
  listKind: string;
  namespaced: boolean;
  /** Built-in: list items are sent without apiVersion/kind. */
  builtin: boolean;
  /** Field selector labels the real server accepts for this resource. */
  fields: readonly string[];
  /** Accepts POST, PATCH and DELETE (others answer writes with 405). */
  writable?: boolean;
}

const META_FIELDS = ['metadata.name', 'metadata.namespace'] as const;

export const FAKE_RESOURCES: readonly FakeResource[] = [
  { plural: 'namespaces', group: '', version: 'v1', kind: 'Namespace', listKind: 'NamespaceList', namespaced: false, builtin: true, fields: [...META_FIELDS, 'status.phase'] },
  { plural: 'pods', group: '', version: 'v1', kind: 'Pod', listKind: 'PodList', namespaced: true, builtin: true, fields: [...META_FIELDS, 'spec.nodeName', 'spec.restartPolicy', 'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase', 'status.podIP', 'status.nominatedNodeName'] },
  { plural: 'services', group: '', version: 'v1', kind: 'Service', listKind: 'ServiceList', namespaced: true, builtin: true, fields: [...META_FIELDS, 'spec.clusterIP', 'spec.type'] },
  { plural: 'endpointslices', group: 'discovery.k8s.io', version: 'v1', kind: 'EndpointSlice', listKind: 'EndpointSliceList', namespaced: true, builtin: true, fields: [...META_FIELDS] },
  { plural: 'networkpolicies', group: 'networking.k8s.io', version: 'v1', kind: 'NetworkPolicy', listKind: 'NetworkPolicyList', namespaced: true, builtin: true, fields: [...META_FIELDS] },
  { plural: 'egresspolicies', group: 'weir.dev', version: 'v1alpha1', kind: 'EgressPolicy', listKind: 'EgressPolicyList', namespaced: true, builtin: false, fields: [...META_FIELDS] },
  { plural: 'clusteregresspolicies', group: 'weir.dev', version: 'v1alpha1', kind: 'ClusterEgressPolicy', listKind: 'ClusterEgressPolicyList', namespaced: false, builtin: false, fields: [...META_FIELDS] },
  {
    plural: 'events',
    group: 'events.k8s.io',
    version: 'v1',
    kind: 'Event',
    listKind: 'EventList',
    namespaced: true,
    builtin: true,
    fields: [...META_FIELDS, 'reason', 'type', 'reportingController', 'regarding.kind', 'regarding.name', 'regarding.namespace', 'regarding.uid', 'regarding.apiVersion'],
    writable: true,
  },
];

function apiVersionOf(r: FakeResource): string {
  return r.group === '' ? r.version : `${r.group}/${r.version}`;
}

export type JsonObject = Record<string, unknown>;

/** An object as tests hand it in: apiVersion optional (taken from the kind), kind and metadata.name required. */
export interface FakeObjectInput {
  apiVersion?: string;
  kind: string;
  metadata: { name: string; namespace?: string; [k: string]: unknown };
  [k: string]: unknown;
}

export interface RequestRecord {
  /** Date.now() when the request arrived. */
  time: number;
  method: string;
  path: string;
  query: Record<string, string>;
  /** Plural resource name, for resource requests. */
  resource?: string;
  watch: boolean;
  /** The resourceVersion query parameter, when given. */
  resourceVersion?: string;
  /** The HTTP status sent (0: not answered, see hangNext()). */
  status: number;
  /** Authenticated: the request carried the server's bearer token. */
  authorized: boolean;
  /** The authorization decision, when the server enforces RBAC (authenticated requests only). */
  authorization?: AuthorizationDecision;
  /** The namespace and object name in the path, for resource requests. */
  namespace?: string;
  name?: string;
  /** Writes (POST, PATCH, PUT): the Content-Type sent and the body, parsed as JSON (the raw text if it is not JSON). */
  contentType?: string;
  body?: unknown;
}

export interface FailureFilter {
  resource?: string;
  /** true: only watch requests; false: only lists, gets and writes. */
  watch?: boolean;
  /** Only requests with this HTTP method (or one of these), e.g. 'POST' or ['POST', 'PATCH']. */
  method?: string | readonly string[];
}

/** The largest request body accepted (kube-apiserver's limit is 3 MiB). */
const MAX_REQUEST_BODY = 3 * 1024 * 1024;

export interface FakeApiServerOptions {
  /** The bearer token clients must send (default: random). */
  token?: string;
  /** BOOKMARK period for watches that allow them (default 1000 ms; 0: only on bookmark()). */
  bookmarkIntervalMs?: number;
  /** Retain only the latest N changes (default: all, until compact()). */
  windowSize?: number;
  /** How an expired resourceVersion is refused on a watch (default 'event'). */
  goneAs?: 'event' | 'http';
  /** First resourceVersion handed out is this plus one (default 1000). */
  initialResourceVersion?: number;
  /** Resources answered with 404, as when their CRD is not installed (see serve()/unserve()). */
  unserved?: string[];
  /**
   * Enforce RBAC on the token's requests: they are authorized against these
   * rules (what the roles bound to the token's user grant, e.g. a
   * ClusterRole's rules through a ClusterRoleBinding) plus what every
   * authenticated user is granted (system:discovery,
   * system:public-info-viewer, system:basic-user). Denied: 403 Forbidden.
   * Default: no authorization (every authenticated request is allowed).
   */
  rbac?: FakeRbacOptions;
}

// ---------------------------------------------------------------------------
// RBAC, as kube-apiserver's RBAC authorizer decides
// (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go for the request's
// attributes, plugin/pkg/auth/authorizer/rbac for the rules).

/** A rule of a Role or ClusterRole: rbac.authorization.k8s.io/v1 PolicyRule. */
export interface PolicyRule {
  apiGroups?: readonly string[];
  /** Plural resource names, `pods/log` for a subresource; `*` is every resource, a `*` before a slash every resource's subresource. */
  resources?: readonly string[];
  verbs: readonly string[];
  resourceNames?: readonly string[];
  /** Non-resource paths (`/healthz`, `/apis/*`); ClusterRoles only, and not with resources. */
  nonResourceURLs?: readonly string[];
}

export interface FakeRbacOptions {
  rules: readonly PolicyRule[];
  /** The token's user, as Forbidden messages name it (default system:serviceaccount:weir-system:weir). */
  user?: string;
}

/** What a request is authorized on: kube-apiserver's RequestInfo. */
export interface RequestAttributes {
  /** false: a non-resource request (`/version`, `/apis`, `/healthz`), authorized by path. */
  resourceRequest: boolean;
  /** get, list, watch, create, update, patch, delete, deletecollection (resource requests); the lower-cased HTTP method otherwise. */
  verb: string;
  /** The URL path, as sent. */
  path: string;
  /** '' for the core group. */
  apiGroup: string;
  apiVersion: string;
  resource: string;
  subresource: string;
  /** '' for cluster-scoped requests. */
  namespace: string;
  /** '' for collections (a list or watch with fieldSelector metadata.name=X names X). */
  name: string;
}

export interface AuthorizationDecision extends RequestAttributes {
  allowed: boolean;
  user: string;
  /** What allowed it: `rules[i]` (the configured rules) or a default role's `name.rules[i]`. */
  allowedBy?: string;
  /** Denied: the Forbidden Status's message. */
  message?: string;
}

export const DEFAULT_RBAC_USER = 'system:serviceaccount:weir-system:weir';

/** The bootstrap ClusterRoles every authenticated user is bound to (group system:authenticated). */
export const AUTHENTICATED_USER_ROLES: readonly { name: string; rules: readonly PolicyRule[] }[] = [
  { name: 'system:discovery', rules: [{ verbs: ['get'], nonResourceURLs: ['/livez', '/readyz', '/healthz', '/version', '/version/', '/openapi', '/openapi/*', '/api', '/api/*', '/apis', '/apis/*'] }] },
  { name: 'system:public-info-viewer', rules: [{ verbs: ['get'], nonResourceURLs: ['/livez', '/readyz', '/healthz', '/version', '/version/'] }] },
  {
    name: 'system:basic-user',
    rules: [
      { verbs: ['create'], apiGroups: ['authorization.k8s.io'], resources: ['selfsubjectaccessreviews', 'selfsubjectrulesreviews'] },
      { verbs: ['create'], apiGroups: ['authentication.k8s.io'], resources: ['selfsubjectreviews'] },
    ],
  },
];

/** A bool query parameter as the API server decodes it: present and not "0" or "false" (any case) is true. */
function queryBool(v: string | null): boolean {
  return v !== null && v !== '0' && v.toLowerCase() !== 'false';
}

function splitPath(path: string): string[] {
  const p = path.replace(/^\/+|\/+$/g, '');
  return p === '' ? [] : p.split('/');
}

/** fields.Selector.RequiresExactMatch(field): the value of a `field=v` or `field==v` term. */
function exactFieldMatch(selector: string | null, field: string): string | undefined {
  if (selector === null || selector === '') return undefined;
  for (const term of selector.split(',')) {
    const m = /^([^!=]+)(==|=)(.*)$/.exec(term.trim());
    if (m !== null && m[1]?.trim() === field) return m[3] ?? '';
  }
  return undefined;
}

/** The attributes of a request, derived from its method and URL as kube-apiserver's RequestInfoFactory does. */
export function requestAttributes(method: string, url: URL): RequestAttributes {
  const a: RequestAttributes = { resourceRequest: false, verb: method.toLowerCase(), path: url.pathname, apiGroup: '', apiVersion: '', resource: '', subresource: '', namespace: '', name: '' };
  let parts = splitPath(url.pathname).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  // /api/{version}/... and /apis/{group}/{version}/...; anything shorter is a non-resource request.
  if (parts.length < 3 || (parts[0] !== 'api' && parts[0] !== 'apis')) return a;
  const prefix = parts[0];
  parts = parts.slice(1);
  if (prefix === 'apis') {
    if (parts.length < 3) return a;
    a.apiGroup = parts[0] ?? '';
    parts = parts.slice(1);
  }
  a.resourceRequest = true;
  a.apiVersion = parts[0] ?? '';
  parts = parts.slice(1);
  if ((parts[0] === 'watch' || parts[0] === 'proxy') && parts.length >= 2) {
    // The legacy /api/v1/watch/pods form.
    a.verb = parts[0];
    parts = parts.slice(1);
  } else {
    const verbs: Record<string, string> = { POST: 'create', GET: 'get', HEAD: 'get', PUT: 'update', PATCH: 'patch', DELETE: 'delete' };
    a.verb = verbs[method.toUpperCase()] ?? '';
  }
  if (parts[0] === 'namespaces') {
    if (parts.length > 1) {
      a.namespace = parts[1] ?? '';
      // /namespaces/{ns}/{resource}/...; but /namespaces/{ns}/status and /finalize are subresources of the namespace.
      if (parts.length > 2 && parts[2] !== 'status' && parts[2] !== 'finalize') parts = parts.slice(2);
    }
  }
  if (parts.length >= 3 && a.verb !== 'proxy') a.subresource = parts[2] ?? '';
  if (parts.length >= 2) a.name = parts[1] ?? '';
  if (parts.length >= 1) a.resource = parts[0] ?? '';
  // No name: a GET is a list or a watch; a DELETE is a deletecollection.
  if (a.name === '' && a.verb === 'get') {
    a.verb = queryBool(url.searchParams.get('watch')) ? 'watch' : 'list';
    const name = exactFieldMatch(url.searchParams.get('fieldSelector'), 'metadata.name');
    if (name !== undefined && name !== '.' && name !== '..' && !/[/%]/.test(name)) a.name = name;
  }
  if (a.name === '' && a.verb === 'delete') a.verb = 'deletecollection';
  return a;
}

/** rbac.RuleAllows: whether one rule grants the request. */
export function ruleAllows(rule: PolicyRule, a: RequestAttributes): boolean {
  const verbOk = rule.verbs.some((v) => v === '*' || v === a.verb);
  if (!verbOk) return false;
  if (!a.resourceRequest) {
    return (rule.nonResourceURLs ?? []).some((u) => u === '*' || u === a.path || (u.endsWith('*') && a.path.startsWith(u.replace(/\*+$/, ''))));
  }
  if (!(rule.apiGroups ?? []).some((g) => g === '*' || g === a.apiGroup)) return false;
  const combined = a.subresource === '' ? a.resource : `${a.resource}/${a.subresource}`;
  const resourceOk = (rule.resources ?? []).some((r) => r === '*' || r === combined || (a.subresource !== '' && r === `*/${a.subresource}`));
  if (!resourceOk) return false;
  const names = rule.resourceNames ?? [];
  return names.length === 0 || names.includes(a.name);
}

/** What kube-apiserver's ClusterRole validation refuses in a rule (ValidatePolicyRule); '' when it is valid. */
export function policyRuleProblem(rule: PolicyRule): string {
  const n = (v: readonly string[] | undefined): number => v?.length ?? 0;
  if (n(rule.verbs) === 0) return 'verbs must contain at least one value';
  if (n(rule.nonResourceURLs) > 0) {
    return n(rule.apiGroups) > 0 || n(rule.resources) > 0 || n(rule.resourceNames) > 0 ? 'rules cannot apply to both regular resources and non-resource URLs' : '';
  }
  if (n(rule.apiGroups) === 0) return 'resource rules must supply at least one api group';
  if (n(rule.resources) === 0) return 'resource rules must supply at least one resource';
  return '';
}

/** The RBAC authorizer's decision on a request of `user`, granted `rules` (and what every authenticated user has). */
export function authorize(rules: readonly PolicyRule[], a: RequestAttributes, user: string = DEFAULT_RBAC_USER): AuthorizationDecision {
  const i = rules.findIndex((r) => ruleAllows(r, a));
  if (i >= 0) return { ...a, allowed: true, user, allowedBy: `rules[${i}]` };
  for (const role of AUTHENTICATED_USER_ROLES) {
    const j = role.rules.findIndex((r) => ruleAllows(r, a));
    if (j >= 0) return { ...a, allowed: true, user, allowedBy: `${role.name}.rules[${j}]` };
  }
  return { ...a, allowed: false, user, message: forbiddenMessage(a, user) };
}

/** responsewriters.Forbidden + apierrors.NewForbidden: the message of the 403 Status. */
function forbiddenMessage(a: RequestAttributes, user: string): string {
  let why: string;
  if (!a.resourceRequest) why = `User ${JSON.stringify(user)} cannot ${a.verb} path ${JSON.stringify(a.path)}`;
  else {
    const res = a.subresource === '' ? a.resource : `${a.resource}/${a.subresource}`;
    const scope = a.namespace !== '' ? `in the namespace ${JSON.stringify(a.namespace)}` : 'at the cluster scope';
    why = `User ${JSON.stringify(user)} cannot ${a.verb} resource ${JSON.stringify(res)} in API group ${JSON.stringify(a.apiGroup)} ${scope}`;
  }
  const gr = !a.resourceRequest ? '' : a.apiGroup === '' ? a.resource : `${a.resource}.${a.apiGroup}`;
  if (gr === '') return `forbidden: ${why}`;
  return a.name === '' ? `${gr} is forbidden: ${why}` : `${gr} ${JSON.stringify(a.name)} is forbidden: ${why}`;
}

/** The 403 Status (details' empty fields are left out, as Go's omitempty does). */
function forbiddenStatus(d: AuthorizationDecision): JsonObject {
  const details: JsonObject = {};
  if (d.resourceRequest && d.name !== '') details['name'] = d.name;
  if (d.resourceRequest && d.apiGroup !== '') details['group'] = d.apiGroup;
  if (d.resourceRequest && d.resource !== '') details['kind'] = d.resource;
  return status(403, d.message ?? 'forbidden', 'Forbidden', details);
}

interface Change {
  rv: number;
  resource: FakeResource;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  /** The object after the change (for DELETED: its last state, with the deletion's resourceVersion). */
  object: JsonObject;
  /** The object before the change (MODIFIED). */
  old?: JsonObject;
}

interface Filter {
  namespace?: string;
  matches(o: JsonObject): boolean;
}

interface OpenWatch {
  resource: FakeResource;
  filter: Filter;
  res: ServerResponse;
  bookmarks: boolean;
  timer?: NodeJS.Timeout;
}

interface FailureRule {
  remaining: number;
  /** 'hang': never answer. */
  status: number | 'hang';
  retryAfter?: number;
  filter: FailureFilter;
}

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'AlreadyExists',
  410: 'Gone',
  413: 'RequestEntityTooLarge',
  415: 'UnsupportedMediaType',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

function status(code: number, message: string, reason = REASONS[code] ?? 'Unknown', details?: JsonObject): JsonObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details !== undefined ? { details } : {}), code };
}

/** A 422 Invalid Status, as kube-apiserver words it. */
function invalid(r: FakeResource, name: string, causes: readonly { field: string; message: string }[]): JsonObject {
  const text = causes.map((c) => `${c.field}: ${c.message}`).join(', ');
  return status(422, `${r.kind} "${name}" is invalid: ${text}`, 'Invalid', { name, group: r.group, kind: r.kind, causes: causes.map((c) => ({ reason: 'FieldValueInvalid', ...c })) });
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

function isRecord(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function meta(o: JsonObject): JsonObject {
  const m = o['metadata'];
  if (!isRecord(m)) throw new TypeError('object has no metadata');
  return m;
}

function fieldValue(o: JsonObject, path: string): string {
  let v: unknown = o;
  for (const part of path.split('.')) v = isRecord(v) ? v[part] : undefined;
  if (v === undefined || v === null) return '';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

class SelectorError extends Error {}

function parseFieldSelector(r: FakeResource, sel: string | undefined): { namespace?: string; match: (o: JsonObject) => boolean } {
  if (sel === undefined || sel === '') return { match: () => true };
  const tests: ((o: JsonObject) => boolean)[] = [];
  for (const term of sel.split(',')) {
    const m = /^([^!=]+)(==|=|!=)(.*)$/.exec(term.trim());
    if (m === null) throw new SelectorError(`invalid field selector term ${JSON.stringify(term)}`);
    const [, field = '', op, value = ''] = m;
    if (!r.fields.includes(field)) throw new SelectorError(`"${field}" is not a known field selector: only "${r.fields.join('", "')}"`);
    tests.push(op === '!=' ? (o) => fieldValue(o, field) !== value : (o) => fieldValue(o, field) === value);
  }
  return { match: (o) => tests.every((t) => t(o)) };
}

function parseLabelSelector(sel: string | undefined): (o: JsonObject) => boolean {
  if (sel === undefined || sel === '') return () => true;
  const tests: ((labels: Record<string, unknown>) => boolean)[] = [];
  for (const raw of sel.split(',')) {
    const term = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^([^!=]+)(==|=|!=)(.*)$/.exec(term)) !== null) {
      const [, k = '', op, v = ''] = m;
      tests.push(op === '!=' ? (l) => l[k] !== v : (l) => l[k] === v);
    } else if (term.startsWith('!')) {
      const k = term.slice(1);
      tests.push((l) => !(k in l));
    } else if (term !== '') {
      tests.push((l) => term in l);
    }
  }
  return (o) => {
    const labels = meta(o)['labels'];
    const l = isRecord(labels) ? labels : {};
    return tests.every((t) => t(l));
  };
}

/** RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces. */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return clone(patch);
  const out: JsonObject = isRecord(target) ? clone(target) : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

/** A field the server rejected, as in a 422 Status's details.causes. */
interface Cause {
  field: string;
  message: string;
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUALIFIED_NAME_PART = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
/** metav1.MicroTime's wire format (RFC3339Micro): Go's parser wants exactly six fractional digits. */
const MICRO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$/;

function isDnsSubdomain(v: string): boolean {
  return v.length > 0 && v.length <= 253 && DNS1123_SUBDOMAIN.test(v);
}

/** validation.IsQualifiedName: an optional DNS-subdomain prefix and a slash, then a name of at most 63 characters. */
function isQualifiedName(v: string): boolean {
  const parts = v.split('/');
  if (parts.length > 2) return false;
  const name = parts.at(-1) ?? '';
  if (parts.length === 2 && !isDnsSubdomain(parts[0] ?? '')) return false;
  return name.length <= 63 && QUALIFIED_NAME_PART.test(name);
}

function str(o: JsonObject, k: string): string {
  const v = o[k];
  return typeof v === 'string' ? v : '';
}

/** What kube-apiserver checks on an events.k8s.io/v1 Event (pkg/apis/core/validation/events.go, strict path). */
function validateEvent(e: JsonObject): Cause[] {
  const causes: Cause[] = [];
  const m = isRecord(e['metadata']) ? e['metadata'] : {};
  const ns = str(m, 'namespace');
  const regarding = isRecord(e['regarding']) ? e['regarding'] : {};
  const regardingNs = str(regarding, 'namespace');
  if (regardingNs === '' ? ns !== 'default' && ns !== 'kube-system' : regardingNs !== ns) {
    causes.push({ field: 'regarding.namespace', message: 'does not match event.namespace' });
  }
  const eventTime = e['eventTime'];
  if (typeof eventTime !== 'string' || !MICRO_TIME.test(eventTime)) causes.push({ field: 'eventTime', message: 'Required value (a MicroTime: RFC 3339 with six fractional digits)' });
  const type = e['type'];
  if (type !== 'Normal' && type !== 'Warning') causes.push({ field: 'type', message: `has invalid value: ${String(type)}` });
  const controller = str(e, 'reportingController');
  if (controller === '') causes.push({ field: 'reportingController', message: 'Required value' });
  else if (!isQualifiedName(controller)) causes.push({ field: 'reportingController', message: 'must be a qualified name' });
  for (const [field, limit] of [['reportingInstance', 128], ['action', 128], ['reason', 128]] as const) {
    const v = str(e, field);
    if (v === '') causes.push({ field, message: 'Required value' });
    else if (v.length > limit) causes.push({ field, message: `can have at most ${limit} characters` });
  }
  if (Buffer.byteLength(str(e, 'note')) > 1024) causes.push({ field: 'note', message: 'can have at most 1024 characters' });
  causes.push(...validateSeries(e));
  for (const f of ['deprecatedFirstTimestamp', 'deprecatedLastTimestamp', 'deprecatedCount', 'deprecatedSource']) {
    if (e[f] !== undefined && e[f] !== null && e[f] !== 0) causes.push({ field: f, message: 'needs to be unset' });
  }
  return causes;
}

function validateSeries(e: JsonObject): Cause[] {
  const series = e['series'];
  if (series === undefined || series === null) return [];
  if (!isRecord(series)) return [{ field: 'series', message: 'must be an object' }];
  const causes: Cause[] = [];
  const count = series['count'];
  if (typeof count !== 'number' || !Number.isInteger(count) || count < 2 || count > 2 ** 31 - 1) causes.push({ field: 'series.count', message: 'should be at least 2' });
  const last = series['lastObservedTime'];
  if (typeof last !== 'string' || !MICRO_TIME.test(last)) causes.push({ field: 'series.lastObservedTime', message: 'Required value' });
  return causes;
}

const EVENT_IMMUTABLE = ['regarding', 'related', 'reason', 'note', 'type', 'eventTime', 'action', 'reportingController', 'reportingInstance'] as const;

function validateEventUpdate(next: JsonObject, old: JsonObject): Cause[] {
  const causes = validateEvent(next).filter((c) => !c.field.startsWith('series'));
  if (JSON.stringify(next['series']) !== JSON.stringify(old['series'])) causes.push(...validateSeries(next));
  for (const f of EVENT_IMMUTABLE) {
    if (JSON.stringify(next[f]) !== JSON.stringify(old[f])) causes.push({ field: f, message: 'field is immutable' });
  }
  return causes;
}

export class FakeApiServer {
  readonly token: string;
  /** Every request, in arrival order. */
  readonly requests: RequestRecord[] = [];

  private readonly bookmarkIntervalMs: number;
  private readonly windowSize: number;
  private readonly goneAs: 'event' | 'http';
  private server: Server | undefined;
  private listenPort = 0;
  private readonly sockets = new Set<Socket>();
  private bookmarkTimer: NodeJS.Timeout | undefined;

  private rv: number;
  /** Watches from a resourceVersion below this get 410. */
  private oldestValidRV: number;
  private readonly objects = new Map<string, Map<string, JsonObject>>();
  private changes: Change[] = [];
  private readonly watches = new Set<OpenWatch>();
  private failures: FailureRule[] = [];
  private readonly unserved: Set<string>;
  private rbac: { rules: readonly PolicyRule[]; user: string } | undefined;

  constructor(options: FakeApiServerOptions = {}) {
    this.token = options.token ?? `fake-token-${randomBytes(16).toString('hex')}`;
    this.bookmarkIntervalMs = options.bookmarkIntervalMs ?? 1000;
    this.windowSize = options.windowSize ?? Number.POSITIVE_INFINITY;
    this.goneAs = options.goneAs ?? 'event';
    this.rv = options.initialResourceVersion ?? 1000;
    this.oldestValidRV = 0;
    this.unserved = new Set(options.unserved ?? []);
    for (const r of FAKE_RESOURCES) this.objects.set(r.plural, new Map());
    this.setRbac(options.rbac);
  }

  /**
   * Enforces these RBAC rules from the next request on (undefined: no
   * authorization), as when the bound role is edited: watches already open
   * stay open, as kube-apiserver authorizes a request only when it starts.
   * Throws on a rule kube-apiserver would refuse in a ClusterRole.
   */
  setRbac(rbac: FakeRbacOptions | undefined): void {
    if (rbac === undefined) {
      this.rbac = undefined;
      return;
    }
    rbac.rules.forEach((r, i) => {
      const problem = policyRuleProblem(r);
      if (problem !== '') throw new TypeError(`fake apiserver: rules[${i}]: ${problem}`);
    });
    this.rbac = { rules: clone(rbac.rules), user: rbac.user ?? DEFAULT_RBAC_USER };
  }

  // -------------------------------------------------------------------------
  // Lifecycle

  /** Listens on 127.0.0.1 (an ephemeral port the first time, the same port after a stop()). */
  async start(): Promise<void> {
    if (this.server !== undefined) return;
    const server = createServer((req, res) => this.handle(req, res));
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.listenPort, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('fake apiserver: no port');
    this.listenPort = addr.port;
    this.server = server;
    if (this.bookmarkIntervalMs > 0) {
      this.bookmarkTimer = setInterval(() => this.bookmark(), this.bookmarkIntervalMs);
      this.bookmarkTimer.unref();
    }
  }

  /** An outage: stops listening and cuts every connection. Objects and history are kept. */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    clearInterval(this.bookmarkTimer);
    this.bookmarkTimer = undefined;
    for (const w of this.watches) clearTimeout(w.timer);
    this.watches.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
  }

  get running(): boolean {
    return this.server !== undefined;
  }

  get port(): number {
    return this.listenPort;
  }

  get url(): string {
    return `http://127.0.0.1:${this.listenPort}`;
  }

  /** The current (latest) cluster resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Open watch streams, optionally of one resource. */
  openWatches(resource?: string): number {
    let n = 0;
    for (const w of this.watches) if (resource === undefined || w.resource.plural === resource) n++;
    return n;
  }

  /** Writes a kubeconfig for this server (plain HTTP, so insecure-skip-tls-verify) into dir; returns its path. */
  async writeKubeconfig(dir: string, name = 'kubeconfig'): Promise<string> {
    const path = join(dir, name);
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster: { server: this.url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'weir', user: { token: this.token } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'weir' } }],
      'current-context': 'fake',
    };
    await writeFile(path, JSON.stringify(config, null, 2), { mode: 0o600 });
    return path;
  }

  // -------------------------------------------------------------------------
  // Objects

  private resourceOfKind(kind: string): FakeResource {
    const r = FAKE_RESOURCES.find((x) => x.kind === kind);
    if (r === undefined) throw new TypeError(`fake apiserver: unknown kind ${kind}`);
    return r;
  }

  private static key(namespace: string | undefined, name: string): string {
    return `${namespace ?? ''}/${name}`;
  }

  private normalise(input: FakeObjectInput): { r: FakeResource; obj: JsonObject; key: string } {
    const r = this.resourceOfKind(input.kind);
    const obj = clone(input) as JsonObject;
    obj['apiVersion'] = input.apiVersion ?? apiVersionOf(r);
    const m = meta(obj);
    if (r.namespaced) m['namespace'] = typeof m['namespace'] === 'string' && m['namespace'] !== '' ? m['namespace'] : 'default';
    else delete m['namespace'];
    if (r.kind === 'Namespace') {
      const labels = isRecord(m['labels']) ? m['labels'] : {};
      labels['kubernetes.io/metadata.name'] = m['name'];
      m['labels'] = labels;
    }
    return { r, obj, key: FakeApiServer.key(m['namespace'] as string | undefined, input.metadata.name) };
  }

  get(kind: string, namespace: string | undefined, name: string): JsonObject | undefined {
    const r = this.resourceOfKind(kind);
    const o = this.objects.get(r.plural)?.get(FakeApiServer.key(r.namespaced ? (namespace ?? 'default') : undefined, name));
    return o === undefined ? undefined : clone(o);
  }

  /** Every stored object of a kind. */
  list(kind: string): JsonObject[] {
    const r = this.resourceOfKind(kind);
    return [...(this.objects.get(r.plural)?.values() ?? [])].map(clone);
  }

  create(input: FakeObjectInput): JsonObject {
    const { r, obj, key } = this.normalise(input);
    const store = this.objects.get(r.plural);
    if (store === undefined) throw new Error('unreachable');
    if (store.has(key)) throw new Error(`fake apiserver: ${r.kind} ${key} already exists`);
    const m = meta(obj);
    // The real server always assigns the uid. A uid given here is kept, so a
    // test can create Pods whose uid matches cgroups the sandbox made first
    // (on a real node the kubelet creates them from the API's uid).
    if (typeof m['uid'] !== 'string' || m['uid'] === '') m['uid'] = randomUUID();
    m['creationTimestamp'] = new Date().toISOString();
    m['generation'] = 1;
    m['resourceVersion'] = String(++this.rv);
    store.set(key, obj);
    this.record({ rv: this.rv, resource: r, type: 'ADDED', object: clone(obj) });
    return clone(obj);
  }

  update(input: FakeObjectInput): JsonObject {
    const { r, obj, key } = this.normalise(input);
    const store = this.objects.get(r.plural);
    const old = store?.get(key);
    if (store === undefined || old === undefined) throw new Error(`fake apiserver: ${r.kind} ${key} not found`);
    const m = meta(obj);
    const om = meta(old);
    m['uid'] = om['uid'];
    m['creationTimestamp'] = om['creationTimestamp'];
    m['generation'] = JSON.stringify(obj['spec']) === JSON.stringify(old['spec']) ? om['generation'] : Number(om['generation']) + 1;
    m['resourceVersion'] = String(++this.rv);
    store.set(key, obj);
    this.record({ rv: this.rv, resource: r, type: 'MODIFIED', object: clone(obj), old: clone(old) });
    return clone(obj);
  }

  /** Create or update. */
  apply(input: FakeObjectInput): JsonObject {
    const { r, key } = this.normalise(input);
    return this.objects.get(r.plural)?.has(key) === true ? this.update(input) : this.create(input);
  }

  delete(kind: string, namespace: string | undefined, name: string): JsonObject {
    const r = this.resourceOfKind(kind);
    const key = FakeApiServer.key(r.namespaced ? (namespace ?? 'default') : undefined, name);
    const store = this.objects.get(r.plural);
    const old = store?.get(key);
    if (store === undefined || old === undefined) throw new Error(`fake apiserver: ${kind} ${key} not found`);
    store.delete(key);
    const gone = clone(old);
    meta(gone)['resourceVersion'] = String(++this.rv);
    this.record({ rv: this.rv, resource: r, type: 'DELETED', object: clone(gone), old: clone(old) });
    return gone;
  }

  /** Expires every change so far: a watch can only resume from the current resourceVersion. */
  compact(): void {
    this.changes = [];
    this.oldestValidRV = this.rv;
  }

  private record(c: Change): void {
    this.changes.push(c);
    while (this.changes.length > this.windowSize) {
      const dropped = this.changes.shift();
      if (dropped !== undefined) this.oldestValidRV = dropped.rv;
    }
    for (const w of this.watches) if (w.resource === c.resource) this.send(w, c);
  }

  // -------------------------------------------------------------------------
  // Faults

  /** Answers the next n matching resource requests with `status` (a Status body; Retry-After in seconds if given). */
  failNext(n: number, statusCode: number, retryAfter?: number, filter: FailureFilter = {}): void {
    this.failures.push({ remaining: n, status: statusCode, ...(retryAfter !== undefined ? { retryAfter } : {}), filter });
  }

  /** Never answers the next n matching resource requests (the connection stays open until stop()). */
  hangNext(n: number, filter: FailureFilter = {}): void {
    this.failures.push({ remaining: n, status: 'hang', filter });
  }

  /** Cuts every open watch connection mid-stream (the socket is destroyed; no end of the chunked body). */
  dropWatches(resource?: string): number {
    let n = 0;
    for (const w of [...this.watches]) {
      if (resource !== undefined && w.resource.plural !== resource) continue;
      this.closeWatch(w);
      w.res.socket?.destroy();
      n++;
    }
    return n;
  }

  /** Ends every open watch cleanly, as the server does when timeoutSeconds runs out. */
  endWatches(resource?: string): number {
    let n = 0;
    for (const w of [...this.watches]) {
      if (resource !== undefined && w.resource.plural !== resource) continue;
      this.closeWatch(w);
      w.res.end();
      n++;
    }
    return n;
  }

  /** Starts serving a resource (its CRD was installed). */
  serve(plural: string): void {
    this.unserved.delete(plural);
  }

  /** Stops serving a resource: lists and watches get 404, open watches end. */
  unserve(plural: string): void {
    this.unserved.add(plural);
    this.endWatches(plural);
  }

  /** Sends a BOOKMARK (the current resourceVersion) on every watch that allows them. */
  bookmark(): void {
    for (const w of this.watches) {
      if (!w.bookmarks) continue;
      this.write(w, { type: 'BOOKMARK', object: { kind: w.resource.kind, apiVersion: apiVersionOf(w.resource), metadata: { resourceVersion: String(this.rv) } } });
    }
  }

  // -------------------------------------------------------------------------
  // HTTP

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://fake');
    const query: Record<string, string> = {};
    for (const [k, v] of url.searchParams) query[k] = v;
    const watch = queryBool(url.searchParams.get('watch'));
    const rec: RequestRecord = {
      time: Date.now(),
      method: req.method ?? 'GET',
      path: url.pathname,
      query,
      watch,
      ...(query['resourceVersion'] !== undefined ? { resourceVersion: query['resourceVersion'] } : {}),
      status: 0,
      authorized: req.headers.authorization === `Bearer ${this.token}`,
    };
    this.requests.push(rec);
    const reply = (code: number, body: unknown, headers: Record<string, string> = {}): void => {
      rec.status = code;
      const text = JSON.stringify(body);
      res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
      res.end(text);
    };

    if (!rec.authorized) {
      reply(401, status(401, 'Unauthorized'));
      return;
    }
    // Authorization comes before anything the handler does (even for paths it does not serve), as in kube-apiserver's filter chain.
    if (this.rbac !== undefined) {
      const decision = authorize(this.rbac.rules, requestAttributes(rec.method, url), this.rbac.user);
      rec.authorization = decision;
      if (!decision.allowed) {
        if (decision.resourceRequest) {
          rec.resource = decision.resource;
          if (decision.namespace !== '') rec.namespace = decision.namespace;
          if (decision.name !== '') rec.name = decision.name;
        }
        reply(403, forbiddenStatus(decision));
        return;
      }
    }
    if (!['GET', 'POST', 'PATCH', 'DELETE'].includes(rec.method)) {
      reply(405, status(405, `method ${rec.method} not supported by the fake apiserver`));
      return;
    }
    const discovery = rec.method === 'GET' ? this.discovery(url.pathname) : undefined;
    if (discovery !== undefined) {
      reply(200, discovery);
      return;
    }
    const target = this.route(url.pathname);
    if (target === undefined) {
      reply(404, status(404, `the server could not find the requested resource`));
      return;
    }
    rec.resource = target.resource.plural;
    if (target.namespace !== undefined) rec.namespace = target.namespace;
    if (target.name !== undefined) rec.name = target.name;
    if (rec.method !== 'GET' && target.resource.writable !== true) {
      reply(405, status(405, `${rec.method} of ${target.resource.plural} is not supported by the fake apiserver`));
      return;
    }

    const methodMatches = (m: FailureFilter['method']): boolean => m === undefined || (typeof m === 'string' ? m === rec.method : m.includes(rec.method));
    const rule = this.failures.find(
      (f) =>
        f.remaining > 0 &&
        (f.filter.resource === undefined || f.filter.resource === target.resource.plural) &&
        (f.filter.watch === undefined || f.filter.watch === watch) &&
        methodMatches(f.filter.method),
    );
    if (rule !== undefined) {
      rule.remaining--;
      this.failures = this.failures.filter((f) => f.remaining > 0);
      if (rule.status === 'hang') return;
      const headers: Record<string, string> = rule.retryAfter !== undefined ? { 'Retry-After': String(rule.retryAfter) } : {};
      const details = rule.retryAfter !== undefined ? { retryAfterSeconds: rule.retryAfter } : undefined;
      reply(rule.status, status(rule.status, `injected failure (${rule.status})`, REASONS[rule.status], details), headers);
      return;
    }

    if (rec.method !== 'GET') {
      this.handleWrite(target.resource, target.namespace, target.name, req, rec, reply);
      return;
    }

    let filter: Filter;
    try {
      const fields = parseFieldSelector(target.resource, query['fieldSelector']);
      const labels = parseLabelSelector(query['labelSelector']);
      filter = {
        ...(target.namespace !== undefined ? { namespace: target.namespace } : {}),
        matches: (o) => (target.namespace === undefined || meta(o)['namespace'] === target.namespace) && fields.match(o) && labels(o),
      };
    } catch (err) {
      if (err instanceof SelectorError) {
        reply(400, status(400, err.message));
        return;
      }
      throw err;
    }

    if (target.name !== undefined) {
      if (watch) {
        reply(400, status(400, 'watch of a single object is not supported by the fake apiserver'));
        return;
      }
      const o = this.objects.get(target.resource.plural)?.get(FakeApiServer.key(target.namespace, target.name));
      if (o === undefined) reply(404, status(404, `${target.resource.plural} "${target.name}" not found`, 'NotFound', { name: target.name, kind: target.resource.plural }));
      else reply(200, o);
      return;
    }
    if (watch) this.startWatch(target.resource, filter, query, rec, res);
    else this.serveList(target.resource, filter, reply);
  }

  /** POST, PATCH and DELETE of a writable resource (the request body is read first). */
  private handleWrite(
    r: FakeResource,
    namespace: string | undefined,
    name: string | undefined,
    req: IncomingMessage,
    rec: RequestRecord,
    reply: (code: number, body: unknown, headers?: Record<string, string>) => void,
  ): void {
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
    if (rec.method !== 'DELETE') rec.contentType = contentType;
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (b: Buffer) => {
      size += b.length;
      if (size > MAX_REQUEST_BODY) tooLarge = true;
      else chunks.push(b);
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      if (tooLarge) {
        reply(413, status(413, `request body over ${MAX_REQUEST_BODY} bytes`));
        return;
      }
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      try {
        body = text === '' ? undefined : (JSON.parse(text) as unknown);
        if (rec.method !== 'DELETE') rec.body = body;
      } catch {
        if (rec.method !== 'DELETE') rec.body = text;
        reply(400, status(400, 'the request body is not valid JSON'));
        return;
      }
      const key = FakeApiServer.key(namespace, name ?? '');
      const store = this.objects.get(r.plural);
      if (store === undefined) throw new Error('unreachable');
      const what = `${r.plural}.${r.group} "${name ?? ''}"`;
      const notFound = (): void => reply(404, status(404, `${what} not found`, 'NotFound', { name: name ?? '', group: r.group, kind: r.plural }));

      if (rec.method === 'DELETE') {
        if (name === undefined) return reply(405, status(405, 'deletecollection is not supported by the fake apiserver'));
        if (!store.has(key)) return notFound();
        return reply(200, this.delete(r.kind, namespace, name));
      }
      if (rec.method === 'PATCH' && contentType !== 'application/merge-patch+json' && contentType !== 'application/strategic-merge-patch+json') {
        return reply(415, status(415, `the fake apiserver applies merge patches only, not ${JSON.stringify(contentType)}`));
      }
      if (!isRecord(body)) return reply(400, status(400, 'the request body must be a JSON object'));

      if (rec.method === 'POST') {
        if (name !== undefined) return reply(405, status(405, 'POST to an object path is not allowed'));
        if (contentType !== 'application/json') return reply(415, status(415, `the body of a create must be application/json, not ${JSON.stringify(contentType)}`));
        const gv = apiVersionOf(r);
        if ((body['apiVersion'] !== undefined && body['apiVersion'] !== gv) || (body['kind'] !== undefined && body['kind'] !== r.kind)) {
          return reply(400, status(400, `the body must be a ${gv} ${r.kind}, not ${String(body['apiVersion'])} ${String(body['kind'])}`));
        }
        const m = isRecord(body['metadata']) ? body['metadata'] : {};
        if (m['namespace'] !== undefined && m['namespace'] !== '' && m['namespace'] !== namespace) {
          return reply(400, status(400, 'the namespace of the provided object does not match the namespace sent on the request'));
        }
        let objName = typeof m['name'] === 'string' ? m['name'] : '';
        if (objName === '' && typeof m['generateName'] === 'string' && m['generateName'] !== '') objName = `${m['generateName']}${randomBytes(3).toString('hex').slice(0, 5)}`;
        const causes: Cause[] = [];
        if (objName === '') causes.push({ field: 'metadata.name', message: 'name or generateName is required' });
        else if (!isDnsSubdomain(objName)) causes.push({ field: 'metadata.name', message: 'a lowercase RFC 1123 subdomain of at most 253 characters' });
        const obj: JsonObject = { ...clone(body), apiVersion: gv, kind: r.kind, metadata: { ...clone(m), name: objName, ...(namespace !== undefined ? { namespace } : {}) } };
        if (r.kind === 'Event') causes.push(...validateEvent(obj));
        if (causes.length > 0) return reply(422, invalid(r, objName, causes));
        if (store.has(FakeApiServer.key(namespace, objName))) {
          return reply(409, status(409, `${r.plural}.${r.group} "${objName}" already exists`, 'AlreadyExists', { name: objName, group: r.group, kind: r.plural }));
        }
        const om = meta(obj);
        for (const f of ['uid', 'resourceVersion', 'creationTimestamp', 'generation']) delete om[f];
        return reply(201, this.create(obj as FakeObjectInput));
      }

      // PATCH
      if (name === undefined) return reply(405, status(405, 'PATCH of a collection is not allowed'));
      const old = store.get(key);
      if (old === undefined) return notFound();
      const pm = isRecord(body['metadata']) ? body['metadata'] : {};
      const om = meta(old);
      if (pm['resourceVersion'] !== undefined && pm['resourceVersion'] !== om['resourceVersion']) {
        return reply(409, status(409, `Operation cannot be fulfilled on ${r.plural}.${r.group} "${name}": the object has been modified; please apply your changes to the latest version and try again`, 'Conflict', { name, group: r.group, kind: r.plural }));
      }
      if (pm['uid'] !== undefined && pm['uid'] !== om['uid']) {
        return reply(409, status(409, `Precondition failed: UID in precondition: ${String(pm['uid'])}, UID in object meta: ${String(om['uid'])}`, 'Conflict'));
      }
      const merged = applyMergePatch(old, body);
      if (!isRecord(merged)) return reply(400, status(400, 'the patch must be a JSON object'));
      const mm = meta(merged);
      if (merged['apiVersion'] !== old['apiVersion'] || merged['kind'] !== old['kind'] || mm['name'] !== om['name'] || mm['namespace'] !== om['namespace']) {
        return reply(400, status(400, 'apiVersion, kind, metadata.name and metadata.namespace cannot be changed by a patch'));
      }
      const causes = r.kind === 'Event' ? validateEventUpdate(merged, old) : [];
      if (causes.length > 0) return reply(422, invalid(r, name, causes));
      return reply(200, this.update(merged as FakeObjectInput));
    });
  }

  private serveList(r: FakeResource, filter: Filter, reply: (code: number, body: unknown) => void): void {
    // resourceVersion on a list ("0": any version, unset: most recent) may be
    // served from the latest state either way.
    const items = [...(this.objects.get(r.plural)?.values() ?? [])].filter((o) => filter.matches(o)).map((o) => {
      const item = clone(o);
      if (r.builtin) {
        delete item['apiVersion'];
        delete item['kind'];
      }
      return item;
    });
    reply(200, { kind: r.listKind, apiVersion: apiVersionOf(r), metadata: { resourceVersion: String(this.rv) }, items });
  }

  private startWatch(r: FakeResource, filter: Filter, query: Record<string, string>, rec: RequestRecord, res: ServerResponse): void {
    const fromParam = query['resourceVersion'];
    const from = fromParam === undefined || fromParam === '' || fromParam === '0' ? undefined : Number(fromParam);
    if (from !== undefined && (!Number.isInteger(from) || from < 0)) {
      rec.status = 400;
      const text = JSON.stringify(status(400, `invalid resource version: ${fromParam}`));
      res.writeHead(400, { 'Content-Type': 'application/json' }).end(text);
      return;
    }
    const expired = from !== undefined && from < this.oldestValidRV;
    if (expired && this.goneAs === 'http') {
      rec.status = 410;
      const text = JSON.stringify(status(410, `too old resource version: ${from} (${this.oldestValidRV})`, 'Gone'));
      res.writeHead(410, { 'Content-Type': 'application/json' }).end(text);
      return;
    }
    rec.status = 200;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const w: OpenWatch = { resource: r, filter, res, bookmarks: query['allowWatchBookmarks'] === 'true' };
    if (expired) {
      // What kube-apiserver's watch cache does: 200, then one ERROR event, then the end.
      this.write(w, { type: 'ERROR', object: status(410, `too old resource version: ${from} (${this.oldestValidRV})`, 'Expired') });
      res.end();
      return;
    }
    this.watches.add(w);
    res.on('close', () => this.closeWatch(w));
    const timeout = Number(query['timeoutSeconds']);
    if (Number.isFinite(timeout) && timeout > 0) {
      w.timer = setTimeout(() => {
        this.closeWatch(w);
        res.end();
      }, timeout * 1000);
      w.timer.unref();
    }
    if (from === undefined) {
      for (const o of this.objects.get(r.plural)?.values() ?? []) if (filter.matches(o)) this.write(w, { type: 'ADDED', object: o });
    } else {
      for (const c of this.changes) if (c.rv > from && c.resource === r) this.send(w, c);
    }
  }

  private closeWatch(w: OpenWatch): void {
    clearTimeout(w.timer);
    this.watches.delete(w);
  }

  /** Sends a change as this watch sees it through its selectors. */
  private send(w: OpenWatch, c: Change): void {
    const now = w.filter.matches(c.object);
    if (c.type === 'ADDED') {
      if (now) this.write(w, { type: 'ADDED', object: c.object });
      return;
    }
    const before = c.old !== undefined && w.filter.matches(c.old);
    if (c.type === 'DELETED') {
      if (before) this.write(w, { type: 'DELETED', object: c.object });
      return;
    }
    if (before && now) this.write(w, { type: 'MODIFIED', object: c.object });
    else if (!before && now) this.write(w, { type: 'ADDED', object: c.object });
    else if (before && !now) this.write(w, { type: 'DELETED', object: c.object });
  }

  private write(w: OpenWatch, event: { type: string; object: unknown }): void {
    if (w.res.writableEnded || w.res.destroyed) return;
    w.res.write(`${JSON.stringify(event)}\n`);
  }

  private route(pathname: string): { resource: FakeResource; namespace?: string; name?: string } | undefined {
    const parts = pathname.split('/').filter((p) => p !== '');
    let group = '';
    let version: string | undefined;
    let rest: string[];
    if (parts[0] === 'api') {
      version = parts[1];
      rest = parts.slice(2);
    } else if (parts[0] === 'apis') {
      group = parts[1] ?? '';
      version = parts[2];
      rest = parts.slice(3);
    } else return undefined;
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const [plural, name, ...extra] = rest;
    if (extra.length > 0) return undefined;
    const resource = FAKE_RESOURCES.find((r) => r.group === group && r.version === version && r.plural === plural);
    if (resource === undefined || this.unserved.has(resource.plural)) return undefined;
    if (namespace !== undefined && !resource.namespaced) return undefined;
    return { resource, ...(namespace !== undefined ? { namespace } : {}), ...(name !== undefined ? { name } : {}) };
  }

  private discovery(pathname: string): unknown {
    const p = pathname.replace(/\/+$/, '');
    const resourceList = (group: string, version: string): JsonObject => ({
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: group === '' ? version : `${group}/${version}`,
      resources: FAKE_RESOURCES.filter((r) => r.group === group && r.version === version && !this.unserved.has(r.plural)).map((r) => ({
        name: r.plural,
        singularName: r.kind.toLowerCase(),
        namespaced: r.namespaced,
        kind: r.kind,
        verbs: r.writable === true ? ['create', 'delete', 'get', 'list', 'patch', 'watch'] : ['get', 'list', 'watch'],
      })),
    });
    if (p === '/version') return { major: '1', minor: '31', gitVersion: 'v1.31.0-fake' };
    if (p === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] };
    if (p === '/api/v1') return resourceList('', 'v1');
    const groups = [...new Set(FAKE_RESOURCES.filter((r) => r.group !== '').map((r) => `${r.group}/${r.version}`))];
    if (p === '/apis') {
      return {
        kind: 'APIGroupList',
        apiVersion: 'v1',
        groups: groups.map((gv) => {
          const [name = '', version = ''] = gv.split('/');
          return { name, versions: [{ groupVersion: gv, version }], preferredVersion: { groupVersion: gv, version } };
        }),
      };
    }
    for (const gv of groups) {
      if (p === `/apis/${gv}`) {
        const [group = '', version = ''] = gv.split('/');
        return resourceList(group, version);
      }
    }
    return undefined;
  }
}
