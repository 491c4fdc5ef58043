"""`cfa predict` as a stream: rows, map shards and panels written per batch, bad files listed, bounded memory."""

from __future__ import annotations

import csv
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import SYNTH_CATEGORY, requires_mobilenet_weights, small_config

from cfa_anomaly import cli
from cfa_anomaly.data.samples import list_images
from cfa_anomaly.inference import Predictor
from cfa_anomaly import runfiles
from cfa_anomaly.pipeline import train_and_test
from cfa_anomaly.predict import PredictOptions, predict_images

pytestmark = requires_mobilenet_weights


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory) -> Path:
    """A tiny checkpoint with a held-out threshold."""
    output = tmp_path_factory.mktemp("stream_trained")
    train_and_test(small_config(synth_root, **{"data.holdout_fraction": "0.2"}), output, run_test=False)
    return output / runfiles.CHECKPOINT


@pytest.fixture(scope="module")
def sources(synth_root) -> list[Path]:
    """The 7 synthetic test images (96 px)."""
    test = synth_root / SYNTH_CATEGORY / "test"
    return [p for folder in sorted(test.iterdir()) for p in list_images(folder)]


@pytest.fixture(scope="module")
def reference(checkpoint, sources) -> dict[str, float]:
    """Scores of the source images by file name, from Predictor.predict."""
    result = Predictor.from_checkpoint(checkpoint, device="cpu").predict(sources)
    return {f"{p.parent.name}_{p.name}": float(s) for p, s in zip(sources, result.scores)}


