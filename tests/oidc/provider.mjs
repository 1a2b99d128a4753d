// A real OpenID provider (the certified npm package oidc-provider) for Datapunk's OIDC
// federation test. It serves discovery, its JWKS and a token endpoint where one
// client-credentials client gets JWT access tokens (typ at+jwt) for one resource indicator.
//
// Configuration (environment):
//   OIDC_PORT           port to listen on, on 127.0.0.1 (the issuer is http://127.0.0.1:PORT)
//   OIDC_JWKS_FILE      a JSON Web Key Set with the private signing keys; the test rotates
//                       keys by restarting the provider with another set
//   OIDC_ALG            the access tokens' signature algorithm (ES256 or RS256)
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET   the client-credentials client
//   OIDC_RESOURCE       the resource indicator (RFC 8707): the access tokens' audience
// Prints "listening <issuer>" once it accepts connections; stops on SIGTERM.
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const port = Number(required('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;
const alg = required('OIDC_ALG');
const resource = required('OIDC_RESOURCE');
const jwks = JSON.parse(readFileSync(required('OIDC_JWKS_FILE'), 'utf8'));

const provider = new Provider(issuer, {
  jwks,
  clients: [
    {
      client_id: required('OIDC_CLIENT_ID'),
      client_secret: required('OIDC_CLIENT_SECRET'),
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'lake.read lake.write',
    },
  ],
  // The provider signs everything with the one algorithm its key set is for.
  clientDefaults: { id_token_signed_response_alg: alg },
  cookies: { keys: ['only-for-the-federation-test'] },
  scopes: ['openid', 'lake.read', 'lake.write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, indicator) {
        if (indicator !== resource) throw new errors.InvalidTarget();
        return {
          scope: 'lake.read lake.write',
          audience: resource,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
  // Claims Datapunk maps to a tenant and roles (configured per provider).
  extraTokenClaims: () => ({ org: 'acme', realm_access: { roles: ['data-engineer', 'admin'] } }),
  formats: {
    customizers: {
      // RFC 9068 leaves nbf optional; Datapunk requires it, so this provider sends it.
      jwt(ctx, token, jwt) {
        jwt.payload.nbf = jwt.payload.iat;
      },
    },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
