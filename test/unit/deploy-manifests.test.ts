// What `kubectl apply -k deploy/...` would send to a cluster is valid, and it
// deploys the agent the way docs/install.md says: least privilege, the
// mounts the code uses, RBAC for exactly what the code watches, and an image
// that carries every artifact the agent loads.
//
// Without kubectl here, renderKustomization() below assembles the base and
// the overlays as kustomize does, for the features deploy/ uses and no more:
// `resources` (files, and directories that are kustomizations themselves,
// with kustomize's default load restriction: a file must lie in or below the
// kustomization's directory) and `patches` with a target and an inline JSON
// patch (RFC 6902). Any other kustomization field makes it throw, so a
// kustomization that starts using one fails here until it is modelled.
//
// Validation: built-in kinds against the Kubernetes OpenAPI schemas compiled
// by kubernetes-models (validators generated from the official spec), plus
// a strict-field check (below) that the published schemas cannot express;
// weir's own kinds through the CRD admission model of test/unit/crds.test.ts;
// Prometheus Operator kinds structurally (no schema package for them is a
// dependency), with their ObjectMeta and LabelSelector parts checked against
// the official schemas.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative, resolve, sep } from 'node:path';
import { describe, expect, test } from 'vitest';
import YAML from 'yaml';
import { validate as validateNamespace } from 'kubernetes-models/_schemas/IoK8sApiCoreV1Namespace';
import { validate as validateServiceAccount } from 'kubernetes-models/_schemas/IoK8sApiCoreV1ServiceAccount';
import { validate as validateService } from 'kubernetes-models/_schemas/IoK8sApiCoreV1Service';
import { validate as validateConfigMap } from 'kubernetes-models/_schemas/IoK8sApiCoreV1ConfigMap';
import { validate as validateDaemonSet } from 'kubernetes-models/_schemas/IoK8sApiAppsV1DaemonSet';
import { validate as validateClusterRole } from 'kubernetes-models/_schemas/IoK8sApiRbacV1ClusterRole';
import { validate as validateClusterRoleBinding } from 'kubernetes-models/_schemas/IoK8sApiRbacV1ClusterRoleBinding';
import { validate as validateNetworkPolicy } from 'kubernetes-models/_schemas/IoK8sApiNetworkingV1NetworkPolicy';
import { validate as validateCrd } from 'kubernetes-models/_schemas/IoK8sApiextensionsApiserverPkgApisApiextensionsV1CustomResourceDefinition';
import { KUBE_RESOURCES } from '../../src/sources/kube-resources.js';
import { DEFAULT_OBJECTS_DIR, PROGRAMS } from '../../src/datapath/datapath.js';
import { addonPath } from '../../src/native/addon.js';
import { agentCommand } from '../../src/cli/agent-command.js';
import { validateObject as agentValidates } from '../../src/model/validate.js';
import { ROOT, admit, isRec, rec, type Rec } from '../helpers/crd-admission.js';

const DEPLOY = join(ROOT, 'deploy');

function list(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${what} is not a list`);
  return v;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new Error(`${what} is not a string`);
  return v;
}

function parseYamlFile(path: string): Rec[] {
  const out: Rec[] = [];
  for (const doc of YAML.parseAllDocuments(readFileSync(path, 'utf8'))) {
    if (doc.errors.length > 0) throw new Error(`${path}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const v: unknown = doc.toJS();
    if (v === null || v === undefined) continue;
    out.push(rec(v, `a document of ${path}`));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Kustomize, the subset deploy/ uses

const KUSTOMIZATION_FILES = ['kustomization.yaml', 'kustomization.yml', 'Kustomization'];
const SUPPORTED_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'patches']);

interface Rendered {
  objects: Rec[];
  /** Every patch of every kustomization rendered, with the number of objects it changed. */
  patches: { kustomization: string; target: Rec; matched: number }[];
}

function kustomizationFile(dir: string): string | undefined {
  return KUSTOMIZATION_FILES.map((f) => join(dir, f)).find((f) => existsSync(f));
}

function idOf(o: Rec): string {
  const meta = isRec(o['metadata']) ? o['metadata'] : {};
  return `${String(o['apiVersion'])}/${String(o['kind'])}/${String(meta['namespace'] ?? '')}/${String(meta['name'])}`;
}

function renderKustomization(dir: string): Rendered {
  const root = realpathSync(dir);
  const file = kustomizationFile(root);
  if (file === undefined) throw new Error(`unable to find one of ${KUSTOMIZATION_FILES.join(', ')} in directory '${root}'`);
  const k = parseYamlFile(file)[0];
  if (k === undefined) throw new Error(`${file} is empty`);
  for (const key of Object.keys(k)) {
    if (!SUPPORTED_FIELDS.has(key)) throw new Error(`${file}: field ${key} is not modelled by this test's kustomize renderer`);
  }
  if (k['apiVersion'] !== 'kustomize.config.k8s.io/v1beta1' || k['kind'] !== 'Kustomization') throw new Error(`${file}: not a kustomize.config.k8s.io/v1beta1 Kustomization`);
  const objects: Rec[] = [];
  const patches: Rendered['patches'] = [];
  const ids = new Set<string>();
  const add = (o: Rec, from: string): void => {
    const id = idOf(o);
    if (ids.has(id)) throw new Error(`${from}: may not add resource with an already registered id: ${id}`);
    ids.add(id);
    objects.push(o);
  };
  for (const entry of k['resources'] === undefined ? [] : list(k['resources'], `${file} resources`)) {
    const path = resolve(root, str(entry, `${file} resources entry`));
    if (!existsSync(path)) throw new Error(`${file}: resource ${String(entry)} does not exist`);
    const real = realpathSync(path);
    if (statSync(real).isDirectory()) {
      const sub = renderKustomization(real);
      for (const o of sub.objects) add(o, file);
      patches.push(...sub.patches);
    } else {
      // kustomize's default LoadRestrictionsRootOnly.
      const rel = relative(root, real);
      if (rel.startsWith('..') || rel.startsWith(sep)) throw new Error(`security; file '${real}' is not in or below '${root}'`);
      for (const o of parseYamlFile(real)) add(o, file);
    }
  }
  for (const p of k['patches'] === undefined ? [] : list(k['patches'], `${file} patches`)) {
    const patch = rec(p, `${file} patch`);
    for (const key of Object.keys(patch)) if (key !== 'target' && key !== 'patch') throw new Error(`${file}: patch field ${key} is not modelled`);
    const target = rec(patch['target'], `${file} patch target`);
    const ops = list(YAML.parse(str(patch['patch'], `${file} patch body`)), `${file} patch body (only inline JSON 6902 patches are modelled)`);
    let matched = 0;
    for (const o of objects) {
      if (!matchesTarget(o, target)) continue;
      applyJsonPatch(o, ops);
      matched++;
    }
    patches.push({ kustomization: relative(ROOT, file), target, matched });
  }
  return { objects, patches };
}

