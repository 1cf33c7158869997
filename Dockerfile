# syntax=docker/dockerfile:1
#
# One image, two roles: the server (the default command) and the worker.
#
#   docker build -t alvryn .
#   docker run --env-file .env -p 127.0.0.1:8080:8080 alvryn      # server
#   docker run --env-file .env --no-healthcheck alvryn worker      # worker (serves no HTTP)
#   docker run --rm alvryn keys generate                           # any other command
#
# No secret is baked in: every setting comes from the environment at run
# time (see .env.example and README, "Deploy"). The image defaults to
# ALVRYN_ENV=production, so an unconfigured container refuses to start and
# names every missing variable instead of generating secrets of its own.

# The toolchain the workspace pins (rust-version in Cargo.toml).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches live in BuildKit cache mounts, so the
# binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin alvryn \
    && install -D -m 0755 target/release/alvryn /out/alvryn \
    && install -d -m 0700 /out/data

# glibc, libgcc and CA certificates, no shell, no package manager; the
# image's own non-root user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/alvryn /usr/local/bin/alvryn
COPY --from=builder --chown=65532:65532 /out/data /var/lib/alvryn
ENV ALVRYN_ENV=production \
    ALVRYN_DATA_DIR=/var/lib/alvryn \
    ALVRYN_LOG=info
USER 65532:65532
WORKDIR /var/lib/alvryn
VOLUME ["/var/lib/alvryn"]
EXPOSE 8080
# `alvryn smoke --health-only` is a GET /healthz with a timeout; the
# worker, which serves no HTTP, turns this off (docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/alvryn", "smoke", "--url", "http://127.0.0.1:8080", "--health-only", "--timeout", "3s"]
ENTRYPOINT ["alvryn"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
