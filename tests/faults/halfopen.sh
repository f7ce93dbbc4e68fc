#!/usr/bin/env bash
# Scenario 2 — half-open: the server's namespace disappears without a FIN or RST reaching the clients
# (its veth is set down first, then the server is killed and the namespace deleted, which deletes the
# veth pair). The clients must convict by silence; then a new server comes up in a new namespace at the
# same address and every client reconnects (its session is unknown there: SessionLost, new session).
source "$(dirname "$0")/lib.sh"
N=${FAULTS_HALFOPEN_N:-1000}
require_netns
ensure_driver
setup_pair
start "$NS_S" "$OUT/server.log" server --listen $A_S:7000 --interval 500ms --timeout 2s --duration 60s
SRV=$LAST_PID
wait_line "$OUT/server.log" '^READY' 1 10
start "$NS_C" "$OUT/clients.log" clients --server $A_S:7000 --n "$N" --interval 500ms --timeout 2s --duration 60s
CLI=$LAST_PID
wait_line "$OUT/clients.log" '^UP' 1 60
log "$N connections up; heartbeating 2 s"
sleep 2
t0=$(now_us)
ip -n "$NS_S" link set "$IF_S" down   # from here on nothing the server's kernel says reaches the clients
kill -KILL "$SRV"
wait "$SRV" 2>/dev/null || true
ip netns del "$NS_S"                  # the namespace goes, and with it both ends of the veth
log "server namespace torn down; clients must convict by silence"
sleep 3
NS_S2=vf-s2-$TAG
make_ns "$NS_S2"
link_ns "$NS_C" "$NS_S2" "${IF_C}b" "${IF_S}b"
start "$NS_S2" "$OUT/server2.log" server --listen $A_S:7000 --interval 500ms --timeout 2s --duration 60s
SRV2=$LAST_PID
wait_line "$OUT/server2.log" '^READY' 1 10
t1=$(sed -n 's/^READY \([0-9]*\).*/\1/p' "$OUT/server2.log")
log "new server up in a new namespace at the same address"
wait_line "$OUT/clients.log" '^UP' 2 40
sleep 1
stop_proc "$CLI"
stop_proc "$SRV2"
analyze halfopen --dir "$OUT" --n "$N" --mark "$t0" --restart "$t1" --timeout-ms 2000 --interval-ms 500