function matchesTarget(o: Rec, t: Rec): boolean {
  const [group, version] = String(o['apiVersion']).includes('/') ? String(o['apiVersion']).split('/') : ['', String(o['apiVersion'])];
  const meta = rec(o['metadata'], 'metadata');
  for (const key of Object.keys(t)) {
    if (!['group', 'version', 'kind', 'name', 'namespace'].includes(key)) throw new Error(`patch target field ${key} is not modelled`);
  }
  return (
    (t['group'] === undefined || t['group'] === group) &&
    (t['version'] === undefined || t['version'] === version) &&
    (t['kind'] === undefined || t['kind'] === o['kind']) &&
    (t['name'] === undefined || t['name'] === meta['name']) &&
    (t['namespace'] === undefined || t['namespace'] === meta['namespace'])
  );
}

/** RFC 6902 add, replace and remove (what the overlays use). */
function applyJsonPatch(doc: Rec, ops: unknown[]): void {
  for (const raw of ops) {
    const op = rec(raw, 'JSON patch operation');
    const path = str(op['path'], 'JSON patch path');
    const tokens = path.split('/').slice(1).map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = tokens.pop();
    if (last === undefined) throw new Error('JSON patch on the document root is not modelled');
    let parent: unknown = doc;
    for (const t of tokens) {
      parent = Array.isArray(parent) ? parent[Number(t)] : isRec(parent) ? parent[t] : undefined;
      if (parent === undefined) throw new Error(`JSON patch ${path}: ${t} does not exist`);
    }
    const kind = str(op['op'], 'JSON patch op');
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (!Number.isInteger(i) || i < 0 || i > parent.length) throw new Error(`JSON patch ${path}: bad index`);
      if (kind === 'add') parent.splice(i, 0, structuredClone(op['value']));
      else if (kind === 'replace' && i < parent.length) parent[i] = structuredClone(op['value']);
      else if (kind === 'remove' && i < parent.length) parent.splice(i, 1);
      else throw new Error(`JSON patch ${path}: ${kind} is not possible here`);
    } else if (isRec(parent)) {
      if (kind === 'add') parent[last] = structuredClone(op['value']);
      else if ((kind === 'replace' || kind === 'remove') && last in parent) {
        if (kind === 'replace') parent[last] = structuredClone(op['value']);
        else delete parent[last];
      } else throw new Error(`JSON patch ${path}: ${kind} of a missing member`);
    } else {
      throw new Error(`JSON patch ${path}: the parent is not a container`);
    }
  }
}

// ---------------------------------------------------------------------------
// Validation

interface KubeValidator {
  (data: unknown): boolean;
  errors?: { instancePath?: string; keyword?: string; params?: unknown; message?: string }[] | null;
}

const BUILTIN: Record<string, KubeValidator> = {
  'v1/Namespace': validateNamespace,
  'v1/ServiceAccount': validateServiceAccount,
  'v1/Service': validateService,
  'v1/ConfigMap': validateConfigMap,
  'apps/v1/DaemonSet': validateDaemonSet,
  'rbac.authorization.k8s.io/v1/ClusterRole': validateClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': validateClusterRoleBinding,
  'networking.k8s.io/v1/NetworkPolicy': validateNetworkPolicy,
  'apiextensions.k8s.io/v1/CustomResourceDefinition': validateCrd,
};

/**
 * The published OpenAPI schemas do not say additionalProperties: false, so a
 * misspelt field (`capabilites`) passes them, while the API server, under
 * kubectl's default strict field validation, refuses it. The generated
 * validators read each field their schema declares, and every key of a map
 * they validate; so any key a validator never read is unknown to the schema.
 * Returns the paths of those keys (not of their children).
 */
