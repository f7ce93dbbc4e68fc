#!/usr/bin/env python3
"""Keep-alive load generator (standard library only) for the mosquitto comparison: classic clients
that drive their own heartbeats and never answer a server's pings.

`--protocol mqtt`: N MQTT 3.1.1 connections (CONNECT, CONNACK awaited), a PINGREQ on each every INTERVAL
seconds, PINGRESPs counted. `--protocol json`: N plain TCP connections speaking the classic JSON
heartbeat (no handshake), `{"ping":K}` on each every INTERVAL seconds (K counts up per connection),
`{"pong":...}` answers counted. Ping phases are spread uniformly over the interval.

Reports what the server process spent, read from /proc: RSS per connection (VmRSS after connecting
minus before, over N) and CPU per heartbeat (utime+stime over the measurement window divided by the
answers received in it). One heartbeat = one ping answered. Bounded: stops after --duration seconds.
Prints one JSON object.
"""
import argparse
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
JSON_PONG = b'"pong"'
# What --perf counts on the server, in a second window after the measurement window (perf's
# tracepoints make system calls dearer, so the CPU figures come from the first window): every system call, the ones a heartbeat makes
# (reads, writes, waits, timers) and context switches.
PERF_EVENTS = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_pwait2",
    "syscalls:sys_enter_timerfd_settime",
    "syscalls:sys_enter_futex",
    "context-switches",
]


def perf_start(pid: int, seconds: float):
    """`perf stat` on process `pid` for `seconds`, CSV into a pipe; None when perf cannot run."""
    try:
        return subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "-p", str(pid), "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError:
        return None


def perf_counts(proc) -> dict:
    """The counts of a finished `perf_start`, by short event name."""
    if proc is None:
        return {}
    _, err = proc.communicate(timeout=30)
    counts = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            counts[f[2].split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "syscalls")] = int(f[0])
    return counts


