"""The sample index, image and mask reading, and the shared image/mask geometry."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from cfa_anomaly.data.dataset import AnomalyDataset
from cfa_anomaly.data.images import image_to_tensor, mask_to_tensor, read_mask, read_rgb
from cfa_anomaly.data.samples import DatasetError, folder_samples, make_samples, missing_masks, split_holdout


# --------------------------------------------------------------------------- helpers
def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def rgb_image(size: int = 32, value: int = 100) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def binary_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[8:16, 10:20] = 255
    return mask


def make_tree(root: Path, category: str = "cat", n_train: int = 3, good: int = 2,
              defects: dict[str, list[str]] | None = None, mask_suffix: str = "_mask") -> Path:
    """<root>/<category> with train/good, test/good, test/<defect>/<stem>.png and their masks."""
    defects = {"scratch": ["000", "001"]} if defects is None else defects
    cat = root / category
    for i in range(n_train):
        save(rgb_image(value=i), cat / "train" / "good" / f"{i:03d}.png")
    for i in range(good):
        save(rgb_image(value=50 + i), cat / "test" / "good" / f"{i:03d}.png")
    for defect, stems in defects.items():
        for stem in stems:
            save(rgb_image(value=90), cat / "test" / defect / f"{stem}.png")
            save(binary_mask(), cat / "ground_truth" / defect / f"{stem}{mask_suffix}.png")
    return cat


def write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one): big-endian samples, filter 0 per row."""
    height, width, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- sample index
@pytest.mark.parametrize("suffix", ["_mask", ""])
def test_masks_named_stem_mask_or_stem_are_paired(tmp_path, suffix):
    make_tree(tmp_path, mask_suffix=suffix, defects={"scratch": ["000", "001"], "hole": ["007"]})
    train = make_samples(tmp_path, "cat", "train")
    assert [s.image.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.mask is None and s.defect_type == "good" for s in train)

    test = make_samples(tmp_path, "cat", "test")
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    assert len(good) == 2 and all(s.mask is None and s.defect_type == "good" for s in good)
    assert len(bad) == 3
    for s in bad:
        assert s.mask is not None and s.mask.name == f"{s.image.stem}{suffix}.png"
        assert s.mask.parent.name == s.defect_type == s.image.parent.name


def test_both_mask_conventions_in_one_folder(tmp_path):
    cat = make_tree(tmp_path, defects={"scratch": ["000"]})
    save(rgb_image(), cat / "test" / "scratch" / "001.png")
    save(binary_mask(), cat / "ground_truth" / "scratch" / "001.png")
    pairs = {s.image.name: s.mask.name for s in make_samples(tmp_path, "cat", "test") if s.label}
    assert pairs == {"000.png": "000_mask.png", "001.png": "001.png"}


def test_jpg_images_with_png_masks_and_non_images_ignored(tmp_path):
    cat = tmp_path / "cat"
    save(rgb_image(), cat / "train" / "good" / "a.jpg")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    (cat / "train" / "good" / ".hidden.png").write_bytes(b"")
    save(rgb_image(), cat / "test" / "colour" / "00.jpg")
    save(binary_mask(), cat / "ground_truth" / "colour" / "00.png")
    assert [s.image.name for s in make_samples(tmp_path, "cat", "train")] == ["a.jpg"]
    [sample] = make_samples(tmp_path, "cat", "test")
    assert sample.image.name == "00.jpg" and sample.mask.name == "00.png" and sample.label == 1


def test_image_without_mask_names_the_image(tmp_path):
    cat = make_tree(tmp_path)
    extra = save(rgb_image(), cat / "test" / "scratch" / "005.png")
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "test")
    assert str(extra) in str(err.value)


def test_mask_without_image_names_the_mask(tmp_path):
    cat = make_tree(tmp_path)
    orphan = save(binary_mask(), cat / "ground_truth" / "scratch" / "009_mask.png")
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "test")
    assert str(orphan) in str(err.value)


def test_two_masks_for_one_image_are_rejected(tmp_path):
    cat = make_tree(tmp_path)
    save(binary_mask(), cat / "ground_truth" / "scratch" / "000.png")
    with pytest.raises(DatasetError, match="000"):
        make_samples(tmp_path, "cat", "test")


