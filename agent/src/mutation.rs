//! Rewrite rules applied while syncing (`spec.mutation` of a
//! PublishedResource): `delete`, `regex` (Go's `$1` replacement syntax),
//! `template` (handlebars, Go-template forms translated) and `cel` (with
//! `value`, `self` and `other`). Rules are compiled once per
//! PublishedResource, so a broken rule is reported before any object is
//! touched.
//!
//! Paths are dotted, without a leading dot (`spec.secretName`); a numeric
//! segment indexes an array (`spec.users.0.name`) and `\.` escapes a dot
//! inside a key (`metadata.annotations.example\.com/x`).

use std::fmt;

use regex::Regex;
use serde_json::{Map, Value, json};

use crate::api::published_resource::ResourceMutation;
use crate::sync::naming::Template;

/// Why a rule cannot be compiled or applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutationError {
    /// A rule sets none of its four kinds.
    #[error("{0}: a mutation needs one of delete, regex, template or cel")]
    Empty(String),
    /// A regular expression does not compile.
    #[error("{rule}: invalid regular expression: {reason}")]
    Regex {
        /// Which rule.
        rule: String,
        /// Why.
        reason: String,
    },
    /// A template is not supported or fails.
    #[error("{rule}: {reason}")]
    Template {
        /// Which rule.
        rule: String,
        /// Why.
        reason: String,
    },
    /// A CEL expression does not compile or fails.
    #[error("{rule}: CEL expression: {reason}")]
    Cel {
        /// Which rule.
        rule: String,
        /// Why.
        reason: String,
    },
    /// A path is empty.
    #[error("{0}: the path must not be empty")]
    Path(String),
}

enum Step {
    Delete,
    Regex {
        regex: Option<Regex>,
        replacement: String,
    },
    Template {
        template: Template,
    },
    Cel {
        program: cel::Program,
    },
}

struct Rule {
    name: String,
    path: Vec<String>,
    step: Step,
}

/// Compiled rules for one direction.
#[derive(Default)]
pub struct Mutator {
    rules: Vec<Rule>,
}

impl fmt::Debug for Mutator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.name))
            .finish()
    }
}

impl Mutator {
    /// Compiles `rules`; `field` names them in errors (`spec.mutation.spec`).
    pub fn compile(rules: &[ResourceMutation], field: &str) -> Result<Self, MutationError> {
        let mut compiled = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let name = format!("{field}[{index}]");
            let (path, step) = if let Some(delete) = &rule.delete {
                (&delete.path, Step::Delete)
            } else if let Some(regex) = &rule.regex {
                let pattern = regex.pattern.clone().unwrap_or_default();
                let compiled = if pattern.is_empty() {
                    None
                } else {
                    Some(Regex::new(&pattern).map_err(|e| MutationError::Regex {
                        rule: name.clone(),
                        reason: e.to_string(),
                    })?)
                };
                (
                    &regex.path,
                    Step::Regex {
                        regex: compiled,
                        replacement: regex.replacement.clone().unwrap_or_default(),
                    },
                )
            } else if let Some(template) = &rule.template {
                let compiled =
                    Template::compile(&template.template).map_err(|e| MutationError::Template {
                        rule: name.clone(),
                        reason: e.to_string(),
                    })?;
                (&template.path, Step::Template { template: compiled })
            } else if let Some(expression) = &rule.cel {
                let program = cel::Program::compile(&expression.expression).map_err(|e| {
                    MutationError::Cel {
                        rule: name.clone(),
                        reason: e.to_string(),
                    }
                })?;
                (&expression.path, Step::Cel { program })
            } else {
                return Err(MutationError::Empty(name));
            };
            let path = split_path(path);
            if path.is_empty() {
                return Err(MutationError::Path(name));
            }
            compiled.push(Rule { name, path, step });
        }
        Ok(Self { rules: compiled })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the rules in order to `object`; `other` is its counterpart
    /// on the other side, if there is one.
    pub fn apply(&self, object: &mut Value, other: Option<&Value>) -> Result<(), MutationError> {
        for rule in &self.rules {
            let current = get(object, &rule.path).cloned().unwrap_or(Value::Null);
            match &rule.step {
                Step::Delete => delete(object, &rule.path),
                Step::Regex { regex, replacement } => {
                    let replaced = match regex {
                        None => replacement.clone(),
                        Some(regex) => regex
                            .replace_all(&as_text(&current), replacement.as_str())
                            .into_owned(),
                    };
                    set(object, &rule.path, Value::String(replaced));
                }
                Step::Template { template } => {
                    let data = json!({
                        "Value": {"String": as_text(&current), "Raw": current},
                        "LocalObject": object,
                        "RemoteObject": other,
                    });
                    let rendered = template
                        .render(&data)
                        .map_err(|e| MutationError::Template {
                            rule: rule.name.clone(),
                            reason: e.to_string(),
                        })?;
                    set(object, &rule.path, Value::String(rendered));
                }
                Step::Cel { program } => {
                    let cel_error = |reason: String| MutationError::Cel {
                        rule: rule.name.clone(),
                        reason,
                    };
                    let mut context = cel::Context::default();
                    for (variable, value) in [
                        ("value", &current),
                        ("self", &*object),
                        ("other", other.unwrap_or(&Value::Null)),
                    ] {
                        let value = cel::to_value(value).map_err(|e| cel_error(e.to_string()))?;
                        context.add_variable_from_value(variable, value);
                    }
                    let result = program
                        .execute(&context)
                        .map_err(|e| cel_error(e.to_string()))?;
                    let result = result.json().map_err(|e| cel_error(e.to_string()))?;
                    set(object, &rule.path, result);
                }
            }
        }
        Ok(())
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits a dotted path, honouring `\.` escapes.
pub fn split_path(path: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                current.push('.');
                chars.next();
            }
            '.' => segments.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    if !current.is_empty() || !segments.is_empty() {
        segments.push(current);
    }
    segments.retain(|s| !s.is_empty());
    segments
}

/// The value at `path`.
pub fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |node, segment| match node {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Sets the value at `path`, creating objects on the way.
pub fn set(value: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        *value = new;
        return;
    };
    let mut node = value;
    for segment in parents {
        node = match node {
            Value::Array(items) => {
                match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                }
            }
            other => {
                if !other.is_object() {
                    *other = Value::Object(Map::new());
                }
                match other {
                    Value::Object(map) => map.entry(segment.clone()).or_insert(Value::Null),
                    _ => return,
                }
            }
        };
    }
    match node {
        Value::Array(items) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = new;
            }
        }
        other => {
            if !other.is_object() {
                *other = Value::Object(Map::new());
            }
            if let Value::Object(map) = other {
                map.insert(last.clone(), new);
            }
        }
    }
}

/// Removes the value at `path`, if present.
pub fn delete(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for segment in parents {
        node = match node {
            Value::Object(map) => match map.get_mut(segment) {
                Some(child) => child,
                None => return,
            },
            Value::Array(items) => {
                match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(child) => child,
                    None => return,
                }
            }
            _ => return,
        };
    }
    match node {
        Value::Object(map) => {
            map.remove(last);
        }
        Value::Array(items) => {
            if let Some(index) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                items.remove(index);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
