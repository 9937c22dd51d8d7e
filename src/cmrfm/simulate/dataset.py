"""In-memory iterable dataset of simulated 2D items (torch ``IterableDataset``), rank/worker aware."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from cmrfm.constants import Sequence, View
from cmrfm.errors import ConfigError
from cmrfm.simulate.anatomy import Phantom
from cmrfm.simulate.config import SIM_GROUPS, SIM_SEQUENCES, SIM_VIEWS, SimConfig, validate_config
from cmrfm.simulate.generator import (
    DIASTOLE_T,
    STREAM_IMAGING,
    STREAM_SERIES,
    _breath_hold_offsets,
    _rng,
    _setup,
    acquire_series,
    subject_params,
)
from cmrfm.simulate.groundtruth import (
    LAX_LANDMARKS,
    SAX_LANDMARKS,
    ejection_fraction,
    lax_landmarks,
    sax_landmarks,
)
from cmrfm.simulate.kspace import coil_sensitivities, undersampled_kspace
from cmrfm.simulate.motion import es_frame
from cmrfm.simulate.planes import lax_plane, sax_stack

#: Landmark slots in items (SAX uses the first two).
MAX_LANDMARKS = 3
#: Scale (ms) dividing T1/T2 map values when items are normalised.
MAP_SCALE_MS = {Sequence.T1_MAP: 2000.0, Sequence.T2_MAP: 200.0}
#: Percentile that maps to 1.0 when magnitude items are normalised.
NORMALISE_PERCENTILE = 99.5
#: k-space noise relative to the mean target intensity.
KSPACE_NOISE_FRACTION = 0.01


def _normalise(image: np.ndarray, sequence: Sequence) -> np.ndarray:
    if sequence in MAP_SCALE_MS:
        return (image / MAP_SCALE_MS[sequence]).astype(np.float32)
    high = float(np.percentile(image, NORMALISE_PERCENTILE))
    return np.clip(image / high, 0.0, None).astype(np.float32) if high > 0 else image.astype(np.float32)


class SimulatedSliceDataset(torch.utils.data.IterableDataset):
    """Endless (or fixed-length) stream of simulated 2D items for pretraining and fine-tuning.

    Each subject yields ``items_per_subject`` items; each item is one plane at one frame of one
    sequence, drawn from ``config.sequences`` (cine on ``config.views``, other sequences on SAX).

    Item keys: ``image`` (H, W) float32 (array order as ``Series.image[:, :, z, t]``); ``mask`` (H, W)
    int64 internal labels; ``view``/``sequence``/``group`` strings and ``view_index``/
    ``sequence_index``/``group_index`` ints (indices into ``SIM_VIEWS``/``SIM_SEQUENCES``/
    ``SIM_GROUPS``); ``grade`` (1..3); ``landmarks`` (3, 2) float32 pixel (i, j), NaN where absent,
    and ``landmark_valid`` (3,) bool (SAX: RV insertion anterior/inferior; LAX: mitral hinges, apex);
    ``spacing`` (2,) mm; ``frame``, ``is_ed``, ``is_es``, ``t_frac``, ``slice_index``, ``n_slices``;
    ``lv_ef``/``rv_ef``/``lv_edv_ml``/``lv_esv_ml`` (analytic LV/target RV); ``subject_seed``.
    With ``with_kspace``: ``kspace`` (C, H, W) complex64, ``sampling_mask`` (W,) bool,
    ``zero_filled`` (H, W) and ``target`` (H, W) float32, ``acceleration``.

    Args:
        config: Simulation settings (``imaging.matrix`` sets H, W).
        seed: Base seed.
        length: Items per epoch over all ranks and workers (``None``: endless).
        items_per_subject: Items drawn from each simulated subject.
        normalize: Scale magnitude images by their 99.5th percentile and maps by a fixed ms scale.
        with_kspace: Add multi-coil undersampled k-space for reconstruction tasks.
        accelerations: Accelerations drawn for ``with_kspace``.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        seed: int = 0,
        length: int | None = None,
        items_per_subject: int = 16,
        normalize: bool = True,
        with_kspace: bool = False,
        accelerations: tuple[int, ...] = (4, 8, 10),
    ) -> None:
        super().__init__()
        self.config = validate_config(config or SimConfig())
        if items_per_subject < 1:
            raise ConfigError(f"items_per_subject must be >= 1, got {items_per_subject}")
        if length is not None and length < 1:
            raise ConfigError(f"length must be >= 1 or None, got {length}")
        self.seed = int(seed)
        self.length = length
        self.items_per_subject = items_per_subject
        self.normalize = normalize
        self.with_kspace = with_kspace
        self.accelerations = tuple(accelerations)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Changes the subjects drawn (call once per epoch, like a DistributedSampler)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("endless SimulatedSliceDataset has no length")
        return self.length

    @staticmethod
    def _stream() -> tuple[int, int]:
        """(stream index, number of streams) over DDP ranks × loader workers."""
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def subject_seed(self, stream: int, k: int) -> int:
        """Seed of the ``k``-th subject of ``stream`` (also the key to re-simulate it)."""
        state = np.random.SeedSequence([self.seed, self.epoch, stream, k]).generate_state(1)
        return int(state[0] % (2**31 - 1))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream, streams = self._stream()
        budget = math.inf if self.length is None else math.ceil(self.length / streams)
        produced, k = 0, 0
        while produced < budget:
            subject_seed = self.subject_seed(stream, k)
            k += 1
            for item in self.subject_items(subject_seed, self.items_per_subject):
                yield item
                produced += 1
                if produced >= budget:
                    return

    def subject_items(self, subject_seed: int, count: int) -> Iterator[dict[str, Any]]:
        """``count`` items from the subject with seed ``subject_seed`` (deterministic)."""
        config = self.config
        params = subject_params(subject_seed, config)
        phantom = Phantom(params, config.es_fraction)
        setup = _setup(config, params, _rng(subject_seed, STREAM_IMAGING), vary_matrix=False)
        im = config.imaging
        es = es_frame(config.n_frames, config.es_fraction)
        truth = {
            "lv_edv_ml": phantom.heart.lv_volume_ml(0.0),
            "lv_esv_ml": phantom.heart.lv_volume_ml(es / config.n_frames),
        }
        truth["lv_ef"] = ejection_fraction(truth["lv_edv_ml"], truth["lv_esv_ml"])
        sax = None
        for index in range(count):
            rng = _rng(subject_seed, STREAM_SERIES, 1000 + index)
            sequence = Sequence(config.sequences[int(rng.integers(len(config.sequences)))])
            view = (
                View(config.views[int(rng.integers(len(config.views)))])
                if sequence == Sequence.CINE
                else View.SAX
            )
            if view == View.SAX:
                if sax is None:
                    sax = sax_stack(
                        phantom,
                        im.matrix,
                        setup.spacing,
                        setup.sax_thickness,
                        setup.sax_gap,
                        setup.base_margin,
                        _rng(subject_seed, STREAM_SERIES, 999),
                    )
                slice_index = int(rng.integers(len(sax)))
                plane, n_slices = sax[slice_index], len(sax)
            else:
                plane = lax_plane(
                    phantom,
                    view,
                    im.matrix,
                    setup.spacing,
                    setup.lax_thickness,
                    config.lax.angle_jitter_deg,
                    rng,
                )
                slice_index, n_slices = 0, 1
            frame = int(rng.integers(config.n_frames)) if sequence == Sequence.CINE else 0
            t = frame / config.n_frames if sequence == Sequence.CINE else DIASTOLE_T
            shift = _breath_hold_offsets(1, config.artefact.misalignment_mm, rng)
            acq, _, grade = acquire_series(
                config, setup, phantom, [plane], np.array([t]), sequence, view, shift, rng
            )
            image = acq.image[:, :, 0, 0]
            marks = (
                sax_landmarks(phantom, plane, t, shift[0], probe_mm=max(2.0, plane.spacing[0]))
                if view == View.SAX
                else lax_landmarks(phantom, plane, t, shift[0])
            )
            names = SAX_LANDMARKS if view == View.SAX else LAX_LANDMARKS
            landmarks = np.full((MAX_LANDMARKS, 2), np.nan, dtype=np.float32)
            valid = np.zeros(MAX_LANDMARKS, dtype=bool)
            for slot, name in enumerate(names):
                if name in marks:
                    landmarks[slot] = marks[name]["pixel"]
                    valid[slot] = True
            item: dict[str, Any] = {
                "image": _normalise(image, sequence) if self.normalize else image.astype(np.float32),
                "mask": acq.labels[:, :, 0, 0].astype(np.int64),
                "view": str(view),
                "view_index": SIM_VIEWS.index(view),
                "sequence": str(sequence),
                "sequence_index": SIM_SEQUENCES.index(sequence),
                "group": str(params.group),
                "group_index": SIM_GROUPS.index(params.group),
                "grade": grade,
                "landmarks": landmarks,
                "landmark_valid": valid,
                "spacing": np.array(plane.spacing, dtype=np.float32),
                "frame": frame,
                "is_ed": sequence == Sequence.CINE and frame == 0,
                "is_es": sequence == Sequence.CINE and frame == es,
                "t_frac": np.float32(t),
                "slice_index": slice_index,
                "n_slices": n_slices,
                "lv_ef": np.float32(truth["lv_ef"]),
                "rv_ef": np.float32(params.rv_ef),
                "lv_edv_ml": np.float32(truth["lv_edv_ml"]),
                "lv_esv_ml": np.float32(truth["lv_esv_ml"]),
                "subject_seed": subject_seed,
            }
            if self.with_kspace:
                accel = int(self.accelerations[int(rng.integers(len(self.accelerations)))])
                pts = plane.points(np.arange(plane.shape[0]), np.arange(plane.shape[1]))
                sens = coil_sensitivities(
                    pts, im.n_coils, phantom.body.lr, phantom.body.ap, plane.centre, rng
                )
                target = item["image"]
                noise_sd = KSPACE_NOISE_FRACTION * float(np.mean(np.abs(target)))
                data = undersampled_kspace(target, sens, accel, noise_sd, rng)
                item.update(
                    kspace=data["kspace"],
                    sampling_mask=data["mask"],
                    zero_filled=data["zero_filled"],
                    target=data["target"],
                    acceleration=accel,
                )
            yield item
