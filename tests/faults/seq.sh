#!/usr/bin/env bash
# Scenario 5b — a sequenced stream through forced disconnects. N clients each send `s0, s1, …` at
# RATE/s; the server checks every session's numbers (no gap, no duplicate, in order) and echoes each
# message to its session; each client checks the echoes. MODE=max-age: the server closes connections
# after 150 ms ±10 % (CLOSE MaxAge); MODE=kill: the server drops every connection every 150 ms without a
# CLOSE (ServerHandle::disconnect). The clients stop after about 100 disconnects each, flush (everything
# acknowledged) and wait for the last echoes. (The stop comes once the clients together have seen
# 100 × N disconnects.)
# The clients' backoff is shortened (base 10 ms, cap 50 ms): a connection that never lives
# `stable_after` (10 s) would otherwise climb to the 30 s cap within a dozen disconnects.
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-max-age}
SCENARIO=seq-$MODE
OUT=${FAULTS_OUT:-$TARGET_DIR/faults}/$SCENARIO
N=${FAULTS_SEQ_N:-10}
RATE=${FAULTS_SEQ_RATE:-500}
require_netns
ensure_driver
setup_pair
case $MODE in
    max-age) fault=(--max-age 150ms) ;;
    kill) fault=(--kill-every 150ms) ;;
    *) log "unknown MODE $MODE"; exit 2 ;;
esac
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --interval 1s --timeout 3s --echo "${fault[@]}" --loops "${FAULTS_SEQ_LOOPS:-2}" --duration 90s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/clients.log" clients --server $A_S:7000 --n "$N" --interval 1s --timeout 3s \
    --seq-rate "$RATE" --seq-until-deads $((100 * N)) --backoff-base 10ms --backoff-cap 50ms --duration 80s
CLI=$LAST_PID
wait_line "$OUT/clients.log" '^END' 1 85
stop_proc "$CLI"
stop_proc "$SRV"
analyze seq --dir "$OUT" --n "$N" --mode "$MODE"
