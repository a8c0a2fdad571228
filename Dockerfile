# hookshim as a container image: `docker build -t hookshim .` (docs: deploy/README.md).
#
# The build stage runs .ci/build, the very script CI runs (tests/it/deploy.rs checks that both
# call it, and that this Rust image is the toolchain CI builds with).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN bash .ci/build

# The runtime: Debian slim, CA certificates for HTTPS upstreams, curl for the health check; no
# root. The store (store.path) is the volume /var/lib/hookshim.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hookshim \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hookshim --shell /usr/sbin/nologin hookshim \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/hookshim
COPY --from=build /src/target/release/hookshim /usr/local/bin/hookshim
COPY deploy/docker/shim.toml /etc/hookshim/shim.toml
# A relative store.path (the repository's shim.toml says "data") lands on the volume too.
WORKDIR /var/lib/hookshim
# Every key can be set by environment too, e.g. HOOKSHIM_SERVER__LISTEN, HOOKSHIM_UPSTREAMS__JOBS__BASE_URL.
ENV HOOKSHIM_CONFIG=/etc/hookshim/shim.toml
USER 10001:10001
VOLUME ["/var/lib/hookshim"]
# 8680: the API (loopback unless HOOKSHIM_SERVER__LISTEN and HOOKSHIM_API_TOKEN are set);
# 8681: the public face, /webhooks/* and /healthz.
EXPOSE 8680 8681
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8680/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hookshim"]
CMD ["serve"]
