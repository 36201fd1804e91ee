"""Muon: the orthogonalization, the AdamW half, and which parameters each half gets."""

import dataclasses

import pytest
import torch

from picovlm.config import StageConfig
from picovlm.presets import RECIPES
from picovlm.train.muon import MuonAdamW, orthogonalize
from picovlm.train.optim import make_optimizer
from picovlm.train.stage_tasks import build_stage_task
from picovlm.train.stages import train_tokenizer


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_orthogonalize_keeps_directions_and_evens_out_singular_values(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, as a raw gradient has
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)  # a few Newton-Schulz steps: most land near 1, none above it by much
    assert s.median() > 0.6 and s.max() < 1.3, s
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (o * (u @ vh)).sum() / (o.norm() * (u @ vh).norm())
    assert cosine > 0.95


def test_a_stack_is_orthogonalized_matrix_by_matrix():
    g = torch.randn(3, 16, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(orthogonalize(g), torch.stack([orthogonalize(m) for m in g]))
    torch.testing.assert_close(orthogonalize(g.mT), torch.stack([orthogonalize(m.T) for m in g]))


def test_adamw_groups_step_like_torch_adamw():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5, 3))
    b.data.copy_(a.data)
    ours = MuonAdamW([{"params": [a], "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": [b], "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95))
    for step in range(5):
        grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)


def test_muon_group_minimizes_a_least_squares_problem():
    torch.manual_seed(0)
    x, target = torch.randn(64, 8), torch.randn(8, 8)
    w = torch.nn.Parameter(torch.zeros(8, 8))
    opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.05)
    first = None
    for _ in range(60):
        loss = ((x @ w - x @ target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_muon_gets_the_hidden_matrices_and_adamw_the_rest(tiny_data, tmp_path):
    recipe = RECIPES["tiny"](str(tiny_data))
    tok = train_tokenizer(recipe, tmp_path / "tokenizer.json")
    stage = dataclasses.replace(next(s for s in recipe.stages if s.name == "instruct"), init={})
    task = build_stage_task(recipe, stage, tok)
    for p in task.model.tower.parameters():
        p.requires_grad = False
    cfg = StageConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, lr_scale={"lm": 0.5})
    opt = make_optimizer(task.model, cfg, task.parts)
    names = {id(p): n for n, p in task.model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    adamw = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon and all(task.model.get_parameter(n).ndim == 2 for n in muon)
    assert any(n.startswith("projector.") for n in muon) and any(".attn." in n or "mlp" in n for n in muon)
    assert not any("emb" in n or "lm_head" in n or n.endswith(".pos") for n in muon)
    assert any("tok_emb" in n for n in adamw) and not any(n.startswith("tower.") for n in muon | adamw)
    for g in opt.param_groups:
        part = names[id(g["params"][0])].split(".")[0]
        assert g["lr_scale"] == pytest.approx((0.5 if part == "lm" else 1.0) * (20.0 if g["muon"] else 1.0))


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer(torch.nn.Linear(2, 2), StageConfig(optimizer="sgd"), {"lm": ""})
