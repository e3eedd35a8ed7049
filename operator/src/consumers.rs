//! Consumer workspaces: which ones the offering binds (listed, and selected
//! among a parent's children), their APIBindings, and their removal.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use sync_agent::api::kcp::apis_v1alpha2::{APIBinding, APIExport};
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;

use crate::api::{DeletionPolicy, PublishedOffering};
use crate::confirmed::{ConfirmedBindings, digest};
use crate::desired::consumer::binding;
use crate::error::{Error, is_not_found};
use crate::kcp::Kcp;
use crate::names::Names;
use crate::write::{apply, delete_if_present, is_ours};

/// Consumer workspaces whose bindings are read and applied at the same time.
const BIND_CONCURRENCY: usize = 8;

/// What happened in the consumer workspaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    /// Workspaces with a bound binding.
    pub bound: Vec<String>,
    /// Workspaces whose binding is not bound yet.
    pub pending: Vec<String>,
    /// Workspaces that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Workspaces holding a binding this offering created.
    pub managed: Vec<String>,
}

/// The consumer workspaces the spec asks for.
#[derive(Debug, Default)]
pub struct Desired {
    /// Workspaces to bind: the listed ones and the Ready selected ones.
    pub paths: BTreeSet<String>,
    /// Selected workspaces that are not Ready (yet, or for a while): not
    /// bound now, and not unbound either.
    pub waiting: BTreeSet<String>,
    /// Selectors that could not be evaluated, with why.
    pub failed: Vec<(String, String)>,
}

impl Desired {
    /// Whether a workspace that holds this offering's binding has left the
    /// spec. Never while a selector could not be evaluated: a passing kcp
    /// error must not look like an empty selection, since unbinding deletes
    /// the consumer's objects.
    fn dropped(&self, path: &str) -> bool {
        self.failed.is_empty() && !self.paths.contains(path) && !self.waiting.contains(path)
    }
}

/// The consumer workspaces the spec asks for.
pub async fn desired(kcp: &Kcp, offering: &PublishedOffering) -> Desired {
    let mut desired = Desired::default();
    let Some(consumers) = &offering.spec.consumers else {
        return desired;
    };
    desired.paths.extend(consumers.workspaces.iter().cloned());
    if let Some(selector) = &consumers.selector {
        match children(kcp, &selector.parent, selector.label_selector.clone()).await {
            Ok(children) => {
                for (path, ready) in children {
                    if ready {
                        desired.paths.insert(path);
                    } else {
                        desired.waiting.insert(path);
                    }
                }
            }
            Err(error) => desired
                .failed
                .push((selector.parent.clone(), error.to_string())),
        }
    }
    desired
}

/// Child workspaces of `parent` matching `selector`, each with whether it
/// is Ready.
async fn children(
    kcp: &Kcp,
    parent: &str,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Vec<(String, bool)>, Error> {
    let client = kcp.client(parent)?;
    let workspaces: Api<Workspace> = Api::all(client);
    let mut params = ListParams::default();
    if let Some(selector) = selector {
        let selector = kube::core::Selector::try_from(selector).map_err(|error| {
            Error::InvalidSpec(format!("spec.consumers.selector.labelSelector: {error}"))
        })?;
        params = params.labels_from(&selector);
    }
    let list = workspaces.list(&params).await.map_err(|error| match &error {
        kube::Error::Api(status) if status.code == 403 || status.code == 404 => Error::WorkspaceNotFound(format!(
            "parent workspace {parent} does not exist or the operator may not list its workspaces"
        )),
        _ => Error::kcp(&format!("listing the workspaces of {parent}"), error),
    })?;
    Ok(list
        .items
        .iter()
        .map(|ws| {
            let ready = ws.status.as_ref().is_some_and(|s| s.phase == "Ready");
            (format!("{parent}:{}", ws.name_any()), ready)
        })
        .collect())
}

/// Binds every desired consumer workspace and reports how each stands; a
/// binding `confirmed` bound lately is counted bound without asking kcp.
/// Workspaces no longer desired lose their binding only under
/// `deletionPolicy: Delete`; otherwise the binding stays, unmanaged. A
/// workspace whose binding could not be applied this time stays managed if
/// it was before, so it is still unbound when it leaves the spec.
pub async fn reconcile(
    kcp: &Kcp,
    offering: &PublishedOffering,
    names: &Names,
    export: &APIExport,
    confirmed: &ConfirmedBindings,
) -> ConsumerReport {
    let wanted = desired(kcp, offering).await;
    let previously: Vec<String> = offering
        .status
        .as_ref()
        .and_then(|s| s.consumers.as_ref())
        .map(|c| c.workspaces.clone())
        .unwrap_or_default();
    let mut report = ConsumerReport {
        failed: wanted.failed.clone(),
        ..Default::default()
    };
    let claims = export.spec.permission_claims.clone();
    let accepted = offering
        .spec
        .consumers
        .as_ref()
        .and_then(|c| c.accepted_claims.clone());
    let desired = binding(
        names,
        &offering.spec.kcp.workspace,
        &claims,
        accepted.as_deref(),
    );
    let (uid, digest) = (offering.uid().unwrap_or_default(), digest(&desired));
    // Workspaces seen bound lately cost nothing; the others are asked a few
    // at a time, in order.
    let binding = Binding {
        kcp,
        names,
        desired: &desired,
        confirmed,
        offering: &uid,
        digest: &digest,
    };
    let results: Vec<(String, Result<Option<bool>, Error>)> =
        futures::stream::iter(wanted.paths.iter().cloned())
            .map(|path| binding.bind(path))
            .buffered(BIND_CONCURRENCY)
            .collect()
            .await;
    for (path, result) in results {
        match result {
            Ok(Some(true)) => {
                report.bound.push(path.clone());
                report.managed.push(path.clone());
            }
            Ok(Some(false)) => {
                report.pending.push(path.clone());
                report.managed.push(path.clone());
            }
            Ok(None) => report.failed.push((
                path.clone(),
                format!(
                    "an APIBinding named {} exists and was not created by this offering; delete or rename it",
                    names.export
                ),
            )),
            Err(error) => {
                report.failed.push((path.clone(), error.to_string()));
                if previously.contains(&path) {
                    report.managed.push(path);
                }
            }
        }
    }
    for path in previously.iter().filter(|p| !wanted.paths.contains(*p)) {
        confirmed.forget_path(&uid, path);
        if !wanted.dropped(path) {
            // Perhaps still wanted: not Ready, or its selector failed.
            report.managed.push(path.clone());
        } else if offering.spec.deletion_policy == DeletionPolicy::Delete {
            match unbind(kcp, path, names).await {
                Ok(true) => {}
                Ok(false) => report.managed.push(path.clone()),
                Err(error) => {
                    report.failed.push((path.clone(), error.to_string()));
                    report.managed.push(path.clone());
                }
            }
        }
        // Under Retain a dropped workspace keeps its binding, unmanaged.
    }
    report
}

/// What binding one workspace takes, for one reconcile.
struct Binding<'a> {
    kcp: &'a Kcp,
    names: &'a Names,
    desired: &'a serde_json::Value,
    confirmed: &'a ConfirmedBindings,
    offering: &'a str,
    digest: &'a str,
}

