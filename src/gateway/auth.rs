//! JWT bearer authentication: the algorithm is pinned by configuration; exp,
//! nbf, iss and aud are checked; roles come from the `roles` claim.
//!
//! Development uses HS256 with a key from settings (and `agora token` mints
//! tokens); production uses RS256/ES256/EdDSA with a public key or a JWKS URL.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use agora_kernel::{Principal, Problem, Role};
use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::settings::AuthSettings;

/// The claims agora reads and mints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub iss: String,
    /// One audience or several (identity providers send both forms); checked
    /// by the validation, not here.
    pub aud: serde_json::Value,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

enum Keys {
    Static(DecodingKey),
    Jwks { url: String, set: RwLock<JwkSet> },
}

/// Verifies bearer tokens.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    /// With asymmetric user tokens: the key of other agora processes' service
    /// tokens (`kid` = `agora-service`), which may carry the `service` role only.
    service: Option<DecodingKey>,
    verified: Verified,
}

/// Tokens that passed every check, by their exact text: a client's next
/// request with the same token skips decoding, the signature and the claims
/// (about 9 µs of the `/api/v1/me` path; docs/performance.md). Whatever can
/// change between two requests is checked again on every hit: expiry, against
/// the clock with the same leeway. What cannot change (signature, issuer,
/// audience, `nbf` once passed) is not. The cache is emptied whenever the
/// key set is replaced, so a key removed from the JWKS stops its tokens at
/// the next refresh, as before. Bounded: at [`VERIFIED_TOKENS`] entries it
/// starts over. Failures are never cached.
struct Verified {
    /// Keyed by the whole token, hashed with foldhash (seeded per process):
    /// SipHash over a few hundred bytes was ~1k instructions a request.
    tokens: dashmap::DashMap<Box<str>, VerifiedToken, foldhash::fast::RandomState>,
    /// Bumped when the key set is replaced: an entry of an older generation
    /// (a check that began before the swap) is never served.
    generation: std::sync::atomic::AtomicU64,
}

/// Tokens kept verified at most (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 10_000;

struct VerifiedToken {
    principal: Principal,
    exp: u64,
    generation: u64,
}

impl Verified {
    fn new() -> Self {
        Self {
            tokens: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The principal of a token verified before, under the current keys, and
    /// not expired since.
    fn get(&self, token: &str, leeway: u64) -> Option<Principal> {
        let hit = self.tokens.get(token)?;
        // As jsonwebtoken decides expiry: `exp < now - leeway`.
        let fresh = hit.exp >= now_secs().saturating_sub(leeway);
        (fresh && hit.generation == self.generation()).then(|| hit.principal.clone())
    }

    /// Remember a token that passed every check begun at `generation`.
    fn put(&self, token: &str, principal: &Principal, exp: u64, generation: u64) {
        if self.tokens.len() >= VERIFIED_TOKENS {
            self.tokens.clear();
        }
        self.tokens.insert(
            token.into(),
            VerifiedToken {
                principal: principal.clone(),
                exp,
                generation,
            },
        );
    }

    /// The keys changed: forget every token.
    fn keys_replaced(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.tokens.clear();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Marks a request forwarded by another agora process (its
/// `X-Agora-Forwarded-By` credential verified): it was rate-limited there.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The forwarding process's service principal.
    pub by: String,
}

/// Why a token was refused (the message goes to the client and the log).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// The public key a setting holds in PEM form (`\\n` escapes allowed, as an
/// environment variable cannot hold a newline), for the configured algorithm.
fn public_key(alg: Algorithm, alg_name: &str, key: &str, pem: &str) -> anyhow::Result<DecodingKey> {
    let pem = pem.replace("\\n", "\n");
    match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
        _ => DecodingKey::from_ed_pem(pem.as_bytes()),
    }
    .map_err(|e| {
        anyhow::anyhow!(agora_kernel::settings::message(
            key,
            format_args!("not a {alg_name} public key in PEM form ({e})")
        ))
    })
}

fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => anyhow::bail!("unsupported algorithm {other}"),
    }
}

impl Authenticator {
    /// Build from settings; fetches the JWKS once when configured.
    pub async fn from_settings(s: &AuthSettings) -> anyhow::Result<Self> {
        let alg = algorithm(&s.algorithm)?;
        let keys = match alg {
            Algorithm::HS256 => Keys::Static(DecodingKey::from_secret(
                s.hs256_secret.expose_secret().as_bytes(),
            )),
            _ if !s.public_key_pem.trim().is_empty() => Keys::Static(public_key(
                alg,
                &s.algorithm,
                "auth.public_key_pem",
                &s.public_key_pem,
            )?),
            _ => {
                let set = fetch_jwks(&s.jwks_url).await.map_err(|e| {
                    anyhow::anyhow!("invalid setting AGORA__AUTH__JWKS_URL (auth.jwks_url): {e:#}")
                })?;
                Keys::Jwks {
                    url: s.jwks_url.clone(),
                    set: RwLock::new(set),
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&s.issuer]);
        validation.set_audience(&[&s.audience]);
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.leeway = s.leeway_secs;
        // `nbf` is checked when present (validate_nbf), not required: many
        // identity providers omit it.
        validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        let service = match s.service_public_key_pem.trim() {
            "" => None,
            _ if alg == Algorithm::HS256 => None,
            pem => Some(public_key(
                alg,
                &s.algorithm,
                "auth.service_public_key_pem",
                pem,
            )?),
        };
        Ok(Self {
            keys,
            validation,
            service,
            verified: Verified::new(),
        })
    }

    /// Check a bearer token and return who it names.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified.get(token, self.validation.leeway) {
            return Ok(principal);
        }
        let generation = self.verified.generation();
        let (principal, exp) = self.verify(token)?;
        self.verified.put(token, &principal, exp, generation);
        Ok(principal)
    }

