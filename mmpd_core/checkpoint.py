"""Self-describing, safe checkpoints: safetensors + plain-dict config + git SHA, written atomically.

A checkpoint is one ``.safetensors`` file. Its tensors are the unwrapped module's state dict
(no ``module.`` / ``_orig_mod.`` prefixes); its metadata holds the model config, any extra
plain data (stage config, epoch, metrics) as JSON, and the git SHA of the code that wrote it.
Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

PACKAGE_ROOT = Path(__file__).resolve().parent


def git_sha(cwd: Path = PACKAGE_ROOT) -> str:
    """The current commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    tensors: nn.Module | dict[str, torch.Tensor],
    *,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Atomically save a module (unwrapped) or a tensor dict with its config and git SHA."""
    path = Path(path)
    state = unwrap(tensors).state_dict() if isinstance(tensors, nn.Module) else tensors
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    seen = set()  # safetensors refuses shared storage: a module under two names (tied) is copied
    for key, value in state.items():
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            state[key] = value.clone()
        seen.add(storage)
    metadata = {
        "format": "mmpd/1",
        "config": json.dumps(config, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "git_sha": git_sha(),
    }
    atomic_write_bytes(path, save(state, metadata=metadata))
    return path


def _metadata(path: Path, handle) -> dict:
    metadata = handle.metadata() or {}
    if metadata.get("format") != "mmpd/1":
        raise ValueError(f"{path}: not an mmpd checkpoint (metadata {sorted(metadata)})")
    return {
        "config": json.loads(metadata["config"]),
        "extra": json.loads(metadata["extra"]),
        "git_sha": metadata["git_sha"],
    }


def _open(path: str | Path, read_tensors: bool) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            meta = _metadata(path, handle)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()} if read_tensors else {}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    return tensors, meta


def read_metadata(path: str | Path) -> dict:
    """A checkpoint's ``{"config", "extra", "git_sha"}`` without reading its tensors."""
    return _open(path, read_tensors=False)[1]


def load_checkpoint(
    path: str | Path, *, expected_config: dict | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint: ``(tensors, {"config", "extra", "git_sha"})``.

    With ``expected_config``, every field must match the stored config, otherwise a
    ``ValueError`` names the differing fields.
    """
    tensors, meta = _open(path, read_tensors=True)
    if expected_config is not None:
        expected = json.loads(json.dumps(expected_config))  # tuples -> lists, like the stored one
        keys = set(expected) | set(meta["config"])
        diff = sorted(k for k in keys if expected.get(k) != meta["config"].get(k))
        if diff:
            details = ", ".join(
                f"{k}: saved {meta['config'].get(k)!r} vs {expected.get(k)!r}" for k in diff
            )
            raise ValueError(f"{path}: config does not match ({details})")
    return tensors, meta
