"""Facts of this machine that decide how the model runs, read once: the
CPU's flags (AMX, AVX512-BF16, VNNI: which kernels a runtime takes), the
versions of the libraries that run it, and the folder where measurements
are kept ($XDG_CACHE_HOME/recommender)."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
"""The flags that decide which kernels a runtime takes (printed with every measurement)."""
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""Without one of these bfloat16 is emulated, and slower than float32."""
RUNTIME_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino", "nncf")


@functools.cache
def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name, the flags of ``CPU_FLAGS`` it has, and the cores this process may use."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": len(os.sched_getaffinity(0))}


def has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16)."""
    return any(flag in cpu_info(cpuinfo)["flags"] for flag in BF16_FLAGS)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@functools.cache
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(names: Iterable[str] = RUNTIME_LIBRARIES) -> dict[str, str | None]:
    """Each library's installed version (None where it is not installed)."""
    return {name: _version(name) for name in names}


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/recommender, or ~/.cache/recommender."""
    environ = dict(os.environ) if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recommender"
