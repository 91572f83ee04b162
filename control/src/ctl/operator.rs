//! The admin API's operator actions with etcd (SPEC §10): each one is the `cutover ctl`
//! command of the same name, run in the proxy process with `--json` (the same reads, the same
//! guarded transactions, the same event and status), recorded as the admin API's caller.

use std::time::Duration;

use cutover_config::operator::{Action, ActionError, ActionRequest, BoxFuture, Operator};
use cutover_config::{EtcdSettings, RouteId};

use super::store::Store;
use super::{history, ramp, write, CtlError, Ctx};
use crate::connect::EtcdConnect;
use crate::keys::Keys;

/// Time limit of each etcd call of one action.
const TIMEOUT: Duration = Duration::from_secs(5);

/// [`Operator`] over etcd, for a proxy whose routes come from etcd. It connects on first use
/// and keeps the client until etcd stops answering (the dashboard reads history every few
/// seconds).
pub struct EtcdOperator {
    keys: Keys,
    etcd: EtcdConnect,
    connected: tokio::sync::Mutex<Option<Store>>,
}

impl std::fmt::Debug for EtcdOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOperator")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl EtcdOperator {
    pub fn new(settings: &EtcdSettings) -> Self {
        EtcdOperator {
            keys: Keys::new(&settings.prefix),
            etcd: EtcdConnect::from_settings(settings),
            connected: tokio::sync::Mutex::new(None),
        }
    }

    /// The context of one command run as `by`, with the kept client (connected now when
    /// there is none).
    async fn ctx(&self, by: String) -> Result<Ctx, ActionError> {
        let mut ctx = Ctx {
            keys: self.keys.clone(),
            etcd: EtcdConnect {
                dial_timeout: TIMEOUT,
                ..self.etcd.clone()
            },
            by,
            json: true,
            timeout: TIMEOUT,
            connected: None,
        };
        let mut connected = self.connected.lock().await;
        if connected.is_none() {
            *connected = Some(ctx.store().await.map_err(action_error)?);
        }
        ctx.connected = connected.clone();
        Ok(ctx)
    }

    /// The command's output; a client that failed is dropped, so the next action connects
    /// again.
    async fn finish(
        &self,
        result: Result<String, CtlError>,
    ) -> Result<serde_json::Value, ActionError> {
        if matches!(result, Err(CtlError::Runtime(_))) {
            *self.connected.lock().await = None;
        }
        output(result)
    }
}

/// The command's `--json` output as a value.
fn output(result: Result<String, CtlError>) -> Result<serde_json::Value, ActionError> {
    let text = result.map_err(action_error)?;
    serde_json::from_str(&text)
        .map_err(|e| ActionError::Unavailable(format!("unexpected output ({e}): {text}")))
}

/// What the command's error means on the admin API. The request was validated before (route id,
/// weights, reason), so what is left of "usage" is the route's state refusing the command.
fn action_error(error: CtlError) -> ActionError {
    match error {
        CtlError::NoRoute(m) => ActionError::NoRoute(m),
        CtlError::Usage(m) => ActionError::Refused(m),
        CtlError::Conflict(m) => ActionError::Conflict(m),
        CtlError::Runtime(m) => ActionError::Unavailable(m),
    }
}

impl Operator for EtcdOperator {
    fn act(&self, request: ActionRequest) -> BoxFuture<'_, Result<serde_json::Value, ActionError>> {
        Box::pin(async move {
            let ctx = self.ctx(request.by).await?;
            let route = request.route.as_str();
            let reason = request.reason;
            let result = match request.action {
                Action::Set {
                    legacy,
                    new,
                    shadow,
                } => {
                    let reason = reason.unwrap_or_else(|| "set on the admin API".to_string());
                    let change = write::Change::Set {
                        legacy,
                        new,
                        shadow,
                        reason,
                    };
                    write::run(&ctx, route, change).await
                }
                Action::Promote => {
                    let reason = reason.unwrap_or_else(|| "promote".to_string());
                    write::run(&ctx, route, write::Change::Promote { reason }).await
                }
                Action::Rollback => {
                    let reason = reason.unwrap_or_else(|| "operator rollback".to_string());
                    write::run(&ctx, route, write::Change::Rollback { reason }).await
                }
                Action::Pause => ramp::pause(&ctx, route, reason).await,
                Action::Resume => ramp::resume(&ctx, route, reason).await,
            };
            self.finish(result).await
        })
    }

    fn history(
        &self,
        route: RouteId,
        limit: u32,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActionError>> {
        Box::pin(async move {
            let ctx = self.ctx(String::new()).await?;
            let result = history::run(&ctx, route.as_str(), limit).await;
            self.finish(result).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_status() {
        assert!(matches!(
            action_error(CtlError::NoRoute("x".into())),
            ActionError::NoRoute(_)
        ));
        assert!(matches!(
            action_error(CtlError::Usage("x".into())),
            ActionError::Refused(_)
        ));
        assert!(matches!(
            action_error(CtlError::Conflict("x".into())),
            ActionError::Conflict(_)
        ));
        assert!(matches!(
            action_error(CtlError::Runtime("x".into())),
            ActionError::Unavailable(_)
        ));
        assert_eq!(output(Ok(r#"{"a":1}"#.into())).unwrap()["a"], 1);
    }
}
