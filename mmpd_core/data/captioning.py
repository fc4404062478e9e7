"""BLIP-2 captions of every pretraining shape, sharded over ranks and resumable.

BLIP-2 over 1.5 M rendered views is tens of GPU hours, so the work is shared and never lost:

- the shapes are split over the ranks of a ``torchrun`` launch (``names[rank::world_size]``;
  one process is rank 0 of 1), each rank captioning its shard on its own GPU;
- every finished batch of shapes is appended to that rank's log, ``part-<rank>of<world>.jsonl``
  (one ``{"name", "captions"}`` line per shape, flushed), under ``<caption_cache>/<key>/``,
  where ``key`` fingerprints what the captions depend on (model, selection, views, shapes);
- a run started again, with any number of ranks, reads every log of its key first and
  captions only the shapes none of them holds; rank 0 then merges the logs (``merge``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from mmpd_core.config import DataPrepStage
from mmpd_core.data import render
from mmpd_core.tracking import progress

SHAPES_PER_BATCH = 16  # shapes whose views are loaded, captioned and logged together


def cache_key(cfg: DataPrepStage, names: list[str], degrees: list[int], renders: Path) -> str:
    """A fingerprint of everything the captions depend on."""
    record = {
        "model": cfg.blip2_model,
        "selection": cfg.caption_selection,
        "candidates": cfg.caption_candidates,
        "clip": cfg.caption_clip,
        "top_k": cfg.captions_per_shape,
        "views": degrees,
        "renders": str(renders),
        "resolution": cfg.render_resolution,
        "elevation": cfg.render_elevation,
        "names": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def read_logs(folder: Path) -> dict[str, list[str]]:
    """Every shape captioned in any rank's log of ``folder`` (a torn last line is ignored)."""
    done = {}
    for log in sorted(folder.glob("part-*.jsonl")):
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a run killed mid-write
            done[entry["name"]] = entry["captions"]
    return done


def _append(log: Path, rows: list[dict]) -> None:
    with open(log, "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
        handle.flush()
        os.fsync(handle.fileno())


def caption_shard(
    cfg: DataPrepStage, renders: Path, names: list[str], degrees: list[int], folder: Path,
    *, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
) -> int:  # fmt: skip
    """Caption this rank's shard of ``names`` not yet in any log of ``folder``; returns how
    many shapes it captioned."""
    from mmpd_core.data import blip2  # transformers' BLIP-2 only when asked for

    folder.mkdir(parents=True, exist_ok=True)
    done = read_logs(folder)
    todo = [n for n in names[rank::world_size] if n not in done]
    if not todo:
        return 0
    captioner = blip2.load_captioner(cfg.blip2_model, device=device)
    scorer = None
    if cfg.caption_selection == "clip":
        from mmpd_core.teachers import build_teacher

        spec = {"name": "caption_clip", "type": "open_clip", **cfg.caption_clip}
        scorer = build_teacher(spec, device=device)
    log = folder / f"part-{rank}of{world_size}.jsonl"
    batches = range(0, len(todo), SHAPES_PER_BATCH)
    for start in progress(batches, desc=f"BLIP-2 captions, rank {rank}"):
        chunk = todo[start : start + SHAPES_PER_BATCH]
        views = [
            torch.stack([render.load_png(render.render_paths(renders, n, d)[0]) for d in degrees])
            for n in chunk
        ]  # per shape (V, 3, H, W)
        ranked = blip2.caption_shapes(
            captioner, views, top_k=cfg.captions_per_shape, min_new_tokens=3, progress=False,
            selection=cfg.caption_selection, candidates=cfg.caption_candidates, scorer=scorer,
        )  # fmt: skip
        _append(log, [{"name": n, "captions": r} for n, r in zip(chunk, ranked, strict=True)])
    return len(todo)


def merge(folder: Path, names: list[str]) -> dict[str, list[str]]:
    """The captions of every shape, in ``names`` order, from the logs of ``folder``; an error
    names the shapes no log holds."""
    done = read_logs(folder)
    missing = [n for n in names if n not in done]
    if missing:
        raise RuntimeError(f"{folder}: no captions yet for {len(missing)} shapes: {missing[:3]}")
    return {n: done[n] for n in names}
