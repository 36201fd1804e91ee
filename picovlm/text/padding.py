"""Rows of token ids as one tensor, and the label of a position that takes no loss.

The batch builders (data), the VLM's loss and the CLIP caption encoders (models) all pad id rows
and mark unlabelled positions; this sits below both, so neither imports the other for it.
"""

import torch

IGNORE_INDEX = -100  # the label of a position with no loss: F.cross_entropy's default ignore_index


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    """Id rows of different lengths -> one [B, longest] tensor, each row right-padded with `value`."""
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows], dtype=torch.long)
