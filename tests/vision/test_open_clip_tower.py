"""Tests for the open_clip tower.

open_clip itself cannot be a test dependency here: it imports torchvision, and no torchvision build
runs beside the CPU torch 2.13 the project installs. So the reference is open_clip's ViT written out
plainly below (`RefCLIP`: same module names, so its state dict *is* open_clip's key layout, and the
same computation: nn.MultiheadAttention with the fused in_proj, LayerScale, GELU or QuickGELU).
Its folders are written the way open_clip's `save_for_hf` writes them. Where open_clip is installed,
`test_reference_is_open_clip` checks the reference against the real library (keys, shapes, outputs).
"""

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from PIL import Image

from picovlm.config import VisionConfig
from picovlm.vision.open_clip_tower import OPENAI_MEAN, OPENAI_STD
from picovlm.vision.towers import build_vision_tower

TEXT_CFG = dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
VISION = dict(image_size=16, patch_size=4, width=32, layers=3, head_width=8)
PREPROCESS = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bilinear", "resize_mode": "squash"}


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """open_clip.transformer.ResidualAttentionBlock (self-attention only)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: type, eps: float, ls: float | None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width, ls) if ls is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act()), ("c_proj", nn.Linear(hidden, width))])
        )
        self.ls_2 = LayerScale(width, ls) if ls is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.ls_1(self.attn(h, h, h, need_weights=False)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class VisionTransformer(nn.Module):
    """open_clip.transformer.VisionTransformer with pool_type "tok" and no attentional pooler."""

    def __init__(self, v: dict, embed_dim: int, quick_gelu: bool):
        super().__init__()
        width, patch, size = v["width"], v["patch_size"], v["image_size"]
        heads, eps = width // v.get("head_width", 64), (v.get("norm_kwargs") or {}).get("eps", 1e-5)
        act = QuickGELU if quick_gelu else nn.GELU
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, width) / math.sqrt(width))
        self.ln_pre = nn.Identity() if v.get("no_ln_pre") else nn.LayerNorm(width, eps=eps)
        ratio, ls = v.get("mlp_ratio", 4.0), v.get("ls_init_value")
        self.transformer = Transformer(
            [ResidualAttentionBlock(width, heads, ratio, act, eps, ls) for _ in range(v["layers"])]
        )
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.randn(width, embed_dim) / math.sqrt(width))

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[embeddings after ln_pre, after block 0, after block 1, ...], CLS first."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        states = [self.ln_pre(x + self.positional_embedding)]
        for block in self.transformer.resblocks:
            states.append(block(states[-1]))
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.hidden_states(x)[-1][:, 0]) @ self.proj


class RefCLIP(nn.Module):
    """The image half of open_clip's `CLIP`, plus text-side weights that a vision tower must ignore."""

    def __init__(self, model_cfg: dict):
        super().__init__()
        self.visual = VisionTransformer(
            model_cfg["vision_cfg"], model_cfg["embed_dim"], model_cfg.get("quick_gelu", False)
        )
        t = model_cfg["text_cfg"]
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.text_projection = nn.Parameter(torch.randn(t["width"], model_cfg["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.ones([]))


def randomize(model: nn.Module) -> None:
    """Random weights everywhere, so a swapped bias, norm or LayerScale would show (many start as 0 or 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            elif ".ln_" in f".{name}" and name.endswith("weight"):
                p.normal_(1.0, 0.1)


def save_open_clip(folder, model_cfg: dict, preprocess: dict | None, weights: str) -> RefCLIP:
    """A random reference model written as open_clip's `save_for_hf` writes one: the whole state dict
    (safetensors, or torch.save for the older .bin) and open_clip_config.json (model_cfg, preprocess_cfg)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = RefCLIP(model_cfg).eval()
    randomize(model)
    folder.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    if weights == "safetensors":
        save_file(sd, folder / "open_clip_model.safetensors")
    else:
        torch.save(sd, folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": model_cfg} | ({"preprocess_cfg": preprocess} if preprocess is not None else {})
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return model


CASES = {
    # open_clip's default ViT (GELU, LayerNorm eps 1e-5), safetensors, custom preprocessing
    "gelu": (dict(embed_dim=24, vision_cfg=VISION, text_cfg=TEXT_CFG), PREPROCESS, "safetensors"),
    # OpenAI-style quick_gelu, no preprocess_cfg at all, pickle-free .bin, and the less common knobs
    "quick_gelu_ls": (
        dict(
            embed_dim=24,
            quick_gelu=True,
            vision_cfg=dict(VISION, mlp_ratio=2.0, ls_init_value=0.1, no_ln_pre=True, norm_kwargs={"eps": 1e-6}),
            text_cfg=TEXT_CFG,
        ),
        None,
        "bin",
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    model_cfg, preprocess, weights = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, save_open_clip(folder, model_cfg, preprocess, weights)


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_patch_features_match_open_clip(case, feature_layer):
    _, folder, ref = case
    tower = build_vision_tower(
        VisionConfig(kind="open_clip", pretrained_path=str(folder), pretrained_feature_layer=feature_layer)
    )
    assert (tower.grid, tower.num_patches, tower.hidden_size) == (4, 16, 32)
    x = pixels()
    with torch.no_grad():
        feats = tower(x)
        want = ref.visual.hidden_states(x)[feature_layer]
    assert feats.shape == (2, 16, 32)
    assert (feats - want[:, 1:]).abs().max() < 1e-5
    assert (want[:, 1:] - ref.visual.hidden_states(x)[feature_layer - 1][:, 1:]).abs().max() > 1e-2  # layers differ


def test_cls_kept_and_embeddings_layer(case):
    _, folder, ref = case
    tower = build_vision_tower(
        VisionConfig(kind="open_clip", pretrained_path=str(folder), pretrained_feature_layer=0, pretrained_use_cls=True)
    )
    assert tower.num_patches == 17
    x = pixels()
    with torch.no_grad():
        feats = tower(x)
        want = ref.visual.hidden_states(x)[0]  # conv1, CLS, positions, ln_pre: the input to block 0
    assert feats.shape == (2, 17, 32)
    assert (feats - want).abs().max() < 1e-5


def test_pooled_embedding_matches_encode_image(case):
    """ln_post maps too: our ViT's pooled CLS through open_clip's `proj` is open_clip's image embedding."""
    _, folder, ref = case
    tower = build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(folder)))
    x = pixels()
    with torch.no_grad():
        assert (tower.vit.pooled(x) @ ref.visual.proj - ref.visual(x)).abs().max() < 1e-5


def test_quick_gelu_is_read_not_guessed(case):
    """The activation comes from model_cfg: flipping `quick_gelu` in the config changes the features."""
    name, folder, _ = case
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"].get("quick_gelu", False) == (name == "quick_gelu_ls")
    tower = build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(folder)))
    assert tower.vit.cfg.act == ("quick_gelu" if name == "quick_gelu_ls" else "gelu")


def test_preprocessing_read_from_folder(case):
    name, folder, _ = case
    proc = build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(folder))).processor
    assert proc.size == 16  # the tower's image_size, as open_clip sets it
    if name == "gelu":
        assert proc.mean == (0.1, 0.2, 0.3) and proc.std == (0.4, 0.5, 0.6)
        assert proc.resample == Image.BILINEAR
    else:  # no preprocess_cfg: open_clip's OpenAI defaults
        assert proc.mean == OPENAI_MEAN and proc.std == OPENAI_STD
        assert proc.resample == Image.BICUBIC


