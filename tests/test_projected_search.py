"""The certified search (model.precision=projected-search): its lower bound never exceeds a true distance,
it returns exactly the reference neighbours whether the bound certifies a row or the full product searches it
again, and training with it gives the float32 model."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from reference import model_search, nearest_reference
from test_fused_step import PARAMETERS, TinyBackbone

from cfa_anomaly.config import Config, load_config
from cfa_anomaly.model import CFA, distances, search
from cfa_anomaly.model.distances import centre_bank, squared_norms
from cfa_anomaly.model.projection import bound_rows, principal_directions, project_centres
from cfa_anomaly.model.search import certified_nearest
from cfa_anomaly.train import fit


def low_rank(seed: int, n_points: int = 700, n_centres: int = 400, dim: int = 256, rank: int = 24,
             noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres near a rank-`rank` subspace with a large common offset (like ReLU features, whose bank of
    mean features has a fast-decaying spectrum), and points near them."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.logspace(0, -1.5, rank)[:, None] * torch.randn(rank, dim, generator=generator)
    centres = 4.0 * torch.randn(n_centres, rank, generator=generator) @ spread + 3.0
    centres += 0.01 * torch.randn(n_centres, dim, generator=generator)
    picks = torch.randint(0, n_centres, (n_points,), generator=generator)
    return centres[picks] + noise * torch.randn(n_points, dim, generator=generator), centres


def random_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(500, 96, generator=generator) + 2.0, torch.randn(300, 96, generator=generator) + 2.0


def in_subspace(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points that are combinations of centres: no residual outside the bank's span, where rho_p^2 =
    |p - m|^2 - |q|^2 cancels to rounding."""
    points, centres = low_rank(seed, noise=0.0)
    weights = torch.rand(len(points), 3, generator=torch.Generator().manual_seed(seed))
    mixed = (weights[:, :, None] * points.view(-1, 1, points.shape[1])).sum(1) / weights.sum(1, keepdim=True)
    return mixed, centres


DATA = {"random": random_data, "low-rank": low_rank, "in-subspace": in_subspace}


def bank_with_projection(centres: torch.Tensor, dimension: int | None):
    bank = centre_bank(centres)
    return bank._replace(projection=project_centres(bank.centred, bank.norms, bank.order, dimension))


@pytest.mark.parametrize("kind", list(DATA))
@pytest.mark.parametrize("dimension", [1, 16, None], ids=["d=1", "d=16", "d=D"])
def test_the_bound_less_its_slack_is_never_above_the_true_distance(kind, dimension):
    points, centres = DATA[kind](0)
    bank = bank_with_projection(centres, dimension or centres.shape[1])
    centred = points - bank.offset
    rows, slack = bound_rows(centred, squared_norms(centred), bank.projection)
    bound = (rows @ bank.projection.columns).double() - slack.double()[:, None]
    true = (points.double()[:, None] - centres.double()[bank.order][None]).pow(2).sum(-1)
    assert (bound <= true).all(), (bound - true).max()
    if dimension is None:  # the whole space: the bound is the distance up to rounding and slack, which are
        assert ((true - bound) / squared_norms(centred)[:, None]).max() < 1e-3  # small next to |p - m|^2


