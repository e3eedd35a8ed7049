//! Command-line flags, named, defaulted and spelled as upstream
//! api-syncagent's (booleans take `--flag` or `--flag=true|false`), plus
//! `--log-format json|text`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::api::controllers::ControllerName;
use crate::kcp::Rewrites;

use crate::runtime::flags;
use crate::runtime::logging::{LogFormat, LogLevel};

/// Syncs objects between kcp workspaces and this service cluster, publishing
/// the service cluster's APIs through an APIExport.
#[derive(Parser, Debug, Clone)]
#[command(name = "sync-agent", version, about)]
pub struct Options {
    /// Kubeconfig for kcp; its server must point at the workspace holding
    /// the APIExportEndpointSlice (`https://host/clusters/<workspace>`).
    #[arg(long)]
    pub kcp_kubeconfig: PathBuf,

    /// Namespace on the service cluster for the agent's leader-election
    /// Lease and its other objects.
    #[arg(long)]
    pub namespace: String,

    /// Name of this agent: the value of the ownership label on everything it
    /// creates. Must not change once objects are synced. Default
    /// `<apiexportendpointslice-ref>-syncagent`.
    #[arg(long)]
    pub agent_name: Option<String>,

    /// Name of the APIExportEndpointSlice in the kcp workspace.
    #[arg(long = "apiexportendpointslice-ref")]
    pub endpoint_slice: String,

    /// Label selector limiting the PublishedResources this agent handles.
    #[arg(long, default_value = "")]
    pub published_resource_selector: String,

    /// Run leader election; only the leader writes.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = flags::boolean)]
    pub enable_leader_election: bool,

    /// Kubeconfig for the service cluster; `$KUBECONFIG` or the in-cluster
    /// configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Replaces the server URL of the service-cluster kubeconfig.
    #[arg(long, default_value = "")]
    pub kubeconfig_host_override: String,

    /// Replaces the CA of the service-cluster kubeconfig with this file.
    #[arg(long, default_value = "")]
    pub kubeconfig_ca_file_override: String,

    /// Reach a virtual workspace endpoint the endpoint slice lists under a
    /// base URL the service cluster cannot reach at another one:
    /// `<listed base>=<base to use>`, for example
    /// `https://shard-1.kcp.svc:6443=https://kcp-shard-1.example.com`
    /// (repeatable, comma-separated). The rest of the URL is kept. Not an
    /// upstream flag.
    #[arg(long, value_delimiter = ',')]
    pub endpoint_url_rewrite: Vec<String>,

    /// CA bundle (PEM) trusted for the rewritten endpoint addresses instead
    /// of the kcp kubeconfig's CA.
    #[arg(long, default_value = "")]
    pub endpoint_url_rewrite_ca_file: String,

    /// Address for `/metrics`; empty or `0` disables it.
    #[arg(long, default_value = "127.0.0.1:8085")]
    pub metrics_address: String,

    /// Address for `/healthz` and `/readyz`; empty or `0` disables it.
    #[arg(long, default_value = "")]
    pub health_address: String,

    /// Controllers not to run (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub disabled_controllers: Vec<ControllerName>,

    /// Delete a local copy only once the kcp object carries no finalizer but
    /// the agent's own, so other controllers in the workspace finish first
    /// (upstream deletes right away).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = flags::boolean)]
    pub wait_for_foreign_finalizers: bool,

    /// Put a finalizer of this agent's own (`syncagent.kcp.io/cleanup-<agent-name>`)
    /// on kcp-origin related objects instead of the shared
    /// `syncagent.kcp.io/cleanup`, so two agents sharing an object never block
    /// its deletion (upstream #172).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = flags::boolean)]
    pub per_agent_related_finalizer: bool,

    /// Namespace of an upstream api-syncagent this agent takes over from:
    /// its `obj-state-…` Secrets there hold each copy's last-known state,
    /// which a copy without this agent's own state is brought in line from
    /// (then the Secret is deleted). Needs `list`, `get` and `delete` on
    /// Secrets in that namespace. Not an upstream flag.
    #[arg(long, default_value = "")]
    pub upstream_state_namespace: String,

