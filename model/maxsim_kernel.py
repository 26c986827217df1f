"""The fused MaxSim kernel (model/maxsim_kernel.c): built with the system's C compiler on first use, loaded
with ctypes, used by model/scoring.py wherever it runs.

Why C: torch runs MaxSim as GEMMs that write every query-row x candidate-vector product to memory and maxima
that read them back; the kernel keeps each sum in a register until it is folded into its running max
(docs/benchmarks.md, "MaxSim scoring"). It is a plain C file with no Python headers, so any C compiler
builds it in about a second; the library is cached per source, compiler and machine under
`$XDG_CACHE_HOME/metaembed-studio` (or `METAEMBED_KERNEL_DIR`), written atomically, so concurrent processes
never load half a file. Where the user has no writable cache folder it is built into a private temporary
folder for this process only: a shared, predictable temp path would let another local user plant a
library there. Where nothing can build it (no compiler, a CPU without AVX2, not x86-64) or
`METAEMBED_MAXSIM_KERNEL=0`, scoring keeps torch's paths, with one warning saying why when a build failed.
`METAEMBED_KERNEL_CFLAGS` adds compiler flags, for measurements: "-DAMX_MIN_RQ=99" times the vdpbf16ps
path on a CPU with AMX, as a CPU without AMX runs it; "-DNC=8" or "-DPREFETCH_AHEAD=4" try another register
block or prefetch distance (docs/benchmarks.md, "The fused kernel on an AMD EPYC without AMX").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .files import atomic_path

__all__ = ["BF16", "F32", "Kernel", "load"]

F32, BF16 = 0, 1  # variants: fp32 rows (AVX2 + FMA), bf16 rows (AVX512-BF16)
_ABI = 5  # me_abi_version() of the source this module expects
_SOURCE = Path(__file__).with_name("maxsim_kernel.c")
_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11")
_c_i64, _c_ptr = ctypes.c_int64, ctypes.c_void_p
_STALE_DAYS = 30  # other builds in the cache folder not loaded this long are removed (a load touches its file)


@dataclass(frozen=True)
class Kernel:
    """The loaded library and the variants this CPU runs."""

    lib: ctypes.CDLL
    path: Path
    features: int

    def takes(self, variant: int, dim: int) -> bool:
        """Whether `variant` runs on this CPU for vectors of `dim` (f32 needs dim % 8 == 0, bf16 an even dim)."""
        return bool(self.features & (1 << variant)) and dim % (8 if variant == F32 else 2) == 0

    def score(self, variant: int, rows: Tensor, vm: Tensor, r_c: int, r_q: int, out: Tensor,
              idx: Tensor | None = None) -> None:
        """out[b, t] = MaxSim of query b (rows [Bq * r_q, D]: fp32 for F32, bf16 for BF16, contiguous) against
        candidate t of vm [>= r_c, n, D] bf16 (each vector's [n, D] contiguous), or against candidate idx[t]
        (int64, contiguous) when idx is given. out is [Bq, n or len(idx)] fp32 with unit column stride."""
        n = vm.shape[1] if idx is None else idx.numel()
        want = torch.float32 if variant == F32 else torch.bfloat16
        # (A dimension of size 1 may have any stride; the kernel never steps along it.)
        if (rows.dtype != want or not rows.is_contiguous() or vm.dtype != torch.bfloat16 or vm.stride(2) != 1
                or (vm.shape[1] > 1 and vm.stride(1) != vm.shape[2]) or out.dtype != torch.float32
                or (out.shape[1] > 1 and out.stride(1) != 1)
                or (idx is not None and (idx.dtype != torch.int64 or not idx.is_contiguous()))):
            raise ValueError("maxsim kernel: arguments are not in the layout it reads")
        # The C side trusts these; a wrong shape there would read or write out of bounds.
        if (rows.ndim != 2 or vm.ndim != 3 or out.ndim != 2 or rows.shape[1] != vm.shape[2] or r_q < 1
                or rows.shape[0] % r_q or not 1 <= r_c <= vm.shape[0] or tuple(out.shape) != (rows.shape[0] // r_q, n)
                or (idx is not None and n and not 0 <= int(idx.min()) <= int(idx.max()) < vm.shape[1])):
            raise ValueError("maxsim kernel: shapes do not agree")
        if n == 0:
            return
        err = self.lib.me_maxsim(
            variant, rows.data_ptr(), rows.shape[0], rows.shape[1], vm.data_ptr(), vm.stride(0), r_c,
            None if idx is None else idx.data_ptr(), n, r_q, out.data_ptr(), out.stride(0))
        if err:
            raise RuntimeError(f"maxsim kernel failed ({'out of memory' if err == -2 else 'shape not taken'})")


def _cache_dir() -> tuple[Path, bool]:
    """(folder, shared): METAEMBED_KERNEL_DIR, else the user's cache folder (both kept between processes); a
    new private temp folder (mode 0700, removed by the system's temp cleaning) where neither is writable."""
    if os.environ.get("METAEMBED_KERNEL_DIR"):
        return Path(os.environ["METAEMBED_KERNEL_DIR"]), True
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metaembed-studio"
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base, True
    except (OSError, RuntimeError, KeyError):  # RuntimeError/KeyError: no HOME and no passwd entry
        pass
    return Path(tempfile.mkdtemp(prefix="metaembed-kernel-")), False


def _compiler() -> list[str] | None:
    """The compiler's command: CC split as a shell would (CC="ccache gcc"), or cc / gcc / clang."""
    if os.environ.get("CC"):
        cmd = shlex.split(os.environ["CC"])
        found = shutil.which(cmd[0]) or (cmd[0] if os.path.isfile(cmd[0]) else None)
        return [found, *cmd[1:]] if found else None
    found = next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)
    return [found] if found else None


def _build() -> Path:
    """The compiled library's path, building it if this source, compiler, flags and machine have none yet."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    flags = [*_FLAGS, *shlex.split(os.environ.get("METAEMBED_KERNEL_CFLAGS", ""))]
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(cc).encode(), platform.machine().encode(),
                                     " ".join(flags).encode()]))
    folder, shared = _cache_dir()
    path = folder / f"maxsim-{key.hexdigest()[:16]}.so"
    if path.exists():
        try:
            os.utime(path)  # in use: see the stale builds below
        except OSError:
            pass
        return path
    with atomic_path(path) as tmp:
        done = subprocess.run([*cc, *flags, "-o", str(tmp), str(_SOURCE)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"{Path(cc[0]).name} failed on {_SOURCE.name}: {last}")
    if shared:  # builds of other sources or compilers, unused for a month: another version may still load one
        for old in folder.glob("maxsim-*.so"):
            try:
                if old != path and time.time() - old.stat().st_mtime > _STALE_DAYS * 86400:
                    old.unlink()
            except OSError:
                pass
    return path


def _open(path: Path) -> Kernel:
    lib = ctypes.CDLL(str(path))  # ctypes releases the GIL during calls: lanes score side by side
    lib.me_abi_version.restype = ctypes.c_int
    if lib.me_abi_version() != _ABI:
        raise RuntimeError(f"{path} is not the kernel this version expects")
    lib.me_cpu_features.restype = ctypes.c_int
    lib.me_maxsim.restype = ctypes.c_int
    lib.me_maxsim.argtypes = [ctypes.c_int, _c_ptr, _c_i64, _c_i64, _c_ptr, _c_i64, _c_i64, _c_ptr, _c_i64, _c_i64,
                              _c_ptr, _c_i64]
    return Kernel(lib=lib, path=path, features=int(lib.me_cpu_features()))


_lock = threading.Lock()
_loaded: list[Kernel | None] = []  # empty until the first load(); then [the kernel or None]


def load() -> Kernel | None:
    """The kernel, built and loaded once per process; None where it cannot run here (see the module docstring)."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            kernel = None
            if os.environ.get("METAEMBED_MAXSIM_KERNEL", "1") != "0":
                try:
                    kernel = _open(_build())
                except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as err:
                    # AttributeError: a file in the cache that is not this kernel (no me_abi_version)
                    warnings.warn(f"MaxSim runs on torch's GEMMs, without the fused kernel: {err}",
                                  RuntimeWarning, stacklevel=2)
                if kernel is not None and not kernel.features:
                    kernel = None  # built, but this CPU runs neither variant (no AVX2, or not x86-64)
            _loaded.append(kernel)
    return _loaded[0]


def _reset() -> None:
    """Forget the loaded kernel, so that the next load() decides again (tests)."""
    with _lock:
        _loaded.clear()
