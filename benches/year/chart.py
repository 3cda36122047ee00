"""Draws the growth chart of benches/year/run.sh: one panel per cost against records.

python3 benches/year/chart.py benches/results/year.jsonl benches/results/year.png
(uses the last line measured for each record count)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, out = sys.argv[1], sys.argv[2]
by_records = {}
for line in open(results):
    row = json.loads(line)
    if row.get("store", "file") == "file":
        by_records[row["records"]] = row
rows = [by_records[k] for k in sorted(by_records)]
x = [r["records"] / 1e6 for r in rows]
panels = [
    ("ready after a restart (s)", [r["ready_ms"] / 1e3 for r in rows], 5),
    ("resident memory (MiB)", [r["rss_after_probe_mib"] for r in rows], 512),
    ("Histórico first page p99 (ms)", [r["history_first_page"]["p99_ms"] for r in rows], 20),
    ("one license as of p99 (ms)", [r["license_as_of"]["p99_ms"] for r in rows], 50),
    ("table as of p99 (s)", [r["table_as_of"]["p99_ms"] / 1e3 for r in rows], 2),
    ("bytes on disk per record", [r["log_bytes_per_record"] + r["derived_bytes_per_record"] + r.get("store_index_bytes_per_record", 0) for r in rows], None),
]
fig, axes = plt.subplots(2, 3, figsize=(13, 7))
for ax, (title, ys, target) in zip(axes.flat, panels):
    ax.plot(x, ys, marker="o")
    if target is not None:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("records in the log (millions)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
# Each point is the last run at its size, so the points may come from several commits.
commits = ", ".join(f"{r['records'] / 1e6:.1f} M: {r['commit']}" for r in rows) or "?"
fig.suptitle(f"license-ledger: cost as the log grows (file store, {rows[-1]['machine'] if rows else ''})\n{commits}", fontsize=10)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
