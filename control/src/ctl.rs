//! `cutover ctl`: the operator CLI for the etcd keys of SPEC §3.

use clap::{Args, Subcommand};

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
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Weights, phase and last rollback of one route or all.
    Status { route: Option<String> },
}

/// Run `cutover ctl`; the exit code follows SPEC §1 (0 ok, 1 validation/usage, 2 runtime).
pub fn run(args: CtlArgs) -> std::process::ExitCode {
    let _ = args;
    eprintln!("cutover ctl: not built yet");
    std::process::ExitCode::from(2)
}