    /// Log format.
    #[arg(long, value_enum, ignore_case = true, default_value = "json")]
    pub log_format: LogFormat,

    /// Log at debug level (upstream's flag; `--log-level=debug`).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = flags::boolean)]
    pub log_debug: bool,

    /// Log level: error, warn, info, debug or trace (`RUST_LOG` overrides it).
    #[arg(long, value_enum, ignore_case = true, default_value = "info")]
    pub log_level: LogLevel,
}

/// Invalid flag values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// The agent name is not a DNS-1035 label.
    #[error("--agent-name {0:?} must be a lower-case DNS-1035 label of at most 63 characters")]
    AgentName(String),
    /// An address flag does not parse.
    #[error("{flag} {value:?} is not a host:port address")]
    Address {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// A required flag is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// An endpoint rewrite rule cannot work.
    #[error("--endpoint-url-rewrite {0}")]
    EndpointRewrite(String),
}

impl Options {
    /// The agent name, defaulted from the endpoint slice.
    pub fn agent_name(&self) -> String {
        self.agent_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}-syncagent", self.endpoint_slice))
    }

    /// The finalizer put on kcp-origin related objects.
    pub fn related_finalizer(&self) -> String {
        if self.per_agent_related_finalizer {
            format!("{}-{}", crate::sync::identity::FINALIZER, self.agent_name())
        } else {
            crate::sync::identity::FINALIZER.to_string()
        }
    }

    /// The log level: `--log-level`, at least debug with `--log-debug`.
    pub fn log_level(&self) -> LogLevel {
        if self.log_debug {
            self.log_level.max(LogLevel::Debug)
        } else {
            self.log_level
        }
    }

    /// Whether a controller runs.
    pub fn runs(&self, controller: ControllerName) -> bool {
        !self.disabled_controllers.contains(&controller)
    }

    /// The metrics address, `None` when disabled.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, OptionsError> {
        parse_address("--metrics-address", &self.metrics_address)
    }

    /// The health address, `None` when disabled.
    pub fn health_address(&self) -> Result<Option<SocketAddr>, OptionsError> {
        parse_address("--health-address", &self.health_address)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.namespace.is_empty() {
            return Err(OptionsError::Empty("--namespace"));
        }
        if self.endpoint_slice.is_empty() {
            return Err(OptionsError::Empty("--apiexportendpointslice-ref"));
        }
        let name = self.agent_name();
        if !crate::api::dns::is_dns1035_label(&name) {
            return Err(OptionsError::AgentName(name));
        }
        self.metrics_address()?;
        self.health_address()?;
        Rewrites::parse(&self.endpoint_url_rewrite, None).map_err(OptionsError::EndpointRewrite)?;
        Ok(())
    }
}

