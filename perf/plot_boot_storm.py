#!/usr/bin/env python3
"""PNG of a boot-storm run (perf/boot_storm.sh's JSON): storm time and base
bytes read from disk (as a multiple of the boot set) against the number of
guests, one line per mode. Needs matplotlib (optional dependency:
`apt-get install python3-matplotlib`; only this plot uses it).

    perf/plot_boot_storm.py out.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.load(open(sys.argv[1]))
    runs = doc["runs"]
    modes = [m for m in ("nocache", "pagecache", "cache", "cache_small") if any(r["mode"] == m for r in runs)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in modes:
        rs = sorted((r for r in runs if r["mode"] == m), key=lambda r: r["guests"])
        n = [r["guests"] for r in rs]
        style = "o--" if m == "cache_small" else "o-"
        a.plot(n, [r["storm_seconds"] for r in rs], style, label=m)
        b.plot(n, [r["base_bytes_read"] / max(r["boot_set_bytes"], 1) for r in rs], style, label=m)
    cfg = doc.get("config", {})
    title = f"base {cfg.get('base_mib')} MiB, boot set ~{cfg.get('boot_mib')} MiB, cache blocks {cfg.get('cache_block_kib')} KiB"
    a.set_title("storm time (all guests done)")
    a.set_xlabel("guests")
    a.set_ylabel("seconds")
    b.set_title("base bytes read from disk / boot set")
    b.set_xlabel("guests")
    b.set_ylabel("x boot set")
    b.axhline(1.05, color="grey", lw=0.8, ls=":")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    b.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
