# The conventional build, for machines with a container registry:
#   docker compose up --build
# Without a registry, docker/offline-build.sh builds the same image from host binaries.
#
# One image holds both binaries: `rustle-gateway` (the default command) and `bzzz-node`.
# Each has a built-in `healthcheck` subcommand, so the image needs no curl or shell.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bzzz-node -p rustle-gateway \
 && mkdir -p /out/data \
 && cp target/release/bzzz-node target/release/rustle-gateway /out/

# glibc, libgcc and CA certificates, no shell; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bzzz-node /out/rustle-gateway /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /data
ENV BZZZ_DATA_DIR=/data/bzzz RUSTLE_DATA_DIR=/data RUSTLE_JOURNAL_DIR=/data/journal
USER 65532:65532
EXPOSE 8080 4001
CMD ["rustle-gateway"]
