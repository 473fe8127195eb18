//! HTTP handlers under `/api/v1/notifications`, their bodies and their
//! OpenAPI annotations. Role rules live in the service; this layer parses
//! input (422 listing fields) and renders problems.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use agora_kernel::http::NoBody;
use agora_kernel::pagination::parse_limit;
use agora_kernel::{CallContext, FieldErrors, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::domain::models::{
    Attempt, Channel, ChannelChoice, Email, ListFilter, Notification, NotificationId, Phone,
    Preferences, PushToken, Status,
};
use crate::domain::service::{
    NotificationDetail, NotificationError, NotificationService, decode_cursor,
};

impl From<NotificationError> for Problem {
    fn from(e: NotificationError) -> Self {
        match e {
            NotificationError::Forbidden(detail) => Problem::forbidden(detail),
            NotificationError::NotFound => Problem::not_found("no such notification"),
            NotificationError::NotDead(status) => Problem::conflict(format!(
                "only a dead notification can be retried; this one is {status}"
            )),
            NotificationError::Unexpected(cause) => Problem::unexpected(&cause, "notification"),
        }
    }
}

/// One notification.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationBody {
    pub id: uuid::Uuid,
    /// The customer it is for (the token's `sub`).
    pub customer_id: String,
    /// `email`, `sms` or `push`.
    #[schema(schema_with = channel_schema, example = "email")]
    pub channel: String,
    /// The event kind without prefix and version, e.g. `order_confirmed`.
    #[schema(example = "order_confirmed")]
    pub template: String,
    /// `pending`, `sent`, `retrying`, `dead` or `skipped`.
    #[schema(schema_with = status_schema, example = "sent")]
    pub status: String,
    /// E-mail address, phone number or push token; null when none was known.
    pub recipient: Option<String>,
    /// E-mail only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The error of the last failed attempt, or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The integration event it came from.
    pub event_id: uuid::Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&Notification> for NotificationBody {
    fn from(n: &Notification) -> Self {
        Self {
            id: n.id.as_uuid(),
            customer_id: n.customer_id.clone(),
            channel: n.channel.as_str().to_owned(),
            template: n.template.as_str().to_owned(),
            status: n.status.as_str().to_owned(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            attempts: n.attempts,
            last_error: n.last_error.clone(),
            event_id: n.event_id,
            created_at: n.created_at,
            sent_at: n.sent_at,
        }
    }
}

/// A page of notifications, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationBody>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptBody {
    /// 1 for the first attempt.
    pub number: u32,
    pub attempted_at: chrono::DateTime<chrono::Utc>,
    /// `sent`, `failed` (transient, retried) or `rejected` (permanent).
    #[schema(schema_with = outcome_schema)]
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Attempt> for AttemptBody {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            attempted_at: a.attempted_at,
            outcome: a.outcome.as_str().to_owned(),
            error: a.error.clone(),
        }
    }
}

/// A notification with the message it carries and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationDetailBody {
    #[serde(flatten)]
    pub notification: NotificationBody,
    /// The rendered text body.
    pub body: String,
    /// Every delivery attempt, oldest first.
    pub history: Vec<AttemptBody>,
}

impl From<&NotificationDetail> for NotificationDetailBody {
    fn from(d: &NotificationDetail) -> Self {
        Self {
            notification: NotificationBody::from(&d.notification),
            body: d.notification.body_text.clone(),
            history: d.attempts.iter().map(AttemptBody::from).collect(),
        }
    }
}

/// Which channels the customer wants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelsBody {
    /// Default true.
    #[serde(default = "yes")]
    pub email: bool,
    /// Default false; needs `phone`.
    #[serde(default)]
    pub sms: bool,
    /// Default false; needs `push_token`.
    #[serde(default)]
    pub push: bool,
}

fn yes() -> bool {
    true
}

impl Default for ChannelsBody {
    fn default() -> Self {
        Self {
            email: true,
            sms: false,
            push: false,
        }
    }
}

/// A customer's notification preferences.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"email": "alice@example.com", "channels": {"email": true, "sms": false, "push": false}}))]
#[serde(deny_unknown_fields)]
pub struct PreferencesBody {
    /// Where e-mail goes; overrides the address carried in order events
    /// (by default the token's `email` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "alice@example.com")]
    pub email: Option<String>,
    /// E.164, e.g. `+4915123456789`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_token: Option<String>,
    #[serde(default)]
    pub channels: ChannelsBody,
}

