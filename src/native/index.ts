// The native layer's public surface, for src/datapath.
export {
  addonPath,
  isBpfSystemError,
  loadAddon,
  type AbiInfo,
  type BpfConstants,
  type BpfSystemError,
  type LinkInfo,
  type MapDescriptor,
  type MapDump,
  type PinnedObjectKind,
  type ProgInfo,
  type ProgQueryResult,
  type ProgramDescriptor,
  type TestRunOptions,
  type TestRunResult,
} from './addon.js';
export { abi, abiConstant, fieldSize, offsetOf, sizeOf } from './abi.js';
export { cgroup2Mount, ensureBpffs, parseMounts, type MountEntry } from './bpffs.js';
export {
  BpfLink,
  BpfMap,
  BpfObject,
  BpfProgram,
  RingBuffer,
  type LoadOptions,
  type OwnerOptions,
  type RecordsHandler,
} from './kernel-objects.js';
export { emitLeakWarning, type LeakReporter } from './leak.js';
export { hasBpfPrivileges, isRoot, missingCapabilityHint, withCapabilityHint } from './privileges.js';
export {
  bpfConstants,
  cgroupId,
  libbpfVersion,
  linkInfoById,
  numPossibleCpus,
  pinnedObjectType,
  probeBpfHelper,
  progInfo,
  progQuery,
} from './queries.js';
