#!/usr/bin/env bash
# vitals vs mosquitto, side by side in one run: the same number of connections, ping interval and
# duration against each server on loopback; each server's RSS and CPU read from /proc.
#
#   bench/compare-mosquitto.sh                 # N = 1000 10000 19000, 30 s each (about 5 minutes)
#   NS="1000 5000" DURATION=10 bench/compare-mosquitto.sh
#   PAUSE=0 NS=19000 bench/compare-mosquitto.sh    # do not wait out TIME_WAIT (see PAUSE below)
#   LOOPS=2 bench/compare-mosquitto.sh             # vitals with two event loops (default: one)
#   FLOOR=0 bench/compare-mosquitto.sh             # without the floor rows (see below)
#   JSON=0 bench/compare-mosquitto.sh              # without the classic JSON rows (see below)
#   PERF=1 bench/compare-mosquitto.sh              # also count system calls per heartbeat (perf stat)
#   SERVERS="vitals-json floor-json tokio-json" NS=10000 bench/compare-mosquitto.sh   # some rows only
#     (rows: mosquitto vitals vitals-client-driven floor-mqtt floor-vitals vitals-json tokio-json
#     floor-json, and tokio-json-mt: the tokio baseline on a two-worker runtime)
#
# mosquitto (Debian package, installed here where missing) is driven by bench/keepalive_load.py
# --protocol mqtt (standard library only: CONNECT, then PINGREQ every INTERVAL, PINGRESP counted);
# vitals by `vitals bench`.
# Both announce a 10 s keep-alive / timeout and ping every second. vitals runs twice: with default
# two-sided liveness, and with --client-driven (the server only answers, like an MQTT broker).
# vitals runs LOOPS event loops (default 1: one event-loop thread, as mosquitto has; on a 2-core box
# the load generator needs the other core).
# The "floor" rows: bench/floor/floor.c, a minimal single-threaded epoll server that only answers
# (MQTT CONNECT/PINGREQ, vitals HELLO/PING, or the classic JSON ping), driven by the same load
# generator as the server it is the floor of: what the kernel charges for a loopback heartbeat on this
# machine, below which no server can go.
# The classic JSON rows (JSON=1, the default): the same Python classic client (keepalive_load.py
# --protocol json: `{"ping":K}` every INTERVAL, never answering a server's ping) against
# `vitals serve --codec json` with its defaults, the C floor in json mode, and bench/tokio-answer (a
# tokio task-per-connection server that only answers; current-thread runtime, like the one loop).
# With PERF=1 each Python-driven run adds a 5 s window after the measurement in which `perf stat`
# counts the server's system calls (their counts per heartbeat go into the JSON and the table; the
# CPU figures come from the window before, without perf's overhead).
# Output: a table with the ratios to mosquitto, bench/results/compare.json and compare.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
NS="${NS:-1000 10000 19000}"
DURATION="${DURATION:-30}"
INTERVAL="${INTERVAL:-1}"
# Seconds to wait before each run at N >= 15,000: closed client sockets sit in TIME_WAIT for 60 s, and
# at 19,000 connections the next run would not find enough ephemeral ports (127.0.0.1-3 share one
# range). Smaller N do not wait.
PAUSE="${PAUSE:-65}"
LOOPS="${LOOPS:-1}"
FLOOR="${FLOOR:-1}"
JSON="${JSON:-1}"
PERF="${PERF:-0}"
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (Debian package)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release -q -p vitals-cli
VITALS=target/release/vitals
if [ "$JSON" = 1 ]; then cargo build --release -q -p vitals-bench-tokio; fi
if [ "$FLOOR" = 1 ]; then
  mkdir -p target/bench
  cc -O2 -o target/bench/floor bench/floor/floor.c
