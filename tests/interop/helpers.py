"""Helpers shared by the HF export tests: random VLM checkpoints and test images."""

import torch
from PIL import Image

from picovlm.checkpoint import save_checkpoint
from picovlm.config import VLMConfig
from picovlm.models.vlm import VLM, VLM_PARTS, vlm_checkpoint_config
from picovlm.text.tokenizer import Tokenizer


def random_checkpoint(path, tok: Tokenizer, cfg: VLMConfig, seed: int = 0):
    """A VLM checkpoint of `cfg` with large-ish random weights (norms away from 1, biases away from 0),
    so that any difference between two layouts shows in the logits."""
    torch.manual_seed(seed)
    model = VLM(cfg, tok.image_id)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() >= 2:
                p.normal_(0, 0.2)
            else:
                p.normal_(0, 0.1)
    tok_file = path.parent / f"{path.name}.tokenizer.json"
    tok.save(tok_file)
    save_checkpoint(path, model, vlm_checkpoint_config(model), VLM_PARTS, {}, tok_file)
    return path


def image(seed: int, size=(20, 13)) -> Image.Image:
    """A random RGB image, by default of another size and aspect ratio than any tower's input."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


def assert_runs_like_ours(hf, pipe, inputs, messages, images) -> None:
    """transformers' `hf` on `inputs` (made by its own processor) sees our ids and pixels, and gives our
    logits (1e-4) and greedy tokens, for the conversation `messages` about `images`."""
    from picovlm.engine.sampling import SamplingParams

    ours = pipe.processor.encode_prompt(messages, images)
    assert inputs["input_ids"][0].tolist() == ours.ids  # same template, same image-token expansion
    torch.testing.assert_close(inputs["pixel_values"], ours.pixels, atol=1e-5, rtol=0)
    ids = torch.tensor([ours.ids])
    with torch.no_grad():
        theirs = hf(**inputs).logits
        mine = pipe.model(ids, ours.pixels)
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    answer = [step.token for (step,) in pipe.steps([messages], [images], params)]
    with torch.no_grad():
        gen = hf.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert gen[0, ids.shape[1] :].tolist() == answer
