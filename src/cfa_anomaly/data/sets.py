"""The public data sets the toolkit reads as they ship: each one's layout (data.layout) and categories, for
`cfa benchmark --dataset`."""

from __future__ import annotations

from cfa_anomaly.config import MVTEC_CATEGORIES
from cfa_anomaly.data.btad import BTAD_CATEGORIES
from cfa_anomaly.data.loco import LOCO_CATEGORIES
from cfa_anomaly.data.mvtec_ad_2 import MVTEC_AD_2_CATEGORIES
from cfa_anomaly.data.visa import VISA_CATEGORIES

MPDD_CATEGORIES: tuple[str, ...] = ("bracket_black", "bracket_brown", "bracket_white", "connector",
                                    "metal_plate", "tubes")
# data set -> (data.layout, its categories); MPDD ships in MVTec AD's tree
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mvtec": ("mvtec", MVTEC_CATEGORIES),
    "visa": ("visa", VISA_CATEGORIES),
    "mvtec_ad_2": ("mvtec_ad_2", MVTEC_AD_2_CATEGORIES),
    "loco": ("loco", LOCO_CATEGORIES),
    "btad": ("btad", BTAD_CATEGORIES),
    "mpdd": ("mvtec", MPDD_CATEGORIES),
}
