//! Unit tests of JWT signing and verification: RFC 8725 checks, header and
//! claim shapes, keys and JWKS.

use super::*;
use crate::token::claims::{Actor, Audience, Confirmation};

const ISS: &str = "https://tessera.test";
const NOW: u64 = 1_700_000_000;

fn claims() -> Claims {
    Claims {
        iss: ISS.into(),
        sub: "spiffe://td/a".into(),
        aud: Audience::new(vec!["spiffe://td/b".into(), "spiffe://td/c".into()]).unwrap(),
        exp: NOW + 300,
        iat: NOW,
        nbf: NOW,
        jti: "jti-1".into(),
        scope: "read write".into(),
        client_id: "spiffe://td/a".into(),
        act: None,
        cnf: Some(Confirmation {
            x5t_s256: "thumb".into(),
        }),
        may_act: None,
        chain: vec![],
        rev: None,
        ancestor_clients: Vec::new(),
    }
}

fn ed_key(kid: &str) -> SigningKey {
    let (pkcs8, _) = generate_ed25519().unwrap();
    SigningKey::from_pkcs8(kid.into(), Alg::EdDSA, &pkcs8).unwrap()
}

fn es_key(kid: &str) -> SigningKey {
    let (pkcs8, _) = generate_es256().unwrap();
    SigningKey::from_pkcs8(kid.into(), Alg::ES256, &pkcs8).unwrap()
}

fn params() -> VerifyParams {
    VerifyParams::new(ISS, NOW)
}

fn set(keys: &[&SigningKey]) -> KeySet {
    keys.iter().map(|k| k.verifying_key()).collect()
}

/// Builds a token from a raw header and payload, signed by `key` over
/// exactly those bytes (so only the checks after the signature decide).
fn forge(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(payload));
    let sig = match &key.signer {
        Signer::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
        Signer::Es(kp) => kp
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
    };
    format!("{input}.{}", B64.encode(sig))
}

fn header_for(key: &SigningKey) -> Value {
    json!({"alg": key.alg().name(), "typ": "at+jwt", "kid": key.kid()})
}

fn forge_header(key: &SigningKey, header: Value) -> String {
    forge(key, &header, &serde_json::to_vec(&claims()).unwrap())
}

fn forge_payload(key: &SigningKey, payload: &[u8]) -> String {
    forge(key, &header_for(key), payload)
}

#[test]
fn round_trip_eddsa_and_es256() {
    for key in [ed_key("ed-1"), es_key("es-1")] {
        let mut c = claims();
        c.act = Some(Actor::new("spiffe://td/x"));
        c.chain = vec!["root".into()];
        let token = key.sign(&c).unwrap();
        let got = verify(&token, &set(&[&key]), &params()).unwrap();
        assert_eq!(got, c);
        let header = decode_header(token.split('.').next().unwrap()).unwrap();
        assert_eq!(
            Value::Object(header),
            json!({"alg": key.alg().name(), "typ": "at+jwt", "kid": key.kid()})
        );
    }
}

#[test]
fn pkcs8_v1_and_v2_ed25519_are_accepted() {
    let rng = SystemRandom::new();
    let v1 = Ed25519KeyPair::generate_pkcs8v1(&rng).unwrap();
    let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    for doc in [v1.as_ref(), v2.as_ref()] {
        let key = SigningKey::from_pkcs8("k".into(), Alg::EdDSA, doc).unwrap();
        let token = key.sign(&claims()).unwrap();
        verify(&token, &set(&[&key]), &params()).unwrap();
    }
    assert_eq!(
        SigningKey::from_pkcs8("k".into(), Alg::ES256, v2.as_ref()).unwrap_err(),
        TokenError::InvalidKey("not a P-256 PKCS#8 key")
    );
    assert_eq!(
        SigningKey::from_pkcs8("k".into(), Alg::EdDSA, b"junk").unwrap_err(),
        TokenError::InvalidKey("not an Ed25519 PKCS#8 key")
    );
    assert_eq!(
        SigningKey::from_pkcs8(String::new(), Alg::EdDSA, v2.as_ref()).unwrap_err(),
        TokenError::InvalidKey("empty kid")
    );
}

#[test]
fn debug_never_shows_key_material() {
    let key = ed_key("ed-1");
    let dbg = format!("{key:?} {:?}", key.verifying_key());
    assert!(dbg.contains("ed-1"));
    assert!(!dbg.contains(&format!("{:?}", key.public_key())));
}

