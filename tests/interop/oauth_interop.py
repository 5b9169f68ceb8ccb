#!/usr/bin/env python3
"""Interoperability proof for Tessera's OAuth HTTP endpoints.

Drives a running node the way an off-the-shelf OAuth client would: the
endpoints are discovered from the RFC 8414 metadata, tokens are fetched,
exchanged, introspected and revoked with Authlib's requests-based
``OAuth2Session`` (client authentication: RFC 8705 ``tls_client_auth``, the
client certificate on the TLS connection plus ``client_id`` in the body),
and every issued token is verified with joserfc (Authlib's JOSE library,
independent of Tessera's Rust code) against the JWKS fetched over HTTPS,
including the certificate binding (``cnf.x5t#S256``) recomputed from the
client certificate with ``cryptography``.

Usage: oauth_interop.py CONFIG.json, where CONFIG names ``base`` (the HTTPS
base URL), ``ca`` (the CA file), ``now`` (the cluster's clock, Unix
seconds; test clusters run on a fake clock) and ``clients``: for
``frontend``, ``orders`` and ``payments`` their ``id``, ``cert`` and ``key``.

Exit status: 0 on success, 1 on a failed check, 3 when a needed Python
package is missing (install with
``python3 -m pip install --user authlib cryptography``).
"""

import base64
import hashlib
import json
import sys
import warnings

try:
    import requests
    from authlib.integrations.requests_client import OAuth2Session, OAuthError
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from joserfc import jwt
    from joserfc.jwk import KeySet
except ImportError as e:  # pragma: no cover - environment check
    print(
        f"missing Python package ({e}); install with: "
        "python3 -m pip install --user authlib cryptography",
        file=sys.stderr,
    )
    sys.exit(3)

# joserfc warns that RFC 9864 deprecates the "EdDSA" name; it is still the
# registered JWS algorithm our tokens use.
warnings.simplefilter("ignore")

AT = "urn:ietf:params:oauth:token-type:access_token"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def thumbprint(cert_path):
    """RFC 8705 x5t#S256 of the leaf certificate in a PEM file."""
    with open(cert_path, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    digest = hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def session(cfg, name):
    """An Authlib session authenticating as `name` with its certificate."""
    c = cfg["clients"][name]
    s = OAuth2Session(
        client_id=c["id"],
        # tls_client_auth: the credential is the TLS client certificate;
        # "none" sends client_id in the body, which is all RFC 8705 §2 adds.
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
    )
    s.cert = (c["cert"], c["key"])
    s.verify = cfg["ca"]
    # requests lets REQUESTS_CA_BUNDLE override a session's `verify`; the
    # cluster CA is the only trust anchor here.
    s.trust_env = False
    return s


def verify(token, keys, meta, cfg, holder, audience):
    """Verifies signature, header, issuer, audience, time and binding."""
    t = jwt.decode(token, keys, algorithms=["EdDSA", "Ed25519", "ES256"])
    check(t.header.get("typ") == "at+jwt", f"typ: {t.header}")
    check("kid" in t.header, "kid is set")
    claims = t.claims
    now = cfg["now"]
    check(claims["iss"] == meta["issuer"], f"iss {claims['iss']}")
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    check(audience in aud, f"aud {aud}")
    check(claims["nbf"] <= now < claims["exp"], f"time {claims} at {now}")
    want = thumbprint(cfg["clients"][holder]["cert"])
    check(claims["cnf"]["x5t#S256"] == want, "cnf binds the holder's certificate")
    return claims


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    ids = {n: c["id"] for n, c in cfg["clients"].items()}

    # Discovery (RFC 8414) and keys, as any OAuth client does: no client
    # certificate needed.
    meta = requests.get(
        cfg["base"] + "/.well-known/oauth-authorization-server", verify=cfg["ca"], timeout=30
    ).json()
    for grant in ("client_credentials", EXCHANGE):
        check(grant in meta["grant_types_supported"], f"grant {grant} advertised")
    jwks = requests.get(meta["jwks_uri"], verify=cfg["ca"], timeout=30).json()
    keys = KeySet.import_key_set(jwks)

    # client_credentials: frontend's own token for orders.
    frontend = session(cfg, "frontend")
    t1 = frontend.fetch_token(
        meta["token_endpoint"],
        grant_type="client_credentials",
        audience=ids["orders"],
        scope="orders:write payments:charge ledger:write",
        timeout=30,
    )
    check(t1["token_type"] == "Bearer", f"token_type {t1}")
    c1 = verify(t1["access_token"], keys, meta, cfg, "frontend", ids["orders"])
    check(c1["sub"] == ids["frontend"], "sub is the caller")

    # RFC 8693: orders exchanges it for payments.
    orders = session(cfg, "orders")
    t2 = orders.fetch_token(
        meta["token_endpoint"],
        grant_type=EXCHANGE,
        subject_token=t1["access_token"],
        subject_token_type=AT,
        requested_token_type=AT,
        audience=ids["payments"],
        scope="payments:charge",
        timeout=30,
    )
    check(t2["issued_token_type"] == AT, f"issued_token_type {t2}")
    c2 = verify(t2["access_token"], keys, meta, cfg, "orders", ids["payments"])
    check(c2["sub"] == ids["frontend"], "delegation keeps the subject")
    check(c2["act"]["sub"] == ids["orders"], "act names the exchanging service")
    check(c2["scope"] == "payments:charge", "narrowed scope")

    # A refused exchange surfaces as the library's OAuth error.
    try:
        orders.fetch_token(
            meta["token_endpoint"],
            grant_type=EXCHANGE,
            subject_token=t1["access_token"],
            subject_token_type=AT,
            audience=ids["payments"],
            scope="payments:charge admin:everything",
            timeout=30,
        )
        check(False, "a widening exchange was refused")
    except OAuthError as e:
        check(e.error == "invalid_scope", f"error {e.error}")

    # RFC 7662, by the audience.
    payments = session(cfg, "payments")
    r = payments.introspect_token(
        meta["introspection_endpoint"], token=t2["access_token"], timeout=30
    )
    check(r.status_code == 200, f"introspect {r.status_code}")
    info = r.json()
    check(info["active"] is True and info["jti"] == c2["jti"], f"introspection {info}")

    # RFC 7009, by the holder; then inactive.
    r = orders.revoke_token(
        meta["revocation_endpoint"],
        token=t2["access_token"],
        token_type_hint="access_token",
        timeout=30,
    )
    check(r.status_code == 200, f"revoke {r.status_code} {r.text}")
    r = payments.introspect_token(
        meta["introspection_endpoint"], token=t2["access_token"], timeout=30
    )
    check(r.json() == {"active": False}, f"after revocation {r.text}")
    print("interop ok: client_credentials, token exchange, introspect, revoke, JWKS verification")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"interop check failed: {e}", file=sys.stderr)
        sys.exit(1)