    /// Every check of a token, and its `exp`.
    fn verify(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError("the token is not a well-formed JWT".into()))?;
        if header.alg != self.validation.algorithms[0] {
            return Err(AuthError(format!(
                "tokens must be signed with {:?}",
                self.validation.algorithms[0]
            )));
        }
        let service_token = header.kid.as_deref() == Some(crate::upstream::SERVICE_KID);
        let data = match &self.keys {
            _ if service_token && self.service.is_some() => {
                let key = self
                    .service
                    .as_ref()
                    .ok_or_else(|| AuthError("no service key".into()))?;
                jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            }
            Keys::Static(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation),
            Keys::Jwks { set, .. } => {
                let key = {
                    let set = set
                        .read()
                        .map_err(|_| AuthError("key set unavailable".into()))?;
                    let jwk = match &header.kid {
                        Some(kid) => set.find(kid),
                        None if set.keys.len() == 1 => set.keys.first(),
                        None => None,
                    }
                    .ok_or_else(|| AuthError("the token's key id is not in the key set".into()))?;
                    DecodingKey::from_jwk(jwk)
                        .map_err(|_| AuthError("the key set holds an unusable key".into()))?
                };
                jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            }
        }
        .map_err(|e| AuthError(describe(&e)))?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(AuthError("the token's sub must be 1–255 characters".into()));
        }
        let roles: BTreeSet<Role> = claims.roles.iter().filter_map(|r| r.parse().ok()).collect();
        if service_token && self.service.is_some() && roles.iter().any(|r| *r != Role::Service) {
            return Err(AuthError(
                "a service token may carry the service role only".into(),
            ));
        }
        let principal = Principal {
            subject: claims.sub,
            roles,
            email: claims.email.filter(|e| !e.is_empty()),
        };
        Ok((principal, claims.exp))
    }

    /// Refresh the JWKS (no-op for static keys).
    pub async fn refresh(&self) -> anyhow::Result<()> {
        if let Keys::Jwks { url, set } = &self.keys {
            let fresh = fetch_jwks(url).await?;
            if let Ok(mut s) = set.write() {
                *s = fresh;
            }
            // A token of a key that is gone must fail from now on.
            self.verified.keys_replaced();
        }
        Ok(())
    }

    pub fn uses_jwks(&self) -> bool {
        matches!(self.keys, Keys::Jwks { .. })
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token was issued by someone else (iss)".into(),
        ErrorKind::InvalidAudience => "the token is meant for another audience (aud)".into(),
        ErrorKind::InvalidSignature => "the token's signature is invalid".into(),
        ErrorKind::InvalidAlgorithm => "the token uses another algorithm".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the `{c}` claim"),
        _ => "the token is invalid".into(),
    }
}

