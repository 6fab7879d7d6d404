#!/usr/bin/env node
// Builds everything weir needs at run time, skipping what is up to date:
//   bpf/*.bpf.c  -> build/bpf/*.bpf.o      (clang -target bpf -O2 -g)
//     and the variants below: egress and ingress also as *-fqdn.bpf.o with
//     DNS learning, which needs bpf_loop (kernel 5.17); the loader picks the
//     variant the kernel accepts (src/datapath/datapath.ts). A compile-time
//     switch, not a `const volatile` setting: an older verifier refuses a
//     program that mentions bpf_loop at all, even in code it would prune.
//   test/fixtures/*.bpf.c -> build/bpf/fixtures/*.bpf.o, bench/bpf/*.bpf.c -> build/bpf/bench/
//   native/      -> build/Release/weir.node (node-gyp, system libbpf)
//   src/         -> dist/                   (tsc)
// Usage: node scripts/build.mjs [--force] [bpf|native|ts ...]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const force = args.includes('--force');
const parts = args.filter((a) => !a.startsWith('--'));
const want = (p) => parts.length === 0 || parts.includes(p);

function fail(msg) {
  console.error(`weir build: ${msg}`);
  process.exit(1);
}

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error && r.error.code === 'ENOENT') {
    fail(`${cmd} not found. Install the build dependencies: sudo sh scripts/bootstrap.sh`);
  }
  if (r.status !== 0) fail(`${cmd} ${argv.join(' ')} failed (exit ${r.status})`);
}

function newest(paths) {
  let t = 0;
  for (const p of paths) {
    if (!existsSync(p)) continue;
    const s = statSync(p);
    if (s.isDirectory()) t = Math.max(t, newest(readdirSync(p).map((f) => join(p, f))));
    else t = Math.max(t, s.mtimeMs);
  }
  return t;
}

function stale(out, inputs) {
  return force || !existsSync(out) || statSync(out).mtimeMs < newest(inputs);
}

/** Extra objects built from a source in bpf/: file -> [[output, defines]]. */
const VARIANTS = {
  'egress.bpf.c': [['egress-fqdn.bpf.o', ['-DWEIR_FQDN_LEARN']]],
  'ingress.bpf.c': [['ingress-fqdn.bpf.o', ['-DWEIR_FQDN_LEARN']]],
};

function buildBpf() {
  const headers = [join(root, 'bpf/include'), join(root, 'bpf/lib')];
  const jobs = [];
  for (const [srcDir, outDir] of [
    ['bpf', 'build/bpf'],
    ['test/fixtures', 'build/bpf/fixtures'],
    ['bench/bpf', 'build/bpf/bench'],
  ]) {
    const dir = join(root, srcDir);
    if (!existsSync(dir)) continue;
    mkdirSync(join(root, outDir), { recursive: true });
    for (const f of readdirSync(dir).filter((f) => f.endsWith('.bpf.c'))) {
      const outs = [[f.replace(/\.c$/, '.o'), []], ...(srcDir === 'bpf' ? (VARIANTS[f] ?? []) : [])];
      for (const [o, defines] of outs) {
        const out = join(root, outDir, o);
        if (stale(out, [join(dir, f), ...headers])) jobs.push([join(dir, f), out, defines]);
      }
    }
  }
  for (const [src, out, defines] of jobs) {
    console.log(`weir build: clang ${src.slice(root.length + 1)}${defines.length ? ` ${defines.join(' ')}` : ''}`);
    run('clang', [
      '-target', 'bpf', '-mcpu=v3', '-O2', '-g', '-Wall', '-Werror',
      '-D__TARGET_ARCH_x86', ...defines,
      '-I', join(root, 'bpf/include'), '-I', join(root, 'bpf'),
      '-I', '/usr/include/x86_64-linux-gnu',
      '-c', src, '-o', out,
    ]);
  }
}

function nodeDir() {
  // node-gyp needs Node's headers. Node-API is ABI-stable, so any installed
  // headers serve; prefer ones already on the machine (no download here).
  for (const d of [process.env.WEIR_NODEDIR, '/usr', '/usr/local']) {
    if (d && existsSync(join(d, 'include/node/node_api.h')) && existsSync(join(d, 'include/node/common.gypi'))) return d;
  }
  return undefined;
}

function buildNative() {
  const out = join(root, 'build/Release/weir.node');
  if (!stale(out, [join(root, 'native'), join(root, 'bpf/include'), join(root, 'binding.gyp')])) return;
  if (!existsSync(join(root, 'binding.gyp'))) return;
  const gyp = join(root, 'node_modules/node-gyp/bin/node-gyp.js');
  if (!existsSync(gyp)) fail('node-gyp is missing: run npm ci');
  const nd = nodeDir();
  if (!nd) fail('Node.js headers not found (/usr/include/node). Install them: sudo sh scripts/bootstrap.sh');
  // configure + build, not rebuild: rebuild's clean step deletes all of
  // build/, including the BPF objects built next to the addon.
  console.log('weir build: node-gyp configure + build (native addon)');
  run(process.execPath, [gyp, 'configure', `--nodedir=${nd}`]);
  run(process.execPath, [gyp, 'build', '-j', '2', `--nodedir=${nd}`]);
}

function buildTs() {
  if (!stale(join(root, 'dist/.stamp'), [join(root, 'src'), join(root, 'tsconfig.json')])) return;
  console.log('weir build: tsc');
  run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);
  run('touch', [join(root, 'dist/.stamp')]);
}

if (want('bpf')) buildBpf();
if (want('native')) buildNative();
if (want('ts')) buildTs();
