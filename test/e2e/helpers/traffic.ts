// Traffic helpers for end-to-end tests on the sandbox node. Targets are a
// sandbox host name ("feature-store"), a pod ("ml-train/trainer") or an IP
// literal; `family: 6` picks the IPv6 address of a named target.

import {
  parsePodRef,
  runProbe,
  startProbeServer,
  startTcpStream,
  type PodRef,
  type ProbeOrigin,
  type ProbeProcess,
  type ProbeResult,
  type ServerPorts,
} from '../../../src/sandbox/probe-runner.js';
import { Sandbox, type SandboxOptions } from '../../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../../src/sandbox/spec.js';

export type { PodRef, ProbeProcess, ProbeResult } from '../../../src/sandbox/probe-runner.js';

export interface ProbeOptions {
  family?: 4 | 6;
  /** The probe's own deadline for an answer. */
  timeoutMs?: number;
  /** Container of the source pod whose cgroup the probe runs in (default "main"). */
  container?: string;
}

function origin(from: PodRef, container: string | undefined): ProbeOrigin {
  return container === undefined ? { pod: from } : { pod: from, container };
}

function timeoutArgs(opts: ProbeOptions): string[] {
  return opts.timeoutMs === undefined ? [] : ['--timeout', String(opts.timeoutMs)];
}

/** TCP connect from a pod; with echo (default) also proves data flows both ways. */
export function probeTcp(
  sandbox: Sandbox,
  from: PodRef,
  target: string,
  port: number,
  opts: ProbeOptions & { echo?: boolean } = {},
): Promise<ProbeResult> {
  const addr = sandbox.address(target, opts.family ?? 4);
  const args = ['tcp-connect', addr, String(port), ...timeoutArgs(opts), ...((opts.echo ?? true) ? ['--echo'] : [])];
  return runProbe(sandbox, origin(from, opts.container), args);
}

/** UDP sendto from a pod and wait for the echo; `connect` uses connect()+send(). */
export function probeUdp(
  sandbox: Sandbox,
  from: PodRef,
  target: string,
  port: number,
  opts: ProbeOptions & { connect?: boolean } = {},
): Promise<ProbeResult> {
  const addr = sandbox.address(target, opts.family ?? 4);
  const args = ['udp-send', addr, String(port), ...timeoutArgs(opts), ...(opts.connect ? ['--connect'] : [])];
  return runProbe(sandbox, origin(from, opts.container), args);
}

/** One ICMP echo from a pod (system ping). */
export function probeIcmp(sandbox: Sandbox, from: PodRef, target: string, opts: ProbeOptions = {}): Promise<ProbeResult> {
  const addr = sandbox.address(target, opts.family ?? 4);
  return runProbe(sandbox, origin(from, opts.container), ['ping', addr, ...timeoutArgs(opts)]);
}

/**
 * Echo servers (IPv4 and IPv6) in a pod ("ns/name" or {namespace, name}) or
 * a host (its name). Events: tcp-accept / udp-recv with the source address.
 */
export function startServer(sandbox: Sandbox, where: PodRef, ports: ServerPorts): Promise<ProbeProcess> {
  const at: ProbeOrigin = typeof where === 'string' && !where.includes('/') ? { host: where } : { pod: parsePodRef(where) };
  return startProbeServer(sandbox, at, ports);
}

/** A long-lived connection sending a line every interval (to watch it being cut). */
export function startStream(
  sandbox: Sandbox,
  from: PodRef,
  target: string,
  port: number,
  opts: { family?: 4 | 6; intervalMs?: number; echoTimeoutMs?: number; container?: string } = {},
): Promise<ProbeProcess> {
  return startTcpStream(sandbox, origin(from, opts.container), sandbox.address(target, opts.family ?? 4), port, opts);
}

/** Builds a sandbox, runs fn, and destroys the sandbox whatever fn does. */
export async function withSandbox<T>(spec: SandboxSpec, fn: (sb: Sandbox) => Promise<T>, opts: SandboxOptions = {}): Promise<T> {
  const sb = await Sandbox.create(spec, opts);
  try {
    return await fn(sb);
  } finally {
    await sb.destroy();
  }
}