#[test]
fn alg_names() {
    assert_eq!(Alg::from_name("EdDSA").unwrap(), Alg::EdDSA);
    assert_eq!(Alg::from_name("ES256").unwrap(), Alg::ES256);
    for bad in ["none", "eddsa", "HS256", "RS256", "ES384", ""] {
        assert_eq!(
            Alg::from_name(bad).unwrap_err(),
            TokenError::UnsupportedAlgorithm(bad.into())
        );
    }
    assert_eq!(
        Alg::from_name(&format!("x\n{}", "y".repeat(100))).unwrap_err(),
        TokenError::UnsupportedAlgorithm(format!("x{}", "y".repeat(63)))
    );
}

#[test]
fn alg_none_is_refused() {
    let key = ed_key("k");
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": "k"});
    let token = format!(
        "{}.{}.",
        B64.encode(header.to_string()),
        B64.encode(serde_json::to_vec(&claims()).unwrap())
    );
    // With an empty signature segment the shape check refuses first...
    assert_eq!(
        verify(&token, &set(&[&key]), &params()).unwrap_err(),
        TokenError::Malformed("empty segment")
    );
    // ...and with any signature the algorithm is refused.
    assert_eq!(
        verify(&format!("{token}AAAA"), &set(&[&key]), &params()).unwrap_err(),
        TokenError::UnsupportedAlgorithm("none".into())
    );
    // A missing or non-string alg is malformed.
    for header in [
        json!({"typ": "at+jwt", "kid": "k"}),
        json!({"alg": 1, "kid": "k"}),
    ] {
        assert_eq!(
            verify(&forge_header(&key, header), &set(&[&key]), &params()).unwrap_err(),
            TokenError::Malformed("header alg")
        );
    }
}

#[test]
fn hs256_with_public_key_as_secret_is_refused() {
    use aws_lc_rs::hmac;
    let key = ed_key("k");
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": "k"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(serde_json::to_vec(&claims()).unwrap())
    );
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.public_key()),
        input.as_bytes(),
    );
    let token = format!("{input}.{}", B64.encode(mac.as_ref()));
    assert_eq!(
        verify(&token, &set(&[&key]), &params()).unwrap_err(),
        TokenError::UnsupportedAlgorithm("HS256".into())
    );
    for alg in ["RS256", "PS256", "ES384", "ES512", "eddsa"] {
        let mut h = header_for(&key);
        h["alg"] = json!(alg);
        assert_eq!(
            verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
            TokenError::UnsupportedAlgorithm(alg.into())
        );
    }
}

#[test]
fn key_bearing_headers_are_refused() {
    let key = ed_key("k");
    for name in FORBIDDEN_HEADERS {
        let mut h = header_for(&key);
        h[name] = json!("https://evil.example/keys");
        assert_eq!(
            verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
            TokenError::ForbiddenHeader(name)
        );
    }
    let mut h = header_for(&key);
    h["jwk"] = key.verifying_key().to_jwk().unwrap();
    assert_eq!(
        verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
        TokenError::ForbiddenHeader("jwk")
    );
}

#[test]
fn crit_is_refused() {
    let key = ed_key("k");
    for crit in [json!(["exp"]), json!([]), json!(null)] {
        let mut h = header_for(&key);
        h["crit"] = crit;
        assert_eq!(
            verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
            TokenError::CriticalHeader
        );
    }
}

#[test]
fn typ_must_be_at_jwt() {
    let key = ed_key("k");
    for typ in ["AT+JWT", "application/at+jwt", "Application/AT+JWT"] {
        let mut h = header_for(&key);
        h["typ"] = json!(typ);
        verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap();
    }
    for typ in [json!("JWT"), json!("at+jwt "), json!(""), json!(1)] {
        let mut h = header_for(&key);
        h["typ"] = typ;
        assert_eq!(
            verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
            TokenError::WrongType
        );
    }
    let mut h = header_for(&key);
    h.as_object_mut().unwrap().remove("typ");
    assert_eq!(
        verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
        TokenError::WrongType
    );
}

