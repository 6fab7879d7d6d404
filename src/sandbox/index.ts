// Public surface of the sandbox (a simulated node for the demo and the tests).
export * from './addressing.js';
export * from './cgroup.js';
export * from './probe-runner.js';
export * from './sandbox.js';
export * from './spec.js';
export * from './up.js';
