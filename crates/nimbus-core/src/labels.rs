//! Labels, label selectors (`env=prod,tier!=web,team,!legacy`) and JSON Merge Patch (RFC 7386) of labels.

use std::collections::BTreeMap;

use crate::{DomainError, Result};

pub type Labels = BTreeMap<String, String>;

pub const MAX_LABELS: usize = 64;

pub fn validate_labels(field: &str, labels: &Labels) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(DomainError::invalid(field, format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        validate_key(field, k)?;
        if v.len() > 255 {
            return Err(DomainError::invalid(format!("{field}.{k}"), "value longer than 255 characters"));
        }
        // A NUL or an escape sequence in a value ends up in logs, terminals and other systems' files.
        if v.chars().any(char::is_control) {
            return Err(DomainError::invalid(format!("{field}.{k}"), "value may not contain control characters"));
        }
    }
    Ok(())
}

fn validate_key(field: &str, k: &str) -> Result<()> {
    if k.is_empty() || k.len() > 128 {
        return Err(DomainError::invalid(field, format!("label key {k:?} must be 1 to 128 characters long")));
    }
    if k.chars().any(char::is_control) {
        return Err(DomainError::invalid(field, format!("label key {k:?} may not contain control characters")));
    }
    if k.contains([',', '=', '!', ' ']) {
        return Err(DomainError::invalid(field, format!("label key {k:?} may not contain ',', '=', '!' or spaces")));
    }
    Ok(())
}

/// Applies a JSON merge patch to labels: `null` deletes a key, absent keys stay, strings set a value.
pub fn merge_patch(field: &str, labels: &mut Labels, patch: &serde_json::Value) -> Result<()> {
    match patch {
        serde_json::Value::Null => labels.clear(),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::Null => {
                        labels.remove(k);
                    }
                    serde_json::Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(DomainError::invalid(
                            format!("{field}.{k}"),
                            format!("expected a string or null, got {}", json_type(other)),
                        ))
                    }
                }
            }
        }
        other => return Err(DomainError::invalid(field, format!("expected an object, got {}", json_type(other)))),
    }
    validate_labels(field, labels)
}

/// Applies a JSON merge patch (RFC 7386) to any JSON value: objects merge key by key, `null` removes a key,
/// anything else replaces.
pub fn json_merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match patch {
        serde_json::Value::Object(p) => {
            if !target.is_object() {
                *target = serde_json::Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies an update's label changes in the order every API means them: the whole replacement first (the
/// providers whose update replaces the map), then the merge patch.
pub fn apply_update(
    labels: &mut Labels,
    replacement: Option<&Labels>,
    patch: Option<&serde_json::Value>,
) -> Result<()> {
    if let Some(wanted) = replacement {
        let p = replacement_patch(labels, wanted);
        merge_patch("labels", labels, &p)?;
    }
    if let Some(p) = patch {
        merge_patch("labels", labels, p)?;
    }
    Ok(())
}

/// The merge patch that turns `current` into exactly `wanted`, for APIs whose update replaces the whole map.
pub fn replacement_patch(current: &Labels, wanted: &Labels) -> serde_json::Value {
    let removed = current.keys().filter(|k| !wanted.contains_key(*k)).map(|k| (k.clone(), serde_json::Value::Null));
    let set = wanted.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())));
    serde_json::Value::Object(removed.chain(set).collect())
}

pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn parse(s: &str) -> Result<Selector> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_string())
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            validate_key("labels", key)?;
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_replacement_patch_leaves_exactly_the_wanted_labels() {
        let mut l = labels(&[("env", "prod"), ("team", "a")]);
        let wanted = labels(&[("env", "dev"), ("new", "x")]);
        let patch = replacement_patch(&l, &wanted);
        merge_patch("labels", &mut l, &patch).unwrap();
        assert_eq!(l, wanted);
    }

    #[test]
    fn merge_patch_deletes_with_null_and_keeps_absent_keys() {
        let mut l = labels(&[("env", "prod"), ("team", "a"), ("tier", "web")]);
        merge_patch("labels", &mut l, &json!({"team": null, "env": "dev", "new": "x"})).unwrap();
        assert_eq!(l, labels(&[("env", "dev"), ("new", "x"), ("tier", "web")]));
    }

    #[test]
    fn merge_patch_rejects_non_string_values_and_changes_nothing_visible() {
        let mut l = labels(&[("env", "prod")]);
        let err = merge_patch("labels", &mut l, &json!({"env": 3})).unwrap_err();
        assert!(err.to_string().contains("labels.env"), "{err}");
    }

    #[test]
    fn merge_patch_of_any_json_follows_rfc_7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        json_merge_patch(&mut v, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }

    #[test]
    fn selector_supports_equality_inequality_and_existence() {
        let s = Selector::parse("env=prod,tier!=web,team,!legacy").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("tier", "db"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("tier", "web"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("team", "a"), ("legacy", "1")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("team", "a")])));
        assert!(Selector::parse("env==prod").unwrap().matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn an_update_replaces_the_labels_first_then_merges_its_patch() {
        let mut l = labels(&[("a", "1"), ("b", "2")]);
        apply_update(&mut l, Some(&labels(&[("b", "3"), ("c", "4")])), Some(&json!({"c": null, "d": "5"}))).unwrap();
        assert_eq!(l, labels(&[("b", "3"), ("d", "5")]));
        apply_update(&mut l, None, None).unwrap();
        assert_eq!(l, labels(&[("b", "3"), ("d", "5")]), "nothing asked, nothing changed");
        assert!(apply_update(&mut l, None, Some(&json!({"Bad Key!": "x"}))).is_err());
    }
}
