"""Turn a results.json of benchmarks/run.py into markdown tables with ratios and targets.

Usage: python benchmarks/report.py benchmark-results/results.json
       python benchmarks/report.py run1/results.json run2/results.json ...   (ratios per run)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Optional

MB = 1000 * 1000
TOOLS = ("casbak", "restic", "borg")


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def show(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(value: Optional[float], limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= limit else "missed"


def week_summary(week: dict) -> dict[str, dict[str, Optional[float]]]:
    """Return per-tool values of the week's headline metrics (seconds, MB, MiB)."""
    days = week["days"]
    summary: dict[str, dict[str, Optional[float]]] = {}
    for tool in TOOLS:
        runs = [d["tools"][tool] for d in days]
        failed = any(not r["ok"] for r in runs)
        incremental = [r["wall"] for r in runs[1:]]
        restore = week.get("restore", {}).get(tool)
        summary[tool] = {
            "day0": None if failed else runs[0]["wall"],
            "incremental": None if failed or not incremental else sum(incremental) / len(incremental),
            "growth": None if failed else (runs[-1]["repository_bytes"] - runs[0]["repository_bytes"]) / MB,
            "final_size": None if failed else runs[-1]["repository_bytes"] / MB,
            "restore": restore["wall"] if restore and restore["ok"] else None,
            "snapshot_rss": max(r["rss_kib"] for r in runs) / 1024,
            "restore_rss": restore["rss_kib"] / 1024 if restore else None,
        }
    return summary