def test_tower_runs_in_a_vlm(case):
    from picovlm.config import GPTConfig, VLMConfig
    from picovlm.models.vlm import VLM

    _, folder, _ = case
    cfg = VLMConfig(
        vision=VisionConfig(kind="open_clip", pretrained_path=str(folder)),
        projector="pixel_shuffle2",
        lm=GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=16, mlp_hidden=32),
    )
    vlm = VLM(cfg, image_token_id=3)
    with torch.no_grad():
        assert vlm.encode_images(pixels()).shape == (2, 4, 16)


def write_config(folder, vision_cfg: dict, **model_cfg):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 24, "vision_cfg": vision_cfg, "text_cfg": TEXT_CFG, **model_cfg}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "vision_cfg, message",
    [
        ({"timm_model_name": "vit_base_patch16_siglip_224", "image_size": 224}, "timm vision tower"),
        ({"layers": [1, 1, 1, 1], "width": 32}, "ModifiedResNet"),
        (dict(VISION, attentional_pool=True), "attentional pooler"),
        (dict(VISION, qk_norm=True), "custom attention block"),
        (dict(VISION, block_type="custom"), "custom attention block"),
        (dict(VISION, act_kwargs={"approximate": "tanh"}), "act_kwargs"),
        (dict(VISION, image_size=[16, 32]), "only square"),
        (dict(VISION, some_future_knob=1), "some_future_knob"),
    ],
)
def test_unsupported_towers_say_so_in_one_line(tmp_path, vision_cfg, message):
    folder = write_config(tmp_path / "m", vision_cfg)
    with pytest.raises(ValueError, match=message) as err:
        build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(folder)))
    assert "\n" not in str(err.value)


def test_missing_files_and_path(tmp_path):
    with pytest.raises(ValueError, match="needs pretrained_path"):
        build_vision_tower(VisionConfig(kind="open_clip"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(tmp_path)))
    folder = write_config(tmp_path / "m", VISION)
    with pytest.raises(FileNotFoundError, match="no open_clip weights"):
        build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(folder)))


def test_weights_that_do_not_fit_the_config(case, tmp_path):
    """A config that disagrees with the weights (here: one layer more) fails naming the key."""
    _, folder, ref = case
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["layers"] = 4
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(ref.state_dict(), bad / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"lack our ViT's blocks\.3\.") as err:
        build_vision_tower(VisionConfig(kind="open_clip", pretrained_path=str(bad)))
    assert "\n" not in str(err.value)


def test_reference_is_open_clip(case):
    """The reference above against the real open_clip, where it is installed (not in CI: see the top)."""
    open_clip = pytest.importorskip("open_clip")
    name, folder, ref = case
    # open_clip builds the model from our open_clip_config.json; the reference's text side is only a
    # stand-in, so the weights go into the image tower, strictly (every key and shape must agree)
    real = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    visual = {k.removeprefix("visual."): v for k, v in ref.state_dict().items() if k.startswith("visual.")}
    real.visual.load_state_dict(visual, strict=True)
    x = pixels()
    with torch.no_grad():
        out = real.visual.forward_intermediates(
            x, indices=[0, 1, 2], output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        states = ref.visual.hidden_states(x)
        for i in range(3):
            real_state = torch.cat([out["image_intermediates_prefix"][i], out["image_intermediates"][i]], dim=1)
            assert (real_state - states[i + 1]).abs().max() < 1e-5
        assert (real.encode_image(x) - ref.visual(x)).abs().max() < 1e-5
    if name == "gelu":
        assert list(real.visual.image_mean) == PREPROCESS["mean"]
