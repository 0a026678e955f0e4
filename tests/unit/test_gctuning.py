"""The serving process's garbage-collector settings (coordinator/gctuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from coordinator import gctuning


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_what_start_up_built_and_collects_young_objects_less_often() -> None:
    gc.unfreeze()
    survivor = [object()]  # something start-up built and keeps
    gctuning.tune_for_serving()
    assert gc.get_threshold() == (gctuning.YOUNG_THRESHOLD, *gctuning.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    assert not any(survivor is o for o in gc.get_objects())  # frozen: no collection walks it


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_tuning_are_still_collected() -> None:
    gctuning.tune_for_serving()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    ids = {id(a), id(b)}
    del a, b
    gc.collect()
    assert not any(id(o) in ids and isinstance(o, Node) for o in gc.get_objects())