def test_defect_type_without_ground_truth_folder_has_no_masks(tmp_path):
    cat = make_tree(tmp_path, defects={"scratch": ["000", "001"], "dent": ["002"]})
    shutil.rmtree(cat / "ground_truth" / "scratch")  # masks are optional per defect type
    samples = make_samples(tmp_path, "cat", "test")
    by_name = {(s.defect_type, s.image.name): s for s in samples}
    assert by_name["scratch", "000.png"].mask is None and by_name["scratch", "000.png"].label == 1
    assert by_name["dent", "002.png"].mask.name == "002_mask.png"
    assert [s.image.name for s in missing_masks(samples)] == ["000.png", "001.png"]
    assert all(s.mask_known for s in samples if s.defect_type in ("good", "dent"))
    items = {Path(item["path"]).name: item for item in AnomalyDataset(samples, 32, 32)}
    assert items["000.png"]["mask_known"] is False and not items["000.png"]["mask"].any()
    assert items["002.png"]["mask_known"] is True and items["002.png"]["mask"].any()


def test_category_without_ground_truth_folder_indexes_labels_only(tmp_path):
    cat = make_tree(tmp_path)
    shutil.rmtree(cat / "ground_truth")
    samples = make_samples(tmp_path, "cat", "test")
    assert [(s.label, s.mask) for s in samples] == [(0, None), (0, None), (1, None), (1, None)]
    assert len(missing_masks(samples)) == 2


def test_one_missing_mask_in_an_existing_ground_truth_folder_is_still_an_error(tmp_path):
    cat = make_tree(tmp_path)
    (cat / "ground_truth" / "scratch" / "001_mask.png").unlink()  # a naming mistake, most likely
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "test")
    assert str(cat / "test" / "scratch" / "001.png") in str(err.value)


def test_empty_test_defect_folder(tmp_path):
    cat = make_tree(tmp_path)
    (cat / "test" / "crack").mkdir()
    (cat / "ground_truth" / "crack").mkdir()
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "test")
    assert str(cat / "test" / "crack") in str(err.value)


def test_empty_train_good(tmp_path):
    cat = make_tree(tmp_path, n_train=0)
    (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "train")
    assert str(cat / "train" / "good") in str(err.value)


def test_missing_dataset_root_says_where_it_looked(tmp_path):
    root = tmp_path / "no_such_root"
    for split in ("train", "test"):
        with pytest.raises(DatasetError) as err:
            make_samples(root, "bottle", split)
        assert str(root / "bottle" / "train") in str(err.value)


def test_missing_test_folder(tmp_path):
    cat = tmp_path / "cat"
    save(rgb_image(), cat / "train" / "good" / "000.png")
    with pytest.raises(DatasetError) as err:
        make_samples(tmp_path, "cat", "test")
    assert str(cat / "test") in str(err.value)


# --------------------------------------------------------------------------- held-out normal images
def test_split_holdout_is_a_seeded_partition(tmp_path):
    make_tree(tmp_path, n_train=10)
    train = make_samples(tmp_path, "cat", "train")
    kept, held = split_holdout(train, 0.2, seed=3)
    assert len(held) == 2 and len(kept) == 8
    assert sorted(s.image for s in kept + held) == sorted(s.image for s in train)
    assert [s.image for s in kept] == sorted(s.image for s in kept)  # original order kept
    assert split_holdout(train, 0.2, seed=3) == (kept, held)
    assert split_holdout(train, 0.0, seed=3) == (train, [])
    assert len(split_holdout(train, 0.01, seed=3)[1]) == 1  # at least one image when a fraction is asked


def test_split_holdout_refuses_to_hold_out_everything(tmp_path):
    make_tree(tmp_path, n_train=1)
    with pytest.raises(DatasetError, match="holdout_fraction"):
        split_holdout(make_samples(tmp_path, "cat", "train"), 0.5, seed=0)