def assert_exact(points: torch.Tensor, centres: torch.Tensor, found_distances: torch.Tensor,
                 found_indices: torch.Tensor) -> None:
    """The reference's neighbours (float64), at the float32 search's distances."""
    k = found_indices.shape[1]
    assert torch.equal(found_indices, nearest_reference(points, centres, k)[1])
    values, indices = model_search(points, centres, k)  # the float32 search of every centre
    assert torch.equal(indices, found_indices)
    torch.testing.assert_close(found_distances, values, rtol=1e-6, atol=0)
    assert torch.all(found_distances[:, 1:] >= found_distances[:, :-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_the_certified_search_returns_the_reference_neighbours(seed):
    points, centres = low_rank(seed)
    bank = centre_bank(centres, projected=True)
    assert bank.projection is not None and bank.projection.dimension < centres.shape[1]
    centred = points - bank.offset
    found = certified_nearest(centred, squared_norms(centred), bank, 6)
    assert found.certified.float().mean() > 0.9  # the bound settles almost every row here
    assert_exact(points, centres, found.distances, found.indices)
    assert_exact(points, centres, *model_search(points, centres, 3, projection=bank.projection.dimension))


@pytest.mark.parametrize(("dimension", "certified", "full"), [(2, (0.0, 0.05), (0.9, 1.0)),
                                                          (4, (0.0, 0.05), (0.3, 0.9)),
                                                          (8, (0.3, 0.8), (0.0, 0.0))], ids=["d=2", "d=4", "d=8"])
def test_rows_the_first_candidates_do_not_certify_are_widened_or_searched_in_full(dimension, certified, full):
    """d = 8: the rows the first 6 + 8 candidates leave open are all settled by the widened candidates; d = 2:
    the bound is too loose for that and nearly every row runs the full product; d = 4 in between. Exact
    neighbours in every case."""
    points, centres = low_rank(0)
    bank = bank_with_projection(centres, dimension)
    centred = points - bank.offset
    found = certified_nearest(centred, squared_norms(centred), bank, 6, extra=8, chunk=len(points))
    assert certified[0] <= found.certified.float().mean().item() <= certified[1]
    assert full[0] <= found.full.float().mean().item() <= full[1]
    assert not (found.certified & found.full).any()
    assert_exact(points, centres, found.distances, found.indices)
    assert_exact(points, centres, *model_search(points, centres, 3, projection=dimension))


def test_widened_rows_take_every_centre_whose_bound_is_below_the_upper_bound():
    """widened_rows alone, with upper bounds a little above the true k-th distances: the k nearest exactly,
    without the full product; with an upper bound far above every distance, or one that leaves fewer than k
    centres (as rounding could), the full product."""
    points, centres = low_rank(2)
    bank = bank_with_projection(centres, 12)
    centred = points - bank.offset
    norms = squared_norms(centred)
    kth = nearest_reference(points, centres, 6)[0][:, -1].float()
    found = search.widened_rows(centred, norms, bank, 6, kth * 1.01, chunk=128)
    assert not found.full.any()
    assert_exact(points, centres, found.distances, found.indices)
    everything = search.widened_rows(centred, norms, bank, 6, torch.full_like(kth, 1e9), chunk=128)
    assert everything.full.all()
    assert_exact(points, centres, everything.distances, everything.indices)
    too_low = search.widened_rows(centred, norms, bank, 6, torch.zeros_like(kth), chunk=128)  # fewer than k
    assert too_low.full.all()
    assert_exact(points, centres, too_low.distances, too_low.indices)


@pytest.mark.parametrize("first_fits", [True, False])
def test_a_first_chunk_the_bound_does_not_fit_sends_the_other_rows_to_the_full_product(first_fits):
    points, centres = low_rank(0)
    if not first_fits:  # far from the bank's subspace: none of them certified
        points[:64] += 30.0 * torch.randn(64, points.shape[1], generator=torch.Generator().manual_seed(1))
    bank = bank_with_projection(centres, 12)
    centred = points - bank.offset
    found = certified_nearest(centred, squared_norms(centred), bank, 6, extra=8, chunk=64)
    if first_fits:
        assert found.certified[64:].float().mean() > 0.9
    else:
        assert not found.certified.any() and found.full[64:].all()
    assert_exact(points, centres, found.distances, found.indices)


def test_with_every_centre_a_candidate_nothing_is_left_to_certify():
    points, centres = low_rank(0, n_centres=11)
    bank = bank_with_projection(centres, 16)
    centred = points - bank.offset
    found = certified_nearest(centred, squared_norms(centred), bank, 3)  # 3 + 8 candidates of 11
    assert found.certified.all()
    assert_exact(points, centres, found.distances, found.indices)


def test_the_dimension_follows_the_banks_spectrum_and_none_is_made_where_none_pays():
    _, centres = low_rank(0, rank=16)
    bank = centre_bank(centres, projected=True)
    basis = bank.projection.basis
    assert bank.projection.dimension == 16  # 16 directions leave under RESIDUAL_SHARE of the variance out
    torch.testing.assert_close(basis.t() @ basis, torch.eye(16), rtol=0, atol=1e-5)
    full_rank = torch.randn(400, 256, generator=torch.Generator().manual_seed(0))
    assert centre_bank(full_rank, projected=True).projection is None  # too much variance left out
    assert centre_bank(centres[:, :24], projected=True).projection is None  # D = 24: the product is cheap
    with pytest.raises(ValueError, match="float32"):
        centre_bank(centres, torch.bfloat16, projected=True)


def test_subspace_iteration_finds_the_leading_eigenvalues():
    _, centres = low_rank(1, rank=40, dim=300)
    centred = centres - centres.mean(0)
    values, vectors = principal_directions(centred, 20)  # 2 x 20 < 300: subspace iteration
    exact = torch.linalg.eigvalsh(centred.double().t() @ centred.double()).flip(0)[:20]
    torch.testing.assert_close(values, exact, rtol=1e-3, atol=0)
    torch.testing.assert_close(vectors.t() @ vectors, torch.eye(20, dtype=torch.float64), rtol=0, atol=1e-12)


def tiny_config(precision: str) -> Config:
    return load_config(None, ["data.batch_size=4", "train.epochs=2", "train.device=cpu",
                              f"model.precision={precision}", "model.radius_init=0.5"])


@pytest.mark.parametrize(("dimension", "least", "most"), [(1, 0.0, 0.9), (8, 0.9, 1.0)])
def test_training_with_the_certified_search_gives_the_float32_model(monkeypatch, dimension, least, most):
    """TinyBackbone's D = 24 is too narrow for a projection to pay, so one of d dimensions is forced: d = 1
    leaves many rows to the full product, d = 8 few. Same state, data and steps: the same losses and
    parameters as float32 training, to float32 rounding (1e-6 is 0.1% of one AdamW step)."""
    monkeypatch.setattr(distances, "project_centres", functools.partial(project_centres, dimension=dimension))
    shares = []

    def counted(*args, **kwargs):
        found = certified_rows(*args, **kwargs)
        shares.append(found.certified.float().mean().item())
        return found

    certified_rows = search.certified_rows
    monkeypatch.setattr(search, "certified_rows", counted)
    torch.manual_seed(0)
    images = torch.rand(12, 3, 32, 32)
    models = {}
    for precision in ("float32", "projected-search"):
        cfg = tiny_config(precision)
        model = CFA(TinyBackbone(), cfg.model, precision=precision)
        if models:
            model.load_state_dict(copy.deepcopy(models["float32"][1]))
        initial = copy.deepcopy(model.state_dict())
        result = fit(model, [{"image": images[:7]}, {"image": images[7:]}], cfg, torch.device("cpu"))
        models[precision] = (result.losses, initial, model.learned_state())
    assert models["projected-search"][1]["descriptor.projection.conv.weight"].equal(
        models["float32"][1]["descriptor.projection.conv.weight"])
    assert len(shares) == 6 and least <= sum(shares) / len(shares) <= most  # the certified search ran
    assert models["projected-search"][0] == pytest.approx(models["float32"][0], rel=1e-6)
    for name in PARAMETERS:
        torch.testing.assert_close(models["projected-search"][2][name], models["float32"][2][name],
                                   rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("dimension", [4, 8])
def test_scoring_in_the_banks_axes_gives_the_unrotated_neighbours(monkeypatch, dimension):
    """Scoring (no gradient) runs the rotated descriptor and bank (model/rotation.py): the same neighbours and,
    to float32 rounding, the same distances as the unrotated certified search and the float32 search; the
    rotated bank is made once, the rotated layer again when the weights change."""
    monkeypatch.setattr(distances, "project_centres", functools.partial(project_centres, dimension=dimension))
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    cfg = tiny_config("projected-search")
    model = CFA(TinyBackbone(), cfg.model, precision="projected-search")
    fit(model, [{"image": images[:3]}, {"image": images[3:]}], cfg, torch.device("cpu"))
    layers = model.aggregate(images)
    reference = CFA(TinyBackbone(), cfg.model, precision="float32")
    reference.load_learned_state(model.learned_state())
    with torch.no_grad():
        rotated = model.nearest(layers, 3)
        made, bank = model.__dict__["_rotated_layer"], model.__dict__["_rotated_bank"]
        assert model.nearest(layers, 3).equal(rotated) and model.__dict__["_rotated_layer"] is made
        plain = reference.nearest(layers, 3)
    unrotated = model.nearest(layers, 3).detach()  # with gradients: the unrotated descriptor
    torch.testing.assert_close(rotated, unrotated, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rotated, plain, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.descriptor.projection.conv.weight.mul_(1.01)
        model.nearest(layers, 3)
    assert model.__dict__["_rotated_layer"] is not made and model.__dict__["_rotated_bank"] is bank


def test_a_torch_predictor_prepares_the_rotation_when_it_loads(monkeypatch):
    """The fast path's backend makes the prepared bank and its rotation at load (a service's first request
    does not wait for them); scoring then reuses them."""
    from cfa_anomaly.inference.torch_backend import TorchBackend

    monkeypatch.setattr(distances, "project_centres", functools.partial(project_centres, dimension=8))
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    cfg = tiny_config("projected-search")
    model = CFA(TinyBackbone(), cfg.model, precision="projected-search")
    fit(model, [{"image": images[:3]}, {"image": images[3:]}], cfg, torch.device("cpu"))
    model.__dict__.pop("_rotated_bank", None)
    backend = TorchBackend(model, 32)
    made = model.__dict__["_rotated_bank"], model.__dict__["_rotated_layer"]
    backend(images)
    assert model.__dict__["_rotated_bank"] is made[0] and model.__dict__["_rotated_layer"] is made[1]
