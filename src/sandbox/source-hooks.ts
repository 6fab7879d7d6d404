// Lets plain `node` run the TypeScript sources (Node strips the types): they
// import siblings as './x.js', as tsc wants; when no such file exists, the
// './x.ts' beside it is loaded instead. Used with `node --import` for helper
// processes started from the sources (the reaper, test fixtures); the built
// dist/ has real .js files and needs none of this.
import { registerHooks } from 'node:module';

registerHooks({
  resolve(specifier, context, nextResolve) {
    try {
      return nextResolve(specifier, context);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException | undefined)?.code;
      if (code === 'ERR_MODULE_NOT_FOUND' && specifier.startsWith('.') && specifier.endsWith('.js')) {
        return nextResolve(`${specifier.slice(0, -3)}.ts`, context);
      }
      throw err;
    }
  },
});
