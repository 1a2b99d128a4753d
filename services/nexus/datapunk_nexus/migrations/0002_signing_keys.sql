-- Nexus's token signing keys (datapunk_nexus.identity.signing). Only public material and
-- where the private half lives (the PKCS#11 token and the key's CKA_ID) are stored here;
-- private keys never are.
CREATE TABLE nexus.signing_keys (
    kid           text        PRIMARY KEY,   -- RFC 7638 thumbprint of the public key
    alg           text        NOT NULL CHECK (alg = 'ES256'),
    backend       text        NOT NULL CHECK (backend IN ('pkcs11', 'software')),
    token_label   text,                      -- pkcs11: the token holding the private key
    token_key_id  text,                      -- pkcs11: CKA_ID of the key pair, hex
    public_jwk    jsonb       NOT NULL,
    state         text        NOT NULL CHECK (state IN ('active', 'retired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,               -- when it stopped signing
    publish_until timestamptz,               -- end of its overlap in the JWKS
    CHECK ((backend = 'pkcs11') = (token_label IS NOT NULL AND token_key_id IS NOT NULL)),
    CHECK ((state = 'active') = (retired_at IS NULL AND publish_until IS NULL))
);

-- At most one key signs at a time, whichever instance asks.
CREATE UNIQUE INDEX signing_keys_one_active ON nexus.signing_keys ((true))
    WHERE state = 'active';
