"""Where benchmarks keep what they measured: bench/results/ (not tracked), one JSON and one CSV per
run, and a PNG chart drawn with matplotlib (a dev requirement)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench.common import ROOT

RESULTS = ROOT / "bench" / "results"


def stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def save(name: str, rows: list[dict[str, Any]], *, about: dict[str, Any], when: str) -> Path:
    """Write rows to RESULTS/<name>-<when>.json (with `about`: how and where it was measured) and
    .csv; returns the path without its suffix."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"{name}-{when}"
    base.with_suffix(".json").write_text(
        json.dumps({"about": about, "rows": rows}, indent=2, default=str) + "\n"
    )
    with base.with_suffix(".csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return base


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, *, title: str, labels: list[str], values: list[float], unit: str) -> Path:
    """One horizontal bar per label, its value written at its end."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 0.5 * len(labels) + 1.5))
    bars = axes.barh(labels, values, color="#2563eb")
    axes.bar_label(bars, labels=[f"{value:,.1f} {unit}" for value in values], padding=3, fontsize=8)
    axes.invert_yaxis()
    axes.set_title(title)
    axes.set_xlabel(unit)
    axes.margins(x=0.2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_bars(
    name: str,
    rows: list[dict[str, Any]],
    *,
    about: dict[str, Any],
    title: str,
    label: str,
    value: str,
    unit: str,
) -> Path:
    """save() the rows, then a bar_chart() of row[value] by row[label] (the title gets the run's stamp),
    and say where they went; returns the path without its suffix."""
    when = stamp()
    base = save(name, rows, about=about, when=when)
    bar_chart(
        base.with_suffix(".png"),
        title=f"{title} ({when})",
        labels=[str(row[label]) for row in rows],
        values=[float(row[value]) for row in rows],
        unit=unit,
    )
    print(f"saved {base}.json, .csv and .png")
    return base
