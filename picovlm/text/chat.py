"""The chat template, in one place: conversation -> token ids (+ the loss mask for training).

    <|bos|><|user|>{content}<|end|><|assistant|>{content}<|end|>...

Each message's content is encoded on its own, so the mask boundaries fall exactly between the
template tokens and the content. The model learns only what the assistant says: the mask is 1 on
assistant content and on its closing <|end|> (so it learns when to stop), 0 everywhere else.

Content may not contain special-token strings, since they would be read as template tokens and let a
message forge turns (e.g. a user typing "<|end|><|assistant|>"). The one exception is <|image|> in
user content: that is how a prompt says where the image features go. Assistant content may not
contain <|image|> either: the model never emits images.
"""

from picovlm.text.tokenizer import Tokenizer
from picovlm.text.tokens import IMAGE, SPECIAL_TOKENS

Message = dict[str, str]


def _encode_content(tok: Tokenizer, message: Message, index: int) -> tuple[int, list[int], int]:
    """(role marker id, content ids, mask value) of one message, after checking it is well-formed."""
    role = message.get("role")
    if role == "user":
        marker, allowed, target = tok.user_id, {IMAGE}, 0
    elif role == "assistant":
        marker, allowed, target = tok.assistant_id, set(), 1
    else:
        raise ValueError(f"message {index}: unknown role {role!r} (expected 'user' or 'assistant')")
    content = message["content"]
    for special in SPECIAL_TOKENS:
        if special not in allowed and special in content:
            raise ValueError(f"message {index}: {role} content may not contain the special token {special}")
    return marker, tok.encode(content), target


def render_conversation(
    tok: Tokenizer, messages: list[Message], max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """Ids of a conversation and its loss mask (1 on assistant content and its <|end|>).

    Any sequence of user/assistant messages is accepted, including a lone assistant message (a
    caption used for alignment). Too-long conversations raise instead of being truncated silently:
    where to cut is the caller's decision.
    """
    ids, mask = [tok.bos_id], [0]
    for index, message in enumerate(messages):
        marker, content, target = _encode_content(tok, message, index)
        ids += [marker, *content, tok.end_id]
        mask += [0] + [target] * (len(content) + 1)
    if max_len is not None and len(ids) > max_len:
        raise ValueError(f"conversation is {len(ids)} tokens, longer than the context of {max_len}")
    return ids, mask


def render_prompt(tok: Tokenizer, messages: list[Message]) -> list[int]:
    """Ids of a conversation ending with a user turn, followed by <|assistant|> to start generation.

    The model then writes the answer and <|end|>, exactly as it saw in training.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a prompt must end with a user message")
    ids, _ = render_conversation(tok, messages)
    return ids + [tok.assistant_id]
