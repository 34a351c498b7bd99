# syntax=docker/dockerfile:1
#
# drowsy container image.
#
#   docker build -t drowsy .
#   docker run -v ./drowsy.yml:/etc/drowsy/drowsy.yml:ro --env-file drowsy.env \
#       -p 80:80 -p 443:443 -p 127.0.0.1:9090:9090 drowsy
#
# Inside a container the config must listen on all interfaces
# (`listen.http: 0.0.0.0:80`, `listen.admin: 0.0.0.0:9090`, ...), not on
# 127.0.0.1, or the published ports reach nothing. See packaging/README.md.

# The base images are build arguments, for registries that are mirrored or
# unreachable (scripts/image-check.sh builds with local ones):
#   docker build --build-arg BUILD_IMAGE=... --build-arg RUN_IMAGE=... .
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUN_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- build ----------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds;
# the binary is copied out of the cached target directory so the next stage
# can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin drowsy \
    && install -D -m 0755 target/release/drowsy /out/drowsy \
    && install -d -m 0700 /out/state

# ---- run ------------------------------------------------------------------
# glibc + libgcc, no shell, no package manager; runs as uid/gid 65532.
FROM ${RUN_IMAGE}
COPY --from=build /out/drowsy /usr/local/bin/drowsy
# ACME account and certificates (acme.storage defaults to /var/lib/drowsy/acme).
# Keep it on a volume: certificates must survive a new container, or each
# one is ordered again and the CA's rate limits are soon reached.
COPY --from=build --chown=65532:65532 /out/state /var/lib/drowsy
VOLUME /var/lib/drowsy

# drowsy reads its config from here (`--config` overrides it). Mount the file
# read-only; secrets such as PVE_TOKEN_SECRET come from the environment or
# from *_file keys pointing at mounted secret files.
ENV DROWSY_CONFIG=/etc/drowsy/drowsy.yml

# Plain HTTP entrypoint (listen.http). Binding a port below 1024 as a non-root
# user works because Docker sets net.ipv4.ip_unprivileged_port_start=0 in the
# container's network namespace (docker-compose.yml sets it explicitly).
EXPOSE 80
# HTTPS entrypoint (listen.https, with tls.certificates or acme).
EXPOSE 443
# Admin: /healthz, /metrics, /api/* (listen.admin). Publish it on the host's
# loopback only; it is not meant for the network.
EXPOSE 9090

# Probes the admin /healthz. Distroless has no curl or wget, so drowsy checks
# its own health: `drowsy health` GETs /healthz on the admin address and exits
# 0 on `200 ok`, 1 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/drowsy", "health"]

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/drowsy"]
CMD ["run"]