def test_folder_samples(tmp_path):
    save(rgb_image(), tmp_path / "normals" / "a.png")
    save(rgb_image(), tmp_path / "normals" / "b.jpg")
    samples = folder_samples(tmp_path / "normals")
    assert [s.image.name for s in samples] == ["a.png", "b.jpg"] and all(s.label == 0 for s in samples)
    with pytest.raises(DatasetError, match="missing_folder"):
        folder_samples(tmp_path / "missing_folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        folder_samples(tmp_path / "empty")


# --------------------------------------------------------------------------- reading images
def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    rgb = read_rgb(save(gray, tmp_path / "g.png"))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_rgba_drops_alpha_keeps_colour(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 120, 250
    rgba[..., 3] = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7  # varying, including fully transparent
    rgb = read_rgb(save(rgba, tmp_path / "a.png"))
    assert rgb.shape == (6, 6, 3)
    np.testing.assert_array_equal(rgb, rgba[..., :3])


def test_16bit_grayscale_is_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # = 0, 1, 128, 255 in 8-bit terms
    path = save(values, tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    rgb = read_rgb(path)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_16bit_rgb_png_is_scaled_to_8bit(tmp_path):
    array = np.zeros((4, 5, 3), np.uint16)
    array[..., 0], array[..., 1], array[..., 2] = 65535, 32896, 0
    write_png16_rgb(tmp_path / "c16.png", array)
    rgb = read_rgb(tmp_path / "c16.png")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 255).all() and (rgb[..., 1] == 128).all() and (rgb[..., 2] == 0).all()


def test_16bit_scaling_does_not_depend_on_image_content(tmp_path):
    dark = np.zeros((4, 4), np.uint16)
    dark[0, 0], dark[1, 1] = 200, 250  # a dark 16-bit image: every value < 256
    bright = dark.copy()
    bright[2, 2] = 1000
    a, b = read_rgb(save(dark, tmp_path / "dark.png")), read_rgb(save(bright, tmp_path / "bright.png"))
    assert Image.open(tmp_path / "dark.png").mode == Image.open(tmp_path / "bright.png").mode
    assert a[0, 0, 0] == b[0, 0, 0]


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "bmp", "tif", "tiff", "png"])
def test_common_formats_are_read(tmp_path, ext):
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 1] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
    path = save(smooth, tmp_path / f"x.{ext}")
    rgb = read_rgb(path)
    assert rgb.shape == (16, 16, 3)
    tolerance = 12 if ext in ("jpg", "jpeg") else 0  # lossy
    assert np.abs(rgb.astype(int) - smooth.astype(int)).max() <= tolerance
    tensor = image_to_tensor(rgb, 16, 16)  # what the Predictor feeds the model
    assert tensor.shape == (3, 16, 16) and 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_corrupt_or_missing_image_is_a_dataset_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="bad.png"):
        read_rgb(bad)
    with pytest.raises(DatasetError, match="gone.png"):
        read_rgb(tmp_path / "gone.png")


# --------------------------------------------------------------------------- reading masks
@pytest.mark.parametrize("on_value, mode", [(255, None), (1, None), (255, "1"), (255, "P"), (255, "RGB"),
                                            (65535, None)])
def test_mask_encodings_are_recognised(tmp_path, on_value, mode):
    expected = binary_mask(16) > 0
    dtype = np.uint16 if on_value > 255 else np.uint8
    path = save(expected.astype(dtype) * dtype(on_value), tmp_path / "m.png", mode)
    mask = read_mask(path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_zero_one_mask_after_dataset_transform(tmp_path):
    cat = tmp_path / "cat"
    save(rgb_image(), cat / "train" / "good" / "000.png")
    save(rgb_image(), cat / "test" / "bad" / "000.png")
    save((binary_mask() > 0).astype(np.uint8), cat / "ground_truth" / "bad" / "000_mask.png")  # 0/1 values
    [sample] = make_samples(tmp_path, "cat", "test")
    item = AnomalyDataset([sample], 32, 32)[0]
    np.testing.assert_array_equal(item["mask"].numpy(), binary_mask() > 0)
    assert item["label"] == 1


def test_mask_image_size_mismatch_names_the_mask(tmp_path):
    cat = tmp_path / "cat"
    save(rgb_image(), cat / "train" / "good" / "000.png")
    save(rgb_image(32), cat / "test" / "bad" / "000.png")
    mask_path = save(binary_mask(40), cat / "ground_truth" / "bad" / "000_mask.png")
    dataset = AnomalyDataset(make_samples(tmp_path, "cat", "test"), 32, 32)
    with pytest.raises(DatasetError) as err:
        dataset[0]
    assert str(mask_path) in str(err.value)


# --------------------------------------------------------------------------- geometry
def test_mask_stays_binary_and_aligned_with_image_after_resize_and_crop(tmp_path):
    size, resize, crop = 128, 72, 64
    image = np.full((size, size, 3), 20, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    # an asymmetric rectangle (a flip, transpose or shift would move it)
    image[30:62, 70:110] = 235
    mask[30:62, 70:110] = 255
    cat = tmp_path / "cat"
    save(rgb_image(size), cat / "train" / "good" / "000.png")
    save(image, cat / "test" / "bad" / "000.png")
    save(mask, cat / "ground_truth" / "bad" / "000_mask.png")
    item = AnomalyDataset(make_samples(tmp_path, "cat", "test"), resize, crop)[0]
    img_t, mask_t = item["image"], item["mask"]
    assert img_t.shape == (3, crop, crop) and mask_t.shape == (crop, crop)
    assert mask_t.dtype == torch.bool

    bright = img_t[0].numpy() > 0.5
    m = mask_t.numpy()
    # the rectangle's expected place: scale by resize/size, then shift by the crop offset
    scale, offset = resize / size, (resize - crop) // 2
    rows = (30 * scale - offset, 62 * scale - offset)
    cols = (70 * scale - offset, 110 * scale - offset)
    ys, xs = np.nonzero(m)
    assert abs(ys.min() - rows[0]) <= 1 and abs(ys.max() + 1 - rows[1]) <= 1
    assert abs(xs.min() - cols[0]) <= 1 and abs(xs.max() + 1 - cols[1]) <= 1
    # image and mask agree except at most on a one-pixel boundary band
    assert not (m & ~ndimage.binary_dilation(bright)).any()
    assert not (bright & ~ndimage.binary_dilation(m)).any()
    assert (m == bright).mean() > 0.95


def test_mask_to_tensor_is_binary_for_non_integer_scale():
    rng = np.random.default_rng(0)
    mask = rng.random((97, 97)) > 0.7
    out = mask_to_tensor(mask, 61, 50)
    assert out.dtype == torch.bool and out.shape == (50, 50)
    # roughly the same fraction of defective pixels survives a nearest resize
    assert abs(out.float().mean().item() - mask.mean()) < 0.05


def test_image_to_tensor_range_and_center_crop():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:, :20] = 255  # left half white
    out = image_to_tensor(rgb, 40, 20)  # no resize: the crop keeps columns 10..29
    assert out.shape == (3, 20, 20)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[:, :, :10], torch.ones(3, 20, 10))
    torch.testing.assert_close(out[:, :, 10:], torch.zeros(3, 20, 10))