function unknownFields(value: unknown, validate: KubeValidator): { ok: boolean; errors: string[]; unknown: string[] } {
  const reads = new Map<object, Set<string>>();
  const wrap = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(wrap);
    if (!isRec(v)) return v;
    const seen = new Set<string>();
    const copy: Rec = {};
    for (const [k, x] of Object.entries(v)) copy[k] = wrap(x);
    reads.set(v, seen);
    const mark = (k: string | symbol): void => {
      if (typeof k === 'string') seen.add(k);
    };
    return new Proxy(copy, {
      get(t, k, r) {
        mark(k);
        return Reflect.get(t, k, r);
      },
      has(t, k) {
        mark(k);
        return Reflect.has(t, k);
      },
      getOwnPropertyDescriptor(t, k) {
        mark(k);
        return Reflect.getOwnPropertyDescriptor(t, k);
      },
    });
  };
  const ok = validate(wrap(value));
  const errors = ok ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? e.keyword ?? 'invalid'} ${JSON.stringify(e.params ?? {})}`);
  const unknown: string[] = [];
  const walk = (v: unknown, path: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
    if (!isRec(v)) return;
    const seen = reads.get(v);
    for (const [k, x] of Object.entries(v)) {
      if (seen !== undefined && !seen.has(k)) unknown.push(`${path}.${k}`);
      else walk(x, `${path}.${k}`);
    }
  };
  walk(value, '');
  return { ok, errors, unknown };
}

/**
 * CRDs are exempt from the strict-field check: the generated JSONSchemaProps
 * validator never reads `description`, the `x-kubernetes-*` keys or the
 * schemas under `items` and `additionalProperties` (the generator drops
 * them), so every valid schema would be flagged. test/unit/crds.test.ts
 * checks each keyword of weir's CRD schemas against JSONSchemaProps instead.
 */
const STRICT_FIELDS_EXEMPT = new Set(['apiextensions.k8s.io/v1/CustomResourceDefinition']);

function problemsOfBuiltin(o: Rec, key: string): string[] {
  const validate = BUILTIN[key];
  if (validate === undefined) return [`no schema for ${key}: add its kubernetes-models validator to BUILTIN`];
  const r = unknownFields(o, validate);
  return [...r.errors, ...(STRICT_FIELDS_EXEMPT.has(key) ? [] : r.unknown.map((p) => `${p}: unknown field`))];
}

/** ObjectMeta and a LabelSelector, checked with the official schemas through a carrier object of a built-in kind. */
function metaProblems(o: Rec): string[] {
  return problemsOfBuiltin({ apiVersion: 'v1', kind: 'ConfigMap', metadata: o['metadata'] }, 'v1/ConfigMap').map((p) => `metadata: ${p}`);
}

function selectorProblems(selector: unknown, where: string): string[] {
  return problemsOfBuiltin(
    { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'carrier' }, spec: { podSelector: selector } },
    'networking.k8s.io/v1/NetworkPolicy',
  ).map((p) => `${where}: ${p}`);
}

/** No published schema package is a dependency: the fields weir relies on, and their types. */
function prometheusOperatorProblems(o: Rec): string[] {
  const problems = metaProblems(o);
  const spec = isRec(o['spec']) ? o['spec'] : undefined;
  if (spec === undefined) return [...problems, 'spec is missing'];
  if (o['kind'] === 'ServiceMonitor') {
    problems.push(...selectorProblems(spec['selector'], 'spec.selector'));
    const eps = spec['endpoints'];
    if (!Array.isArray(eps) || eps.length === 0) problems.push('spec.endpoints must be a non-empty list');
    else {
      for (const [i, e] of eps.entries()) {
        if (!isRec(e) || typeof e['port'] !== 'string') problems.push(`spec.endpoints[${i}].port must be a port name`);
        else if (e['honorLabels'] !== undefined && typeof e['honorLabels'] !== 'boolean') problems.push(`spec.endpoints[${i}].honorLabels must be a boolean`);
      }
    }
  } else if (o['kind'] === 'PrometheusRule') {
    const groups = spec['groups'];
    if (!Array.isArray(groups) || groups.length === 0) problems.push('spec.groups must be a non-empty list');
    else {
      for (const [i, g] of groups.entries()) {
        if (!isRec(g) || typeof g['name'] !== 'string' || !Array.isArray(g['rules'])) {
          problems.push(`spec.groups[${i}] needs a name and rules`);
          continue;
        }
        for (const [j, r] of g['rules'].entries()) {
          const ok = isRec(r) && typeof r['expr'] === 'string' && (typeof r['alert'] === 'string') !== (typeof r['record'] === 'string');
          if (!ok) problems.push(`spec.groups[${i}].rules[${j}] needs expr and exactly one of alert, record`);
        }
      }
    }
  } else {
    problems.push(`no model for ${String(o['kind'])}`);
  }
  return problems;
}

function problemsOf(o: Rec): string[] {
  const apiVersion = String(o['apiVersion']);
  if (apiVersion === 'weir.dev/v1alpha1') {
    const a = admit(o);
    return [...a.errors, ...(agentValidates(o).ok ? [] : ['refused by src/model/validate.ts'])];
  }
  if (apiVersion === 'monitoring.coreos.com/v1') return prometheusOperatorProblems(o);
  return problemsOfBuiltin(o, `${apiVersion}/${String(o['kind'])}`);
}

// ---------------------------------------------------------------------------
// Accessors for the assertions

function only(objects: Rec[], kind: string, name?: string): Rec {
  const found = objects.filter((o) => o['kind'] === kind && (name === undefined || rec(o['metadata'], 'metadata')['name'] === name));
  if (found.length !== 1) throw new Error(`expected exactly one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  const o = found[0];
  if (o === undefined) throw new Error('unreachable');
  return o;
}

function at(v: unknown, path: string): unknown {
  let cur = v;
  for (const part of path.split('.')) {
    const m = /^(\w[\w-]*)(?:\[(\d+)\])?$/.exec(part);
    if (!m || m[1] === undefined) throw new Error(`bad path ${path}`);
    cur = isRec(cur) ? cur[m[1]] : undefined;
    if (m[2] !== undefined) cur = Array.isArray(cur) ? cur[Number(m[2])] : undefined;
  }
  return cur;
}

function podSpec(ds: Rec): Rec {
  return rec(at(ds, 'spec.template.spec'), 'pod spec');
}