impl Binding<'_> {
    /// [`bind`], unless the binding in `path` was confirmed bound lately.
    async fn bind(&self, path: String) -> (String, Result<Option<bool>, Error>) {
        let now = Instant::now();
        if self
            .confirmed
            .is_fresh(self.offering, self.digest, &path, now)
        {
            return (path, Ok(Some(true)));
        }
        let result = bind(self.kcp, &path, self.names, self.desired).await;
        match result {
            Ok(Some(true)) => self
                .confirmed
                .confirm(self.offering, self.digest, &path, now),
            _ => self.confirmed.forget_path(self.offering, &path),
        }
        (path, result)
    }
}

/// Applies the binding in `path`: `Some(bound)` when it is this offering's,
/// `None` when a foreign binding holds the name.
async fn bind(
    kcp: &Kcp,
    path: &str,
    names: &Names,
    desired: &serde_json::Value,
) -> Result<Option<bool>, Error> {
    let client = kcp.client(path)?;
    let bindings: Api<APIBinding> = Api::all(client);
    let existing = bindings
        .get_opt(&names.export)
        .await
        .map_err(|error| access_error(path, error))?;
    if let Some(existing) = &existing
        && !is_ours(existing, names)
    {
        return Ok(None);
    }
    let applied = apply(&bindings, &names.export, desired)
        .await
        .map_err(|error| {
            Error::kcp(
                &format!("applying APIBinding {} in {path}", names.export),
                error,
            )
        })?;
    let bound = applied.status.as_ref().is_some_and(|s| {
        s.phase == "Bound"
            && !s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
    });
    Ok(Some(bound))
}

fn access_error(path: &str, error: kube::Error) -> Error {
    match &error {
        kube::Error::Api(status) if status.code == 403 => Error::WorkspaceNotFound(format!(
            "workspace {path} does not exist or the operator may not enter it"
        )),
        _ => Error::kcp(&format!("reading APIBindings in {path}"), error),
    }
}

/// Deletes this offering's binding in `path`; `Ok(true)` once it is gone.
pub async fn unbind(kcp: &Kcp, path: &str, names: &Names) -> Result<bool, Error> {
    let client = kcp.client(path)?;
    let bindings: Api<APIBinding> = Api::all(client);
    let existing = match bindings.get_opt(&names.export).await {
        Ok(existing) => existing,
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
            return Ok(true);
        }
        Err(error) => return Err(Error::kcp(&format!("reading APIBinding in {path}"), error)),
    };
    let Some(existing) = existing else {
        return Ok(true);
    };
    if !is_ours(&existing, names) {
        return Ok(true);
    }
    if existing.metadata.deletion_timestamp.is_none() {
        delete_if_present(&bindings, &names.export)
            .await
            .map_err(|error| {
                Error::kcp(
                    &format!("deleting APIBinding {} in {path}", names.export),
                    error,
                )
            })?;
    }
    match bindings.get_opt(&names.export).await {
        Ok(remaining) => Ok(remaining.is_none()),
        Err(error) if is_not_found(&error) => Ok(true),
        Err(error) => Err(Error::kcp(&format!("reading APIBinding in {path}"), error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| (*p).to_string()).collect()
    }

    #[test]
    fn only_a_workspace_that_left_a_fully_evaluated_spec_is_dropped() {
        let desired = Desired {
            paths: set(&["root:listed", "root:team:ready"]),
            waiting: set(&["root:team:initializing"]),
            failed: Vec::new(),
        };
        assert!(!desired.dropped("root:listed"));
        assert!(!desired.dropped("root:team:initializing"));
        assert!(desired.dropped("root:team:gone"));
    }

    #[test]
    fn nothing_is_dropped_while_a_selector_could_not_be_evaluated() {
        let desired = Desired {
            paths: set(&["root:listed"]),
            waiting: BTreeSet::new(),
            failed: vec![("root:team".into(), "kcp did not answer".into())],
        };
        assert!(!desired.dropped("root:team:selected-before"));
    }
}
