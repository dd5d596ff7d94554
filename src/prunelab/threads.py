"""Temporarily set torch's intra-op thread count (restored afterwards, even on error).

Tiny models gain nothing from intra-op threads, and on a busy machine the threads' spin-waits
make each step many times slower, so the reproductions of small-model claims run with one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` (>= 1) torch threads, then restore the previous count. Also a
    decorator: `@torch_threads(1)` on a function runs every call single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
