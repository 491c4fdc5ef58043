"""The folder layout (data.layout=folder): samples per split, masks optional, no image in two splits,
clear errors, and `cfa train --normal-dir ...` / `cfa test` end to end (random-weight backbone, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SYNTH_CATEGORY, SYNTH_COUNTS, SYNTH_IMAGE_SIZE, small_config, small_overrides

from cfa_anomaly import cli
from cfa_anomaly.config import ConfigError
from cfa_anomaly.data.folder import dataset_samples
from cfa_anomaly.data.samples import DatasetError
from cfa_anomaly.data.synthetic import DEFECT_TYPES
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.run_data import training_split

N_TRAIN, N_GOOD = SYNTH_COUNTS["n_train"], SYNTH_COUNTS["n_test_good"]
N_PER_DEFECT = SYNTH_COUNTS["n_test_per_defect"]
N_DEFECTIVE = len(DEFECT_TYPES) * N_PER_DEFECT
PIXEL_METRICS = ("pixel_auroc", "pixel_f1_max", "aupro")
FAST = {"model.pretrained": "false", "train.epochs": "1", "evaluation.panels": "false"}


def make_layout(synth_root: Path, dest: Path) -> dict[str, Path]:
    """The synthetic MVTec category rearranged as product/{normal, normal_test, abnormal/<d>, masks/<d>}."""
    src, product = synth_root / SYNTH_CATEGORY, dest / "product"
    shutil.copytree(src / "train" / "good", product / "normal")
    shutil.copytree(src / "test" / "good", product / "normal_test")
    for defect in DEFECT_TYPES:
        shutil.copytree(src / "test" / defect, product / "abnormal" / defect)
        shutil.copytree(src / "ground_truth" / defect, product / "masks" / defect)
    return {"normal_dir": product / "normal", "normal_test_dir": product / "normal_test",
            "abnormal_dir": product / "abnormal", "mask_dir": product / "masks"}


def folder_config(folders: dict[str, Path | str], **extra: str):
    values = {"data.layout": "folder", **{f"data.{k}": str(v) for k, v in folders.items()}, **FAST, **extra}
    return small_config("unused-root", **values)


def names(samples) -> set[Path]:
    return {s.image for s in samples}


# --------------------------------------------------------------------------- samples per split
def test_splits_with_sub_folders_give_labels_and_paired_masks(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    data = folder_config(folders).data
    train = dataset_samples(data, "train")
    assert len(train) == N_TRAIN and all(s.label == 0 and s.mask is None for s in train)
    assert names(train) == set((folders["normal_dir"]).iterdir())
    test = dataset_samples(data, "test")
    good, defective = [s for s in test if s.label == 0], [s for s in test if s.label == 1]
    assert names(good) == set(folders["normal_test_dir"].iterdir())
    assert sorted({s.defect_type for s in defective}) == sorted(DEFECT_TYPES)
    assert len(defective) == N_DEFECTIVE
    for sample in defective:
        assert sample.mask == folders["mask_dir"] / sample.defect_type / f"{sample.image.stem}_mask.png"


def test_flat_abnormal_folder_with_flat_masks(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    flat, flat_masks = tmp_path / "scratches", tmp_path / "scratch_masks"
    flat.mkdir(), flat_masks.mkdir()
    for defect in DEFECT_TYPES:  # <stem>.png masks this time
        for image in (folders["abnormal_dir"] / defect).iterdir():
            shutil.copy(image, flat / f"{defect}_{image.name}")
            mask = folders["mask_dir"] / defect / f"{image.stem}_mask.png"
            shutil.copy(mask, flat_masks / f"{defect}_{image.name}")
    folders.update(abnormal_dir=flat, mask_dir=flat_masks)
    defective = [s for s in dataset_samples(folder_config(folders).data, "test") if s.label]
    assert len(defective) == N_DEFECTIVE and {s.defect_type for s in defective} == {"scratches"}
    assert all(s.mask == flat_masks / s.image.name for s in defective)


def test_without_masks_every_defective_image_has_mask_none(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    del folders["mask_dir"]
    defective = [s for s in dataset_samples(folder_config(folders).data, "test") if s.label]
    assert len(defective) == N_DEFECTIVE and all(s.mask is None and not s.mask_known for s in defective)


# --------------------------------------------------------------------------- no image in two splits
def test_normal_test_fraction_train_and_holdout_are_disjoint_and_fixed(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    for image in folders.pop("normal_test_dir").iterdir():  # all normals in one folder: 6 + 3
        shutil.move(image, folders["normal_dir"] / f"t{image.name}")
    cfg = folder_config(folders, **{"data.holdout_fraction": "0.2", "data.normal_test_fraction": "0.3"})
    train, holdout = training_split(cfg)
    test_normals = [s for s in dataset_samples(cfg.data, "test") if s.label == 0]
    assert (len(test_normals), len(holdout), len(train)) == (3, 1, 5)  # 30% of 9, then 20% of the other 6
    assert names(train) | names(holdout) | names(test_normals) == set(folders["normal_dir"].iterdir())
    assert not names(train) & names(holdout) and not names(train + holdout) & names(test_normals)
    # the test normals stay the same whatever the training seed (the hold-out may move)
    other = folder_config(folders, **{"data.holdout_fraction": "0.2", "data.normal_test_fraction": "0.3",
                                      "train.seed": "5"})
    assert names(s for s in dataset_samples(other.data, "test") if s.label == 0) == names(test_normals)
    assert names(dataset_samples(other.data, "train")) == names(train + holdout)


def test_without_abnormal_dir_all_normals_train_and_there_is_no_test_split(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    data = folder_config({"normal_dir": folders["normal_dir"]}).data
    assert len(dataset_samples(data, "train")) == N_TRAIN
    with pytest.raises(DatasetError, match=r"no test split: data\.abnormal_dir is not set.*--no-test"):
        dataset_samples(data, "test")


def holdout_folder(tmp_path: Path, *images: Path, fresh: int = 2) -> Path:
    """A data.holdout_dir: `fresh` new images (their own bytes) plus the given ones under new names."""
    from PIL import Image

    folder = tmp_path / "holdout"
    folder.mkdir()
    for index in range(fresh):
        Image.new("RGB", (SYNTH_IMAGE_SIZE, SYNTH_IMAGE_SIZE), (40 * index, 90, 120)).save(folder / f"own{index}.png")
    for index, image in enumerate(images):
        shutil.copyfile(image, folder / f"copy{index}{image.suffix}")
    return folder


def test_holdout_dir_of_other_images_is_the_held_out_set(synth_root, tmp_path):
    folder = holdout_folder(tmp_path)
    for cfg in (small_config(synth_root, **{"data.holdout_dir": str(folder)}),
                folder_config(make_layout(synth_root, tmp_path / "layout"), **{"data.holdout_dir": str(folder)})):
        train, holdout = training_split(cfg)
        assert names(holdout) == set(folder.iterdir()) and len(train) == N_TRAIN


@pytest.mark.parametrize("split", ["train", "test"])
def test_holdout_dir_copy_of_a_training_or_test_image_is_refused_naming_both(synth_root, tmp_path, split):
    """A copy under another name (MVTec layout): found by the SHA-256 of its bytes."""
    source = sorted((synth_root / SYNTH_CATEGORY / split / "good").iterdir())[1]
    folder = holdout_folder(tmp_path, source)
    with pytest.raises(DatasetError) as err:
        training_split(small_config(synth_root, **{"data.holdout_dir": str(folder)}))
    message = str(err.value)
    assert str(folder / "copy0.png") in message and str(source) in message
    assert f"the {'training' if split == 'train' else 'test'} image" in message and "SHA-256" in message


def test_holdout_dir_link_to_a_test_image_is_refused_as_the_same_file(synth_root, tmp_path):
    """The folder layout, a symbolic link to a normal test image: the same file by its resolved path."""
    folders = make_layout(synth_root, tmp_path)
    target = min(folders["normal_test_dir"].iterdir())
    folder = holdout_folder(tmp_path)
    (folder / "linked.png").symlink_to(target)
    with pytest.raises(DatasetError, match=r"is also a test image: .*\(the same file\)") as err:
        training_split(folder_config(folders, **{"data.holdout_dir": str(folder)}))
    assert str(folder / "linked.png") in str(err.value) and str(target) in str(err.value)


# --------------------------------------------------------------------------- a run without masks
def test_maskless_folder_run_gives_image_metrics_only(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    shutil.rmtree(folders["mask_dir"] / "hole")  # one defect type without masks: no pixel metrics at all
    report = train_and_test(folder_config(folders), tmp_path / "out")
    assert report["metrics"]["image_auroc"] is not None
    assert all(report["metrics"][key] is None for key in PIXEL_METRICS)
    assert report["test"]["defective_without_mask"] == N_PER_DEFECT
    assert report["test"]["images"] == N_GOOD + N_DEFECTIVE
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["data"]["layout"] == "folder"


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("values", "message"), [
    ({"data.layout": "folders"}, r"data\.layout = 'folders' is invalid: use one of mvtec, folder"),
    ({"data.layout": "folder"}, r"data\.normal_dir is not set"),
    ({"data.normal_dir": "a"}, r"data\.normal_dir is set but data\.layout is 'mvtec'"),
    ({"data.layout": "folder", "data.normal_dir": "a", "data.abnormal_dir": "./a"},
     r"data\.normal_dir = 'a' and data\.abnormal_dir = '\./a' overlap"),
    ({"data.layout": "folder", "data.normal_dir": "a/good", "data.abnormal_dir": "a"},
     r"data\.normal_dir = 'a/good' and data\.abnormal_dir = 'a' overlap"),
    ({"data.layout": "folder", "data.normal_dir": "a", "data.abnormal_dir": "b", "data.holdout_dir": "b"},
     r"data\.abnormal_dir = 'b' and data\.holdout_dir = 'b' overlap"),
    ({"data.layout": "folder", "data.normal_dir": "a", "data.mask_dir": "m"},
     r"data\.mask_dir is set but data\.abnormal_dir is not"),
    ({"data.layout": "folder", "data.normal_dir": "a", "data.normal_test_fraction": "0"},
     r"data\.normal_test_fraction = 0\.0 is invalid"),
])
def test_bad_folder_config_names_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        small_config("root", **values)


def test_missing_folder_names_the_folder_and_the_key(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    folders["abnormal_dir"] = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=rf"folder not found: {tmp_path / 'nowhere'} \(data\.abnormal_dir"):
        dataset_samples(folder_config(folders).data, "test")
    for image in folders["normal_dir"].iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"no image files in .*normal \(data\.normal_dir\)"):
        dataset_samples(folder_config(folders).data, "train")


def test_mask_without_image_and_image_without_mask_name_the_file(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    stray = folders["mask_dir"] / "stain" / "099_mask.png"
    shutil.copy(folders["mask_dir"] / "stain" / "000_mask.png", stray)
    data = folder_config(folders).data
    with pytest.raises(DatasetError, match=rf"mask without an image: {stray}.*data\.mask_dir"):
        dataset_samples(data, "test")
    stray.unlink()
    (folders["mask_dir"] / "stain" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match=rf"no mask for {folders['abnormal_dir'] / 'stain' / '000.png'}"):
        dataset_samples(data, "test")


def test_abnormal_dir_layout_mistakes_are_named(synth_root, tmp_path):
    folders = make_layout(synth_root, tmp_path)
    data = folder_config(folders).data
    shutil.copy(folders["normal_dir"] / "000.png", folders["abnormal_dir"] / "loose.png")
    with pytest.raises(DatasetError, match=r"holds both images and sub-folders"):
        dataset_samples(data, "test")
    (folders["abnormal_dir"] / "loose.png").unlink()
    shutil.copytree(folders["normal_test_dir"], folders["abnormal_dir"] / "good")
    with pytest.raises(DatasetError, match=r"'good' folder inside data\.abnormal_dir.*data\.normal_test_dir"):
        dataset_samples(data, "test")
    shutil.rmtree(folders["abnormal_dir"] / "good")
    masks = tmp_path / "flat_masks"  # masks flat while the defective images are in sub-folders: nothing pairs
    masks.mkdir()
    shutil.copy(folders["mask_dir"] / "stain" / "000_mask.png", masks)
    with pytest.raises(DatasetError, match=r"no masks paired from .*flat_masks \(data\.mask_dir\)"):
        dataset_samples(folder_config({**folders, "mask_dir": masks}).data, "test")


# --------------------------------------------------------------------------- the cfa command
def test_cli_train_on_folders_then_test_the_checkpoint_on_the_same_folders(synth_root, tmp_path, capsys):
    folders = make_layout(synth_root, tmp_path)
    sets = [arg for item in small_overrides("unused-root", **FAST) if not item.startswith("data.category")
            for arg in ("--set", item)]
    out = tmp_path / "run"
    assert cli.main(["train", "--normal-dir", str(folders["normal_dir"]), "--abnormal-dir",
                     str(folders["abnormal_dir"]), "--normal-test-dir", str(folders["normal_test_dir"]),
                     "--mask-dir", str(folders["mask_dir"]), "--output", str(out), *sets]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["category"] == "product"  # named after normal-dir's parent folder
    assert report["metrics"]["image_auroc"] is not None and report["metrics"]["pixel_auroc"] is not None
    assert report["test"]["images"] == N_GOOD + N_DEFECTIVE

    assert cli.main(["test", "--checkpoint", str(out / runfiles.CHECKPOINT), "--device", "cpu"]) == 0
    again = json.loads((out / "test" / "metrics.json").read_text())
    assert again["metrics"] == report["metrics"] and again["test"]["images"] == report["test"]["images"]
    capsys.readouterr()
    assert cli.main(["test", "--checkpoint", str(out / runfiles.CHECKPOINT), "--data-root", str(tmp_path),
                     "--output", str(tmp_path / "t2")]) == 2
    assert "--data-root applies to the MVTec layout" in capsys.readouterr().err


def test_cli_folder_options_without_normal_dir_and_with_data_root_are_refused(tmp_path, capsys):
    assert cli.main(["train", "--abnormal-dir", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "data.normal_dir is not set" in capsys.readouterr().err
    assert cli.main(["train", "--normal-dir", str(tmp_path), "--data-root", "x",
                     "--output", str(tmp_path / "o")]) == 2
    assert "--data-root applies to the MVTec layout" in capsys.readouterr().err
