//! `[notify] webhook`: every rollback event is POSTed as JSON (the event of SPEC §3 plus
//! `route`) from its own task, with a bounded number of attempts, so a slow or dead receiver
//! never delays a rollback.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{info, warn};

use crate::model::Event;

/// Attempts per event (the first try included).
const ATTEMPTS: u32 = 5;
/// Bound of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// Posts events to one URL.
#[derive(Clone)]
pub struct Notifier {
    url: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Notifier {
    pub fn new(url: String) -> Self {
        Notifier {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Post `event` of `route` in the background.
    pub fn send(&self, route: &str, event: &Event) {
        let mut body = serde_json::to_value(event).unwrap_or_default();
        body["route"] = route.into();
        let body = Bytes::from(body.to_string());
        let this = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            let mut wait = FIRST_RETRY;
            for attempt in 1..=ATTEMPTS {
                match this.post(body.clone()).await {
                    Ok(()) => {
                        info!(%route, url = %this.url, "rollback event delivered to the webhook");
                        return;
                    }
                    Err(e) if attempt == ATTEMPTS => {
                        warn!(%route, url = %this.url, error = %e, attempts = ATTEMPTS, "webhook gave up");
                    }
                    Err(e) => {
                        warn!(%route, url = %this.url, error = %e, retry_in = ?wait, "webhook failed");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        });
    }

    async fn post(&self, body: Bytes) -> Result<(), String> {
        let req = hyper::Request::post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "cutover")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}
