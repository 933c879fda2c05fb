#!/usr/bin/env bash
# Off-host benchmark: atosnap vs restic to an S3 bucket on a local Garage
# (first snapshot, 1 % day, bytes uploaded, full restore on a new host, and
# `atosnap copy` of the day from a local store), on the 130,000-vector
# runtime that benches/side_by_side.sh builds.
#
#   benches/s3_side_by_side.sh [--trials 3] [--json FILE] [--parts atosnap,restic,copy] [--keep]
#
# Starts a Garage of its own with scripts/garage.sh (GARAGE_DIR default
# /tmp/atosnap-garage-bench, S3 on 127.0.0.1:3910; left running),
# creates the bucket $BENCH_BUCKET (default atosnap-bench) for the test key,
# installs boto3 into the bench venv, builds atosnap in release mode, then
# runs benches/s3_side_by_side.py. BENCH_DIR as in side_by_side.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="${BENCH_DIR:-$HOME/.cache/atosnap-bench}"
vectors="${VECTORS:-130000}"
bucket="${BENCH_BUCKET:-atosnap-bench}"
# A Garage of its own (dir and ports), so that test runs of
# `scripts/garage.sh run` (which stop their Garage) cannot stop the bench's.
export GARAGE_DIR="${GARAGE_DIR:-/tmp/atosnap-garage-bench}"
export GARAGE_S3_PORT="${GARAGE_S3_PORT:-3910}" GARAGE_RPC_PORT="${GARAGE_RPC_PORT:-3911}"
export GARAGE_ADMIN_PORT="${GARAGE_ADMIN_PORT:-3913}"
garage_sh="${GARAGE_SH:-$here/scripts/garage.sh}"

if [ ! -f "$bench/rt-$vectors.done" ]; then
  echo "no runtime in $bench: run benches/side_by_side.sh once first (it builds it)" >&2
  exit 1
fi
command -v restic >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq restic >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
"$bench/venv/bin/python" -c 'import boto3' 2>/dev/null || "$bench/venv/bin/pip" install -q boto3

"$garage_sh" start
# shellcheck disable=SC1090
source "$("$garage_sh" env)"
garage_bin="${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}"
g() { "$garage_bin" -c "$GARAGE_DIR/garage.toml" "$@"; }
if ! g bucket info "$bucket" >/dev/null 2>&1; then
  g bucket create "$bucket" >/dev/null
fi
g bucket allow --read --write --owner "$bucket" --key atosnap-test-key >/dev/null

(cd "$here" && cargo build --release -q)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "restic: $(restic version | head -1); garage: $(g --version 2>/dev/null | head -1 || true)" >&2
"$bench/venv/bin/python" "$here/benches/s3_side_by_side.py" --day1 "$bench/rt-$vectors" --day2 "$bench/rt-$vectors-day2" \
  --atosnap "$here/target/release/atosnap" --bucket "$bucket" --endpoint "$ATOSNAP_S3_ENDPOINT" \
  --scratch "$bench/s3" "$@"
