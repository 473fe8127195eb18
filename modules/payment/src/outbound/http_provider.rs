//! The `http` payment provider: the subset of Stripe's PaymentIntents and
//! Refunds API agora needs, so it works against Stripe's test mode and any
//! compatible server.
//!
//! - `POST {url}/v1/payment_intents` (form-encoded: `amount`, `currency`,
//!   `payment_method`, `confirm=true`, `payment_method_types[0]=card`,
//!   `metadata[...]`) → `succeeded`, or a decline: HTTP 402 with a
//!   `card_error` body, or `requires_payment_method` / `requires_action`.
//! - `POST {url}/v1/refunds` (`payment_intent`, `amount`, `metadata[...]`).
//!
//! Every call carries `Authorization: Bearer <secret key>` and an
//! `Idempotency-Key`, so a retry after a time-out never charges twice. 5xx,
//! 401/403, 409, 429, time-outs, transport errors and unreadable answers are
//! provider faults; other 4xx answers to a charge are declines (the request
//! can never succeed as it is), to a refund rejections.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::domain::models::{ChargeResult, RefundResult};
use crate::domain::ports::{
    FaultKind, PaymentProvider, ProviderChargeRequest, ProviderError, ProviderRefundRequest,
};

pub struct HttpProvider {
    client: reqwest::Client,
    base_url: String,
    secret_key: SecretString,
}

/// `application/x-www-form-urlencoded`, as Stripe reads it.
pub fn form_encode(pairs: &[(&str, String)]) -> String {
    fn encode(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(char::from(b));
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(k, &mut out);
        out.push('=');
        encode(v, &mut out);
    }
    out
}

/// What one HTTP exchange produced.
struct Answer {
    status: u16,
    body: Option<Value>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

impl HttpProvider {
    /// A provider at `base_url` (e.g. `https://api.stripe.com`).
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        base_url: &str,
        secret_key: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("failed to build the payment provider's HTTP client")?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key,
        })
    }

    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<Answer, ProviderError> {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form_encode(form));
        let key = self.secret_key.expose_secret();
        if !key.is_empty() {
            req = req.bearer_auth(key);
        }
        let res = req.send().await.map_err(|e| transport(&e))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|e| transport(&e))?;
        let body = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object);
        Ok(Answer { status, body })
    }
}

fn transport(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::fault(
            FaultKind::Timeout,
            "no answer in time; the outcome is unknown",
        )
    } else {
        // The error's text may carry the URL but never the key.
        ProviderError::fault(FaultKind::Transport, format!("{e}"))
    }
}

/// Statuses that say "try again later", not "this request is wrong".
fn is_fault_status(status: u16) -> bool {
    status >= 500 || matches!(status, 401 | 403 | 409 | 429)
}

fn error_code(body: &Value) -> Option<String> {
    str_at(body, &["error", "decline_code"])
        .or_else(|| str_at(body, &["error", "code"]))
        .map(str::to_owned)
}

#[async_trait]
impl PaymentProvider for HttpProvider {
    fn name(&self) -> &'static str {
        "http"
    }

    #[tracing::instrument(skip_all, fields(payment_id = %req.payment_id))]
    async fn charge(&self, req: &ProviderChargeRequest) -> Result<ChargeResult, ProviderError> {
        let form = [
            ("amount", req.amount.minor().to_string()),
            (
                "currency",
                req.amount.currency().code().to_ascii_lowercase(),
            ),
            ("payment_method", req.payment_method.as_str().to_owned()),
            ("confirm", "true".to_owned()),
            // Card only: a server-side confirm then needs no return URL, on
            // Stripe and on compatible servers alike.
            ("payment_method_types[0]", "card".to_owned()),
            ("metadata[payment_id]", req.payment_id.to_string()),
            ("metadata[order_id]", req.order_id.to_string()),
            ("metadata[customer_id]", req.customer_id.as_str().to_owned()),
        ];
        let answer = self
            .post("/v1/payment_intents", &req.idempotency_key, &form)
            .await?;
        charge_result(answer)
    }

    #[tracing::instrument(skip_all, fields(refund_id = %req.refund_id))]
    async fn refund(&self, req: &ProviderRefundRequest) -> Result<RefundResult, ProviderError> {
        let mut form = vec![
            ("payment_intent", req.charge_ref.clone()),
            ("amount", req.amount.minor().to_string()),
            ("metadata[refund_id]", req.refund_id.to_string()),
            ("metadata[payment_id]", req.payment_id.to_string()),
        ];
        if let Some(reason) = &req.reason {
            form.push(("metadata[reason]", reason.clone()));
        }
        let answer = self
            .post("/v1/refunds", &req.idempotency_key, &form)
            .await?;
        refund_result(answer)
    }
}