fn parse_address(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, OptionsError> {
    if value.is_empty() || value == "0" {
        return Ok(None);
    }
    let with_host = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    with_host
        .parse()
        .map(Some)
        .map_err(|_| OptionsError::Address {
            flag,
            value: value.to_string(),
        })
}

/// Name of the leader-election Lease of the agent `agent_name`, in its
/// `--namespace`: `syncagent.<agent name>`, as upstream's agent names it,
/// so the two never lead at once.
pub fn lease_name(agent_name: &str) -> String {
    format!("syncagent.{agent_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Options {
        let mut args = vec![
            "sync-agent",
            "--kcp-kubeconfig=/kcp.kubeconfig",
            "--namespace=agents",
            "--apiexportendpointslice-ref=databases",
        ];
        args.extend_from_slice(extra);
        Options::try_parse_from(args).expect("flags parse")
    }

    #[test]
    fn upstream_defaults_apply() {
        let options = parse(&[]);
        assert_eq!(options.agent_name(), "databases-syncagent");
        assert!(!options.enable_leader_election);
        assert_eq!(
            options.metrics_address(),
            Ok(Some("127.0.0.1:8085".parse().expect("addr")))
        );
        assert_eq!(options.health_address(), Ok(None));
        assert!(options.runs(ControllerName::Sync));
        assert_eq!(options.validate(), Ok(()));
    }

    #[test]
    fn disabled_controllers_are_comma_separated_and_repeatable() {
        let options = parse(&[
            "--disabled-controllers=sync,apiexport",
            "--disabled-controllers",
            "apiresourceschema",
        ]);
        assert!(!options.runs(ControllerName::Sync));
        assert!(!options.runs(ControllerName::ApiExport));
        assert!(!options.runs(ControllerName::ApiResourceSchema));
    }

    #[test]
    fn unknown_controller_names_are_rejected() {
        let args = [
            "sync-agent",
            "--kcp-kubeconfig=/k",
            "--namespace=n",
            "--apiexportendpointslice-ref=s",
            "--disabled-controllers=syncer",
        ];
        assert!(Options::try_parse_from(args).is_err());
    }

    #[test]
    fn booleans_accept_a_bare_flag_or_an_attached_value() {
        for flag in [
            "--enable-leader-election",
            "--wait-for-foreign-finalizers",
            "--per-agent-related-finalizer",
            "--log-debug",
        ] {
            let bare = parse(&[flag]);
            let set = parse(&[&format!("{flag}=true")]);
            let unset = parse(&[&format!("{flag}=false")]);
            for (options, want) in [(&bare, true), (&set, true), (&unset, false)] {
                let got = [
                    options.enable_leader_election,
                    options.wait_for_foreign_finalizers,
                    options.per_agent_related_finalizer,
                    options.log_debug,
                ];
                assert_eq!(
                    got.iter().filter(|on| **on).count(),
                    usize::from(want),
                    "{flag}"
                );
            }
        }
        // As with Go's flags, a bare boolean never takes the next argument.
        let args = [
            "sync-agent",
            "--kcp-kubeconfig=/k",
            "--namespace=n",
            "--apiexportendpointslice-ref=s",
            "--log-debug",
        ];
        assert!(Options::try_parse_from(args).is_ok());
        assert!(Options::try_parse_from(args.iter().chain(&["false"])).is_err());
    }

    #[test]
    fn zero_disables_an_address_and_a_bare_port_binds_everywhere() {
        let options = parse(&["--metrics-address=0", "--health-address=:8081"]);
        assert_eq!(options.metrics_address(), Ok(None));
        assert_eq!(
            options.health_address(),
            Ok(Some("0.0.0.0:8081".parse().expect("addr")))
        );
    }

    #[test]
    fn invalid_agent_names_are_rejected() {
        for name in ["Agent", "1agent", "agent-", "a_b"] {
            let options = parse(&[&format!("--agent-name={name}")]);
            assert_eq!(
                options.validate(),
                Err(OptionsError::AgentName(name.into())),
                "{name}"
            );
        }
    }

    #[test]
    fn log_debug_raises_the_log_level_to_debug_and_never_lowers_it() {
        assert_eq!(parse(&[]).log_level(), LogLevel::Info);
        assert_eq!(parse(&["--log-debug"]).log_level(), LogLevel::Debug);
        assert_eq!(parse(&["--log-level=warn"]).log_level(), LogLevel::Warn);
        assert_eq!(
            parse(&["--log-debug", "--log-level=trace"]).log_level(),
            LogLevel::Trace
        );
    }

    #[test]
    fn an_unknown_log_level_is_refused() {
        let refused = Options::try_parse_from([
            "sync-agent",
            "--kcp-kubeconfig=/k",
            "--namespace=n",
            "--apiexportendpointslice-ref=s",
            "--log-level=verbose",
        ])
        .expect_err("refused");
        assert!(refused.to_string().contains("--log-level"), "{refused}");
    }

    #[test]
    fn log_format_accepts_upstream_spellings() {
        assert_eq!(parse(&["--log-format=JSON"]).log_format, LogFormat::Json);
        assert_eq!(parse(&["--log-format=Console"]).log_format, LogFormat::Text);
        assert_eq!(parse(&["--log-format=text"]).log_format, LogFormat::Text);
    }
}
