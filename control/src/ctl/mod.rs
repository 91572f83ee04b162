//! `cutover ctl`: the operator CLI for the etcd keys of SPEC §3.
//!
//! Every subcommand is a small async function over a [`store::Store`]; what it prints is built
//! by pure functions (tables, plans, conflict messages) that are unit-tested beside them. Writes
//! are validated first and go through etcd transactions that compare `mod_revision`, so two
//! operators never overwrite each other silently.

mod apply;
mod diffs;
mod history;
mod operator;
pub(crate) mod ramp;
mod status;
mod store;
mod table;
mod view;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use cutover_config::RouteId;

use crate::keys::Keys;
use crate::model::operator_id;

pub use operator::EtcdOperator;

/// `cutover ctl [--etcd URL,...] [--prefix P] SUBCOMMAND`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "CUTOVER_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd: Vec<String>,
    /// Key prefix.
    #[arg(
        long,
        env = "CUTOVER_PREFIX",
        default_value = "/cutover",
        global = true
    )]
    pub prefix: String,
    /// Who a write is recorded as in events and status [default: $USER@host].
    #[arg(long, value_name = "WHO", global = true)]
    pub by: Option<String>,
    /// Print JSON instead of text (status, history, diffs and the result of writes).
    #[arg(long, global = true)]
    pub json: bool,
    /// Time limit for each etcd or admin API request (e.g. "500ms", "5s").
    #[arg(long, default_value = "5s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
    /// CA bundle (PEM) that etcd's certificate is checked against (https:// endpoints; the
    /// platform's roots without it).
    #[arg(long, env = "CUTOVER_ETCD_CA", value_name = "FILE", global = true)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth, with --etcd-key.
    #[arg(long, env = "CUTOVER_ETCD_CERT", value_name = "FILE", global = true)]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "CUTOVER_ETCD_KEY", value_name = "FILE", global = true)]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd user (RBAC), with --etcd-password-file.
    #[arg(long, env = "CUTOVER_ETCD_USER", value_name = "NAME", global = true)]
    pub etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(
        long,
        env = "CUTOVER_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        global = true
    )]
    pub etcd_password_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Weights, live share, phase and last rollback of one route or all.
    Status {
        /// Only this route.
        route: Option<String>,
    },
    /// Write a route's weights (compare-and-swap on the weights key).
    Set(SetArgs),
    /// Send all live traffic to `new`: legacy 0, new 100, shadow unchanged.
    Promote {
        /// The route id.
        route: String,
        /// Why, recorded in the event.
        #[arg(long, default_value = "promote")]
        reason: String,
    },
    /// Send all live traffic back to `legacy`: legacy 100, new 0, shadow unchanged; phase
    /// rolled_back.
    Rollback {
        /// The route id.
        route: String,
        /// Why, recorded in the event and the status.
        #[arg(long, default_value = "operator rollback")]
        reason: String,
    },
    /// Hold a route's ramp at its current step: status phase paused, weights untouched.
    Pause {
        /// The route id (its spec must have a `ramp`).
        route: String,
        /// Why, recorded in the event [default: "paused by WHO"].
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused ramp, or start the ramp at its first step when new has no traffic.
    Resume {
        /// The route id (its spec must have a `ramp`).
        route: String,
        /// Why, recorded in the event [default: "resumed by WHO" / "ramp started at N% by WHO"].
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop a ramp and send all live traffic back to `legacy`: `rollback` with its own reason.
    Abort {
        /// The route id.
        route: String,
        /// Why, recorded in the event and the status [default: "ramp aborted by WHO"].
        #[arg(long)]
        reason: Option<String>,
    },
    /// The route's events (audit trail), newest first.
    History {
        /// The route id.
        route: String,
        /// How many events to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Write the [[routes]] of a config file (specs and weights) in one transaction.
    Apply(ApplyArgs),
    /// Recent diverging shadow pairs of a route, from a proxy's admin API.
    Diffs {
        /// The route id.
        route: String,
        /// Base URL of a `cutover serve` admin API ([admin].listen).
        #[arg(long, env = "CUTOVER_ADMIN", default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// File whose first line is the admin API's bearer token (`[admin] token_file`).
        #[arg(long, env = "CUTOVER_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<std::path::PathBuf>,
    },
}

/// `set ROUTE --legacy N --new N [--shadow N]`.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The route id.
    pub route: String,
    /// Weight of the legacy backend (>= 0).
    #[arg(long, allow_negative_numbers = true)]
    pub legacy: f64,
    /// Weight of the new backend (>= 0; legacy + new > 0).
    #[arg(long, allow_negative_numbers = true)]
    pub new: f64,
    /// Percent (0-100) of requests also copied to the other backend [default: unchanged].
    #[arg(long, allow_negative_numbers = true)]
    pub shadow: Option<f64>,
    /// Why, recorded in the event.
    #[arg(long, default_value = "set by ctl")]
    pub reason: String,
}

/// `apply FILE`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A config file (TOML, SPEC §2); its [[routes]] are written.
    pub file: PathBuf,
    /// Print what would change and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write only the specs; leave every weights key as it is.
    #[arg(long)]
    pub specs_only: bool,
    /// etcd's --max-txn-ops: the most compares, and the most writes, one transaction may hold.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(4..))]
    pub max_txn_ops: u32,
}

