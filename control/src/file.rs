//! The embedded config source: the `[[routes]]` of the config file, watched for changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cutover_config::{Config, ConfigError, ConfigErrors, DescriptorSet};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{ConfigSource, ConfigState};

/// How long to let a burst of file events settle before re-reading (an editor's
/// write-temp-then-rename is several events).
const SETTLE: Duration = Duration::from_millis(25);
/// A safety net for file systems and mounts where change events are lost: re-read this often
/// even without an event. Unchanged content is ignored.
const POLL: Duration = Duration::from_secs(2);

/// Watches the config file and publishes its routes whenever a valid change lands.
///
/// The file's parent directory is watched, not the file, so a change written by rename (editors,
/// Kubernetes ConfigMap symlink swaps) is seen. Only `[[routes]]` are hot-swapped; a change to
/// `[proxy]`, `[admin]`, `[stats]` or `[etcd]` is logged as needing a restart and otherwise
/// ignored.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    loaded: Config,
    text: String,
}

impl FileSource {
    /// A source for `path`, whose current content `text` was parsed into `loaded` at start.
    pub fn new(path: impl Into<PathBuf>, text: String, loaded: Config) -> Self {
        Self {
            path: path.into(),
            loaded,
            text,
        }
    }

    /// Re-read the file and return the next state, or `None` when the content did not change.
    fn reload(&mut self, current: &ConfigState) -> Option<ConfigState> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            // Mid-rename or briefly missing: keep what we have and look again on the next event.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                let reason = format!("{}: cannot read: {e}", self.path.display());
                warn!(%reason, "config file rejected");
                return Some(current.rejected(reason));
            }
        };
        if text == self.text {
            return None;
        }
        self.text = text;
        let parsed = cutover_config::parse_config_toml(&self.text).and_then(|mut config| {
            attach_descriptor_files(&mut config, &self.path).map(|()| config)
        });
        match parsed {
            Ok(config) => {
                warn_on_restart_only_changes(&self.loaded, &config);
                let next = current.applied(config.routes);
                if next.revision != current.revision {
                    info!(revision = next.revision, path = %self.path.display(), "config file change applied");
                }
                Some(next)
            }
            Err(errors) => {
                let reason = errors.to_string();
                warn!(path = %self.path.display(), %reason, "config file change rejected; keeping the last good routes");
                Some(current.rejected(reason))
            }
        }
    }
}

/// Read the descriptor sets the routes of the config file at `path` name in
/// `compare.descriptor_set` (paths relative to the file's directory, SPEC §8) and attach each to
/// its route; every problem names its route and the file.
pub fn attach_descriptor_files(config: &mut Config, path: &Path) -> Result<(), ConfigErrors> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();
    for (i, route) in config.routes.iter_mut().enumerate() {
        let Some(name) = route.spec.descriptor_set_name() else {
            continue;
        };
        let file = dir.join(name);
        let set = std::fs::read(&file)
            .map_err(|e| format!("{}: cannot read: {e}", file.display()))
            .and_then(|bytes| DescriptorSet::decode(name, &bytes));
        match set {
            Ok(set) => route.spec = Arc::new((*route.spec).clone().with_descriptors(set)),
            Err(reason) => errors.push(ConfigError::new(
                format!("routes[{i}].compare.descriptor_set"),
                reason,
            )),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

fn warn_on_restart_only_changes(loaded: &Config, new: &Config) {
    let parts = [
        ("[proxy]", loaded.proxy != new.proxy),
        ("[admin]", loaded.admin != new.admin),
        ("[stats]", loaded.stats != new.stats),
        ("[etcd]", loaded.etcd != new.etcd),
    ];
    for (table, changed) in parts {
        if changed {
            warn!("{table} changed in the config file; it takes effect on restart (only [[routes]] are hot-reloaded)");
        }
    }
}

#[async_trait]
impl ConfigSource for FileSource {
    fn initial_state(&self) -> ConfigState {
        ConfigState::initial(self.loaded.routes.clone())
    }

    async fn run(
        mut self: Box<Self>,
        tx: watch::Sender<Arc<ConfigState>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        // Keep the watcher alive for as long as we run; without it we still poll.
        let _watcher = match watch_dir(&self.path, events_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot watch the config file; polling every {POLL:?} instead");
                None
            }
        };
        let mut poll = tokio::time::interval(POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = events.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while events.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            let current = tx.borrow().clone();
            if let Some(next) = self.reload(&current) {
                tx.send_replace(Arc::new(next));
            }
        }
    }
}

/// Whether an event in the watched directory can mean new content. Opening, reading and
/// closing a file unmodified cannot — and re-reading the file on those events fed the watcher
/// its own reads: the file was re-read every [`SETTLE`], ~35 times a second, for as long as the
/// process ran. Everything else counts: create, write, close after writing, rename, delete,
/// attributes, and events of other entries (a ConfigMap's `..data` symlink swap).
fn may_change_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(access) => {
            matches!(access, AccessKind::Close(AccessMode::Write))
        }
        _ => true,
    }
}

fn watch_dir(
    path: &Path,
    events: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|event| may_change_content(&event.kind)) {
            // The receiver is gone only at shutdown.
            let _ = events.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::ONE as BASE;

    #[test]
    fn reads_of_the_file_are_not_changes() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
            RenameMode,
        };
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!may_change_content(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change_content(&kind), "{kind:?}");
        }
    }

    fn write_atomic(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<ConfigState>>,
        pred: impl Fn(&ConfigState) -> bool,
    ) -> Arc<ConfigState> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                {
                    let s = rx.borrow_and_update().clone();
                    if pred(&s) {
                        return s;
                    }
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("config state did not reach the expected value within 10s")
    }

    #[tokio::test]
    async fn rename_is_applied_and_invalid_change_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, BASE).unwrap();
        let config = cutover_config::parse_config_toml(BASE).unwrap();
        let source = Box::new(FileSource::new(&path, BASE.to_string(), config));
        let (tx, mut rx) = watch::channel(Arc::new(source.initial_state()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(source.run(tx, stop_rx));

        write_atomic(&path, &BASE.replace("new = 10", "new = 30"));
        let s = wait_for(&mut rx, |s| s.revision == 2).await;
        assert_eq!(s.routes[0].weights.new, 30.0);

        write_atomic(&path, &BASE.replace("new = 10", "new = -1"));
        let s = wait_for(&mut rx, |s| s.last_error.is_some()).await;
        assert_eq!(
            s.revision, 2,
            "an invalid change must not bump the revision"
        );
        assert_eq!(s.routes[0].weights.new, 30.0, "last good weights stay");
        assert_eq!(s.errors_total, 1);
        assert!(s.last_error.as_deref().unwrap().contains("weights.new"));

        write_atomic(&path, &BASE.replace("new = 10", "new = 50"));
        let s = wait_for(&mut rx, |s| s.revision == 3).await;
        assert!(s.last_error.is_none());

        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
