"""Export of the CLIP stage as an HF CLIPModel: same image and text embeddings."""

import pytest
import torch

from picovlm.checkpoint import save_checkpoint
from picovlm.config import CLIPConfig, GPTConfig, VisionConfig, ViTConfig
from picovlm.interop.clip import export_clip
from picovlm.models.clip import CLIP_PARTS, CLIPModel, clip_checkpoint_config


def make_clip(path, tok, layout="clip", old_config=False):
    """A random CLIP checkpoint; `old_config`: its config.json in the layout written before CLIPConfig."""
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=32, n_layer=2, n_head=4, mlp_ratio=2.0, act="quick_gelu")
    text = GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, mlp_hidden=64)
    model = CLIPModel(VisionConfig(vit=vit), CLIPConfig(text=text, embed_dim=24, text_layout=layout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name != "logit_scale":
                p.normal_(0, 0.2)
    tok_file = path.parent / "tok.json"
    tok.save(tok_file)
    config = clip_checkpoint_config(model)
    if old_config:
        config = {"task": "clip", "vit": vars(vit), "text": vars(text), "embed_dim": 24, "text_layout": layout}
    save_checkpoint(path, model, config, CLIP_PARTS, {}, tok_file)
    return model.eval()


def test_hf_clip_gives_our_embeddings(tmp_path, tok):
    from transformers import AutoTokenizer
    from transformers import CLIPModel as HFCLIPModel

    ours = make_clip(tmp_path / "clip", tok)
    out = export_clip(tmp_path / "clip", tmp_path / "hf")
    hf = HFCLIPModel.from_pretrained(out).eval()
    captions = ["a red cat on the mat", "blue"]
    rows = [tok.encode(c) + [tok.end_id] for c in captions]
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((2, int(lengths.max())), tok.pad_id)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(captions[0] + "<|end|>")["input_ids"] == rows[0]
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def features(x):  # a tensor in transformers 4.x, an output object in some 5.x versions
        return x if torch.is_tensor(x) else x.pooler_output

    with torch.no_grad():
        img = features(hf.get_image_features(pixel_values=pixels))
        txt = features(hf.get_text_features(input_ids=ids, attention_mask=(ids != tok.pad_id).long()))
        torch.testing.assert_close(
            torch.nn.functional.normalize(img, dim=-1), ours.encode_image(pixels), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            torch.nn.functional.normalize(txt, dim=-1), ours.encode_text(ids, lengths), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(hf.logit_scale, ours.logit_scale)


def test_gpt_text_layout_is_refused_with_the_reason(tmp_path, tok):
    make_clip(tmp_path / "clip", tok, layout="gpt")
    with pytest.raises(ValueError, match="GPT layout .* clip.text_layout='clip'"):
        export_clip(tmp_path / "clip", tmp_path / "hf")


def test_cli_export_hf_clip(tmp_path, tok, capsys):
    from picovlm.cli import main

    make_clip(tmp_path / "clip", tok)
    assert main(["export", "--model", str(tmp_path / "clip"), "--format", "hf-clip", str(tmp_path / "hf")]) == 0
    assert "CLIPModel" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "clip"), "--format", "hf-llava", str(tmp_path / "x")]) == 1
    assert "not a VLM" in capsys.readouterr().err


@pytest.mark.parametrize(("layout", "old_config"), [("clip", False), ("gpt", False), ("gpt", True)])
def test_eval_embedder_loads_either_text_layout_and_old_configs(tmp_path, tok, layout, old_config):
    from picovlm.eval.embedder import ClipEmbedder

    ours = make_clip(tmp_path / "clip", tok, layout, old_config)
    row = tok.encode("a red cat on the mat") + [tok.end_id]
    expected = ours.encode_text(torch.tensor([row]), torch.tensor([len(row)]))
    got = ClipEmbedder.load(tmp_path / "clip").encode_texts(["a red cat on the mat"])
    torch.testing.assert_close(got, expected)