/// Run `cutover ctl`; the exit code follows SPEC §1 (0 ok, 1 validation/usage, 2 runtime).
pub fn run(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cutover ctl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(args)) {
        Ok(output) => {
            if !output.is_empty() {
                println!("{}", output.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}", error.to_string().trim_end());
            ExitCode::from(error.exit_code())
        }
    }
}

/// Why `cutover ctl` failed, and so its exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum CtlError {
    /// Bad input (arguments, files, unknown routes): exit 1, nothing written.
    #[error("{0}")]
    Usage(String),
    /// The route has no keys under the prefix: exit 1, nothing written.
    #[error("{0}")]
    NoRoute(String),
    /// etcd or the admin API failed or answered unexpectedly: exit 2.
    #[error("{0}")]
    Runtime(String),
    /// A write lost a race (the message names the winner), or what it wrote on went away:
    /// exit 2, nothing written.
    #[error("{0}")]
    Conflict(String),
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::NoRoute(_) => 1,
            CtlError::Runtime(_) | CtlError::Conflict(_) => 2,
        }
    }
}

type Result<T, E = CtlError> = std::result::Result<T, E>;

/// What every subcommand needs besides its own arguments.
#[derive(Debug, Clone)]
struct Ctx {
    keys: Keys,
    etcd: crate::connect::EtcdConnect,
    /// Who writes (events, status).
    by: String,
    json: bool,
    timeout: Duration,
    /// A connected client to use instead of connecting (the admin API keeps one).
    connected: Option<store::Store>,
}

impl Ctx {
    fn new(args: &CtlArgs) -> Result<Ctx> {
        let endpoints: Vec<String> = args
            .etcd
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(CtlError::Usage(
                "--etcd is empty: pass etcd endpoints like --etcd http://127.0.0.1:2379".into(),
            ));
        }
        let auth = etcd_auth(args)?;
        let by = match &args.by {
            Some(by) if by.trim().is_empty() => {
                return Err(CtlError::Usage(
                    "--by is empty: pass who you are, e.g. --by alice@ops".into(),
                ))
            }
            Some(by) => by.trim().to_string(),
            None => operator_id(),
        };
        Ok(Ctx {
            keys: Keys::new(&args.prefix),
            etcd: crate::connect::EtcdConnect {
                endpoints,
                auth,
                dial_timeout: args.timeout,
                request_timeout: None,
                keep_alive: None,
            },
            by,
            json: args.json,
            timeout: args.timeout,
            connected: None,
        })
    }

    /// The prefix as shown in messages.
    fn prefix(&self) -> &str {
        match self.keys.prefix() {
            "" => "(empty prefix)",
            p => p,
        }
    }

    /// Connect to etcd (bounded by `--timeout`), or the client already connected.
    async fn store(&self) -> Result<store::Store> {
        match &self.connected {
            Some(store) => Ok(store.clone()),
            None => store::Store::connect(&self.etcd, self.timeout).await,
        }
    }
}

/// The etcd TLS and user flags, in pairs as `[etcd]` takes them (SPEC §9).
fn etcd_auth(args: &CtlArgs) -> Result<cutover_config::EtcdAuth> {
    let pair = |a: (&str, bool), b: (&str, bool)| {
        if a.1 == b.1 {
            Ok(())
        } else {
            let (given, missing) = if a.1 { (a.0, b.0) } else { (b.0, a.0) };
            Err(CtlError::Usage(format!("{given} needs {missing} too")))
        }
    };
    pair(
        ("--etcd-cert", args.etcd_cert.is_some()),
        ("--etcd-key", args.etcd_key.is_some()),
    )?;
    pair(
        ("--etcd-user", args.etcd_user.is_some()),
        ("--etcd-password-file", args.etcd_password_file.is_some()),
    )?;
    let auth = cutover_config::EtcdAuth {
        ca_file: args.etcd_ca.clone(),
        client_cert: args.etcd_cert.clone().zip(args.etcd_key.clone()).map(
            |(cert_file, key_file)| cutover_config::ClientCert {
                cert_file,
                key_file,
            },
        ),
        user: args
            .etcd_user
            .clone()
            .zip(args.etcd_password_file.clone())
            .map(|(username, password_file)| cutover_config::EtcdUser {
                username,
                password_file,
            }),
    };
    if auth.tls() && !args.etcd.iter().all(|e| e.trim().starts_with("https://")) {
        return Err(CtlError::Usage(
            "--etcd-ca/--etcd-cert need https:// endpoints: pass --etcd https://host:2379".into(),
        ));
    }
    Ok(auth)
}

