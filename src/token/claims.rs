//! The claims of a Tessera access token (RFC 9068 profile) and their JSON
//! shape.
//!
//! Numeric claims are `u64`, so serde refuses strings (`"123"`), floats
//! (`1.5`, and `1e10`, which JSON parsers read as a float) and negative
//! numbers: a token with such a claim fails verification instead of being
//! coerced. Duplicate members of the claim set are refused as well.
//!
//! Shapes that RFC 7519 / RFC 8693 leave open are fixed here:
//!
//! - `aud` is a string when there is one audience and an array when there
//!   are several; both are accepted, an empty array is refused.
//! - `act` nests per RFC 8693 §4.1: `{"sub": "c", "act": {"sub": "b"}}`, the
//!   outermost actor being the current one.
//! - `cnf` is `{"x5t#S256": "<base64url sha256 of the holder's cert DER>"}`
//!   (RFC 8705 §3.1).
//! - `may_act` (RFC 8693 §4.4) is written `{"sub": "a"}` for one subject and
//!   `{"sub": ["a", "b"]}` for several. Reading also accepts a bare string or
//!   a bare array of subjects. It lists who may act for the token's subject.
//! - `tsr_chain` holds the ancestor `jti`s of a delegation chain, root first,
//!   and is omitted when empty.
//! - `tsr_rev` (private claim) is the revision (Raft applied index) the
//!   issuing node had applied when it minted the token. Subject and client
//!   cut-offs compare it with the revision they were committed at, not clocks
//!   (see [`cutoff_revokes`](super::cutoff_revokes)). Tokens minted before the
//!   claim existed lack it and fall back to comparing `iat`.
//! - A client cut-off revokes the tokens delegated from that client's
//!   tokens too (DESIGN: a token is inactive if any ancestor is). The
//!   ancestors' clients are `sub` (an issued token's client, kept by every
//!   exchange), the actors in `act`, and `tsr_clients` (private claim,
//!   omitted when empty): the callers of impersonating exchanges, which add
//!   no `act` level. See [`Claims::clients`]. Tokens exchanged by
//!   impersonation before the claim existed lack those.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The claim set of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the cluster's issuer URL or name, matched exactly.
    pub iss: String,
    /// Subject: the identity the token speaks for.
    pub sub: String,
    /// Audiences the token is aimed at.
    pub aud: Audience,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds.
    pub nbf: u64,
    /// Unique token id; what revocations and logs name.
    pub jti: String,
    /// Granted scopes, space separated (RFC 6749 §3.3).
    pub scope: String,
    /// The mTLS identity the token was issued to.
    pub client_id: String,
    /// The current actor, nesting previous actors (RFC 8693 §4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Certificate binding (RFC 8705).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// Who may act for the subject (RFC 8693 §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<MayAct>,
    /// Ancestor `jti`s of the delegation chain, root first.
    #[serde(rename = "tsr_chain", default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The revision the issuing node had applied when it minted the token;
    /// `None` for tokens minted before this claim existed.
    #[serde(rename = "tsr_rev", default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<u64>,
    /// The `client_id`s of ancestors that `sub` and `act` do not name (the
    /// callers of impersonating exchanges), distinct, root first: see
    /// [`Claims::clients`].
    #[serde(rename = "tsr_clients", default, skip_serializing_if = "Vec::is_empty")]
    pub ancestor_clients: Vec<String>,
}

impl Claims {
    /// The granted scopes, in token order, without empty entries.
    pub fn scopes(&self) -> Vec<&str> {
        self.scope.split(' ').filter(|s| !s.is_empty()).collect()
    }

    /// Whether `scope` is one of the granted scopes.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| !s.is_empty() && s == scope)
    }

    /// Delegation depth: how many exchanges separate this token from the
    /// token originally issued.
    pub fn depth(&self) -> usize {
        self.chain.len()
    }

    /// Every client whose cut-off reaches this token: its own `client_id`
    /// and its ancestors'. Most are named already: an issued token's client
    /// is its `sub` (which exchange keeps), and each exchange that adds an
    /// actor names its caller, the new token's client, in `act`. Only the
    /// callers of impersonating exchanges (no `act` level) are listed in
    /// `tsr_clients`. Distinct, own client first.
    pub fn clients(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(4 + self.ancestor_clients.len());
        let named = [self.client_id.as_str(), self.sub.as_str()]
            .into_iter()
            .chain(self.actor_subjects())
            .chain(self.ancestor_clients.iter().map(String::as_str));
        for c in named {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// Actor subjects, outermost (current) actor first.
    pub fn actor_subjects(&self) -> Vec<&str> {
        self.act.as_ref().map(Actor::subjects).unwrap_or_default()
    }

    /// The certificate thumbprint the token is bound to, if any.
    pub fn thumbprint(&self) -> Option<&str> {
        self.cnf.as_ref().map(|c| c.x5t_s256.as_str())
    }

    /// Whether the token is bound to the certificate with this `x5t#S256`
    /// thumbprint. Unbound tokens are bound to nothing.
    pub fn is_bound_to(&self, thumbprint: &str) -> bool {
        self.thumbprint() == Some(thumbprint)
    }
}

/// The `aud` claim: one or more audiences, never none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(Vec<String>);

impl Audience {
    /// An audience list. `None` if empty: a token is always aimed somewhere.
    pub fn new(audiences: Vec<String>) -> Option<Self> {
        if audiences.is_empty() {
            None
        } else {
            Some(Self(audiences))
        }
    }

    /// A single audience.
    pub fn one(audience: impl Into<String>) -> Self {
        Self(vec![audience.into()])
    }

    /// The audiences, in token order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `audience` is one of them (exact match).
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = d.deserialize_any(StringOrSeq("an audience string or a non-empty array"))?;
        Audience::new(list).ok_or_else(|| de::Error::invalid_length(0, &"at least one audience"))
    }
}

