"""Fault injection at the OS level: make writes under a path fail with a chosen errno, where every writer
writes (Python's files, safetensors' Rust writer, torch's C++ zip writer, PIL).

Two ways, both in a subprocess running the CLI:
- `run_faulty`: an LD_PRELOAD shim, compiled here with the system C compiler (tests using it are skipped
  without one), wraps write/pwrite/writev/pwritev; once the files under `FAULT_PATH` (a path prefix, several
  separated by ':') have taken `after_bytes` bytes, the write that crosses it is cut short and every later
  one fails with the chosen errno (ENOSPC, EDQUOT, EFBIG, EROFS): a disk that fills, a quota, a file-size
  limit, a read-only remount.
- `run_file_size_limited`: the real kernel limit, RLIMIT_FSIZE (`ulimit -f`), with SIGXFSZ ignored, so an
  oversized write fails with EFBIG.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char prefixes[4096];
static int fault_errno = 0;
static long long budget = -1; /* bytes the matching files may still take; -1: no fault */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((constructor)) static void init(void) {
    const char *path = getenv("FAULT_PATH"), *code = getenv("FAULT_ERRNO"), *after = getenv("FAULT_AFTER_BYTES");
    if (!path || !code) return;
    snprintf(prefixes, sizeof prefixes, "%s", path);
    fault_errno = atoi(code);
    budget = after ? atoll(after) : 0;
}

static int matches(int fd) {
    char link[64], target[PATH_MAX];
    if (budget < 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    char copy[sizeof prefixes];
    memcpy(copy, prefixes, sizeof copy);
    for (char *save, *prefix = strtok_r(copy, ":", &save); prefix; prefix = strtok_r(NULL, ":", &save))
        if (strncmp(target, prefix, strlen(prefix)) == 0) return 1;
    return 0;
}

/* How many of `count` bytes may be written to fd: all of them, the rest of the budget, or -1 (fail). */
static ssize_t allowance(int fd, size_t count) {
    if (count == 0 || !matches(fd)) return (ssize_t)count;
    pthread_mutex_lock(&lock);
    ssize_t allowed = budget >= (long long)count ? (ssize_t)count : (ssize_t)budget;
    budget -= allowed;
    pthread_mutex_unlock(&lock);
    if (allowed == 0) { errno = fault_errno; return -1; }
    return allowed;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    ssize_t allowed = allowance(fd, count);
    return allowed < 0 ? -1 : real(fd, buf, (size_t)allowed);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    ssize_t allowed = allowance(fd, count);
    return allowed < 0 ? -1 : real(fd, buf, (size_t)allowed, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64);
    ssize_t allowed = allowance(fd, count);
    return allowed < 0 ? -1 : real(fd, buf, (size_t)allowed, offset);
}

static size_t total(const struct iovec *iov, int n) {
    size_t sum = 0;
    for (int i = 0; i < n; i++) sum += iov[i].iov_len;
    return sum;
}

/* A vectored write that the budget cuts short writes the allowed bytes of its first buffer only. */
ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev);
    size_t count = total(iov, n);
    ssize_t allowed = allowance(fd, count);
    if (allowed < 0) return -1;
    if ((size_t)allowed == count) return real(fd, iov, n);
    struct iovec first = {iov[0].iov_base, (size_t)allowed < iov[0].iov_len ? (size_t)allowed : iov[0].iov_len};
    return real(fd, &first, 1);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
    REAL(pwritev);
    size_t count = total(iov, n);
    ssize_t allowed = allowance(fd, count);
    if (allowed < 0) return -1;
    if ((size_t)allowed == count) return real(fd, iov, n, offset);
    struct iovec first = {iov[0].iov_base, (size_t)allowed < iov[0].iov_len ? (size_t)allowed : iov[0].iov_len};
    return real(fd, &first, 1, offset);
}
"""

ERRNOS = {"ENOSPC": errno.ENOSPC, "EDQUOT": getattr(errno, "EDQUOT", errno.ENOSPC), "EFBIG": errno.EFBIG,
          "EROFS": errno.EROFS}
# What the CLI's one line says for each (the OS's own words).
REASONS = {name: os.strerror(code).lower() for name, code in ERRNOS.items()}


def build_shim(folder: Path) -> Path:
    """Compile the shim into `folder`; skips the calling test when there is no C compiler (or no Linux /proc)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("the write-fault shim needs a C compiler and Linux")
    source, library = folder / "faults.c", folder / "libfaults.so"
    source.write_text(SHIM_SOURCE)
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source), "-ldl",
                             "-lpthread"], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"could not compile the write-fault shim: {result.stderr.strip()[:300]}")
    return library


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")  # after the caller's own PYTHONPATH, if it has one
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), src) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(extra or {})}


def run_faulty(shim: Path, args: list[str], paths: list[Path], error: str, after_bytes: int = 0,
               env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m rewardbooth ARGS` with writes under `paths` failing with `error` after `after_bytes`."""
    prefixes = ":".join(os.path.realpath(p) for p in paths)
    faults = {"LD_PRELOAD": str(shim), "FAULT_PATH": prefixes, "FAULT_ERRNO": str(ERRNOS[error]),
              "FAULT_AFTER_BYTES": str(after_bytes)}
    return subprocess.run([sys.executable, "-m", "rewardbooth", *args], env=_environment({**(env or {}), **faults}),
                          capture_output=True, text=True, timeout=timeout)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_file_size_limited(args: list[str], limit: int, env: dict[str, str] | None = None,
                          timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m rewardbooth ARGS` under RLIMIT_FSIZE = `limit` bytes (the kernel's own EFBIG)."""
    return subprocess.run([sys.executable, "-m", "rewardbooth", *args], env=_environment(env), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=_limit_file_size(limit))


def error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's one error line; fails the test on a traceback or a multi-line error."""
    text = result.stderr.strip()
    assert "Traceback" not in text, text[-3000:]
    assert "error: " in text, text[-3000:]
    line = text[text.rindex("error: "):]
    assert "\n" not in line, text[-3000:]
    return line
