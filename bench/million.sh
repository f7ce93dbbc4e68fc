#!/usr/bin/env bash
# N live heartbeating connections on this one box (default 100,000; N=1000000 for the full run), from
# one command, bounded in time, cleaning up after itself:
#
#   bench/million.sh                      # 100,000 connections, ~6 minutes
#   N=1000000 bench/million.sh            # the million, ~12 minutes
#   N=20000 DURATION=30 INTERVAL=5 TIMEOUT=15 bench/million.sh   # a quick look
#
# A process may open at most 20,000 files here (a hard limit), so both ends are spread over
# processes: `vitals serve --processes W` (W workers on one port, one status page) and
# `vitals bench --processes P` (P children, each with loopback source addresses of its own: every
# address adds an ephemeral port range). After the ramp and a measurement window of DURATION seconds,
# one bench child holding FREEZE % of the connections is frozen with SIGSTOP, and the server's
# convictions are watched until all of them are convicted (at most TIMEOUT + INTERVAL + 30 s).
#
# Root: the kernel limits below are raised for the run and put back afterwards (every one is printed,
# before and after, and written to OUT/sysctl.txt). Nothing else on the machine is changed.
#   fs.file-max                    2 sockets per connection, system-wide
#   net.ipv4.tcp_max_syn_backlog   the ramp opens connections faster than one accept queue drains
#   net.core.netdev_max_backlog    loopback packets queue per CPU during the ramp
# Results: OUT/bench.json (the bench's report), OUT/bench.txt, OUT/slabinfo.{before,during},
# OUT/meminfo.{before,during}, OUT/status.json (the server's page during the window), OUT/serve.log.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100000}"
INTERVAL="${INTERVAL:-30}"
TIMEOUT="${TIMEOUT:-90}"
DURATION="${DURATION:-120}"
FREEZE="${FREEZE:-1}"
# Connections per server worker on average: below the 20,000 open files with room for the kernel's
# uneven spread over SO_REUSEPORT listeners (a hash: about ±4 standard deviations of the mean).
PER_WORKER="${PER_WORKER:-17500}"
# Connections per bench child (each opens one socket per connection).
PER_CHILD="${PER_CHILD:-19000}"
OUT="${OUT:-target/million}"
# Bound on the whole run.
LIMIT_S="${LIMIT_S:-1800}"

[ "$(id -u)" = 0 ] || { echo "million.sh: run as root (it raises kernel limits for the run)" >&2; exit 2; }
mkdir -p "$OUT"
cargo build --release -q -p vitals-cli
VITALS=target/release/vitals

WORKERS=$(( (N + PER_WORKER - 1) / PER_WORKER ))
CHILDREN=$(( (N + PER_CHILD - 1) / PER_CHILD + 1 ))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
HTTP=$(free_port)

SYSCTLS="fs.file-max net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog"
declare -A SAVED
for k in $SYSCTLS; do SAVED[$k]="$(sysctl -n "$k")"; done
server=""
restore() {
  set +e
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    for _ in $(seq 60); do kill -0 "$server" 2>/dev/null || break; sleep 1; done
    kill -KILL "$server" 2>/dev/null
  fi
  for k in $SYSCTLS; do sysctl -q -w "$k=${SAVED[$k]}"; done
  {
    echo "== after (restored)"
    for k in $SYSCTLS; do echo "$k = $(sysctl -n "$k")"; done
  } | tee -a "$OUT/sysctl.txt"
}
trap restore EXIT INT TERM

{
  echo "== before"
  for k in $SYSCTLS; do echo "$k = ${SAVED[$k]}"; done
} | tee "$OUT/sysctl.txt"
sysctl -q -w fs.file-max=$(( ${SAVED[fs.file-max]} > 2 * N + 1000000 ? ${SAVED[fs.file-max]} : 2 * N + 1000000 ))
sysctl -q -w net.ipv4.tcp_max_syn_backlog=65536
sysctl -q -w net.core.netdev_max_backlog=16384
{
  echo "== during the run"
  for k in $SYSCTLS; do echo "$k = $(sysctl -n "$k")"; done
} | tee -a "$OUT/sysctl.txt"

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt"
cp /proc/slabinfo "$OUT/slabinfo.before"
cp /proc/meminfo "$OUT/meminfo.before"

