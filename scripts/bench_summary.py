#!/usr/bin/env python3
"""Medians of the runs that scripts/bench.sh wrote: one line per scenario.

    python3 scripts/bench_summary.py DIR
"""
import glob
import json
import os
import statistics
import sys


def get(doc, path):
    for key in path.split("."):
        if not isinstance(doc, dict) or doc.get(key) is None:
            return None
        doc = doc[key]
    return doc


# scenario -> [(label, json path, format)]
FIGURES = {
    "direct": [
        ("e2e p50 ms", "end_to_end.p50_ms", "{:.3f}"),
        ("e2e p99 ms", "end_to_end.p99_ms", "{:.3f}"),
        ("e2e p99.9 ms", "end_to_end.p999_ms", "{:.3f}"),
        ("ack p99 ms", "ack.p99_ms", "{:.3f}"),
        ("lost", "lost", "{:.0f}"),
        ("duplicated", "duplicated", "{:.0f}"),
        ("server CPU us/msg", "server.cpu_us_per_msg", "{:.1f}"),
        ("server RSS MiB", "server.rss_bytes", "mib"),
    ],
    "ramp": [
        ("saturation delivered msg/s", "saturation.delivered_per_s", "{:.0f}"),
        ("at offered msg/s", "saturation.offered_rate", "{:.0f}"),
        ("lost", "lost", "{:.0f}"),
        ("duplicated", "duplicated", "{:.0f}"),
    ],
    "idle": [
        ("sessions", "sessions", "{:.0f}"),
        ("bytes/session", "bytes_per_session", "{:.0f}"),
        ("open s", "open_s", "{:.1f}"),
    ],
    "group": [
        ("last member p50 ms", "last_member.p50_ms", "{:.3f}"),
        ("last member p99 ms", "last_member.p99_ms", "{:.3f}"),
        ("every delivery p99 ms", "every_delivery.p99_ms", "{:.3f}"),
        ("expected", "expected_deliveries", "{:.0f}"),
        ("delivered", "delivered", "{:.0f}"),
        ("lost", "lost", "{:.0f}"),
        ("server CPU us/msg", "server.cpu_us_per_msg", "{:.1f}"),
    ],
    "history": [
        ("page p50 ms", "get_history.p50_ms", "{:.3f}"),
        ("page p99 ms", "get_history.p99_ms", "{:.3f}"),
        ("fill msg/s", "fill_msg_per_s", "{:.0f}"),
    ],
}
FIGURES["history-pg"] = FIGURES["history"]
FIGURES["redis"] = FIGURES["direct"]
FIGURES["kafka"] = FIGURES["direct"] + [("broker CPU s", "broker_cpu_s", "{:.1f}")]


def fmt(value, how):
    if value is None:
        return "-"
    if how == "mib":
        return f"{value / 1048576:.1f}"
    return how.format(value)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench-results"
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*-[0-9]*.json"))):
        name = os.path.basename(path)
        if name.endswith(".broker.json"):
            continue
        scenario = name.rsplit("-", 1)[0]
        with open(path) as f:
            doc = json.load(f)
        broker = path[: -len(".json")] + ".broker.json"
        if os.path.exists(broker):
            with open(broker) as f:
                doc["broker_cpu_s"] = json.load(f)["broker_cpu_ticks"] / os.sysconf("SC_CLK_TCK")
        runs.setdefault(scenario, []).append(doc)
    for scenario, docs in runs.items():
        print(f"{scenario} ({len(docs)} runs): median [runs]")
        for label, path, how in FIGURES.get(scenario, []):
            values = [get(d, path) for d in docs]
            present = [v for v in values if v is not None]
            median = statistics.median(present) if present else None
            each = " / ".join(fmt(v, how) for v in values)
            print(f"  {label}: {fmt(median, how)}  [{each}]")


if __name__ == "__main__":
    main()
