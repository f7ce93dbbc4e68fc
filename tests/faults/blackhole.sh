#!/usr/bin/env bash
# Scenario 1 — blackhole: N connections heartbeat (interval 500ms, timeout 2s) between two namespaces,
# then nftables drops every packet between them
# (input hooks of both namespaces). Measures conviction time minus the timeout, on the
# server (the engine's own measure of the silence since the last byte it read) and on the clients.
# MODE=default (both sides ping) or MODE=client-driven (clients ping, the server answers: then the
# last byte a client hears is a PONG, which the driver sees, so the client side is exact too).
source "$(dirname "$0")/lib.sh"
N=${FAULTS_BLACKHOLE_N:-1000}
MODE=${MODE:-default}
SCENARIO=blackhole-$MODE
OUT=${FAULTS_OUT:-$TARGET_DIR/faults}/$SCENARIO
require_netns
ensure_nft
ensure_driver
setup_pair
extra=()
[ "$MODE" = client-driven ] && extra=(--client-driven)
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --interval 500ms --timeout 2s "${extra[@]}" --duration 90s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/clients.log" clients --server $A_S:7000 --n "$N" --interval 500ms --timeout 2s --duration 90s
CLI=$LAST_PID
wait_line "$OUT/clients.log" '^UP' 1 60
log "$N connections up; heartbeating 3 s"
sleep 3
t0=$(now_us)
nft_drop "$NS_C" "$IF_C"
nft_drop "$NS_S" "$IF_S"
t1=$(now_us)
log "blackhole in place (nft took $(( (t1 - t0) / 1000 )) ms)"
sleep 4
stop_proc "$CLI"
stop_proc "$SRV"
analyze blackhole --dir "$OUT" --n "$N" --mark "$t1" --mark-before "$t0" --timeout-ms 2000 --interval-ms 500 --mode "$MODE"
