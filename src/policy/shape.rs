//! The shape a policy document may have before Cedar sees it: how deeply
//! its expressions nest, and how long one policy's chains of operators
//! grow, plus the thread with a large stack that Cedar's parser runs on.
//!
//! Cedar's parser, its conversion to an AST and the AST's drop all recurse
//! once per level of nesting, without a stack check (its evaluator and
//! validator check, its parser does not). A 2 KB document of a thousand
//! nested parentheses, or a chain of `&&` a hundred thousand long, used to
//! overflow a Tokio worker's stack and abort the node, from the dry run
//! `ValidatePolicy` as much as from `PutPolicy` (and a replicated document
//! is parsed again by every node). So a linear scan bounds both before
//! any parse, and the parse runs on a thread whose stack holds what the
//! bounds allow with a wide margin (debug builds included).

use super::PolicyError;

/// The deepest nesting of `(`, `[` and `{` a document may have (the
/// policy's own parentheses and `when { }` braces count).
pub const MAX_NESTING: usize = 32;

/// The most operators one policy may hold (`&&`, `==`, `.`, `!`, `if`,
/// `in`, ...): each may add a level to Cedar's AST. Long lists of
/// alternatives are better written as a set (`[a, b, c].contains(x)`),
/// whose elements do not nest.
pub const MAX_OPERATORS_PER_POLICY: usize = 1_000;

/// The stack of the thread that parses, validates and builds an engine.
/// Reserved, not committed: only what the parse touches is used.
const PARSE_STACK_BYTES: usize = 256 << 20;

/// Runs `f` (which parses or builds from policy text) on a thread with a
/// stack large enough for any document that passed [`check`]. Blocks the
/// caller until it returns: parses are rare (a policy change) and short.
pub fn on_parse_thread<T: Send>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send,
) -> Result<T, PolicyError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("tessera-policy-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(s, f)
            .map_err(|e| {
                PolicyError::Internal(format!("cannot start the policy parser thread: {e}"))
            })?
            .join()
            .map_err(|_| PolicyError::Internal("the policy parser thread panicked".into()))?
    })
}

