"""Our tokenizer and chat template in the shape HF expects: a `PreTrainedTokenizerFast` folder and a
Jinja chat template that renders exactly what `picovlm.text.chat` builds.

The template must give the same ids as `render_prompt`, not just the same text: our chat code
encodes each message's content on its own, between special tokens, and an HF tokenizer splits
special tokens out of the text before BPE runs, so encoding the rendered string gives the same
pieces. `tests/interop/test_llava.py` checks the ids, not the strings.

Contents may be strings (our format, `<|image|>` inline) or HF's list of parts
(`{"type": "image"}` becomes `<|image|>` followed by a newline, as `Pipeline.ask` writes it).
"""

from __future__ import annotations

from pathlib import Path

from picovlm.text.tokens import ASSISTANT, BOS, END, IMAGE, PAD, USER

CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + "' }}"
    "{% elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' }}"
    "{% else %}{{ raise_exception('picovlm chats have user and assistant messages only') }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE + "\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)


def hf_tokenizer(tokenizer_file: str | Path, named_tokens: dict[str, str] | None = None):
    """A `PreTrainedTokenizerFast` over our tokenizer.json, with the chat template and the special
    tokens HF generation needs (<|end|> is the end of a turn, hence EOS). `named_tokens` are the
    model-specific ones a processor reads off its tokenizer (InternVL's `start_image_token`, ...);
    each must already be in the vocabulary."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: causal LMs reject them
        extra_special_tokens=named_tokens or {},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
