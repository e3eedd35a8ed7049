//! Names of local copies: upstream's default scheme, legacy `$placeholder`
//! strings, and templates. Templates are rendered with handlebars (HTML
//! escaping off); upstream's Go-template forms (`{{ .ClusterName }}`,
//! `{{ .Object.metadata.name | sha3short 12 }}`, pipelines with arguments)
//! are translated to handlebars first. Anything else (`if`, `range`,
//! variables) is rejected with an error naming the template.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
    handlebars_helper,
};
use serde_json::{Value, json};
use sha3::{Digest, Sha3_256};

use crate::api::hash::sha1_hex;

/// Default template of local names.
pub const DEFAULT_NAME: &str =
    "{{ .Object.metadata.namespace | sha3short }}-{{ .Object.metadata.name | sha3short }}";
/// Default template of local namespaces.
pub const DEFAULT_NAMESPACE: &str = "{{ .ClusterName }}";

/// Why a name cannot be formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NamingError {
    /// The template uses a construct the agent does not support.
    #[error("template {template:?} is not supported: {reason}")]
    Unsupported {
        /// The template.
        template: String,
        /// Why.
        reason: String,
    },
    /// Rendering failed.
    #[error("template {template:?} failed: {reason}")]
    Render {
        /// The template.
        template: String,
        /// Why.
        reason: String,
    },
}

