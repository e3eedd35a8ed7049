//! Logging for both binaries, in the shape log queries written for upstream's
//! agent expect: with `--log-format json` one JSON object per line with
//! `level` (lower case), `time` (RFC 3339), `logger`, `msg` and every field
//! of the event and of its spans at the top level; with `text`, plain lines,
//! coloured only when standard error is a terminal.

use std::fmt;
use std::io::IsTerminal as _;

use clap::ValueEnum;
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Log output format (`--log-format`), upstream's spellings accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[value(alias = "JSON")]
    Json,
    /// Human-readable lines.
    #[value(alias = "console", alias = "Console")]
    Text,
}

/// Log level: messages of this level and the more severe ones are
/// written; `info` if unset. Any other word is refused, so that a typo
/// cannot silence the logs. (The binaries' `--log-level`, and an
/// offering's `spec.agent.logLevel`.)
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    ValueEnum,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// What the process does, in a line per step.
    #[default]
    Info,
    /// Also each decision and request.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level as the flag and the offering spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Logs to standard error in `format` at `level`; `RUST_LOG` overrides it.
pub fn init_logging(format: LogFormat, level: LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// One flat JSON object per event (see the module docs).
struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        // Outermost span first, so inner spans and the event itself win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let metadata = event.metadata();
        line.insert("level".into(), level(*metadata.level()).into());
        line.insert("time".into(), Timestamp::now().to_string().into());
        line.insert("logger".into(), metadata.target().into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Lower-case level names, as zap writes them.
fn level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Collects an event's fields; its message goes under `msg`.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let key = match field.name() {
            "message" => "msg",
            name => name,
        };
        self.0.insert(key.to_owned(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<Map<String, Value>> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("every line is a JSON object"))
            .collect()
    }

    #[test]
    fn the_flag_and_the_offering_spell_every_level_alike() {
        for level in LogLevel::value_variants() {
            let flag = level.to_possible_value().expect("a flag value");
            assert_eq!(flag.get_name(), level.as_str());
            assert_eq!(serde_json::to_value(level).expect("json"), level.as_str());
        }
        assert!(LogLevel::from_str("verbose", true).is_err());
        assert_eq!(LogLevel::from_str("DEBUG", true), Ok(LogLevel::Debug));
    }

    #[test]
    fn json_lines_carry_msg_level_time_and_fields_at_the_top() {
        let lines = lines(|| {
            let span = info_span!("reconcile", published_resource = "widgets");
            let _entered = span.enter();
            info!(objects = 3, "Synced the objects");
            warn!(published_resource = "gadgets", "Inner field wins");
        });
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["msg"], "Synced the objects");
        assert_eq!(first["level"], "info");
        assert_eq!(first["objects"], 3);
        assert_eq!(first["published_resource"], "widgets");
        assert!(
            first["time"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some(),
            "time is RFC 3339: {first:?}"
        );
        assert!(!first.contains_key("fields") && !first.contains_key("message"));
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["published_resource"], "gadgets");
    }
}
