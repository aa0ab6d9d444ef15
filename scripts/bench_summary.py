#!/usr/bin/env python3
"""Summary of a scripts/benchmarks.sh session:
python3 scripts/bench_summary.py OUT [--check] [--gate BASELINE SECTION] [--record BASELINE SECTION].

Per profile (a subdirectory of OUT): throughput and latency per run (and per kind for
lifecycle and mixed), CPU per successful request per process, each scenario ÷ raw journal of
the same concurrency and run, and the pools' lag. --check exits 1 unless every run left a
result with successful requests (the CI check that keeps the benchmark runnable).

--gate: the regression gate. BASELINE (JSON, scripts/bench_baseline.json) holds, per SECTION
(a binary and a machine, e.g. "release"), the recorded ratio of each gated run name
("nopools/create-c100": creates/s ÷ raw journal records/s of the same run). The best of this
session's runs of that name must reach (1 - tolerance) × the recorded ratio, else exit 1
naming every ratio that fell. Best of the runs, because a neighbour's burst only ever slows a
run down; a change that costs 10 % costs it in every run.
--record: writes this session's ratios into BASELINE under SECTION (the worst of the runs of
each name: the recorded value is what the code reached even in its slowest run)."""
import glob
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def option(name):
    """The two values after --name, or None."""
    args = sys.argv[2:]
    if name not in args:
        return None
    i = args.index(name)
    if len(args) < i + 3:
        sys.exit(f"{name} needs BASELINE SECTION")
    return args[i + 1], args[i + 2]


def gate(ratios, baseline_path, section):
    """Exit 1 when a gated ratio fell more than the tolerance below its recorded value."""
    with open(baseline_path) as f:
        baseline = json.load(f)
    tolerance = baseline["tolerance"]
    recorded = baseline["sections"].get(section)
    if not recorded:
        sys.exit(f"GATE FAILED: no section {section!r} in {baseline_path}")
    print(f"\nregression gate ({baseline_path}, section {section}, tolerance {tolerance:.0%}):")
    print(f"{'ratio':<34}{'recorded':>10}{'floor':>8}{'runs':>18}{'best':>7}  verdict")
    fallen = []
    for name, value in sorted(recorded["ratios"].items()):
        floor = value * (1 - tolerance)
        runs = ratios.get(name, [])
        best = max(runs) if runs else None
        ok = best is not None and best >= floor
        shown = " ".join(f"{r:.2f}" for r in runs) or "none"
        print(f"{name:<34}{value:>10.3f}{floor:>8.3f}{shown:>18}{(best or 0):>7.3f}  {'ok' if ok else 'FELL'}")
        if not ok:
            fallen.append(f"{name}: best {best if best is None else round(best, 3)} < floor {floor:.3f} "
                          f"(recorded {value:.3f})")
    if fallen:
        for f in fallen:
            print(f"GATE FAILED: {f}", file=sys.stderr)
        sys.exit(1)
    print("gate: every ratio within the tolerance of its recorded value")


def record(ratios, baseline_path, section, out):
    try:
        with open(baseline_path) as f:
            baseline = json.load(f)
    except FileNotFoundError:
        baseline = {"tolerance": 0.10, "sections": {}}
    baseline["sections"][section] = {
        "recorded_from": os.path.basename(out.rstrip("/")),
        "ratios": {name: round(min(runs), 3) for name, runs in sorted(ratios.items()) if runs},
    }
    with open(baseline_path, "w") as f:
        json.dump(baseline, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"\nrecorded {len(baseline['sections'][section]['ratios'])} ratios into {baseline_path} [{section}]")


def main():
    out = sys.argv[1]
    check = "--check" in sys.argv[2:]
    gate_with = option("--gate")
    record_into = option("--record")
    # "profile/scenario-cN" -> that scenario's ok/s ÷ raw journal records/s, one per run.
    ratios = {}
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
            for scenario in ("create", "stripe-create", "lifecycle", "mixed"):
                if name.startswith(scenario + "-c"):
                    j = rows.get("journal-" + name[len(scenario) + 1:])
                    if j and j["throughput_per_s"] > 0:
                        ratio = r["throughput_per_s"] / j["throughput_per_s"]
                        # create-c100-r2 -> profile/create-c100
                        ratios.setdefault(f"{profile}/{name.rsplit('-r', 1)[0]}", []).append(ratio)
                        print(f"{name}: {scenario} / raw journal = {ratio:.2f}")
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
    if record_into:
        record(ratios, *record_into, out)
    if gate_with:
        gate(ratios, *gate_with)


if __name__ == "__main__":
    main()
