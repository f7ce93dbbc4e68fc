#!/usr/bin/env bash
# Scenario 5 — a stalled JSON server and its classic clients (issue 12): `--codec json`, interval 1 s,
# timeout 3 s, 2,000 classic clients writing `{"ping":N}` every second (plain TCP, no vitals client).
# The server process is SIGSTOPped for 5 s — longer than its timeout — and continued. Its stall guard
# must convict nobody for the silence it could not see, and the pings the kernel queued meanwhile must
# not count as ping abuse: 0 connections closed, every client answered after the stall.
source "$(dirname "$0")/lib.sh"
N=${FAULTS_JSON_STALL_N:-2000}
STOP_MS=5000
require_netns
ensure_driver
setup_pair
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --codec json --interval 1s --timeout 3s --duration 60s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/classic.log" classic --server $A_S:7000 --n "$N" --bind $A_C --interval 1s --duration 60s
CROWD=$LAST_PID
wait_line "$OUT/classic.log" '^UP' 1 60
sleep 3
t0=$(now_us)
kill -STOP "$SRV"
log "server stopped for $STOP_MS ms with $N classic clients pinging"
sleep $((STOP_MS / 1000))
kill -CONT "$SRV"
kill -USR1 "$CROWD"
log "server continued"
sleep 5
t_end=$(now_us)  # closes after this are the teardown's
stop_proc "$CROWD"
stop_proc "$SRV"
wait 2>/dev/null || true
analyze json_stall --dir "$OUT" --n "$N" --mark "$t0" --end "$t_end" --stop-ms $STOP_MS --timeout-ms 3000 \
    --interval-ms 1000
