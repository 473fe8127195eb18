//! The inventory's HTTP surface under `/api/v1`: request bodies parsed into
//! domain types (422 listing every bad field), domain errors rendered as
//! problem+json, and the utoipa annotations for the OpenAPI fragment.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use agora_kernel::http::NoBody;
use agora_kernel::pagination::parse_limit;
use agora_kernel::{CallContext, Currency, FieldErrors, Money, Problem};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::models::{
    Adjustment, Delta, Description, LineRequest, Movement, NewProduct, NewReservation,
    NewWarehouse, Note, OrderRef, ParseError, Product, ProductName, ProductPatch, Quantity,
    Receipt, Reservation, ReservationId, Shortage, Sku, StockSummary, Threshold, Ttl, Warehouse,
    WarehouseCode,
};
use crate::domain::ports::{
    CatalogueError, ReadError, ReservationError, ReservationStep, ReserveError, StockError,
    WarehouseError,
};
use crate::domain::service::InventoryService;

// ---- errors -----------------------------------------------------------------------------

fn unexpected(e: &anyhow::Error) -> Problem {
    Problem::unexpected(e, "inventory")
}

fn field(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid_field(field, message)
}

impl From<CatalogueError> for Problem {
    fn from(e: CatalogueError) -> Self {
        match e {
            CatalogueError::DuplicateSku(_) => Problem::conflict(e.to_string()),
            CatalogueError::NotFound(_) => Problem::not_found(e.to_string()),
            CatalogueError::Forbidden(why) => Problem::forbidden(why),
            CatalogueError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<WarehouseError> for Problem {
    fn from(e: WarehouseError) -> Self {
        match e {
            WarehouseError::Duplicate(_) => Problem::conflict(e.to_string()),
            WarehouseError::Forbidden(why) => Problem::forbidden(why),
            WarehouseError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<StockError> for Problem {
    fn from(e: StockError) -> Self {
        match e {
            StockError::UnknownProduct(_) => field("sku", e.to_string()),
            StockError::UnknownWarehouse(_) => field("warehouse", e.to_string()),
            StockError::WouldUnderflow { .. } => Problem::new(
                StatusCode::CONFLICT,
                "stock-underflow",
                "Stock would fall below zero or below what is reserved",
                e.to_string(),
            ),
            StockError::Forbidden(why) => Problem::forbidden(why),
            StockError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<ReadError> for Problem {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::NotFound(what) => Problem::not_found(what),
            ReadError::BadCursor => field("cursor", e.to_string()),
            ReadError::Forbidden(why) => Problem::forbidden(why),
            ReadError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<ReserveError> for Problem {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::InvalidLines(why) => field("lines", why),
            ReserveError::UnknownProducts(lines) => {
                let mut errors = FieldErrors::default();
                for (i, sku) in lines {
                    errors.add(
                        &format!("lines[{i}].sku"),
                        format!("no active product with sku {sku}"),
                    );
                }
                Problem::validation(errors.into_map())
            }
            // `shortages` (documented as `InsufficientStock`) lists each short line.
            ReserveError::Insufficient(short) => {
                let skus: Vec<&str> = short.iter().map(|s| s.sku.as_str()).collect();
                let mut p = Problem::new(
                    StatusCode::CONFLICT,
                    "insufficient-stock",
                    "Insufficient stock",
                    format!(
                        "not enough stock for: {}; nothing was reserved",
                        skus.join(", ")
                    ),
                );
                for s in &short {
                    p.errors.insert(
                        format!("lines[{}].quantity", s.line),
                        vec![format!(
                            "{} of {} requested, {} available",
                            s.sku, s.requested, s.available
                        )],
                    );
                }
                let shortages: Vec<ShortageBody> = short.iter().map(ShortageBody::from).collect();
                p.with_extension("shortages", serde_json::json!(shortages))
            }
            ReserveError::IdConflict(_) => Problem::conflict(e.to_string()),
            ReserveError::Forbidden(why) => Problem::forbidden(why),
            ReserveError::Unexpected(e) => unexpected(&e),
        }
    }
}

impl From<ReservationError> for Problem {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::NotFound(_) => Problem::not_found(e.to_string()),
            // `reservation_status` says where it stands (documented on the routes).
            ReservationError::InvalidTransition { from, .. } => Problem::conflict(e.to_string())
                .with_extension("reservation_status", serde_json::json!(from)),
            ReservationError::Expired(_) => Problem::new(
                StatusCode::CONFLICT,
                "reservation-expired",
                "Reservation expired",
                e.to_string(),
            ),
            ReservationError::Forbidden(why) => Problem::forbidden(why),
            ReservationError::Unexpected(e) => unexpected(&e),
        }
    }
}

// ---- bodies -------------------------------------------------------------------------------

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn price(errors: &mut FieldErrors, minor: i64, currency: &str) -> Option<Money> {
    let currency = errors.check("currency", Currency::parse(currency));
    if minor < 0 {
        errors.add("price_minor", "must not be negative");
        return None;
    }
    currency.map(|c| Money::new(minor, c))
}

/// A new catalogue entry.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "LAMP-DESK", "name": "Desk lamp", "description": "Home: LED desk lamp, warm white", "price_minor": 2990, "currency": "EUR", "low_stock_threshold": 5}))]
#[serde(deny_unknown_fields)]
pub struct CreateProductRequest {
    /// 1–64 of `[A-Za-z0-9._-]`.
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    /// Price in minor units of `currency` (cents), ≥ 0.
    pub price_minor: i64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// `inventory.low_stock.v1` fires when available stock falls below it (default 5).
    pub low_stock_threshold: Option<i64>,
}

impl CreateProductRequest {
    fn try_into_domain(self) -> Result<NewProduct, Problem> {
        let mut errors = FieldErrors::default();
        let sku = errors.check("sku", Sku::parse(&self.sku));
        let name = errors.check("name", ProductName::parse(&self.name));
        let description = self
            .description
            .as_deref()
            .map(|d| errors.check("description", Description::parse(d)));
        let price = price(&mut errors, self.price_minor, &self.currency);
        let threshold = match self.low_stock_threshold {
            None => Some(Threshold::default()),
            Some(t) => errors.check("low_stock_threshold", Threshold::new(t)),
        };
        errors.into_result()?;
        match (sku, name, price, threshold) {
            (Some(sku), Some(name), Some(price), Some(low_stock_threshold)) => Ok(NewProduct {
                sku,
                name,
                description: description.flatten(),
                price,
                low_stock_threshold,
            }),
            _ => Err(Problem::internal()),
        }
    }
}

/// A partial update: absent fields stay; `description: null` clears it;
/// `price_minor` and `currency` go together.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"price_minor": 1799, "currency": "EUR"}))]
pub struct UpdateProductRequest {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub price_minor: Option<i64>,
    pub currency: Option<String>,
    pub low_stock_threshold: Option<i64>,
}

impl UpdateProductRequest {
    fn try_into_domain(self) -> Result<ProductPatch, Problem> {
        let mut errors = FieldErrors::default();
        let mut patch = ProductPatch::default();
        if let Some(n) = &self.name {
            patch.name = errors.check("name", ProductName::parse(n));
        }
        if let Some(d) = &self.description {
            patch.description = match d {
                None => Some(None),
                Some(d) => errors.check("description", Description::parse(d)).map(Some),
            };
        }
        match (self.price_minor, self.currency.as_deref()) {
            (Some(minor), Some(currency)) => patch.price = price(&mut errors, minor, currency),
            (Some(_), None) => errors.add("currency", "is required with price_minor"),
            (None, Some(_)) => errors.add("price_minor", "is required with currency"),
            (None, None) => {}
        }
        if let Some(t) = self.low_stock_threshold {
            patch.low_stock_threshold = errors.check("low_stock_threshold", Threshold::new(t));
        }
        if errors.is_empty() && patch.is_empty() {
            errors.add(
                "body",
                "name, description, price_minor + currency or low_stock_threshold is required",
            );
        }
        errors.into_result()?;
        Ok(patch)
    }
}

/// A catalogue entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductResponse {
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_minor: i64,
    pub currency: String,
    /// `false` once deleted (soft delete).
    pub active: bool,
    pub low_stock_threshold: i64,
    #[serde(serialize_with = "agora_kernel::http::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "agora_kernel::http::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductResponse {
    fn from(p: Product) -> Self {
        Self {
            sku: p.sku.into(),
            name: p.name,
            description: p.description,
            price_minor: p.price.minor(),
            currency: p.price.currency().code().to_owned(),
            active: p.active,
            low_stock_threshold: p.low_stock_threshold,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<ProductResponse>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A new warehouse.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"code": "HAM", "name": "Hamburg"}))]
#[serde(deny_unknown_fields)]
pub struct CreateWarehouseRequest {
    /// 1–32 of `[A-Za-z0-9._-]`.
    pub code: String,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WarehouseResponse {
    pub code: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<Warehouse> for WarehouseResponse {
    fn from(w: Warehouse) -> Self {
        Self {
            code: w.code.into(),
            name: w.name,
            created_at: w.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WarehouseList {
    pub items: Vec<WarehouseResponse>,
    pub next_cursor: Option<String>,
}

/// Stock arriving in a warehouse.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "TSHIRT-RED-M", "warehouse": "BER", "quantity": 100, "reference": "PO-1234"}))]
#[serde(deny_unknown_fields)]
pub struct ReceiptRequest {
    pub sku: String,
    pub warehouse: String,
    /// 1–1,000,000.
    pub quantity: i64,
    pub reference: Option<String>,
}

/// A correction of on-hand stock (damage, count).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"sku": "TSHIRT-RED-M", "warehouse": "BER", "delta": -2, "reason": "damaged in transit"}))]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    pub sku: String,
    pub warehouse: String,
    /// Non-zero, −1,000,000 to 1,000,000.
    pub delta: i64,
    pub reason: String,
}

fn sku_and_warehouse(
    errors: &mut FieldErrors,
    sku: &str,
    warehouse: &str,
) -> (Option<Sku>, Option<WarehouseCode>) {
    (
        errors.check("sku", Sku::parse(sku)),
        errors.check("warehouse", WarehouseCode::parse(warehouse)),
    )
}

impl ReceiptRequest {
    fn try_into_domain(self) -> Result<Receipt, Problem> {
        let mut errors = FieldErrors::default();
        let (sku, warehouse) = sku_and_warehouse(&mut errors, &self.sku, &self.warehouse);
        let quantity = errors.check("quantity", Quantity::new(self.quantity));
        let reference = self
            .reference
            .as_deref()
            .map(|r| errors.check("reference", Note::parse(r, "reference")));
        errors.into_result()?;
        match (sku, warehouse, quantity) {
            (Some(sku), Some(warehouse), Some(quantity)) => Ok(Receipt {
                sku,
                warehouse,
                quantity,
                reference: reference.flatten(),
            }),
            _ => Err(Problem::internal()),
        }
    }
}

impl AdjustmentRequest {
    fn try_into_domain(self) -> Result<Adjustment, Problem> {
        let mut errors = FieldErrors::default();
        let (sku, warehouse) = sku_and_warehouse(&mut errors, &self.sku, &self.warehouse);
        let delta = errors.check("delta", Delta::new(self.delta));
        let reason = errors.check("reason", Note::parse(&self.reason, "reason"));
        errors.into_result()?;
        match (sku, warehouse, delta, reason) {
            (Some(sku), Some(warehouse), Some(delta), Some(reason)) => Ok(Adjustment {
                sku,
                warehouse,
                delta,
                reason,
            }),
            _ => Err(Problem::internal()),
        }
    }
}

/// One change of one stock level, with the levels it left.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementResponse {
    pub id: Uuid,
    pub sku: String,
    pub warehouse: String,
    /// `receipt`, `adjustment`, `reservation`, `release` or `commit`.
    #[schema(schema_with = movement_kind_schema)]
    pub kind: String,
    /// Units moved (negative for a downward adjustment).
    pub quantity: i64,
    /// Levels after the change.
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    /// The `sub` of who caused it.
    pub actor: String,
    pub reason: Option<String>,
    pub reference: Option<String>,
    pub reservation_id: Option<Uuid>,
    pub correlation_id: String,
    pub at: DateTime<Utc>,
}

impl From<Movement> for MovementResponse {
    fn from(m: Movement) -> Self {
        Self {
            id: m.id,
            sku: m.sku.into(),
            warehouse: m.warehouse.into(),
            kind: m.kind.as_str().to_owned(),
            quantity: m.quantity,
            on_hand: m.on_hand,
            reserved: m.reserved,
            available: m.on_hand - m.reserved,
            actor: m.actor,
            reason: m.reason,
            reference: m.reference,
            reservation_id: m.reservation_id.map(|r| r.0),
            correlation_id: m.correlation_id,
            at: m.at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementList {
    pub items: Vec<MovementResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WarehouseStock {
    pub warehouse: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// Stock of a sku, in total and per warehouse.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockResponse {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub warehouses: Vec<WarehouseStock>,
}

impl From<StockSummary> for StockResponse {
    fn from(s: StockSummary) -> Self {
        Self {
            on_hand: s.on_hand(),
            reserved: s.reserved(),
            available: s.available(),
            warehouses: s
                .warehouses
                .into_iter()
                .map(|w| WarehouseStock {
                    available: w.available(),
                    warehouse: w.warehouse.into(),
                    on_hand: w.on_hand,
                    reserved: w.reserved,
                })
                .collect(),
            sku: s.sku.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationLineRequest {
    pub sku: String,
    /// 1–1,000,000.
    pub quantity: i64,
}

/// A line short of stock, in the `shortages` of an `insufficient-stock` problem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShortageBody {
    /// Index of the line in the request.
    pub line: usize,
    pub sku: String,
    pub requested: i64,
    pub available: i64,
}

impl From<&Shortage> for ShortageBody {
    fn from(s: &Shortage) -> Self {
        Self {
            line: s.line,
            sku: s.sku.as_str().to_owned(),
            requested: s.requested,
            available: s.available,
        }
    }
}

/// The 409 of `POST /reservations` when stock is short: a problem+json
/// document (`urn:agora:problem:insufficient-stock`) with the short lines.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "urn:agora:problem:insufficient-stock", "title": "Insufficient stock", "status": 409, "detail": "not enough stock for: MUG; nothing was reserved", "errors": {"lines[0].quantity": ["MUG of 3 requested, 1 available"]}, "shortages": [{"line": 0, "sku": "MUG", "requested": 3, "available": 1}]}))]
pub struct InsufficientStock {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub errors: std::collections::BTreeMap<String, Vec<String>>,
    pub shortages: Vec<ShortageBody>,
}

/// The 409 of a reservation transition that does not apply: a problem+json
/// document with the reservation's current status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "urn:agora:problem:conflict", "title": "Conflict", "status": 409, "detail": "reservation … is released and cannot be confirmed", "reservation_status": "released"}))]
pub struct ReservationConflict {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// `held`, `confirmed`, `committed` or `released`.
    pub reservation_status: String,
}

/// Reserve every line or none. Idempotent on `reservation_id`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"reservation_id": "0191d0c4-8a47-7c3e-9b5e-2f1d8a3c4b5a", "order_id": "0191d0c4-8a47-7c3e-9b5e-000000000001", "lines": [{"sku": "TSHIRT-RED-M", "quantity": 2}], "ttl_secs": 900}))]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// A UUID the caller picks; repeating the request with it replays the result.
    pub reservation_id: String,
    pub order_id: String,
    /// 1–100 lines with distinct skus.
    pub lines: Vec<ReservationLineRequest>,
    /// How long the reservation is held before the sweeper releases it
    /// (default: the `reservation_ttl_secs` setting; 1 to 604800).
    pub ttl_secs: Option<i64>,
}

impl ReservationRequest {
    /// Parse into the domain request, listing every bad field.
    ///
    /// # Errors
    /// A 422 [`Problem`] listing each invalid field.
    pub fn try_into_domain(self) -> Result<NewReservation, Problem> {
        let mut errors = FieldErrors::default();
        let id = errors.check(
            "reservation_id",
            Uuid::parse_str(&self.reservation_id)
                .map(ReservationId)
                .map_err(|_| ParseError("must be a UUID".into())),
        );
        let order_id = errors.check("order_id", OrderRef::parse(&self.order_id));
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, l) in self.lines.iter().enumerate() {
            let sku = errors.check(&format!("lines[{i}].sku"), Sku::parse(&l.sku));
            let quantity = errors.check(&format!("lines[{i}].quantity"), Quantity::new(l.quantity));
            if let (Some(sku), Some(quantity)) = (sku, quantity) {
                lines.push(LineRequest { sku, quantity });
            }
        }
        if errors.is_empty() {
            errors.check("lines", NewReservation::check_lines(&lines));
        }
        let ttl = self
            .ttl_secs
            .map(|t| errors.check("ttl_secs", Ttl::from_secs(t)));
        errors.into_result()?;
        match (id, order_id) {
            (Some(id), Some(order_id)) => Ok(NewReservation {
                id,
                order_id,
                lines,
                ttl: ttl.flatten(),
            }),
            _ => Err(Problem::internal()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AllocationResponse {
    pub warehouse: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservedLineResponse {
    pub sku: String,
    pub quantity: i64,
    /// Where the units are taken from: most available warehouse first.
    pub allocations: Vec<AllocationResponse>,
}

/// A stock reservation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationResponse {
    pub reservation_id: Uuid,
    pub order_id: String,
    /// `held`, `confirmed`, `committed` or `released`.
    #[schema(schema_with = reservation_status_schema)]
    pub status: String,
    pub lines: Vec<ReservedLineResponse>,
    /// When the sweeper releases it; set only while `held`.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Reservation> for ReservationResponse {
    fn from(r: Reservation) -> Self {
        Self {
            reservation_id: r.id.0,
            order_id: r.order_id.as_str().to_owned(),
            status: r.status.as_str().to_owned(),
            lines: r
                .lines
                .into_iter()
                .map(|l| ReservedLineResponse {
                    sku: l.sku.into(),
                    quantity: l.quantity,
                    allocations: l
                        .allocations
                        .into_iter()
                        .map(|a| AllocationResponse {
                            warehouse: a.warehouse.into(),
                            quantity: a.quantity,
                        })
                        .collect(),
                })
                .collect(),
            expires_at: r.expires_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `?limit=&cursor=`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1–100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /products`: a page of the catalogue, or the products of a
/// list of skus (a price quote for an order).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProductListQuery {
    /// 1–100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Comma-separated skus (1–100): just these products, in this order,
    /// unknown ones left out; no paging (not with `cursor`).
    pub skus: Option<String>,
}

/// The most skus one quote may ask for.
pub const MAX_QUOTE_SKUS: usize = 100;

fn parse_skus(raw: &str) -> Result<Vec<Sku>, Problem> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    if parts.is_empty() || parts.len() > MAX_QUOTE_SKUS || parts.iter().any(|p| p.is_empty()) {
        return Err(field(
            "skus",
            format!("1 to {MAX_QUOTE_SKUS} comma-separated skus"),
        ));
    }
    parts
        .iter()
        .map(|p| Sku::parse(p).map_err(|e| field("skus", e.to_string())))
        .collect()
}

const MOVEMENT_KINDS: [&str; 5] = ["receipt", "adjustment", "reservation", "release", "commit"];
const RESERVATION_STATUSES: [&str; 4] = ["held", "confirmed", "committed", "released"];

fn string_enum(values: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

fn movement_kind_schema() -> utoipa::openapi::Object {
    string_enum(&MOVEMENT_KINDS)
}

fn reservation_status_schema() -> utoipa::openapi::Object {
    string_enum(&RESERVATION_STATUSES)
}

fn path_sku(raw: &str) -> Result<Sku, Problem> {
    Sku::parse(raw).map_err(|_| Problem::not_found(format!("no product with sku {raw}")))
}

fn path_reservation(raw: &str) -> Result<ReservationId, Problem> {
    Uuid::parse_str(raw)
        .map(ReservationId)
        .map_err(|_| Problem::not_found(format!("no reservation {raw}")))
}

// ---- handlers --------------------------------------------------------------------------------

type Api = web::Data<InventoryService>;

/// Add a product to the catalogue (staff).
#[utoipa::path(post, path = "/products", tag = "inventory", security(("bearer" = [])),
    request_body = CreateProductRequest,
    responses(
        (status = 201, body = ProductResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "duplicate sku", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_product(
    api: Api,
    ctx: CallContext,
    body: web::Json<CreateProductRequest>,
) -> Result<HttpResponse, Problem> {
    // Roles first: a caller who may not do this learns nothing from validation.
    api.authorize_catalogue(&ctx)?;
    let new = body.into_inner().try_into_domain()?;
    let p = api.create_product(&ctx, new).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/products/{}", p.sku)))
        .json(ProductResponse::from(p)))
}

/// The catalogue by sku (inactive products only for staff), or with `skus`
/// the products of those skus (a price quote).
#[utoipa::path(get, path = "/products", tag = "inventory", security(("bearer" = [])),
    params(ProductListQuery),
    responses(
        (status = 200, body = ProductList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_products(
    api: Api,
    ctx: CallContext,
    q: web::Query<ProductListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = parse_limit(q.limit.as_deref())?;
    if let Some(raw) = q.skus.as_deref() {
        if q.cursor.is_some() {
            return Err(field("cursor", "a quote by `skus` has no pages"));
        }
        let skus = parse_skus(raw)?;
        let items = api.quote(&ctx, &skus).await?;
        return Ok(HttpResponse::Ok().json(ProductList {
            items: items.into_iter().map(Into::into).collect(),
            next_cursor: None,
        }));
    }
    let page = api.products(&ctx, q.cursor.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(ProductList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One product.
#[utoipa::path(get, path = "/products/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku", example = "TSHIRT-RED-M")),
    responses(
        (status = 200, body = ProductResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_product(
    api: Api,
    ctx: CallContext,
    sku: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let sku = path_sku(&sku)?;
    let p = api.product(&ctx, &sku).await?;
    Ok(HttpResponse::Ok().json(ProductResponse::from(p)))
}

/// Change a product's name, description, price or threshold (staff).
#[utoipa::path(patch, path = "/products/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku", example = "TSHIRT-RED-M")),
    request_body = UpdateProductRequest,
    responses(
        (status = 200, body = ProductResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_product(
    api: Api,
    ctx: CallContext,
    sku: web::Path<String>,
    body: web::Json<UpdateProductRequest>,
) -> Result<HttpResponse, Problem> {
    api.authorize_catalogue(&ctx)?;
    let sku = path_sku(&sku)?;
    let patch = body.into_inner().try_into_domain()?;
    let p = api.update_product(&ctx, &sku, patch).await?;
    Ok(HttpResponse::Ok().json(ProductResponse::from(p)))
}

/// Soft-delete a product: `active = false`, it can no longer be reserved (staff).
#[utoipa::path(delete, path = "/products/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku", example = "TSHIRT-RED-M")),
    responses(
        (status = 200, body = ProductResponse),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn delete_product(
    api: Api,
    ctx: CallContext,
    sku: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let sku = path_sku(&sku)?;
    let p = api.deactivate_product(&ctx, &sku).await?;
    Ok(HttpResponse::Ok().json(ProductResponse::from(p)))
}

/// Add a warehouse (staff).
#[utoipa::path(post, path = "/warehouses", tag = "inventory", security(("bearer" = [])),
    request_body = CreateWarehouseRequest,
    responses(
        (status = 201, body = WarehouseResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_warehouse(
    api: Api,
    ctx: CallContext,
    body: web::Json<CreateWarehouseRequest>,
) -> Result<HttpResponse, Problem> {
    // Roles first: a caller who may not do this learns nothing from validation.
    api.authorize_warehouses(&ctx)?;
    let body = body.into_inner();
    let mut errors = FieldErrors::default();
    let code = errors.check("code", WarehouseCode::parse(&body.code));
    let name = errors.check("name", ProductName::parse(&body.name));
    errors.into_result()?;
    let (Some(code), Some(name)) = (code, name) else {
        return Err(Problem::internal());
    };
    let w = api
        .create_warehouse(&ctx, NewWarehouse { code, name })
        .await?;
    Ok(HttpResponse::Created().json(WarehouseResponse::from(w)))
}

/// Warehouses by code.
#[utoipa::path(get, path = "/warehouses", tag = "inventory", security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = WarehouseList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_warehouses(
    api: Api,
    ctx: CallContext,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = parse_limit(q.limit.as_deref())?;
    let page = api.warehouses(&ctx, q.cursor.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(WarehouseList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Receive stock into a warehouse (staff). Answers the movement it recorded.
#[utoipa::path(post, path = "/stock/receipts", tag = "inventory", security(("bearer" = [])),
    request_body = ReceiptRequest,
    responses(
        (status = 201, body = MovementResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad input, unknown sku or warehouse", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn receive(
    api: Api,
    ctx: CallContext,
    body: web::Json<ReceiptRequest>,
) -> Result<HttpResponse, Problem> {
    // Roles first: a caller who may not do this learns nothing from validation.
    api.authorize_stock(&ctx)?;
    let r = body.into_inner().try_into_domain()?;
    let m = api.receive(&ctx, r).await?;
    Ok(HttpResponse::Created().json(MovementResponse::from(m)))
}

/// Correct on-hand stock (staff); 409 when the result would be below zero or
/// below what is reserved, and nothing changes.
#[utoipa::path(post, path = "/stock/adjustments", tag = "inventory", security(("bearer" = [])),
    request_body = AdjustmentRequest,
    responses(
        (status = 201, body = MovementResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "bad input, unknown sku or warehouse", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn adjust(
    api: Api,
    ctx: CallContext,
    body: web::Json<AdjustmentRequest>,
) -> Result<HttpResponse, Problem> {
    // Roles first: a caller who may not do this learns nothing from validation.
    api.authorize_stock(&ctx)?;
    let a = body.into_inner().try_into_domain()?;
    let m = api.adjust(&ctx, a).await?;
    Ok(HttpResponse::Created().json(MovementResponse::from(m)))
}

/// Stock of a sku: on hand, reserved and available, in total and per warehouse.
#[utoipa::path(get, path = "/stock/{sku}", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku", example = "TSHIRT-RED-M")),
    responses(
        (status = 200, body = StockResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_stock(
    api: Api,
    ctx: CallContext,
    sku: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let sku = path_sku(&sku)?;
    let s = api.stock(&ctx, &sku).await?;
    Ok(HttpResponse::Ok().json(StockResponse::from(s)))
}

/// Every change of a sku's stock, newest first (staff).
#[utoipa::path(get, path = "/stock/{sku}/movements", tag = "inventory", security(("bearer" = [])),
    params(("sku" = String, Path, description = "The product's sku", example = "TSHIRT-RED-M"), ListQuery),
    responses(
        (status = 200, body = MovementList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_movements(
    api: Api,
    ctx: CallContext,
    sku: web::Path<String>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let sku = path_sku(&sku)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let page = api
        .movements(&ctx, &sku, q.cursor.as_deref(), limit)
        .await?;
    Ok(HttpResponse::Ok().json(MovementList {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Reserve every line or none (service). 201 when created, 200 when the same
/// request was already served; 409 listing the skus short of stock.
#[utoipa::path(post, path = "/reservations", tag = "inventory", security(("bearer" = [])),
    request_body = ReservationRequest,
    responses(
        (status = 201, body = ReservationResponse),
        (status = 200, description = "replay of an earlier identical request", body = ReservationResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "insufficient stock (`shortages` lists the short lines), or the id is taken by a different request", body = InsufficientStock, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reserve(
    api: Api,
    ctx: CallContext,
    body: web::Json<ReservationRequest>,
) -> Result<HttpResponse, Problem> {
    // Roles first: a caller who may not do this learns nothing from validation.
    api.authorize_reserve(&ctx)?;
    let r = body.into_inner().try_into_domain()?;
    let outcome = api.reserve(&ctx, r).await?;
    let mut response = if outcome.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(ReservationResponse::from(outcome.reservation)))
}

/// A reservation (service, staff).
#[utoipa::path(get, path = "/reservations/{id}", tag = "inventory", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The reservation id")),
    responses(
        (status = 200, body = ReservationResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_reservation(
    api: Api,
    ctx: CallContext,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = path_reservation(&id)?;
    let r = api.reservation(&ctx, id).await?;
    Ok(HttpResponse::Ok().json(ReservationResponse::from(r)))
}

/// Confirm a held reservation: it no longer expires (service). 409 once expired.
#[utoipa::path(post, path = "/reservations/{id}/confirm", tag = "inventory", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The reservation id")),
    responses(
        (status = 200, body = ReservationResponse),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the transition does not apply (`reservation_status` says where it stands), or expired", body = ReservationConflict, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn confirm_reservation(
    api: Api,
    ctx: CallContext,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let id = path_reservation(&id)?;
    let r = api.transition(&ctx, id, ReservationStep::Confirm).await?;
    Ok(HttpResponse::Ok().json(ReservationResponse::from(r)))
}

/// Commit a reservation: the stock leaves on shipment (service). Idempotent.
#[utoipa::path(post, path = "/reservations/{id}/commit", tag = "inventory", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The reservation id")),
    responses(
        (status = 200, body = ReservationResponse),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the transition does not apply (`reservation_status` says where it stands), or expired", body = ReservationConflict, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn commit_reservation(
    api: Api,
    ctx: CallContext,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let id = path_reservation(&id)?;
    let r = api.transition(&ctx, id, ReservationStep::Commit).await?;
    Ok(HttpResponse::Ok().json(ReservationResponse::from(r)))
}

/// Release a reservation: its units become available again (service). Idempotent.
#[utoipa::path(post, path = "/reservations/{id}/release", tag = "inventory", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The reservation id")),
    responses(
        (status = 200, body = ReservationResponse),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "a body other than none or `{}`"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the transition does not apply (`reservation_status` says where it stands), or expired", body = ReservationConflict, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a body with fields"),
    ))]
pub async fn release_reservation(
    api: Api,
    ctx: CallContext,
    id: web::Path<String>,
    _body: NoBody,
) -> Result<HttpResponse, Problem> {
    let id = path_reservation(&id)?;
    let r = api.transition(&ctx, id, ReservationStep::Release).await?;
    Ok(HttpResponse::Ok().json(ReservationResponse::from(r)))
}

/// Register the routes (the host mounts them under `/api/v1`), in one scope
/// per path prefix: the router tests a prefix once instead of every
/// resource's pattern in turn (a regex each, for patterns with segments).
/// Each resource lists its methods, so any other method answers 405.
pub fn configure(cfg: &mut web::ServiceConfig, api: InventoryService) {
    let data = web::Data::new(api);
    cfg.service(
        web::scope("/products")
            .app_data(data.clone())
            .service(
                web::resource("")
                    .route(web::get().to(list_products))
                    .route(web::post().to(create_product)),
            )
            .service(
                web::resource("/{sku}")
                    .route(web::get().to(get_product))
                    .route(web::patch().to(update_product))
                    .route(web::delete().to(delete_product)),
            ),
    )
    .service(
        web::scope("/warehouses").app_data(data.clone()).service(
            web::resource("")
                .route(web::get().to(list_warehouses))
                .route(web::post().to(create_warehouse)),
        ),
    )
    .service(
        web::scope("/stock")
            .app_data(data.clone())
            .service(web::resource("/receipts").route(web::post().to(receive)))
            .service(web::resource("/adjustments").route(web::post().to(adjust)))
            .service(web::resource("/{sku}").route(web::get().to(get_stock)))
            .service(web::resource("/{sku}/movements").route(web::get().to(list_movements))),
    )
    .service(
        web::scope("/reservations")
            .app_data(data)
            .service(web::resource("").route(web::post().to(reserve)))
            .service(web::resource("/{id}").route(web::get().to(get_reservation)))
            .service(web::resource("/{id}/confirm").route(web::post().to(confirm_reservation)))
            .service(web::resource("/{id}/commit").route(web::post().to(commit_reservation)))
            .service(web::resource("/{id}/release").route(web::post().to(release_reservation))),
    );
}

#[derive(OpenApi)]
#[openapi(
    paths(
        create_product, list_products, get_product, update_product, delete_product,
        create_warehouse, list_warehouses, receive, adjust, get_stock, list_movements,
        reserve, get_reservation, confirm_reservation, commit_reservation, release_reservation,
    ),
    components(schemas(
        Problem, CreateProductRequest, UpdateProductRequest, ProductResponse, ProductList,
        CreateWarehouseRequest, WarehouseResponse, WarehouseList, ReceiptRequest, AdjustmentRequest,
        MovementResponse, MovementList, StockResponse, WarehouseStock, ReservationRequest,
        ReservationLineRequest, ReservationResponse, ReservedLineResponse, AllocationResponse,
        ShortageBody, InsufficientStock, ReservationConflict,
    )),
    tags((name = "inventory", description = "Products, warehouses, stock levels and reservations")),
)]
pub(crate) struct InventoryDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::{MovementKind, ReservationStatus};

    #[test]
    fn the_documented_enums_are_the_domains_names() {
        for k in MOVEMENT_KINDS {
            assert_eq!(MovementKind::parse(k).map(MovementKind::as_str), Some(k));
        }
        for s in RESERVATION_STATUSES {
            assert_eq!(
                ReservationStatus::parse(s).map(ReservationStatus::as_str),
                Some(s)
            );
        }
    }
}
