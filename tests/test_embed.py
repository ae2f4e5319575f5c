"""The embedding precision: "auto" picks bfloat16 only where the CPU multiplies
it in hardware; explicit values pass through; anything else is a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from recommender.embedders.machine import cpu_info, has_native_bf16
from recommender.embedders.torch_backend import SentenceTransformerEmbedder, resolve_precision
from recommender.errors import ConfigError

# /proc/cpuinfo's shape: one block per logical CPU, "flags" among the fields.
CPUINFO = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Test CPU
flags\t\t: {flags}
bogomips\t: 4000.00

"""
AVX512 = "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl avx512_vnni"


def cpuinfo(tmp_path: Path, flags: str, cpus: int = 2) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(CPUINFO.format(n=n, flags=flags) for n in range(cpus)), encoding="ascii")
    return path


@pytest.mark.parametrize("flags, native", [
    (AVX512, False),
    (AVX512 + " amx_bf16 amx_tile amx_int8", True),
    (AVX512 + " avx512_bf16", True),
    ("fpu sse2 avx2", False),
    ("fpu sse2 avx512_bf16x", False),  # a longer flag is not the flag
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    assert has_native_bf16(cpuinfo(tmp_path, flags)) is native


def test_the_cpu_model_and_flags_are_read_once_for_both_uses(tmp_path):
    path = cpuinfo(tmp_path, AVX512 + " amx_bf16")
    info = cpu_info(path)
    assert info["model"] == "Test CPU" and "avx512_vnni" in info["flags"] and "amx_bf16" in info["flags"]
    assert has_native_bf16(path)


def test_no_cpuinfo_or_no_flags_means_no_native_bf16(tmp_path):
    assert has_native_bf16(tmp_path / "missing") is False
    no_flags = tmp_path / "arm-cpuinfo"
    no_flags.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n", encoding="ascii")
    assert has_native_bf16(no_flags) is False


def test_auto_is_bfloat16_exactly_when_this_cpu_has_the_flags():
    """resolve_precision reads /proc/cpuinfo; the flags are read here independently."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.split(":")[0].strip() == "flags":
            flags = set(line.split(":", 1)[1].split())
            break
    native = bool(flags & {"amx_bf16", "avx512_bf16"})
    assert resolve_precision("auto") == ("bfloat16" if native else "float32")
    assert resolve_precision("auto", "cpu") == resolve_precision("auto")


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_auto_off_the_cpu_is_float32(device):
    assert resolve_precision("auto", device) == "float32"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_precision_passes_through(precision, device):
    assert resolve_precision(precision, device) == precision


@pytest.mark.parametrize("bad", ["int4", "fp16", "BFLOAT16", "", "auto "])
def test_other_values_are_a_config_error(bad):
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, bfloat16"):
        resolve_precision(bad)


def test_a_bad_precision_fails_before_the_model_loads(tmp_path):
    # The model path does not exist: the error is the precision's, not the model's.
    with pytest.raises(ConfigError, match="precision must be one of"):
        SentenceTransformerEmbedder.load(str(tmp_path / "no-model"), precision="int4")


def test_the_embedder_resolves_its_precision(tiny_model_dir):
    fp32 = SentenceTransformerEmbedder.load(str(tiny_model_dir), precision="float32")
    assert fp32.precision == "float32"
    auto = SentenceTransformerEmbedder(fp32.model, fp32.model_id, precision="auto")
    assert auto.precision == resolve_precision("auto")  # resolved, not kept as "auto"
