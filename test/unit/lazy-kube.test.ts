// @kubernetes/client-node (~85 MiB of RSS) is loaded only when the agent reads
// the Kubernetes API or writes Kubernetes Events: importing the agent, the CLI
// or `weir agent --manifests` never loads it. Runs against dist/ (npm run build).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const dist = (p: string): string => pathToFileURL(join(ROOT, 'dist', p)).href;

/** The module URLs a fresh Node.js process resolves while importing `urls` (module.registerHooks sees every import, static or dynamic). */
function modulesLoadedBy(urls: string[]): string[] {
  const code = `
    import { registerHooks } from 'node:module';
    const seen = [];
    registerHooks({ resolve(spec, ctx, next) { const r = next(spec, ctx); seen.push(r.url); return r; } });
    for (const u of ${JSON.stringify(urls)}) await import(u);
    process.stdout.write(JSON.stringify(seen));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: ROOT, encoding: 'utf8' });
  return JSON.parse(out) as string[];
}

const isKubeClient = (u: string): boolean => u.includes('/node_modules/@kubernetes/client-node/');

describe('lazy loading of @kubernetes/client-node', () => {
  it('dist/ is built', () => {
    expect(existsSync(join(ROOT, 'dist/agent/agent.js')), 'run npm run build first').toBe(true);
  });

  it('importing the agent, the CLI and the agent command does not load @kubernetes/client-node', () => {
    const loaded = modulesLoadedBy([dist('agent/agent.js'), dist('cli/main.js'), dist('cli/agent-command.js')]);
    expect(loaded.some((u) => u.endsWith('/dist/agent/agent.js'))).toBe(true);
    expect(loaded.filter(isKubeClient).slice(0, 3)).toEqual([]);
  });

  it('the Kubernetes source and the Events reporter do load it (the check above can see it)', () => {
    expect(modulesLoadedBy([dist('sources/kubernetes.js')]).some(isKubeClient)).toBe(true);
    expect(modulesLoadedBy([dist('report/k8s-events.js')]).some(isKubeClient)).toBe(true);
  });
});
