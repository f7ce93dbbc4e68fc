# Shared helpers of the fault-injection suite; sourced by each scenario script.
#
# Safety: every address used here (10.77.0.0/24) lives only on veth pairs whose both ends sit inside
# network namespaces made by the script itself; no namespace gets a default route, nothing is added to
# the root namespace. Every process is started with a --duration bound and is killed (by pid) on exit.

set -euo pipefail

FAULTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$FAULTS_DIR/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DRIVER=$TARGET_DIR/release/examples/fault_driver
SCENARIO=${SCENARIO:-$(basename "$0" .sh)}
OUT=${FAULTS_OUT:-$TARGET_DIR/faults}/$SCENARIO
TAG=$$
A_S=10.77.0.1    # server side of the veth
A_C=10.77.0.2    # client side
A_DEAD=10.77.0.3 # second client-side address, for peers that will be frozen
PIDS=()
NAMESPACES=()

log() { echo "[$(date +%T.%3N) $SCENARIO] $*" >&2; }
now_us() { date +%s%6N; }

cleanup() {
    set +e
    local p ns
    for p in "${PIDS[@]}"; do
        kill -CONT "$p" 2>/dev/null
        kill -KILL "$p" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        if ip netns list | grep -qw "$ns"; then
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
            ip netns del "$ns" 2>/dev/null
        fi
    done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# Exit code 77: the suite cannot run here (no network namespaces); run-all.sh reports a skip.
require_netns() {
    if [ "$(id -u)" != 0 ]; then
        log "SKIP: needs root for network namespaces"
        exit 77
    fi
    local probe=vfprobe-$TAG
    if ! ip netns add "$probe" 2>/dev/null; then
        log "SKIP: cannot create network namespaces here"
        exit 77
    fi
    ip netns del "$probe"
}

ensure_nft() {
    command -v nft >/dev/null && return
    log "installing nftables (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nftables >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null; }
    command -v nft >/dev/null || { log "FAIL: nft not available"; exit 1; }
}

ensure_driver() {
    if [ -z "${FAULTS_NO_BUILD:-}" ]; then
        (cd "$REPO" && cargo build --release -q -p vitals --example fault_driver)
    fi
    [ -x "$DRIVER" ] || { log "FAIL: $DRIVER not built"; exit 1; }
}

# make_ns NAME: a namespace with loopback up and room for many connections.
make_ns() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
    ip netns exec "$1" sysctl -qw net.core.somaxconn=16384 net.ipv4.tcp_max_syn_backlog=16384
}

# link_ns CLIENT_NS SERVER_NS IF_C IF_S: a veth pair created directly inside the two namespaces.
link_ns() {
    ip link add "$3" netns "$1" type veth peer name "$4" netns "$2"
    ip -n "$1" addr add $A_C/24 dev "$3"
    ip -n "$1" addr add $A_DEAD/24 dev "$3"
    ip -n "$2" addr add $A_S/24 dev "$4"
    ip -n "$1" link set "$3" up
    ip -n "$2" link set "$4" up
    local ns
    for ns in "$1" "$2"; do
        if [ -n "$(ip -n "$ns" route show default)" ]; then
            log "FAIL: namespace $ns has a default route"
            exit 1
        fi
    done
}

# The usual pair: client namespace NS_C, server namespace NS_S, veth IF_C <-> IF_S.
setup_pair() {
    NS_C=vf-c-$TAG
    NS_S=vf-s-$TAG
    IF_C=vfc$TAG
    IF_S=vfs$TAG
    make_ns "$NS_C"
    make_ns "$NS_S"
    link_ns "$NS_C" "$NS_S" "$IF_C" "$IF_S"
    mkdir -p "$OUT"
    rm -f "$OUT"/*.log
}

# start NS LOGFILE ARGS...: runs the driver in NS; its pid goes to LAST_PID (and PIDS).
start() {
    local ns=$1 logf=$2
    shift 2
    ip netns exec "$ns" "$DRIVER" "$@" >"$logf" 2>"$logf.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_line FILE REGEX COUNT SECONDS: waits until FILE has COUNT lines matching REGEX.
wait_line() {
    local f=$1 re=$2 count=$3 secs=$4 i=0 n
    while :; do
        n=$(grep -cE "$re" "$f" 2>/dev/null || true)
        [ "${n:-0}" -ge "$count" ] && break
        i=$((i + 1))
        if [ $i -gt $((secs * 10)) ]; then
            log "FAIL: timed out after ${secs}s waiting for '$re' x$count in $f"
            tail -5 "$f" "$f.err" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
}

# stop_proc PID: SIGTERM (the driver prints its summary and exits), SIGKILL after 10 s.
stop_proc() {
    local p=$1 i=0
    kill -CONT "$p" 2>/dev/null || true
    kill -TERM "$p" 2>/dev/null || return 0
    while kill -0 "$p" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && { kill -KILL "$p" 2>/dev/null || true; break; }
        sleep 0.1
    done
    wait "$p" 2>/dev/null || true
}

# nft_drop NS IFACE [MATCH]: drops (and counts) packets arriving in NS on IFACE, optionally only
# those matching MATCH (e.g. `numgen random mod 100 < 1`). Input hook only, so a drop looks like loss
# on the wire: dropping in the sender's own output hook would instead fail its send locally (EPERM),
# which TCP handles differently (TCPRetransFail, and an early TCP_USER_TIMEOUT abort was seen).
# Call it in both namespaces to cut both directions.
nft_drop() {
    local ns=$1 ifc=$2 extra=${3:-}
    ip netns exec "$ns" nft -f - <<EOF
table inet vfault {
    chain in { type filter hook input priority 0; policy accept; iifname "$ifc" $extra counter drop; }
}
EOF
}

analyze() {
    python3 "$FAULTS_DIR/analyze.py" "$@"
}