function agentContainer(ds: Rec): Rec {
  const containers = list(podSpec(ds)['containers'], 'containers');
  expect(containers).toHaveLength(1);
  return rec(containers[0], 'container');
}

function argValue(args: string[], flag: string): string | undefined {
  const eq = args.find((a) => a.startsWith(`${flag}=`));
  if (eq !== undefined) return eq.slice(flag.length + 1);
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

function mountPathOf(container: Rec, volume: string): Rec {
  const m = list(container['volumeMounts'], 'volumeMounts').map((x) => rec(x, 'mount')).filter((x) => x['name'] === volume);
  expect(m, `mount of volume ${volume}`).toHaveLength(1);
  return rec(m[0], 'mount');
}

/** Is `path` inside directory `dir` (or the directory itself)? */
function within(path: string, dir: string): boolean {
  const r = posix.relative(dir, path);
  return r === '' || (!r.startsWith('..') && !posix.isAbsolute(r));
}

// ---------------------------------------------------------------------------
// The renders

const RENDERS = {
  base: 'deploy',
  'audit-first': 'deploy/overlays/audit-first',
  'prometheus-operator': 'deploy/overlays/prometheus-operator',
  examples: 'deploy/examples',
} as const;
type RenderName = keyof typeof RENDERS;

const rendered = new Map<RenderName, Rendered>();
function render(name: RenderName): Rendered {
  let r = rendered.get(name);
  if (r === undefined) {
    r = renderKustomization(join(ROOT, RENDERS[name]));
    rendered.set(name, r);
  }
  return r;
}

describe('the renderer models kustomize where deploy/ depends on it', () => {
  test('a file outside the kustomization directory is refused, a kustomization directory is not', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'weir-kustomize-'));
    try {
      const cm = (name: string): string => `apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ${name}}\n`;
      const k = (body: string): string => `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n${body}`;
      mkdirSync(join(tmp, 'shared'));
      mkdirSync(join(tmp, 'overlay'));
      writeFileSync(join(tmp, 'shared', 'a.yaml'), cm('a'));
      writeFileSync(join(tmp, 'overlay', 'kustomization.yaml'), k('resources:\n- ../shared/a.yaml\n'));
      expect(() => renderKustomization(join(tmp, 'overlay'))).toThrow(/is not in or below/);
      writeFileSync(join(tmp, 'shared', 'kustomization.yaml'), k('resources:\n- a.yaml\n'));
      writeFileSync(join(tmp, 'overlay', 'kustomization.yaml'), k('resources:\n- ../shared\n'));
      expect(renderKustomization(join(tmp, 'overlay')).objects.map(idOf)).toEqual(['v1/ConfigMap//a']);
      writeFileSync(join(tmp, 'overlay', 'kustomization.yaml'), k('resources:\n- ../shared\n- ../shared/a.yaml\n'));
      expect(() => renderKustomization(join(tmp, 'overlay'))).toThrow();
      writeFileSync(join(tmp, 'overlay', 'kustomization.yaml'), k('namespace: x\nresources:\n- ../shared\n'));
      expect(() => renderKustomization(join(tmp, 'overlay'))).toThrow(/not modelled/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test('JSON patch add creates a missing member and replaces an existing one', () => {
    const a: Rec = { spec: {} };
    const b: Rec = { spec: { mode: 'Enforce' } };
    applyJsonPatch(a, [{ op: 'add', path: '/spec/mode', value: 'Audit' }]);
    applyJsonPatch(b, [{ op: 'add', path: '/spec/mode', value: 'Audit' }]);
    expect([a, b]).toEqual([{ spec: { mode: 'Audit' } }, { spec: { mode: 'Audit' } }]);
    expect(() => applyJsonPatch(a, [{ op: 'replace', path: '/spec/missing', value: 1 }])).toThrow();
  });

  test('the strict-field check finds a misspelt field the schema would let through', () => {
    const ds = structuredClone(only(render('base').objects, 'DaemonSet'));
    const c = agentContainer(ds);
    rec(c['securityContext'], 'securityContext')['capabilites'] = { add: ['SYS_ADMIN'] };
    expect(problemsOf(ds)).toContain('.spec.template.spec.containers[0].securityContext.capabilites: unknown field');
  });
});

describe.each(Object.keys(RENDERS) as RenderName[])('%s renders and every object validates', (name) => {
  test('every object is valid for its kind (official schemas, strict fields; weir CRDs for policies)', () => {
    const { objects } = render(name);
    expect(objects.length).toBeGreaterThan(0);
    for (const o of objects) expect(problemsOf(o), idOf(o)).toEqual([]);
  });

  test('every patch changes at least one object', () => {
    for (const p of render(name).patches) expect(p.matched, `${p.kustomization} ${JSON.stringify(p.target)}`).toBeGreaterThan(0);
  });

  test('namespaced objects name their namespace; cluster-scoped ones do not', () => {
    const clusterScoped = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition', 'ClusterEgressPolicy']);
    for (const o of render(name).objects) {
      const ns = rec(o['metadata'], 'metadata')['namespace'];
      if (clusterScoped.has(String(o['kind']))) expect(ns, idOf(o)).toBeUndefined();
      else expect(typeof ns === 'string' && ns.length > 0, `${idOf(o)} has a namespace`).toBe(true);
    }
  });
});

describe('base', () => {
  const base = (): Rec[] => render('base').objects;

  test('holds the agent and its prerequisites, and no policy', () => {
    const kinds = base().map((o) => `${String(o['kind'])}/${String(rec(o['metadata'], 'metadata')['name'])}`).sort();
    expect(kinds).toEqual([
      'ClusterRole/weir',
      'ClusterRoleBinding/weir',
      'CustomResourceDefinition/clusteregresspolicies.weir.dev',
      'CustomResourceDefinition/egresspolicies.weir.dev',
      'DaemonSet/weir',
      'Namespace/weir-system',
      'Service/weir-metrics',
      'ServiceAccount/weir',
    ]);
  });

  test('the CRDs are deploy/crds verbatim', () => {
    for (const f of ['egresspolicies.weir.dev.yaml', 'clusteregresspolicies.weir.dev.yaml']) {
      const crd = parseYamlFile(join(DEPLOY, 'crds', f))[0];
      expect(crd).toBeDefined();
      if (crd !== undefined) expect(base()).toContainEqual(crd);
    }
  });

  test('the ClusterRole grants exactly what src/sources/kube-resources.ts watches, plus writing events.k8s.io Events', () => {
    const role = only(base(), 'ClusterRole', 'weir');
    const granted = list(role['rules'], 'rules').flatMap((r) => {
      const rule = rec(r, 'rule');
      expect(Object.keys(rule).sort(), 'rules name groups, resources and verbs only (no resourceNames, no nonResourceURLs)').toEqual(['apiGroups', 'resources', 'verbs']);
      const verbs = list(rule['verbs'], 'verbs').map(String).sort().join(',');
      return list(rule['apiGroups'], 'apiGroups').flatMap((g) => list(rule['resources'], 'resources').map((res) => `${String(g)}/${String(res)}:${verbs}`));
    });
    const expected = [
      ...KUBE_RESOURCES.map((r) => `${r.group}/${r.name}:get,list,watch`),
      // src/report/k8s-events.ts: POST a new Event, PATCH its series.
      'events.k8s.io/events:create,patch',
    ];
    expect(granted.sort()).toEqual(expected.sort());
    expect(granted.some((g) => /(^|\/)secrets:|\*/.test(g))).toBe(false);
  });

  test('the ClusterRoleBinding binds the ClusterRole to the agent service account', () => {
    const b = only(base(), 'ClusterRoleBinding', 'weir');
    expect(b['roleRef']).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'weir' });
    expect(b['subjects']).toEqual([{ kind: 'ServiceAccount', name: 'weir', namespace: 'weir-system' }]);
    expect(podSpec(only(base(), 'DaemonSet', 'weir'))['serviceAccountName']).toBe('weir');
  });

  test('least privilege: no privileged mode, capabilities exactly BPF, PERFMON and NET_ADMIN, read-only root, RuntimeDefault seccomp', () => {
    const ds = only(base(), 'DaemonSet', 'weir');
    const spec = podSpec(ds);
    expect(spec['initContainers']).toBeUndefined();
    expect(spec['securityContext']).toBeUndefined();
    const sc = rec(agentContainer(ds)['securityContext'], 'securityContext');
    expect(sc['privileged']).toBe(false);
    expect(sc['allowPrivilegeEscalation']).toBe(false);
    expect(sc['readOnlyRootFilesystem']).toBe(true);
    expect(sc['runAsUser']).toBe(0);
    expect(sc['runAsNonRoot']).toBe(false);
    expect(at(sc, 'capabilities.drop')).toEqual(['ALL']);
    expect(list(at(sc, 'capabilities.add'), 'add').map(String).sort()).toEqual(['BPF', 'NET_ADMIN', 'PERFMON']);
    expect(at(sc, 'seccompProfile.type')).toBe('RuntimeDefault');
    expect(spec['hostNetwork']).toBe(false);
    expect(spec['hostPID']).toBe(false);
    expect(spec['hostIPC']).toBe(false);
    expect(spec['dnsPolicy']).toBe('ClusterFirst');
  });

  test('host mounts: exactly the bpffs, the cgroup tree (read only), /run/weir and /var/log/weir; nothing Bidirectional', () => {
    const ds = only(base(), 'DaemonSet', 'weir');
    const volumes = list(podSpec(ds)['volumes'], 'volumes').map((v) => rec(v, 'volume'));
    const hostPaths = volumes.filter((v) => v['hostPath'] !== undefined).map((v) => `${String(v['name'])}=${String(at(v, 'hostPath.path'))}:${String(at(v, 'hostPath.type'))}`);
    expect(hostPaths.sort()).toEqual(['audit-log=/var/log/weir:DirectoryOrCreate', 'bpffs=/sys/fs/bpf:Directory', 'cgroup=/sys/fs/cgroup:Directory', 'run=/run/weir:DirectoryOrCreate']);
    for (const v of volumes) expect(v['hostPath'] !== undefined || v['emptyDir'] !== undefined, `volume ${String(v['name'])} is a hostPath or an emptyDir`).toBe(true);
    const c = agentContainer(ds);
    for (const m of list(c['volumeMounts'], 'mounts')) expect(rec(m, 'mount')['mountPropagation']).not.toBe('Bidirectional');
    expect(mountPathOf(c, 'cgroup')['readOnly']).toBe(true);
    expect(mountPathOf(c, 'cgroup')['mountPath']).toBe('/sys/fs/cgroup');
    expect(mountPathOf(c, 'tmp')['mountPath']).toBe('/tmp');
  });

  test('the agent flags point at the mounts, and the agent knows every flag', () => {
    const c = agentContainer(only(base(), 'DaemonSet', 'weir'));
    const args = list(c['args'], 'args').map(String);
    expect(args[0]).toBe('agent');
    for (const a of args.slice(1)) {
      const flag = /^(--[a-z-]+)/.exec(a)?.[1];
      expect(flag, `${a} is a flag`).toBeDefined();
      if (flag !== undefined) expect(agentCommand.help, `weir agent --help documents ${flag}`).toContain(flag);
    }
    const bpffs = argValue(args, '--bpffs');
    expect(bpffs).toBe(mountPathOf(c, 'bpffs')['mountPath']);
    // The runtime's default AppArmor profile denies writes below /sys/fs/ except /sys/fs/cgroup: pins must be created elsewhere.
    expect(bpffs !== undefined && within(bpffs, '/sys/fs')).toBe(false);
    const socket = argValue(args, '--api-socket') ?? '/run/weir/weir.sock';
    expect(within(socket, str(mountPathOf(c, 'run')['mountPath'], 'run mount'))).toBe(true);
    const audit = argValue(args, '--audit-log');
    expect(audit).toBeDefined();
    if (audit !== undefined) expect(within(audit, str(mountPathOf(c, 'audit-log')['mountPath'], 'audit mount'))).toBe(true);
    expect(argValue(args, '--node-name')).toBeUndefined();
    expect(c['env']).toContainEqual({ name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } });
  });

  test('probes: liveness /healthz and readiness /readyz on the metrics port the agent listens on', () => {
    const c = agentContainer(only(base(), 'DaemonSet', 'weir'));
    const port = Number(argValue(list(c['args'], 'args').map(String), '--metrics-addr')?.split(':').pop());
    expect(c['ports']).toEqual([{ name: 'metrics', containerPort: port, protocol: 'TCP' }]);
    expect(port).toBe(9464);
    expect(at(c, 'livenessProbe.httpGet')).toEqual({ path: '/healthz', port: 'metrics' });
    expect(at(c, 'startupProbe.httpGet')).toEqual({ path: '/healthz', port: 'metrics' });
    expect(at(c, 'readinessProbe.httpGet')).toEqual({ path: '/readyz', port: 'metrics' });
    expect(c['terminationMessagePolicy']).toBe('FallbackToLogsOnError');
  });

  test('every node: tolerates every taint, node-critical priority, a bounded rolling update, never two agents on a node', () => {
    const ds = only(base(), 'DaemonSet', 'weir');
    const spec = podSpec(ds);
    expect(spec['tolerations']).toEqual([{ operator: 'Exists' }]);
    expect(spec['priorityClassName']).toBe('system-node-critical');
    expect(at(ds, 'spec.updateStrategy.type')).toBe('RollingUpdate');
    expect(at(ds, 'spec.updateStrategy.rollingUpdate.maxUnavailable')).toBe('10%');
    expect(at(ds, 'spec.updateStrategy.rollingUpdate.maxSurge')).toBe(0);
    expect(spec['affinity']).toBeUndefined();
    expect(spec['nodeSelector']).toEqual({ 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64' });
  });

  test('resources: requests for CPU and memory, a memory limit, no CPU limit', () => {
    const r = rec(agentContainer(only(base(), 'DaemonSet', 'weir'))['resources'], 'resources');
    expect(Object.keys(rec(r['requests'], 'requests')).sort()).toEqual(['cpu', 'memory']);
    expect(Object.keys(rec(r['limits'], 'limits'))).toEqual(['memory']);
  });

  test('the metrics Service is headless and selects the agent pods on the metrics port', () => {
    const svc = only(base(), 'Service', 'weir-metrics');
    const ds = only(base(), 'DaemonSet', 'weir');
    expect(at(svc, 'spec.clusterIP')).toBe('None');
    expect(at(svc, 'spec.ports')).toEqual([{ name: 'metrics', port: 9464, targetPort: 'metrics', protocol: 'TCP' }]);
    const labels = rec(at(ds, 'spec.template.metadata.labels'), 'pod labels');
    for (const [k, v] of Object.entries(rec(at(svc, 'spec.selector'), 'selector'))) expect(labels[k]).toBe(v);
    expect(at(ds, 'spec.selector.matchLabels')).toEqual(at(svc, 'spec.selector'));
  });
});

describe('overlays', () => {
  const weirPolicies = (objects: Rec[]): Rec[] => objects.filter((o) => o['apiVersion'] === 'weir.dev/v1alpha1');

  test('audit-first: the base plus every example policy, each in Audit mode', () => {
    const objects = render('audit-first').objects;
    const examples = weirPolicies(render('examples').objects);
    const policies = weirPolicies(objects);
    expect(examples.length).toBeGreaterThanOrEqual(4);
    expect(policies.map(idOf).sort()).toEqual(examples.map(idOf).sort());
    for (const p of policies) expect(at(p, 'spec.mode'), idOf(p)).toBe('Audit');
    for (const o of render('base').objects) expect(objects.map(idOf)).toContain(idOf(o));
  });

  test('the examples themselves are in Enforce mode (the target the audit phase leads to)', () => {
    for (const p of weirPolicies(render('examples').objects)) expect(at(p, 'spec.mode'), idOf(p)).toBe('Enforce');
  });

  test('prometheus-operator: ServiceMonitor on the metrics Service with honorLabels, the alert rules and the dashboard, next to the agent', () => {
    const objects = render('prometheus-operator').objects;
    const sm = only(objects, 'ServiceMonitor');
    const svc = only(objects, 'Service', 'weir-metrics');
    const svcLabels = rec(at(svc, 'metadata.labels'), 'service labels');
    for (const [k, v] of Object.entries(rec(at(sm, 'spec.selector.matchLabels'), 'selector'))) expect(svcLabels[k]).toBe(v);
    expect(at(sm, 'spec.namespaceSelector.matchNames')).toEqual(['weir-system']);
    const endpoints = list(at(sm, 'spec.endpoints'), 'endpoints').map((e) => rec(e, 'endpoint'));
    const portNames = list(at(svc, 'spec.ports'), 'ports').map((p) => rec(p, 'port')['name']);
    for (const e of endpoints) {
      expect(portNames).toContain(e['port']);
      expect(e['honorLabels']).toBe(true);
    }
    // job="weir", as the alert rules and dashboard expect.
    expect(svcLabels[str(at(sm, 'spec.jobLabel'), 'jobLabel')]).toBe('weir');
    expect(objects.filter((o) => o['kind'] === 'PodMonitor')).toEqual([]);
    const rule = only(objects, 'PrometheusRule');
    const dashboard = only(objects, 'ConfigMap');
    for (const o of [sm, rule, dashboard]) expect(at(o, 'metadata.namespace'), idOf(o)).toBe('weir-system');
    for (const v of Object.values(rec(dashboard['data'], 'dashboard data'))) expect(() => JSON.parse(str(v, 'dashboard'))).not.toThrow();
    for (const o of render('base').objects) expect(objects.map(idOf)).toContain(idOf(o));
  });
});

// ---------------------------------------------------------------------------
// The image

interface Instruction {
  cmd: string;
  args: string;
}
interface Stage {
  name: string;
  from: string;
  instructions: Instruction[];
}

function parseDockerfile(text: string): { args: Record<string, string>; stages: Stage[] } {
  const logical: string[] = [];
  let cur = '';
  for (const line of text.split('\n')) {
    if (/^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      cur += `${line.slice(0, -1)} `;
      continue;
    }
    cur += line;
    if (cur.trim() !== '') logical.push(cur.trim());
    cur = '';
  }
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  const expand = (s: string): string => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a?: string, b?: string) => args[a ?? b ?? ''] ?? '');
  for (const l of logical) {
    const m = /^(\w+)\s+(.*)$/s.exec(l);
    if (!m || m[1] === undefined || m[2] === undefined) throw new Error(`Dockerfile: cannot parse ${l}`);
    const cmd = m[1].toUpperCase();
    const rest = m[2];
    if (cmd === 'FROM') {
      const f = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest);
      if (!f || f[1] === undefined) throw new Error(`Dockerfile: bad FROM ${rest}`);
      stages.push({ from: expand(f[1]), name: f[2] ?? String(stages.length), instructions: [] });
    } else if (cmd === 'ARG' && stages.length === 0) {
      const [k, v] = rest.split('=');
      if (k !== undefined) args[k] = v ?? '';
    } else {
      const s = stages[stages.length - 1];
      if (s === undefined) throw new Error(`Dockerfile: ${cmd} before FROM`);
      s.instructions.push({ cmd, args: rest });
    }
  }
  return { args, stages };
}

