# syntax=docker/dockerfile:1
# agora: multi-stage build. The dependency layer is cached separately from the
# sources, the runtime image is slim and runs as a non-root user.
# (No Docker engine runs on the development machines; this file is kept simple
# and is not exercised by CI.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only: manifests plus empty crate roots, so this layer is
#    rebuilt only when a Cargo.toml or Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
COPY modules/kernel/Cargo.toml modules/kernel/
COPY modules/order/Cargo.toml modules/order/
COPY modules/inventory/Cargo.toml modules/inventory/
COPY modules/payment/Cargo.toml modules/payment/
COPY modules/notification/Cargo.toml modules/notification/
RUN for d in . modules/kernel modules/order modules/inventory modules/payment modules/notification; do \
        mkdir -p $d/src && echo '' > $d/src/lib.rs; done \
    && echo 'fn main() {}' > src/main.rs \
    && cargo build --release --locked --lib --bins 2>/dev/null || true
# 2. The real sources (migrations are embedded at compile time).
COPY . .
RUN touch src/main.rs src/lib.rs modules/*/src/lib.rs \
    && cargo build --release --locked --bin agora

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app agora \
    && mkdir -p /app/data && chown -R agora /app
WORKDIR /app
COPY --from=build /src/target/release/agora /usr/local/bin/agora
USER agora
# Settings come from the environment (AGORA__SECTION__KEY); see docs/configuration.md.
ENV AGORA__HTTP__ADDR=0.0.0.0:8080 \
    AGORA__ADMIN__ADDR=0.0.0.0:9464 \
    AGORA__DATA_DIR=/app/data \
    RUST_LOG=info
EXPOSE 8080 9464
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health/live || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["agora"]
CMD ["serve"]
