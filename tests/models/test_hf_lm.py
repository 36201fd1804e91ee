"""HF causal LMs (tiny random Llama, Qwen2, GPT-2 written to a temp dir) in place of our GPT."""

import dataclasses

import pytest
import torch
from tokenizers import Tokenizer

from picovlm.config import VisionConfig, ViTConfig, VLMConfig
from picovlm.engine.batch import DecodeBatch, Sequence
from picovlm.engine.pipeline import Pipeline
from picovlm.engine.sampling import SamplingParams
from picovlm.eval.clients import PipelineClient
from picovlm.eval.harness import evaluate, load_queries
from picovlm.eval.tasks import VQA
from picovlm.models.hf_lm import HFCausalLM, hf_lm_tokenizer
from picovlm.models.vlm import VLM
from picovlm.presets import RECIPES
from picovlm.text.chat import render_prompt
from picovlm.text.tokens import IMAGE_MARKERS, MEDIA_TOKENS, SPECIAL_TOKENS
from picovlm.train.stages import run_recipe
from tests.engine.reference import decode_without_cache

ARCHS = ["llama", "qwen2", "gpt2"]


@pytest.fixture(scope="module", params=ARCHS)
def hf_lm(request, tmp_path_factory, write_hf_lm):
    return write_hf_lm(tmp_path_factory.mktemp(request.param), request.param)


def test_tokenizer_gets_our_special_tokens_and_embeddings_grow(hf_lm):
    folder, n = hf_lm
    tok = hf_lm_tokenizer(folder)
    assert tok.vocab_size == n + len(SPECIAL_TOKENS) + len(IMAGE_MARKERS) + len(MEDIA_TOKENS)
    assert tok.encode("<|image|>") == [tok.image_id] and tok.image_id >= n
    assert tok.has_image_markers and min(tok.image_marker_ids) >= n  # image_markers work with an HF LM too
    assert tok.decode(tok.encode("a red circle")) == "a red circle"
    lm = HFCausalLM(folder, tok.vocab_size, max_seq_len=64)
    emb = lm.model.get_input_embeddings().weight
    assert emb.shape[0] == tok.vocab_size and lm.cfg.vocab_size == tok.vocab_size and lm.cfg.n_embd == 32
    torch.testing.assert_close(emb[tok.image_id], emb[:n].mean(0))
    # <|end|> and the role markers start from the LM's own end-of-sequence token and role words
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = lm.model.config.eos_token_id
    mean = emb[:n].mean(0)
    if eos is not None and eos < n:  # (GPT-2's default eos id lies outside this tiny vocabulary)
        torch.testing.assert_close(emb[tok.end_id], 1.01 * emb[eos] - 0.01 * mean)
    else:
        torch.testing.assert_close(emb[tok.end_id], mean)
    torch.testing.assert_close(emb[tok.user_id], 0.9 * emb[raw.encode("user").ids[-1]] + 0.1 * mean)
    assert not torch.allclose(emb[tok.user_id], emb[tok.assistant_id])
    ids = torch.tensor([tok.encode("what is in the picture")])
    with torch.no_grad():  # our interface gives the HF model's own logits
        torch.testing.assert_close(lm(ids), lm.model(input_ids=ids).logits)
        assert lm(inputs_embeds=lm.embed(ids), return_hidden=True).shape == (1, ids.shape[1], 32)
        same_place = torch.zeros_like(ids)  # position_ids reach the HF model (RoPE or a position table)
        assert not torch.allclose(lm(ids, position_ids=same_place), lm(ids))
        # GPT's interface, segment_ids included: an HF LM cannot isolate turns, and says so in one line
        with pytest.raises(ValueError, match=r"^segment_ids \(isolated turns\) need picovlm's GPT[^\n]*$"):
            lm(ids, segment_ids=torch.zeros_like(ids))


def test_with_its_own_template_our_unused_tokens_start_at_the_mean(tmp_path, write_hf_lm):
    """A copy of the eos row for <|end|> would outbid the LM's own end of turn, which is now the stop."""
    folder, n = write_hf_lm(tmp_path, "llama", chatml=True)
    tok = hf_lm_tokenizer(folder)
    emb = HFCausalLM(folder, tok.vocab_size, max_seq_len=64).model.get_input_embeddings().weight
    for token_id in (tok.end_id, tok.bos_id, tok.user_id, tok.assistant_id):
        torch.testing.assert_close(emb[token_id], emb[:n].mean(0))


