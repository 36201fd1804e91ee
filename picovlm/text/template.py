"""An HF model's own Jinja chat template, rendered without transformers, and where its answers are.

A pretrained instruct LM (SmolLM2, Qwen2, Llama 3, ...) was tuned on its own turn layout, e.g.

    <|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n{content}<|im_end|>\\n

and answers best when prompted in it. Its folder ships the layout as a Jinja template (`chat_template`
in tokenizer_config.json, or chat_template.jinja / chat_template.json). `ChatTemplate` renders it the
way `transformers`' `apply_chat_template` does (same sandboxed Jinja environment, same helpers), once
compiled, so prompting does not build a transformers tokenizer at every call.

Training also needs to know which characters are the assistant's. A template is arbitrary code, so this
is read off renderings of prefixes of the conversation: the text of messages[:i] followed by the
generation prompt must be followed, in the text of messages[:i+1], by the assistant's content, and
that by the template's end-of-turn special token(s). `answer_spans` checks exactly that and raises
when a template breaks it (one whose earlier turns render differently once later turns exist, or one
that rewrites answers): such a template cannot be trained on safely, and a silent wrong mask would
train the model on the template instead of the answers.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

Message = dict[str, str]
VARIABLES = ("bos_token", "eos_token", "unk_token", "pad_token")  # the special tokens a template may print
PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _compile(source: str):
    """The template compiled in the environment `transformers` uses (sandboxed, trim_blocks,
    lstrip_blocks, loop controls, its `tojson`, `raise_exception` and `strftime_now`), plus a
    pass-through `{% generation %}` block so that templates written for assistant masks parse too."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template does not compile: {err}") from None


@dataclass
class ChatTemplate:
    """A Jinja chat template, the special-token strings it may print, and extra stop tokens.

    `stop_tokens` are the model's end-of-sequence tokens (config.json's eos_token_id and the
    tokenizer's eos_token): generation stops there as well as at the template's end of turn.
    """

    source: str
    variables: dict[str, str] = field(default_factory=dict)
    stop_tokens: tuple[str, ...] = ()
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # the compiled template does not pickle; it is rebuilt on use
        return {**self.__dict__, "_compiled": None}

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The text `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` gives."""
        import jinja2

        if self._compiled is None:
            self._compiled = _compile(self.source)
        try:
            return self._compiled.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self.variables,
            )
        except jinja2.exceptions.TemplateError as err:
            raise ValueError(f"chat template: {err}") from None

    def answer_spans(self, messages: list[Message], specials: Collection[str]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans the model learns: each assistant content,
        with the whitespace and the run of special tokens (`specials`) that close its turn."""
        cache: dict[tuple[int, bool], str] = {}

        def text(n: int, prompt: bool = False) -> str:
            if (n, prompt) not in cache:
                cache[n, prompt] = self.render(messages[:n], prompt)
            return cache[n, prompt]

        full, spans = text(len(messages)), []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before, turn = text(i), text(i + 1)
            if not turn.startswith(before) or not full.startswith(turn):
                raise ValueError(
                    f"chat template is not prefix-stable: messages[:{i + 1}] render differently once more "
                    "messages follow, so the loss mask cannot be derived"
                )
            header = text(i, True)
            if not header.startswith(before):
                raise ValueError(f"chat template: the generation prompt changes the turns before message {i}")
            header = header[len(before) :]
            # the answer comes right after the prompt the model will see at generation (whitespace the
            # template puts before it is learned with it); only a first message may be preceded by what
            # the template adds to a chat (a default system prompt)
            start, end, content, prompt_end = -1, -1, message["content"], len(before) + len(header)
            for candidate in dict.fromkeys((content, content.strip())):
                at = turn.find(candidate, prompt_end) if turn.startswith(header, len(before)) else -1
                if at >= 0 and not turn[prompt_end:at].strip():
                    start, end = prompt_end, at + len(candidate)
                    break
                at = -1 if before else turn.find(header + candidate)
                if at >= 0:
                    start, end = at + len(header), at + len(header) + len(candidate)
                    break
            if start < 0:
                raise ValueError(
                    f"chat template: assistant message {i} does not follow its generation prompt verbatim, "
                    "so the loss mask cannot be derived"
                )
            stop = _closing_specials(turn, end, specials)
            if stop == end:
                raise ValueError(f"chat template: no special end-of-turn token closes assistant message {i}")
            spans.append((start, stop))
        return full, spans

    def end_of_turn(self, specials: Collection[str]) -> str:
        """The special token that closes an assistant turn (the first one after the content)."""
        full, spans = self.answer_spans(PROBE, specials)
        answer = full[slice(*spans[-1])]
        closing = answer[answer.rfind(PROBE[-1]["content"]) + len(PROBE[-1]["content"]) :].lstrip()
        return next(s for s in specials if closing.startswith(s))

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "variables": self.variables, "stop_tokens": list(self.stop_tokens)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatTemplate:
        return cls(data["source"], dict(data.get("variables", {})), tuple(data.get("stop_tokens", ())))


def _closing_specials(text: str, at: int, specials: Collection[str]) -> int:
    """End of the whitespace + special tokens that follow `at` (== `at` when no special follows)."""
    pos = at
    while pos < len(text) and text[pos].isspace():
        pos += 1
    stop = pos
    while True:
        hit = next((s for s in specials if s and text.startswith(s, stop)), None)
        if hit is None:
            return stop if stop > pos else at
        stop += len(hit)


def _token_string(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_hf_template(folder: str | Path, id_to_token=None) -> ChatTemplate | None:
    """The chat template of an HF model folder, or None when it has none (GPT-2, base LMs).

    Looked up where `transformers` saves it: chat_template.jinja, chat_template.json, then the
    `chat_template` key of tokenizer_config.json (the template named "default" if there are several).
    `id_to_token` maps config.json's eos_token_id to the stop token strings.
    """
    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json")
    source = None
    if (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text()
    elif (folder / "chat_template.json").is_file():
        source = _read_json(folder / "chat_template.json").get("chat_template")
    else:
        source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str) or not source.strip():
        return None
    special_map = _read_json(folder / "special_tokens_map.json")
    variables = {}
    for name in VARIABLES:
        value = _token_string(special_map.get(name)) or _token_string(config.get(name))
        if value is not None:
            variables[name] = value
    stops = [variables["eos_token"]] if "eos_token" in variables else []
    eos = _read_json(folder / "config.json").get("eos_token_id")
    for token_id in eos if isinstance(eos, list) else [eos]:
        token = id_to_token(token_id) if isinstance(token_id, int) and id_to_token is not None else None
        if token is not None:
            stops.append(token)
    return ChatTemplate(source, variables, tuple(dict.fromkeys(stops)))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from None
    return data if isinstance(data, dict) else {}
