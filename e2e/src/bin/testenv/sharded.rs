//! kcp as it is deployed at scale (`testenv --sharded`): kcp's cache server,
//! a root shard, a second shard `shard-1` and the front proxy, all built from
//! the kcp module the project pins and all on loopback.
//!
//! How they are wired, as kcp's own sharded test server does it:
//! - One serving CA signs one serving certificate (SANs `localhost` and
//!   `127.0.0.1`) that every process presents, so one CA in a kubeconfig
//!   reaches the proxy and each shard's virtual workspaces alike. Files hold
//!   the certificate and then the CA, the chain that rustls clients need.
//! - Bearer tokens pass through the proxy untouched (it has no token
//!   authentication of its own), so every shard reads the same static
//!   `tokens.csv`: the admin (`system:kcp:admin`), the servers' plumbing
//!   (`system:masters`) and `e2e-agent` work through the proxy and directly
//!   on either shard's virtual workspace URLs.
//! - Both shards share a service-account key, the cache server, the root
//!   shard's kubeconfig (for shard-1 to register its `Shard` object) and
//!   kubeconfigs of the root shard and of the proxy for placing logical
//!   clusters and publishing endpoint URLs across shards.
//! - The proxy routes `/clusters/<name>` to the shard that holds it, with a
//!   client certificate of its own CA (one no shard trusts as a client CA,
//!   so the tokens it forwards decide who the caller is).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use e2e::env::random_hex;

use crate::servers::{
    Started, ec_key, free_ports, get, ready, record, run_quietly, spawn, wait_until_ready,
};

/// The second shard's name; `root` is the first's.
pub const SECOND_SHARD: &str = "shard-1";

/// The running sharded kcp.
#[derive(Debug)]
pub struct Kcp {
    /// Admin kubeconfig through the front proxy: contexts `base` and `root`.
    pub kubeconfig: PathBuf,
    /// The shards, root first.
    pub shards: Vec<String>,
}

/// Certificates and keys, under `<dir>/kcp/pki`.
struct Pki {
    ca: PathBuf,
    serving_chain: PathBuf,
    serving_key: PathBuf,
    proxy_client: PathBuf,
    proxy_client_key: PathBuf,
    service_account_key: PathBuf,
}