impl From<&Preferences> for PreferencesBody {
    fn from(p: &Preferences) -> Self {
        Self {
            email: p.email.as_ref().map(|e| e.as_str().to_owned()),
            phone: p.phone.as_ref().map(|e| e.as_str().to_owned()),
            push_token: p.push_token.as_ref().map(|e| e.as_str().to_owned()),
            channels: ChannelsBody {
                email: p.channels.email,
                sms: p.channels.sms,
                push: p.channels.push,
            },
        }
    }
}

impl PreferencesBody {
    /// Parse into domain preferences (the customer id is set by the service).
    ///
    /// # Errors
    /// 422 listing every bad field.
    pub fn try_into_domain(self) -> Result<Preferences, Problem> {
        let mut errors = FieldErrors::default();
        let nonblank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let email = nonblank(self.email).and_then(|e| errors.check("email", Email::parse(&e)));
        let phone = nonblank(self.phone).and_then(|e| errors.check("phone", Phone::parse(&e)));
        let push_token = self
            .push_token
            .and_then(|e| errors.check("push_token", PushToken::parse(&e)));
        if self.channels.sms && phone.is_none() && !errors_has(&errors, "phone") {
            errors.add("channels.sms", "SMS needs a phone number");
        }
        if self.channels.push && push_token.is_none() && !errors_has(&errors, "push_token") {
            errors.add("channels.push", "push needs a push_token");
        }
        errors.into_result()?;
        Ok(Preferences {
            customer_id: String::new(),
            email,
            phone,
            push_token,
            channels: ChannelChoice {
                email: self.channels.email,
                sms: self.channels.sms,
                push: self.channels.push,
            },
        })
    }
}

fn errors_has(errors: &FieldErrors, field: &str) -> bool {
    errors.clone().into_map().contains_key(field)
}

/// Filters and paging of `GET /notifications`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Staff only; a customer always sees their own.
    pub customer_id: Option<String>,
    /// Only notifications in this status.
    #[param(schema_with = status_param_schema)]
    pub status: Option<String>,
    /// Only notifications on this channel.
    #[param(schema_with = channel_param_schema)]
    pub channel: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
}

impl ListQuery {
    fn try_into_filter(self) -> Result<ListFilter, Problem> {
        let mut errors = FieldErrors::default();
        let status = self
            .status
            .and_then(|s| errors.check("status", Status::parse(&s)));
        let channel = self
            .channel
            .and_then(|s| errors.check("channel", Channel::parse(&s)));
        let before = self.cursor.and_then(|c| {
            let id = decode_cursor(&c);
            if id.is_none() {
                errors.add("cursor", "not a cursor this endpoint handed out");
            }
            id
        });
        let customer_id = self.customer_id.filter(|c| {
            let ok = !c.is_empty() && c.len() <= 255;
            if !ok {
                errors.add("customer_id", "must be 1 to 255 characters");
            }
            ok
        });
        let limit = match parse_limit(self.limit.as_deref()) {
            Ok(l) => Some(l),
            Err(p) => {
                for (field, messages) in p.errors {
                    for m in messages {
                        errors.add(&field, m);
                    }
                }
                None
            }
        };
        errors.into_result()?;
        Ok(ListFilter {
            customer_id,
            status,
            channel,
            before,
            limit: limit.unwrap_or(agora_kernel::pagination::DEFAULT_LIMIT),
        })
    }
}

fn string_enum(values: impl IntoIterator<Item = &'static str>) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(values))
        .build()
}

fn status_schema() -> utoipa::openapi::Object {
    string_enum(Status::ALL.map(Status::as_str))
}

fn channel_schema() -> utoipa::openapi::Object {
    string_enum(Channel::ALL.map(Channel::as_str))
}

/// For query parameters, whose doc comment utoipa drops with `schema_with`.
fn status_param_schema() -> utoipa::openapi::Object {
    let mut s = status_schema();
    s.description = Some("Only notifications in this status.".to_owned());
    s
}

fn channel_param_schema() -> utoipa::openapi::Object {
    let mut s = channel_schema();
    s.description = Some("Only notifications on this channel.".to_owned());
    s
}

fn outcome_schema() -> utoipa::openapi::Object {
    use crate::domain::models::AttemptOutcome::{Failed, Rejected, Sent};
    string_enum([Sent, Failed, Rejected].map(|o| o.as_str()))
}

fn parse_id(raw: &str) -> Result<NotificationId, Problem> {
    NotificationId::parse(raw).map_err(|_| Problem::not_found("no such notification"))
}

