//! Credentials: the operator's own kcp kubeconfig (from a Secret), and the
//! agent's kcp kubeconfig with a short-lived ServiceAccount token that the
//! operator rotates before it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Client, Config};

use crate::error::{Error, is_not_found};
use crate::names::{FIELD_MANAGER, KCP_NAMESPACE, KUBECONFIG_KEY, Names, TOKEN_KEY};

/// Annotation on the agent's Secret: when its token expires (RFC 3339).
pub const EXPIRES_ANNOTATION: &str = "offering.syncagent.dev/token-expires-at";
/// Annotation on the agent's Secret: when its token was minted (RFC 3339).
pub const ISSUED_ANNOTATION: &str = "offering.syncagent.dev/token-issued-at";
/// Annotation on the agent's Secret: the UID of the ServiceAccount that the
/// token belongs to; a recreated ServiceAccount invalidates the token.
pub const ACCOUNT_UID_ANNOTATION: &str = "offering.syncagent.dev/token-service-account-uid";

/// Where the operator finds its kcp kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretLocation {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Key holding the kubeconfig.
    pub key: String,
}

/// The operator's kcp credentials.
#[derive(Clone, Debug)]
pub struct KcpCredentials {
    /// The kubeconfig as stored.
    pub kubeconfig: Kubeconfig,
    /// The client configuration it gives.
    pub config: Config,
}

/// Reads and loads the kubeconfig at `location`.
pub async fn load(client: &Client, location: &SecretLocation) -> Result<KcpCredentials, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &location.namespace);
    let what = format!("Secret {}/{}", location.namespace, location.name);
    let secret = match secrets.get(&location.name).await {
        Ok(secret) => secret,
        Err(error) if is_not_found(&error) => {
            return Err(Error::KcpSecretMissing(format!(
                "{what} with the kcp kubeconfig does not exist"
            )));
        }
        Err(error) => return Err(Error::service(&format!("reading {what}"), error)),
    };
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&location.key))
        .ok_or_else(|| Error::KcpSecretMissing(format!("{what} has no key {:?}", location.key)))?;
    let text = std::str::from_utf8(&data.0).map_err(|_| {
        Error::InvalidKcpKubeconfig(format!("key {:?} of {what} is not UTF-8", location.key))
    })?;
    // The parser's message is not passed on: it can quote the lines it
    // failed on, and those may hold a token or a key.
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|_| {
        Error::InvalidKcpKubeconfig(format!(
            "key {:?} of {what} is not a kubeconfig (kubectl --kubeconfig must be able to read it)",
            location.key
        ))
    })?;
    self_contained(&kubeconfig).map_err(|why| {
        Error::InvalidKcpKubeconfig(format!("key {:?} of {what}: {why}", location.key))
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
        .await
        .map_err(|error| {
            Error::InvalidKcpKubeconfig(format!("key {:?} of {what}: {error}", location.key))
        })?;
    Ok(KcpCredentials { kubeconfig, config })
}

/// Checks that a kubeconfig from a Secret carries its credentials inline.
/// A file path or a plugin would be read or run in the operator's pod, where
/// it could reach the operator's own ServiceAccount token or other files,
/// so whoever writes the Secret could send them to any server.
pub fn self_contained(kubeconfig: &Kubeconfig) -> Result<(), String> {
    for named in &kubeconfig.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let refused = [
            ("tokenFile", user.token_file.is_some()),
            ("client-certificate", user.client_certificate.is_some()),
            ("client-key", user.client_key.is_some()),
            ("exec", user.exec.is_some()),
            ("auth-provider", user.auth_provider.is_some()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(format!(
                "user {:?} uses {field}; only inline credentials (token, client-certificate-data, client-key-data) are accepted",
                named.name
            ));
        }
    }
    for named in &kubeconfig.clusters {
        if named
            .cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(format!(
                "cluster {:?} refers to a CA file; inline it as certificate-authority-data",
                named.name
            ));
        }
    }
    Ok(())
}

/// The server part of a kcp URL, without any `/clusters/<workspace>`.
pub fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.split_once("/clusters/") {
        Some((base, _)) => base.to_string(),
        None => url.to_string(),
    }
}

/// The user of a minted token: read from the file `token` beside the
/// kubeconfig, which the operator rewrites before the token expires.
pub fn minted_user() -> AuthInfo {
    AuthInfo {
        token_file: Some(TOKEN_KEY.into()),
        ..Default::default()
    }
}

