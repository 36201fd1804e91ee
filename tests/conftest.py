"""Shared test setup: one torch thread, a tiny trained tokenizer and a tiny trained model (each
built once per session)."""

from pathlib import Path

import pytest
import torch

from picovlm.data.scenes import build_dataset
from picovlm.presets import DATA_PRESETS, RECIPES, tiny_native_recipe
from picovlm.text.tokenizer import Tokenizer
from picovlm.train.stages import run_recipe

# The test models are tiny: a thread pool costs more than it saves, and on a busy machine its
# spinning workers make every small op wait (tens of milliseconds per forward instead of ~1 ms).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    words = ["what", "is", "in", "the", "picture", "a", "cat", "on", "mat", "describe", "red", "blue", "yes"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10
    return Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="session")
def old_tok() -> Tokenizer:
    """A tokenizer as picovlm trained them before the image markers existed: the six special tokens only."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from picovlm.text.tokens import SPECIAL_TOKENS

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    hf.train_from_iterator(["what is in the picture a cat on the mat"] * 10, trainer=trainer)
    return Tokenizer(hf, source="old tokenizer")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The dataset of the tiny preset (16 test images, 3 questions each); do not modify it."""
    data = tmp_path_factory.mktemp("tiny_data")
    preset = DATA_PRESETS["tiny"]()
    build_dataset(data, preset.scenes, preset.n_train, preset.n_val, preset.n_test, preset.seed)
    return data


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """{"data", "model"}: a model trained on `tiny_data` by the tiny recipe, once per session (a few
    seconds), for the tests that need a real checkpoint but not a good one."""
    done = run_recipe(RECIPES["tiny"](str(tiny_data)), tmp_path_factory.mktemp("tiny_run"), progress=False)
    return {"data": tiny_data, "model": done["instruct"]}


# SmolLM2's template (ChatML, with a default system prompt when the chat has none)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nAnswer in one word.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _write_hf_lm(folder, arch: str, chatml: bool = False):
    """A tiny random HF causal LM with its own byte-level BPE tokenizer (no picovlm tokens); with
    `chatml`, the tokenizer also has <|im_start|>/<|im_end|>, its eos is <|im_end|> and the folder has
    the CHATML template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    words = "what is in the picture a red blue green circle square triangle yes no one two three".split()
    words += "user assistant system answer in word".split() if chatml else []
    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if chatml else [])
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 5, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=specials[-1])
    if chatml:
        fast.chat_template = CHATML
    fast.save_pretrained(folder)
    n = raw.get_vocab_size()
    torch.manual_seed(0)
    eos = {"eos_token_id": raw.token_to_id("<|im_end|>")} if chatml else {}  # else each arch's default
    positions = 256 if chatml else 128  # room for the template's system prompt in this tiny vocabulary
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=positions, **eos)
    else:
        cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
        cfg = cls(
            vocab_size=n, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=positions, **eos,
        )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder, n


@pytest.fixture(scope="session")
def write_hf_lm():
    """`write_hf_lm(folder, arch, chatml=False)` -> (folder, vocab size): a tiny random HF causal LM
    ("llama", "qwen2" or "gpt2") with its own tokenizer (and SmolLM2's chat template with `chatml`),
    the same kind of folder a real pretrained LM comes in."""
    return _write_hf_lm


def _write_hf_encoder(folder):
    """A tiny random BertModel with its own WordPiece tokenizer ([CLS] ... [SEP], lowercasing)."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = "a an the of at in on and is red green blue yellow purple orange circle square triangle star"
    words += " small big large top bottom left right middle center image picture photo shape object two one"
    tokens = dict.fromkeys(specials + sorted(words.split()) + list("abcdefghijklmnopqrstuvwxyz-."))
    vocab = {t: i for i, t in enumerate(tokens)}
    raw = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(folder)  # fmt: skip
    cfg = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_encoder(tmp_path_factory) -> Path:
    """A tiny random HF BertModel folder with its tokenizer: the kind of folder all-MiniLM-L6-v2 comes in."""
    return _write_hf_encoder(tmp_path_factory.mktemp("hf_encoder"))


@pytest.fixture(scope="session")
def tiny_native_run(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """{"data", "model"}: a tiny vq + native run on `tiny_data` (seconds), once per session: a native
    checkpoint that draws (badly)."""
    done = run_recipe(tiny_native_recipe(str(tiny_data)), tmp_path_factory.mktemp("native_run"), progress=False)
    return {"data": tiny_data, "model": done["native"]}


@pytest.fixture(scope="session")
def tiny_av_data(tmp_path_factory) -> Path:
    """Clips and sounds of the tiny-av preset (8 test clips and sounds); do not modify it."""
    from picovlm.data.av import build_av_dataset

    data = tmp_path_factory.mktemp("tiny_av_data")
    build_av_dataset(data, DATA_PRESETS["tiny-av"]())
    return data


@pytest.fixture(scope="session")
def tiny_av_run(tiny_av_data, tmp_path_factory) -> dict[str, Path]:
    """{"data", "run", "model"}: every stage of the tiny-av recipe (videos and audio), once per session."""
    run = tmp_path_factory.mktemp("tiny_av_run")
    done = run_recipe(RECIPES["tiny-av"](str(tiny_av_data)), run, progress=False)
    return {"data": tiny_av_data, "run": run, "model": done["instruct"]}
