"""Report tables: one markdown file for reading and one CSV for machines, side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmpd_core.config import resolve


def write_table(
    frame: pd.DataFrame, stem: str | Path, *, caption: str, floatfmt: str = ".3g"
) -> Path:
    """Write ``<stem>.md`` (caption + pipe table) and ``<stem>.csv``; returns the markdown path."""
    stem = resolve(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    markdown = f"{caption}\n\n{frame.to_markdown(index=False, floatfmt=floatfmt)}\n"
    md_path = stem.with_suffix(".md")
    md_path.write_text(markdown)
    return md_path
