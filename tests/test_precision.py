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


@pytest.mark.parametrize(("name", "backbone", "features", "search"), [
    ("float32", F32, F32, F32), ("mixed", F32, BF16, BF16), ("bfloat16", BF16, BF16, BF16),
    ("int8-search", F32, F32, torch.int8)])
def test_each_plan_says_what_each_part_computes_in(name, backbone, features, search):
    plan = named_plan(name)
    assert (plan.name, plan.backbone, plan.features, plan.search) == (name, backbone, features, search)


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
