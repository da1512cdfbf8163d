# syntax=docker/dockerfile:1
#
# mlsds in a container: one static binary (modernc.org/sqlite is pure Go,
# so CGO_ENABLED=0), run as an unprivileged user, its data in /data.
#
#   docker build -t mlsds .
#   docker run -p 7400:7400 -v mlsds-data:/data mlsds
#
# deploy/compose.yaml runs two nodes on PostgreSQL behind one port.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# BUILD_TIME is what `mlsds version` shows as build time (default: now).
ARG BUILD_TIME=""
# The revision `mlsds version` shows comes from .git, if the context has it.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    git config --global --add safe.directory /src && \
    built="${BUILD_TIME:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}" && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.buildTime=${built}" -o /out/mlsds ./cmd/mlsds && \
    /out/mlsds version

FROM alpine:3.21
# busybox wget answers the HEALTHCHECK; the server itself needs nothing.
RUN addgroup -S -g 10001 mlsds && \
    adduser -S -D -H -u 10001 -G mlsds -h /data -s /sbin/nologin mlsds && \
    mkdir -p /data && chown mlsds:mlsds /data && chmod 0700 /data
COPY --from=build /out/mlsds /usr/local/bin/mlsds
USER 10001:10001
ENV MLSDS_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 7400
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD wget -q -O /dev/null http://127.0.0.1:7400/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/mlsds"]
CMD ["serve", "--listen", "0.0.0.0:7400", "--data-dir", "/data"]
