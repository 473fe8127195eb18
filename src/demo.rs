//! `agora demo`: a small, realistic catalogue, loaded over the HTTP API, and
//! tokens to try it with.
//!
//! The catalogue goes in through the public API of the agora at `--url`
//! (default: the configured `http.addr`), as a staff user, so it works the
//! same against a monolith or the edge of a split deployment. When nothing
//! answers at the configured address, an agora is started in-process on the
//! configured databases (on a free loopback port), loads it, and stops.
//!
//! Running it again changes nothing that is there: warehouses and products
//! that exist are left as they are, stock is topped up to the demo levels
//! (never received twice), the discontinued product stays inactive.
//!
//! stdout: `CUSTOMER_TOKEN=…`, `STAFF_TOKEN=…`, `ADMIN_TOKEN=…`, one per line,
//! so `eval "$(agora demo)"` sets them; stderr: two lines on what to try next.

use std::time::Duration;

use agora_kernel::Role;
use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gateway::auth;
use crate::settings::Settings;

/// A demo warehouse: code and name.
pub const WAREHOUSES: [(&str, &str); 2] = [("BER", "Berlin"), ("MUC", "Munich")];

/// A demo product and the stock it should have in each warehouse.
#[derive(Debug, Clone, Copy)]
pub struct DemoProduct {
    pub sku: &'static str,
    pub name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub price_minor: i64,
    /// `inventory.low_stock.v1` fires below it.
    pub low_stock_threshold: i64,
    /// On-hand units per warehouse of [`WAREHOUSES`], in that order.
    pub stock: [i64; 2],
    /// `false`: discontinued (soft-deleted), never orderable.
    pub active: bool,
}

const fn product(
    sku: &'static str,
    name: &'static str,
    category: &'static str,
    description: &'static str,
    price_minor: i64,
    stock: [i64; 2],
) -> DemoProduct {
    DemoProduct {
        sku,
        name,
        category,
        description,
        price_minor,
        low_stock_threshold: 5,
        stock,
        active: true,
    }
}

/// The catalogue, in euros: eight products in four categories with stock in
/// both warehouses, one low on stock, one discontinued.
pub const PRODUCTS: [DemoProduct; 10] = [
    product(
        "TSHIRT-RED-M",
        "Red T-shirt (M)",
        "apparel",
        "Organic cotton, regular fit",
        1999,
        [40, 25],
    ),
    product(
        "HOODIE-GREY-L",
        "Grey hoodie (L)",
        "apparel",
        "Brushed fleece, kangaroo pocket",
        4999,
        [20, 15],
    ),
    product(
        "MUG-CERAMIC",
        "Ceramic mug",
        "kitchen",
        "350 ml, dishwasher safe",
        850,
        [60, 40],
    ),
    product(
        "KETTLE-STEEL",
        "Steel kettle",
        "kitchen",
        "1.7 l, stainless steel",
        3490,
        [12, 8],
    ),
    product(
        "BOOK-RUST",
        "The Rust Programming Language",
        "books",
        "Paperback, 2nd edition",
        3999,
        [30, 20],
    ),
    product(
        "NOTEBOOK-A5",
        "A5 dotted notebook",
        "books",
        "120 pages, lay-flat binding",
        1250,
        [80, 50],
    ),
    product(
        "USB-C-CABLE",
        "USB-C cable (1 m)",
        "electronics",
        "USB 2.0, 60 W",
        990,
        [100, 100],
    ),
    product(
        "HEADPHONES-BT",
        "Bluetooth headphones",
        "electronics",
        "Over-ear, 30 h battery",
        7999,
        [15, 10],
    ),
    DemoProduct {
        low_stock_threshold: 5,
        ..product(
            "POSTER-LIMITED",
            "Limited print poster",
            "home",
            "Numbered run of 100, A2",
            2500,
            [1, 1],
        )
    },
    DemoProduct {
        active: false,
        ..product(
            "MUG-2019",
            "Conference mug 2019",
            "kitchen",
            "Discontinued",
            700,
            [0, 0],
        )
    },
];

/// The demo's users: subject, roles and e-mail of each token.
const CUSTOMER: (&str, Role, &str) = ("alice", Role::Customer, "alice@example.com");
const STAFF: (&str, Role, &str) = ("sam", Role::Staff, "sam@example.com");
const ADMIN: (&str, Role, &str) = ("ada", Role::Admin, "ada@example.com");

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub warehouses_created: usize,
    pub products_created: usize,
    pub products_deactivated: usize,
    /// Units received to bring stock up to the demo levels.
    pub units_received: i64,
}

