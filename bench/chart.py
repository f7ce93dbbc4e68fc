#!/usr/bin/env python3
"""Draws the mosquitto comparison (results JSON from compare-mosquitto.sh) as an SVG: RSS per connection
and server CPU per heartbeat against the number of connections, one line per server. Standard library
only. Usage: chart.py results.json out.svg
"""
import json
import sys

W, H = 900, 380
PANEL_W, PANEL_H = 380, 260
COLORS = {
    "vitals": "#1f77b4",
    "vitals-client-driven": "#17becf",
    "mosquitto": "#d62728",
    "floor (C epoll, MQTT)": "#7f7f7f",
    "floor (C epoll, vitals frames)": "#bcbd22",
    "vitals --codec json": "#2ca02c",
    "tokio task per conn (JSON)": "#ff7f0e",
    "tokio task per conn, 2 threads (JSON)": "#e377c2",
    "floor (C epoll, JSON)": "#8c564b",
}


def panel(x0, y0, title, unit, series, xs):
    out = []
    ymax = max((v for s in series.values() for v in s if v is not None), default=1) * 1.15 or 1
    xmin, xmax = min(xs), max(xs)

    def px(x):
        return x0 + 50 + (x - xmin) / max(xmax - xmin, 1) * (PANEL_W - 70)

    def py(y):
        return y0 + PANEL_H - 30 - y / ymax * (PANEL_H - 60)

    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{y0 + 16}" text-anchor="middle" font-size="14">{title}</text>')
    out.append(f'<line x1="{x0 + 50}" y1="{py(0)}" x2="{x0 + PANEL_W - 20}" y2="{py(0)}" stroke="#333"/>')
    out.append(f'<line x1="{x0 + 50}" y1="{py(0)}" x2="{x0 + 50}" y2="{py(ymax)}" stroke="#333"/>')
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{x0 + 45}" y="{py(v) + 4}" text-anchor="end" font-size="10">{v:.0f}</text>')
        out.append(f'<line x1="{x0 + 50}" y1="{py(v)}" x2="{x0 + PANEL_W - 20}" y2="{py(v)}" stroke="#eee"/>')
    for x in xs:
        out.append(f'<text x="{px(x)}" y="{py(0) + 14}" text-anchor="middle" font-size="10">{x}</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{py(0) + 28}" text-anchor="middle" font-size="11">connections</text>')
    out.append(f'<text x="{x0 + 12}" y="{y0 + PANEL_H / 2}" font-size="11" transform="rotate(-90 {x0 + 12} {y0 + PANEL_H / 2})" text-anchor="middle">{unit}</text>')
    for name, ys in series.items():
        pts = [(px(x), py(y)) for x, y in zip(xs, ys) if y is not None]
        color = COLORS.get(name, "#333")
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (x, y), v in zip(pts, [y for y in ys if y is not None]):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
            out.append(f'<text x="{x + 5:.1f}" y="{y - 6:.1f}" font-size="10" fill="{color}">{v:.1f}</text>')
    return out


def main():
    results = json.load(open(sys.argv[1]))
    runs = results["runs"]
    xs = sorted({r["connections"] for r in runs})
    servers = sorted({r["server"] for r in runs})

    def series(field):
        return {
            s: [next((r[field] for r in runs if r["server"] == s and r["connections"] == x), None) for x in xs]
            for s in servers
        }

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    svg += panel(20, 30, "Server RSS per connection", "bytes", series("rss_per_conn_bytes"), xs)
    svg += panel(470, 30, "Server CPU per heartbeat", "µs", series("cpu_per_heartbeat_us"), xs)
    for i, s in enumerate(servers):
        svg.append(f'<rect x="{20 + i * 175}" y="{H - 28}" width="12" height="12" fill="{COLORS.get(s, "#333")}"/>')
        svg.append(f'<text x="{36 + i * 175}" y="{H - 18}" font-size="11">{s}</text>')
    svg.append("</svg>")
    open(sys.argv[2], "w").write("\n".join(svg))


if __name__ == "__main__":
    main()
