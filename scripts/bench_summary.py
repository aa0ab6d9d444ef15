#!/usr/bin/env python3
"""Summary of a scripts/benchmarks.sh session: python3 scripts/bench_summary.py OUT [--check].

Per profile (a subdirectory of OUT): throughput and latency per run (and per kind for
lifecycle and mixed), CPU per successful request per process, creates ÷ raw journal of the
same concurrency and run, and the pools' lag. --check exits 1 unless every run left a result
with successful requests (the CI check that keeps the benchmark runnable)."""
import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    out = sys.argv[1]
    check = "--check" in sys.argv[2:]
    problems = []
    total_runs = 0
    print(f"results in {out}")
    for profile in sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))):
        pdir = os.path.join(out, profile)
        runs = sorted(glob.glob(os.path.join(pdir, "*-c*-r*.json")))
        if not runs:
            continue
        total_runs += len(runs)
        print(f"\n== profile {profile}")
        print(f"{'run':<22}{'ok/s':>10}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}")
        rows = {}
        for p in runs:
            name = os.path.basename(p)[:-5]
            if os.path.getsize(p) == 0:
                print(f"{name:<22}  (no result: the command failed)")
                problems.append(f"{profile}/{name}: no result")
                continue
            r = load(p)
            rows[name] = r
            if r["total"]["ok"] == 0:
                problems.append(f"{profile}/{name}: no successful request")

            def row(label, k):
                lat = k["latency_us"]
                print(f"{label:<22}{k['throughput_per_s']:>10.1f}{k['errors']:>8}{lat['p50']/1e3:>9.2f}{lat['p90']/1e3:>9.2f}"
                      f"{lat['p99']/1e3:>9.2f}{lat['p999']/1e3:>10.2f}{lat['max']/1e3:>9.2f}")

            row(name, r)
            if r.get("scenario") in ("lifecycle", "mixed"):
                for kind, k in r["kinds"].items():
                    row(f"  {kind}", k)
        print("\nCPU per successful request of the whole run (warm-up, measured phase and the pools' drain):")
        print(f"{'run':<22}{'broker us':>11}{'node us':>9}{'postgres us':>13}{'rest us':>9}{'machine us':>12}")
        for name, r in rows.items():
            try:
                a = load(os.path.join(pdir, name + ".cpu0"))
                b = load(os.path.join(pdir, name + ".cpu1"))
            except (OSError, ValueError):
                continue
            ok = r["total"]["ok"]
            if ok == 0:
                continue

            def us(k):
                return (b[k] - a[k]) * 1e6 / a["hz"] / ok

            rest = us("machine") - us("broker") - us("node") - us("postgres")
            print(f"{name:<22}{us('broker'):>11.0f}{us('node'):>9.0f}{us('postgres'):>13.0f}{rest:>9.0f}{us('machine'):>12.0f}")
        print()
        for name, r in rows.items():
            for scenario in ("create", "stripe-create"):
                if name.startswith(scenario + "-c"):
                    j = rows.get("journal-" + name[len(scenario) + 1:])
                    if j and j["throughput_per_s"] > 0:
                        print(f"{name}: {scenario} / raw journal = {r['throughput_per_s'] / j['throughput_per_s']:.2f}")
            if name.startswith("stripe-create-c"):
                native = rows.get("create-" + name[len("stripe-create-"):])
                if native and native["throughput_per_s"] > 0:
                    print(f"{name}: stripe-create / create = {r['throughput_per_s'] / native['throughput_per_s']:.2f}")
        lagged = [(n, r) for n, r in rows.items() if r.get("pools")]
        if lagged:
            print("\npools' lag (append to apply), range over the consumers:")
            print(f"{'run':<22}{'applied':>16}{'p50 <= ms':>12}{'p99 <= ms':>12}{'max <= ms':>12}{'max lag rec':>14}{'caught up ms':>16}")

            def span(values):
                values = [v for v in values if v is not None]
                if not values:
                    return "-"
                lo, hi = min(values), max(values)
                return f"{lo}" if lo == hi else f"{lo}-{hi}"

            for name, r in lagged:
                pools = r["pools"]
                print(f"{name:<22}{span([p['applied'] for p in pools]):>16}{span([p['p50_le_ms'] for p in pools]):>12}"
                      f"{span([p['p99_le_ms'] for p in pools]):>12}{span([p['max_le_ms'] for p in pools]):>12}"
                      f"{span([p['max_lag_records'] for p in pools]):>14}{span([p['caught_up_after_ms'] for p in pools]):>16}")
    if check:
        if total_runs == 0 or problems:
            for p in problems or ["no results at all"]:
                print(f"CHECK FAILED: {p}", file=sys.stderr)
            sys.exit(1)
        print("\ncheck: every run produced successful requests")


if __name__ == "__main__":
    main()
