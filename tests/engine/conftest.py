"""The tiny VLM that the generation and batching tests decode with."""

import pytest
import torch

from picovlm.config import GPTConfig, VisionConfig, ViTConfig, VLMConfig
from picovlm.models.vlm import VLM

IMAGE_TOKEN = 2  # the tests' prompts use id 2 as <|image|>


@pytest.fixture(scope="module")
def model() -> VLM:
    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=4, n_embd=16, n_layer=2, n_head=2, mlp_ratio=2.0)
    lm = GPTConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, max_seq_len=64)
    vlm = VLM(VLMConfig(vision=VisionConfig(vit=vit), projector="pixel_shuffle2", lm=lm), image_token_id=IMAGE_TOKEN)
    with torch.no_grad():  # larger LM weights than the 0.02 init: outputs depend clearly on the input
        for p in vlm.lm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return vlm.eval()
