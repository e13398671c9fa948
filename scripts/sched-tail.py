#!/usr/bin/env python3
"""What the slowest requests of a concurrency-1 gateway measurement waited for.

Reads `perf sched timehist -w` output recorded while wrk sent one request at a time through
the gateway (scripts/bench-gateway with SCHED=1 records it) and splits each request, as the
scheduler saw it, from wrk waking the gateway's serving thread to the serving thread waking
wrk with the answer:

  before upstream  the serving thread's work up to waking the upstream (auth, vault, audit...)
  upstream         until the upstream's answer wakes the serving thread again
  after upstream   the serving thread's work up to waking wrk with the answer
  wrk wake-up      wrk's own delay in getting a CPU for the answer (part of what wrk measures)

Then it sorts the slowest 1% by what held them up, first match wins:

  database read     before calling the upstream, the serving thread handed a statement to one
                    of SQLite's connection threads (sqlx's): a read the request waited for
                    (a task spawned to read in the background first runs once the request
                    awaits the upstream, so it is not counted)
  serving waited    a serving-thread slice waited more than 0.15 ms for a CPU
  upstream waited   an upstream-thread slice waited more than 0.15 ms for a CPU
  background ran    the gateway's other threads (the audit importer, SQLite's) ran more than
                    0.15 ms during the request
  other             none of these (the work itself, interrupts, the hypervisor)

What it cannot tell: perf charges a wake-up to the task that was running, and a wake-up from
an interrupt (a disk write of SQLite's completing) lands on whatever the interrupt stopped.
So "database read" also counts the importer's I/O completions handled on the serving thread's
core; `perf record -e sched:sched_wakeup --call-graph dwarf` on the gateway tells them apart
(block-I/O frames rather than the gateway's own).

Usage: sched-tail.py TIMEHIST_FILE GATEWAY_PID UPSTREAM_PID
"""
import bisect
import collections
import sys

THRESHOLD_MS = 0.15


def parse(path, gateway_pid, upstream_pid):
    """Events as (time, kind, task, fields): kind 'wake' (task woke fields) or 'run'."""

    def who(token):
        name, _, ids = token.partition("[")
        tid, _, pid = ids.rstrip("]").partition("/")
        pid = pid or tid
        if name.startswith("bulkhead-http") or (pid == gateway_pid and name == "nginx"):
            return "serving"
        if pid == gateway_pid and name.startswith("sqlx"):
            return "database"
        if pid == gateway_pid:
            return "background"
        if pid == upstream_pid:
            return "upstream"
        if name == "wrk":
            return "client"
        return "other"

    events = []
    with open(path) as lines:
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            try:
                time = float(parts[0])
            except ValueError:
                continue
            if "awakened:" in line:
                events.append((time, "wake", who(parts[2]), who(parts[4])))
            elif len(parts) >= 6:
                try:
                    delay, run = float(parts[4]), float(parts[5])
                except ValueError:
                    continue
                events.append((time, "run", who(parts[2]), (delay, run)))
    return events


def requests(events):
    """Each request: its events, and its parts in milliseconds."""
    # A run's fields are (scheduling delay, run time); it started run time before its end.
    client_starts = [t - f[1] / 1e3 for t, kind, task, f in events
                     if kind == "run" and task == "client"]
    found, start, upstream = [], None, []
    for index, (time, kind, task, woke) in enumerate(events):
        if kind != "wake":
            continue
        if task == "client" and woke == "serving":
            start, upstream = index, []
        elif start is None:
            continue
        elif task == "serving" and woke == "upstream" and not upstream:
            upstream = [time]
        elif task == "upstream" and woke == "serving" and len(upstream) == 1:
            upstream.append(time)
        elif task == "serving" and woke == "client":
            if len(upstream) == 2:
                began = events[start][0]
                after = bisect.bisect_left(client_starts, time)
                wake = client_starts[after] - time if after < len(client_starts) else 0.0
                parts = {
                    "total": (time - began) * 1e3,
                    "before upstream": (upstream[0] - began) * 1e3,
                    "upstream": (upstream[1] - upstream[0]) * 1e3,
                    "after upstream": (time - upstream[1]) * 1e3,
                    "wrk wake-up": wake * 1e3,
                }
                found.append((parts, events[start:index + 1]))
            start = None
    return found


def waited_for_the_database(window):
    for _, kind, task, woke in window:
        if kind == "wake" and task == "serving" and woke in ("upstream", "database"):
            return woke == "database"
    return False


def cause(window):
    runs = [(task, f) for _, kind, task, f in window if kind == "run"]
    if waited_for_the_database(window):
        return "database read"
    if any(task == "serving" and delay > THRESHOLD_MS for task, (delay, _) in runs):
        return "serving waited"
    if any(task == "upstream" and delay > THRESHOLD_MS for task, (delay, _) in runs):
        return "upstream waited"
    if sum(run for task, (_, run) in runs if task in ("background", "database")) > THRESHOLD_MS:
        return "background ran"
    return "other"


def main():
    path, gateway_pid, upstream_pid = sys.argv[1:4]
    found = requests(parse(path, gateway_pid, upstream_pid))
    if len(found) < 100:
        sys.exit(f"sched-tail: only {len(found)} requests found in {path}")
    found.sort(key=lambda r: r[0]["total"] + r[0]["wrk wake-up"])
    slowest = found[-(len(found) // 100):]

    def percentile(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(len(values) * p))]

    keys = ["total", "before upstream", "upstream", "after upstream", "wrk wake-up"]
    print(f"\n{len(found)} requests as the scheduler saw them (ms)\n")
    print("| | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        row = " | ".join(f"{percentile([r[k] for r, _ in found], p):.3f}" for k in keys)
        print(f"| {label} | {row} |")
    means = " | ".join(f"{sum(r[k] for r, _ in slowest) / len(slowest):.3f}" for k in keys)
    print(f"| slowest 1%, mean | {means} |")

    causes = collections.Counter(cause(window) for _, window in slowest)
    print(f"\nthe slowest 1% ({len(slowest)} requests), by what held them up "
          f"(first match; threshold {THRESHOLD_MS} ms)\n")
    for name in ("database read", "serving waited", "upstream waited", "background ran", "other"):
        print(f"  {causes[name]:4d}  {name}")


if __name__ == "__main__":
    main()
