"""How a server runs, as one dataclass: every serving default is written here once, and the
`picovlm serve` flags take theirs from it (what one request may ask is `Limits`, protocol.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from picovlm.serve.protocol import Limits


@dataclass
class ServeConfig:
    model_name: str = "picovlm"  # the name clients send as `model`
    api_key: str | None = None  # require Authorization: Bearer KEY; None: no auth
    max_batch: int = 16  # most requests decoded together (rows of the scheduler's DecodeBatch)
    prepare_threads: int = 2  # requests whose images are decoded and text tokenized at once (memory: each
    # holds one full-size image at most; tokenizing holds the GIL, so more threads would not be faster)
    host: str = "127.0.0.1"  # this machine only
    port: int = 8000
    limits: Limits = field(default_factory=Limits)