#[test]
fn kid_rules() {
    let key = ed_key("k");
    let token = key.sign(&claims()).unwrap();
    assert_eq!(
        verify(&token, &KeySet::default(), &params()).unwrap_err(),
        TokenError::UnknownKey("k".into())
    );
    let other = ed_key("other");
    assert_eq!(
        verify(&token, &set(&[&other]), &params()).unwrap_err(),
        TokenError::UnknownKey("k".into())
    );
    // A kid known under another key's material does not verify.
    let impostor = ed_key("k");
    assert_eq!(
        verify(&token, &set(&[&impostor]), &params()).unwrap_err(),
        TokenError::BadSignature
    );
    for h in [
        json!({"alg": "EdDSA", "typ": "at+jwt"}),
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": 7}),
    ] {
        assert_eq!(
            verify(&forge_header(&key, h), &set(&[&key]), &params()).unwrap_err(),
            TokenError::Malformed("header kid")
        );
    }
}

#[test]
fn key_algorithm_is_pinned() {
    // An ES256 token whose kid names an Ed25519 key, and vice versa.
    let ed = ed_key("ed");
    let es = es_key("es");
    let mut h = header_for(&es);
    h["kid"] = json!("ed");
    assert_eq!(
        verify(&forge_header(&es, h), &set(&[&ed, &es]), &params()).unwrap_err(),
        TokenError::AlgorithmMismatch
    );
    let mut h = header_for(&ed);
    h["kid"] = json!("es");
    assert_eq!(
        verify(&forge_header(&ed, h), &set(&[&ed, &es]), &params()).unwrap_err(),
        TokenError::AlgorithmMismatch
    );
}

#[test]
fn size_and_shape_limits() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let big = "a".repeat(1 << 20);
    assert_eq!(
        verify(&big, &keys, &params()).unwrap_err(),
        TokenError::TooLarge
    );
    let mut limit = params();
    limit.max_len = 10;
    let token = key.sign(&claims()).unwrap();
    assert_eq!(
        verify(&token, &keys, &limit).unwrap_err(),
        TokenError::TooLarge
    );

    let dots = ".".repeat(1_000_000);
    assert_eq!(
        verify(&dots, &keys, &params()).unwrap_err(),
        TokenError::TooLarge
    );
    // Even when the size limit allows it, a million dots fail fast.
    let mut huge = params();
    huge.max_len = usize::MAX;
    assert_eq!(
        verify(&dots, &keys, &huge).unwrap_err(),
        TokenError::Malformed("segments")
    );
    for bad in ["", "abc", "a.b", "a.b.c.d", "..", "a..c", ".b.c", "a.b."] {
        assert!(
            matches!(verify(bad, &keys, &params()), Err(TokenError::Malformed(_))),
            "{bad:?}"
        );
    }
    let long_header = format!("{}.b.c", "A".repeat(MAX_HEADER_B64 + 1));
    assert_eq!(
        verify(&long_header, &keys, &params()).unwrap_err(),
        TokenError::Malformed("header too large")
    );
    assert_eq!(
        verify("!!.b.c", &keys, &params()).unwrap_err(),
        TokenError::Malformed("header encoding")
    );
    let not_json = format!("{}.b.c", B64.encode("nope"));
    assert_eq!(
        verify(&not_json, &keys, &params()).unwrap_err(),
        TokenError::Malformed("header json")
    );
    let array = format!("{}.b.c", B64.encode("[1]"));
    assert_eq!(
        verify(&array, &keys, &params()).unwrap_err(),
        TokenError::Malformed("header json")
    );
    // Padded base64 is not base64url-without-padding.
    let padded = token.replacen('.', "=.", 1);
    assert!(matches!(
        verify(&padded, &keys, &params()),
        Err(TokenError::Malformed("header encoding"))
    ));
}

#[test]
fn duplicate_header_members_are_refused() {
    let key = ed_key("k");
    let raw = r#"{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"k"}"#;
    let token = format!(
        "{}.{}.AAAA",
        B64.encode(raw),
        B64.encode(serde_json::to_vec(&claims()).unwrap())
    );
    assert_eq!(
        verify(&token, &set(&[&key]), &params()).unwrap_err(),
        TokenError::Malformed("header json")
    );
}

