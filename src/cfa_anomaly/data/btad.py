"""BTAD (beanTech Anomaly Detection, Mishra et al., 2021) as it ships (data.layout=btad): MVTec AD's tree with
the defect-free folders called `ok` and the defective ones `ko`.

    <root>/<product>/train/ok/*.bmp|png
    <root>/<product>/test/ok/*, test/ko/*
    <root>/<product>/ground_truth/ko/<stem>.png      0 / 255

data.root is <root> (BTech_Dataset_transformed), data.category a product (01, 02, 03). The `ok` images get
the kind good; the defective ones the kind ko.
"""

from __future__ import annotations

from pathlib import Path

from cfa_anomaly.data.samples import Sample, Split, make_samples

BTAD_CATEGORIES: tuple[str, ...] = ("01", "02", "03")
BTAD_GOOD = "ok"


def btad_samples(root: str | Path, category: str, split: Split) -> list[Sample]:
    """One split of one BTAD product."""
    return make_samples(root, category, split, good=BTAD_GOOD)