/// List notifications: a customer's own, or (staff) everyone's with filters.
#[utoipa::path(get, path = "/notifications", tag = "notifications", operation_id = "list_notifications", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = NotificationPage),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(caller = %ctx.principal.subject))]
pub async fn list(
    ctx: CallContext,
    service: web::Data<NotificationService>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let filter = query.into_inner().try_into_filter()?;
    let page = service.list(&ctx, filter).await?;
    Ok(HttpResponse::Ok().json(NotificationPage {
        items: page.items.iter().map(NotificationBody::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One notification with its attempts (its owner or staff; 404 for anyone else).
#[utoipa::path(get, path = "/notifications/{id}", tag = "notifications", operation_id = "get_notification", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 200, body = NotificationDetailBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(caller = %ctx.principal.subject))]
pub async fn get(
    ctx: CallContext,
    service: web::Data<NotificationService>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = parse_id(&id)?;
    let detail = service.get(&ctx, id).await?;
    Ok(HttpResponse::Ok().json(NotificationDetailBody::from(&detail)))
}

/// The caller's notification preferences (customers).
#[utoipa::path(get, path = "/notifications/preferences", tag = "notifications", operation_id = "get_notification_preferences", security(("bearer" = [])),
    responses(
        (status = 200, body = PreferencesBody),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(caller = %ctx.principal.subject))]
pub async fn get_preferences(
    ctx: CallContext,
    service: web::Data<NotificationService>,
) -> Result<HttpResponse, Problem> {
    let prefs = service.preferences(&ctx).await?;
    Ok(HttpResponse::Ok().json(PreferencesBody::from(&prefs)))
}

/// Replace the caller's notification preferences (customers).
#[utoipa::path(put, path = "/notifications/preferences", tag = "notifications", operation_id = "put_notification_preferences", security(("bearer" = [])),
    request_body = PreferencesBody,
    responses(
        (status = 200, body = PreferencesBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(caller = %ctx.principal.subject))]
pub async fn put_preferences(
    ctx: CallContext,
    service: web::Data<NotificationService>,
    body: web::Json<PreferencesBody>,
) -> Result<HttpResponse, Problem> {
    let prefs = body.into_inner().try_into_domain()?;
    let saved = service.put_preferences(&ctx, prefs).await?;
    Ok(HttpResponse::Ok().json(PreferencesBody::from(&saved)))
}

/// Put a dead notification back in the delivery queue (staff).
#[utoipa::path(post, path = "/notifications/{id}/retry", tag = "notifications", operation_id = "retry_notification", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 200, body = NotificationBody, description = "Queued again, status `pending`"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Not dead"),
    ))]
#[tracing::instrument(skip_all, fields(caller = %ctx.principal.subject))]
pub async fn retry(
    ctx: CallContext,
    service: web::Data<NotificationService>,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let id = parse_id(&id)?;
    let n = service.retry(&ctx, id).await?;
    Ok(HttpResponse::Ok().json(NotificationBody::from(&n)))
}

/// Register the routes (the host mounts them under `/api/v1`), in one scope
/// for the module's path prefix: the router tests the prefix once instead of
/// every resource's pattern in turn.
pub fn routes(cfg: &mut web::ServiceConfig, service: Arc<NotificationService>) {
    cfg.service(
        web::scope("/notifications")
            .app_data(web::Data::from(service))
            .service(web::resource("").route(web::get().to(list)))
            .service(
                web::resource("/preferences")
                    .route(web::get().to(get_preferences))
                    .route(web::put().to(put_preferences)),
            )
            .service(web::resource("/{id}").route(web::get().to(get)))
            .service(web::resource("/{id}/retry").route(web::post().to(retry))),
    );
}

#[derive(OpenApi)]
#[openapi(
    paths(list, get, get_preferences, put_preferences, retry),
    components(schemas(
        NotificationBody,
        NotificationPage,
        NotificationDetailBody,
        AttemptBody,
        PreferencesBody,
        ChannelsBody,
        Problem
    )),
    tags((name = "notifications", description = "What customers were told about their orders, and their preferences"))
)]
pub(crate) struct NotificationDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_documents_every_route_with_problem_error_bodies() {
        let spec = serde_json::to_value(NotificationDoc::openapi()).unwrap_or_default();
        let paths = spec["paths"].as_object().cloned().unwrap_or_default();
        let mut found: Vec<String> = vec![];
        for (path, item) in &paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                found.push(format!("{method} {path}"));
                for (status, response) in op["responses"].as_object().into_iter().flatten() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        found.sort();
        assert_eq!(
            found,
            vec![
                "get /notifications",
                "get /notifications/preferences",
                "get /notifications/{id}",
                "post /notifications/{id}/retry",
                "put /notifications/preferences",
            ]
        );
    }
}
