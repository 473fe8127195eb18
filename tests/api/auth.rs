//! The JWT attack set: every forged, stale or misdirected token is a 401.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};
use agora_kernel::Role;

const RSA_PRIVATE: &str = include_str!("fixtures/test-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/test-rsa-public.pem");
const JWKS: &str = include_str!("fixtures/test-jwks.json");

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(app: &TestApp) -> serde_json::Value {
    json!({
        "sub": "mallory", "roles": ["customer"], "iss": app.settings.auth.issuer, "aud": app.settings.auth.audience,
        "iat": now(), "nbf": now() - 5, "exp": now() + 600,
    })
}

fn hs(alg: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn dev_secret(app: &TestApp) -> Vec<u8> {
    use secrecy::ExposeSecret;
    app.settings
        .auth
        .hs256_secret
        .expose_secret()
        .as_bytes()
        .to_vec()
}

async fn assert_refused(app: &TestApp, token: &str, why: &str) {
    let res = app.get_as("/api/v1/me", token).await;
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        challenge.is_some_and(|c| c.starts_with("Bearer")),
        "{why}: no challenge"
    );
    let body = assert_problem(res, 401).await;
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{why}");
}

#[tokio::test]
async fn a_valid_token_names_the_principal() {
    let app = spawn_app().await;
    let token = app.token("alice", &[Role::Customer, Role::Staff]);
    let res = app.get_as("/api/v1/me", &token).await;
    assert_eq!(res.status(), 200);
    let me: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        me,
        json!({"subject": "alice", "roles": ["customer", "staff"], "email": "alice@example.com"})
    );
}

