"""Tests for the embedded synthetic MVTec AD-style dataset generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfa_anomaly.data import synthetic
from cfa_anomaly.data.synthetic import (
    DEFECT_TYPES,
    KINDS,
    generate_dataset,
    make_defective,
    render_normal,
    sample_rng,
)

SMALL = {"n_train": 4, "n_test_good": 2, "n_test_per_defect": 2, "image_size": 128}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _tree(path: Path) -> dict[str, np.ndarray]:
    """All PNGs under ``path`` keyed by relative path."""
    return {str(p.relative_to(path)): _load(p) for p in sorted(path.rglob("*.png"))}


@pytest.fixture(scope="module", params=KINDS)
def dataset(request, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(f"synth_{request.param}")
    return request.param, generate_dataset(root, kind=request.param, seed=3, **SMALL)


def test_layout_matches_mvtec(dataset):
    _, cat = dataset
    assert cat.name == "synthetic"
    assert sorted(p.name for p in cat.iterdir()) == ["ground_truth", "test", "train"]
    assert sorted(p.name for p in (cat / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(("good",) + DEFECT_TYPES)
    assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    # no temporary folders left next to the category
    assert [p.name for p in cat.parent.iterdir()] == [cat.name]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_counts_and_names(dataset):
    _, cat = dataset
    names = _names
    assert names(cat / "train" / "good") == [f"{i:03d}.png" for i in range(SMALL["n_train"])]
    assert names(cat / "test" / "good") == [f"{i:03d}.png" for i in range(SMALL["n_test_good"])]
    for defect in DEFECT_TYPES:
        stems = [f"{i:03d}" for i in range(SMALL["n_test_per_defect"])]
        assert names(cat / "test" / defect) == [f"{s}.png" for s in stems]
        assert names(cat / "ground_truth" / defect) == [f"{s}_mask.png" for s in stems]


def test_images_and_masks_format(dataset):
    _, cat = dataset
    size = SMALL["image_size"]
    for png in cat.glob("t*/*/*.png"):
        img = Image.open(png)
        assert img.mode == "RGB" and img.size == (size, size), png
    margin = (size - round(size * 224 / 256)) // 2
    for defect in DEFECT_TYPES:
        for png in (cat / "ground_truth" / defect).iterdir():
            img = Image.open(png)
            assert img.mode == "L" and img.size == (size, size)
            mask = np.asarray(img)
            assert set(np.unique(mask)) <= {0, 255}
            area = (mask > 0).sum()
            assert 0.002 * size * size <= area <= 0.10 * size * size, (png, area)
            inner = mask[margin:-margin, margin:-margin] > 0
            assert inner.sum() >= 0.95 * area, "mask must survive the centre crop"


def test_files_equal_clean_plus_defect(dataset):
    """Pixels outside the mask equal the clean rendering; inside they all differ."""
    kind, cat = dataset
    size = SMALL["image_size"]
    for defect in DEFECT_TYPES:
        for i in range(SMALL["n_test_per_defect"]):
            clean, img, mask = make_defective(kind, defect, sample_rng(3, "test", defect, i), size)
            np.testing.assert_array_equal(_load(cat / "test" / defect / f"{i:03d}.png"), img)
            disk_mask = _load(cat / "ground_truth" / defect / f"{i:03d}_mask.png") > 0
            np.testing.assert_array_equal(disk_mask, mask)
            np.testing.assert_array_equal(clean, render_normal(kind, sample_rng(3, "test", defect, i), size))
            changed = (img != clean).any(-1)
            np.testing.assert_array_equal(changed, mask)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_contrast_beyond_normal_variation(kind, defect):
    normals = np.stack([render_normal(kind, sample_rng(0, "train", "good", i)) for i in range(16)]).astype(
        np.float64
    )
    for seed in range(3):
        clean, img, mask = make_defective(kind, defect, np.random.default_rng(seed))
        inside = img[mask].astype(np.float64)
        # per-pixel change is large
        assert np.abs(inside - clean[mask]).mean() > 25
        # the region's mean colour is far outside what normal images show there
        region = normals[:, mask].mean(axis=1)  # (n_normals, 3)
        z = np.abs(inside.mean(0) - region.mean(0)) / (region.std(0) + 1.0)
        assert z.max() > 2.0, (kind, defect, seed, z)


@pytest.mark.parametrize("kind", KINDS)
def test_normal_variation_is_modest(kind):
    imgs = np.stack([render_normal(kind, np.random.default_rng(s), 128) for s in range(8)])
    means = imgs.reshape(8, -1, 3).mean(1)
    assert means.std(0).max() < 6.0  # global colour barely changes between normals
    assert imgs.std() > 10  # but the images are not flat


def test_deterministic_and_seed_dependent(tmp_path):
    a = _tree(generate_dataset(tmp_path / "a", kind="object", seed=5, **SMALL))
    b = _tree(generate_dataset(tmp_path / "b", kind="object", seed=5, **SMALL))
    c = _tree(generate_dataset(tmp_path / "c", kind="object", seed=6, **SMALL))
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert all(not np.array_equal(a[k], c[k]) for k in a if not k.startswith("ground_truth"))


def test_existing_nonempty_category_raises(tmp_path):
    target = tmp_path / "synthetic"
    target.mkdir()
    (target / "user_file.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="synthetic"):
        generate_dataset(tmp_path, **SMALL)
    assert (target / "user_file.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_existing_empty_category_is_filled(tmp_path):
    (tmp_path / "cat").mkdir()
    out = generate_dataset(tmp_path, category="cat", **SMALL)
    assert out == tmp_path / "cat" and (out / "train" / "good" / "000.png").is_file()


def test_failure_leaves_no_partial_tree(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = synthetic._save_png

    def flaky_save(arr, path):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        real_save(arr, path)

    monkeypatch.setattr(synthetic, "_save_png", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, kind="liquid")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, category="../escape")
    with pytest.raises(ValueError):
        make_defective("texture", "crack", np.random.default_rng(0))
    assert list(tmp_path.iterdir()) == []


def test_default_counts_and_size(tmp_path):
    cat = generate_dataset(tmp_path)
    assert len(list((cat / "train" / "good").iterdir())) == 24
    assert len(list((cat / "test" / "good").iterdir())) == 6
    for defect in DEFECT_TYPES:
        assert len(list((cat / "test" / defect).iterdir())) == 3
        assert len(list((cat / "ground_truth" / defect).iterdir())) == 3
    assert Image.open(cat / "train" / "good" / "000.png").size == (256, 256)
