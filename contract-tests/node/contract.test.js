// Contract tests of the running Lake, Stream and Nexus from Node.js: @grpc/grpc-js with
// @grpc/proto-loader reading the repository's own proto/ files (and build/protodeps for
// google/api and buf/validate) at run time — no generated code, nothing from Python.
//
// Clients reach the services through Nexus's gRPC entry (ENTRY_ADDR, default
// 127.0.0.1:50050) with a credential: calls there carry the API key in CONTRACT_API_KEY
// as `x-api-key` metadata (run.sh sets it from `datapunk admin-key`). The services' own
// ports (LAKE_ADDR, STREAM_ADDR, NEXUS_ADDR; defaults 127.0.0.1:50051/50052/50053) accept
// only Nexus's service tokens: they are called directly only for what stays public there
// (health, StatusService) and to check that the rest is refused.
// Error details (google.rpc.Status) are decoded with google/rpc/*.proto from the
// googleapis-common-protos wheel in .venv, or from GOOGLEAPIS_PROTO_ROOT if set.
// Run: contract-tests/run.sh, or `npm ci && CONTRACT_API_KEY=$(datapunk admin-key) node --test` here.
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
const ENTRY = process.env.ENTRY_ADDR || '127.0.0.1:50050';
const API_KEY = process.env.CONTRACT_API_KEY;
if (!API_KEY) {
  throw new Error('CONTRACT_API_KEY is not set: give an API key the entry accepts (datapunk admin-key)');
}

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
    [
      ...targets.map((t) => `datapunk/${t.name}/v1/status.proto`),
      'datapunk/lake/v1/vectors.proto',
      'datapunk/nexus/v1/auth.proto',
      'datapunk/nexus/v1/api_keys.proto',
    ],
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

/** Metadata carrying the API key (or another x-api-key value); none for `null`. */
function credentials(key = API_KEY) {
  const md = new grpc.Metadata();
  if (key !== null) md.set('x-api-key', key);
  return md;
}

/** Promisified unary call; rejects with the grpc-js ServiceError. */
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, deadline(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** The error a call that must fail rejects with. */
function refusal(promise) {
  return promise.then(
    (resp) => assert.fail(`want an error, got a response: ${JSON.stringify(resp)}`),
    (e) => e,
  );
}

/** Asserts err is UNAUTHENTICATED with an ErrorInfo of our domain (and `reason`, if given). */
function assertUnauthenticated(err, reason) {
  assert.equal(err.code, grpc.status.UNAUTHENTICATED, `want UNAUTHENTICATED, got ${err.code}: ${err.details}`);
  const info = errorDetails(err).ErrorInfo;
  assert.ok(info, 'the error carries no google.rpc.ErrorInfo');
  assert.equal(info.domain, ERROR_DOMAIN);
  assert.ok(info.reason, 'ErrorInfo.reason is empty');
  if (reason) assert.equal(info.reason, reason);
}

const insecure = () => grpc.credentials.createInsecure();

for (const t of targets) {
  describe(`${t.name} through the entry at ${ENTRY} (service port ${t.address})`, () => {
    let status; // through the entry
    let directStatus;
    let health;
    let entryHealth;
    before(() => {
      const pkg = contract.datapunk[t.name].v1;
      status = new pkg.StatusService(ENTRY, insecure());
      directStatus = new pkg.StatusService(t.address, insecure());
      health = new healthProto.grpc.health.v1.Health(t.address, insecure());
      entryHealth = new healthProto.grpc.health.v1.Health(ENTRY, insecure());
    });
    after(() => {
      for (const client of [status, directStatus, health, entryHealth]) client.close();
    });

    test('grpc.health.v1.Health/Check answers without credentials: the service for itself and its StatusService, the entry', async () => {
      for (const [client, service] of [[health, ''], [health, t.service], [entryHealth, '']]) {
        const resp = await call(client, 'Check', { service });
        assert.ok(
          ['SERVING', 'NOT_SERVING'].includes(resp.status),
          `health(${JSON.stringify(service)}) = ${resp.status}, want SERVING or NOT_SERVING`,
        );
      }
    });

    test('GetStatus stays open without credentials, through the entry and on the service port', async () => {
      for (const client of [status, directStatus]) {
        const resp = await call(client, 'GetStatus', {});
        assert.equal(resp.status.service, t.name);
      }
    });

    test('GetStatus returns this service\'s status', async () => {
      const resp = await call(status, 'GetStatus', {}, credentials());
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
        const only = await call(status, 'GetStatus', { engines: [names[0]] }, credentials());
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
        const err = await refusal(call(status, 'GetStatus', request, credentials()));
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

describe(`credentials at the entry ${ENTRY} and the Lake's port`, () => {
  const lakePort = targets.find((t) => t.name === 'lake').address;
  let vectors;
  let apiKeys;
  let auth;
  let lakeVectors;
  before(() => {
    vectors = new contract.datapunk.lake.v1.VectorService(ENTRY, insecure());
    apiKeys = new contract.datapunk.nexus.v1.ApiKeyService(ENTRY, insecure());
    auth = new contract.datapunk.nexus.v1.AuthService(ENTRY, insecure());
    lakeVectors = new contract.datapunk.lake.v1.VectorService(lakePort, insecure());
  });
  after(() => {
    for (const client of [vectors, apiKeys, auth, lakeVectors]) client.close();
  });

  test('a call without credentials is refused: UNAUTHENTICATED, reason MISSING_CREDENTIALS', async () => {
    assertUnauthenticated(await refusal(call(vectors, 'ListCollections', {})), 'MISSING_CREDENTIALS');
    assertUnauthenticated(await refusal(call(apiKeys, 'ListApiKeys', {})), 'MISSING_CREDENTIALS');
  });

  test('an unknown API key is refused: UNAUTHENTICATED, reason INVALID_API_KEY', async () => {
    const bad = credentials('dpk_contract0000_notakeynotakeynotakeynotakey');
    assertUnauthenticated(await refusal(call(vectors, 'ListCollections', {}, bad)), 'INVALID_API_KEY');
  });

  test('the API key is an admin of tenant default and reaches the Lake through the entry', async () => {
    const page = await call(vectors, 'ListCollections', {}, credentials());
    assert.ok(Array.isArray(page.collections || []));
    const who = await call(auth, 'WhoAmI', {}, credentials());
    const caller = who.on_behalf_of || who; // Nexus's service forwarding the caller
    assert.equal(caller.kind, 'api_key');
    assert.equal(caller.tenant, 'default');
    assert.ok((caller.roles || []).includes('admin'), `roles ${caller.roles}`);
  });

  test("the Lake's port refuses a call without a Nexus service token, even with the API key", async () => {
    assertUnauthenticated(await refusal(call(lakeVectors, 'ListCollections', {})), 'MISSING_CREDENTIALS');
    assertUnauthenticated(await refusal(call(lakeVectors, 'ListCollections', {}, credentials())));
  });
});