def connect_packet(client_id: bytes, keepalive: int) -> bytes:
    # Variable header: protocol name "MQTT", level 4 (3.1.1), flags: clean session, keep-alive.
    var = struct.pack("!H4sBBH", 4, b"MQTT", 4, 0x02, keepalive)
    payload = struct.pack("!H", len(client_id)) + client_id
    body = var + payload
    return bytes([0x10, len(body)]) + body


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime is field 14, stime field 15 (1-based) -> indices 11, 12 here.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["mqtt", "json"], default="mqtt")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--connections", "-n", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between PINGREQs per connection")
    ap.add_argument("--keepalive", type=int, default=10, help="MQTT keep-alive announced in CONNECT (s)")
    ap.add_argument("--label", default=None, help="the 'server' field of the output (default: the protocol's)")
    ap.add_argument("--perf", action="store_true",
                    help="after the window, count the server's system calls with `perf stat` for --perf-seconds "
                         "(per heartbeat answered then, in the output)")
    ap.add_argument("--perf-seconds", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=30.0, help="measurement window (s)")
    ap.add_argument("--warmup", type=float, default=3.0, help="pinging before the window opens (s)")
    ap.add_argument("--server-pid", type=int, required=True)
    args = ap.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        print("refusing a non-loopback target", file=sys.stderr)
        return 2

    pid = args.server_pid
    mqtt = args.protocol == "mqtt"
    rss_before = rss_bytes(pid)
    sel = selectors.DefaultSelector()
    socks = []
    t0 = time.monotonic()
    # Connect in batches without waiting for each CONNACK in turn: open a batch, send CONNECTs, then
    # collect the batch's CONNACKs (4 bytes: 20 02 00 00) through the selector.
    lost = 0
    batch = 500
    for first in range(0, args.connections, batch):
        group = []
        for i in range(first, min(first + batch, args.connections)):
            s = socket.create_connection((args.host, args.port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if mqtt:
                s.sendall(connect_packet(b"load-%d" % i, args.keepalive))
                sel.register(s, selectors.EVENT_READ, len(socks) + len(group))
            s.setblocking(False)
            group.append(s)
        if not mqtt:
            # The classic JSON heartbeat has no handshake: connected is ready.
            socks.extend(group)
            continue
        acks = {id(s): b"" for s in group}
        waiting = set(range(len(group)))
        deadline = time.monotonic() + 10
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                try:
                    data = s.recv(4)
                except BlockingIOError:
                    continue
                acks[id(s)] += data
                if len(acks[id(s)]) >= 4 or not data:
                    sel.unregister(s)
                    waiting.discard(key.data - len(socks))
        for s in group:
            ack = acks[id(s)]
            if ack[:2] != b"\x20\x02" or ack[3:4] != b"\x00":
                lost += 1
        lost += len(waiting)
        for j in waiting:
            sel.unregister(group[j])
        socks.extend(group)
    connect_s = time.monotonic() - t0

    n = len(socks)
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    # Ping schedule: connection i first pings at phase i/n of an interval.
    next_ping = [time.monotonic() + args.interval * i / n for i in range(n)]
    order = sorted(range(n), key=lambda i: next_ping[i])
    pending = [0] * n
    sent = [0] * n
    window_open = time.monotonic() + args.warmup
    window_close = window_open + args.duration
    end = window_close + (args.perf_seconds if args.perf else 0)
    cpu_start = None
    cpu_used = None
    perf = None
    answered_in_window = 0
    answered_in_perf = 0
    answered_total = 0
    closed = set()
    pos = 0
    buf_need = {}
    while True:
        now = time.monotonic()
        if cpu_start is None and now >= window_open:
            cpu_start = cpu_seconds(pid)
            answered_in_window = 0
        if cpu_used is None and now >= window_close:
            cpu_used = cpu_seconds(pid) - cpu_start
            if args.perf:
                perf = perf_start(pid, args.perf_seconds)
        if now >= end:
            break
        # Send the pings that are due (order is a rotating schedule).
        while True:
            i = order[pos]
            if next_ping[i] > now:
                break
            if i not in closed:
                try:
                    if mqtt:
                        socks[i].send(PINGREQ)
                    else:
                        sent[i] += 1
                        socks[i].send(b'{"ping":%d}' % sent[i])
                    pending[i] += 1
                except OSError:
                    closed.add(i)
            next_ping[i] += args.interval
            pos = (pos + 1) % n
        wait = max(0.0, min(next_ping[order[pos]], window_close if cpu_used is None else end) - time.monotonic())
        for key, _ in sel.select(timeout=wait):
            i = key.data
            try:
                data = socks[i].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed.add(i)
                sel.unregister(socks[i])
                continue
            got = (buf_need.get(i, b"") + data)
            if mqtt:
                k = got.count(PINGRESP)
                buf_need[i] = got[-1:] if got.endswith(b"\xd0") else b""
            else:
                # An answer split across reads: keep what could be the start of the next '"pong"'.
                k = got.count(JSON_PONG)
                buf_need[i] = got[-(len(JSON_PONG) - 1):]
            pending[i] -= k
            answered_total += k
            if cpu_used is not None:
                answered_in_perf += k
            elif cpu_start is not None:
                answered_in_window += k
    if cpu_used is None:
        cpu_used = cpu_seconds(pid) - (cpu_start or cpu_seconds(pid))
    rss_after = rss_bytes(pid)
    counts = perf_counts(perf)
    for s in socks:
        s.close()
    result = {
        "server": args.label or ("mosquitto" if mqtt else "json"),
        "connections": n,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "connect_s": round(connect_s, 3),
        "connack_failures": lost,
        "lost_connections": len(closed),
        "heartbeats": answered_in_window,
        "heartbeats_per_s": round(answered_in_window / args.duration, 1),
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "rss_per_conn_bytes": round((rss_after - rss_before) / max(n, 1), 1),
        "server_cpu_s": round(cpu_used, 3),
        "cpu_per_heartbeat_us": round(cpu_used * 1e6 / max(answered_in_window, 1), 3),
    }
    if counts:
        result["perf_heartbeats"] = answered_in_perf
        result["per_heartbeat"] = {k: round(v / max(answered_in_perf, 1), 4) for k, v in counts.items()}
    print(json.dumps(result))
    return 0 if not closed and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
