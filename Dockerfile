# syntax=docker/dockerfile:1.7
# One image with both binaries: the operator (entrypoint) and the sync agent
# it deploys. Build from the repository root:
#   docker build -t offering-operator:dev .
# Both binaries are linked statically against musl; the final image has no
# shell and runs as a non-root user.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
# musl-tools comes from the pinned base image's Debian release.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY rust-toolchain.toml ./
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-musl > /rust-target ;; \
        arm64) echo aarch64-unknown-linux-musl > /rust-target ;; \
        *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "$(cat /rust-target)"
COPY . .
# The registry and target directories are build caches: a source change
# recompiles the project's crates only.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "$(cat /rust-target)" \
        --bin offering-operator --bin sync-agent \
    && mkdir -p /out \
    && cp "target/$(cat /rust-target)/release/offering-operator" \
          "target/$(cat /rust-target)/release/sync-agent" /out/

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/offering-operator /usr/local/bin/offering-operator
COPY --from=build /out/sync-agent /usr/local/bin/sync-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/offering-operator"]
CMD ["run"]