/** Packages named by `apt-get install` in these RUN lines. */
function aptInstalled(stage: Stage): string[] {
  const out: string[] = [];
  for (const i of stage.instructions.filter((x) => x.cmd === 'RUN')) {
    for (const part of i.args.split(/&&|;/)) {
      const words = part.trim().split(/\s+/);
      const at = words.indexOf('install');
      if (words[0] !== 'apt-get' || at < 0) continue;
      out.push(...words.slice(at + 1).filter((w) => !w.startsWith('-')));
    }
  }
  return out;
}

function copies(stage: Stage): { from: string | undefined; sources: string[]; dest: string }[] {
  return stage.instructions
    .filter((i) => i.cmd === 'COPY')
    .map((i) => {
      const words = i.args.split(/\s+/);
      const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
      const paths = words.filter((w) => !w.startsWith('--'));
      const dest = paths.pop();
      if (dest === undefined) throw new Error(`COPY without a destination: ${i.args}`);
      return { from, sources: paths, dest };
    });
}

/** Docker's .dockerignore: patterns in order, the last match wins, a match on a parent directory counts. */
function dockerIgnored(path: string, patterns: string[]): boolean {
  const toRe = (p: string): RegExp => new RegExp(`^${p.replace(/[.+^$()|{}[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}$`);
  const parts = path.replace(/\/$/, '').split('/');
  const candidates = parts.map((_p, i) => parts.slice(0, i + 1).join('/'));
  let ignored = false;
  for (const raw of patterns) {
    const neg = raw.startsWith('!');
    const re = toRe(posix.normalize(neg ? raw.slice(1) : raw).replace(/\/$/, ''));
    if (candidates.some((c) => re.test(c))) ignored = !neg;
  }
  return ignored;
}

