# vega-migrate, with vega-admin beside it, as a small, non-root image for the one-off ECS
# tasks: migrations (scripts/aws/run-migrations.sh) and operator commands such as
# `vega-admin doctor` (override the entry point with /usr/local/bin/vega-admin). Build from
# the repository root:
#   docker build -t vega-migrate .
# The container's command is the vega-migrate subcommand; the default is `up`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Amazon RDS's CA bundle: RDS certificates are not signed by a public CA, so verify-full needs it.
RUN curl -fsSL -o /rds-global-bundle.pem \
      https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vega-migration --bin vega-migrate -p vega-admin \
    && cp target/release/vega-migrate target/release/vega-admin /

# glibc and nothing else: no shell, no package manager. The nonroot variant runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /vega-migrate /vega-admin /usr/local/bin/
COPY --from=build /rds-global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem
ENV VEGA_PERSISTENCE_BACKEND=postgres \
    VEGA_DATABASE_SSLMODE=verify-full \
    VEGA_DATABASE_SSLROOTCERT=/etc/ssl/certs/rds-global-bundle.pem
USER nonroot
# checkov:skip=CKV_DOCKER_2:A one-off task that exits when the migrations are applied; ECS reads its exit code, and there is no server to probe.
ENTRYPOINT ["/usr/local/bin/vega-migrate"]
CMD ["up"]