/// Starts the cache server, then both shards and the proxy, and returns once
/// the proxy routes to both shards.
pub async fn start(
    dir: &Path,
    binary: &impl Fn(&str) -> anyhow::Result<PathBuf>,
    started: &mut Vec<Started>,
    agent_token: &str,
) -> anyhow::Result<Kcp> {
    let kcp_dir = dir.join("kcp");
    let log_dir = dir.join("logs");
    for sub in ["pki", "cache", "root", SECOND_SHARD, "front-proxy"] {
        fs::create_dir_all(kcp_dir.join(sub))?;
    }
    let [
        cache,
        cache_etcd_client,
        cache_etcd_peer,
        root,
        root_etcd_client,
        root_etcd_peer,
        second,
        second_etcd_client,
        second_etcd_peer,
        proxy,
    ] = free_ports::<10>()?;
    let pki = make_pki(&kcp_dir.join("pki"))?;

    // The admin is kcp's kind of admin (`system:kcp:admin`, as kcp's own
    // admin kubeconfig has it): kcp records who created a workspace, and
    // initializes it as that user, for anyone but `system:masters`. The
    // servers' own plumbing is `system:masters`.
    let (admin_token, plumbing_token) = (random_hex(16)?, random_hex(16)?);
    let tokens = kcp_dir.join("tokens.csv");
    fs::write(
        &tokens,
        format!(
            "{admin_token},e2e-admin,e2e-admin,\"system:kcp:admin\"\n\
             {plumbing_token},e2e-shard-admin,e2e-shard-admin,\"system:masters\"\n\
             {agent_token},e2e-agent,e2e-agent\n"
        ),
    )?;
    let url = |port: u16| format!("https://127.0.0.1:{port}");
    let kubeconfig = |name: &str, contexts: &[(&str, String)], token: Option<&str>| {
        let path = kcp_dir.join(format!("{name}.kubeconfig"));
        write_kubeconfig(&path, contexts, &pki.ca, token).map(|()| path)
    };
    let cache_kubeconfig = kubeconfig("cache", &[("cache", url(cache))], None)?;
    // kcp reads the root shard's kubeconfig from the context `shard-base`.
    let root_kubeconfig = kubeconfig("root", &[("shard-base", url(root))], Some(&plumbing_token))?;
    let second_kubeconfig = kubeconfig(
        SECOND_SHARD,
        &[("shard-base", url(second))],
        Some(&plumbing_token),
    )?;
    let external_kubeconfig = kubeconfig(
        "external",
        &[("shard-base", url(proxy))],
        Some(&plumbing_token),
    )?;
    let admin_kubeconfig = kubeconfig(
        "admin",
        &[
            ("root", format!("{}/clusters/root", url(proxy))),
            ("base", url(proxy)),
        ],
        Some(&admin_token),
    )?;

    let tls = [
        format!("--tls-cert-file={}", pki.serving_chain.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
    ];
    record(
        dir,
        started,
        spawn(
            "cache-server",
            &binary("cache-server")?,
            &[
                format!("--root-directory={}", kcp_dir.join("cache").display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={cache}"),
                format!("--embedded-etcd-client-port={cache_etcd_client}"),
                format!("--embedded-etcd-peer-port={cache_etcd_peer}"),
                "--embedded-etcd-wal-size-bytes=5000".into(),
                tls[0].clone(),
                tls[1].clone(),
            ],
            &log_dir,
        )?,
    )?;
    wait_until_ready(started, &log_dir, async || {
        ready(&cache_kubeconfig, None).await
    })
    .await
    .context("kcp's cache server did not become ready")?;

    let shard_args = |name: &str, port: u16, etcd: (u16, u16)| -> Vec<String> {
        let mut args = vec![
            "start".into(),
            format!("--root-directory={}", kcp_dir.join(name).display()),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--embedded-etcd-client-port={}", etcd.0),
            format!("--embedded-etcd-peer-port={}", etcd.1),
            "--embedded-etcd-wal-size-bytes=5000".into(),
            format!("--token-auth-file={}", tokens.display()),
            format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ),
            format!("--cache-kubeconfig={}", cache_kubeconfig.display()),
            format!("--shard-external-url={}", url(proxy)),
            format!(
                "--logical-cluster-admin-kubeconfig={}",
                root_kubeconfig.display()
            ),
            format!(
                "--external-logical-cluster-admin-kubeconfig={}",
                external_kubeconfig.display()
            ),
            tls[0].clone(),
            tls[1].clone(),
        ];
        if name != "root" {
            args.push(format!("--shard-name={name}"));
            args.push(format!(
                "--root-shard-kubeconfig-file={}",
                root_kubeconfig.display()
            ));
        }
        args
    };
    let kcp = binary("kcp")?;
    record(
        dir,
        started,
        spawn(
            "kcp-root",
            &kcp,
            &shard_args("root", root, (root_etcd_client, root_etcd_peer)),
            &log_dir,
        )?,
    )?;
    record(
        dir,
        started,
        spawn(
            &format!("kcp-{SECOND_SHARD}"),
            &kcp,
            &shard_args(SECOND_SHARD, second, (second_etcd_client, second_etcd_peer)),
            &log_dir,
        )?,
    )?;

    let proxy_dir = kcp_dir.join("front-proxy");
    let mapping = proxy_dir.join("mapping.yaml");
    fs::write(
        &mapping,
        serde_saphyr::to_string(&serde_json::json!([{
            "path": "/clusters/",
            "backend": url(root),
            "backend_server_ca": pki.ca,
            "proxy_client_cert": pki.proxy_client,
            "proxy_client_key": pki.proxy_client_key,
        }]))?,
    )?;
    record(
        dir,
        started,
        spawn(
            "kcp-front-proxy",
            &binary("kcp-front-proxy")?,
            &[
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={proxy}"),
                format!("--root-directory={}", proxy_dir.display()),
                format!("--mapping-file={}", mapping.display()),
                format!("--root-kubeconfig={}", root_kubeconfig.display()),
                format!("--shards-kubeconfig={}", root_kubeconfig.display()),
                tls[0].clone(),
                tls[1].clone(),
            ],
            &log_dir,
        )?,
    )?;

    let shards = vec!["root".to_string(), SECOND_SHARD.to_string()];
    for (name, kubeconfig) in [
        ("root", &root_kubeconfig),
        (SECOND_SHARD, &second_kubeconfig),
    ] {
        wait_until_ready(started, &log_dir, async || ready(kubeconfig, None).await)
            .await
            .with_context(|| format!("kcp shard {name} did not become ready"))?;
    }
    // The proxy answers once it resolved its identities; it routes once its
    // index knows both shards.
    wait_until_ready(started, &log_dir, async || {
        let listed = get(
            &admin_kubeconfig,
            Some("root"),
            "/apis/core.kcp.io/v1alpha1/shards",
        )
        .await?;
        let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed)
            .map_err(|e| e.to_string())?["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        match shards.iter().find(|s| !names.contains(s)) {
            Some(missing) => Err(format!("shard {missing} is not registered yet")),
            None => Ok(()),
        }
    })
    .await
    .context("kcp's front proxy did not route to both shards")?;
    Ok(Kcp {
        kubeconfig: admin_kubeconfig,
        shards,
    })
}