async fn dispatch(args: CtlArgs) -> Result<String> {
    let ctx = Ctx::new(&args)?;
    match args.command {
        CtlCommand::Status { route } => status::run(&ctx, route.as_deref()).await,
        CtlCommand::Set(set) => {
            let change = write::Change::Set {
                legacy: set.legacy,
                new: set.new,
                shadow: set.shadow,
                reason: set.reason,
            };
            write::run(&ctx, &set.route, change).await
        }
        CtlCommand::Promote { route, reason } => {
            write::run(&ctx, &route, write::Change::Promote { reason }).await
        }
        CtlCommand::Rollback { route, reason } => {
            write::run(&ctx, &route, write::Change::Rollback { reason }).await
        }
        CtlCommand::Pause { route, reason } => ramp::pause(&ctx, &route, reason).await,
        CtlCommand::Resume { route, reason } => ramp::resume(&ctx, &route, reason).await,
        CtlCommand::Abort { route, reason } => {
            let reason = reason.unwrap_or_else(|| format!("ramp aborted by {}", ctx.by));
            write::run(&ctx, &route, write::Change::Rollback { reason }).await
        }
        CtlCommand::History { route, limit } => history::run(&ctx, &route, limit).await,
        CtlCommand::Apply(apply) => apply::run(&ctx, &apply).await,
        CtlCommand::Diffs {
            route,
            admin,
            admin_token_file,
        } => diffs::run(&ctx, &route, &admin, admin_token_file.as_deref()).await,
    }
}

/// A route id from the command line, or a usage error that says what ids look like.
fn route_id(text: &str) -> Result<RouteId> {
    RouteId::parse(text).map_err(CtlError::Usage)
}

/// The message for a route that has no keys under the prefix.
fn no_route(ctx: &Ctx, route: &str) -> CtlError {
    CtlError::NoRoute(format!(
        "no route {route} under {}; write its spec first with `cutover ctl apply FILE` \
         (list routes with `cutover ctl status`, or pass the right --prefix)",
        ctx.prefix()
    ))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (use a duration like \"500ms\", \"5s\" or \"1m\")"))?;
    if d.is_zero() {
        return Err("must be more than 0 (e.g. \"5s\")".into());
    }
    Ok(d)
}

/// A JSON value as compact text.
fn compact(value: &serde_json::Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|c| c.ctl)
    }

    #[test]
    fn negative_weights_reach_validation() {
        let args = parse(&["set", "orders", "--legacy", "-1", "--new", "5"]).unwrap();
        match args.command {
            CtlCommand::Set(set) => {
                assert_eq!(set.legacy, -1.0);
                assert_eq!(set.shadow, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let args = parse(&[
            "status",
            "--json",
            "--etcd",
            "http://a:1,http://b:2",
            "--timeout",
            "250ms",
        ])
        .unwrap();
        assert!(args.json);
        assert_eq!(args.etcd, ["http://a:1", "http://b:2"]);
        assert_eq!(args.timeout, Duration::from_millis(250));
        assert!(parse(&["status", "--timeout", "soon"]).is_err());
        assert!(parse(&["status", "--timeout", "0s"]).is_err());
        assert!(parse(&["history", "orders", "--limit", "0"]).is_err());
    }

    #[test]
    fn context_checks_endpoints_and_by() {
        let mut args = parse(&["status"]).unwrap();
        args.etcd = vec![" ".into()];
        assert!(matches!(Ctx::new(&args), Err(CtlError::Usage(_))));
        let mut args = parse(&["status", "--by", "alice"]).unwrap();
        assert_eq!(Ctx::new(&args).unwrap().by, "alice");
        args.by = Some(String::new());
        assert!(matches!(Ctx::new(&args), Err(CtlError::Usage(_))));
    }

    #[test]
    fn ramp_commands_take_an_optional_reason() {
        let args = parse(&["pause", "orders"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Pause { ref route, reason: None } if route == "orders"
        ));
        let args = parse(&["resume", "orders", "--reason", "fixed"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Resume { reason: Some(ref r), .. } if r == "fixed"
        ));
        let args = parse(&["abort", "orders", "--by", "eve"]).unwrap();
        assert!(matches!(
            args.command,
            CtlCommand::Abort { reason: None, .. }
        ));
        assert!(parse(&["pause"]).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 1);
        assert_eq!(CtlError::Runtime("x".into()).exit_code(), 2);
        assert_eq!(CtlError::NoRoute("x".into()).exit_code(), 1);
        assert_eq!(CtlError::Conflict("x".into()).exit_code(), 2);
    }
}