/// What a key set that checks by signing again (a node holding the
/// private key) answers must match, or be stricter than, what verifying
/// with the public key answers.
#[test]
fn signing_again_accepts_exactly_what_the_key_signed() {
    let key = Arc::new(ed_key("k"));
    let resigning: KeySet = [key.verifying_key().with_signer(key.clone())]
        .into_iter()
        .collect();
    assert!(format!("{resigning:?}").contains("resigns: true"));
    let public = set(&[&key]);
    let token = key.sign(&claims()).unwrap();
    assert_eq!(verify(&token, &resigning, &params()).unwrap(), claims());

    let (head, sig_b64) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig_b64).unwrap();
    let mut wrong = Vec::new();
    for i in [0, 1, 31, 32, 33, 62, 63] {
        let mut s = sig.clone();
        s[i] ^= 0x80;
        wrong.push(format!("{head}.{}", B64.encode(&s)));
    }
    wrong.push(format!("{head}.{}", B64.encode(&sig[..63])));
    wrong.push(format!("{head}.{}", B64.encode([&sig[..], &[0]].concat())));
    wrong.push(format!("{head}.{}", B64.encode([0u8; 64])));
    // Another key with the same kid, and another message.
    let other = ed_key("k");
    wrong.push(other.sign(&claims()).unwrap());
    let mut c = claims();
    c.scope = "read write admin".into();
    let signed_other = key.sign(&c).unwrap();
    let (other_head, _) = signed_other.rsplit_once('.').unwrap();
    wrong.push(format!("{other_head}.{sig_b64}"));
    for t in &wrong {
        assert_eq!(
            verify(t, &resigning, &params()).unwrap_err(),
            TokenError::BadSignature,
            "{t}"
        );
        assert_eq!(
            verify(t, &public, &params()).unwrap_err(),
            TokenError::BadSignature
        );
    }

    // Only this key's own private half, and only Ed25519.
    let mismatched = key.verifying_key().with_signer(Arc::new(other));
    assert!(format!("{mismatched:?}").contains("resigns: false"));
    let es = Arc::new(es_key("e"));
    let es_set: KeySet = [es.verifying_key().with_signer(es.clone())]
        .into_iter()
        .collect();
    assert!(format!("{es_set:?}").contains("resigns: false"));
    let es_token = es.sign(&claims()).unwrap();
    assert_eq!(verify(&es_token, &es_set, &params()).unwrap(), claims());
}

#[test]
fn tampering_breaks_the_signature() {
    for key in [ed_key("k"), es_key("k")] {
        let keys = set(&[&key]);
        let token = key.sign(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c.scope = "read write admin".into();
        let forged_payload = B64.encode(serde_json::to_vec(&c).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&tampered, &keys, &params()).unwrap_err(),
            TokenError::BadSignature
        );
        // Flip one bit of the signature.
        let mut sig = B64.decode(parts[2]).unwrap();
        sig[5] ^= 1;
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
        assert_eq!(
            verify(&bad_sig, &keys, &params()).unwrap_err(),
            TokenError::BadSignature
        );
        // Truncated signature.
        let short = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig[..10]));
        assert_eq!(
            verify(&short, &keys, &params()).unwrap_err(),
            TokenError::BadSignature
        );
        let junk = format!("{}.{}.!!", parts[0], parts[1]);
        assert_eq!(
            verify(&junk, &keys, &params()).unwrap_err(),
            TokenError::Malformed("signature encoding")
        );
    }
}

#[test]
fn strict_claim_types() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let text = serde_json::to_string(&claims()).unwrap();
    let exp = format!("\"exp\":{}", NOW + 300);
    for bad in [
        format!("\"exp\":\"{}\"", NOW + 300),
        format!("\"exp\":{}.5", NOW + 300),
        "\"exp\":1e10".to_string(),
        "\"exp\":-1".to_string(),
        "\"exp\":null".to_string(),
    ] {
        let payload = text.replace(&exp, &bad);
        assert_ne!(payload, text);
        assert_eq!(
            verify(&forge_payload(&key, payload.as_bytes()), &keys, &params()).unwrap_err(),
            TokenError::BadClaims("claim missing or of the wrong type"),
            "{bad}"
        );
    }
    let iat = format!("\"iat\":{NOW}");
    let payload = text.replace(&iat, &format!("\"iat\":{NOW}.0"));
    assert_eq!(
        verify(&forge_payload(&key, payload.as_bytes()), &keys, &params()).unwrap_err(),
        TokenError::BadClaims("claim missing or of the wrong type")
    );
    assert_eq!(
        verify(&forge_payload(&key, b"{not json"), &keys, &params()).unwrap_err(),
        TokenError::Malformed("payload json")
    );
    let dup = text.replacen('{', "{\"iss\":\"x\",", 1);
    assert_eq!(
        verify(&forge_payload(&key, dup.as_bytes()), &keys, &params()).unwrap_err(),
        TokenError::BadClaims("claim missing or of the wrong type")
    );
}

