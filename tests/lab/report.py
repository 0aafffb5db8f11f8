#!/usr/bin/env python3
"""Reads the lab's console log (the LAB|... lines dom0's plan printed), prints the side-by-side
table and the checks, writes the JSON, and exits 0 only if the plan ran to its end for every
backend asked for and every check passed."""
import argparse
import json
import sys

METRICS = [  # (key, label, higher is better)
    ("create_s", "xl create (s)", False),
    ("disk_up_s", "guest xvda up (s, guest uptime)", False),
    ("verify_write_kib_s", "fio verify write (KiB/s)", True),
    ("randread_4k_qd16_iops", "fio 4k randread QD16 (IOPS)", True),
    ("seqread_128k_kib_s", "fio 128k seqread QD8 (KiB/s)", True),
    ("iperf_guest_to_dom0_kbit_s", "iperf3 guest->dom0 (Kbit/s)", True),
    ("iperf_dom0_to_guest_kbit_s", "iperf3 dom0->guest (Kbit/s)", True),
]


def parse(path):
    res, checks, notes, xo = {}, [], [], {}
    end_rc, fatal, started, ended = None, None, set(), set()
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip().replace("\r", "")
            if not line.startswith("LAB|"):
                continue
            p = line.split("|")
            kind = p[1] if len(p) > 1 else ""
            if kind == "res" and len(p) >= 5:
                res.setdefault(p[2], {})[p[3]] = p[4]
            elif kind == "check" and len(p) >= 5:
                checks.append({"backend": p[2], "check": p[3], "ok": p[4] == "ok",
                               "detail": "|".join(p[5:])})
            elif kind == "backend" and len(p) >= 4:
                (started if p[3] == "start" else ended).add(p[2])
            elif kind == "end" and len(p) >= 3:
                end_rc = int(p[2]) if p[2].lstrip("-").isdigit() else -1
            elif kind == "xo" and len(p) >= 10:
                # LAB|xo|case|mode|packets|bytes|busy_ns|mapped_pages|copied_bytes|kbit_s|cpu_ns,
                # one line per round.
                v = [num(x) or 0 for x in p[4:11]]
                xo.setdefault(p[2], {}).setdefault(p[3], []).append(dict(zip(
                    ("packets", "bytes", "busy_ns", "mapped_pages", "copied_bytes", "kbit_s", "cpu_ns"), v)))
            elif kind == "fatal":
                fatal = "|".join(p[2:])
            else:
                notes.append(line)
    return res, checks, end_rc, fatal, started, ended, notes, xo


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def print_crossover(xo):
    """Guest TX cost per packet in the backend, copy vs map, per traffic case (crossover plan):
    the rounds summed (total time over total packets), with the per-round spread."""
    print()
    print("guest TX through xenpath-netback, backend time per packet: copy every byte vs map the remainder")
    head = "%-8s %9s  %-24s %-24s %8s %8s %11s %11s" % (
        "case", "bytes/pkt", "copy busy us/pkt (range)", "map busy us/pkt (range)", "map/copy",
        "cpu m/c", "copy Mbit/s", "map Mbit/s")
    print(head)
    print("-" * len(head))

    def total(rounds, k):
        return sum(r.get(k, 0) for r in rounds)

    def per(rounds, k):
        n = total(rounds, "packets")
        return total(rounds, k) / n / 1000 if n else None

    def spread(rounds):
        v = [r["busy_ns"] / r["packets"] / 1000 for r in rounds if r.get("packets")]
        return "%.0f (%.0f-%.0f)" % (per(rounds, "busy_ns"), min(v), max(v)) if v else "-"

    for case, modes in xo.items():
        c, m = modes.get("copy", []), modes.get("map", [])
        any_rounds = c or m
        size = total(any_rounds, "bytes") / max(1, total(any_rounds, "packets"))
        bc, bm = per(c, "busy_ns"), per(m, "busy_ns")
        cc, cm = per(c, "cpu_ns"), per(m, "cpu_ns")
        mbit = lambda rs: "%.1f" % (total(rs, "kbit_s") / len(rs) / 1000) if rs else "-"
        print("%-8s %9.0f  %-24s %-24s %8s %8s %11s %11s" % (
            case, size, spread(c), spread(m),
            "%.2f" % (bm / bc) if bc and bm else "-", "%.2f" % (cm / cc) if cc and cm else "-",
            mbit(c), mbit(m)))
        if m and not total(m, "mapped_pages"):
            print("  (%s: map mode mapped no pages)" % case)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--backends", required=True)
    ap.add_argument("--qemu-rc", type=int, default=0)
    ap.add_argument("--boot-s", type=int, default=0)
    ap.add_argument("--total-s", type=int, default=0)
    a = ap.parse_args()
    backends = a.backends.split(",")
    res, checks, end_rc, fatal, started, ended, notes, xo = parse(a.log)

    problems = []
    if a.qemu_rc == 124:
        problems.append("hard timeout: QEMU killed")
    if fatal:
        problems.append("dom0 fatal: " + fatal)
    if end_rc is None and not fatal:
        problems.append("the plan did not reach its end")
    for b in backends:
        if b not in ended:
            problems.append("backend %s did not finish" % b)
    failed = [c for c in checks if not c["ok"]]
    problems += ["%s: %s failed %s" % (c["backend"], c["check"], c["detail"]) for c in failed]

    # Side-by-side table; the ratio column compares xenpath with the kernel (same run, same
    # emulator: under TCG only the ratio means something).
    cols = [b for b in backends]
    ratio = "xenpath" in cols and "kernel" in cols
    w0 = max(len(m[1]) for m in METRICS) + 2
    head = "metric".ljust(w0) + "".join(b.rjust(12) for b in cols) + ("  xenpath/kernel" if ratio else "")
    print()
    print("lab (%s plan, Xen 4.17 nested in QEMU TCG)" % a.plan)
    if any(k in res.get(b, {}) for b in cols for k, _, _ in METRICS):
        print(head)
        print("-" * len(head))
    for key, label, _ in METRICS:
        vals = [res.get(b, {}).get(key) for b in cols]
        if all(v is None for v in vals):
            continue
        row = label.ljust(w0) + "".join((v if v is not None else "-").rjust(12) for v in vals)
        if ratio:
            x, k = num(res.get("xenpath", {}).get(key)), num(res.get("kernel", {}).get(key))
            row += ("%17.2f" % (x / k)) if x is not None and k else "%17s" % "-"
        print(row)
    for b in cols:
        for k, v in res.get(b, {}).items():
            if k not in [m[0] for m in METRICS]:
                print("  %s %s: %s" % (b, k, v))
    if xo:
        print_crossover(xo)
    print()
    for c in checks:
        print("  [%s] %-8s %-24s %s" % ("ok" if c["ok"] else "FAIL", c["backend"], c["check"], c["detail"]))
    passed = len(checks) - len(failed)
    ok = not problems
    out = {
        "plan": a.plan, "backends": backends, "pass": ok, "problems": problems,
        "results": {b: {k: (num(v) if num(v) is not None else v) for k, v in res.get(b, {}).items()}
                    for b in cols},
        "crossover": xo, "checks": checks, "seconds": {"boot_to_end": a.boot_s, "total": a.total_s},
    }
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)
    print()
    for p in problems:
        print("  problem: " + p)
    print("lab %s: QEMU %d s, total %d s, JSON %s" % ("PASS" if ok else "FAIL", a.boot_s, a.total_s, a.json))
    print("lab: %d passed, %d failed" % (passed, len(failed) + (1 if problems and not failed else 0)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
