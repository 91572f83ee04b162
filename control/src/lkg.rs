//! The last-known-good snapshot on local disk: the routes of the last applied revision, so a
//! proxy that starts while etcd is unreachable serves what the fleet last agreed on.
//!
//! Written atomically (temp file + rename in the same directory) after each applied revision.

use std::io::Write;
use std::path::Path;

use cutover_config::{RouteConfig, RouteId, RouteSpec, Weights};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LkgFile {
    revision: u64,
    written_at: String,
    routes: Vec<LkgRoute>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LkgRoute {
    id: RouteId,
    spec: RouteSpec,
    weights: Weights,
}

/// Write `routes` at `revision` to `path` atomically.
pub fn write<'a>(
    path: &Path,
    revision: u64,
    routes: impl IntoIterator<Item = &'a RouteConfig>,
) -> std::io::Result<()> {
    let file = LkgFile {
        revision,
        written_at: crate::model::rfc3339_now(),
        routes: routes
            .into_iter()
            .map(|r| LkgRoute {
                id: r.id.clone(),
                spec: (*r.spec).clone(),
                weights: r.weights,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Read the snapshot at `path`: `Ok(None)` when there is none, an error when it exists but is
/// unreadable or invalid (every route is validated again).
pub fn read(path: &Path) -> Result<Option<(u64, Vec<RouteConfig>)>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: LkgFile =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let routes = file
        .routes
        .into_iter()
        .map(|r| RouteConfig {
            id: r.id,
            spec: std::sync::Arc::new(r.spec),
            weights: r.weights,
        })
        .collect();
    Ok(Some((file.revision, routes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lkg.json");
        assert_eq!(read(&path).unwrap(), None);
        let routes = cutover_config::parse_config_toml(crate::tests::ONE)
            .unwrap()
            .routes;
        write(&path, 42, &routes).unwrap();
        let (rev, back) = read(&path).unwrap().unwrap();
        assert_eq!(rev, 42);
        assert_eq!(back, routes);
        std::fs::write(&path, b"{\"revision\": 1, \"routes\": [{\"id\": \"x\"}]}").unwrap();
        assert!(read(&path).is_err());
    }
}
