//! Names of local copies: upstream's default scheme, legacy `$placeholder`
//! strings, and templates, compiled once per PublishedResource ([`Naming`])
//! and resolved per object. Every template the agent renders is a
//! [`Template`]: handlebars (HTML escaping off); upstream's Go-template forms (`{{ .ClusterName }}`,
//! `{{ .Object.metadata.name | sha3short 12 }}`, pipelines with arguments)
//! are translated to handlebars first. Anything else (`if`, `range`,
//! variables) is rejected with an error naming the template.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, Renderable, StringOutput, handlebars_helper,
};
use serde_json::{Value, json};
use sha3::{Digest, Sha3_256};

use crate::api::dns;
use crate::api::hash::sha1_hex;
use crate::api::published_resource::ResourceNaming;

/// Default template of local names.
pub const DEFAULT_NAME: &str =
    "{{ .Object.metadata.namespace | sha3short }}-{{ .Object.metadata.name | sha3short }}";
/// Default template of local names of cluster-scoped kcp objects.
pub const DEFAULT_CLUSTER_SCOPED_NAME: &str = "{{ .Object.metadata.name | sha3short }}";
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
    /// A rendered name is not a valid Kubernetes name.
    #[error("naming rules produced {0:?}, which is not a valid {1}")]
    Invalid(String, &'static str),
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

/// The handlebars registry with the naming helpers, HTML escaping off,
/// built once for the process.
fn registry() -> &'static Handlebars<'static> {
    static REGISTRY: OnceLock<Handlebars<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
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
    })
}

/// A template translated and parsed once, rendered for every object. The
/// one way the agent renders a template: naming, related-object locators
/// and selectors, and mutation rules.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    compiled: Arc<handlebars::Template>,
}

impl Template {
    /// Translates (Go-template forms) and parses `source`.
    pub fn compile(source: &str) -> Result<Self, NamingError> {
        let translated = translate(source)?;
        let compiled =
            handlebars::Template::compile(&translated).map_err(|e| NamingError::Unsupported {
                template: source.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            source: source.to_string(),
            compiled: Arc::new(compiled),
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template over `data`, trimmed.
    pub fn render(&self, data: &Value) -> Result<String, NamingError> {
        let failed = |e: RenderError| NamingError::Render {
            template: self.source.clone(),
            reason: e.to_string(),
        };
        let context = Context::wraps(data).map_err(failed)?;
        let mut render_context = RenderContext::new(None);
        let mut out = StringOutput::new();
        self.compiled
            .render(registry(), &context, &mut render_context, &mut out)
            .map_err(failed)?;
        let rendered = out.into_string().map_err(|e| NamingError::Render {
            template: self.source.clone(),
            reason: e.to_string(),
        })?;
        Ok(rendered.trim().to_string())
    }
}

/// Compiled templates by their text, shared by one PublishedResource's
/// objects: each text is compiled the first time it is seen (when the
/// worker is configured, for the texts known then) and reused after.
#[derive(Debug, Default)]
pub struct Templates(Mutex<HashMap<String, Template>>);

impl Templates {
    /// A cache holding `texts`, compiled; a text that does not compile is
    /// left out, to fail with its error when an object uses it.
    pub fn with<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let compiled = texts
            .into_iter()
            .filter_map(|text| Some((text.to_string(), Template::compile(text).ok()?)))
            .collect();
        Self(Mutex::new(compiled))
    }

    /// Renders `text` over `data`: a template when it contains `{{`,
    /// otherwise the text itself.
    pub fn render(&self, text: &str, data: &Value) -> Result<String, NamingError> {
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(text)
            .cloned();
        let template = match cached {
            Some(template) => template,
            None => {
                let template = Template::compile(text)?;
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(text.to_string(), template.clone());
                template
            }
        };
        template.render(data)
    }
}

/// Translates upstream's Go-template forms into handlebars. Templates
/// already in handlebars form (no leading dots, no pipes) pass unchanged.
fn translate(template: &str) -> Result<String, NamingError> {
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

/// A naming pattern: a template when it contains `{{`, otherwise a string
/// with legacy `$placeholders`.
#[derive(Debug, Clone)]
enum Pattern {
    Legacy(String),
    Template(Template),
}

impl Pattern {
    fn compile(pattern: &str) -> Result<Self, NamingError> {
        if pattern.contains("{{") {
            Template::compile(pattern).map(Pattern::Template)
        } else {
            Ok(Pattern::Legacy(pattern.to_string()))
        }
    }

    fn render(&self, context: &NamingContext<'_>) -> Result<String, NamingError> {
        match self {
            Pattern::Legacy(pattern) => Ok(legacy(pattern, context)),
            Pattern::Template(template) => template.render(&json!({
                "Object": context.object,
                "ClusterName": context.cluster_name,
                "ClusterPath": context.cluster_path,
            })),
        }
    }
}

/// Where the local copy of a kcp object goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Name of the copy.
    pub name: String,
    /// Namespace of the copy, when the local kind is namespaced.
    pub namespace: Option<String>,
}

/// The naming rules of one PublishedResource, compiled once: the
/// configured patterns, or upstream's defaults.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Name of copies of namespaced kcp objects.
    name: Pattern,
    /// Name of copies of cluster-scoped kcp objects.
    cluster_scoped_name: Pattern,
    /// Whether the name is prefixed with the cluster name (default names of
    /// cluster-scoped local copies, which share one space for every workspace).
    prefix_cluster: bool,
    /// Namespace of copies, when the local kind is namespaced.
    namespace: Option<Pattern>,
}

impl Naming {
    /// Compiles `naming` for a local kind that is namespaced or not.
    pub fn compile(naming: &ResourceNaming, local_namespaced: bool) -> Result<Self, NamingError> {
        let configured = |pattern: &Option<String>| pattern.clone().filter(|p| !p.is_empty());
        let custom_name = configured(&naming.name);
        let (name, cluster_scoped_name) = match &custom_name {
            Some(pattern) => (Pattern::compile(pattern)?, Pattern::compile(pattern)?),
            // Cluster-scoped in kcp: there is no namespace to hash.
            None => (
                Pattern::compile(DEFAULT_NAME)?,
                Pattern::compile(DEFAULT_CLUSTER_SCOPED_NAME)?,
            ),
        };
        let namespace = local_namespaced
            .then(|| {
                Pattern::compile(
                    &configured(&naming.namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                )
            })
            .transpose()?;
        Ok(Self {
            name,
            cluster_scoped_name,
            prefix_cluster: !local_namespaced && custom_name.is_none(),
            namespace,
        })
    }

    /// Where the copy of the object in `context` goes; names that are not
    /// valid Kubernetes names are errors.
    pub fn resolve(&self, context: &NamingContext<'_>) -> Result<Placement, NamingError> {
        let namespaced = context.object["metadata"]["namespace"]
            .as_str()
            .is_some_and(|ns| !ns.is_empty());
        let pattern = if namespaced {
            &self.name
        } else {
            &self.cluster_scoped_name
        };
        let mut name = pattern.render(context)?;
        if self.prefix_cluster {
            name = format!("{}-{name}", context.cluster_name);
        }
        if !dns::is_dns1123_subdomain(&name) {
            return Err(NamingError::Invalid(name, "object name"));
        }
        let namespace = match &self.namespace {
            Some(pattern) => {
                let namespace = pattern.render(context)?;
                if !dns::is_dns1123_label(&namespace) {
                    return Err(NamingError::Invalid(namespace, "namespace name"));
                }
                Some(namespace)
            }
            None => None,
        };
        Ok(Placement { name, namespace })
    }
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
