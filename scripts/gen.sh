#!/bin/sh
# Regenerates the Go code of the mlsds API from api/mlsds/v1/*.proto.
#
# Everything runs locally: buf and both protoc plugins are built from the Go
# module proxy at pinned versions (the plugins at the versions go.mod pins),
# and buf.yaml has no registry dependencies. The generated code is committed;
# CI does not run this.
set -eu
cd "$(dirname "$0")/../api"
BUF_VERSION=${BUF_VERSION:-v1.75.0}
go run "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION" format -w
go run "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION" lint
go run "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION" generate