/// The context `kubeconfig` uses: its current one, or its first.
fn current_context(kubeconfig: &Kubeconfig) -> Result<Context, Error> {
    let context_name = kubeconfig
        .current_context
        .clone()
        .or_else(|| kubeconfig.contexts.first().map(|c| c.name.clone()))
        .ok_or_else(|| Error::InvalidKcpKubeconfig("the kcp kubeconfig has no context".into()))?;
    kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| {
            Error::InvalidKcpKubeconfig(format!(
                "the kcp kubeconfig has no context {context_name:?}"
            ))
        })
}

/// The credentials of the user of `kubeconfig`'s current context.
pub fn current_user(kubeconfig: &Kubeconfig) -> Result<AuthInfo, Error> {
    let name = current_context(kubeconfig)?.user.unwrap_or_default();
    kubeconfig
        .auth_infos
        .iter()
        .find(|u| u.name == name)
        .and_then(|u| u.auth_info.clone())
        .ok_or_else(|| {
            Error::InvalidKcpKubeconfig(format!("the kcp kubeconfig has no user {name:?}"))
        })
}

/// The agent's kcp kubeconfig: the cluster entry of `source`'s current
/// context (CA and TLS settings), pointed at `server`, with `user`'s
/// credentials.
pub fn agent_kubeconfig(
    source: &Kubeconfig,
    server: &str,
    user: AuthInfo,
) -> Result<String, Error> {
    let cluster_name = current_context(source)?.cluster;
    let source = source
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            Error::InvalidKcpKubeconfig(format!(
                "the kcp kubeconfig has no cluster {cluster_name:?}"
            ))
        })?;
    let authority_data = match (
        &source.certificate_authority_data,
        &source.certificate_authority,
    ) {
        (Some(data), _) => Some(data.clone()),
        (None, Some(path)) => {
            return Err(Error::InvalidKcpKubeconfig(format!(
                "the kcp kubeconfig refers to the CA file {path}; inline it as certificate-authority-data so agents can use it"
            )));
        }
        (None, None) => None,
    };
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "kcp".into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                insecure_skip_tls_verify: source.insecure_skip_tls_verify,
                certificate_authority_data: authority_data,
                proxy_url: source.proxy_url.clone(),
                tls_server_name: source.tls_server_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "sync-agent".into(),
            auth_info: Some(user),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "kcp".into(),
            context: Some(Context {
                cluster: "kcp".into(),
                user: Some("sync-agent".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("kcp".into()),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    serde_json::to_string_pretty(&kubeconfig).map_err(|error| {
        Error::InvalidKcpKubeconfig(format!("rendering the agent's kubeconfig: {error}"))
    })
}

/// When a token must be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Lifetime asked for each token.
    pub lifetime: Duration,
    /// How long before expiry a token is replaced.
    pub renew_before: Duration,
}

/// When a token is replaced, and when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// When the operator replaces it.
    pub renew_at: Timestamp,
    /// When kcp stops taking it.
    pub expires: Timestamp,
}

/// When the token in `secret` must be replaced, or `None` when the Secret
/// must get a new token now: it is missing, holds another kubeconfig or a
/// token of another ServiceAccount, or its token is due.
pub fn renewal_time(
    secret: Option<&Secret>,
    kubeconfig: &str,
    account_uid: &str,
    rotation: Rotation,
    now: Timestamp,
) -> Option<Schedule> {
    let secret = secret?;
    let data = secret.data.as_ref()?;
    if data.get(KUBECONFIG_KEY).map(|v| v.0.as_slice()) != Some(kubeconfig.as_bytes()) {
        return None;
    }
    stored_token(secret)?;
    let annotations = secret.metadata.annotations.as_ref()?;
    if annotations.get(ACCOUNT_UID_ANNOTATION).map(String::as_str) != Some(account_uid) {
        return None;
    }
    let issued: Timestamp = annotations.get(ISSUED_ANNOTATION)?.parse().ok()?;
    let expires: Timestamp = annotations.get(EXPIRES_ANNOTATION)?.parse().ok()?;
    let renew_at = renew_at(issued, expires, rotation);
    (renew_at > now).then_some(Schedule { renew_at, expires })
}

/// The agent's token in its Secret, unless it has none.
pub fn stored_token(secret: &Secret) -> Option<String> {
    let token = secret.data.as_ref()?.get(TOKEN_KEY)?;
    let token = String::from_utf8(token.0.clone()).ok()?;
    (!token.is_empty()).then_some(token)
}