fi
ulimit -n 20000

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_mosquitto() { # N
  local port; port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nlog_dest none\n' "$port" > "$tmp/m.conf"
  "$MOSQUITTO" -c "$tmp/m.conf" & local pid=$!; pids+=("$pid"); sleep 0.5
  drive_mqtt "$1" mosquitto "$port" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_floor_mqtt() { # N
  local port; port=$(free_port)
  target/bench/floor "$port" mqtt & local pid=$!; pids+=("$pid"); sleep 0.3
  drive_mqtt "$1" "floor (C epoll, MQTT)" "$port" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

drive_mqtt() { # N label port pid: the MQTT generator against the broker listening on port
  drive_classic mqtt "$@"
}

drive_classic() { # protocol N label port pid: bench/keepalive_load.py against the server on port
  local perf=()
  [ "$PERF" = 1 ] && perf=(--perf)
  python3 bench/keepalive_load.py --protocol "$1" --port "$4" -n "$2" --interval "$INTERVAL" --keepalive 10 \
    --duration "$DURATION" --warmup 3 --server-pid "$5" --label "$3" "${perf[@]}" || true
}

run_json() { # N label command (PORT replaced by the port): a classic JSON server
  local n=$1 label=$2 port; port=$(free_port)
  local cmd=${3//PORT/$port}
  $cmd >"$tmp/json.log" 2>&1 & local pid=$!; pids+=("$pid")
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  drive_classic json "$n" "$label" "$port" "$pid"
  # SIGTERM: a background job of a script ignores SIGINT unless it installs a handler (vitals does).
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_vitals() { # N label extra-serve-flags...
  local n=$1 label=$2; shift 2
  local port; port=$(free_port)
  "$VITALS" serve --listen "127.0.0.1:$port" --interval "${INTERVAL}s" --timeout 10s \
    --max-connections 30000 --loops "$LOOPS" "$@" >"$tmp/serve.log" 2>&1 & local pid=$!; pids+=("$pid")
  for _ in $(seq 50); do grep -q "listening on" "$tmp/serve.log" && break; sleep 0.1; done
  drive_vitals "$n" "$label" "$port" "$pid"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

run_floor_vitals() { # N
  local port; port=$(free_port)
  target/bench/floor "$port" vitals & local pid=$!; pids+=("$pid"); sleep 0.3
  drive_vitals "$1" "floor (C epoll, vitals frames)" "$port" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

drive_vitals() { # N label port pid: `vitals bench` against the server listening on port
  local n=$1 label=$2 port=$3 pid=$4
  "$VITALS" bench --server "127.0.0.1:$port" -n "$n" --duration "${DURATION}s" --interval "${INTERVAL}s" \
    --timeout 10s --server-pid "$pid" --json 2>/dev/null \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'server':'$label','loops':$LOOPS,'connections':r['connections'],'lost_connections':r['lost'],'heartbeats':r['heartbeats'],'heartbeats_per_s':round(r['heartbeats_per_s'],1),'rss_per_conn_bytes':r['server_rss_per_connection_bytes'],'cpu_per_heartbeat_us':r['server_cpu_per_heartbeat_us'],'server_cpu_s':r['server_cpu_seconds'],'rtt_p99_us':r['rtt_us']['p99']}))" || true
}

echo "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores\", \"duration_s\": $DURATION, \"interval_s\": $INTERVAL, \"runs\": [" > "$OUT/compare.json"
first=1
for n in $NS; do
  servers="mosquitto vitals vitals-client-driven"
  [ "$FLOOR" = 1 ] && servers="$servers floor-mqtt floor-vitals"
  [ "$JSON" = 1 ] && servers="$servers vitals-json tokio-json"
  [ "$JSON" = 1 ] && [ "$FLOOR" = 1 ] && servers="$servers floor-json"
  servers="${SERVERS:-$servers}"
  for which in $servers; do
    if [ "$first" != 1 ] && [ "$n" -ge 15000 ]; then sleep "$PAUSE"; fi
    case $which in
      mosquitto) line=$(run_mosquitto "$n") ;;
      vitals) line=$(run_vitals "$n" vitals) ;;
      vitals-client-driven) line=$(run_vitals "$n" vitals-client-driven --client-driven) ;;
      floor-mqtt) line=$(run_floor_mqtt "$n") ;;
      floor-vitals) line=$(run_floor_vitals "$n") ;;
      vitals-json) line=$(run_json "$n" "vitals --codec json" \
        "$VITALS serve --codec json --listen 127.0.0.1:PORT --interval ${INTERVAL}s --timeout 10s --max-connections 30000 --loops $LOOPS") ;;
      tokio-json) line=$(run_json "$n" "tokio task per conn (JSON)" "target/release/tokio-answer PORT") ;;
      # Not in the default set: the same with a two-worker runtime (tokio's usual flavour).
      tokio-json-mt) line=$(run_json "$n" "tokio task per conn, 2 threads (JSON)" "target/release/tokio-answer PORT 2") ;;
      floor-json) line=$(run_json "$n" "floor (C epoll, JSON)" "target/bench/floor PORT json") ;;
    esac
    echo "$line" >&2
    [ -n "$line" ] || continue
    [ $first = 1 ] || echo "," >> "$OUT/compare.json"
    first=0
    echo "$line" >> "$OUT/compare.json"
  done