def test_vlm_generation_with_cache_padding_and_joining_matches_recompute(hf_lm):
    folder, _ = hf_lm
    tok = hf_lm_tokenizer(folder)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=1, n_head=4)
    cfg = VLMConfig(vision=VisionConfig(vit=vit), projector="mlp2x_gelu", lm_kind="hf", lm_hf_path=str(folder))
    cfg.lm = dataclasses.replace(cfg.lm, vocab_size=tok.vocab_size, max_seq_len=64)
    torch.manual_seed(0)
    model = VLM(cfg, tok.image_id).eval()
    assert model.cfg.lm.n_embd == 32 and model.tokens_per_image == 16
    prompts = [
        [tok.bos_id, tok.user_id, *[tok.image_id] * 16, *tok.encode("what is in the picture"), tok.end_id],
        [tok.bos_id, tok.user_id, *[tok.image_id] * 16, *tok.encode("red"), tok.end_id, tok.assistant_id],
        [tok.bos_id, tok.user_id, *tok.encode("is it blue or green"), tok.end_id, tok.assistant_id],
    ]
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = [pixels[:1], pixels[1:], None]
    params = SamplingParams(max_tokens=6, temperature=0.0)
    seqs = [Sequence(i, p, im, params) for i, (p, im) in enumerate(zip(prompts, images, strict=True))]
    expected = {s.key: decode_without_cache(model, s.ids, s.pixels, 6, tok.stop_ids) for s in seqs}
    batch, got, step = DecodeBatch(model, tok), {s.key: [] for s in seqs}, 0
    batch.add(seqs[:2])  # prefilled together: left padding
    while step <= 2 or len(batch):
        if step == 2:
            batch.add(seqs[2:])  # joins a running batch: the HF model's keys and values move with the rows
        for out in batch.step():
            got[out.key].append(out.token)
        step += 1
    assert got == expected


@pytest.mark.parametrize("arch", ["gpt2", "llama-chatml"])
def test_recipe_trains_evaluates_and_chats_with_an_hf_lm(tiny_data, tmp_path, write_hf_lm, arch):
    """GPT-2 (no chat template: ours) and a Llama with SmolLM2's template, which the checkpoint keeps."""
    folder, _ = write_hf_lm(tmp_path / arch, arch.split("-")[0], chatml=arch.endswith("chatml"))
    recipe = RECIPES["tiny"](str(tiny_data))
    recipe.model.lm_kind, recipe.model.lm_hf_path = "hf", str(folder)
    recipe.model.projector = "mlp2x_gelu"
    recipe.model.lm = dataclasses.replace(recipe.model.lm, max_seq_len=256)  # the template's system prompt
    recipe.stages = [s for s in recipe.stages if s.task == "vlm"]  # the LM comes pretrained: no lm stage
    for s in recipe.stages:
        s.init = {k: v for k, v in s.init.items() if k == "projector"}
    done = run_recipe(recipe, tmp_path / "run", progress=False)
    pipe = Pipeline.load(done["instruct"])
    assert pipe.model.cfg.lm_kind == "hf" and pipe.model.cfg.lm.n_embd == 32
    queries = load_queries(VQA(), tiny_data / "test.json", limit=4)
    results = evaluate(VQA(), queries, PipelineClient(pipe), batch_size=4, progress=False).metrics
    assert results["n"] == 4 and 0.0 <= results["accuracy"] <= 1.0
    question = [{"role": "user", "content": "what is red"}]
    answer = pipe.generate([question], [[]], SamplingParams(max_tokens=3, temperature=0.0))
    assert isinstance(answer[0], str)  # a text-only turn runs too
    prompt = pipe.processor.encode_prompt(question, []).ids
    fresh = hf_lm_tokenizer(folder)
    assert pipe.tokenizer.chat_template == fresh.chat_template and pipe.tokenizer.stop_ids == fresh.stop_ids
    assert prompt == render_prompt(fresh, question)
    if arch == "gpt2":
        assert pipe.tokenizer.chat_template is None and prompt[-1] == pipe.tokenizer.assistant_id
    else:
        assert (done["instruct"] / "tokenizer.chat_template.json").is_file()
        assert pipe.tokenizer.decode(prompt, skip_special=False).endswith("<|im_start|>assistant\n")
        assert pipe.tokenizer.stop_ids[0] == pipe.tokenizer.token_to_id("<|im_end|>")
    # generation ends at the tokenizer's stop ids: make the first greedy token one
    first = decode_without_cache(pipe.model, prompt, None, 1)[0]
    pipe.tokenizer.stop_ids = (first,)
    assert pipe.generate([question], [[]], SamplingParams(max_tokens=3, temperature=0.0)) == [""]
    assert list(pipe.stream(question, [], SamplingParams(max_tokens=3, temperature=0.0))) == []


def test_hf_lm_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json; expected a local HF causal LM folder"):
        hf_lm_tokenizer(tmp_path)
    cfg = VLMConfig(lm_kind="hf")
    with pytest.raises(ValueError, match="needs lm_hf_path"):
        VLM(cfg, 2)
    with pytest.raises(ValueError, match="unknown lm kind 'mamba'"):
        VLM(VLMConfig(lm_kind="mamba"), 2)
