//! `discomy nodes`: the operator's side of the working fleet, over mutual TLS with the
//! operator's admin certificate (`admin.pem` in the coordinator's fleet directory): join
//! tokens, pending requests, approval, rejection, revocation, provisioning bundles.

use std::path::PathBuf;
use std::sync::Arc;

use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::{FleetAnswer, FleetCommand, FleetRole, NodeRecord};
use discomy_protocol::tls::{ClientAuth, Transport, read_pem_file};

use super::{FleetDir, FleetError, ask, bundle};

/// `discomy nodes …`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// The coordinator, `host:port`.
    #[arg(long, env = "DISCOMY_COORDINATOR")]
    pub coordinator: String,
    /// The fleet directory holding `ca.pem` and the admin certificate (`admin.pem`,
    /// `admin.key`): the coordinator's own `--fleet-dir`, or a copy of those three files.
    #[arg(long, env = "DISCOMY_FLEET_DIR", value_name = "DIR")]
    pub fleet_dir: PathBuf,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: NodesCmd,
}

/// The operator's commands.
#[derive(Debug, clap::Subcommand)]
pub enum NodesCmd {
    /// Every join request and node: pending, approved, rejected, revoked.
    List,
    /// Approve a pending request: the node fetches its certificate on its next poll.
    Approve {
        /// The request's id (from `list`).
        request: u64,
    },
    /// Reject a pending request.
    Reject {
        /// The request's id.
        request: u64,
        /// Why, for the node's operator.
        #[arg(long, default_value = "rejected by the operator")]
        reason: String,
    },
    /// Revoke an approved node: its certificates are refused and its connections closed.
    Revoke {
        /// The node's name.
        name: String,
    },
    /// Write a provisioning bundle for a donor host: install.sh, configure.sh, the units, the
    /// farm CA and a fresh join token, plus `join.sh` that runs them.
    Bundle {
        /// The node's name.
        name: String,
        /// Where to write it (`DIR/NAME`, which must not exist).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Roles the node will ask for, comma-separated: worker, builder, agent.
        #[arg(long, default_value = "worker")]
        roles: String,
        /// The coordinator's address as the donor reaches it (default: `--coordinator`).
        #[arg(long)]
        advertise: Option<String>,
        /// The donating organisation.
        #[arg(long, default_value = "")]
        organisation: String,
        /// Who to write to about the host.
        #[arg(long, default_value = "")]
        contact: String,
        /// How many joins the bundle's token admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 7 * 86_400)]
        ttl: u64,
    },
    /// Make a join token (printed once; the coordinator keeps only its hash).
    Token {
        /// How many joins it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

impl NodesArgs {
    /// Runs the command; returns what to print.
    pub fn run(self) -> Result<String, FleetError> {
        let tls = FleetDir(self.fleet_dir.clone()).tls(ClientAuth::Required)?;
        let transport = Transport::Tls(Arc::new(tls));
        if let NodesCmd::Bundle { .. } = &self.command {
            return self.bundle(&transport);
        }
        let command = match self.command {
            NodesCmd::Bundle { .. } => unreachable!("handled above"),
            NodesCmd::List => FleetCommand::List,
            NodesCmd::Approve { request } => FleetCommand::Approve { request },
            NodesCmd::Reject { request, reason } => FleetCommand::Reject { request, reason },
            NodesCmd::Revoke { name } => FleetCommand::Revoke { name },
            NodesCmd::Token { uses, ttl } => FleetCommand::CreateToken { uses, ttl_secs: ttl },
        };
        let answer = command_answer(&transport, &self.coordinator, command)?;
        Ok(if self.json { json(&answer) } else { text(&answer) })
    }

    fn bundle(self, transport: &Transport) -> Result<String, FleetError> {
        let NodesCmd::Bundle { name, out, roles, advertise, organisation, contact, uses, ttl } =
            self.command
        else {
            unreachable!("called for bundles only")
        };
        let mut parsed = Vec::new();
        for role in roles.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match FleetRole::parse(role) {
                Some(r @ (FleetRole::Worker | FleetRole::Builder | FleetRole::Agent)) => {
                    parsed.push(r)
                }
                _ => {
                    return Err(super::bad_input(format!(
                        "role {role:?}: worker, builder or agent"
                    )));
                }
            }
        }
        let ca_pem = read_pem_file(&self.fleet_dir.join("ca.pem"), false)?;
        let command = FleetCommand::CreateToken { uses, ttl_secs: ttl };
        let FleetAnswer::Token { token, expires_at } =
            command_answer(transport, &self.coordinator, command)?
        else {
            return Err(super::bad_input("the coordinator made no token".into()));
        };
        let spec = bundle::BundleSpec {
            name,
            roles: parsed,
            coordinator: advertise.unwrap_or_else(|| self.coordinator.clone()),
            token,
            ca_pem,
            organisation,
            contact,
        };
        let dir = bundle::write(&out, &spec)?;
        Ok(if self.json {
            format!("{}\n", serde_json::json!({ "bundle": dir, "expires_at": expires_at }))
        } else {
            format!("{}\n(its join token is valid until unix time {expires_at})\n", dir.display())
        })
    }
}

/// One operator's command, one answer.
fn command_answer(
    transport: &Transport,
    coordinator: &str,
    command: FleetCommand,
) -> Result<FleetAnswer, FleetError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| FleetError::File { path: "tokio runtime".into(), err })?;
    let request = CoordRequest::Fleet(command);
    match runtime.block_on(ask(transport, coordinator, &request))? {
        CoordResponse::Fleet(answer) => Ok(answer),
        other => Err(super::unexpected(coordinator, &other)),
    }
}

fn json(answer: &FleetAnswer) -> String {
    let value = match answer {
        FleetAnswer::Nodes(nodes) => serde_json::json!({ "nodes": nodes }),
        FleetAnswer::Done { what } => serde_json::json!({ "done": what }),
        FleetAnswer::Token { token, expires_at } => {
            serde_json::json!({ "token": token, "expires_at": expires_at })
        }
    };
    format!("{value}\n")
}

fn text(answer: &FleetAnswer) -> String {
    match answer {
        FleetAnswer::Nodes(nodes) => table(nodes),
        FleetAnswer::Done { what } => format!("{what}\n"),
        FleetAnswer::Token { token, expires_at } => {
            format!("{token}\n(valid until unix time {expires_at}; shown once)\n")
        }
    }
}

fn table(nodes: &[NodeRecord]) -> String {
    let mut out = format!(
        "{:>5}  {:<24} {:<9} {:<20} {:>5} {:>8}  {:<24} {}\n",
        "ID", "NAME", "STATE", "ROLES", "CORES", "MEM GiB", "ORGANISATION", "FROM"
    );
    for n in nodes {
        let roles: Vec<&str> = n.roles.iter().map(|r| r.as_str()).collect();
        out.push_str(&format!(
            "{:>5}  {:<24} {:<9} {:<20} {:>5} {:>8.1}  {:<24} {}\n",
            n.request,
            n.name,
            n.state,
            roles.join(","),
            n.facts.cores,
            n.facts.memory_bytes as f64 / f64::from(1u32 << 30),
            n.facts.organisation,
            match &n.enrolled_by {
                Some(by) => format!("{} (enrolled by {by})", n.asked_from),
                None => n.asked_from.clone(),
            }
        ));
    }
    out
}
