# syntax=docker/dockerfile:1
# agora: multi-stage build. The dependency layer is cached separately from the
# sources; the runtime image is slim and runs as a non-root user. Linted in CI
# by hadolint (.ci/deploy-checks); no Docker engine runs on the development
# machines, so the image itself is not built there. See docs/deploy.md.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only: the manifests plus stub crate roots, so this layer is
#    rebuilt only when a Cargo.toml or Cargo.lock changes. Any failure here
#    (a dependency that does not build, a lock file out of date) fails the
#    image build.
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ .cargo/
COPY modules/kernel/Cargo.toml modules/kernel/
COPY modules/order/Cargo.toml modules/order/
COPY modules/inventory/Cargo.toml modules/inventory/
COPY modules/payment/Cargo.toml modules/payment/
COPY modules/notification/Cargo.toml modules/notification/
RUN set -eux; \
    for d in . modules/kernel modules/order modules/inventory modules/payment modules/notification; do \
        mkdir -p "$d/src"; : > "$d/src/lib.rs"; \
    done; \
    echo 'fn main() {}' > src/main.rs; \
    cargo build --release --locked --package agora --bin agora
# 2. The real sources (migrations and config/default.toml are embedded at
#    compile time). The stubs' build artifacts are newer than the copied
#    sources, so touch the crate roots to rebuild them.
COPY . .
RUN set -eux; \
    touch src/main.rs src/lib.rs modules/*/src/lib.rs; \
    cargo build --release --locked --package agora --bin agora; \
    ./target/release/agora --help > /dev/null

FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="agora" \
      org.opencontainers.image.description="An e-commerce backend: a modular monolith designed for later extraction" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.documentation="docs/deploy.md"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin agora \
    && mkdir -p /app/data \
    && chown -R 10001:10001 /app/data
WORKDIR /app
COPY --from=build /src/target/release/agora /usr/local/bin/agora
# config/$AGORA_ENV.toml is read relative to the working directory.
COPY config/ /app/config/
USER 10001:10001
# Settings come from the environment (AGORA__SECTION__KEY); see docs/configuration.md.
ENV AGORA__HTTP__ADDR=0.0.0.0:8080 \
    AGORA__ADMIN__ADDR=0.0.0.0:9464 \
    AGORA__DATA_DIR=/app/data \
    RUST_LOG=info
EXPOSE 8080 9464
VOLUME ["/app/data"]
# Probes the API listener wherever AGORA__HTTP__ADDR puts it (a wildcard
# address is reached on loopback).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "addr=${AGORA__HTTP__ADDR:-127.0.0.1:8080}; host=${addr%:*}; port=${addr##*:}; case $host in ''|0.0.0.0) host=127.0.0.1 ;; '[::]') host='[::1]' ;; esac; exec curl -fsSg -o /dev/null --max-time 2 http://$host:$port/health/live"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["agora"]
CMD ["serve"]
