//! The `cutover` binary: `serve`, `validate`, `ctl`, `demo` (SPEC §1).
//!
//! Exit codes: 0 success, 1 validation or usage problem, 2 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cutover_proxy::server::{self, ServeError};

/// mimalloc instead of glibc malloc: perf showed ~15 % of the proxy's CPU in glibc
/// malloc/free (the data plane allocates per request: heads, header maps, body frames); see
/// BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version,
    about = "Move production traffic from a legacy backend to a new one, safely."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane, the admin API and the control loop until SIGTERM/SIGINT.
    Serve {
        /// The config file (TOML, see config/examples/).
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of the cutover running with the same
        /// `[proxy] upgrade_socket`; it drains and exits once this one serves.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file (.toml) or a route spec / weights document (.json).
    Validate {
        /// The file to check.
        file: PathBuf,
    },
    /// Operator CLI for the etcd keys: status, set, promote, rollback, history, apply, diffs.
    Ctl(Box<cutover_control::ctl::CtlArgs>),
    /// Self-contained showcase: demo backends, the real proxy, live weight changes.
    Demo(cutover_proxy::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    match cli.command {
        Command::Serve { config, upgrade } => match server::serve(&config, upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ (ServeError::Read { .. } | ServeError::Invalid(_) | ServeError::Files(_))) => {
                eprintln!("{e}");
                eprintln!(
                    "fix the config file (check it with `cutover validate {}`)",
                    config.display()
                );
                ExitCode::from(1)
            }
            Err(e @ ServeError::Runtime(_)) => {
                eprintln!("cutover: {e}");
                ExitCode::from(2)
            }
        },
        Command::Validate { file } => validate(&file),
        Command::Ctl(args) => cutover_control::ctl::run(*args),
        Command::Demo(args) => match cutover_proxy::demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cutover demo: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// What is wrong with the files a valid config names: the admin token and etcd's TLS and
/// password files. Each problem names the key and the path, never the content.
fn config_files(config: &cutover_config::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(path) = &config.admin.token_file {
        if let Err(e) = server::read_token(path) {
            problems.push(e);
        }
    }
    if let Some(etcd) = &config.etcd {
        problems.extend(cutover_control::connect::check_files(&etcd.auth));
    }
    problems
}

fn validate(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    match cutover_config::parse_document(&name, &text) {
        Ok(doc) => {
            let what = match doc {
                cutover_config::Document::Config(mut c) => {
                    // The descriptor sets the routes name must parse (SPEC §8).
                    if let Err(errors) = cutover_control::attach_descriptor_files(&mut c, file) {
                        for e in &errors.0 {
                            eprintln!("{}: {e}", file.display());
                        }
                        return ExitCode::from(1);
                    }
                    // The files the config names must be there and readable (SPEC §9).
                    let problems = config_files(&c);
                    if !problems.is_empty() {
                        for p in problems {
                            eprintln!("{}: {p}", file.display());
                        }
                        return ExitCode::from(1);
                    }
                    format!("config file with {} route(s)", c.routes.len())
                }
                cutover_config::Document::RouteSpec(_) => "route spec".to_string(),
                cutover_config::Document::Weights(_) => "weights".to_string(),
            };
            println!("{}: valid {what}", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
