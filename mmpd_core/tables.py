"""Report tables: one markdown file for reading and one CSV for machines, side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmpd_core.config import resolve


def write_table(
    frame: pd.DataFrame, stem: str | Path, *, caption: str, floatfmt: str = ".3g", footer=""
) -> Path:
    """Write ``<stem>.md`` (caption + pipe table [+ footer]) and ``<stem>.csv``; returns the
    markdown path."""
    stem = resolve(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    markdown = f"{caption}\n\n{frame.to_markdown(index=False, floatfmt=floatfmt)}\n"
    if footer:
        markdown += f"\n{footer}\n"
    md_path = stem.with_suffix(".md")
    md_path.write_text(markdown)
    return md_path


def mean_std(values) -> str:
    """'mean ± std' (sample std, one decimal) of accuracies in percent; one value: 'x (n=1)'."""
    values = pd.Series(values, dtype=float)
    if len(values) == 1:
        return f"{values.iloc[0]:.1f} (n=1)"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
