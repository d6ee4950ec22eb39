"""The figures of bench/run.py: the --json list and the closing table."""

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import summary


@dataclass
class Figure:
    """One entry of the --json list. ``ratio`` is value / baseline, or for a ratio of
    repetitions its median, with ``ratio_min`` and ``ratio_max`` beside it."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None


def ms(values) -> str:
    median, p95 = summary(values)
    return f"median {median:.1f} ms, p95 {p95:.1f} ms"


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def value(self, name, value, unit, baseline=None, ratio=None) -> None:
        """A figure; ``ratio`` defaults to value / baseline."""
        if ratio is None and baseline:
            ratio = value / baseline
        baseline = None if baseline is None else round(baseline, 3)
        ratio = None if ratio is None else round(ratio, 3)
        self.figures.append(Figure(name, round(value, 3), unit, baseline, ratio))

    def ratio(self, name, ours, theirs, *, row, lower=True) -> None:
        """Ours against the baseline, one value each per repetition (taken in turns): the
        ratio of each pair, as min / median / max. ``row`` is (workload, ours, baseline)
        for the table; ``lower``: whether a lower figure is the better one."""
        ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
        low, mid, high = min(ratios), statistics.median(ratios), max(ratios)
        self.figures.append(
            Figure(
                name,
                round(mid, 3),
                "x",
                round(statistics.median(theirs), 3),
                round(mid, 3),
                round(low, 3),
                round(high, 3),
            )
        )
        better = "lower" if lower else "higher"
        self.rows.append((*row, f"{low:.2f} / {mid:.2f} / {high:.2f} ({better} is better)"))

    def table(self) -> str:
        header = ("workload", "ours", "baseline", "ratio min / median / max")
        rows = [header, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in rows
        ]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        return "\n".join(line.rstrip() for line in lines)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps([asdict(f) for f in self.figures], indent=2) + "\n")
