"""The precision to compute in: bfloat16 where the hardware does it natively, float32 elsewhere.

On CPUs with AVX512-BF16 or AMX a bf16 matmul runs about 2.3x faster than fp32 (1024x576x1536 on 2 cores:
76.5 vs 33.5 GFLOP/s, measured on such a machine); on CPUs without them torch emulates bf16 and it is far
*slower* (an AVX2-only AMD EPYC here: 0.52 vs 21.8 GFLOP/s, 42x slower). So ``auto`` must look at the
hardware, never assume. Merges always run in float32 regardless (merge/).
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_flag(flags: frozenset[str]) -> str | None:
    """The flag that makes bf16 native on this CPU, or None."""
    return next((f for f in NATIVE_BF16_CPU_FLAGS if f in flags), None)


def resolve_precision(requested: str, *, accelerator: str, flags: frozenset[str] | None = None,
                      cuda_bf16: bool | None = None) -> tuple[str, str]:
    """(Lightning precision, why) for ``trainer.precision``; ``auto`` picks bf16-mixed where native."""
    if requested not in PRECISIONS:
        raise ValueError(f"trainer.precision={requested!r} is not one of {PRECISIONS}; "
                         "use auto to let the hardware decide")
    if requested != "auto":
        return requested, "as configured"
    if accelerator in ("gpu", "cuda"):
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return ("bf16-mixed", "the GPU supports bf16") if cuda_bf16 else ("32-true", "the GPU lacks bf16")
    flag = native_bf16_flag(cpu_flags() if flags is None else flags)
    if flag:
        return "bf16-mixed", f"the CPU computes bf16 natively ({flag})"
    return "32-true", f"the CPU has none of {', '.join(NATIVE_BF16_CPU_FLAGS)}: bf16 would be emulated and slower"


def compute_dtype_name(precision: str) -> str:
    """The torch dtype name forward passes run in under a resolved Lightning precision."""
    return {"bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "16-mixed": "float16",
            "16-true": "float16", "64-true": "float64"}.get(precision, "float32")
