"""Spreading a run over processes with ``torch.distributed`` (launched by ``torchrun``).

Batches are independent (batch ``b`` draws from a seed of its own), so sharding needs no tensor
communication at all: rank 0 checks and prepares the run directory, every rank computes the
batches ``todo[rank::world]`` and writes its own batch files, and rank 0 analyses once all are
in. The numbers are therefore those of a one-process run, whatever the number of processes.

Coordination is small Python objects and barriers, so the process group always uses gloo (it
works next to CUDA models; nothing is sent between GPUs). A rank that fails takes the others down
through torchrun; its finished batches stay on disk and ``--resume`` redoes the rest. Every other
rank then says so in one line (:meth:`Group.stopping_says`): torchrun stops them with SIGTERM, or
the gloo barrier they wait at fails when the peer's connection closes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from probes.errors import ProbesError

# Rank 0 may analyse (or a slow rank sample) for a long time while others wait at a barrier.
BARRIER_TIMEOUT = timedelta(days=7)
# Joining is quick when every process was launched: one that never comes (WORLD_SIZE set by hand,
# a job that started fewer tasks) ends the wait with one line instead of a week.
JOIN_TIMEOUT = timedelta(minutes=10)


@dataclass
class Group:
    """This process's place among the run's processes (``world == 1``: a plain run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # joined here (so left here), not by the caller's own code
    coord: Any = None  # the gloo group the run's small messages and barriers go through
    #: what is kept and how to continue, said when another rank fails (set by the run)
    kept: Callable[[], str] = field(default=lambda: "finished work is kept", repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and hand its result (or its ProbesError) to every rank."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except ProbesError as err:
                box[0] = ("error", str(err))
        with self._peers_alive():
            dist.broadcast_object_list(box, src=0, group=self.coord)
        status, value = box[0]
        if status == "error":
            raise ProbesError(value)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            with self._peers_alive():
                dist.barrier(group=self.coord)

    @contextlib.contextmanager
    def _peers_alive(self) -> Iterator[None]:
        """A collective whose peer died raises a gloo RuntimeError: one line instead."""
        try:
            yield
        except RuntimeError as err:
            line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            why = re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0][:160]  # gloo prefixes its source line
            raise ProbesError(f"process {self.rank} of {self.world}: another process of this run stopped ({why}); "
                              f"{self.kept()}") from None

    @contextlib.contextmanager
    def stopping_says(self, kept: Callable[[], str]) -> Iterator[None]:
        """While the run computes: a SIGTERM (torchrun stops every process when one fails, Slurm
        on preemption) or a failed collective ends this rank with one line saying ``kept()``."""
        self.kept = kept
        if self.world == 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_term(signum, frame):
            raise ProbesError(f"process {self.rank} of {self.world} was stopped (SIGTERM: torchrun stops every "
                              f"process when one fails); {kept()}")

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
        elif self.coord is not None and dist.is_initialized():
            dist.destroy_process_group(self.coord)  # the caller's own group stays


def current_group() -> Group:
    """The process group torchrun describes in the environment, joined on first use."""
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Group()
    import torch.distributed as dist

    owned = not dist.is_initialized()
    try:
        if owned:
            dist.init_process_group(backend="gloo", timeout=JOIN_TIMEOUT)
        coord = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    except (RuntimeError, ValueError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ProbesError(f"torch.distributed: cannot join the process group ({why}); launch every process with "
                          "torchrun") from None
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=env_int("LOCAL_RANK", 0),
                 owned=owned, coord=coord)


def env_int(name: str, default: int) -> int:
    """A whole number torchrun sets in the environment; anything else is one line naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    counts = name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")  # how many processes: one at least
    if value < 0 or (counts and value < 1):
        least = "a positive" if counts else "a non-negative"
        raise ProbesError(f"environment variable {name}={raw!r}: expected {least} whole number (torchrun sets it)")
    return value