#[test]
fn issuer_and_audience_are_exact() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let token = key.sign(&claims()).unwrap();
    for iss in ["https://tessera.test/", "HTTPS://tessera.test", "other", ""] {
        let p = VerifyParams::new(iss, NOW);
        assert_eq!(
            verify(&token, &keys, &p).unwrap_err(),
            TokenError::WrongIssuer
        );
    }
    verify(&token, &keys, &params().with_audience("spiffe://td/c")).unwrap();
    for aud in ["spiffe://td/d", "spiffe://td/b/", "SPIFFE://td/b", ""] {
        assert_eq!(
            verify(&token, &keys, &params().with_audience(aud)).unwrap_err(),
            TokenError::WrongAudience
        );
    }
}

#[test]
fn time_checks_with_leeway() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let token = key.sign(&claims()).unwrap();
    let at = |now: u64| verify(&token, &keys, &VerifyParams::new(ISS, now));
    let exp = NOW + 300;
    at(exp + DEFAULT_LEEWAY - 1).unwrap();
    assert_eq!(at(exp + DEFAULT_LEEWAY).unwrap_err(), TokenError::Expired);
    assert_eq!(at(u64::MAX).unwrap_err(), TokenError::Expired);
    at(NOW - DEFAULT_LEEWAY).unwrap();
    assert_eq!(
        at(NOW - DEFAULT_LEEWAY - 1).unwrap_err(),
        TokenError::NotYetValid
    );

    let mut c = claims();
    c.nbf = NOW - 10;
    c.iat = NOW + 100;
    let token = key.sign(&c).unwrap();
    assert_eq!(
        verify(&token, &keys, &params()).unwrap_err(),
        TokenError::IssuedInFuture
    );
    let mut p = params();
    p.leeway = 0;
    let mut c = claims();
    c.exp = NOW;
    assert_eq!(
        verify(&key.sign(&c).unwrap(), &keys, &p).unwrap_err(),
        TokenError::Expired
    );
    c.exp = u64::MAX;
    verify(&key.sign(&c).unwrap(), &keys, &p).unwrap();
}

#[test]
fn required_values_and_chain_bound() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let mut c = claims();
    c.jti = String::new();
    assert_eq!(
        verify(&key.sign(&c).unwrap(), &keys, &params()).unwrap_err(),
        TokenError::BadClaims("empty jti")
    );
    let mut c = claims();
    c.sub = String::new();
    assert_eq!(
        verify(&key.sign(&c).unwrap(), &keys, &params()).unwrap_err(),
        TokenError::BadClaims("empty sub")
    );
    let mut p = params();
    p.max_chain = 2;
    let mut c = claims();
    c.chain = vec!["a".into(), "b".into()];
    verify(&key.sign(&c).unwrap(), &keys, &p).unwrap();
    c.chain.push("c".into());
    assert_eq!(
        verify(&key.sign(&c).unwrap(), &keys, &p).unwrap_err(),
        TokenError::ChainTooLong
    );
    let mut c = claims();
    let mut act = Actor::new("a0");
    for i in 1..3 {
        act = Actor {
            sub: format!("a{i}"),
            act: Some(Box::new(act)),
        };
    }
    c.act = Some(act);
    assert_eq!(
        verify(&key.sign(&c).unwrap(), &keys, &p).unwrap_err(),
        TokenError::ChainTooLong
    );
}

/// Nodes may be configured to mint chains up to 32 deep, but a verifier
/// left at its defaults refused anything deeper than 16.
#[test]
fn a_verifier_at_its_defaults_refused_depths_a_node_may_mint() {
    let key = ed_key("k");
    let keys = set(&[&key]);
    let mut c = claims();
    c.chain = (0..MAX_DEPTH_LIMIT).map(|i| format!("j{i}")).collect();
    let mut act = Actor::new("a0");
    for i in 1..MAX_DEPTH_LIMIT {
        act = Actor {
            sub: format!("a{i}"),
            act: Some(Box::new(act)),
        };
    }
    c.act = Some(act);
    verify(&key.sign(&c).unwrap(), &keys, &params()).unwrap();
}