/// When a token minted at `issued` that expires at `expires` is replaced:
/// `renew_before` ahead of its expiry; but when kcp granted clearly less
/// than the lifetime asked for, at most halfway through its life, so that a
/// short token is not replaced at once again and again.
pub fn renew_at(issued: Timestamp, expires: Timestamp, rotation: Rotation) -> Timestamp {
    let granted = expires.duration_since(issued);
    let asked = SignedDuration::try_from(rotation.lifetime).unwrap_or(SignedDuration::MAX);
    let mut ahead = SignedDuration::try_from(rotation.renew_before).unwrap_or(SignedDuration::MAX);
    if granted < asked / 10 * 9 {
        ahead = ahead.min(granted / 2);
    }
    expires.checked_sub(ahead).unwrap_or(issued)
}

/// A freshly minted token.
#[derive(Clone)]
pub struct MintedToken {
    /// The bearer token.
    pub token: String,
    /// When it expires.
    pub expires: Timestamp,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Mints a token for the agent's ServiceAccount in the provider workspace.
pub async fn mint(kcp: &Client, names: &Names, lifetime: Duration) -> Result<MintedToken, Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(kcp.clone(), KCP_NAMESPACE);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = accounts
        .create_token_request(
            &names.kcp_service_account,
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            },
            &request,
        )
        .await
        .map_err(|error| {
            Error::TokenRequestFailed(format!(
                "requesting a token for ServiceAccount {KCP_NAMESPACE}/{} in kcp: {error}",
                names.kcp_service_account
            ))
        })?;
    let status = response.status.ok_or_else(|| {
        Error::TokenRequestFailed("kcp answered the TokenRequest without a token".into())
    })?;
    match (status.token, status.expiration_timestamp) {
        (Some(token), Some(expires)) if !token.is_empty() => Ok(MintedToken {
            token,
            expires: expires.0,
        }),
        _ => Err(Error::TokenRequestFailed(
            "kcp answered the TokenRequest without a token or its expiry".into(),
        )),
    }
}