RUST_LOG=warn "$VITALS" serve --processes "$WORKERS" --loops 1 --listen "127.0.0.1:$PORT" \
  --http "127.0.0.1:$HTTP" --interval "${INTERVAL}s" --timeout "${TIMEOUT}s" \
  --max-connections $(( WORKERS * 19900 )) >"$OUT/serve.out" 2>"$OUT/serve.log" &
server=$!
for _ in $(seq 120); do grep -q "listening on" "$OUT/serve.out" && break; sleep 0.5; done
grep "listening on" "$OUT/serve.out" || { echo "the server did not start; see $OUT/serve.log" >&2; exit 1; }

# While the bench runs: the kernel's slabs and the server's page in the middle of the window.
(
  # Until every connection is open, or (a ramp that falls short) the count has not grown for 20 s.
  last=0; still=0
  for _ in $(seq "$LIMIT_S"); do
    open=$(curl -s "127.0.0.1:$HTTP/status.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"]["open"])' 2>/dev/null || echo 0)
    [ "$open" -ge "$N" ] && break
    if [ "$open" -gt 0 ] && [ "$open" -eq "$last" ]; then still=$((still + 1)); else still=0; fi
    [ "$still" -ge 20 ] && break
    last=$open
    sleep 1
  done
  sleep $(( DURATION / 2 + 5 ))
  cp /proc/slabinfo "$OUT/slabinfo.during"
  cp /proc/meminfo "$OUT/meminfo.during"
  curl -s "127.0.0.1:$HTTP/status.json" > "$OUT/status.json"
  curl -s "127.0.0.1:$HTTP/metrics" > "$OUT/metrics.txt"
  echo "load in the window: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.txt"
) &
watcher=$!

set +e
timeout "$LIMIT_S" "$VITALS" bench --server "127.0.0.1:$PORT" -n "$N" --processes "$CHILDREN" \
  --freeze-percent "$FREEZE" --server-status "127.0.0.1:$HTTP" --server-pid "$server" \
  --interval "${INTERVAL}s" --timeout "${TIMEOUT}s" --duration "${DURATION}s" \
  --connect-concurrency 2048 --json >"$OUT/bench.json"
rc=$?
set -e
kill "$watcher" 2>/dev/null || true
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/load.txt"
python3 - "$OUT" <<'PY' | tee "$OUT/bench.txt"
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/bench.json"))
f = r.get("freeze") or {}
kb, ka = r["kernel_before"], r["kernel_after"]
print(f"connections: {r['connections']} of {r['connections_requested']} held, failed {r['failed']}, lost {r['lost']}"
      f" ({r['processes']} bench processes, {r['source_addresses']} source addresses)")
print(f"ramp: {r['ramp_seconds']:.1f} s ({r['connections'] / r['ramp_seconds']:.0f} connections/s)")
print(f"window: {r['duration_s']:.0f} s, {r['heartbeats']} heartbeats ({r['heartbeats_per_s']:.0f}/s), "
      f"rtt p50 {r['rtt_us']['p50']} us p99 {r['rtt_us']['p99']} us")
print(f"server RSS (all processes): {r['server_rss_before_bytes'] / 2**20:.0f} MiB before, "
      f"{r['server_rss_after_bytes'] / 2**20:.0f} MiB after = {r['server_rss_per_connection_bytes']:.0f} B per connection")
print(f"kernel: slab {kb['slab'] / 2**20:.0f} -> {ka['slab'] / 2**20:.0f} MiB, TCP buffers {kb['tcp_buffers'] / 2**20:.1f} -> "
      f"{ka['tcp_buffers'] / 2**20:.1f} MiB = {r['kernel_per_connection_bytes_both_ends']:.0f} B per connection (both ends)")
