"""The configuration's sections, one dataclass each, with what every key does (validated in config.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    # mvtec: <root>/<category>/{train/good, test/<type>, ground_truth/<defect>}. folder: the *_dir keys below.
    # visa: VisA as it ships, <root>/split_csv/1cls.csv and <root>/<object>/Data/... (data/visa.py).
    # mvtec_ad_2: MVTec AD 2 as it ships, <root>/<object>/{train, validation, test_public, ...}
    # (data/mvtec_ad_2.py); its validation images are the hold-out. btad: BTAD (data/btad.py). loco: MVTec
    # LOCO AD (data/loco.py). MPDD ships in the mvtec layout.
    layout: str = "mvtec"
    root: str = "data/mvtec_ad"  # mvtec, visa, mvtec_ad_2: the data set's folder (holds <category>/...)
    category: str = "bottle"  # the category (mvtec), object (visa), and the run's name in outputs and tables
    # Folder layout (data.layout=folder). Relative paths are relative to the current folder, as on the
    # command line (data.root is not used). normal_dir: defect-free training images (required).
    # abnormal_dir: defective test images, directly or in one sub-folder per defect type (without it there
    # is no test split). normal_test_dir: defect-free test images; when absent, a fixed seeded
    # normal_test_fraction of normal_dir is tested instead (the same whatever train.seed; never trained on).
    # mask_dir: masks named <stem>.png or <stem>_mask.png, in abnormal_dir's sub-folders if it has them;
    # without masks (or a sub-folder of them) defective images get image metrics only.
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    normal_test_dir: str | None = None
    mask_dir: str | None = None
    normal_test_fraction: float = 0.2
    # Geometry: images are resized to resize x resize, then the central crop x crop square is scored. The
    # default scores the whole image (crop = resize), so no defect at the border is lost; the MVTec AD
    # configs keep the paper's benchmark convention (resize 256, crop 224: 16 px of every border unseen).
    resize: int = 224
    crop: int = 224
    # false: images are squashed to resize x resize. true: the short side is resized to `resize` and the
    # long side in proportion, so non-square products keep their shape, and the central crop x crop square
    # is scored (a long image's ends are then not inspected). Masks get the same geometry; maps are mapped
    # back the same way.
    keep_aspect: bool = False
    # Tiles for high-resolution images (tiling.py): 0 = off. N > 0: the resize x resize image (data.crop
    # must equal data.resize) is cut into N x N squares overlapping by tile_overlap of their side, each the
    # model's input; their maps are blended into one map of the whole image. E.g. resize 2048, tile 256.
    tile: int = 0
    tile_overlap: float = 0.25
    batch_size: int = 4
    num_workers: int = 0
    # Normal images held out of training to set the decision threshold (never the test set):
    # a seeded fraction of train/good, or a folder of normal images given here.
    holdout_fraction: float = 0.1
    holdout_dir: str | None = None
    # Label-free validation: null (none), or synthetic: defects painted onto the held-out normal images,
    # scored every train.validate_every epochs (validation.py). Needs held-out images; test labels unused.
    validation: str | None = None
    # A training image that cannot be read stops the run (default) or, when true, is skipped and listed.
    skip_bad_images: bool = False

    @property
    def input_size(self) -> int:
        """The side of the model's input: a tile, or the crop."""
        return self.tile or self.crop


@dataclass
class ModelConfig:
    backbone: str = "wide_resnet50_2"
    pretrained: bool = True  # false means random backbone weights: only for tests and timing
    weights: str | None = None  # local weights file for the backbone; None: offline package or download
    gamma_c: int = 1  # memory bank compression: H*W // gamma_c centres (k-means when > 1)
    gamma_d: int = 1  # descriptor width: backbone channels // gamma_d
    K: int = 3  # nearest centres attracted (and used for scoring)
    J: int = 3  # next nearest centres repelled (K+1 .. K+J)
    nu: float = 1e-3
    alpha: float = 0.1
    radius_init: float = 1e-5
    blur_sigma: float = 4.0
    kmeans_iters: int = 100
    # Arithmetic: float32; mixed (descriptor and nearest-centre search in bfloat16, not exact); bfloat16 (the
    # backbone too); int8-search (CPU only); projected-search (float32, an exact search by a certified lower
    # bound); auto (what a probe finds fastest here). See docs/performance.md.
    precision: str = "auto"
    # Opt-in under mixed: the backbone's last stage (after its stride-8 map) in bfloat16 where its
    # convolutions are packed for oneDNN; elsewhere float32, and a warning says so. See docs/performance.md.
    last_stage_bfloat16: bool = False
    # true: the descriptor is applied to each backbone layer at its own resolution and only its products
    # are resized (equal to resizing the maps first, both being linear; a quarter of the work for
    # wide_resnet50_2). false: the maps are resized and concatenated first, the paper's literal order;
    # with precision float32 this is the plain reference path.
    per_layer_projection: bool = True
    # Graph optimisations that keep the arithmetic: auto and on fold the backbone's batch norms into its
    # convolutions and torch.compile the descriptor step (auto: the training batch shape, where it can and
    # the step is large; on: every shape, or fail); off: the plain eager path. See docs/performance.md.
    compile: str = "auto"


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # final: the last epoch's model (the paper's fixed schedule). best-validation: the epoch with the best
    # synthetic-validation AUPRO (needs data.validation=synthetic).
    select: str = "final"
    validate_every: int = 5  # epochs between validations (data.validation=synthetic); the last is always
    # Experiment tracking (tracking.py): none, tensorboard (event files in log_uri, default <run>/tensorboard)
    # or mlflow (log_uri is the tracking URI, default a local SQLite store <output_dir>/mlflow.db).
    log: str | None = None
    log_uri: str | None = None


@dataclass
class EvaluationConfig:
    # Decision threshold: this conformal quantile of the held-out normal image scores (a new normal part
    # exceeds it with probability at most 1 - quantile; with too few held-out images, their highest score,
    # and the run says which false-alarm rate that gives).
    threshold_quantile: float = 0.99
    # With fewer than cross_fit_below held-out normal images (a small set: their highest score would flag
    # many good parts), cross_fit_folds more models, each trained without one fold of the training images,
    # add those images' out-of-fold scores to the held-out ones behind the decision threshold (crossfit.py).
    # cross_fit_below = 0: never.
    cross_fit_folds: int = 5
    cross_fit_below: int = 20
    # Pixel threshold (outlines, defect masks, defect_area), calibration.py: quantile takes
    # pixel_threshold_quantile of the held-out normal images' pixel scores; synthetic-peak (from that level,
    # the fraction of the way to each image's peak with the best pixel F1 on defects painted onto the
    # held-out images) and synthetic-f1 (the one level with the best F1 there) use the painted defects.
    # metrics.json reports the outcome of each.
    pixel_threshold_method: str = "synthetic-peak"
    pixel_threshold_quantile: float = 0.999
    panels: bool = True  # one PNG per test image
    gif_good_frames: int = 3
    gif_max_frames: int = 30
    gif_width: int = 640