#[tokio::test]
async fn forged_stale_and_misdirected_tokens_are_refused() {
    let app = spawn_app().await;
    let secret = dev_secret(&app);
    let good = claims(&app);

    // alg: none, with and without a signature part.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(&good).unwrap());
    assert_refused(&app, &format!("{header}.{payload}."), "alg none").await;
    assert_refused(&app, &format!("{header}.{payload}"), "alg none, two parts").await;

    // Another HMAC algorithm with the right secret.
    assert_refused(&app, &hs(Algorithm::HS512, &secret, &good), "wrong alg").await;
    assert_refused(&app, &hs(Algorithm::HS384, &secret, &good), "wrong alg").await;

    // Signed with another key.
    assert_refused(
        &app,
        &hs(
            Algorithm::HS256,
            b"someone-elses-secret-of-32-bytes!!",
            &good,
        ),
        "bad signature",
    )
    .await;

    // Tampered payload: escalate to admin, keep the signature.
    let token = hs(Algorithm::HS256, &secret, &good);
    let parts: Vec<&str> = token.split('.').collect();
    let mut evil = good.clone();
    evil["roles"] = json!(["admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&evil).unwrap()),
        parts[2]
    );
    assert_refused(&app, &tampered, "tampered payload").await;

    let mut c = good.clone();
    c["exp"] = json!(now() - 3600);
    assert_refused(&app, &hs(Algorithm::HS256, &secret, &c), "expired").await;

    let mut c = good.clone();
    c["nbf"] = json!(now() + 3600);
    assert_refused(
        &app,
        &hs(Algorithm::HS256, &secret, &c),
        "nbf in the future",
    )
    .await;

    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    assert_refused(&app, &hs(Algorithm::HS256, &secret, &c), "wrong iss").await;

    let mut c = good.clone();
    c["aud"] = json!("another-api");
    assert_refused(&app, &hs(Algorithm::HS256, &secret, &c), "wrong aud").await;

    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_refused(&app, &hs(Algorithm::HS256, &secret, &c), "no exp").await;

    // Garbled tokens and headers.
    assert_refused(&app, "not-a-jwt", "garbage").await;
    assert_refused(&app, "a.b.c", "garbage segments").await;
    for header in [
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer",
        "Bearer    ",
        "token abc",
    ] {
        let res = app
            .client
            .get(app.url("/api/v1/me"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_problem(res, 401).await;
    }

    // And the genuine article still works.
    let res = app
        .get_as("/api/v1/me", &hs(Algorithm::HS256, &secret, &good))
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn an_rs256_deployment_refuses_hs256_tokens_signed_with_its_public_key() {
    let app = spawn_app_with(|s| {
        s.auth.algorithm = "RS256".into();
        s.auth.public_key_pem = RSA_PUBLIC.into();
    })
    .await;
    let good = claims(&app);
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &good,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(app.get_as("/api/v1/me", &rs).await.status(), 200);

    // HS/RS confusion: HMAC keyed with the (public) PEM.
    assert_refused(
        &app,
        &hs(Algorithm::HS256, RSA_PUBLIC.as_bytes(), &good),
        "HS/RS confusion",
    )
    .await;
    // Tokens of the development key mean nothing here.
    assert_refused(
        &app,
        &hs(
            Algorithm::HS256,
            b"agora-development-secret-change-me-0123456789",
            &good,
        ),
        "dev token",
    )
    .await;
}

/// A real HTTP server serving whatever key set `served` holds at the time of
/// each request; its port and a handle to stop it.
fn serve_jwks(served: Arc<Mutex<String>>) -> (u16, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        let served = served.clone();
        actix_web::App::new().route(
            "/.well-known/jwks.json",
            actix_web::web::get().to(move || {
                let body = served.lock().unwrap().clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

#[tokio::test]
async fn a_jwks_deployment_verifies_by_key_id() {
    let (port, server_handle) = serve_jwks(Arc::new(Mutex::new(JWKS.to_owned())));

    let app = spawn_app_with(|s| {
        s.auth.algorithm = "RS256".into();
        s.auth.jwks_url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    })
    .await;
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let token = jsonwebtoken::encode(&header, &claims(&app), &key).unwrap();
    assert_eq!(app.get_as("/api/v1/me", &token).await.status(), 200);

    header.kid = Some("unknown-key".into());
    let token = jsonwebtoken::encode(&header, &claims(&app), &key).unwrap();
    assert_refused(&app, &token, "unknown kid").await;
    server_handle.stop(false).await;
}

#[tokio::test]
async fn a_token_minted_by_the_cli_helper_expires() {
    let app = spawn_app().await;
    let token = agora::gateway::auth::mint(
        &app.settings.auth,
        "carol",
        &[Role::Customer],
        None,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(app.get_as("/api/v1/me", &token).await.status(), 200);
    // Past exp plus the configured leeway, the same token is refused.
    let mut strict = app.settings.auth.clone();
    strict.leeway_secs = 0;
    let verifier = agora::gateway::auth::Authenticator::from_settings(&strict)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(verifier.authenticate(&token).is_err());
}

/// Verified tokens are remembered, but expiry is checked on every request:
/// a token accepted a moment ago is refused once it has expired.
#[tokio::test]
async fn a_token_verified_before_is_refused_once_it_expires() {
    let app = spawn_app().await;
    let mut strict = app.settings.auth.clone();
    strict.leeway_secs = 0;
    let verifier = agora::gateway::auth::Authenticator::from_settings(&strict)
        .await
        .unwrap();
    let token = agora::gateway::auth::mint(
        &strict,
        "carol",
        &[Role::Customer],
        None,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(verifier.authenticate(&token).unwrap().subject, "carol");
    assert_eq!(verifier.authenticate(&token).unwrap().subject, "carol");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = verifier.authenticate(&token).unwrap_err();
    assert_eq!(refused.to_string(), "the token has expired");
}

/// A key taken out of the JWKS stops its tokens at the next refresh, even
/// tokens that were verified (and remembered) under it.
#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_its_tokens_at_the_next_refresh() {
    let served = Arc::new(Mutex::new(JWKS.to_owned()));
    let (port, server_handle) = serve_jwks(served.clone());

    let app = spawn_app().await;
    let mut settings = app.settings.auth.clone();
    settings.algorithm = "RS256".into();
    settings.jwks_url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let verifier = agora::gateway::auth::Authenticator::from_settings(&settings)
        .await
        .unwrap();
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let token = jsonwebtoken::encode(&header, &claims(&app), &key).unwrap();
    assert_eq!(verifier.authenticate(&token).unwrap().subject, "mallory");
    assert_eq!(verifier.authenticate(&token).unwrap().subject, "mallory");

    // The provider rotates test-key-1 out.
    *served.lock().unwrap() = JWKS.replace("test-key-1", "test-key-2");
    verifier.refresh().await.unwrap();
    let refused = verifier.authenticate(&token).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the token's key id is not in the key set"
    );
    server_handle.stop(false).await;
}

#[tokio::test]
async fn provider_style_tokens_without_nbf_and_with_an_audience_list_are_accepted() {
    let app = spawn_app().await;
    let secret = dev_secret(&app);
    let mut c = claims(&app);
    let obj = c.as_object_mut().unwrap();
    obj.remove("nbf");
    obj.remove("iat");
    obj.insert(
        "aud".into(),
        json!(["another-api", app.settings.auth.audience]),
    );
    assert_eq!(
        app.get_as("/api/v1/me", &hs(Algorithm::HS256, &secret, &c))
            .await
            .status(),
        200
    );
    // A list without our audience is still refused.
    c["aud"] = json!(["another-api", "a-third-api"]);
    assert_refused(
        &app,
        &hs(Algorithm::HS256, &secret, &c),
        "aud list without ours",
    )
    .await;
}
