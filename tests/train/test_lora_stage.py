"""A recipe stage with `lora` set: adapters on a (tiny, random) HF LM, merged checkpoints, exact resume."""

import dataclasses
import shutil

import pytest
import torch
from safetensors.torch import load_file

from picovlm.checkpoint import part_files
from picovlm.config import StageConfig, from_dict
from picovlm.engine.pipeline import Pipeline
from picovlm.interop.lora import ADAPTER_FILE, load_lora
from picovlm.models.hf_lm import hf_lm_tokenizer
from picovlm.presets import tiny_recipe
from picovlm.train.stages import ADAPTER_DIR, checkpoint_dir, run_stage


def _recipe(data, lm_folder, lora=None, steps=4):
    recipe = tiny_recipe(str(data))
    model = dataclasses.replace(recipe.model, lm_kind="hf", lm_hf_path=str(lm_folder))
    align = StageConfig(name="align", data=("train_captions.jsonl",), trainable=("projector",), steps=2, batch_size=4)
    lora_stage = StageConfig(
        name="lora",
        data=("train.json",),
        trainable=("projector", "lm"),
        init={"projector": "align"},
        steps=steps,
        batch_size=4,
        lr=1e-2,
        warmup=0.0,
        lora=lora if lora is not None else {"r": 4, "alpha": 8},
    )
    return dataclasses.replace(recipe, model=model, stages=[align, lora_stage])


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, write_hf_lm):
    folder, _ = write_hf_lm(tmp_path_factory.mktemp("hf_lm"), "llama")
    return folder


def _run(recipe, out, stop_at=None, resume=False, only_lora=False):
    tok = hf_lm_tokenizer(recipe.model.lm_hf_path)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    if not only_lora:
        run_stage(recipe, recipe.stages[0], out, tok, progress=False)
    return run_stage(recipe, recipe.stages[1], out, tok, resume=resume, stop_at=stop_at, progress=False)[0]


@pytest.fixture(scope="module")
def runs(tiny_data, lm_folder, tmp_path_factory):
    """{"straight", "resumed"}: the LoRA stage's checkpoint after 4 steps in one go, and after 2 steps,
    a stop, and a resume; the align stage they start from is the same one."""
    recipe, out = _recipe(tiny_data, lm_folder), tmp_path_factory.mktemp("lora_runs")
    straight = _run(recipe, out / "straight")
    shutil.copytree(out / "straight" / "align", out / "resumed" / "align")
    _run(recipe, out / "resumed", stop_at=2, only_lora=True)
    resumed = _run(recipe, out / "resumed", resume=True, only_lora=True)
    return {"straight": straight, "resumed": resumed, "align": checkpoint_dir(out / "straight", "align")}


def test_lora_stage_trains_adapters_and_saves_a_merged_model(runs):
    ckpt = runs["straight"]
    adapter = load_file(ckpt / ADAPTER_DIR / ADAPTER_FILE)
    assert any("lora_B" in k for k in adapter) and any("trainable_tokens" in k for k in adapter)
    assert all(k.startswith("projector.") or "lora_" in k or "trainable_tokens" in k for k in adapter)

    merged = Pipeline.load(ckpt).model  # a plain VLM: nothing in it knows about LoRA
    base = Pipeline.load(runs["align"]).model
    emb = "lm.model.model.embed_tokens.weight"
    m_state, b_state = merged.state_dict(), base.state_dict()
    n_old = base.lm.base_vocab
    assert torch.equal(m_state[emb][:n_old], b_state[emb][:n_old])  # the LM's own rows: frozen
    assert not torch.equal(m_state[emb][n_old:], b_state[emb][n_old:])  # picovlm's tokens learned
    norm = "lm.model.model.layers.0.input_layernorm.weight"
    assert torch.equal(m_state[norm], b_state[norm])  # not a LoRA target: untouched
    q = "lm.model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(m_state[q], b_state[q])  # the adapter's update, merged in

    # merged checkpoint == base + adapters, on the same input
    load_lora(base, ckpt / ADAPTER_DIR)
    ids = torch.randint(0, n_old, (2, 12))
    with torch.no_grad():
        assert torch.allclose(merged.eval()(ids), base.eval()(ids), atol=1e-4)


def test_lora_stage_resumes_exactly(runs):
    a = load_file(runs["straight"] / ADAPTER_DIR / ADAPTER_FILE)
    b = load_file(runs["resumed"] / ADAPTER_DIR / ADAPTER_FILE)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # the merged LMs agree too: the resumed base was not adapted twice
    a, b = load_file(part_files(runs["straight"])["lm"]), load_file(part_files(runs["resumed"])["lm"])
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    ("lora", "task", "message"),
    [({"rank": 4}, "vlm", "unknown lora keys"), ({"r": 4}, "lm", "lora needs task 'vlm'")],
)
def test_bad_lora_settings_are_one_line_errors(tiny_data, lm_folder, tmp_path, lora, task, message):
    recipe = _recipe(tiny_data, lm_folder, lora=lora)
    recipe.stages[1] = dataclasses.replace(recipe.stages[1], task=task, init={})
    with pytest.raises(ValueError, match=message):
        _run(recipe, tmp_path, only_lora=True)


def test_stage_lora_round_trips_through_config_json():
    stage = StageConfig(lora={"r": 8, "targets": ["q_proj", "v_proj"]})
    again = from_dict(StageConfig, dataclasses.asdict(stage))
    assert again.lora == {"r": 8, "targets": ["q_proj", "v_proj"]}