/// Refuses a document nested deeper than [`MAX_NESTING`] or with a policy
/// of more than [`MAX_OPERATORS_PER_POLICY`] operators. Linear in the
/// text; skips string literals and comments; a document that is not
/// Cedar passes here and fails in the parser.
pub fn check(text: &str) -> Result<(), PolicyError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut policy = 1usize;
    let mut line = 1usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        match b {
            b'\n' => line += 1,
            b'"' => {
                // A string literal: `\` escapes the next byte.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    } else if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'/' if next == Some(b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(PolicyError::Invalid(format!(
                        "line {line}: expressions nest more than {MAX_NESTING} deep"
                    )));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                policy += 1;
                operators = 0;
            }
            b'&' | b'|' | b'=' | b'<' | b'>' if next == Some(b) || next == Some(b'=') => {
                // `&&`, `||`, `==`, `<=`, `>=` (and `<<`-like typos, which
                // do not parse anyway): one operator of two bytes.
                operators += 1;
                i += 1;
            }
            b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => operators += 1,
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(&text[start..i], "if" | "in" | "has" | "like" | "is") {
                    operators += 1;
                }
                continue;
            }
            _ => {}
        }
        if operators > MAX_OPERATORS_PER_POLICY {
            return Err(PolicyError::Invalid(format!(
                "line {line}: policy number {policy} has more than {MAX_OPERATORS_PER_POLICY} operators; split it, or write a long list of alternatives as a set (`[a, b].contains(x)`)"
            )));
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(condition: &str) -> String {
        format!("@id(\"p\")\npermit(principal, action, resource) when {{ {condition} }};\n")
    }

    #[test]
    fn nesting_and_operators_are_counted_outside_strings_and_comments() {
        // The `when { }` braces count as one level.
        let ok = policy(&format!(
            "{}true{}",
            "(".repeat(MAX_NESTING - 1),
            ")".repeat(MAX_NESTING - 1)
        ));
        check(&ok).unwrap();
        let deep = policy(&format!(
            "{}true{}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        ));
        assert!(matches!(check(&deep), Err(PolicyError::Invalid(m)) if m.contains("nest")));
        // Brackets and operators inside strings and comments do not count.
        let quoted = policy(&format!(
            "context.x == \"{}\\\"{}\" // {}\n",
            "(".repeat(100),
            "&&".repeat(2_000),
            "[".repeat(100)
        ));
        check(&quoted).unwrap();
        // Operators are counted per policy.
        let chain = |n: usize| vec!["true"; n + 1].join(" && ");
        let two = format!(
            "{}{}",
            policy(&chain(MAX_OPERATORS_PER_POLICY - 10)),
            policy(&chain(MAX_OPERATORS_PER_POLICY - 10))
        );
        check(&two).unwrap();
        let long = policy(&chain(MAX_OPERATORS_PER_POLICY + 1));
        assert!(matches!(check(&long), Err(PolicyError::Invalid(m)) if m.contains("operators")));
        // Keywords count as operators, identifiers that contain them do not.
        let words =
            policy(&vec!["principal in resource"; MAX_OPERATORS_PER_POLICY + 1].join(" || "));
        assert!(check(&words).is_err());
        let names = policy(&vec!["context.inside"; 300].join(" || "));
        check(&names).unwrap();
    }

    /// On a Tokio worker's stack (2 MiB), as `ValidatePolicy` and
    /// `PutPolicy` run: refused, not a stack overflow that aborts the node.
    fn on_a_worker_stack(text: String) -> Result<(), PolicyError> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || crate::policy::PolicyEngine::validate(&text))
            .unwrap()
            .join()
            .expect("no panic")
    }

    #[test]
    fn a_deeply_nested_policy_is_refused_not_a_stack_overflow() {
        let depth = 1000;
        let text = policy(&format!("{}true{}", "(".repeat(depth), ")".repeat(depth)));
        assert!(
            matches!(on_a_worker_stack(text), Err(PolicyError::Invalid(m)) if m.contains("nest"))
        );
        let sets = policy(&format!(
            "{}1{}.contains(1)",
            "[".repeat(depth),
            "]".repeat(depth)
        ));
        assert!(matches!(
            on_a_worker_stack(sets),
            Err(PolicyError::Invalid(_))
        ));
    }

    #[test]
    fn a_long_chain_of_operators_is_refused_not_a_stack_overflow() {
        let and = policy(&vec!["true"; 100_000].join(" && "));
        assert!(
            matches!(on_a_worker_stack(and), Err(PolicyError::Invalid(m)) if m.contains("operators"))
        );
        let ite = policy(&format!(
            "{}true{}",
            "if true then ".repeat(10_000),
            " else false".repeat(10_000)
        ));
        assert!(matches!(
            on_a_worker_stack(ite),
            Err(PolicyError::Invalid(_))
        ));
    }

    /// The worst a document may be: built on the parse thread, then
    /// evaluated and dropped on a worker's stack (as a node does).
    #[test]
    fn a_policy_at_the_limits_is_built_evaluated_and_dropped_on_a_worker_stack() {
        let nested = |inner: &str| {
            format!(
                "{}{inner}{}",
                "(".repeat(MAX_NESTING - 3),
                ")".repeat(MAX_NESTING - 3)
            )
        };
        let half = MAX_OPERATORS_PER_POLICY / 2 - 1;
        let texts = [
            policy(&nested(&vec!["true"; half * 2].join(" && "))),
            policy(&format!(
                "{}true{}",
                "if true then ".repeat(half),
                " else false".repeat(half)
            )),
            policy(&format!(
                "{} == 1",
                vec!["1"; MAX_OPERATORS_PER_POLICY - 1].join(" + ")
            )),
        ];
        for text in texts {
            check(&text).unwrap();
            let engine = crate::policy::PolicyEngine::new(&text, 1).unwrap();
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let d = engine.authorize(&crate::policy::Request::introspect("spiffe://t/x"));
                    drop(engine);
                    d
                })
                .unwrap()
                .join()
                .expect("evaluated and dropped without overflowing");
        }
    }

    /// The limits apply to documents coming in, not to one the cluster
    /// already holds: an upgraded node used to refuse to build a policy an
    /// earlier release had accepted (and then answered `INTERNAL` to every
    /// call the policy decides).
    #[test]
    fn a_stored_policy_beyond_the_limits_still_builds() {
        let alternatives: Vec<String> = (0..600)
            .map(|i| format!("context.scope == \"scope-{i}\""))
            .collect();
        let text = format!(
            "@id(\"issue-many\")\npermit (principal, action == Tessera::Action::\"issue\", resource)\nwhen {{ {} }};\n",
            alternatives.join(" ||\n  ")
        );
        assert!(crate::policy::PolicyEngine::validate(&text).is_err());
        crate::policy::PolicyEngine::new(&text, 7).expect("a stored policy builds");
    }
}
