#!/usr/bin/env bash
# Scenario 3 — jitter and loss: every chunk passes a user-space proxy that holds it 200 ms ± 100 ms
# (uniform, per direction, never reordering a stream), and nftables drops 1 % of the packets arriving
# on the veth in each namespace (so 1 % per direction). Timeout 5 s, interval 1 s, N connections, a bounded soak
# (FAULTS_SOAK_SECS, default 60; FAULTS_SOAK_SECS=300 for the 5-minute local run): 0 false convictions.
source "$(dirname "$0")/lib.sh"
N=${FAULTS_SOAK_N:-1000}
SOAK=${FAULTS_SOAK_SECS:-60}
LIMIT=$((SOAK + 90))
require_netns
ensure_nft
ensure_driver
setup_pair
start "$NS_S" "$OUT/server.log" server --listen 127.0.0.1:7000 --interval 1s --timeout 5s --duration ${LIMIT}s
SRV=$LAST_PID
start "$NS_S" "$OUT/proxy.log" proxy --listen $A_S:7001 --to 127.0.0.1:7000 --delay 200ms --jitter 100ms --duration ${LIMIT}s
PRX=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
wait_line "$OUT/proxy.log" '^READY' 1 10
nft_drop "$NS_C" "$IF_C" "numgen random mod 100 < 1"
nft_drop "$NS_S" "$IF_S" "numgen random mod 100 < 1"
start "$NS_C" "$OUT/clients.log" clients --server $A_S:7001 --n "$N" --interval 1s --timeout 5s --duration ${LIMIT}s
CLI=$LAST_PID
wait_line "$OUT/clients.log" '^UP' 1 60
t0=$(now_us)
log "$N connections up through the proxy with 1 % loss; soaking ${SOAK} s"
sleep "$SOAK"
t1=$(now_us)
dropped=$( (ip netns exec "$NS_C" nft list table inet vfault; ip netns exec "$NS_S" nft list table inet vfault) |
    grep -o 'packets [0-9]*' | awk '{s+=$2} END {print s+0}' || echo 0)
for ns in "$NS_C" "$NS_S"; do  # TCP counters of both namespaces, for any disconnect seen
    ip netns exec "$ns" nstat -az 2>/dev/null | grep -E 'Abort|Rst|Reset|Timeout|Retrans' >"$OUT/nstat-$ns.log" || true
done
stop_proc "$CLI"
stop_proc "$PRX"
stop_proc "$SRV"
analyze soak --dir "$OUT" --n "$N" --mark "$t0" --end "$t1" --dropped "${dropped:-0}"
