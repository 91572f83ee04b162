//! The client-connection cap (`[proxy] max_connections`, RELIABILITY 32).
//!
//! pingora accepts every connection its listeners get. [`ConnectionCap`] sits between the
//! listeners and the HTTP app: it counts the client connections open over every listener and
//! thread, and closes a connection accepted above the cap at once, before a byte of it is read,
//! so a flood of connections costs a socket each for an instant rather than a session's buffers
//! and tasks. That is what Envoy's `max_downstream_connections` does; nginx and HAProxy stop
//! calling `accept` instead, which leaves clients waiting in the backlog with no sign of why.
//! Each refusal is counted in `cutover_downstream_connections_rejected_total` and the open
//! connections are the gauge `cutover_downstream_connections`.
//!
//! A connection counts from its hand-over after accept (and TLS handshake) until the last
//! request on it is done: an idle keep-alive connection counts, as it holds its memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tracing::warn;

/// Counts client connections and refuses those above `max`; `app` serves the others.
pub struct ConnectionCap<A> {
    app: Arc<A>,
    max: usize,
    open: AtomicUsize,
    gauge: IntGauge,
    rejected: IntCounter,
}

impl<A> ConnectionCap<A> {
    pub fn new(app: A, max: usize, gauge: IntGauge, rejected: IntCounter) -> Self {
        ConnectionCap {
            app: Arc::new(app),
            max,
            open: AtomicUsize::new(0),
            gauge,
            rejected,
        }
    }

    /// Take a slot for a new connection; `None` when all `max` are taken.
    fn admit(&self) -> Option<Admitted<'_, A>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauge.inc();
        Some(Admitted(self))
    }
}

/// One open connection's slot, released when dropped (however the connection ends).
struct Admitted<'a, A>(&'a ConnectionCap<A>);

impl<A> Drop for Admitted<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            // Refused: dropping the stream closes it unread.
            self.rejected.inc();
            if self.rejected.get().is_power_of_two() {
                warn!(
                    max_connections = self.max,
                    refused = self.rejected.get(),
                    "client connection refused: max_connections are open"
                );
            }
            return None;
        };
        // The app hands a kept-alive connection back after each request; serve it here, holding
        // the slot, rather than returning it to pingora's loop (which would call us again).
        let mut next = self.app.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.app.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    #[async_trait]
    impl ServerApp for Nothing {
        async fn process_new(self: &Arc<Self>, _: Stream, _: &ShutdownWatch) -> Option<Stream> {
            None
        }
    }

    #[test]
    fn admits_up_to_max_and_frees_slots_on_drop() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let rejected = IntCounter::new("r", "r").unwrap();
        let cap = ConnectionCap::new(Nothing, 2, gauge.clone(), rejected);
        let a = cap.admit().expect("first");
        let b = cap.admit().expect("second");
        assert!(cap.admit().is_none(), "a third is over the cap");
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        let c = cap.admit().expect("a freed slot is reused");
        drop((b, c));
        assert_eq!(cap.open.load(Ordering::Acquire), 0);
        assert_eq!(gauge.get(), 0);
    }
}