/// The three tokens `agora demo` prints.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub customer: String,
    pub staff: String,
    pub admin: String,
}

impl Tokens {
    /// Mint them with the configured auth settings (HS256 only).
    ///
    /// # Errors
    /// Another algorithm: the identity provider issues tokens then.
    pub fn mint(settings: &Settings, ttl: Duration) -> anyhow::Result<Self> {
        let mint = |(sub, role, email): (&str, Role, &str)| {
            auth::mint(&settings.auth, sub, &[role], Some(email), ttl)
        };
        Ok(Self {
            customer: mint(CUSTOMER)?,
            staff: mint(STAFF)?,
            admin: mint(ADMIN)?,
        })
    }

    /// `CUSTOMER_TOKEN=…` and the others, one per line.
    pub fn shell_assignments(&self) -> String {
        format!(
            "CUSTOMER_TOKEN={}\nSTAFF_TOKEN={}\nADMIN_TOKEN={}\n",
            self.customer, self.staff, self.admin
        )
    }
}

/// The configured API address as a URL to connect to (`0.0.0.0` → loopback).
pub fn default_url(settings: &Settings) -> anyhow::Result<String> {
    let addr = settings.http_addr()?;
    let ip = if addr.ip().is_unspecified() {
        match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        addr.ip()
    };
    Ok(format!(
        "http://{}",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

/// The staff side of the HTTP API, as the loader uses it.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// Send one request; a 429 or 503 waits out `Retry-After` (a few times).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}/api/v1{path}", self.base);
        for _ in 0..5 {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("{method} {url} failed"))?;
            let status = res.status();
            if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                let wait = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(10);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                bail!(
                    "the agora at {} refused the demo's staff token ({status}); does it use the same AGORA__AUTH__* settings as this command?",
                    self.base
                );
            }
            let value = res.json().await.unwrap_or(Value::Null);
            return Ok((status, value));
        }
        bail!("{method} {url}: still refused after retrying (rate limit or unavailable)")
    }

    /// Send one request that must answer `expected`; its body.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.send(method, path, body).await?;
        if status == expected {
            Ok(body)
        } else {
            Err(Self::unexpected(&what(), status, &body))
        }
    }

    /// `what` went wrong: say so with the problem's detail.
    fn unexpected(what: &str, status: StatusCode, body: &Value) -> anyhow::Error {
        let detail = body["detail"].as_str().unwrap_or("");
        anyhow::anyhow!("{what}: {status} {detail}")
    }
}

/// Load the catalogue through the agora at `base` (e.g. `http://127.0.0.1:8080`).
///
/// # Errors
/// The agora refused a request it should have taken, or cannot be reached.
pub async fn load(base: &str, staff_token: &str) -> anyhow::Result<Loaded> {
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: base.trim_end_matches('/').to_owned(),
        token: staff_token.to_owned(),
    };
    let mut loaded = Loaded::default();
    for (code, name) in WAREHOUSES {
        let (status, body) = api
            .send(
                Method::POST,
                "/warehouses",
                Some(json!({"code": code, "name": name})),
            )
            .await?;
        match status {
            StatusCode::CREATED => loaded.warehouses_created += 1,
            StatusCode::CONFLICT => {}
            s => {
                return Err(Api::unexpected(
                    &format!("creating warehouse {code}"),
                    s,
                    &body,
                ));
            }
        }
    }
    for p in PRODUCTS {
        let new = json!({
            "sku": p.sku,
            "name": p.name,
            "description": format!("{}: {}", capitalised(p.category), p.description),
            "price_minor": p.price_minor,
            "currency": "EUR",
            "low_stock_threshold": p.low_stock_threshold,
        });
        let (status, body) = api.send(Method::POST, "/products", Some(new)).await?;
        match status {
            StatusCode::CREATED => loaded.products_created += 1,
            StatusCode::CONFLICT => {}
            s => {
                return Err(Api::unexpected(
                    &format!("creating product {}", p.sku),
                    s,
                    &body,
                ));
            }
        }
        if !p.active {
            let path = format!("/products/{}", p.sku);
            let product = api
                .expect(Method::GET, &path, None, StatusCode::OK, || {
                    format!("reading product {}", p.sku)
                })
                .await?;
            if product["active"] == Value::Bool(true) {
                api.expect(Method::DELETE, &path, None, StatusCode::OK, || {
                    format!("deactivating {}", p.sku)
                })
                .await?;
                loaded.products_deactivated += 1;
            }
            continue;
        }
        loaded.units_received += top_up(&api, &p).await?;
    }
    Ok(loaded)
}