fn malformed(what: &str) -> ProviderError {
    ProviderError::fault(FaultKind::Malformed, what.to_owned())
}

/// An answer worth reading, once faults are ruled out.
enum Reply {
    /// 2xx: the object asked for.
    Done(Value),
    /// Another 4xx: the request can never succeed as it is.
    Refused(Value),
}

/// Sort an answer: a fault status, an unreadable body or an unexpected
/// status is a fault; anything else is a [`Reply`] to read.
fn reply(a: Answer) -> Result<Reply, ProviderError> {
    if is_fault_status(a.status) {
        return Err(ProviderError::fault(
            FaultKind::Status(a.status),
            "the provider answered an error status",
        ));
    }
    let Some(body) = a.body else {
        return Err(malformed("the answer is not a JSON object"));
    };
    match a.status {
        200..=299 => Ok(Reply::Done(body)),
        400..=499 => Ok(Reply::Refused(body)),
        other => Err(ProviderError::fault(
            FaultKind::Status(other),
            "unexpected HTTP status",
        )),
    }
}

fn charge_result(a: Answer) -> Result<ChargeResult, ProviderError> {
    match reply(a)? {
        Reply::Done(body) => {
            let id =
                str_at(&body, &["id"]).ok_or_else(|| malformed("the PaymentIntent has no id"))?;
            let status = str_at(&body, &["status"])
                .ok_or_else(|| malformed("the PaymentIntent has no status"))?;
            match status {
                "succeeded" => Ok(ChargeResult::Succeeded {
                    provider_ref: id.to_owned(),
                }),
                "requires_payment_method" | "canceled" => Ok(ChargeResult::Declined {
                    code: str_at(&body, &["last_payment_error", "decline_code"])
                        .or_else(|| str_at(&body, &["last_payment_error", "code"]))
                        .unwrap_or("card_declined")
                        .to_owned(),
                    provider_ref: Some(id.to_owned()),
                }),
                "requires_action" => Ok(ChargeResult::Declined {
                    code: "authentication_required".to_owned(),
                    provider_ref: Some(id.to_owned()),
                }),
                other => Err(malformed(&format!(
                    "unexpected PaymentIntent status `{}`",
                    other.chars().take(40).collect::<String>()
                ))),
            }
        }
        Reply::Refused(body) => {
            let Some(code) = error_code(&body) else {
                return Err(malformed("the error answer has no error code"));
            };
            Ok(ChargeResult::Declined {
                code,
                provider_ref: str_at(&body, &["error", "payment_intent", "id"]).map(str::to_owned),
            })
        }
    }
}

fn refund_result(a: Answer) -> Result<RefundResult, ProviderError> {
    match reply(a)? {
        Reply::Done(body) => {
            let id = str_at(&body, &["id"]).ok_or_else(|| malformed("the Refund has no id"))?;
            match str_at(&body, &["status"]) {
                Some("succeeded" | "pending") => Ok(RefundResult::Succeeded {
                    provider_ref: id.to_owned(),
                }),
                Some(s @ ("failed" | "canceled")) => Ok(RefundResult::Rejected {
                    code: str_at(&body, &["failure_reason"]).unwrap_or(s).to_owned(),
                }),
                _ => Err(malformed("the Refund has an unexpected status")),
            }
        }
        Reply::Refused(body) => Ok(RefundResult::Rejected {
            code: error_code(&body).unwrap_or_else(|| "refund_rejected".to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_encoded_as_stripe_reads_them() {
        let s = form_encode(&[
            ("metadata[reason]", "a b&c=d/é".to_owned()),
            ("amount", "100".to_owned()),
        ]);
        assert_eq!(s, "metadata%5Breason%5D=a+b%26c%3Dd%2F%C3%A9&amount=100");
    }

    #[test]
    fn a_402_card_error_is_a_decline_with_its_decline_code() {
        let body = serde_json::json!({"error": {"type": "card_error", "code": "card_declined",
            "decline_code": "insufficient_funds", "payment_intent": {"id": "pi_1"}}});
        let r = charge_result(Answer {
            status: 402,
            body: Some(body),
        });
        assert!(
            matches!(r, Ok(ChargeResult::Declined { ref code, ref provider_ref })
            if code == "insufficient_funds" && provider_ref.as_deref() == Some("pi_1"))
        );
    }

    #[test]
    fn a_503_or_a_409_is_a_fault() {
        for status in [503, 409, 429, 401] {
            let r = charge_result(Answer { status, body: None });
            assert!(
                matches!(r, Err(ProviderError::Fault { kind: FaultKind::Status(s), .. }) if s == status)
            );
        }
    }
}