/// The Secret data and annotations for a new token minted at `issued`.
pub fn secret_contents(
    kubeconfig: &str,
    token: &MintedToken,
    issued: Timestamp,
    account_uid: &str,
) -> (BTreeMap<String, ByteString>, BTreeMap<String, String>) {
    (
        BTreeMap::from([
            (
                KUBECONFIG_KEY.into(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            ),
            (
                TOKEN_KEY.into(),
                ByteString(token.token.as_bytes().to_vec()),
            ),
        ]),
        BTreeMap::from([
            (ISSUED_ANNOTATION.into(), issued.to_string()),
            (EXPIRES_ANNOTATION.into(), token.expires.to_string()),
            (ACCOUNT_UID_ANNOTATION.into(), account_uid.into()),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    const OPERATOR: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: base
  cluster: {server: "https://kcp.example.com:6443", certificate-authority-data: Q0E=}
- name: root
  cluster: {server: "https://kcp.example.com:6443/clusters/root", certificate-authority-data: Q0E=}
contexts:
- name: root
  context: {cluster: root, user: admin}
current-context: root
users:
- name: admin
  user: {token: secret-admin-token}
"#;

    #[test]
    fn the_agent_kubeconfig_keeps_the_ca_and_reads_its_token_from_a_file() {
        let operator = Kubeconfig::from_yaml(OPERATOR).unwrap();
        let text = agent_kubeconfig(
            &operator,
            "https://kcp.example.com:6443/clusters/root:p",
            minted_user(),
        )
        .unwrap();
        assert!(!text.contains("secret-admin-token"));
        let agent = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = agent.clusters[0].cluster.clone().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://kcp.example.com:6443/clusters/root:p")
        );
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        let user = agent.auth_infos[0].auth_info.clone().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("token"));
        assert!(user.token.is_none());
    }

    #[test]
    fn brought_credentials_are_pointed_at_the_provider_workspace_as_they_are() {
        let brought = Kubeconfig::from_yaml(OPERATOR).unwrap();
        let user = current_user(&brought).unwrap();
        let text = agent_kubeconfig(
            &brought,
            "https://kcp.example.com:6443/clusters/root:p",
            user,
        )
        .unwrap();
        let agent = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = agent.clusters[0].cluster.clone().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://kcp.example.com:6443/clusters/root:p")
        );
        let user = agent.auth_infos[0].auth_info.clone().unwrap();
        assert!(user.token_file.is_none());
        assert!(text.contains("secret-admin-token"), "the user's own token");

        let mut nameless = brought.clone();
        nameless.auth_infos.clear();
        assert!(matches!(
            current_user(&nameless),
            Err(Error::InvalidKcpKubeconfig(message)) if message.contains("no user \"admin\"")
        ));
    }

    #[test]
    fn only_kubeconfigs_with_inline_credentials_are_accepted() {
        assert_eq!(
            self_contained(&Kubeconfig::from_yaml(OPERATOR).unwrap()),
            Ok(())
        );
        for (field, line) in [
            (
                "tokenFile",
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            ("client-key", "client-key: /etc/key.pem"),
            (
                "exec",
                "exec: {apiVersion: client.authentication.k8s.io/v1, command: sh}",
            ),
        ] {
            let kubeconfig = OPERATOR.replace(
                "user: {token: secret-admin-token}",
                &format!("user:\n    {line}"),
            );
            let why = self_contained(&Kubeconfig::from_yaml(&kubeconfig).unwrap()).unwrap_err();
            assert!(why.contains(field), "{field}: {why}");
        }
        let ca_file = OPERATOR.replace(
            "cluster: {server: \"https://kcp.example.com:6443\", certificate-authority-data: Q0E=}",
            "cluster: {server: \"https://kcp.example.com:6443\", certificate-authority: /etc/ca.pem}",
        );
        let why = self_contained(&Kubeconfig::from_yaml(&ca_file).unwrap()).unwrap_err();
        assert!(why.contains("CA file"), "{why}");
    }

    #[test]
    fn the_base_url_drops_the_workspace() {
        assert_eq!(
            base_url("https://k:6443/clusters/root:a/"),
            "https://k:6443"
        );
        assert_eq!(base_url("https://k:6443"), "https://k:6443");
    }

    /// The Secret of a token with a lifetime of one hour.
    fn secret(kubeconfig: &str, uid: &str, expires: &str) -> Secret {
        let expires: Timestamp = expires.parse().unwrap();
        let (data, annotations) = secret_contents(
            kubeconfig,
            &MintedToken {
                token: "t".into(),
                expires,
            },
            expires - SignedDuration::from_hours(1),
            uid,
        );
        Secret {
            metadata: ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_shorter_than_asked_for_is_renewed_halfway_through_its_life() {
        let issued: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let expires: Timestamp = "2026-01-01T10:10:00Z".parse().unwrap();
        let asked = |renew_before| Rotation {
            lifetime: Duration::from_secs(3600),
            renew_before: Duration::from_secs(renew_before),
        };
        assert_eq!(
            renew_at(issued, expires, asked(1200)),
            "2026-01-01T10:05:00Z".parse().unwrap()
        );
        assert_eq!(
            renew_at(issued, expires, asked(60)),
            "2026-01-01T10:09:00Z".parse().unwrap()
        );
        // Granted as asked: renew_before holds, however close to the expiry.
        let as_asked = Rotation {
            lifetime: Duration::from_secs(600),
            renew_before: Duration::from_secs(590),
        };
        assert_eq!(
            renew_at(issued, expires, as_asked),
            "2026-01-01T10:00:10Z".parse().unwrap()
        );
    }

    #[test]
    fn tokens_are_renewed_ahead_of_expiry_or_when_their_inputs_change() {
        let rotation = Rotation {
            lifetime: Duration::from_secs(3600),
            renew_before: Duration::from_secs(1200),
        };
        let now: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let fresh = secret("cfg", "uid-1", "2026-01-01T11:00:00Z");
        assert_eq!(
            renewal_time(Some(&fresh), "cfg", "uid-1", rotation, now).map(|s| s.renew_at),
            Some("2026-01-01T10:40:00Z".parse().unwrap())
        );
        let due = secret("cfg", "uid-1", "2026-01-01T10:15:00Z");
        assert_eq!(
            renewal_time(Some(&due), "cfg", "uid-1", rotation, now),
            None
        );
        assert_eq!(
            renewal_time(Some(&fresh), "other", "uid-1", rotation, now),
            None
        );
        assert_eq!(
            renewal_time(Some(&fresh), "cfg", "uid-2", rotation, now),
            None
        );
        assert_eq!(renewal_time(None, "cfg", "uid-1", rotation, now), None);
    }
}
