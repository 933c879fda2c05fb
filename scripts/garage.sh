#!/usr/bin/env bash
# A single-node Garage (S3-compatible object store) for atosnap's S3 tests.
#
#   scripts/garage.sh start     start it (building garage once if missing),
#                               with bucket atosnap-test and a key for it
#   scripts/garage.sh stop      stop it (data kept)
#   scripts/garage.sh restart   stop + start, data kept
#   scripts/garage.sh env       print the path of the env file to source
#   scripts/garage.sh run CMD…  start, run CMD with the env, stop; CMD's exit code
#                               e.g. scripts/garage.sh run cargo test
#
# Env: GARAGE_DIR (default /tmp/atosnap-garage), GARAGE_S3_PORT (3900),
# GARAGE_RPC_PORT (3901), GARAGE_ADMIN_PORT (3903), GARAGE_VERSION (2.5.0,
# used only when garage has to be installed), GARAGE_BIN (binary to use).
# The env file exports AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION=garage, ATOSNAP_S3_ENDPOINT and ATOSNAP_TEST_S3_BUCKET.
set -euo pipefail

GARAGE_DIR=${GARAGE_DIR:-/tmp/atosnap-garage}
S3_PORT=${GARAGE_S3_PORT:-3900}
RPC_PORT=${GARAGE_RPC_PORT:-3901}
ADMIN_PORT=${GARAGE_ADMIN_PORT:-3903}
GARAGE_VERSION=${GARAGE_VERSION:-2.5.0}
BUCKET=atosnap-test
KEY_NAME=atosnap-test-key

CONFIG=$GARAGE_DIR/garage.toml
PIDFILE=$GARAGE_DIR/garage.pid
LOG=$GARAGE_DIR/garage.log
ENVFILE=$GARAGE_DIR/env

say() { echo "garage.sh: $*" >&2; }
die() { say "$*"; exit 1; }

find_garage() {
    if [[ -n ${GARAGE_BIN:-} ]]; then
        echo "$GARAGE_BIN"
    elif command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [[ -x $HOME/.cargo/bin/garage ]]; then
        echo "$HOME/.cargo/bin/garage"
    fi
}

ensure_garage() {
    GARAGE=$(find_garage)
    if [[ -z $GARAGE ]]; then
        say "no garage binary: cargo install garage --locked --version $GARAGE_VERSION (once, several minutes)"
        cargo install garage --locked --version "$GARAGE_VERSION" >&2
        GARAGE=$(find_garage)
        [[ -n $GARAGE ]] || die "garage still not found after cargo install"
    fi
}

g() { "$GARAGE" -c "$CONFIG" "$@"; }

random_hex() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
    else
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
    fi
}

running() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

write_config() {
    mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    chmod 700 "$GARAGE_DIR"
    [[ -s $GARAGE_DIR/rpc_secret ]] || (umask 077 && random_hex >"$GARAGE_DIR/rpc_secret")
    [[ -s $GARAGE_DIR/admin_token ]] || (umask 077 && random_hex >"$GARAGE_DIR/admin_token")
    (
        umask 077
        cat >"$CONFIG" <<EOF
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(cat "$GARAGE_DIR/rpc_secret")"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$(cat "$GARAGE_DIR/admin_token")"
EOF
    )
}

# Waits until `garage status` answers (the RPC side is up).
wait_rpc() {
    local i
    for ((i = 0; i < 120; i++)); do
        if g status >/dev/null 2>&1; then return 0; fi
        running || { tail -20 "$LOG" >&2; die "garage server exited (log: $LOG)"; }
        sleep 0.5
    done
    tail -20 "$LOG" >&2
    die "garage did not answer within 60 s (log: $LOG)"
}

# Waits until the cluster is healthy and the S3 API answers.
wait_s3() {
    local i code
    for ((i = 0; i < 120; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/health" || true)
        if [[ $code == 200 ]] && curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"; then
            return 0
        fi
        running || { tail -20 "$LOG" >&2; die "garage server exited (log: $LOG)"; }
        sleep 0.5
    done
    tail -20 "$LOG" >&2
    die "garage S3 API not ready within 60 s (log: $LOG)"
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# One-time cluster setup: layout, bucket, key, env file.
setup_cluster() {
    local node out key_id secret
    if ! g layout show 2>/dev/null | grep -q "Current cluster layout version: [1-9]"; then
        node=$(g status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -n 1)
        [[ -n $node ]] || { g status >&2 || true; die "cannot find the node id in 'garage status'"; }
        g layout assign -z dc1 -c 1G "$node" >/dev/null
        g layout apply --version 1 >/dev/null
    fi
    wait_s3
    if ! g bucket info "$BUCKET" >/dev/null 2>&1; then
        g bucket create "$BUCKET" >/dev/null
    fi
    if [[ -s $ENVFILE ]] && g key info "$KEY_NAME" >/dev/null 2>&1; then
        return 0
    fi
    # A key without a saved secret is useless: make a fresh one.
    g key delete --yes "$KEY_NAME" >/dev/null 2>&1 || true
    out=$(g key create "$KEY_NAME")
    key_id=$(awk -F': *' '/^Key ID/ {print $2; exit}' <<<"$out" | tr -d ' ')
    secret=$(awk -F': *' '/^Secret key/ {print $2; exit}' <<<"$out" | tr -d ' ')
    [[ -n $key_id && -n $secret ]] || die "cannot parse the output of 'garage key create'"
    g bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
    (
        umask 077
        cat >"$ENVFILE" <<EOF
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=garage
export ATOSNAP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export ATOSNAP_TEST_S3_BUCKET=$BUCKET
EOF
    )
}

start() {
    ensure_garage
    mkdir -p "$GARAGE_DIR"
    if running; then
        [[ -s $ENVFILE ]] || setup_cluster
        say "running (pid $(cat "$PIDFILE")); env: $ENVFILE"
        return 0
    fi
    for p in "$S3_PORT" "$RPC_PORT" "$ADMIN_PORT"; do
        if port_busy "$p"; then
            die "port $p is in use; set GARAGE_S3_PORT / GARAGE_RPC_PORT / GARAGE_ADMIN_PORT"
        fi
    done
    write_config
    RUST_LOG=${GARAGE_LOG:-garage=warn} nohup "$GARAGE" -c "$CONFIG" server >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    wait_rpc
    setup_cluster
    wait_s3
    # The env file may name another port if GARAGE_S3_PORT changed.
    sed -i "s#^export ATOSNAP_S3_ENDPOINT=.*#export ATOSNAP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT#" "$ENVFILE"
    say "started (pid $(cat "$PIDFILE"), S3 on 127.0.0.1:$S3_PORT); env: $ENVFILE"
}

stop() {
    if ! running; then
        rm -f "$PIDFILE"
        say "not running"
        return 0
    fi
    local pid i
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "garage (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
start) start ;;
stop) stop ;;
restart)
    stop
    start
    ;;
env) echo "$ENVFILE" ;;
run)
    [[ $# -gt 0 ]] || die "usage: $0 run CMD [ARGS...]"
    was_running=0
    running && was_running=1
    start
    set +e
    (
        # shellcheck disable=SC1090
        source "$ENVFILE"
        "$@"
    )
    rc=$?
    set -e
    [[ $was_running == 1 ]] || stop
    exit "$rc"
    ;;
*)
    echo "usage: $0 start|stop|restart|env|run CMD..." >&2
    exit 2
    ;;
esac