/// Receive what `p` lacks of its demo stock in each warehouse; the units received.
async fn top_up(api: &Api, p: &DemoProduct) -> anyhow::Result<i64> {
    let path = format!("/stock/{}", p.sku);
    let stock = api
        .expect(Method::GET, &path, None, StatusCode::OK, || {
            format!("reading the stock of {}", p.sku)
        })
        .await?;
    let mut received = 0;
    for ((code, _), target) in WAREHOUSES.iter().zip(p.stock) {
        let on_hand = stock["warehouses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["warehouse"] == *code)
            .and_then(|w| w["on_hand"].as_i64())
            .unwrap_or(0);
        let missing = target - on_hand;
        if missing <= 0 {
            continue;
        }
        let receipt = json!({"sku": p.sku, "warehouse": code, "quantity": missing, "reference": "agora demo"});
        api.expect(
            Method::POST,
            "/stock/receipts",
            Some(receipt),
            StatusCode::CREATED,
            || format!("receiving {} into {code}", p.sku),
        )
        .await?;
        received += missing;
    }
    Ok(received)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Where the catalogue went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub url: String,
    /// Nothing answered at `url`: an in-process agora on the configured
    /// databases did the loading.
    pub in_process: bool,
    pub loaded: Loaded,
}

/// Load through `url` (or the configured address), falling back to an
/// in-process agora when nothing answers at the configured address.
///
/// # Errors
/// An explicit `url` that does not answer, something there that is not
/// agora, or a refused request.
pub async fn run(
    settings: &Settings,
    url: Option<String>,
    staff_token: &str,
) -> anyhow::Result<Outcome> {
    let explicit = url.is_some();
    let url = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => default_url(settings)?,
    };
    let serving = settings.http_addr()?.port() != 0 || explicit;
    if serving && answers(&url).await? {
        let loaded = load(&url, staff_token).await?;
        return Ok(Outcome {
            url,
            in_process: false,
            loaded,
        });
    }
    if explicit {
        bail!(
            "nothing answers at {url}; start agora there, or leave out --url to load through an in-process agora on the configured databases"
        );
    }
    let mut local = settings.clone();
    local.http.addr = "127.0.0.1:0".to_owned();
    local.admin.addr = "127.0.0.1:0".to_owned();
    let app = crate::Application::build(local)
        .await
        .context("failed to start an in-process agora on the configured databases")?;
    let local_url = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_token();
    let server = tokio::spawn(app.run_until_stopped());
    let loaded = load(&local_url, staff_token).await;
    stop.cancel();
    server.await.context("the in-process agora panicked")??;
    Ok(Outcome {
        url,
        in_process: true,
        loaded: loaded?,
    })
}

/// Whether an agora answers `GET {url}/health/live`; `false` when nothing
/// listens there.
async fn answers(url: &str) -> anyhow::Result<bool> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    match client.get(format!("{url}/health/live")).send().await {
        Ok(res) => {
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            if status == StatusCode::OK && body["status"] == "up" {
                Ok(true)
            } else {
                bail!("something answers at {url}, but not like agora ({status} on /health/live)")
            }
        }
        Err(e) if e.is_connect() => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("failed to reach {url}"))),
    }
}

/// The two lines of what to try next (stderr).
pub fn next_steps(outcome: &Outcome) -> [String; 2] {
    let url = &outcome.url;
    let first = if outcome.in_process {
        format!(
            "agora demo: catalogue loaded into the configured databases (nothing was serving at {url}); start agora (`cargo run`), then open {url}/swagger-ui/ and Authorize with $CUSTOMER_TOKEN"
        )
    } else {
        format!(
            "agora demo: catalogue loaded at {url}; open {url}/swagger-ui/, Authorize with $CUSTOMER_TOKEN and try POST /api/v1/orders"
        )
    };
    let second = format!(
        "next: eval \"$(agora demo)\" sets the tokens; curl -H \"Authorization: Bearer $CUSTOMER_TOKEN\" {url}/api/v1/products lists the catalogue; docs/tutorial.md walks an order to delivery"
    );
    [first, second]
}