def targets_table(results: dict) -> list[str]:
    week = results["week"]
    values = week_summary(week)
    pipeline = week.get("pipeline", {}).get("both")
    small = results.get("small_files", {}).get("first", {})
    small_wall = {t: small[t]["wall"] if t in small and small[t]["ok"] else None for t in TOOLS}
    last = len(week["days"]) - 1
    rows = [
        ("Day-0 snapshot (s)", "day0", 0.6),
        (f"Daily incremental snapshot, mean of days 1-{last} (s)", "incremental", 0.6),
        (f"Repository growth over days 1-{last} (MB)", "growth", 0.7),
        ("Restore of the last day (s)", "restore", 0.7),
        ("Peak RSS of any snapshot (MiB)", "snapshot_rss", 1.0),
        ("Peak RSS of the restore (MiB)", "restore_rss", 1.0),
    ]

    lines = ["| metric | casbak | restic | borg | casbak/restic | casbak/borg | target (casbak/restic) | result |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, key, limit in rows:
        c, r, b = (values[t][key] for t in TOOLS)
        vs_restic = ratio(c, r)
        lines.append(f"| {label} | {show(c)} | {show(r)} | {show(b)} | {show(vs_restic)} | {show(ratio(c, b))} "
                     f"| <= {limit} | {verdict(vs_restic, limit)} |")

    c, r, b = (small_wall[t] for t in TOOLS)
    lines.append(f"| Small files, first snapshot (s) | {show(c)} | {show(r)} | {show(b)} | {show(ratio(c, r))} "
                 f"| {show(ratio(c, b))} | <= 1.0 | {verdict(ratio(c, r), 1.0)} |")

    day0_vs_pipeline = ratio(values["casbak"]["day0"], pipeline)
    lines += ["", "| metric | casbak | pipeline limit | casbak/pipeline | target | result |",
              "| --- | ---: | ---: | ---: | ---: | --- |",
              f"| Day-0 snapshot (s) | {show(values['casbak']['day0'])} | {show(pipeline)} | {show(day0_vs_pipeline)} "
              f"| <= 1.5 | {verdict(day0_vs_pipeline, 1.5)} |"]
    return lines


def cpu_seconds(run: Optional[dict]) -> Optional[float]:
    if not run or not run["ok"]:
        return None
    return run["user"] + run["system"]


def cpu_rows(results: dict) -> list[tuple[str, dict[str, Optional[float]]]]:
    """Return (step, CPU seconds per tool) for the week's steps and the single-tree cases."""
    week = results["week"]
    rows: list[tuple[str, dict[str, Optional[float]]]] = []
    days = week["days"]
    rows.append(("Day-0 snapshot", {t: cpu_seconds(days[0]["tools"][t]) for t in TOOLS}))
    incremental = {}
    for tool in TOOLS:
        values = [cpu_seconds(d["tools"][tool]) for d in days[1:]]
        incremental[tool] = None if not values or None in values else sum(values) / len(values)
    rows.append(("Daily incremental snapshot, mean", incremental))
    rows.append(("Restore of the last day", {t: cpu_seconds(week.get("restore", {}).get(t)) for t in TOOLS}))
    for key, label in (("small_files", "Small files, first snapshot"), ("large_file", "Large file snapshot")):
        if key in results:
            rows.append((label, {t: cpu_seconds(results[key]["first"].get(t)) for t in TOOLS}))
    return rows


def cpu_table(results: dict) -> list[str]:
    """Tabulate CPU time (user + system) of each step, which other load on the machine disturbs less than wall time."""
    rows = cpu_rows(results)
    lines = ["| CPU seconds (user + system) | casbak | restic | borg | casbak/restic | casbak/borg |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, values in rows:
        c, r, b = (values[t] for t in TOOLS)
        lines.append(f"| {label} | {show(c)} | {show(r)} | {show(b)} | {show(ratio(c, r))} | {show(ratio(c, b))} |")
    return lines


def days_table(week: dict) -> list[str]:
    lines = ["| day | source MB | casbak s | restic s | borg s | casbak repo MB | restic repo MB | borg repo MB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for day in week["days"]:
        t = day["tools"]
        walls = " | ".join(show(t[x]["wall"]) if t[x]["ok"] else "failed" for x in TOOLS)
        sizes = " | ".join(show(t[x]["repository_bytes"] / MB, 1) for x in TOOLS)
        lines.append(f"| {day['day']} | {day['source_bytes'] / MB:.1f} | {walls} | {sizes} |")
    restore = week.get("restore", {})
    if restore:
        lines += ["", "| restore of the last day | " + " | ".join(TOOLS) + " |", "| --- | ---: | ---: | ---: |",
                  "| wall s | " + " | ".join(show(restore[t]["wall"]) for t in TOOLS) + " |",
                  "| peak RSS MiB | " + " | ".join(show(restore[t]["rss_kib"] / 1024, 0) for t in TOOLS) + " |",
                  "| verified identical | " + " | ".join(str(restore[t]["verified"]) for t in TOOLS) + " |",
                  "", f"Copy limit (`cp -a` of the same tree, s): {restore.get('copy_limit', 'not measured')}"]
    return lines


def single_tree_table(case: dict, title: str) -> list[str]:
    lines = [f"{title}: {case['source_bytes'] / MB:.1f} MB; pipeline limit {case['pipeline']}", "",
             "| tool | first snapshot s | peak RSS MiB | repository MB | unchanged re-snapshot s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for tool in TOOLS:
        first = case["first"].get(tool)
        if first is None:
            continue
        again = case["unchanged"].get(tool)
        lines.append(f"| {tool} | {show(first['wall']) if first['ok'] else 'failed'} | {first['rss_kib'] / 1024:.0f} "
                     f"| {first['repository_bytes'] / MB:.1f} | {show(again['wall']) if again else '-'} |")
    return lines


def sweep_table(results: dict) -> list[str]:
    week = results["week"]
    rows = {k: v["days"] for k, v in results.get("sweep", {}).items()}
    # The week's casbak repository uses the default average chunk size of 128 KiB.
    rows["128"] = [{**d["tools"]["casbak"], "source_bytes": d["source_bytes"]} for d in week["days"]]
    rows["128"][-1]["index_bytes"] = week.get("casbak_index_bytes", 0)
    last = len(week["days"]) - 1
    lines = [f"| avg chunk KiB | repo MB after day {last} | growth days 1-{last} MB | index KiB | day-0 MB/s | mean incremental s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kib in sorted(rows, key=int):
        days = rows[kib]
        if not all(d["ok"] for d in days):
            lines.append(f"| {kib} | failed | | | | |")
            continue
        incremental = sum(d["wall"] for d in days[1:]) / max(1, len(days) - 1)
        lines.append(f"| {kib} | {days[-1]['repository_bytes'] / MB:.1f} "
                     f"| {(days[-1]['repository_bytes'] - days[0]['repository_bytes']) / MB:.1f} "
                     f"| {days[-1].get('index_bytes', 0) / 1024:.0f} | {days[0]['source_bytes'] / MB / days[0]['wall']:.1f} "
                     f"| {incremental:.2f} |")
    return lines


def write_report(results: dict) -> str:
    """Return the markdown report of one run."""
    machine = results["machine"]
    lines = [f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB RAM, "
             f"load average at start {machine['loadavg_start']}, at end {machine.get('loadavg_end')}.",
             f"Versions: {machine['versions']}; casbak commit {results.get('casbak_commit')}. "
             f"Peak RSS from {machine['rss_source']}.", ""]
    if "week" in results:
        lines += ["### Targets", ""] + targets_table(results)
        lines += ["", "### CPU time", ""] + cpu_table(results)
        lines += ["", "### Week, per day", ""] + days_table(results["week"])
        lines += ["", f"Pipeline limit on day 0 (s): {results['week'].get('pipeline')}"]
        lines += ["", "### Chunk-size sweep (casbak)", ""] + sweep_table(results)
    for key, title in (("small_files", "Small files"), ("large_file", "Large file")):
        if key in results:
            lines += ["", f"### {title}", ""] + single_tree_table(results[key], title)
    return "\n".join(lines) + "\n"


def key_ratios(results: dict) -> dict[str, Optional[float]]:
    """Return the ratios that the targets are stated in, for one run."""
    values = week_summary(results["week"])
    small = results.get("small_files", {}).get("first", {})
    small_wall = {t: small[t]["wall"] if t in small and small[t]["ok"] else None for t in TOOLS}
    casbak, restic = values["casbak"], values["restic"]
    return {
        "day-0 / restic": ratio(casbak["day0"], restic["day0"]),
        "day-0 / pipeline": ratio(casbak["day0"], results["week"].get("pipeline", {}).get("both")),
        "incremental / restic": ratio(casbak["incremental"], restic["incremental"]),
        "growth / restic": ratio(casbak["growth"], restic["growth"]),
        "restore / restic": ratio(casbak["restore"], restic["restore"]),
        "snapshot RSS / restic": ratio(casbak["snapshot_rss"], restic["snapshot_rss"]),
        "restore RSS / restic": ratio(casbak["restore_rss"], restic["restore_rss"]),
        "small files / restic": ratio(small_wall["casbak"], small_wall["restic"]),
        **cpu_ratios(results),
    }


def cpu_ratios(results: dict) -> dict[str, Optional[float]]:
    """Return casbak/restic ratios of CPU seconds, which other load on the machine disturbs less than wall time."""
    ratios: dict[str, Optional[float]] = {}
    for label, values in cpu_rows(results):
        ratios[f"CPU {label.lower()} / restic"] = ratio(values["casbak"], values["restic"])
    return ratios


def runs_table(runs: list[dict]) -> str:
    """Return one markdown row per target ratio with its value in each run and the median."""
    per_run = [key_ratios(r) for r in runs]
    header = "| ratio | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |"
    lines = [header, "| --- |" + " ---: |" * (len(runs) + 1)]
    for key in per_run[0]:
        values = [r[key] for r in per_run]
        known = [v for v in values if v is not None]
        median = statistics.median(known) if known else None
        lines.append(f"| {key} | " + " | ".join(show(v) for v in values) + f" | {show(median)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    documents = [json.loads(Path(name).read_text()) for name in sys.argv[1:]]
    if len(documents) == 1:
        print(write_report(documents[0]))
    else:
        print(runs_table(documents))
