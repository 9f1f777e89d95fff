"""tools/gpu_carry.py: a wheel packed into parts under a size limit, and joined again by the device commands.

A small fake wheel stands for onnxruntime-gpu (the real one is 255 MB); the reassembly command the
last device call runs is run here, in a folder laid out as the repository is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_carry.py"
spec = importlib.util.spec_from_file_location("gpu_carry", TOOL)
assert spec is not None and spec.loader is not None
gpu_carry = importlib.util.module_from_spec(spec)
sys.modules["gpu_carry"] = gpu_carry  # its dataclasses look their module up there
spec.loader.exec_module(gpu_carry)

FORMATS = [pytest.param(f, marks=pytest.mark.skipif(shutil.which(f) is None, reason=f"the {f} program is not installed"))
           for f in ("zstd", "xz")]


def fake_wheel(folder: Path) -> tuple[Path, dict[str, bytes]]:
    """A wheel-shaped zip: a package, an incompressible 'library' (executable) and its metadata."""
    files = {
        "onnxruntime/__init__.py": b"__version__ = '1.31.1'\n" * 200,
        "onnxruntime/capi/libonnxruntime_providers_cuda.so": os.urandom(70_000),
        "onnxruntime_gpu-1.31.1.dist-info/METADATA": b"Name: onnxruntime-gpu\nVersion: 1.31.1\n",
    }
    wheel = folder / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".so") else 0o644) << 16
            zf.writestr(info, data)
    return wheel, files


@pytest.mark.parametrize("fmt", FORMATS)
def test_parts_stay_under_the_limit_and_the_reassembly_gives_back_every_file(tmp_path, fmt):
    repo = tmp_path / "repo"
    repo.mkdir()
    wheel, files = fake_wheel(tmp_path)
    part_bytes = 20_000
    manifest = gpu_carry.pack(wheel, repo / ".device" / "ort", fmt, part_bytes, root=repo)
    assert len(manifest.parts) >= 4  # 70 kB of random bytes do not compress
    for part in manifest.parts:
        path = repo / part.folder / part.name
        assert path.stat().st_size == part.size <= part_bytes
        assert hashlib.sha256(path.read_bytes()).hexdigest() == part.sha256
    assert manifest.archive_bytes == sum(p.size for p in manifest.parts)
    assert manifest.unpacked_bytes == sum(len(d) for d in files.values())

    site = tmp_path / "site"
    done = subprocess.run(["bash", "-c", gpu_carry.reassembly_script(manifest, str(site))], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, data in files.items():
        assert (site / name).read_bytes() == data
    assert os.access(site / "onnxruntime/capi/libonnxruntime_providers_cuda.so", os.X_OK)  # modes kept


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd program is not installed")
def test_the_device_calls_carry_one_part_each_and_stop_when_the_machine_went_cold(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    wheel, _ = fake_wheel(tmp_path)
    manifest = gpu_carry.pack(wheel, repo / ".device" / "ort", "zstd", 25_000, root=repo)
    calls = gpu_carry.device_calls(manifest, then="pytest -m gpu tests/test_ort_cuda_backend.py")
    assert [c.carry for c in calls] == [(p.folder,) for p in manifest.parts]
    assert all(c.carry[0].startswith(".device/ort/p") for c in calls)
    assert "command -v zstd" in calls[0].command  # the first call says which decompressors are there
    assert "get_available_providers()" in calls[-1].command and calls[-1].command.endswith(
        "pytest -m gpu tests/test_ort_cuda_backend.py; }")
    assert all(len(c.command) <= gpu_carry.COMMAND_LIMIT for c in calls)

    # On a machine that kept every part (this one), each call's check passes; the last one fails only at the import.
    for call in calls[:-1]:
        done = subprocess.run(["bash", "-c", call.command], cwd=repo, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "is there; make the next call now" in done.stdout, done.stdout + done.stderr
    # The machine went cold after the first call: the next call finds no first part and says to start again.
    shutil.rmtree(repo / manifest.parts[0].folder)
    done = subprocess.run(["bash", "-c", calls[1].command], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "start again from the first call" in done.stdout


def test_a_part_size_that_cannot_hold_anything_is_refused(tmp_path):
    wheel, _ = fake_wheel(tmp_path)
    with pytest.raises(gpu_carry.CarryError, match="a part of 0 bytes cannot hold anything; pass --part-mib 1 or more"):
        gpu_carry.pack(wheel, tmp_path / "out", "xz", 0, root=tmp_path)
