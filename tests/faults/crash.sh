#!/usr/bin/env bash
# Scenario 5a — server crash and restart with N (10,000) clients: kill -9 the server, start a new one
# at the same address 2 s later. Every client must reconnect; the in-memory store lost the sessions, so
# each is told SessionLost and starts a new session. Full jitter must spread the reconnects: the
# largest share of clients connecting in any 100 ms window is reported and bounded.
source "$(dirname "$0")/lib.sh"
N=${FAULTS_CRASH_N:-10000}
DOWN=${FAULTS_CRASH_DOWN_SECS:-2}
require_netns
ensure_driver
setup_pair
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --interval 1s --timeout 3s --duration 120s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/clients.log" clients --server $A_S:7000 --n "$N" --interval 1s --timeout 3s --connect-rate 2500 --duration 120s
CLI=$LAST_PID
wait_line "$OUT/clients.log" '^UP' 1 90
log "$N clients up; heartbeating 2 s"
sleep 2
t0=$(now_us)
kill -KILL "$SRV"
wait "$SRV" 2>/dev/null || true
log "server killed; restarting in ${DOWN} s"
sleep "$DOWN"
start "$NS_S" "$OUT/server2.log" server --listen $A_S:7000 --interval 1s --timeout 3s --duration 90s
SRV2=$LAST_PID
wait_line "$OUT/server2.log" '^READY' 1 10
t1=$(sed -n 's/^READY \([0-9]*\).*/\1/p' "$OUT/server2.log")
wait_line "$OUT/clients.log" '^UP' 2 60
log "all $N reconnected"
# Accept-queue overflows in the server's namespace (SYNs dropped, retried by the client after 1 s).
ip netns exec "$NS_S" nstat -az TcpExtListenOverflows TcpExtListenDrops 2>/dev/null | awk 'NR>1 {print "NSTAT", $1, $2}' >"$OUT/nstat.log" || true
cat "$OUT/nstat.log" >&2 || true
sleep 1
stop_proc "$CLI"
stop_proc "$SRV2"
analyze crash --dir "$OUT" --n "$N" --mark "$t0" --restart "$t1" --max-share "${FAULTS_CRASH_MAX_SHARE:-7.5}"
