"""model.precision resolved once into a PrecisionPlan: what each part of the model computes in."""

from __future__ import annotations

import logging

import pytest
import torch

from cfa_anomaly.config import PRECISIONS, load_config
from cfa_anomaly.model.precision import PLANS, named_plan, plan_for

BF16, F32 = torch.bfloat16, torch.float32


def test_every_configurable_precision_but_auto_has_a_plan():
    assert set(PLANS) == set(PRECISIONS) - {"auto"}


@pytest.mark.parametrize(("name", "backbone", "features", "search", "projected"), [
    ("float32", F32, F32, F32, False), ("mixed", F32, BF16, BF16, False),
    ("bfloat16", BF16, BF16, BF16, False), ("int8-search", F32, F32, torch.int8, False),
    ("projected-search", F32, F32, F32, True)])
def test_each_plan_says_what_each_part_computes_in(name, backbone, features, search, projected):
    plan = named_plan(name)
    assert (plan.name, plan.backbone, plan.features, plan.search, plan.projected) == (
        name, backbone, features, search, projected)


def test_the_last_stage_in_bfloat16_is_kept_under_mixed_only(caplog):
    assert named_plan("mixed", last_stage_bfloat16=True).last_stage_bfloat16
    with caplog.at_level(logging.WARNING):
        assert not named_plan("float32", last_stage_bfloat16=True).last_stage_bfloat16
    assert "mixed only" in caplog.text
    with pytest.raises(ValueError, match="unknown precision"):
        named_plan("half")


def test_a_model_reads_its_plan_and_an_explicit_precision_wins_over_the_config():
    cfg = load_config(None, ["model.precision=mixed"]).model
    assert plan_for(cfg, torch.device("cpu")).name == "mixed"
    assert plan_for(cfg, torch.device("cpu"), "float32").name == "float32"


def test_a_projected_search_model_prepares_its_bank_with_a_projection_where_one_pays():
    """The plan reaches the bank: a wide bank in a 12-dimensional subspace gets a 16-dimensional Projection
    under projected-search, none under float32."""
    from test_model import stub_model

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(400, 12, generator=generator) @ torch.randn(12, 256, generator=generator)
    for name, dimension in (("float32", None), ("projected-search", 16)):
        model = stub_model(precision=name)
        model.memory_bank = centres.clone()
        projection = model.prepared_bank().projection
        assert (projection and projection.dimension) == dimension
