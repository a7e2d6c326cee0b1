"""bench.profile train's CPU side: host reads of tensor values are found with their lines."""

from __future__ import annotations

import torch

from bench.profile import HostReads


def test_host_reads_name_each_read_and_its_line_and_skip_cpu_tensors_when_asked():
    x = torch.ones(4)
    reads = HostReads(device_only=False)
    reads.start()
    try:
        total = float(x.sum())  # one __float__
        flags = x.tolist()  # one tolist
        x.add(1)  # not a read
    finally:
        reads.stop()
    assert total == 4.0 and flags == [1.0] * 4
    sites = dict(reads.sites)
    assert len(sites) == 2 and sum(sites.values()) == 2
    assert any(k.startswith("__float__ at tests/test_bench_profile_train.py:") for k in sites)
    assert any(k.startswith("tolist at tests/test_bench_profile_train.py:") for k in sites)

    device_only = HostReads(device_only=True)  # on a CUDA run: CPU tensors' reads are no syncs
    device_only.start()
    try:
        float(x.sum())
    finally:
        device_only.stop()
    assert not device_only.sites
