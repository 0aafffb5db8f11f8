#!/usr/bin/python3
"""PNGs from the benchmarks' and the lab's JSON (matplotlib, Debian's
python3-matplotlib; scripts/setup-deps.sh installs it).

    perf/plot.py [--kind KIND] [--title TEXT] IN.json OUT.png

KIND (default: recognised from the document):
  blk-vs-fio  perf/blk_vs_fio.sh --json: IOPS and p99 latency of fio and
              xenpath per case, and the backend's CPU per request (null image)
  lab         tests/lab/report.py --json (build/lab-cache/run/result.json):
              each metric side by side per backend, as a ratio to the kernel's
  netbench    perf/xenpath_netbench --json: backend ns per packet by frame
              size, per direction and vdev (and GSO rows)
  iperf       perf/net_iperf.sh --json: Gb/s per path and direction
  boot-storm  perf/boot_storm.sh --json: perf/plot_boot_storm.py draws it

--title replaces the figure's title (say where the numbers come from).
Exit status: 0 written, 1 the document is not of that kind, 2 bad usage.
"""
import argparse
import json
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The lab's metrics as its report names them (key, label, higher is
# better), and the VHD leg's, which the report lists apart.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lab"))
from report import METRICS as LAB_METRICS  # noqa: E402

LAB_METRICS = LAB_METRICS + [("vhd_verify_write_kib_s", "VHD verify write (KiB/s)", True)]


def kind_of(doc):
    if isinstance(doc, dict):
        if "cases" in doc and "null_image" in doc:
            return "blk-vs-fio"
        if "results" in doc and "backends" in doc:
            return "lab"
        if "rows" in doc:
            return "netbench"
        if "iperf" in doc:
            return "iperf"
        if "runs" in doc:
            return "boot-storm"
    return None


def bars(ax, labels, series, ylabel, log=False):
    """Grouped bars: series = [(name, [value per label])]."""
    width = 0.8 / max(len(series), 1)
    for i, (name, vals) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, [v or 0 for v in vals], width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_blk_vs_fio(doc, title):
    cases = doc["cases"]
    names = [c["case"] for c in cases]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4.2))
    bars(a, names, [("fio", [x["fio"]["iops"] for x in cases]), ("xenpath", [x["xenpath"]["iops"] for x in cases])],
         "IOPS", log=True)
    a.set_title("IOPS (ratio xenpath/fio above)")
    for i, x in enumerate(cases):
        a.annotate("%.2f" % x.get("ratio", 0), (i, max(x["fio"]["iops"], x["xenpath"]["iops"])), ha="center",
                   va="bottom", fontsize=8)
    bars(b, names, [("fio", [x["fio"]["lat_p99_us"] for x in cases]),
                    ("xenpath", [x["xenpath"]["lat_p99_us"] for x in cases])], "p99 latency (us)", log=True)
    b.set_title("p99 completion latency")
    null = doc.get("null_image", [])
    labels = ["persistent grants" if n.get("persistent") else "map per request" for n in null]
    bars(c, labels, [("backend", [n.get("backend_us_per_request") for n in null]),
                     ("simulated guest", [n.get("guest_us_per_request") for n in null])], "CPU us / request")
    c.axhline(1.5, color="grey", lw=0.8, ls=":")
    c.set_title("null image, 4k rand QD32: CPU per request")
    fig.suptitle(title or "blkback vs fio, file %s, %s s per run, %s CPUs, load %s" % (
        doc.get("file_size"), doc.get("runtime_s"), doc.get("online_cpus"), doc.get("loadavg")))
    return fig


