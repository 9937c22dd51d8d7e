"""Atomic training checkpoints, exact-resume RNG capture and safetensors weight export.

Checkpoints are written to a temporary file in the target folder, flushed and fsynced, then moved over
the old one with :func:`os.replace` (atomic on POSIX) and the folder is fsynced. A failure midway (disk
full, a kill) leaves the previous checkpoint untouched; stale ``*.tmp`` files are removed on the next
save.

Weights for users are safetensors (optionally fp16) with a JSON model card stored both inside the
file's metadata (key ``cmrfm_card``) and beside it (``weights.json`` for ``weights.safetensors``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrfm.errors import InputError

#: Metadata key of the JSON model card inside a safetensors file.
CARD_METADATA_KEY = "cmrfm_card"
#: Suffix of in-progress checkpoint files.
TMP_SUFFIX = ".tmp"


def rng_state() -> dict[str, Any]:
    """Captures the Python, NumPy and torch (CPU and CUDA) RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global legacy RNG is what we capture)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Saves ``obj`` with :func:`torch.save` so that ``path`` is either the old or the new file, never a mix.

    Raises:
        OSError: When writing fails; the previous file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by :func:`atomic_save`, with a clear error for a missing/corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise InputError(
            path, f"checkpoint is unreadable or truncated ({type(err).__name__}: {err})"
        ) from None


class CheckpointManager:
    """Keeps ``last.pt`` (always) and the ``keep`` most recent ``step_XXXXXXXX.pt`` in a folder.

    Args:
        folder: Where checkpoints live.
        keep: How many step-numbered checkpoints to keep besides ``last.pt`` (0 keeps none).
    """

    LAST = "last.pt"

    def __init__(self, folder: str | Path, keep: int = 1) -> None:
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last(self) -> Path:
        """Path of the most recent checkpoint."""
        return self.folder / self.LAST

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Writes ``state`` atomically as ``last.pt`` (and ``step_<step>.pt`` when ``keep`` > 0)."""
        for stale in self.folder.glob(f"*{TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
        atomic_save(state, self.last)
        if self.keep > 0:
            numbered = self.folder / f"step_{step:08d}.pt"
            atomic_save(state, numbered)
            old = sorted(self.folder.glob("step_*.pt"))[: -self.keep]
            for path in old:
                path.unlink(missing_ok=True)
        return self.last

    def exists(self) -> bool:
        """Whether a checkpoint to resume from exists."""
        return self.last.is_file()

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Loads ``last.pt``."""
        return load_checkpoint(self.last, map_location=map_location)


def card_path(weights: str | Path) -> Path:
    """The JSON model card beside a safetensors file (``x.safetensors`` -> ``x.json``)."""
    weights = Path(weights)
    return weights.with_suffix(".json")


def save_weights(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, card: Mapping[str, Any], fp16: bool = False
) -> Path:
    """Writes ``state_dict`` as safetensors (optionally fp16) plus the JSON card, both atomically.

    Returns:
        The safetensors path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        if fp16 and t.is_floating_point():
            t = t.half()
        tensors[name] = t.contiguous()
    card_json = json.dumps(dict(card), indent=2, sort_keys=True, default=str)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        save_file(tensors, str(tmp), metadata={CARD_METADATA_KEY: card_json})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    side = card_path(path)
    side_tmp = side.with_name(side.name + TMP_SUFFIX)
    side_tmp.write_text(card_json + "\n")
    os.replace(side_tmp, side)
    return path


def load_card(path: str | Path) -> dict[str, Any]:
    """The model card of a safetensors file (the JSON beside it, else the embedded metadata).

    Reads no tensors, so it is cheap for callers that only need the card.

    Raises:
        InputError: Missing file, unreadable file, or no model card anywhere.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    side = card_path(path)
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError as err:
            raise InputError(side, f"model card is not valid JSON ({err})") from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    if CARD_METADATA_KEY in metadata:
        return json.loads(metadata[CARD_METADATA_KEY])
    raise InputError(path, f"no model card: neither {side.name} beside it nor embedded metadata")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a safetensors file and its card (:func:`load_card`).

    Raises:
        InputError: Missing file, unreadable file, or no model card anywhere.
    """
    from safetensors.torch import load_file

    card = load_card(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    return tensors, card


def load_float_state(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str,
    may_lack: str | None = None,
) -> None:
    """Loads float32 copies of ``state`` into ``model``; any missing or extra key is an InputError.

    Args:
        model: The model to fill.
        state: Tensors as read from a weights file (fp16 allowed).
        path: The weights file, for the error message.
        what: What the weights should be (e.g. ``"task 'sax-seg'"``), for the error message.
        may_lack: A key prefix the file may leave out (e.g. ``"backbone."`` of a head that never
            uses its backbone); those parameters keep their initial values.
    """
    floats = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(floats, strict=False)
    missing = [k for k in result.missing_keys if not (may_lack and k.startswith(may_lack))]
    if missing or result.unexpected_keys:
        raise InputError(
            path,
            f"weights do not match {what} (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})",
        )