# --------------------------------------------------------------------------- the real data in ../shared/data
REAL = [
    # (relative root, category, train, test, defective)
    ("mvtec_ad", "grid", 25, 14, 11),
    ("hazelnut_toy", "hazelnut", 28, 23, 17),
]


@pytest.mark.parametrize("root, category, n_train, n_test, n_bad", REAL, ids=[r[1] for r in REAL])
def test_real_data_indexes_and_loads(shared_data, root, category, n_train, n_test, n_bad):
    folder = shared_data / root
    if not (folder / category).is_dir():
        pytest.skip(f"{folder / category} is absent")
    train = make_samples(folder, category, "train")
    test = make_samples(folder, category, "test")
    assert len(train) == n_train
    assert len(test) == n_test and sum(s.label for s in test) == n_bad
    bad = [s for s in test if s.label]
    assert all(s.mask is not None and s.mask.is_file() for s in bad)
    if category == "grid":
        assert all(s.mask.name == f"{s.image.stem}_mask.png" for s in bad)
    else:
        assert all(s.image.suffix == ".jpg" and s.mask.name == f"{s.image.stem}.png" for s in bad)

    dataset = AnomalyDataset([train[0], *[s for s in test if not s.label][:1], *bad[:2]], 256, 224)
    for item in (dataset[i] for i in range(len(dataset))):
        assert item["image"].shape == (3, 224, 224)
        assert item["mask"].shape == (224, 224)
        if item["label"]:
            assert item["mask"].any()
        else:
            assert not item["mask"].any()


def test_cmyk_and_palette_images_become_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[:, 4:, 2] = 90
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, quality=100)
    palette = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4).save(palette)
    for path, tolerance in ((cmyk, 12), (palette, 0)):
        out = read_rgb(path)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - rgb.astype(int)).max() <= tolerance, path


def test_image_far_smaller_than_the_crop_is_resized_with_its_mask(tmp_path):
    small = np.zeros((20, 20, 3), np.uint8)
    small[5:10, 5:10] = 255
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    image_t = image_to_tensor(small, 256, 224)
    mask_t = mask_to_tensor(mask, 256, 224)
    assert image_t.shape == (3, 224, 224) and mask_t.shape == (224, 224)
    bright = image_t.mean(0) > 0.5
    assert mask_t.any()
    assert (bright & mask_t).sum() >= 0.9 * mask_t.sum()  # the mask still covers the bright square


def test_unknown_category_lists_the_categories_under_the_root(tmp_path):
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)
    (tmp_path / "grid" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="botle.*categories under that root: bottle, grid"):
        make_samples(tmp_path, "botle", "train")
