//! Python clients no one here wrote (SPEC §8 interop), and the dashboard's browser driver: a
//! virtual environment with `grpcio`, `websockets` and `selenium` under
//! `<workspace>/target/pyenv`, made on first use (the machine needs
//! `python3` with `venv`; `scripts/prereqs.sh test` installs `python3-venv`). A test that needs
//! it fails with what to do when it cannot be made — it never skips.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The packages, pinned so that every run tests the same clients.
const PACKAGES: [&str; 3] = ["grpcio==1.85.4", "websockets==17.4", "selenium==4.51.0"];

/// The virtual environment's `python`, with [`PACKAGES`] installed.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(make)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn make() -> Result<PathBuf, String> {
    let dir = crate::proxy::workspace_root().join("target").join("pyenv");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One maker at a time across test processes.
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| e.to_string())?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", dir.display()))?;
    let python = dir.join("bin").join("python");
    let ready = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import grpc, websockets, selenium"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.is_file() && ready(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv target/pyenv (install python3 and python3-venv: scripts/prereqs.sh test)",
    )?;
    run(
        Command::new(dir.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES),
        "pip install grpcio websockets selenium into target/pyenv (needs access to PyPI)",
    )?;
    if !ready(&python) {
        return Err(format!(
            "{}: grpcio, websockets and selenium still do not import after pip install",
            python.display()
        ));
    }
    Ok(python)
}

/// Run `script` with the environment's python and `args`; its stdout, or a panic with both
/// streams.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
