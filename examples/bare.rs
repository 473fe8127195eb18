//! The HTTP floor of this machine: a bare actix-web JSON handler, measured by
//! `bench/run` in the same run as agora so the read paths can be judged as a
//! share of it.
//!
//! ```sh
//! cargo run --release --example bare -- 127.0.0.1:18099
//! ```

use actix_web::{App, HttpResponse, HttpServer, web};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18099".to_owned());
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new().route(
                "/",
                web::get()
                    .to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "up"})) }),
            )
        })
        .bind(addr)?
        .run()
        .await
    })
}
