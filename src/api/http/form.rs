//! `application/x-www-form-urlencoded` request bodies (the OAuth endpoints'
//! input), parsed in one linear pass over a body the listener has already
//! bounded, with a cap on the number of parameters. RFC 6749 §3.2: a
//! parameter other than the repeatable ones (`audience`, `resource`) may
//! appear at most once, and one sent empty counts as absent.

use std::collections::BTreeMap;

/// Most parameters in one request: the repeatable ones at their limits
/// (`audience`, `resource`: [`crate::api::validate::MAX_AUDIENCES`] each)
/// plus every single-valued parameter, with room to spare.
pub const MAX_PARAMS: usize = 64;

/// A parsed form: each name with its values in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Form(BTreeMap<String, Vec<String>>);

impl Form {
    /// Parses `body`; a message naming the problem on failure.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut count = 0;
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            count += 1;
            if count > MAX_PARAMS {
                return Err(format!("more than {MAX_PARAMS} form parameters"));
            }
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let name = decode(name)?;
            let value = decode(value)?;
            if !value.is_empty() {
                map.entry(name).or_default().push(value);
            }
        }
        Ok(Self(map))
    }

    /// The single value of `name`, if given; an error if it is repeated.
    pub fn one(&self, name: &str) -> Result<Option<&str>, String> {
        match self.0.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([v]) => Ok(Some(v)),
            Some(_) => Err(format!("parameter {name} is repeated")),
        }
    }

    /// The single value of `name`; an error if missing or repeated.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.one(name)?
            .ok_or_else(|| format!("parameter {name} is required"))
    }

    /// Every value of the repeatable parameter `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.get(name).cloned().unwrap_or_default()
    }
}

/// Decodes one form-encoded name or value: `+` is a space, `%XX` a byte;
/// the result must be UTF-8.
fn decode(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("bad percent-encoding in form body")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "form body is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeats_and_decodes() {
        let f = Form::parse(
            b"grant_type=client_credentials&scope=a+b%3Ac&audience=x&audience=y&empty=&k",
        )
        .unwrap();
        assert_eq!(f.required("grant_type").unwrap(), "client_credentials");
        assert_eq!(f.one("scope").unwrap(), Some("a b:c"));
        assert_eq!(f.all("audience"), vec!["x", "y"]);
        assert!(f.one("audience").is_err(), "a repeat of a single value");
        assert_eq!(f.one("empty").unwrap(), None);
        assert_eq!(f.one("k").unwrap(), None);
        assert!(f.required("token").is_err());
    }

    #[test]
    fn refuses_bad_encoding_and_too_many_parameters() {
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%4").is_err());
        assert!(Form::parse(b"a=%ff").is_err(), "not UTF-8");
        let many = vec!["a=b"; MAX_PARAMS + 1].join("&");
        assert!(Form::parse(many.as_bytes()).is_err());
        assert!(Form::parse(vec!["a=b"; MAX_PARAMS].join("&").as_bytes()).is_ok());
    }
}
