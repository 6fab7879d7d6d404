// The agent in end-to-end tests. In this process, on a sandbox node from a
// manifests directory (startSandboxAgent / stopSandboxAgent); or as a
// process of its own with the wait for /readyz (re-exported from
// src/sandbox/agent-process.ts, which the soak uses too).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import type { Sandbox } from '../../src/sandbox/sandbox.js';
import { BPFFS } from './kernel.js';

export { readyz, running, spawnAgent, stopAgent, waitReady, WEIR_CLI, type AgentProcess } from '../../src/sandbox/agent-process.js';

export interface SandboxAgent {
  agent: Agent;
  /** Holds the audit log (audit.log) and the local API socket (weir.sock). */
  dir: string;
}

/**
 * Agent.start on the sandbox's node (its name and cgroup root) from the
 * manifests in `manifests`, pinned under `pinDir`, metrics on an ephemeral
 * port, the audit log and local API socket in a new temporary directory.
 */
export async function startSandboxAgent(sb: Sandbox, o: { manifests: string; pinDir: string; logger: Logger; tmpPrefix: string }): Promise<SandboxAgent> {
  const dir = mkdtempSync(join(tmpdir(), o.tmpPrefix));
  try {
    const agent = await Agent.start(
      {
        manifests: o.manifests,
        nodeName: sb.nodeName,
        cgroupRoot: sb.cgroupRoot,
        bpffs: BPFFS,
        pinDir: o.pinDir,
        metricsAddr: '127.0.0.1:0',
        auditLog: { path: join(dir, 'audit.log') },
        apiSocket: join(dir, 'weir.sock'),
      },
      o.logger,
    );
    return { agent, dir };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Detaches the programs (their cgroups go with the sandbox), stops the agent and removes its directory. */
export async function stopSandboxAgent(a: SandboxAgent | undefined): Promise<void> {
  if (!a) return;
  try {
    a.agent.datapath.uninstall();
    await a.agent.stop();
  } finally {
    rmSync(a.dir, { recursive: true, force: true });
  }
}
