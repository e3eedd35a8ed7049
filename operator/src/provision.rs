//! The reconcile of one offering as a pipeline, one module per stage:
//! [`validate`](crate::validate) the spec (pure) → [`fetch`](crate::fetch)
//! what exists (IO) → check its [`ownership`](crate::validate::ownership)
//! (pure) → [`build`](crate::build) every object (pure) →
//! [`apply`](crate::apply) them (IO) → [`report`](crate::status::report)
//! the verdicts (pure). Nothing is written before every check passed.

use std::time::Duration;

use kube::Client;

use crate::api::{ExportStatus, PublishedOffering};
use crate::apply::{Applied, Keep, Token, apply};
use crate::build::{AgentDefaults, build};
use crate::confirmed::ConfirmedBindings;
use crate::consumers::ConsumerReport;
use crate::credentials::{Rotation, SecretLocation};
use crate::error::Error;
use crate::fetch::{self, fetch};
use crate::kcp::Kcp;
use crate::status::{self, Report, Verdict};
use crate::validate::{Validated, ownership, validate};

/// Operator-wide settings the pipeline needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The kcp kubeconfig Secret of offerings that name none.
    pub default_kcp_secret: Option<SecretLocation>,
    /// Image of agents whose offering names none.
    pub agent_image: String,
    /// kcp URL written into agents' kubeconfigs, when agents reach kcp by
    /// another address than the operator.
    pub agent_kcp_url: Option<String>,
    /// Lifetime and renewal of agent tokens.
    pub rotation: Rotation,
    /// How often a Ready offering is looked at again (export claims the
    /// agent added, drift in kcp, consumer workspaces a watch missed).
    pub resync: Duration,
}

/// What an apply found, for the status.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// Facts about the export.
    pub export: ExportStatus,
    /// Each part's verdict.
    pub parts: Vec<(&'static str, Verdict)>,
    /// Consumer workspaces.
    pub consumers: ConsumerReport,
    /// The agent's minted token; `None` when the provider brings the
    /// agent's credentials.
    pub token: Option<Token>,
    /// The operator's access to kcp with the offering's credentials.
    pub kcp: Kcp,
    /// The agent pod holding the agent's Lease.
    pub agent_leader: Option<String>,
}

/// Runs the whole pipeline for `offering`; `tokens_issued` counts the agent
/// tokens it mints, also in a run that fails afterwards.
pub async fn provision(
    client: &Client,
    offering: &PublishedOffering,
    settings: &Settings,
    tokens_issued: &prometheus::IntCounter,
    confirmed: &ConfirmedBindings,
) -> Result<Provisioned, Error> {
    let Validated {
        names,
        kcp_secret,
        agent_secret,
    } = validate(offering, settings.default_kcp_secret.as_ref())?;
    let fetched = fetch(client, offering, &names, &kcp_secret, agent_secret.as_ref()).await?;
    ownership(&fetched.facts, &names, &offering.spec.kcp.workspace)?;
    let defaults = AgentDefaults {
        image: &settings.agent_image,
        kcp_url: settings.agent_kcp_url.as_deref(),
    };
    let desired = build(offering, &names, &fetched.facts, &fetched.kcp, defaults)?;
    let applied = apply(
        client,
        &fetched,
        offering,
        &names,
        desired,
        Keep {
            rotation: settings.rotation,
            tokens_issued,
            confirmed,
        },
    )
    .await?;
    let Report { parts, export } = status::report(offering, &names, &fetched.facts, &applied);
    let agent_leader = fetch::agent_leader(client, &names).await;
    let Applied {
        token, consumers, ..
    } = applied;
    Ok(Provisioned {
        export,
        parts,
        consumers,
        token,
        kcp: fetched.kcp.clone(),
        agent_leader,
    })
}
