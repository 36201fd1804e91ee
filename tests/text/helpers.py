"""Helpers shared by the chat-template tests."""


def masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Contiguous runs of ids where the mask is 1."""
    runs: list[list[int]] = []
    for i, (token, m) in enumerate(zip(ids, mask, strict=True)):
        if m:
            if i == 0 or not mask[i - 1]:
                runs.append([])
            runs[-1].append(token)
    return runs