describe('deploy/Dockerfile', () => {
  const dockerfile = parseDockerfile(readFileSync(join(DEPLOY, 'Dockerfile'), 'utf8'));
  const stage = (name: string): Stage => {
    const s = dockerfile.stages.find((x) => x.name === name);
    if (s === undefined) throw new Error(`no stage ${name}`);
    return s;
  };
  const pkg = rec(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')), 'package.json');
  const nodeMajor = /(\d+)/.exec(str(at(pkg, 'engines.node'), 'engines.node'))?.[1];

  test('two stages, build then runtime, both on the Node.js major package.json requires', () => {
    expect(dockerfile.stages.map((s) => s.name)).toEqual(['build', 'runtime']);
    expect(nodeMajor).toBe('24');
    for (const s of dockerfile.stages) expect(s.from, s.name).toMatch(new RegExp(`^node:${nodeMajor ?? 'x'}-bookworm`));
    expect(stage('runtime').from).toMatch(/-slim$/);
  });

  test('the build stage has the compilers; the runtime stage installs none and has the runtime libbpf', () => {
    const build = aptInstalled(stage('build'));
    for (const p of ['clang', 'llvm', 'libbpf-dev', 'make', 'g++', 'python3']) expect(build).toContain(p);
    const runtime = aptInstalled(stage('runtime'));
    expect(runtime).toContain('libbpf1');
    for (const p of runtime) expect(p, 'no compiler, no headers in the runtime image').not.toMatch(/^(clang|llvm|gcc|g\+\+|cpp|make|python3|build-essential)|-dev$/);
    const runtimeRuns = stage('runtime').instructions.filter((i) => i.cmd === 'RUN').map((i) => i.args).join('\n');
    expect(runtimeRuns).not.toMatch(/\bnpm (ci|install)\b|node-gyp|scripts\/build/);
  });

  test('the build stage builds everything from sources the build context sends, then drops the devDependencies', () => {
    const patterns = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    const sent = copies(stage('build')).filter((c) => c.from === undefined).flatMap((c) => c.sources);
    for (const s of sent) {
      expect(existsSync(join(ROOT, s)), `${s} exists`).toBe(true);
      expect(dockerIgnored(s, patterns), `${s} is in the build context`).toBe(false);
    }
    // What scripts/build.mjs and npm ci read.
    for (const needed of ['package.json', 'package-lock.json', 'binding.gyp', 'tsconfig.json', 'bpf/', 'native/', 'scripts/', 'src/', 'bin/']) expect(sent).toContain(needed);
    for (const junk of ['node_modules', 'build', 'dist', '.git', 'test']) expect(dockerIgnored(junk, patterns), `${junk} stays out of the context`).toBe(true);
    const runs = stage('build').instructions.filter((i) => i.cmd === 'RUN').map((i) => i.args).join('\n');
    expect(runs).toMatch(/npm ci\b/);
    expect(runs).toMatch(/node scripts\/build\.mjs/);
    expect(runs).toMatch(/npm prune --omit=dev/);
  });

  test('the runtime stage copies every artifact the agent loads, from the build stage, where the code looks for it', () => {
    const workdir = stage('runtime').instructions.filter((i) => i.cmd === 'WORKDIR').pop()?.args;
    expect(workdir).toBe('/opt/weir');
    const copied = copies(stage('runtime'));
    for (const c of copied) expect(c.from, `${c.sources.join(' ')} comes from the build stage`).toBe('build');
    const dest = (p: string): string => posix.join(workdir ?? '', p);
    const targets = copied.map((c) => ({ dest: posix.resolve(workdir ?? '/', c.dest), sources: c.sources }));
    const has = (what: string, sourceRe: RegExp): boolean => targets.some((t) => t.sources.some((s) => sourceRe.test(s)) && within(dest(what), t.dest));
    // Relative to the package root, as the code resolves them (src/native/addon.ts, src/datapath/datapath.ts).
    const root = ROOT.replace(/\/$/, '');
    const fromRoot = (abs: string): string => relative(root, abs).split(sep).join('/');
    expect(fromRoot(addonPath)).toBe('build/Release/weir.node');
    expect(has('build/Release/weir.node', /build\/Release\/weir\.node$/)).toBe(true);
    expect(existsSync(addonPath), 'the addon is built in this checkout').toBe(true);
    const objectsDir = fromRoot(DEFAULT_OBJECTS_DIR);
    const objGlob = targets.find((t) => t.sources.some((s) => s.endsWith(`${objectsDir}/*.bpf.o`)));
    expect(objGlob, `a COPY of ${objectsDir}/*.bpf.o`).toBeDefined();
    expect(objGlob?.dest).toBe(dest(objectsDir));
    for (const object of new Set(PROGRAMS.map((p) => p.object))) {
      expect(object).toMatch(/^[^/]+\.bpf\.o$/);
      expect(existsSync(join(DEFAULT_OBJECTS_DIR, object)), `${objectsDir}/${object} is built in this checkout`).toBe(true);
    }
    for (const [what, src] of [
      ['package.json', /package\.json$/],
      ['node_modules/', /node_modules\/?$/],
      ['dist/', /dist\/?$/],
      ['bin/', /bin\/?$/],
    ] as const) {
      expect(has(what, src), `${what} is copied`).toBe(true);
    }
    expect(pkg['type'], 'dist/ is ESM: package.json must come along').toBe('module');
    expect(existsSync(join(ROOT, 'dist/cli/weir.js'))).toBe(true);
    expect(existsSync(join(ROOT, 'bin/weir.js'))).toBe(true);
  });

  test('entry point: node bin/weir.js agent, weir on the PATH, root on purpose, OCI labels', () => {
    const ins = stage('runtime').instructions;
    const one = (cmd: string): string | undefined => ins.filter((i) => i.cmd === cmd).pop()?.args;
    expect(JSON.parse(one('ENTRYPOINT') ?? 'null')).toEqual(['node', '/opt/weir/bin/weir.js']);
    expect(JSON.parse(one('CMD') ?? 'null')).toEqual(['agent']);
    expect(one('USER')).toBe('0:0');
    expect(ins.some((i) => i.cmd === 'RUN' && i.args.includes('ln -s /opt/weir/bin/weir.js /usr/local/bin/weir'))).toBe(true);
    const labels = ins.filter((i) => i.cmd === 'LABEL').map((i) => i.args).join(' ');
    for (const l of ['title', 'description', 'version', 'licenses']) expect(labels).toContain(`org.opencontainers.image.${l}=`);
    expect(labels).toContain(`org.opencontainers.image.licenses="${str(pkg['license'], 'license')}"`);
    for (const s of dockerfile.stages) for (const i of s.instructions) expect(i.cmd, 'no ADD (no remote fetches into the image)').not.toBe('ADD');
  });
});

describe('docs/install.md', () => {
  test('every deploy/ path it names exists', () => {
    const doc = readFileSync(join(ROOT, 'docs/install.md'), 'utf8');
    const paths = new Set([...doc.matchAll(/\bdeploy\/[\w./-]*[\w/]/g)].map((m) => m[0]));
    expect(paths.size).toBeGreaterThan(5);
    for (const p of paths) expect(existsSync(join(ROOT, p)), p).toBe(true);
  });
});
