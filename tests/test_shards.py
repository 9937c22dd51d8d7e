import json
import tracemalloc

import numpy as np
import pytest

from cmrfm.data.shards import INDEX_NAME, ShardDataset, ShardStream, ShardWriter
from cmrfm.errors import InputError

SIZE = 32


def write(tmp_path, n, per_shard, dtype="uint8", name="shards"):
    rng = np.random.default_rng(0)
    out = tmp_path / name
    with ShardWriter(out, dtype=dtype, images_per_shard=per_shard) as w:
        for i in range(n):
            img = rng.random((SIZE, SIZE)).astype(np.float32) * 100
            img[0, 0] = i  # identify the image later
            img[0, 1] = 0
            img[1, 0] = 1000  # fixes the rescaling (99.5th percentile below it keeps the rest)
            w.add(img)
    return out


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_roundtrip(tmp_path, dtype):
    rng = np.random.default_rng(1)
    imgs = [rng.random((SIZE, 24 + i)).astype(np.float32) for i in range(5)]
    with ShardWriter(tmp_path / "s", dtype=dtype, images_per_shard=2) as w:
        for img in imgs:
            w.add(img)
    ds = ShardDataset(tmp_path / "s")
    assert len(ds) == 5 and ds.num_shards == 3
    for i, img in enumerate(imgs):
        got = ds[i]
        assert got.shape == img.shape and got.dtype == np.float32
        lo, hi = np.percentile(img, [0.5, 99.5])
        ref = np.clip((img - lo) / (hi - lo), 0, 1)
        assert np.abs(got - ref).max() < (1 / 255 if dtype == "uint8" else 1e-3)


def test_stream_covers_each_image_once_per_epoch_and_ranks_partition(tmp_path):
    root = write(tmp_path, 50, 8)
    ds = ShardDataset(root)
    seen = []
    for rank in range(2):
        stream = ShardStream(ShardDataset(root), seed=3, rank=rank, world_size=2)
        n = sum(len(idx) for _, idx in stream._epoch_plan(0))
        seen.append({round(float(next(stream)[0, 0]) * 1000) for _ in range(n)})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == len(ds)
    # fewer shards than ranks: split images instead
    small = write(tmp_path, 6, 8, name="small")
    a = ShardStream(ShardDataset(small), rank=0, world_size=2)
    b = ShardStream(ShardDataset(small), rank=1, world_size=2)
    va = {round(float(next(a)[0, 0]) * 1000) for _ in range(3)}
    vb = {round(float(next(b)[0, 0]) * 1000) for _ in range(3)}
    assert not va & vb and len(va | vb) == 6


def test_stream_resume_is_exact(tmp_path):
    root = write(tmp_path, 30, 7)
    ref = ShardStream(ShardDataset(root), seed=1)
    full = [next(ref) for _ in range(70)]  # crosses epochs
    part = ShardStream(ShardDataset(root), seed=1)
    for _ in range(41):
        next(part)
    state = part.state_dict()
    resumed = ShardStream(ShardDataset(root), seed=1)
    resumed.load_state_dict(state)
    rest = [next(resumed) for _ in range(29)]
    for a, b in zip(full[41:], rest, strict=True):
        assert np.array_equal(a, b)


def test_memory_flat_while_streaming_10x_cache(tmp_path):
    per_shard = 64
    big = 96
    root = tmp_path / "big"
    rng = np.random.default_rng(0)
    with ShardWriter(root, images_per_shard=per_shard) as w:
        for _ in range(per_shard * 20):
            w.add(rng.random((big, big)).astype(np.float32))
    shard_bytes = per_shard * big * big  # uint8
    ds = ShardDataset(root, cache_shards=2)
    cache_bytes = 2 * shard_bytes
    total_bytes = len(ds) * big * big
    assert total_bytes >= 10 * cache_bytes
    stream = ShardStream(ds, seed=0)
    tracemalloc.start()
    peaks = []
    for i in range(len(ds)):
        next(stream)
        if i % per_shard == per_shard - 1:
            peaks.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
    # peak traced memory stays bounded by the cache (+ one shard being read), not the corpus
    assert max(peaks) < cache_bytes + 3 * shard_bytes
    assert peaks[-1] <= peaks[3] * 1.1  # flat: no growth after the cache fills
    assert len(ds._cache) <= 2


def test_faults(tmp_path):
    root = write(tmp_path, 20, 8)
    with pytest.raises(InputError, match=r"index\.json is missing"):
        ShardDataset(tmp_path)
    (root / "shard_000001.bin").rename(tmp_path / "moved.bin")
    with pytest.raises(InputError, match="missing"):
        ShardDataset(root)
    (tmp_path / "moved.bin").rename(root / "shard_000001.bin")
    data = bytearray((root / "shard_000001.bin").read_bytes())
    data[-5] ^= 0xFF
    (root / "shard_000001.bin").write_bytes(bytes(data))
    ds = ShardDataset(root)
    with pytest.raises(InputError, match="corrupt"):
        ds[10]
    (root / "shard_000001.bin").write_bytes(bytes(data[:-100]))
    with pytest.raises(InputError, match="truncated"):
        ShardDataset(root)[10]
    (root / INDEX_NAME).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ShardDataset(root)
    empty = tmp_path / "empty"
    ShardWriter(empty).close()
    with pytest.raises(InputError, match="no images"):
        ShardDataset(empty)
    with pytest.raises(InputError, match="not empty"):
        ShardWriter(root)
    index = json.loads((empty / INDEX_NAME).read_text())
    assert index["num_images"] == 0


def test_build_shards_from_a_nifti_study(tmp_path):
    import nibabel as nib

    from cmrfm.data.shards import build_shards

    rng = np.random.default_rng(0)
    vol = rng.random((64, 48, 3, 2)).astype(np.float32)  # (X, Y, Z, T)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 8.0, 1.0])), tmp_path / "cine.nii.gz")
    report = build_shards(
        [tmp_path / "cine.nii.gz"], tmp_path / "out", size=32, crop_mm=80, images_per_shard=4
    )
    assert report.num_images == 6 and report.num_shards == 2 and not report.failures
    ds = ShardDataset(tmp_path / "out")
    assert len(ds) == 6 and ds[0].shape == (32, 32)
    # 80 mm at 2 mm/pixel = a 40-pixel centre crop of slice 0, frame 0, resized to 32
    from cmrfm.data.shards import _square_resize, rescale_unit

    ref = rescale_unit(_square_resize(vol[:, :, 0, 0].T, 40, 32))
    assert np.abs(ds[0] - ref).max() <= 1 / 255 + 1e-6


def test_build_shards_reports_unreadable_input(tmp_path):
    from cmrfm.data.shards import build_shards

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        build_shards([tmp_path / "empty"], tmp_path / "out")


@pytest.mark.realdata
def test_build_shards_acdc_patient(acdc_root, tmp_path):
    from cmrfm.data.shards import build_shards

    report = build_shards([acdc_root / "patient001"], tmp_path / "s", size=64)
    assert report.num_images > 0 and not report.failures
    assert ShardDataset(tmp_path / "s")[0].shape == (64, 64)