done
echo "]}" >> "$OUT/compare.json"

python3 - "$OUT/compare.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
runs = d["runs"]
print(f"machine: {d['machine']}; {d['duration_s']} s per run, ping every {d['interval_s']} s")
print(f"{'N':>6} {'server':<31} {'RSS/conn B':>10} {'CPU/hb us':>10} {'hb/s':>9} {'lost':>5}  ratio RSS  ratio CPU  CPU x floor  syscalls/hb")
print("(ratios: to mosquitto at the same N; CPU x floor: to the floor server driven by the same load generator;")
print(" syscalls/hb with PERF=1: all / reads / writes / epoll waits per heartbeat, from a later window)")
for n in sorted({r["connections"] for r in runs}):
    at_n = [r for r in runs if r["connections"] == n]
    base = next((r for r in at_n if r["server"] == "mosquitto"), None)
    floors = {
        "mqtt": next((r for r in at_n if r["server"] == "floor (C epoll, MQTT)"), None),
        "vitals": next((r for r in at_n if r["server"] == "floor (C epoll, vitals frames)"), None),
        "json": next((r for r in at_n if r["server"] == "floor (C epoll, JSON)"), None),
    }
    for r in at_n:
        lost = r.get("lost_connections", 0)
        ratios = " " * 22
        if base and r is not base and base["rss_per_conn_bytes"] and base["cpu_per_heartbeat_us"]:
            ratios = f"  {r['rss_per_conn_bytes'] / base['rss_per_conn_bytes']:9.2f}  {r['cpu_per_heartbeat_us'] / base['cpu_per_heartbeat_us']:9.2f}"
        if "JSON" in r["server"] or "json" in r["server"]:
            kind = "json"
            ratios = " " * 22  # mosquitto serves another protocol
        else:
            kind = "mqtt" if r["server"] == "mosquitto" else "vitals" if r["server"].startswith("vitals") else None
        floor = floors.get(kind)
        over = f"  {r['cpu_per_heartbeat_us'] / floor['cpu_per_heartbeat_us']:11.2f}" if floor and floor["cpu_per_heartbeat_us"] else " " * 13
        p = r.get("per_heartbeat")
        calls = ""
        if p:
            rd = p.get("read", 0) + p.get("recvfrom", 0)
            wr = p.get("write", 0) + p.get("writev", 0) + p.get("sendto", 0)
            ep = p.get("epoll_wait", 0) + p.get("epoll_pwait", 0) + p.get("epoll_pwait2", 0)
            calls = f"  {p.get('syscalls', 0):.2f} / {rd:.2f} / {wr:.2f} / {ep:.2f}"
        print(f"{n:>6} {r['server']:<31} {r['rss_per_conn_bytes']:>10.0f} {r['cpu_per_heartbeat_us']:>10.2f} {r['heartbeats_per_s']:>9.0f} {lost:>5}{ratios}{over}{calls}")
PY
python3 bench/chart.py "$OUT/compare.json" "$OUT/compare.svg"
echo "wrote $OUT/compare.json and $OUT/compare.svg"
