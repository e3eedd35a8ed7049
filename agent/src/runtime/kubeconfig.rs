//! Loading cluster configuration the same way in both binaries: a
//! kubeconfig file when a flag names one, otherwise `$KUBECONFIG` or the
//! in-cluster configuration.

use std::path::{Path, PathBuf};

use crate::runtime::rest;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

/// Why no cluster configuration or client could be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kubeconfig file cannot be read or parsed.
    #[error("reading kubeconfig {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: KubeconfigError,
    },
    /// The kubeconfig does not make a usable configuration.
    #[error("loading kubeconfig {}: {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: KubeconfigError,
    },
    /// Neither `$KUBECONFIG` nor the in-cluster configuration works.
    #[error("finding the service cluster's configuration: {0}")]
    Infer(#[source] InferConfigError),
    /// The configuration does not make a client.
    #[error("building the service-cluster client: {0}")]
    Client(#[source] kube::Error),
}

/// The configuration in the kubeconfig file at `path` (its current context).
pub async fn from_file(path: &Path) -> Result<Config, LoadError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| LoadError::Load {
            path: path.to_path_buf(),
            source,
        })
}

/// The service cluster's configuration: the file at `path` when given,
/// otherwise inferred (`$KUBECONFIG`, then in-cluster).
pub async fn service_config(path: Option<&Path>) -> Result<Config, LoadError> {
    match path {
        Some(path) => from_file(path).await,
        None => Config::infer().await.map_err(LoadError::Infer),
    }
}

/// A client for `config`.
pub fn client(config: Config) -> Result<Client, LoadError> {
    rest::client(config).map_err(LoadError::Client)
}
