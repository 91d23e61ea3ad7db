# syntax=docker/dockerfile:1
# Build:  docker build -t neo-sessions .
# rust:1.93 rather than 1.88: the locked uuid 1.29.3 needs rustc >= 1.89.
# Base images are pinned by digest, so a rebuild uses the bytes that were reviewed. To move to a
# newer build of a tag: `docker buildx imagetools inspect rust:1.93-bookworm` (and
# `... gcr.io/distroless/cc-debian12:nonroot`), then put the `Digest:` line's value here and in
# docker-compose.yml (the tests service uses the same builder image).

FROM rust:1.93-bookworm@sha256:7c4ae649a84014c467d79319bbf17ce2632ae8b8be123ac2fb2ea5be46823f31 AS builder
WORKDIR /build

# Dependency layer: compile every dependency against stub sources, so this
# layer is only invalidated when Cargo.toml / Cargo.lock change.
# Cargo.toml declares [[test]] tests/api/main.rs and [[bench]] benches/hot_paths.rs, so stubs keep
# those targets resolvable; they are never compiled by `cargo build --bin`. The workspace's
# verifier crate (clients/rust), which the server depends on, gets a stub library the same way.
COPY Cargo.toml Cargo.lock ./
COPY clients/rust/Cargo.toml clients/rust/
RUN mkdir -p src tests/api benches clients/rust/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/hot_paths.rs \
 && touch src/lib.rs tests/api/main.rs clients/rust/src/lib.rs \
 && cargo build --release --locked --bin neo-sessions \
 && rm -rf src clients/rust/src

COPY src/ src/
COPY clients/rust/src/ clients/rust/src/
COPY migrations/ migrations/
COPY openapi/ openapi/
COPY config/ config/
# The vendored Redoc bundle /docs serves (include_bytes! in src/http/docs.rs).
COPY assets/ assets/
# COPY keeps the context's mtimes, which may be older than the stub build;
# touch the sources so cargo rebuilds the crate itself.
RUN find src clients/rust/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin neo-sessions

# Distroless has no shell/mkdir: prepare the writable data dir here.
RUN mkdir -p /out/data && chown 65532:65532 /out/data


FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=builder /build/target/release/neo-sessions /usr/local/bin/neo-sessions
COPY --from=builder --chown=65532:65532 /out/data /app/data
# The example fixture, for `seed /app/fixtures/seed.example.json` (its keys are neo_sk_test_…,
# inert unless NEO_API_KEY_ENV=test).
COPY --from=builder /build/config/seed.example.json /app/fixtures/seed.example.json
WORKDIR /app
# Safe production defaults: only neo_sk_live_… keys are accepted unless told otherwise.
# (NEO_API_KEY_ENV names a key prefix, not a secret.)
# hadolint ignore=DL3064
ENV NEO_LISTEN=0.0.0.0:8080 NEO_DATA_DIR=/app/data NEO_LOG_FORMAT=json NEO_API_KEY_ENV=live
EXPOSE 8080
# distroless's nonroot user, by number so that any runtime can resolve it.
USER 65532:65532
# Exec form only: there is no shell in this image. healthcheck waits as long as readiness may
# take (the request timeout plus 2 s).
HEALTHCHECK --interval=10s --timeout=15s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/neo-sessions", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/neo-sessions"]
CMD ["serve"]
