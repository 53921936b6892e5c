# Controller image: imagesync-controller on a distroless, non-root runtime.
#
#   docker build -t imagesync-controller:dev .
#
# The same image is built offline (no base images) by images/build-controller-image.sh,
# which CI builds and runs with containerd; keep the two in step: binary at
# /usr/local/bin/imagesync-controller as the ENTRYPOINT, USER 65532:65532, port 8080, CA
# certificates, the OCI labels below.
#
# Base images are build arguments: pin them by digest for a reproducible build, e.g.
#   docker build --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:<digest> \
#                --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:<digest> .
# (`docker buildx imagetools inspect <image>` prints the digest). No digest is written here:
# none could be verified when this file was written, and a guessed one would break the build.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build ---------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p imagesync-controller --bin imagesync-controller \
 && install -D -m 0755 target/release/imagesync-controller /out/imagesync-controller

# --- runtime -------------------------------------------------------------------------------
# distroless "cc": glibc + CA certificates, no shell, no package manager, same Debian release
# (bookworm, glibc 2.36) as the build stage. The nonroot tag runs as uid/gid 65532.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="imagesync-controller" \
      org.opencontainers.image.source="https://github.com/imagesync/imagesync" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/imagesync-controller /usr/local/bin/imagesync-controller
# Numeric user so Kubernetes' runAsNonRoot check can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/imagesync-controller"]