/// An actor (RFC 8693 §4.1): who acts, and who acted before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting party's identity.
    pub sub: String,
    /// The previous actor in the chain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// An actor with no previous actor.
    pub fn new(sub: impl Into<String>) -> Self {
        Self {
            sub: sub.into(),
            act: None,
        }
    }

    /// Subjects of this actor and its predecessors, this one first.
    pub fn subjects(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut cur = Some(self);
        while let Some(a) = cur {
            out.push(a.sub.as_str());
            cur = a.act.as_deref();
        }
        out
    }

    /// Number of nested actors, this one included.
    pub fn depth(&self) -> usize {
        let mut n = 0;
        let mut cur = Some(self);
        while let Some(a) = cur {
            n += 1;
            cur = a.act.as_deref();
        }
        n
    }
}

/// Certificate confirmation (RFC 8705 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url (no padding) SHA-256 of the holder certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl Confirmation {
    /// The confirmation of a certificate given as DER.
    pub fn from_cert_der(der: &[u8]) -> Self {
        Self {
            x5t_s256: x5t_s256(der),
        }
    }
}

/// The `x5t#S256` thumbprint of a certificate: base64url (no padding) of the
/// SHA-256 of its DER encoding.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The `may_act` claim: the subjects allowed to act for the token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MayAct {
    /// Allowed actor subjects.
    pub sub: Vec<String>,
}

impl MayAct {
    /// Whether `actor` is allowed to act.
    pub fn allows(&self, actor: &str) -> bool {
        self.sub.iter().any(|s| s == actor)
    }
}

