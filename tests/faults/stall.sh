#!/usr/bin/env bash
# Scenario 4 — CPU starvation and local stall: busy loops saturate every core (bounded by `timeout`),
# then the server process is SIGSTOPped for 2 s and resumed. At the same moment a second client
# process (its clients bound to another address) is frozen for good. The resumed server must convict
# none of the live clients (local-stall guard) and still convict every frozen one.
# Timing: interval 500ms, timeout 3s, so that the live clients (whose last byte from the server is at
# most one interval old when it stops) do not themselves convict a server silent for 2.5 s.
source "$(dirname "$0")/lib.sh"
N=${FAULTS_STALL_N:-1000}
DEAD_N=${FAULTS_STALL_DEAD_N:-20}
STOP_MS=2000
require_netns
ensure_driver
setup_pair
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --interval 500ms --timeout 3s --duration 60s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/live.log" clients --server $A_S:7000 --n "$N" --bind $A_C --interval 500ms --timeout 3s --duration 60s
LIVE=$LAST_PID
start "$NS_C" "$OUT/dead.log" clients --server $A_S:7000 --n "$DEAD_N" --bind $A_DEAD --interval 500ms --timeout 3s --duration 60s
DEAD=$LAST_PID
wait_line "$OUT/live.log" '^UP' 1 60
wait_line "$OUT/dead.log" '^UP' 1 60
BUSY=$(( $(nproc) * 2 ))
log "all up; starting $BUSY busy loops (14 s each)"
for _ in $(seq "$BUSY"); do
    timeout 14 sh -c 'while :; do :; done' &
    PIDS+=("$!")
done
sleep 2
t0=$(now_us)
kill -STOP "$SRV" "$DEAD"
log "server stopped, $DEAD_N peers frozen"
sleep $((STOP_MS / 1000))
kill -CONT "$SRV"
log "server resumed"
sleep 7
t_end=$(now_us)  # closes after this are the teardown's
stop_proc "$LIVE"
{ kill -KILL "$DEAD"; wait "$DEAD"; } 2>/dev/null || true
stop_proc "$SRV"
wait 2>/dev/null || true
analyze stall --dir "$OUT" --n "$N" --dead-n "$DEAD_N" --mark "$t0" --end "$t_end" --stop-ms $STOP_MS --timeout-ms 3000 \
    --interval-ms 500 --live-ip $A_C --dead-ip $A_DEAD --busy "$BUSY"
