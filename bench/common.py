"""What the benchmark scripts share: the result table and the description of the environment."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import transformers


@dataclass
class RatioRow:
    """One line of a ratio table: A and B in `unit`, their `ratio`, checked against `target`."""

    what: str
    unit: str
    value_a: float
    value_b: float
    ratio: float
    target: str
    passed: bool


HEADER = ("what", "A", "B", "ratio", "target", "result")


def format_table(rows: Sequence[RatioRow]) -> str:
    """Rows as an aligned plain-text table, one line each, PASS or FAIL in the last column."""
    lines = [HEADER] + [
        (
            row.what,
            f"{row.value_a:.1f} {row.unit}",
            f"{row.value_b:.1f} {row.unit}",
            f"{row.ratio:.3f}",
            row.target,
            "PASS" if row.passed else "FAIL",
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(HEADER))]
    rendered = [" | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in lines]
    return "\n".join([rendered[0], "-+-".join("-" * width for width in widths), *rendered[1:]])


def environment() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
