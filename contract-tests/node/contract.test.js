// Contract tests of the running Lake, Stream and Nexus from Node.js: @grpc/grpc-js with
// @grpc/proto-loader reading the repository's own proto/ files (and build/protodeps for
// google/api and buf/validate) at run time — no generated code, nothing from Python.
//
// Addresses: LAKE_ADDR, STREAM_ADDR, NEXUS_ADDR (defaults 127.0.0.1:50051/50052/50053).
// Error details (google.rpc.Status) are decoded with google/rpc/*.proto from the
// googleapis-common-protos wheel in .venv, or from GOOGLEAPIS_PROTO_ROOT if set.
// Run: contract-tests/run.sh, or `npm ci && node --test` here.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const healthCheck = require('grpc-health-check');

const root = path.resolve(__dirname, '..', '..');
const includeDirs = [path.join(root, 'proto'), path.join(root, 'build', 'protodeps')];
const loaderOptions = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true };
const ERROR_DOMAIN = 'datapunk.dev';
const ENGINE_NAME = /^[a-z][a-z0-9_]{0,31}$/;
const RPC_TIMEOUT_MS = 10_000;

const targets = [
  { name: 'lake', env: 'LAKE_ADDR', addr: '127.0.0.1:50051' },
  { name: 'stream', env: 'STREAM_ADDR', addr: '127.0.0.1:50052' },
  { name: 'nexus', env: 'NEXUS_ADDR', addr: '127.0.0.1:50053' },
].map((t) => ({
  ...t,
  address: process.env[t.env] || t.addr,
  service: `datapunk.${t.name}.v1.StatusService`,
}));

const contract = grpc.loadPackageDefinition(
  protoLoader.loadSync(
    targets.map((t) => `datapunk/${t.name}/v1/status.proto`),
    { ...loaderOptions, includeDirs },
  ),
);
const healthProto = grpc.loadPackageDefinition(protoLoader.loadSync(healthCheck.protoPath, loaderOptions));

// google.rpc.Status and its details, to read the grpc-status-details-bin trailer.
function googleapisRoot() {
  if (process.env.GOOGLEAPIS_PROTO_ROOT) return process.env.GOOGLEAPIS_PROTO_ROOT;
  const py = path.join(root, '.venv', 'bin', 'python');
  const site = execFileSync(py, ['-c', 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))'], {
    encoding: 'utf8',
  }).trim();
  return site;
}
const rpcRoot = new protobuf.Root();
{
  const base = googleapisRoot();
  rpcRoot.resolvePath = (origin, target) => {
    const candidate = path.join(base, target);
    return fs.existsSync(candidate) ? candidate : protobuf.util.path.resolve(origin, target);
  };
  rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  rpcRoot.resolveAll();
}
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');
const detailTypes = {
  'type.googleapis.com/google.rpc.ErrorInfo': rpcRoot.lookupType('google.rpc.ErrorInfo'),
  'type.googleapis.com/google.rpc.BadRequest': rpcRoot.lookupType('google.rpc.BadRequest'),
};

/** The decoded details of a gRPC error, keyed by short type name (ErrorInfo, BadRequest). */
function errorDetails(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return {};
  const st = RpcStatus.decode(raw);
  assert.equal(st.code, err.code, 'google.rpc.Status.code must equal the gRPC status code');
  const out = {};
  for (const any of st.details) {
    const type = detailTypes[any.type_url];
    if (type) out[type.name] = type.toObject(type.decode(any.value), { defaults: true });
  }
  return out;
}

function deadline() {
  return { deadline: Date.now() + RPC_TIMEOUT_MS };
}

/** Promisified unary call; rejects with the grpc-js ServiceError. */
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

for (const t of targets) {
  describe(`${t.name} at ${t.address}`, () => {
    let status;
    let health;
    before(() => {
      const pkg = contract.datapunk[t.name].v1;
      status = new pkg.StatusService(t.address, grpc.credentials.createInsecure());
      health = new healthProto.grpc.health.v1.Health(t.address, grpc.credentials.createInsecure());
    });
    after(() => {
      status.close();
      health.close();
    });

    test('grpc.health.v1.Health/Check answers for the server and for the StatusService', async () => {
      for (const service of ['', t.service]) {
        const resp = await call(health, 'Check', { service });
        assert.ok(
          ['SERVING', 'NOT_SERVING'].includes(resp.status),
          `health(${JSON.stringify(service)}) = ${resp.status}, want SERVING or NOT_SERVING`,
        );
      }
    });

    test('GetStatus returns this service\'s status', async () => {
      const resp = await call(status, 'GetStatus', {});
      const st = resp.status;
      assert.ok(st, 'GetStatusResponse.status is missing');
      assert.equal(st.service, t.name);
      assert.ok(st.version, 'status.version is empty');
      assert.ok(st.instance_id, 'status.instance_id is empty');
      assert.ok(st.start_time && Number(st.start_time.seconds) > 0, 'status.start_time is missing');
      assert.ok(Number(st.start_time.seconds) * 1000 < Date.now() + 60_000, 'status.start_time is in the future');
      assert.ok(
        ['SERVING_STATE_SERVING', 'SERVING_STATE_NOT_SERVING', 'SERVING_STATE_DRAINING'].includes(st.state),
        `status.state = ${st.state}`,
      );
      const names = (st.engines || []).map((e) => e.name);
      assert.equal(new Set(names).size, names.length, `engine names repeat: ${names}`);
      for (const e of st.engines || []) {
        assert.match(e.name, ENGINE_NAME);
        if (e.reachable) assert.ok(!e.error, `engine ${e.name} is reachable but has error ${e.error}`);
        else assert.ok(!e.round_trip, `engine ${e.name} is unreachable but has a round_trip`);
        if (st.state === 'SERVING_STATE_SERVING' && e.required) {
          assert.ok(e.reachable, `state is SERVING but required engine ${e.name} is unreachable`);
        }
      }
      if (names.length > 0) {
        const only = await call(status, 'GetStatus', { engines: [names[0]] });
        assert.deepEqual((only.status.engines || []).map((e) => e.name), [names[0]],
          'GetStatus(engines=[first]) must report exactly that engine');
      }
    });

    const invalid = [
      ['an engine name with a space', { engines: ['BAD NAME'] }, 'engines'],
      ['probe_timeout over 30s', { probe_timeout: { seconds: 60 } }, 'probe_timeout'],
    ];
    for (const [what, request, field] of invalid) {
      test(`GetStatus with ${what} fails with INVALID_ARGUMENT`, async () => {
        const err = await call(status, 'GetStatus', request).then(
          (resp) => assert.fail(`want INVALID_ARGUMENT, got a response: ${JSON.stringify(resp)}`),
          (e) => e,
        );
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, `want INVALID_ARGUMENT, got ${err.code}: ${err.details}`);
        const details = errorDetails(err);
        assert.ok(details.ErrorInfo, 'the error carries no google.rpc.ErrorInfo');
        assert.equal(details.ErrorInfo.domain, ERROR_DOMAIN);
        assert.ok(details.ErrorInfo.reason, 'ErrorInfo.reason is empty');
        assert.ok(details.BadRequest, 'the error carries no google.rpc.BadRequest');
        const fields = details.BadRequest.field_violations.map((v) => v.field);
        assert.ok(fields.some((f) => f.startsWith(field)), `no field violation on ${field}: ${fields}`);
      });
    }
  });
}
