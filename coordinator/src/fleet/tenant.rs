//! Agents enrolled with a tenant token: what the `compile` scope grants (issue 17).
//!
//! A person's workstation or a CI runner joins as an agent with a tenant token of scope
//! `compile` (`discomy-compilerd join --join-token dsc_…`) in place of an operator's join token,
//! and is approved at once, for the agent role only: the way Kubernetes approves kubelet client
//! certificates for a bootstrap token without an operator. Workers and builders, which serve
//! other people's units and packages, always wait for an operator.
//!
//! The token stays the agent's warrant: its renewals are refused once the token is revoked or
//! has expired (the agent is revoked then), and revoking the token (`discomy tokens revoke`)
//! revokes every agent it enrolled at once, closing their connections.
//!
//! The tokens live in the build queue's database (`crate::ops`): the fleet asks through the
//! [`Tenants`] the coordinator installs, so this module does not depend on `ops`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use discomy_protocol::fleet::{FleetRole, JoinRequest, JoinState};
use discomy_protocol::tls::pki;
use tracing::info;

use super::state::NodeState;
use super::{Fleet, now, record_request};

/// Most approved agents one tenant token may have enrolled at once (a leaked token cannot
/// fill the fleet's records).
pub const MAX_AGENTS_PER_TOKEN: usize = 256;

/// A live tenant token, as the keeper of tokens found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Whether it carries the `compile` scope.
    pub compile: bool,
}

/// What the fleet asks the keeper of tokens.
#[derive(Debug, Clone)]
pub enum TenantAsk {
    /// Whose is this token's text (`dsc_ID_SECRET`), and is it live?
    Token(String),
    /// Is token `id` still live (neither revoked nor expired)?
    Live(u64),
}

/// Why the keeper of tenant tokens gave no [`Tenant`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoTenant {
    /// The token is unknown, revoked or expired.
    #[error("{0}")]
    Refused(String),
    /// The keeper could not tell (its database failed): nothing is decided on it.
    #[error("the tenant tokens cannot be read now: {0}")]
    Unavailable(String),
}

/// The keeper of tenant tokens: a live token's [`Tenant`], or why not.
pub type Tenants = Arc<
    dyn Fn(TenantAsk) -> Pin<Box<dyn Future<Output = Result<Tenant, NoTenant>> + Send>>
        + Send
        + Sync,
>;

impl Fleet {
    /// Installs the keeper of tenant tokens (once; the build queue, when the coordinator has
    /// one). Without one, tenant tokens enrol nothing.
    pub fn set_tenants(&self, tenants: Tenants) {
        if self.tenants.set(tenants).is_err() {
            tracing::warn!("the fleet's tenant tokens were set twice; the first stays");
        }
    }

    /// Asks the keeper of tenant tokens.
    pub async fn tenant(&self, ask: TenantAsk) -> Result<Tenant, NoTenant> {
        match self.tenants.get() {
            Some(tenants) => tenants(ask).await,
            None => Err(NoTenant::Refused(
                "this coordinator keeps no tenant tokens (it runs no build queue: api_listen); \
                 join with a join token from discomy nodes token"
                    .into(),
            )),
        }
    }

    /// A host joins as an agent with `tenant`'s token: approved at once when the token carries
    /// the `compile` scope and the request asks for the agent role only. The joiner's next
    /// poll gets the certificate.
    pub fn enrol(
        &self,
        req: JoinRequest,
        from: SocketAddr,
        tenant: &Tenant,
    ) -> Result<JoinState, String> {
        self.enrol_within(req, from, tenant, MAX_AGENTS_PER_TOKEN)
    }

    /// [`Fleet::enrol`], with at most `limit` agents of the token approved at once.
    pub(crate) fn enrol_within(
        &self,
        req: JoinRequest,
        from: SocketAddr,
        tenant: &Tenant,
        limit: usize,
    ) -> Result<JoinState, String> {
        req.check()?;
        pki::check_request(&req.csr_pem).map_err(|e| e.to_string())?;
        if !tenant.compile {
            return Err(format!("tenant token {} lacks the compile scope", tenant.id));
        }
        if req.roles != [FleetRole::Agent] {
            return Err("a tenant token enrols agents only (--roles agent); workers and \
                        builders wait for an operator (a join token from discomy nodes token)"
                .into());
        }
        let mut state = self.state();
        let enrolled = state
            .nodes
            .iter()
            .filter(|n| n.tenant == Some(tenant.id) && n.state() == NodeState::Approved)
            .count();
        if enrolled >= limit {
            return Err(format!(
                "tenant token {} has enrolled {limit} agents already: revoke some \
                 (discomy nodes revoke NAME) or use another token",
                tenant.id
            ));
        }
        let request = record_request(&mut state, req, from, now())?;
        let entry = state.entry(request)?;
        self.approve_entry(entry)?;
        entry.tenant = Some(tenant.id);
        entry.record.enrolled_by = Some(format!("token {} ({})", tenant.id, tenant.name));
        info!(request, name = %entry.record.name, token = tenant.id, %from, "agent enrolled by a tenant token");
        self.save(&state)?;
        Ok(JoinState::Pending { request })
    }

    /// The tenant token that enrolled the approved node `name`, if a token did.
    pub fn enrolled_by(&self, name: &str) -> Option<u64> {
        let state = self.state();
        state
            .nodes
            .iter()
            .find(|n| n.record.name == name && n.state() == NodeState::Approved)
            .and_then(|n| n.tenant)
    }

    /// Revokes every approved agent tenant token `token` enrolled (the token was revoked or
    /// expired); how many.
    pub fn revoke_enrolled_by(&self, token: u64, why: &str) -> Result<usize, String> {
        let mut state = self.state();
        let mut revoked = 0;
        for entry in state.nodes.iter_mut() {
            if entry.tenant == Some(token) && entry.state() == NodeState::Approved {
                self.revoke_entry(entry, why);
                revoked += 1;
            }
        }
        if revoked > 0 {
            self.save(&state)?;
        }
        Ok(revoked)
    }
}
