import { join, resolve } from 'node:path';
import { DEFAULT_OBJECTS_DIR } from '../datapath/datapath.js';
import { agentObjects, MIN_KERNEL, runChecks, summarize } from '../preflight/checks.js';
import { realEnv } from '../preflight/real-env.js';
import { formatSummary, formatTable, toJson } from '../preflight/report.js';
import { parse, type Command } from './main.js';

const help = `Options:
  --bpffs DIR            Where the agent will pin its maps and links (as weir agent --bpffs).
                         Default: /sys/fs/bpf
  --cgroup-root DIR      The cgroup v2 directory holding the kubelet's kubepods or
                         kubepods.slice tree (as weir agent --cgroup-root). Default: the
                         cgroup v2 mount point from /proc/self/mountinfo.
  --objects-dir DIR      Where egress.bpf.o, ingress.bpf.o and sock_addr.bpf.o are.
                         Default: ${DEFAULT_OBJECTS_DIR}
  --json                 Print the checks as JSON.
  -h, --help             Show this help.

Checks, one line each (✔ pass, ! warning, ✘ failure, with what to do about it): the
kernel version (${MIN_KERNEL.major}.${MIN_KERNEL.minor} or later), privileges (root, or CAP_BPF, CAP_PERFMON and
CAP_NET_ADMIN), the locked-memory limit (kernels before 5.11), the kernel config, the BPF JIT,
cgroup v2, the kubelet's pods cgroup, the bpffs; then the kernel's verifier loads weir's own
programs with the agent's settings (private maps, nothing pinned), and they are attached to a
temporary empty cgroup and detached again, when the cgroup tree is writable. Nothing is left
behind. Run it as the agent would run: as root on the node, or in the agent's pod.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 usage error.
Every requirement, why weir needs it and how to fix it: docs/preflight.md.

Examples:
  sudo weir preflight
  weir preflight --cgroup-root /sys/fs/cgroup/unified --json | jq '.checks[] | select(.status != "pass")'
`;

export const preflightCommand: Command = {
  summary: "Check whether this node meets weir's requirements (kernel, privileges, cgroup v2, bpffs, verifier).",
  usage: 'weir preflight [--bpffs DIR] [--cgroup-root DIR] [--objects-dir DIR] [--json]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      bpffs: { type: 'string', default: '/sys/fs/bpf' },
      'cgroup-root': { type: 'string' },
      'objects-dir': { type: 'string', default: DEFAULT_OBJECTS_DIR },
      json: { type: 'boolean', default: false },
    });
    const objectsDir = resolve(values['objects-dir'] ?? DEFAULT_OBJECTS_DIR);
    const env = realEnv({ objectPaths: agentObjects().map((o) => join(objectsDir, o.file)) });
    const opts = { bpffs: values.bpffs ?? '/sys/fs/bpf', objectsDir, ...(values['cgroup-root'] !== undefined ? { cgroupRoot: values['cgroup-root'] } : {}) };
    const results = await runChecks(env, opts);
    process.stdout.write(values.json ? toJson(results) : `${formatTable(results)}\n${formatSummary(results)}`);
    return summarize(results).fail > 0 ? 1 : 0;
  },
};