#[test]
fn jwks_round_trip() {
    let ed = ed_key("ed");
    let es = es_key("es");
    let keys = set(&[&ed, &es]);
    let jwks = keys.to_jwks();
    let list = jwks["keys"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let ed_jwk = list.iter().find(|k| k["kid"] == "ed").unwrap();
    assert_eq!(ed_jwk["kty"], "OKP");
    assert_eq!(ed_jwk["crv"], "Ed25519");
    assert_eq!(ed_jwk["alg"], "EdDSA");
    assert_eq!(ed_jwk["use"], "sig");
    assert_eq!(
        B64.decode(ed_jwk["x"].as_str().unwrap()).unwrap(),
        ed.public_key()
    );
    let es_jwk = list.iter().find(|k| k["kid"] == "es").unwrap();
    assert_eq!(es_jwk["kty"], "EC");
    assert_eq!(es_jwk["crv"], "P-256");
    assert_eq!(es_jwk["alg"], "ES256");
    assert_eq!(
        B64.decode(es_jwk["x"].as_str().unwrap()).unwrap(),
        &es.public_key()[1..33]
    );
    assert_eq!(
        B64.decode(es_jwk["y"].as_str().unwrap()).unwrap(),
        &es.public_key()[33..]
    );

    // A verifier that only has the JWKS text verifies both.
    let back = KeySet::from_jwks_json(&keys.to_jwks_json()).unwrap();
    assert_eq!(back.len(), 2);
    for key in [&ed, &es] {
        verify(&key.sign(&claims()).unwrap(), &back, &params()).unwrap();
    }
}

#[test]
fn jwks_reading_skips_foreign_keys_and_refuses_bad_ones() {
    let ed = ed_key("ed");
    let mut jwk = ed.verifying_key().to_jwk().unwrap();
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "r", "alg": "RS256", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "noalg", "x": jwk["x"]},
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "alg": "EdDSA", "use": "enc", "x": jwk["x"]},
        jwk.clone(),
    ]});
    let set = KeySet::from_jwks_json(&doc.to_string()).unwrap();
    assert_eq!(set.iter().map(|k| k.kid()).collect::<Vec<_>>(), ["ed"]);

    jwk["x"] = json!("AAAA");
    let doc = json!({"keys": [jwk]});
    assert_eq!(
        KeySet::from_jwks_json(&doc.to_string()).unwrap_err(),
        TokenError::InvalidKey("Ed25519 public key must be 32 bytes")
    );
    let doc =
        json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "EdDSA", "kid": "x", "x": "AA"}]});
    assert_eq!(
        KeySet::from_jwks_json(&doc.to_string()).unwrap_err(),
        TokenError::InvalidKey("JWK type does not match its alg")
    );
    assert_eq!(
        KeySet::from_jwks_json("[]").unwrap_err(),
        TokenError::Malformed("JWKS without keys")
    );
    assert_eq!(
        KeySet::from_jwks_json("{").unwrap_err(),
        TokenError::Malformed("JWKS json")
    );
}

#[test]
fn invalid_public_keys_verify_nothing() {
    let ed = ed_key("k");
    let bad = VerifyingKey::new("k".into(), Alg::EdDSA, vec![1, 2, 3]);
    assert!(!bad.is_valid());
    assert!(bad.to_jwk().is_none());
    let keys = KeySet::new([bad]);
    assert_eq!(keys.to_jwks(), json!({"keys": []}));
    assert_eq!(
        verify(&ed.sign(&claims()).unwrap(), &keys, &params()).unwrap_err(),
        TokenError::BadSignature
    );
    assert_eq!(
        VerifyingKey::try_new("k".into(), Alg::ES256, vec![4; 33]).unwrap_err(),
        TokenError::InvalidKey("P-256 public key must be a 65-byte uncompressed point")
    );
    let mut not_on_curve = vec![4u8];
    not_on_curve.extend([1u8; 64]);
    assert_eq!(
        VerifyingKey::try_new("k".into(), Alg::ES256, not_on_curve).unwrap_err(),
        TokenError::InvalidKey("not a P-256 public key")
    );
}

#[test]
fn jti_is_random_base64url() {
    let a = new_jti().unwrap();
    let b = new_jti().unwrap();
    assert_eq!(a.len(), 22);
    assert_ne!(a, b);
    assert_eq!(B64.decode(&a).unwrap().len(), 16);
}

#[test]
fn error_messages_do_not_echo_tokens() {
    let key = ed_key("k");
    let mut c = claims();
    c.sub = "secret-subject".into();
    let token = key.sign(&c).unwrap();
    let p = VerifyParams::new("other", NOW);
    let err = verify(&token, &set(&[&key]), &p).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("secret-subject") && !shown.contains(&token[..20]));
}
