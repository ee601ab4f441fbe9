"""worker/backends/pdl.py's ctypes mirror of cuda.h's launch structures, on the CPU.

The layout must be cuda.h's (CUDA 12.0+, x86-64): CUlaunchAttribute is a 4-byte id, 4 bytes
of padding and a 64-byte union; CUlaunchConfig is seven unsigned ints, then the stream
handle at the next 8-byte boundary (32), the attribute pointer (40) and their count (48), 56
bytes in all. A wrong offset would hand the driver a garbage stream or attribute list.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest

from worker.backends import pdl


def test_launch_attribute_layout():
    assert ctypes.sizeof(pdl.CUlaunchAttribute) == 72
    assert pdl.CUlaunchAttribute.value.offset == 8
    a = pdl.programmatic_attribute()
    assert a.id == 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION in cuda.h
    raw = ctypes.string_at(ctypes.addressof(a), ctypes.sizeof(a))
    assert raw[:4] == (6).to_bytes(4, "little") and raw[8:12] == (1).to_bytes(4, "little")


def test_cluster_attribute_layout():
    a = pdl.cluster_attribute(14)
    assert a.id == 4  # CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION in cuda.h
    raw = ctypes.string_at(ctypes.addressof(a), ctypes.sizeof(a))
    # CUlaunchAttributeValue.clusterDim: three unsigned ints (x, y, z) at the union's start
    assert raw[8:20] == b"".join(v.to_bytes(4, "little") for v in (14, 1, 1))


def test_launch_config_layout():
    c = pdl.CUlaunchConfig
    assert [c.gridDimX.offset, c.blockDimX.offset, c.sharedMemBytes.offset] == [0, 12, 24]
    assert [c.hStream.offset, c.attrs.offset, c.numAttrs.offset, ctypes.sizeof(c)] == [32, 40, 48, 56]


def test_kernel_args_keep_their_width():
    # what the launcher reads of a CuPy array is its .data.ptr; NumPy scalars keep their width
    dev = SimpleNamespace(data=SimpleNamespace(ptr=0x7F00_0000_1234))
    args = (dev, np.int32(-3), np.int64(1 << 40), np.uint64(0), np.float32(0.5))
    buf, params = pdl.pack_args(args)
    assert len(params) == len(args)
    got = [ctypes.c_uint64, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_float]
    for p, ctype, a in zip(params, got, args, strict=True):
        assert ctypes.addressof(buf) <= p < ctypes.addressof(buf) + len(buf)
        value = ctype.from_address(p).value
        assert value == (0x7F00_0000_1234 if a is dev else a.item())
    with pytest.raises(TypeError, match="float64"):
        pdl.pack_args((np.float64(1.0),))
    with pytest.raises(TypeError, match="int"):
        pdl.pack_args((3,))


@pytest.mark.parametrize("programmatic", [True, False])
def test_launcher_attribute_lists(programmatic):
    # the attributes a launch hands the driver, without libcuda: cuLaunchKernelEx and
    # cuFuncSetAttribute replaced by recorders
    seen, allowed = [], []
    launcher = pdl.PdlLauncher.__new__(pdl.PdlLauncher)
    launcher.programmatic = programmatic
    launcher._attr = pdl.programmatic_attribute()
    launcher._attr_lists, launcher._non_portable = {}, set()
    launcher._set_attr = lambda func, attr, value: allowed.append((func.value, attr, value)) or 0

    def launch(cfg, func, params, extra):
        c = cfg._obj
        seen.append([(c.attrs[i].id, tuple(c.attrs[i].value.clusterDim)) for i in range(c.numAttrs)])
        return 0

    launcher._launch = launch
    for cluster in (0, 14, 14, 4):
        launcher(0x1000, 14, 128, (np.int32(1),), 0, 0, grid_y=4, cluster=cluster)
    ids = [[a for a, _ in attrs] for attrs in seen]
    first = [6] if programmatic else []
    assert ids == [first, *[[*first, 4]] * 3]
    assert seen[1][-1][1] == (14, 1, 1) and seen[3][-1][1] == (4, 1, 1)
    # a cluster of more than 8 blocks is allowed once per function; 8 or fewer never asks
    assert allowed == [(0x1000, 14, 1)]