print("  grown most (B per connection): " + ", ".join(f"{k} {v:.0f}" for k, v in
      sorted(r["slab_growth_per_connection_bytes"].items(), key=lambda kv: -kv[1])[:8]))
print(f"server CPU: {r['server_cpu_seconds']:.1f} s = {r['server_cpu_per_heartbeat_us']:.2f} us per heartbeat, "
      f"{r['server_cpu_per_connection_second_ns']:.1f} ns per connection-second")
print(f"bench RSS: {r['bench_rss_bytes'] / 2**20:.0f} MiB, bench CPU {r['bench_cpu_seconds']:.1f} s "
      f"({r['bench_cpu_seconds'] * 1e6 / max(r['heartbeats'], 1):.2f} us per heartbeat)")
if f:
    s = lambda v: "-" if v is None else f"{v:.0f} s"
    print(f"freeze: {f['frozen']} frozen, convicted {f['convicted']} (first {s(f['first_s'])}, half {s(f['half_s'])}, "
          f"90 % {s(f['p90_s'])}, 99 % {s(f['p99_s'])}, all {s(f['all_s'])} after SIGSTOP; "
          f"{f['in_window']} within {f['expected_s'][0]:.0f}-{f['expected_s'][1]:.0f} s), "
          f"extra convictions {f['extra_convictions']}, live lost {f['live_lost']}, frozen ended {f['frozen_ended']}")
    print("  convictions by second after SIGSTOP: " + " ".join(f"{t:.0f}:{c}" for t, c in f["timeline"] if c))
PY
# The kernel's per-connection share from the slab caches that hold socket objects (both ends), read in
# the middle of the window. Something on this machine walks /proc/*/fd (proc_inode_cache grows by
# one inode, and dentry by one dentry, per socket it lists): those are the walker's, not the
# connections', and are subtracted (one dentry per proc inode).
python3 - "$OUT" "$N" <<'PY' | tee -a "$OUT/bench.txt"
import sys
out, n = sys.argv[1], int(sys.argv[2])
def read(path):
    caches = {}
    for line in open(path):
        f = line.split()
        if len(f) > 4 and f[1].isdigit():
            caches[f[0]] = (int(f[1]), int(f[3]))
    return caches
b, d = read(f"{out}/slabinfo.before"), read(f"{out}/slabinfo.during")
def grown(name):
    (na, sa), (nb, sb) = b.get(name, (0, 0)), d.get(name, (0, 0))
    return nb * sb - na * sa, nb - na
socket = ["TCP", "sock_inode_cache", "filp", "eventpoll_epi", "eventpoll_pwq", "lsm_inode_cache", "lsm_file_cache"]
socket += sorted(k for k in d if k.startswith("kmalloc"))
total = 0
parts = []
for name in socket:
    bytes_, _ = grown(name)
    if bytes_ > 0:
        total += bytes_
        parts.append((name, bytes_))
dentry_bytes, _ = grown("dentry")
_, proc_inodes = grown("proc_inode_cache")
dentry_size = d.get("dentry", (0, 192))[1]
dentry_sockets = dentry_bytes - max(proc_inodes, 0) * dentry_size
total += max(dentry_sockets, 0)
parts.append(("dentry (less /proc's)", dentry_sockets))
parts.sort(key=lambda p: -p[1])
print(f"kernel, socket slab caches: {total / n:.0f} B per connection (both ends): "
      + ", ".join(f"{k} {v / n:.0f}" for k, v in parts if v / n >= 1))
print(f"  not counted: proc_inode_cache +{grown('proc_inode_cache')[0] / n:.0f} B and its dentries "
      f"(+{max(proc_inodes, 0) * dentry_size / n:.0f} B) per connection, from a /proc/*/fd walker")
PY
cat "$OUT/load.txt"
exit $rc
