"""What this CPU does with int8: its instruction-set features and ONNX Runtime's int8 kernel.

Two facts decide which int8 recipes can pay and keep their accuracy on a CPU:

- whether it has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX, ARM dot
  product): without them int8 kernels gain less over float32;
- whether ONNX Runtime's U8S8 kernel (uint8 activations times int8 weights) saturates. On
  x86-64 CPUs without VNNI it multiplies through ``vpmaddubsw``, which adds two products into
  a 16-bit integer and clamps it: 255 * 127 * 2 does not fit, so large activations meeting
  large weights lose their sum. 7-bit weights (``reduce_range``) or uint8 weights (U8U8, its
  own kernel) avoid it.

The features are read with the CPUID instruction where this is x86-64 Linux (so an emulator's
CPU model is seen as the code sees it), else from ``/proc/cpuinfo``. Saturation is not
inferred from the features: it is measured, by running one MatMulInteger in ONNX Runtime
whose exact result a saturating kernel cannot produce.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: CPU flags that decide int8 / fp16 speed (x86 names as /proc/cpuinfo spells them, ARM too).
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)
#: the flags that give int8 dot products (no 16-bit intermediate)
DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})

#: x86-64 System V: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])
#: push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid;
#: mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")

#: (leaf, subleaf, register index in eax/ebx/ecx/edx, bit) of each flag CPUID gives
_CPUID_BITS = {
    "fma": (1, 0, 2, 12),
    "f16c": (1, 0, 2, 29),
    "avx2": (7, 0, 1, 5),
    "avx512f": (7, 0, 1, 16),
    "avx512bw": (7, 0, 1, 30),
    "avx512_vnni": (7, 0, 2, 11),
    "avx512_fp16": (7, 0, 3, 23),
    "amx_bf16": (7, 0, 3, 22),
    "amx_tile": (7, 0, 3, 24),
    "amx_int8": (7, 0, 3, 25),
    "avx_vnni": (7, 1, 0, 4),
    "avx512_bf16": (7, 1, 0, 5),
}


def _read_cpuid(address: int) -> tuple[bytes, dict[tuple[int, int], tuple[int, ...]]]:
    """The brand string and the registers of the leaves in :data:`_CPUID_BITS`, read by
    calling the code at ``address``."""
    function = ctypes.CFUNCTYPE(
        None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)
    )(address)

    def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, ...]:
        out = (ctypes.c_uint32 * 4)()
        function(leaf, subleaf, out)
        return tuple(out)

    highest = cpuid(0)[0]
    registers = {
        (leaf, sub): cpuid(leaf, sub) if leaf <= highest else (0, 0, 0, 0)
        for leaf, sub in {(leaf, sub) for leaf, sub, _, _ in _CPUID_BITS.values()}
    }
    brand = b""
    if cpuid(0x80000000)[0] >= 0x80000004:
        for leaf in (0x80000002, 0x80000003, 0x80000004):
            brand += b"".join(r.to_bytes(4, "little") for r in cpuid(leaf))
    return brand, registers


def _cpuid() -> tuple[str, set[str]] | None:
    """The brand string and flags CPUID reports (x86-64 Linux), or None where it cannot be
    run here."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):  # a system that refuses writable executable memory
        return None
    try:
        page.write(_CPUID_CODE)
        anchor = ctypes.c_char.from_buffer(page)
        brand, registers = _read_cpuid(ctypes.addressof(anchor))
        del anchor  # the page's buffer export must be gone before it closes
        page.close()
    except (OSError, ValueError, TypeError, BufferError):
        return None
    flags = {
        flag
        for flag, (leaf, sub, reg, bit) in _CPUID_BITS.items()
        if registers[(leaf, sub)][reg] >> bit & 1
    }
    return brand.split(b"\0")[0].decode("ascii", "replace").strip(), flags


def _cpuinfo() -> tuple[str, set[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return model, flags
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple[str, frozenset[str], str]:
    """(model name, flags, where the flags were read: ``cpuid`` or ``/proc/cpuinfo``)."""
    model, flags = _cpuinfo()
    read = _cpuid()
    if read is None:
        return model, frozenset(flags), "/proc/cpuinfo"
    # CPUID decides the int8/fp16 flags it knows; the others come from /proc/cpuinfo
    brand, known = read
    return brand or model, frozenset((flags - set(_CPUID_BITS)) | known), "cpuid"


def _u8s8_probe() -> bool:
    """Whether ONNX Runtime's U8S8 MatMulInteger kernel saturates here (measured)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    depth, width = 64, 16
    weight = helper.make_tensor(
        "w", TensorProto.INT8, [depth, width], np.full((depth, width), 127, np.int8).tobytes(), True
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, width])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {"a": np.full((1, depth), 255, np.uint8)})
    return bool(np.any(out != 255 * 127 * depth))


@dataclass(frozen=True)
class Int8Facts:
    """What the CPU does with int8 (see the module's docstring)."""

    cpu: str
    flags: tuple[str, ...]
    flags_from: str
    dot_product: bool
    #: measured: ONNX Runtime's U8S8 kernel clamps 16-bit intermediates here
    u8s8_saturates: bool

    def as_dict(self) -> dict[str, Any]:
        """The facts for a report."""
        return {
            "cpu": self.cpu,
            "flags": list(self.flags),
            "flags_from": self.flags_from,
            "int8_dot_product": self.dot_product,
            "u8s8_saturates": self.u8s8_saturates,
        }

    def summary(self) -> str:
        """One line: what the int8 kernels do here."""
        dot = "int8 dot product" if self.dot_product else "no int8 dot product"
        sat = (
            "ONNX Runtime's U8S8 kernel saturates (measured): 7-bit or uint8 weights avoid it"
            if self.u8s8_saturates
            else "ONNX Runtime's U8S8 kernel is exact (measured)"
        )
        return f"{self.cpu}: {dot} ({', '.join(self.flags) or 'no int8/fp16 flags'}); {sat}"


@functools.lru_cache(maxsize=1)
def int8_facts() -> Int8Facts:
    """This CPU's int8 facts (read once per process)."""
    model, flags, source = cpu_features()
    return Int8Facts(
        cpu=model,
        flags=tuple(f for f in INTERESTING_FLAGS if f in flags),
        flags_from=source,
        dot_product=bool(flags & DOT_PRODUCT_FLAGS),
        u8s8_saturates=_u8s8_probe(),
    )