impl Serialize for MayAct {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct One<'a> {
            sub: &'a str,
        }
        #[derive(Serialize)]
        struct Many<'a> {
            sub: &'a [String],
        }
        match self.sub.as_slice() {
            [one] => One { sub: one }.serialize(s),
            many => Many { sub: many }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MayAct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MayAct;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a subject, an array of subjects, or an object with `sub`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MayAct, E> {
                Ok(MayAct {
                    sub: vec![v.to_owned()],
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MayAct, A::Error> {
                let sub = StringOrSeq("").visit_seq(seq)?;
                Ok(MayAct { sub })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<MayAct, A::Error> {
                let mut sub: Option<Vec<String>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "sub" {
                        if sub.is_some() {
                            return Err(de::Error::duplicate_field("sub"));
                        }
                        sub = Some(map.next_value::<SubjectList>()?.0);
                    } else {
                        // Other identifying claims (e.g. `iss`) may appear;
                        // only `sub` is matched, so they are ignored.
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                let sub = sub.ok_or_else(|| de::Error::missing_field("sub"))?;
                Ok(MayAct { sub })
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or an array of strings, read as a list.
struct SubjectList(Vec<String>);

impl<'de> Deserialize<'de> for SubjectList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringOrSeq("a subject or an array of subjects"))
            .map(SubjectList)
    }
}

/// Visitor for "a string, or an array of strings".
struct StringOrSeq(&'static str);

impl<'de> Visitor<'de> for StringOrSeq {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(vec![v.to_owned()])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        // The size hint comes from the input: cap the preallocation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(s) = seq.next_element::<String>()? {
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Claims {
        Claims {
            iss: "https://tessera.test".into(),
            sub: "spiffe://td/a".into(),
            aud: Audience::one("spiffe://td/b"),
            exp: 2000,
            iat: 1000,
            nbf: 1000,
            jti: "j1".into(),
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

    fn base_json() -> serde_json::Value {
        serde_json::to_value(sample()).unwrap()
    }

    #[test]
    fn serializes_compactly() {
        let v = base_json();
        assert_eq!(v["aud"], json!("spiffe://td/b"));
        assert_eq!(v["cnf"], json!({"x5t#S256": "thumb"}));
        let obj = v.as_object().unwrap();
        assert!(!obj.contains_key("tsr_chain"));
        assert!(!obj.contains_key("act"));
        assert!(!obj.contains_key("may_act"));
        assert!(!obj.contains_key("tsr_rev"));
    }

    #[test]
    fn round_trips_with_everything() {
        let mut c = sample();
        c.aud = Audience::new(vec!["x".into(), "y".into()]).unwrap();
        c.act = Some(Actor {
            sub: "c".into(),
            act: Some(Box::new(Actor::new("b"))),
        });
        c.may_act = Some(MayAct {
            sub: vec!["b".into(), "c".into()],
        });
        c.chain = vec!["j0".into(), "j00".into()];
        c.rev = Some(42);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["aud"], json!(["x", "y"]));
        assert_eq!(v["act"], json!({"sub": "c", "act": {"sub": "b"}}));
        assert_eq!(v["may_act"], json!({"sub": ["b", "c"]}));
        assert_eq!(v["tsr_chain"], json!(["j0", "j00"]));
        assert_eq!(v["tsr_rev"], json!(42));
        let back: Claims = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn audience_shapes() {
        let a: Audience = serde_json::from_value(json!("x")).unwrap();
        assert_eq!(a.as_slice(), ["x"]);
        let a: Audience = serde_json::from_value(json!(["x", "y"])).unwrap();
        assert!(a.contains("y") && !a.contains("z"));
        assert!(serde_json::from_value::<Audience>(json!([])).is_err());
        assert!(serde_json::from_value::<Audience>(json!(3)).is_err());
        assert!(serde_json::from_value::<Audience>(json!([1])).is_err());
        assert!(Audience::new(vec![]).is_none());
    }

    #[test]
    fn may_act_shapes() {
        let one = json!({"sub": "a"});
        let m: MayAct = serde_json::from_value(one.clone()).unwrap();
        assert_eq!(m.sub, ["a"]);
        assert_eq!(serde_json::to_value(&m).unwrap(), one);
        let m: MayAct = serde_json::from_value(json!({"sub": ["a", "b"], "iss": "x"})).unwrap();
        assert!(m.allows("b") && !m.allows("c"));
        let m: MayAct = serde_json::from_value(json!("a")).unwrap();
        assert_eq!(m.sub, ["a"]);
        let m: MayAct = serde_json::from_value(json!(["a", "b"])).unwrap();
        assert_eq!(m.sub, ["a", "b"]);
        assert!(serde_json::from_value::<MayAct>(json!({"iss": "x"})).is_err());
        assert!(serde_json::from_value::<MayAct>(json!(5)).is_err());
        assert!(serde_json::from_str::<MayAct>(r#"{"sub":"a","sub":"b"}"#).is_err());
    }

    #[test]
    fn numeric_claims_are_strict() {
        for bad in [
            json!("1000"),
            json!(1.5),
            json!(-1),
            json!(null),
            json!(true),
        ] {
            let mut v = base_json();
            v["exp"] = bad.clone();
            assert!(serde_json::from_value::<Claims>(v).is_err(), "exp = {bad}");
            if !bad.is_null() {
                let mut v = base_json();
                v["tsr_rev"] = bad.clone();
                assert!(serde_json::from_value::<Claims>(v).is_err(), "rev = {bad}");
            }
        }
        // From text as well: `1e10` and `2000.0` are floats to a JSON parser.
        let text = serde_json::to_string(&base_json()).unwrap();
        for bad in ["1e10", "2000.0", "-0", "18446744073709551616"] {
            let t = text.replace("\"exp\":2000", &format!("\"exp\":{bad}"));
            assert_ne!(t, text);
            assert!(serde_json::from_str::<Claims>(&t).is_err(), "exp = {bad}");
        }
    }

    #[test]
    fn duplicate_and_missing_claims_are_refused() {
        let text = serde_json::to_string(&base_json()).unwrap();
        let dup = text.replacen("{", "{\"sub\":\"other\",", 1);
        assert!(serde_json::from_str::<Claims>(&dup).is_err());
        for field in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "scope",
            "client_id",
        ] {
            let mut v = base_json();
            v.as_object_mut().unwrap().remove(field);
            assert!(serde_json::from_value::<Claims>(v).is_err(), "{field}");
        }
    }

    #[test]
    fn helpers() {
        let mut c = sample();
        c.scope = " read  write ".into();
        assert_eq!(c.scopes(), ["read", "write"]);
        assert!(c.has_scope("write") && !c.has_scope("") && !c.has_scope("rea"));
        assert_eq!(c.depth(), 0);
        assert!(c.actor_subjects().is_empty());
        c.act = Some(Actor {
            sub: "c".into(),
            act: Some(Box::new(Actor {
                sub: "b".into(),
                act: Some(Box::new(Actor::new("a"))),
            })),
        });
        assert_eq!(c.actor_subjects(), ["c", "b", "a"]);
        assert_eq!(c.act.as_ref().unwrap().depth(), 3);
        assert!(c.is_bound_to("thumb") && !c.is_bound_to("other"));
        c.cnf = None;
        assert!(!c.is_bound_to("thumb"));
    }

    #[test]
    fn thumbprint_is_base64url_sha256() {
        // SHA-256("abc"), RFC 6234 test vector, base64url without padding.
        assert_eq!(
            x5t_s256(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        assert_eq!(
            Confirmation::from_cert_der(b"abc").x5t_s256,
            x5t_s256(b"abc")
        );
    }
}
