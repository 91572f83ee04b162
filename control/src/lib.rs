//! The cutover control plane: where routes and weights come from, and how a new valid state
//! reaches the data plane. See `config/examples/` for the files the [`FileSource`] watches.
//!
//! Every source implements [`ConfigSource`] and publishes [`ConfigState`]s on a
//! `tokio::sync::watch` channel: the data plane and the tests wait on the same channel.

pub mod connect;
pub mod controller;
pub mod ctl;
mod etcd;
mod file;
pub mod keys;
pub mod lkg;
pub mod model;
pub mod rules;
pub mod writer;

pub use cutover_config::window;
pub use cutover_config::ConfigState;
pub use etcd::EtcdSource;
pub use file::{attach_descriptor_files, FileSource};

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

/// A place routes and weights come from (a watched file, etcd). Its write side — where the
/// controller's rollbacks, gates, ramp steps and statuses go when the store is shared — is
/// [`controller::ConfigWriter`]; etcd's is the controller's etcd writer, and a new source
/// brings its own ([`controller::Controller::with_writer`]).
///
/// `run` publishes every change on `tx` until `shutdown` turns `true`. It must never publish a
/// state whose routes were not validated.
#[async_trait]
pub trait ConfigSource: Send + 'static {
    /// The state to serve before `run` starts (cold start).
    fn initial_state(&self) -> ConfigState;

    /// Watch the source and publish changes until shutdown.
    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Arc<ConfigState>>,
        shutdown: watch::Receiver<bool>,
    );
}

#[cfg(test)]
mod tests {
    /// One route at 90/10, shared by the tests of this crate.
    pub(crate) const ONE: &str = r#"
        [[routes]]
        id = "orders"
        match = { path_prefix = "/" }
        legacy = { endpoints = ["127.0.0.1:9001"] }
        new = { endpoints = ["127.0.0.1:9002"] }
        weights = { legacy = 90, new = 10 }
    "#;
}