/// SHA3-256 of a string, hex (64 characters).
pub fn sha3_hex(value: &str) -> String {
    Sha3_256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn short(hex: String, length: usize) -> String {
    hex.chars().take(length.clamp(1, 64)).collect()
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

handlebars_helper!(sha3sum: |value: Value| sha3_hex(&as_text(&value)));
handlebars_helper!(short_hash: |value: Value| short(sha1_hex(&as_text(&value)), 20));
handlebars_helper!(lower: |value: Value| as_text(&value).to_lowercase());
handlebars_helper!(upper: |value: Value| as_text(&value).to_uppercase());
handlebars_helper!(trim: |value: Value| as_text(&value).trim().to_string());
handlebars_helper!(trim_prefix: |prefix: str, value: Value| {
    let text = as_text(&value);
    text.strip_prefix(prefix).map(str::to_string).unwrap_or(text)
});
handlebars_helper!(trim_suffix: |suffix: str, value: Value| {
    let text = as_text(&value);
    text.strip_suffix(suffix).map(str::to_string).unwrap_or(text)
});
handlebars_helper!(replace: |old: str, new: str, value: Value| as_text(&value).replace(old, new));
handlebars_helper!(default: |fallback: Value, value: Value| {
    if as_text(&value).is_empty() { fallback } else { value }
});

/// `sha3short value [length]` or, from a Go pipeline, `sha3short length value`.
fn sha3short(
    helper: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let params: Vec<&Value> = helper.params().iter().map(|p| p.value()).collect();
    let (value, length) = match params.as_slice() {
        [value] => (*value, 20),
        [Value::Number(n), value] | [value, Value::Number(n)] => (
            *value,
            usize::try_from(n.as_u64().unwrap_or(20)).unwrap_or(20),
        ),
        _ => {
            return Err(RenderErrorReason::Other(
                "sha3short takes a value and an optional length".into(),
            )
            .into());
        }
    };
    out.write(&short(sha3_hex(&as_text(value)), length))?;
    Ok(())
}

/// A handlebars registry with the naming helpers, HTML escaping off.
pub fn registry() -> Handlebars<'static> {
    let mut registry = Handlebars::new();
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_helper("sha3sum", Box::new(sha3sum));
    registry.register_helper("sha3short", Box::new(sha3short));
    registry.register_helper("shortHash", Box::new(short_hash));
    registry.register_helper("lower", Box::new(lower));
    registry.register_helper("upper", Box::new(upper));
    registry.register_helper("trim", Box::new(trim));
    registry.register_helper("trimPrefix", Box::new(trim_prefix));
    registry.register_helper("trimSuffix", Box::new(trim_suffix));
    registry.register_helper("replace", Box::new(replace));
    registry.register_helper("default", Box::new(default));
    registry
}

/// Translates upstream's Go-template forms into handlebars. Templates
/// already in handlebars form (no leading dots, no pipes) pass unchanged.
pub fn translate(template: &str) -> Result<String, NamingError> {
    let unsupported = |reason: &str| NamingError::Unsupported {
        template: template.to_string(),
        reason: reason.to_string(),
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| unsupported("unclosed {{"))?;
        let inner = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str("{{");
        out.push_str(&translate_action(inner).map_err(|r| unsupported(&r))?);
        out.push_str("}}");
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn translate_action(action: &str) -> Result<String, String> {
    let first_word = action.split_whitespace().next().unwrap_or_default();
    if matches!(
        first_word,
        "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
    ) || first_word.starts_with('#')
        || first_word.starts_with('/')
        || action.contains(":=")
        || action.contains('$')
    {
        return Err(format!(
            "{first_word:?} blocks and variables are not supported"
        ));
    }
    let mut expression: Option<String> = None;
    for stage in action.split('|') {
        let words: Vec<String> = stage.split_whitespace().map(translate_word).collect();
        if words.is_empty() {
            return Err("empty pipeline stage".into());
        }
        expression = Some(match expression {
            None if words.len() == 1 => words[0].clone(),
            None => words.join(" "),
            Some(previous) => {
                let piped = if previous.contains(' ') {
                    format!("({previous})")
                } else {
                    previous
                };
                format!("{} {piped}", words.join(" "))
            }
        });
    }
    expression.ok_or_else(|| "empty action".into())
}

fn translate_word(word: &str) -> String {
    match word.strip_prefix('.') {
        Some("") => "this".into(),
        Some(path) => path.to_string(),
        None => word.to_string(),
    }
}

/// Checks a naming pattern without rendering it: a template must translate
/// and parse.
pub fn check(pattern: &str) -> Result<(), NamingError> {
    if !pattern.contains("{{") {
        return Ok(());
    }
    let template = translate(pattern)?;
    handlebars::Template::compile(&template)
        .map(drop)
        .map_err(|e| NamingError::Unsupported {
            template: pattern.to_string(),
            reason: e.to_string(),
        })
}

/// What a naming template can refer to.
#[derive(Debug, Clone)]
pub struct NamingContext<'a> {
    /// The kcp object.
    pub object: &'a Value,
    /// Logical cluster name of its workspace.
    pub cluster_name: &'a str,
    /// Its workspace path, when known.
    pub cluster_path: &'a str,
}

/// Renders a naming pattern: a template when it contains `{{`, otherwise a
/// string with legacy placeholders.
pub fn render(pattern: &str, context: &NamingContext<'_>) -> Result<String, NamingError> {
    if !pattern.contains("{{") {
        return Ok(legacy(pattern, context));
    }
    let template = translate(pattern)?;
    let data = json!({
        "Object": context.object,
        "ClusterName": context.cluster_name,
        "ClusterPath": context.cluster_path,
    });
    registry()
        .render_template(&template, &data)
        .map(|s| s.trim().to_string())
        .map_err(|e| NamingError::Render {
            template: pattern.to_string(),
            reason: e.to_string(),
        })
}

fn legacy(pattern: &str, context: &NamingContext<'_>) -> String {
    let metadata = &context.object["metadata"];
    let namespace = metadata["namespace"].as_str().unwrap_or_default();
    let name = metadata["name"].as_str().unwrap_or_default();
    pattern
        .replace("$remoteClusterName", context.cluster_name)
        .replace("$remoteNamespaceHash", &short(sha1_hex(namespace), 20))
        .replace("$remoteNamespace", namespace)
        .replace("$remoteNameHash", &short(sha1_hex(name), 20))
        .replace("$remoteName", name)
}

#[cfg(test)]
mod tests;
