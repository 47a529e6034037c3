"""``evaluate`` metric modules shipped with mine-vae, loaded by path (no Hub access needed).

Each metric lives in ``mine_vae/metrics/<name>/<name>.py``; ``evaluate.load`` accepts that
folder or file path directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Names of the metric modules shipped in this folder."""
    return sorted(p.name for p in _METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> str:
    """Absolute path of the metric module file for ``name`` (e.g. ``"reconstruction_bleu"``)."""
    path = _METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"Unknown metric {name!r}; available: {available_metrics()}.")
    return str(path)


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of the shipped metric ``name`` by path; ``kwargs`` go to ``evaluate.load``."""
    # Imported lazily: evaluate is slow to import and only needed when a metric is used.
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["available_metrics", "load_metric", "metric_path"]
