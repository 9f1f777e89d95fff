"""Carry onnxruntime-gpu to the GPU machine in parts small enough for one device call each.

    python tools/gpu_carry.py [--version 1.31.1] [--out .device/ort] [--format auto|zstd|xz]
                              [--part-mib 49] [--wheel PATH] [--then 'COMMAND']

The device tool carries at most 64 MiB a call (the working tree included), and onnxruntime-gpu's
wheel is 255 MB (335 MB unpacked). This downloads the wheel (``pip download --no-deps``, once),
streams its files into one tar archive, compresses it (``zstd -19 --long=27`` where zstd is here,
else ``xz -9``) and splits it into parts of ``--part-mib`` MiB, each in its own folder under
``--out`` (ignored by git: ``.device/`` is in .gitignore), with its SHA-256. It then prints the
device calls, one per part: each carries its part's folder and checks that the parts of the
earlier calls are still there (the machine keeps ignored paths only while it stays warm, 30 s
idle); the last one joins the parts, unpacks them into /tmp/site and imports onnxruntime from
there (``preload_dlls()``, then the providers). ``--then`` appends a command to the last call.

It cannot call the device tool itself (that is no shell command): make the calls back to back,
in order; if one reports that the machine went cold, start again from the first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_CALL_LIMIT = 64 << 20  # what one device call carries, the working tree included
COMMAND_LIMIT = 2000  # characters of one device call's command
DEFAULT_PART_MIB = 49
DEFAULT_VERSION = "1.31.1"
DEFAULT_OUT = Path(".device/ort")
SITE = "/tmp/site"
# pip matches each manylinux tag exactly: the GPU machine runs glibc >= 2.28 (Python 3.12 image).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
COMPRESSORS = {
    # --long=27: a 128 MiB match window; the CUDA kernels repeat far apart in the 284 MB provider library.
    "zstd": (["zstd", "-19", "--long=27", "-T0", "-q", "-c"], "zst"),
    "xz": (["xz", "-9", "-T0", "-c"], "xz"),
}
DECOMPRESS = {
    "zstd": "zstd -d --long=27 -q -c",
    # Python's own lzma where the xz program is missing: it is in every CPython build.
    "xz": ('if command -v xz >/dev/null; then xz -d -c; else python3 -c "import lzma, shutil, sys; '
           'shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)"; fi'),
}


class CarryError(Exception):
    """A problem the user fixes (a missing program, a part that cannot fit); one sentence."""


@dataclass(frozen=True)
class Part:
    folder: str  # relative to the repository root: the device call's `carry` path
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    package: str
    wheel: str
    format: str
    archive_sha256: str
    archive_bytes: int
    unpacked_bytes: int
    parts: tuple[Part, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class DeviceCall:
    command: str
    carry: tuple[str, ...]


# -- packing -----------------------------------------------------------------------------------------

def download_wheel(version: str, dest: Path) -> Path:
    """onnxruntime-gpu ``version``'s CPython 3.12 Linux x86-64 wheel in ``dest`` (downloaded once)."""
    found = sorted(dest.glob(f"onnxruntime_gpu-{version}-cp312-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
               "-d", str(dest), f"onnxruntime-gpu=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(dest.glob(f"onnxruntime_gpu-{version}-cp312-*.whl"))
    if done.returncode != 0 or not found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CarryError(f"pip could not download onnxruntime-gpu=={version} for CPython 3.12 on x86-64 ({tail}); "
                         "check the version on PyPI or pass a downloaded wheel with --wheel.")
    return found[0]


def choose_format(requested: str) -> str:
    """``requested``, or for ``auto`` zstd where the zstd program is here, else xz."""
    if requested == "auto":
        requested = "zstd" if shutil.which("zstd") else "xz"
    if shutil.which(COMPRESSORS[requested][0][0]) is None:
        raise CarryError(f"the {requested} program is not installed here; install it or pass --format "
                         f"{'xz' if requested == 'zstd' else 'zstd'}.")
    return requested


def _tar_members(wheel: zipfile.ZipFile) -> Iterator[tuple[tarfile.TarInfo, zipfile.ZipInfo]]:
    for info in wheel.infolist():
        if info.is_dir():
            continue
        member = tarfile.TarInfo(info.filename)
        member.size = info.file_size
        mode = (info.external_attr >> 16) & 0o777
        member.mode = mode or 0o644  # wheels made on Windows carry no mode
        member.mtime = 0  # the same wheel gives the same archive
        yield member, info


def _split(stream, out: Path, stem: str, part_bytes: int, digest) -> list[tuple[Path, int, str]]:
    """Write ``stream`` into files of at most ``part_bytes``, folder ``out/pNN`` each; (path, size, sha256)."""
    parts: list[tuple[Path, int, str]] = []
    chunk = 1 << 20
    while True:
        folder = out / f"p{len(parts):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.{len(parts):02d}"
        written, part_digest = 0, hashlib.sha256()
        with path.open("wb") as f:
            while written < part_bytes:
                data = stream.read(min(chunk, part_bytes - written))
                if not data:
                    break
                f.write(data)
                digest.update(data)
                part_digest.update(data)
                written += len(data)
        if written == 0:
            path.unlink()
            folder.rmdir()
            return parts
        parts.append((path, written, part_digest.hexdigest()))
        if written < part_bytes:
            return parts


def pack(wheel: Path, out: Path, fmt: str, part_bytes: int, *, root: Path = REPO) -> Manifest:
    """The wheel's files as one compressed tar split into parts under ``out`` (emptied first); its manifest."""
    if part_bytes < 1:
        raise CarryError(f"a part of {part_bytes} bytes cannot hold anything; pass --part-mib 1 or more.")
    command, suffix = COMPRESSORS[fmt]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stem = f"ort.tar.{suffix}"
    digest = hashlib.sha256()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    result: dict[str, list] = {}
    # The compressor's output is split while its input is written: neither end waits on a full pipe.
    reader = threading.Thread(target=lambda: result.setdefault("parts", _split(proc.stdout, out, stem, part_bytes, digest)))
    reader.start()
    unpacked = 0
    assert proc.stdin is not None
    with zipfile.ZipFile(wheel) as zf, tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
        for member, info in _tar_members(zf):
            with zf.open(info) as src:
                tar.addfile(member, src)
            unpacked += member.size
    proc.stdin.close()
    reader.join()
    if proc.wait() != 0:
        raise CarryError(f"{shlex.join(command)} failed with exit status {proc.returncode} packing {wheel}; "
                         "check free disk space under the output folder.")
    parts = tuple(Part(str(p.parent.resolve().relative_to(root.resolve())), p.name, size, sha)
                  for p, size, sha in result["parts"])
    for part, (path, _, _) in zip(parts, result["parts"]):
        (path.parent / "SHA256SUMS").write_text(f"{part.sha256}  {part.name}\n")
    manifest = Manifest(package=wheel.name.split("-")[0] + "==" + wheel.name.split("-")[1], wheel=wheel.name,
                        format=fmt, archive_sha256=digest.hexdigest(),
                        archive_bytes=sum(p.size for p in parts), unpacked_bytes=unpacked, parts=parts)
    (out / "manifest.json").write_text(manifest.to_json())
    return manifest


# -- the device calls ----------------------------------------------------------------------------------

def _check_parts(parts: tuple[Part, ...]) -> str:
    """Shell: every part's checksum, in its folder; a missing one means the machine went cold."""
    checks = " && ".join(f"(cd {shlex.quote(p.folder)} && sha256sum -c --quiet SHA256SUMS)" for p in parts)
    return (f"if ! {{ {checks}; }} 2>/dev/null; then echo 'QB-CARRY: a part of an earlier call is missing or damaged "
            "(the machine went cold): start again from the first call'; exit 3; fi")


def reassembly_script(manifest: Manifest, dest: str = SITE) -> str:
    """Shell, run in the repository root: check every part, join, decompress and unpack into ``dest``."""
    files = " ".join(shlex.quote(f"{p.folder}/{p.name}") for p in manifest.parts)
    return (f"{_check_parts(manifest.parts)}; "
            f"mkdir -p {shlex.quote(dest)} && "  # not emptied: other carried wheels may be installed there
            f"set -o pipefail && cat {files} | {{ {DECOMPRESS[manifest.format]}; }} | tar x -C {shlex.quote(dest)}")


def verify_script(dest: str = SITE) -> str:
    """Shell: onnxruntime imports from ``dest`` (not the machine's own) and lists the CUDA provider."""
    code = (f"import onnxruntime as o; assert o.__file__.startswith({dest!r}), o.__file__; o.preload_dlls(); "
            "p = o.get_available_providers(); print('QB-CARRY:', o.__version__, p); "
            "assert 'CUDAExecutionProvider' in p, 'no CUDAExecutionProvider in this build'")
    return f"PYTHONPATH={shlex.quote(dest)} python3 -c {shlex.quote(code)}"


def device_calls(manifest: Manifest, *, then: str | None = None, dest: str = SITE) -> list[DeviceCall]:
    """One device call per part, in order; the first also says which decompressors the machine has."""
    calls = []
    last = len(manifest.parts) - 1
    for i, part in enumerate(manifest.parts):
        steps = []
        if i == 0:
            steps.append("command -v zstd xz || true; python3 --version")
            if manifest.format == "zstd":  # no zstd module in Python 3.12's standard library
                steps.append("command -v zstd >/dev/null || { echo 'QB-CARRY: no zstd on the GPU machine: "
                             "repack here with --format xz and start again'; exit 3; }")
        if i == last:  # the reassembly checks every part itself
            steps += [reassembly_script(manifest, dest), verify_script(dest)]
            if then:
                steps.append(f"export PYTHONPATH={shlex.quote(dest)}${{PYTHONPATH:+:$PYTHONPATH}}; {then}")
        else:
            steps.append(_check_parts(manifest.parts[: i + 1]))
            steps.append(f"echo 'QB-CARRY: part {i + 1} of {len(manifest.parts)} is there; make the next call now'")
        calls.append(DeviceCall(" && ".join(f"{{ {s}; }}" if ";" in s else s for s in steps), (part.folder,)))
    return calls


def working_tree_bytes(root: Path = REPO) -> int:
    """What every device call sends besides its carried part: tracked and untracked-not-ignored files."""
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=root, capture_output=True, check=True)
    return sum((root / name).stat().st_size for name in done.stdout.decode().split("\0")
               if name and (root / name).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=DEFAULT_VERSION, help="onnxruntime-gpu version (default %(default)s)")
    parser.add_argument("--wheel", type=Path, help="a wheel already downloaded (skips pip download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the parts, inside the repository "
                        "and ignored by git (default %(default)s)")
    parser.add_argument("--format", choices=("auto", *COMPRESSORS), default="auto",
                        help="compression: zstd where it is installed here, else xz (default %(default)s)")
    parser.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB, help="part size in MiB (default %(default)s)")
    parser.add_argument("--then", help="a command the last call runs once onnxruntime-gpu imports from /tmp/site")
    args = parser.parse_args(argv)
    try:
        out = (REPO / args.out) if not args.out.is_absolute() else args.out
        if not out.resolve().is_relative_to(REPO):
            raise CarryError(f"--out {args.out} is outside the repository {REPO}; the device tool carries only paths "
                             "inside it: pass a folder under .device/.")
        tree = working_tree_bytes()
        if tree + (args.part_mib << 20) > DEVICE_CALL_LIMIT:
            raise CarryError(f"a part of {args.part_mib} MiB and the working tree's {tree / 2**20:.1f} MiB exceed the "
                             f"{DEVICE_CALL_LIMIT >> 20} MiB of one device call; pass a smaller --part-mib.")
        fmt = choose_format(args.format)
        wheel = args.wheel or download_wheel(args.version, REPO / ".device" / "wheels")
        manifest = pack(wheel, out, fmt, args.part_mib << 20)
    except CarryError as exc:
        print(f"gpu_carry: {exc}", file=sys.stderr)
        return 2
    calls = device_calls(manifest, then=args.then)
    longest = max(len(call.command) for call in calls)
    if longest > COMMAND_LIMIT:
        print(f"gpu_carry: a device command of {longest} characters exceeds the {COMMAND_LIMIT} a call takes; "
              "shorten --then (put the commands in a script) or pass a larger --part-mib.", file=sys.stderr)
        return 2
    print(f"{manifest.wheel}: {manifest.unpacked_bytes / 1e6:.1f} MB unpacked, {manifest.format} "
          f"{manifest.archive_bytes / 1e6:.1f} MB in {len(manifest.parts)} parts "
          f"({', '.join(f'{p.size / 2**20:.1f} MiB' for p in manifest.parts)}); manifest {out / 'manifest.json'}")
    print("\nDevice calls, back to back (the machine keeps the parts only while warm, 30 s idle):")
    for i, call in enumerate(calls, 1):
        print(f"\n# call {i}: carry={json.dumps(list(call.carry))}\n{call.command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
