// The stand-in kube-apiserver lives in the sandbox toolkit
// (src/sandbox/api-server.ts) so that the bench can use it too; the tests
// import it from here.
export * from '../../src/sandbox/api-server.js';
