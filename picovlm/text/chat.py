"""The chat template, in one place: conversation -> token ids (+ the loss mask for training).

    <|bos|><|user|>{content}<|end|><|assistant|>{content}<|end|>...

Each message's content is encoded on its own, so the mask boundaries fall exactly between the
template tokens and the content. The model learns only what the assistant says: the mask is 1 on
assistant content and on its closing <|end|> (so it learns when to stop), 0 everywhere else.

Content may not contain special-token strings, since they would be read as template tokens and let a
message forge turns (e.g. a user typing "<|end|><|assistant|>"). The one exception is <|image|> in
user content (and the other modalities' placeholders, <|video|> and <|audio|>): that is how a prompt
says where the image (video, audio) features go. Assistant content may not contain them either: an
adapter VLM never emits images. A native model does (it draws): with `drawn_images`, <|image|> may
stand in assistant content too, where the model drew an image (its span goes there).

A tokenizer from an HF LM folder may bring that LM's own template (`tok.chat_template`, text/template.py),
e.g. SmolLM2's `<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...`; then the conversation is
rendered by it and encoded as one string (exactly the ids `apply_chat_template` gives), and the mask is 1
on the characters `ChatTemplate.answer_spans` finds: each answer and the end-of-turn token(s) closing it.
The rule above covers every special token of such a tokenizer (`<|im_start|>` too), so content cannot
forge the LM's turns either.
"""

from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE, PLACEHOLDERS

Message = dict[str, str]


def _allowed(role: str, drawn_images: bool) -> set[str]:
    """The special tokens that content of `role` may hold: the placeholders in user content, and
    <|image|> in assistant content of a model that draws."""
    if role == "user":
        return set(PLACEHOLDERS)
    return {IMAGE} if drawn_images else set()


def _check_content(tok: Tokenizer, message: Message, index: int, drawn_images: bool) -> None:
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise ValueError(f"message {index}: unknown role {role!r} (expected 'user' or 'assistant')")
    allowed = _allowed(role, drawn_images)
    for special in tok.special_tokens:
        if special not in allowed and special in message["content"]:
            raise ValueError(f"message {index}: {role} content may not contain the special token {special}")


def _encode_content(tok: Tokenizer, message: Message, index: int, drawn_images: bool) -> tuple[int, list[int], int]:
    """(role marker id, content ids, mask value) of one message, after checking it is well-formed."""
    _check_content(tok, message, index, drawn_images)
    marker, target = (tok.user_id, 0) if message["role"] == "user" else (tok.assistant_id, 1)
    return marker, tok.encode(message["content"]), target


def _check_messages(tok: Tokenizer, messages: list[Message], drawn_images: bool = False) -> None:
    """The rules of `_encode_content` for a model's own template, whose specials are the tokenizer's."""
    for index, message in enumerate(messages):
        _check_content(tok, message, index, drawn_images)


def _render_with_template(tok: Tokenizer, messages: list[Message]) -> tuple[list[int], list[int]]:
    _check_messages(tok, messages)
    text, spans = tok.chat_template.answer_spans(messages, tok.special_tokens)
    ids, offsets = tok.encode_offsets(text)
    # a token is the answer's if it holds any of its characters (e.g. SentencePiece's "▁yes" whose
    # space the template wrote)
    mask = [int(any(start < hi and end > lo for lo, hi in spans)) for start, end in offsets]
    return ids, mask


def render_conversation(
    tok: Tokenizer, messages: list[Message], max_len: int | None = None, drawn_images: bool = False
) -> tuple[list[int], list[int]]:
    """Ids of a conversation and its loss mask (1 on assistant content and its <|end|>).

    Any sequence of user/assistant messages is accepted, including a lone assistant message (a
    caption used for alignment). Too-long conversations raise instead of being truncated silently:
    where to cut is the caller's decision. With the LM's own template the mask covers each answer and
    the template's end-of-turn token(s) after it. `drawn_images`: a native model's conversation, whose
    answers may hold <|image|> where it drew (only with picovlm's own template).
    """
    if tok.chat_template is not None:
        ids, mask = _render_with_template(tok, messages)
    else:
        ids, mask = [tok.bos_id], [0]
        for index, message in enumerate(messages):
            marker, content, target = _encode_content(tok, message, index, drawn_images)
            ids += [marker, *content, tok.end_id]
            mask += [0] + [target] * (len(content) + 1)
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"conversation is {len(ids)} tokens, longer than the context of {max_len}")
    return ids, mask


def render_prompt(tok: Tokenizer, messages: list[Message], drawn_images: bool = False) -> list[int]:
    """Ids of a conversation ending with a user turn, followed by <|assistant|> to start generation.

    The model then writes the answer and <|end|>, exactly as it saw in training. With the LM's own
    template: the template's generation prompt, and the answer ends at one of `tok.stop_ids`.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a prompt must end with a user message")
    if tok.chat_template is not None:
        _check_messages(tok, messages)
        return tok.encode(tok.chat_template.render(messages, add_generation_prompt=True))
    ids, _ = render_conversation(tok, messages, drawn_images=drawn_images)
    return ids + [tok.assistant_id]