/// The CA, the serving certificate every process presents, the proxy's
/// client certificate (from a CA of its own) and the shards' shared
/// service-account key, made with openssl.
fn make_pki(dir: &Path) -> anyhow::Result<Pki> {
    let path = |name: &str| dir.join(name);
    let key = |name: &str| -> anyhow::Result<PathBuf> {
        let key = path(name);
        ec_key(&key)?;
        Ok(key)
    };
    let ca = |name: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
        let (key, cert) = (key(&format!("{name}.key"))?, path(&format!("{name}.crt")));
        run_quietly(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-days", "30", "-key"])
                .arg(&key)
                .args(["-subj", &format!("/CN=e2e-{name}"), "-out"])
                .arg(&cert)
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        )?;
        Ok((key, cert))
    };
    let leaf = |name: &str, signer: &(PathBuf, PathBuf), extensions: &str| {
        let (key, csr, cert, ext) = (
            key(&format!("{name}.key"))?,
            path(&format!("{name}.csr")),
            path(&format!("{name}.crt")),
            path(&format!("{name}.ext")),
        );
        fs::write(&ext, extensions)?;
        run_quietly(
            Command::new("openssl")
                .args(["req", "-new", "-key"])
                .arg(&key)
                .args(["-subj", &format!("/CN={name}"), "-out"])
                .arg(&csr),
        )?;
        run_quietly(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "30", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&signer.1)
                .arg("-CAkey")
                .arg(&signer.0)
                .args(["-CAcreateserial", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        )?;
        anyhow::Ok((key, cert))
    };

    let serving_ca = ca("serving-ca")?;
    let (serving_key, serving) = leaf(
        "serving",
        &serving_ca,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let serving_chain = path("serving-chain.crt");
    fs::write(
        &serving_chain,
        [fs::read(&serving)?, fs::read(&serving_ca.1)?].concat(),
    )?;
    let proxy_ca = ca("front-proxy-client-ca")?;
    let (proxy_client_key, proxy_client) = leaf(
        "kcp-front-proxy",
        &proxy_ca,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )?;
    Ok(Pki {
        ca: serving_ca.1,
        serving_chain,
        serving_key,
        proxy_client,
        proxy_client_key,
        service_account_key: key("service-account.key")?,
    })
}

/// A kubeconfig with one cluster and context per `(name, server)`, the first
/// one current, trusting the CA in file `ca` and sending `token` if given.
fn write_kubeconfig(
    path: &Path,
    contexts: &[(&str, String)],
    ca: &Path,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let user = match token {
        Some(token) => serde_json::json!({"token": token}),
        None => serde_json::json!({}),
    };
    // The CA inline: the kubeconfig also goes into Secrets (an offering's).
    let ca = k8s_openapi::ByteString(fs::read(ca)?);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": contexts.iter().map(|(name, server)| serde_json::json!({
            "name": name,
            "cluster": {"server": server, "certificate-authority-data": ca},
        })).collect::<Vec<_>>(),
        "users": [{"name": "e2e-admin", "user": user}],
        "contexts": contexts.iter().map(|(name, _)| serde_json::json!({
            "name": name,
            "context": {"cluster": name, "user": "e2e-admin"},
        })).collect::<Vec<_>>(),
        "current-context": contexts.first().map(|(name, _)| *name),
    });
    fs::write(path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(())
}
