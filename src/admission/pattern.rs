//! What every section of the policy document compiles its entries with: anchored regexes ([`Pattern`], compiled
//! once), the name an entry's errors are reported under, and the check that entry names are unique. A leaf: the
//! image rules ([`super::policy`]) and the access rules ([`crate::auth::access`]) build on it; it knows neither.

use serde_yaml_ng::Value;

/// A pattern or an entry name that cannot be compiled; the message names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A regex that does not compile; `context` names the section, entry and field.
    #[error("{context}: invalid regex {pattern:?}: {why}")]
    Regex {
        context: String,
        pattern: String,
        why: String,
    },
    /// An entry whose name is empty.
    #[error("every entry of {kind} needs a non-empty name")]
    Unnamed { kind: String },
    /// Two entries of one section with the same name.
    #[error("{kind}: the name {name:?} is used twice")]
    Duplicate { kind: String, name: String },
}

/// A regex matched against a whole string.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    pub regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, implicitly anchored (`^(?:source)$`); `context` names it in the error.
    pub fn compile(source: &str, context: &str) -> Result<Pattern, PatternError> {
        regex::Regex::new(&format!("^(?:{source})$"))
            .map(|regex| Pattern {
                source: source.to_owned(),
                regex,
            })
            .map_err(|e| PatternError::Regex {
                context: context.to_owned(),
                pattern: source.to_owned(),
                why: e.to_string(),
            })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// Compiles every pattern of an entry's list field, each error naming `field[i]`.
pub fn compile_all(
    sources: &[String],
    context: &str,
    field: &str,
) -> Result<Vec<Pattern>, PatternError> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| Pattern::compile(source, &format!("{context}: field {field}[{i}]")))
        .collect()
}

/// Which name an entry's errors are reported under: `kind[index] "name"`, or `kind[index]` without a name.
pub fn entry_context(kind: &str, index: usize, value: &Value) -> String {
    match value.get("name").and_then(Value::as_str) {
        Some(name) => format!("{kind}[{index}] {name:?}"),
        None => format!("{kind}[{index}]"),
    }
}

/// Every name is non-empty and used once within `kind`.
pub fn unique(names: impl Iterator<Item = String>, kind: &str) -> Result<(), PatternError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if name.trim().is_empty() {
            return Err(PatternError::Unnamed {
                kind: kind.to_owned(),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(PatternError::Duplicate {
                kind: kind.to_owned(),
                name,
            });
        }
    }
    Ok(())
}
