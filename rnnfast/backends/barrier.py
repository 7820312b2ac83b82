"""The bounded grid barrier's host side, shared by the Triton and CUDA backends.

A barrier kernel waits for the other blocks of its launch by polling a counter (or,
Triton's tagged plans, the words they write). The wait is bounded: after
BARRIER_SPIN_LIMIT polls it gives up, sets a timeout flag ([1] int32 on the device)
and lets every later wait of the launch through, so a bug or blocks that were never
co-resident end as an error instead of a frozen process.
The host reads the flag without waiting for the kernel: a non-blocking copy into
pinned memory and an event, checked at the next barrier launch or by
raise_if_barrier_timed_out().
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Polls of a barrier wait before the kernel gives up and reports a hang: about 10 s of
# polling on an H100 (one poll is an L2 round trip), where a real wait takes microseconds.
BARRIER_SPIN_LIMIT = 1 << 24

# Barrier launches whose timeout flag has not been read yet: (the flag or its pinned host
# copy, the event recorded after the copy or None, what to name in the error).
_unread_flags: list[tuple[Tensor, Optional["torch.cuda.Event"], str]] = []


def watch_timeout_flag(flag: Tensor, description: str) -> None:
    """Reads a barrier launch's timeout flag [1] int32 without waiting for the kernel:
    a non-blocking copy into pinned memory and an event, checked by the next launch
    (or raise_if_barrier_timed_out). A CPU flag (Triton's interpreter) is final already."""
    if flag.device.type == "cpu":
        _unread_flags.append((flag, None, description))
    else:
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        _unread_flags.append((host, copied, description))
    raise_if_barrier_timed_out()


def raise_if_barrier_timed_out(wait: bool = False) -> None:
    """Raises RuntimeError if a finished barrier launch gave up waiting at its barrier
    (a block never arrived: a bug, or blocks that were not all resident). Launches
    still running are left for a later call, unless `wait`."""
    unread = []
    while _unread_flags:
        flag, copied, description = _unread_flags.pop(0)
        if copied is not None and not copied.query():
            if not wait:
                unread.append((flag, copied, description))
                continue
            copied.synchronize()
        if int(flag[0]) != 0:
            _unread_flags[:0] = unread
            raise RuntimeError(f"{description}: a block waited for the others (at the grid "
                               f"barrier, or for their tagged words) past {BARRIER_SPIN_LIMIT} "
                               f"polls and gave up, so its results are wrong. Please report "
                               f"this with the layer's sizes.")
    _unread_flags.extend(unread)