async fn fetch_jwks(url: &str) -> anyhow::Result<JwkSet> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let set: JwkSet = client
        .get(url)
        .send()
        .await
        .context("failed to fetch the JWKS")?
        .error_for_status()
        .context("the JWKS endpoint answered an error")?
        .json()
        .await
        .context("the JWKS is not a JSON key set")?;
    Ok(set)
}

/// Refresh the JWKS periodically until `shutdown`.
pub async fn refresh_jwks(auth: Arc<Authenticator>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {
                if let Err(e) = auth.refresh().await {
                    tracing::warn!(error = %format!("{e:#}"), "JWKS refresh failed; keeping the previous keys");
                }
            }
        }
    }
}

/// Mint a development token (HS256 only).
pub fn mint(
    s: &AuthSettings,
    sub: &str,
    roles: &[Role],
    email: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        s.algorithm == "HS256",
        "`agora token` mints HS256 development tokens; with {} the identity provider issues tokens",
        s.algorithm
    );
    anyhow::ensure!(
        !sub.is_empty() && sub.len() <= 255,
        "--sub must be 1–255 characters"
    );
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        sub: sub.to_owned(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        email: email.map(str::to_owned),
        iss: s.issuer.clone(),
        aud: serde_json::Value::String(s.audience.clone()),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
    };
    let key = EncodingKey::from_secret(s.hs256_secret.expose_secret().as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .context("failed to sign the token")
}

/// The token of a `Bearer <token>` header value, borrowed from it; `None`
/// for another scheme or a value that is not ASCII (what
/// `HeaderValue::to_str` refuses, as it arrives from the wire). Checked a
/// word at a time: `to_str` checks a token of a few hundred bytes one byte
/// at a time, and its caller copied it, ~1.5k instructions of every
/// authenticated request (docs/performance.md).
fn bearer(value: &actix_web::http::header::HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if !bytes.is_ascii() {
        return None;
    }
    let (scheme, token) = std::str::from_utf8(bytes).ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Gateway middleware: a request with an `Authorization` header must carry a
/// valid bearer token (401 otherwise); its principal goes into the request's
/// extensions. Requests without the header pass; handlers that need a
/// principal answer 401 themselves.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    // Forwarded by another agora process: its own credential says so.
    if let Some(fwd) = req.headers().get(crate::upstream::FORWARDED_BY) {
        let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
            return Ok(req.into_response(Problem::internal().to_response()));
        };
        let token = bearer(fwd).unwrap_or_default();
        match auth.authenticate(token) {
            Ok(p) if p.roles.contains(&Role::Service) => {
                req.extensions_mut().insert(Forwarded { by: p.subject });
            }
            _ => {
                tracing::warn!("refused a request with an invalid X-Agora-Forwarded-By credential");
                let p = Problem::unauthorized(
                    "the X-Agora-Forwarded-By credential is not a valid service token",
                );
                return Ok(req.into_response(p.to_response()));
            }
        }
    }
    let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        return Ok(req.into_response(Problem::internal().to_response()));
    };
    let Some(token) = bearer(header).filter(|t| !t.is_empty()) else {
        let p = Problem::unauthorized("the Authorization header must be `Bearer <token>`");
        return Ok(req.into_response(p.to_response()));
    };
    match auth.authenticate(token) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body)
        }
        Err(e) => {
            tracing::info!(reason = %e, "bearer token refused");
            Ok(req.into_response(Problem::unauthorized(e.to_string()).to_response()))
        }
    }
}

#[cfg(test)]
mod bearer_tests {
    use actix_web::http::header::HeaderValue;

    use super::bearer;

    #[test]
    fn a_bearer_header_gives_its_token_and_anything_else_gives_none() {
        let token = |v: &'static [u8]| {
            HeaderValue::from_bytes(v)
                .ok()
                .and_then(|v| bearer(&v).map(str::to_owned))
        };
        assert_eq!(token(b"Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(token(b"bEaReR   abc  ").as_deref(), Some("abc"));
        assert_eq!(token(b"Bearer ").as_deref(), Some(""));
        assert_eq!(token(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(token(b"Bearer"), None);
        assert_eq!(token(b"Bearer abc\xc3\xa9"), None, "not ASCII");
    }
}