def plot_lab(doc, title):
    backends = doc["backends"]
    res = doc["results"]
    rows = [(k, label, up) for k, label, up in LAB_METRICS
            if any(isinstance(res.get(b, {}).get(k), (int, float)) for b in backends)]
    if not rows:
        raise ValueError("the lab document has no numeric results")
    ref = "kernel" if "kernel" in backends else backends[0]
    # A ratio needs the reference's figure: the others are named below.
    alone = [label for k, label, _ in rows if not isinstance(res.get(ref, {}).get(k), (int, float))]
    rows = [r for r in rows if isinstance(res.get(ref, {}).get(r[0]), (int, float))]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    series = []
    for b in backends:
        vals = []
        for k, _, _ in rows:
            v, r = res.get(b, {}).get(k), res.get(ref, {}).get(k)
            vals.append(v / r if isinstance(v, (int, float)) and isinstance(r, (int, float)) and r else 0)
        series.append((b, vals))
    labels = ["%s%s" % (label, "" if up else " [lower is better]") for _, label, up in rows]
    bars(ax, labels, series, "relative to %s" % ref)
    for i, (k, _, _) in enumerate(rows):
        for j, b in enumerate(backends):
            v = res.get(b, {}).get(k)
            if isinstance(v, (int, float)):
                x = i + (j - (len(backends) - 1) / 2) * (0.8 / len(backends))
                ax.annotate("%g" % v, (x, series[j][1][i]), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_title("absolute values on the bars" + ("; only some backends measured: " + ", ".join(alone) if alone else ""),
                 fontsize=9)
    fig.suptitle(title or "lab (%s plan), %s" % (doc.get("plan"), "PASS" if doc.get("pass") else "FAIL"))
    return fig


def plot_netbench(doc, title):
    rows = [r for r in doc["rows"] if r.get("what") in ("pps", "gso") or "backend_ns_per_pkt" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    groups = {}
    for r in rows:
        if r.get("what") == "gso" or r.get("size", 0) > 9000:
            continue
        groups.setdefault("%s %s" % (r.get("dir"), r.get("vdev")), []).append(r)
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["size"])
        a.plot([r["size"] for r in rs], [r["backend_ns_per_pkt"] for r in rs], "o-", label=name)
    tp = doc.get("testpmd", [])
    by_mode = {}
    for t in tp:
        by_mode.setdefault("testpmd %s %s" % (t.get("mode"), t.get("vdev")), []).append(t)
    for name, ts in sorted(by_mode.items()):
        ts = sorted(ts, key=lambda t: t["size"])
        a.plot([t["size"] for t in ts], [t["ns_per_pkt"] for t in ts], "x--", label=name)
    a.set_xscale("log", base=2)
    a.set_xlabel("frame bytes")
    a.set_ylabel("backend ns / packet")
    a.set_title("per-packet cost of the backend thread")
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
    gso = [r for r in rows if r.get("what") == "gso" or r.get("size", 0) > 9000]
    if gso:
        bars(b, ["%s %s" % (r.get("dir"), r.get("vdev")) for r in gso],
             [("backend Gb/s bound", [r.get("backend_bound_gbps") for r in gso]),
              ("achieved Gb/s", [r.get("gbps") for r in gso])], "Gb/s")
        b.set_title("64 KiB GSO frames")
    else:
        b.axis("off")
    fig.suptitle(title or "netback on the simulated host (perf/xenpath_netbench)")
    return fig


def plot_iperf(doc, title):
    paths = doc["iperf"]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    names = [p["path"] for p in paths]
    bars(ax, names, [("guest->host", [p.get("up_gbps") for p in paths]),
                     ("host->guest", [p.get("down_gbps") for p in paths])], "Gb/s received")
    fig.suptitle(title or "iperf3 TCP through the simulated netif path (perf/net_iperf.sh), %s s each" %
                 doc.get("seconds"))
    return fig


PLOTS = {"blk-vs-fio": plot_blk_vs_fio, "lab": plot_lab, "netbench": plot_netbench, "iperf": plot_iperf}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=sorted(list(PLOTS) + ["boot-storm"]))
    ap.add_argument("--title")
    ap.add_argument("input")
    ap.add_argument("output")
    a = ap.parse_args()
    with open(a.input) as f:
        doc = json.load(f)
    kind = a.kind or kind_of(doc)
    if kind is None:
        print("plot.py: %s: not a document plot.py knows (give --kind)" % a.input, file=sys.stderr)
        return 1
    if kind == "boot-storm":
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.call([sys.executable, os.path.join(here, "plot_boot_storm.py"), a.input, a.output])
    try:
        fig = PLOTS[kind](doc, a.title)
    except (KeyError, TypeError, ValueError) as e:
        print("plot.py: %s is not a %s document: %s" % (a.input, kind, e), file=sys.stderr)
        return 1
    fig.tight_layout()
    fig.savefig(a.output, dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())
