# syntax=docker/dockerfile:1
#
# The chat-apps image: `chat-server` (the entrypoint) and `chat-client`.
#
#   docker build -t chat-apps .
#   docker run -p 50050:50050 -p 3000:3000 -v chat-data:/data chat-apps
#
# With no other setting the server is a single node with its SQLite
# database in the /data volume; the CHAT_… variables of the README's
# "Server options" configure it (deploy/docker-compose.yml runs a cluster).

# ---- build -----------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka compiles librdkafka from source (its configure script, make and a
# C/C++ compiler) and links it against the system zlib, found with
# pkg-config; protoc comes from the protoc-bin-vendored crate. The rust image
# has all of this already: the list says what the build needs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates

# The cargo registry and the target directory live in BuildKit caches, so a
# rebuild after a source change recompiles the workspace crates only, not
# the dependencies (librdkafka takes minutes). The binaries are copied out
# of the cache mount, which does not outlive this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chat-server --bin chat-client \
    && mkdir -p /out \
    && cp target/release/chat-server target/release/chat-client /out/

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# The binaries need only the C library and zlib, both in the base image;
# curl is for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

# A user of its own: the server never runs as root. Its home holds
# chat-client's credentials when the client is run inside the container.
RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/chat chat \
    && mkdir -p /data \
    && chown chat:chat /data

COPY --from=builder /out/chat-server /out/chat-client /usr/local/bin/

# Listen on every interface of the container (the defaults outside a
# container are loopback only); SQLite data in the volume.
ENV CHAT_DATA_DIR=/data \
    CHAT_GRPC_ADDR=0.0.0.0:50050 \
    CHAT_HTTP_ADDR=0.0.0.0:3000

VOLUME ["/data"]
USER chat
WORKDIR /home/chat

# gRPC, HTTP.
EXPOSE 50050 3000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/healthz || exit 1

ENTRYPOINT ["chat-server"]
