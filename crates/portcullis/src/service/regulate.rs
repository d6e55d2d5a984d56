//! Regulation of the service's credential checks (login, password-reset
//! redemption): asked before the password is hashed; a refusal is audited
//! (`login.throttled`), told to the detectors as an authentication failure
//! (so a source that keeps trying many accounts gets banned), and answered
//! 429 `auth.too_many_attempts` with `Retry-After`, the same whether or not
//! the account exists.

use portcullis_core::ErrorCode;
use portcullis_core::anomaly::Signal;
use portcullis_core::audit::EventKind;
use portcullis_core::regulation::Surface;

use super::extract::Client;
use super::problem::Problem;
use super::{Inner, Route};
use crate::regulation::Ticket;

/// The one detail of a throttled answer.
pub(crate) const THROTTLED: &str = "too many failed attempts from this client; retry later";

impl Inner {
    /// Charges one attempt at `account` (if named) from `client`: `Ok` with
    /// the ticket to settle on success, or the 429 refusal.
    pub(super) async fn regulate(
        &self,
        client: &Client,
        account: Option<&str>,
        route: Route,
    ) -> Result<Option<Ticket>, Problem> {
        let Some(regulator) = &self.regulator else {
            return Ok(None);
        };
        let ip = client.key.map(|ip| ip.to_string());
        let ticket = regulator
            .attempt(Surface::Login, ip.as_deref(), account)
            .await;
        let Some(retry) = ticket.attempt.retry_after_secs() else {
            return Ok(Some(ticket));
        };
        let code = ErrorCode::TooManyAttempts;
        let mut event = self.event(EventKind::LoginThrottled, route, client);
        event.status = Some(429);
        event.code = Some(code.as_str().to_owned());
        if let Some(ip) = client.ip_text() {
            let signal = Signal::AuthFailure { ip: &ip, account };
            self.observe(signal, route, client, &mut event).await;
        }
        self.record(event).await;
        // One notice per client and account a minute: a throttled client
        // retrying must not flood the receiver.
        self.notify(
            crate::anomaly::webhook::SecurityEventKind::LoginThrottled,
            std::time::Duration::from_secs(60),
            client,
            account,
            None,
        );
        Err(Problem::code(code, THROTTLED).header(http::header::RETRY_AFTER, retry.to_string()))
    }

    /// The credential was right: gives the attempt's charge back.
    pub(super) async fn settle(&self, ticket: Option<Ticket>) {
        if let (Some(regulator), Some(ticket)) = (&self.regulator, ticket) {
            regulator.succeeded(ticket).await;
        }
    }
}
