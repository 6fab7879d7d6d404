import { defineConfig } from 'vitest/config';

// Kernel and sandbox tests share the bpffs, cgroups and network namespaces of
// one machine, so files run one at a time in forked processes (a test may
// move its own process between cgroups).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
