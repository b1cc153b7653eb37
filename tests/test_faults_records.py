"""Faults of the instance records: what a scan of a state dir meets there must cost it nothing."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors in /proc")
def test_a_directory_among_the_records_leaks_no_descriptor_per_scan(isolated):
    from lf.daemon.records import CorruptRecord, StateStore

    store = StateStore()
    store.ensure()
    (store.base / "instances" / "odd.json").mkdir()  # a directory named like a record
    fifo = store.base / "instances" / "pipe.json"
    os.mkfifo(fifo)  # a FIFO: opened without blocking, refused as not a regular file
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(500):  # what a gateway's monitor does every few seconds, for hours
        assert store.all_records() == []
        assert store.load_or_none("odd") is None
    after = len(os.listdir("/proc/self/fd"))
    assert after == before, f"{after - before} descriptors leaked by 500 scans"
    for name in ("odd", "pipe"):
        with pytest.raises(CorruptRecord, match="not a regular file"):
            store.load(name)