def copy_images(sources: list[Path], folder: Path, count: int | None = None) -> list[Path]:
    """Copies named <defect>_<name> (with a copy number past the 7 sources) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count or len(sources)):
        source = sources[index % len(sources)]
        suffix = "" if index < len(sources) else f"-{index // len(sources)}"
        copies.append(folder / f"{source.parent.name}_{source.stem}{suffix}{source.suffix}")
        shutil.copyfile(source, copies[-1])
    return copies


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def predict(checkpoint: Path, *args: str) -> int:
    return cli.main(["predict", "--checkpoint", str(checkpoint), "--device", "cpu", *args])


def test_a_corrupt_file_is_listed_and_skipped(checkpoint, sources, reference, tmp_path, capsys):
    images = copy_images(sources, tmp_path / "in")
    bad = tmp_path / "in" / "good_001z-corrupt.png"  # sorts in the middle of the folder
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert predict(checkpoint, str(tmp_path / "in"), "--output", str(tmp_path / "out")) == 0
    rows = read_rows(tmp_path / "out" / "scores.csv")
    assert [r["path"] for r in rows] == [str(p) for p in sorted([*images, bad])]
    assert 0 < [r["path"] for r in rows].index(str(bad)) < len(rows) - 1
    (broken,) = [r for r in rows if r["error"]]
    assert broken["path"] == str(bad) and broken["score"] == "" and broken["decision"] == ""
    for row in rows:
        if row is not broken:
            assert float(row["score"]) == pytest.approx(reference[Path(row["path"]).name], rel=1e-5)
            assert row["decision"] in ("good", "defective")
    assert str(bad) in capsys.readouterr().err
    with np.load(tmp_path / "out" / "maps.npz") as npz:  # one file: the run has fewer than 256 maps
        assert list(npz["paths"]) == [r["path"] for r in rows if not r["error"]]
        assert npz["maps"].dtype == np.float16 and npz["maps"].shape == (len(images), 64, 64)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_strict_stops_at_the_first_unreadable_file(checkpoint, sources, tmp_path, capsys):
    copy_images(sources, tmp_path / "in")
    bad = tmp_path / "in" / "good_000-corrupt.png"
    bad.write_bytes(b"")
    assert predict(checkpoint, str(tmp_path / "in"), "--strict", "--output", str(tmp_path / "out")) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out" / "scores.csv").exists()  # only scores.csv.partial: visibly unfinished


def test_reading_ahead_in_threads_writes_what_reading_in_line_writes(checkpoint, sources, tmp_path):
    copy_images(sources, tmp_path / "in", 13)
    (tmp_path / "in" / "good_001z-corrupt.png").write_bytes(b"not an image")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    for workers in (0, 3):
        summary = predict_images(predictor, [tmp_path / "in"], tmp_path / f"out{workers}",
                                 PredictOptions(read_workers=workers, panels="none", shard_size=5))
        assert (summary.scored, len(summary.skipped)) == (13, 1)
    assert read_rows(tmp_path / "out0" / "scores.csv") == read_rows(tmp_path / "out3" / "scores.csv")
    for shard in sorted((tmp_path / "out0" / "maps").glob("*.npz")):
        with np.load(shard) as inline, np.load(tmp_path / "out3" / "maps" / shard.name) as ahead:
            assert list(inline["paths"]) == list(ahead["paths"])
            np.testing.assert_array_equal(inline["maps"], ahead["maps"])


def test_recursive_and_list_file_inputs(checkpoint, sources, tmp_path):
    top = copy_images(sources[:2], tmp_path / "in")
    nested = copy_images(sources[2:4], tmp_path / "in" / "line2" / "cam1")
    assert predict(checkpoint, str(tmp_path / "in"), "--output", str(tmp_path / "flat")) == 0
    assert [r["path"] for r in read_rows(tmp_path / "flat" / "scores.csv")] == [str(p) for p in sorted(top)]
    assert predict(checkpoint, str(tmp_path / "in"), "--recursive", "--output", str(tmp_path / "deep")) == 0
    deep = [r["path"] for r in read_rows(tmp_path / "deep" / "scores.csv")]
    assert sorted(deep) == sorted(str(p) for p in [*top, *nested])
    listing = tmp_path / "list.txt"
    listing.write_text(f"# today's images\n{nested[1]}\n\n{top[0]}\n")
    assert predict(checkpoint, str(listing), "--output", str(tmp_path / "listed")) == 0
    assert [r["path"] for r in read_rows(tmp_path / "listed" / "scores.csv")] == [str(nested[1]), str(top[0])]


def test_jsonl_rows_equal_the_csv_rows(checkpoint, sources, tmp_path):
    copy_images(sources, tmp_path / "in")
    (tmp_path / "in" / "zz-broken.png").write_bytes(b"junk")
    assert predict(checkpoint, str(tmp_path / "in"), "--format", "both", "--maps", "none",
                   "--output", str(tmp_path / "out")) == 0
    rows = read_rows(tmp_path / "out" / "scores.csv")
    records = [json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [r["path"] for r in rows]
    for record, row in zip(records, rows):
        assert record["score"] == (float(row["score"]) if row["score"] else None)
        assert (record["decision"] or "") == row["decision"] and (record["error"] or "") == row["error"]
    assert records[-1]["error"] and records[-1]["score"] is None
    assert not (tmp_path / "out" / "maps.npz").exists() and not (tmp_path / "out" / "maps").exists()


@pytest.mark.parametrize("panels", ["none", "defects", "all"])
def test_panels_option(checkpoint, sources, reference, tmp_path, panels):
    images = copy_images(sources, tmp_path / "in")
    threshold = float(np.median(list(reference.values())))
    assert predict(checkpoint, str(tmp_path / "in"), "--panels", panels, "--threshold", str(threshold),
                   "--output", str(tmp_path / "out")) == 0
    rows = read_rows(tmp_path / "out" / "scores.csv")
    expected = {"none": [], "all": [r["path"] for r in rows],
                "defects": [r["path"] for r in rows if r["decision"] == "defective"]}[panels]
    if panels == "defects":
        assert 0 < len(expected) < len(images)
    drawn = sorted(p.relative_to(tmp_path / "out" / "panels") for p in (tmp_path / "out" / "panels").rglob("*.png")) \
        if (tmp_path / "out" / "panels").exists() else []
    assert drawn == sorted(Path("in") / f"{Path(p).stem}.png" for p in expected)


def test_panels_of_inputs_with_the_same_folder_and_stem_do_not_overwrite_each_other(checkpoint, sources, tmp_path):
    first = copy_images(sources[:1], tmp_path / "a" / "cam")[0]
    second = copy_images(sources[1:2], tmp_path / "b" / "cam")[0]
    second = second.rename(second.with_name(first.name))  # b/cam/<same name> as a/cam/<name>
    other_format = first.with_suffix(".bmp")  # the same stem in the same folder
    Image.open(first).save(other_format)
    assert predict(checkpoint, str(first), str(second), str(other_format), "--panels", "all",
                   "--output", str(tmp_path / "out")) == 0
    drawn = sorted(p.relative_to(tmp_path / "out" / "panels").as_posix()
                   for p in (tmp_path / "out" / "panels").rglob("*.png"))
    assert drawn == [f"cam/{first.stem}-2.png", f"cam/{first.stem}-3.png", f"cam/{first.stem}.png"]


def test_maps_are_written_in_shards_that_hold_the_scores(checkpoint, sources, tmp_path):
    copy_images(sources, tmp_path / "in")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    summary = predict_images(predictor, [tmp_path / "in"], tmp_path / "out",
                             PredictOptions(shard_size=3, panels="none"))
    shards = sorted((tmp_path / "out" / "maps").glob("*.npz"))
    assert [p.name for p in shards] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert summary.map_files == shards and not (tmp_path / "out" / "maps.npz").exists()
    rows = read_rows(tmp_path / "out" / "scores.csv")
    paths, scores, maps = [], [], []
    for shard in shards:
        with np.load(shard) as npz:
            paths += list(npz["paths"])
            scores += list(npz["scores"])
            maps.append(npz["maps"])
    assert [len(m) for m in maps] == [3, 3, 1]
    assert paths == [r["path"] for r in rows]
    np.testing.assert_allclose(scores, [float(r["score"]) for r in rows], rtol=1e-5)
    # the image score is the map's maximum (up to float16 rounding of the stored maps)
    np.testing.assert_allclose(np.concatenate(maps).max(axis=(1, 2)), scores, rtol=2e-3)


def peak_bytes(checkpoint: Path, sources: list[Path], folder: Path, count: int) -> int:
    """tracemalloc's peak (numpy arrays included) while streaming `count` images."""
    copy_images(sources, folder / "in", count)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    options = PredictOptions(shard_size=8, panels="none")
    predict_images(predictor, [folder / "in"], folder / "warm", options)  # caches and lazy imports first
    tracemalloc.start()
    try:
        summary = predict_images(predictor, [folder / "in"], folder / "out", options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.scored == count
    return peak


def test_memory_does_not_grow_with_the_number_of_images(checkpoint, sources, tmp_path):
    few = peak_bytes(checkpoint, sources, tmp_path / "few", 30)
    many = peak_bytes(checkpoint, sources, tmp_path / "many", 90)
    # keeping every map would add 60 x 64 x 64 float32 = ~1 MB; only path names and file rows may grow
    assert many - few < 200_000, (few, many)
