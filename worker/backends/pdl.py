"""Kernel launches with programmatic dependent launch (PDL), through the CUDA driver.

A decode step is ~120 small kernels in a row. Launched normally, each waits for the whole of
the previous one to finish and drain before its first block starts: a few µs per kernel of
an idle GPU. With the launch attribute CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
(sm_90) the next kernel's blocks may start as soon as every block of the running one has
executed `griddepcontrol.launch_dependents`; they prefetch their weights and then wait in
`griddepcontrol.wait`, which returns once the previous kernel has completed and its writes
are visible (kernels.cu's pdl_trigger / pdl_wait). Stream capture records the launches as
programmatic edges, so a captured decode step keeps the overlap.

CuPy's RawKernel has no way to pass launch attributes, so this calls cuLaunchKernelEx from
libcuda with ctypes. The structures follow cuda.h (CUDA 12.0 and later).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import numpy as np

CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4  # cuda.h, CUlaunchAttributeID
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6
CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # cuda.h, CUfunction_attribute


class CUlaunchAttributeValue(ctypes.Union):
    # 64 bytes; of its members only these two are used here
    _fields_ = [
        ("pad", ctypes.c_char * 64),
        ("programmaticStreamSerializationAllowed", ctypes.c_int32),
        ("clusterDim", ctypes.c_uint32 * 3),
    ]


class CUlaunchAttribute(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("pad", ctypes.c_char * 4), ("value", CUlaunchAttributeValue)]


class CUlaunchConfig(ctypes.Structure):
    _fields_ = [
        ("gridDimX", ctypes.c_uint32),
        ("gridDimY", ctypes.c_uint32),
        ("gridDimZ", ctypes.c_uint32),
        ("blockDimX", ctypes.c_uint32),
        ("blockDimY", ctypes.c_uint32),
        ("blockDimZ", ctypes.c_uint32),
        ("sharedMemBytes", ctypes.c_uint32),
        ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(CUlaunchAttribute)),
        ("numAttrs", ctypes.c_uint32),
    ]


# Each kernel argument gets an 8-byte slot of one buffer (the driver reads a parameter through
# its pointer, so a slot only needs its own alignment): NumPy scalars keep their width, as
# CuPy passes them; anything with .data.ptr (a CuPy array) passes its device address.
_SLOT = {np.int32: "i4x", np.int64: "q", np.uint64: "Q", np.float32: "f4x"}


def pack_args(args: tuple[Any, ...]) -> tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_void_p]]:
    """(buffer of the values, array of pointers to them) for cuLaunchKernelEx."""
    fmt, vals = ["<"], []
    for a in args:
        code = _SLOT.get(type(a))
        if code is not None:
            fmt.append(code)
            vals.append(a.item())
            continue
        data = getattr(a, "data", None)
        if data is None or not hasattr(data, "ptr"):
            raise TypeError(f"kernel argument of type {type(a).__name__} ({getattr(a, 'dtype', '?')}) is not supported")
        fmt.append("Q")
        vals.append(int(data.ptr))
    n = len(args)
    buf = ctypes.create_string_buffer(struct.pack("".join(fmt), *vals), 8 * n)
    base = ctypes.addressof(buf)
    return buf, (ctypes.c_void_p * n)(*range(base, base + 8 * n, 8))


def programmatic_attribute() -> CUlaunchAttribute:
    attr = CUlaunchAttribute()
    attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    return attr


def cluster_attribute(x: int) -> CUlaunchAttribute:
    attr = CUlaunchAttribute()
    attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim[:] = (x, 1, 1)
    return attr


class PdlLauncher:
    """cuLaunchKernelEx with the programmatic-serialization attribute (unless programmatic is
    False: the launcher then serves thread block clusters alone). Raises OSError where libcuda
    has no cuLaunchKernelEx (a driver older than CUDA 12)."""

    def __init__(self, programmatic: bool = True) -> None:
        lib = ctypes.CDLL("libcuda.so.1")
        self.programmatic = programmatic
        self._set_attr = lib.cuFuncSetAttribute
        self._set_attr.restype = ctypes.c_int
        self._set_attr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._non_portable: set[int] = set()
        self._attr_lists: dict[int, ctypes.Array[CUlaunchAttribute]] = {}  # cluster size -> attributes
        self._launch = lib.cuLaunchKernelEx
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [
            ctypes.POINTER(CUlaunchConfig),
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_void_p,
        ]
        self._attr = programmatic_attribute()

    def __call__(
        self, func_ptr: int, grid: int, block: int, args: tuple[Any, ...], shared_mem: int, stream_ptr: int,
        grid_y: int = 1, cluster: int = 0,
    ) -> None:
        """cluster > 0: clusters of that many blocks along x (grid a multiple of it); past the
        8 every GPU takes, the function is allowed non-portable sizes first (the H100: 16)."""
        if cluster > 8 and func_ptr not in self._non_portable:
            rc = self._set_attr(ctypes.c_void_p(func_ptr), CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)
            if rc != 0:
                raise RuntimeError(f"cuFuncSetAttribute (non-portable cluster size) failed: CUresult {rc}")
            self._non_portable.add(func_ptr)
        arr = self._attr_lists.get(cluster)
        if arr is None:  # (built once per cluster size: every decode launch comes through here)
            attrs = ([self._attr] if self.programmatic else []) + ([cluster_attribute(cluster)] if cluster else [])
            arr = self._attr_lists[cluster] = (CUlaunchAttribute * len(attrs))(*attrs)
        cfg = CUlaunchConfig(grid, grid_y, 1, block, 1, 1, shared_mem, stream_ptr, arr, len(arr))
        _buf, params = pack_args(args)  # _buf: the values params point at, alive until the call returns
        rc = self._launch(ctypes.byref(cfg), ctypes.c_void_p(func_ptr), params, None)
        if rc != 0:
            raise RuntimeError(f"cuLaunchKernelEx failed: CUresult {rc}")
