//! The env file `testenv` writes once the servers are ready, and how tests
//! find it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Variable naming the env file; defaults to `<repo>/.e2e-run/env`.
pub const ENV_FILE_VARIABLE: &str = "E2E_ENV_FILE";

/// Where the running test environment is.
#[derive(Debug, Clone)]
pub struct EnvFile {
    /// kcp's admin kubeconfig (contexts `root` and `base`).
    pub kcp_kubeconfig: PathBuf,
    /// Admin kubeconfig of the service cluster's kube-apiserver.
    pub service_kubeconfig: PathBuf,
    /// Bearer token of `e2e-agent`, a global kcp user without permissions.
    pub kcp_agent_token: String,
    /// Directory of the servers' logs.
    pub log_dir: PathBuf,
    /// The kcp shards by name, root first: `root` alone, or (`testenv
    /// --sharded`) `root shard-1`, behind a front proxy that the kcp
    /// kubeconfig points at. A workspace is pinned to a shard by its
    /// `spec.location.selector` matching the shard's label `name`.
    pub kcp_shards: Vec<String>,
}

impl EnvFile {
    /// The file's variables, as `KEY=value` pairs.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KCP_KUBECONFIG", self.kcp_kubeconfig.display().to_string()),
            (
                "SERVICE_KUBECONFIG",
                self.service_kubeconfig.display().to_string(),
            ),
            ("KCP_AGENT_TOKEN", self.kcp_agent_token.clone()),
            ("E2E_LOG_DIR", self.log_dir.display().to_string()),
            ("KCP_SHARDS", self.kcp_shards.join(" ")),
        ]
    }

    /// Writes the file as shell-sourceable `KEY=value` lines.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let content: String = self
            .variables()
            .into_iter()
            .map(|(key, value)| format!("{key}={value}\n"))
            .collect();
        fs::write(path, content).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads the env file named by `E2E_ENV_FILE`, or the default one.
    pub fn load() -> anyhow::Result<Self> {
        let path = match std::env::var_os(ENV_FILE_VARIABLE) {
            Some(path) => PathBuf::from(path),
            None => crate::checkout::root()?.join(".e2e-run/env"),
        };
        let content = fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}; start the servers with `cargo run -p e2e --bin testenv -- start`",
                path.display()
            )
        })?;
        Self::parse(&content).with_context(|| format!("parsing {}", path.display()))
    }

    fn parse(content: &str) -> anyhow::Result<Self> {
        let value = |key: &str| -> anyhow::Result<String> {
            content
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .with_context(|| format!("{key} is missing"))
        };
        Ok(Self {
            kcp_kubeconfig: value("KCP_KUBECONFIG")?.into(),
            service_kubeconfig: value("SERVICE_KUBECONFIG")?.into(),
            kcp_agent_token: value("KCP_AGENT_TOKEN")?,
            log_dir: value("E2E_LOG_DIR")?.into(),
            kcp_shards: value("KCP_SHARDS")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }
}

/// `bytes` random bytes from the kernel, hex-encoded.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_reads_back_what_it_wrote() {
        let env = EnvFile {
            kcp_kubeconfig: "/x/kcp.kubeconfig".into(),
            service_kubeconfig: "/x/service.kubeconfig".into(),
            kcp_agent_token: "abc=def".into(),
            log_dir: "/x/logs".into(),
            kcp_shards: vec!["root".into(), "shard-1".into()],
        };
        let content: String = env
            .variables()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        let back = EnvFile::parse(&content).expect("parses");
        assert_eq!(back.kcp_agent_token, "abc=def");
        assert_eq!(
            back.service_kubeconfig,
            PathBuf::from("/x/service.kubeconfig")
        );
        assert_eq!(back.kcp_shards, ["root", "shard-1"]);
    }

    #[test]
    fn random_hex_has_two_digits_per_byte_and_varies() {
        let a = random_hex(8).expect("urandom");
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex(8).expect("urandom"));
    }
}
