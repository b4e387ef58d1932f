#!/usr/bin/env python3
"""Run a command where io_uring is refused, as Docker's default seccomp profile does.

Installs a seccomp filter that fails io_uring_setup with EPERM (every other syscall is
allowed), then execs the command. Used by tests/it/process.rs to prove the epoll fallback.
Usage: no_uring.py PROGRAM [ARGS...]
"""
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from seccomp_wrap import RET_ALLOW, exec_filtered, ret_errno  # noqa: E402

SYS_IO_URING_SETUP = 425  # same number on x86_64 and aarch64
EPERM = 1

# BPF: load the syscall number; io_uring_setup -> ERRNO(EPERM); anything else -> ALLOW.
exec_filtered(
    [
        (0x20, 0, 0, 0),  # ld  [0]            (seccomp_data.nr)
        (0x15, 0, 1, SYS_IO_URING_SETUP),  # jeq #425, next, skip
        (0x06, 0, 0, ret_errno(EPERM)),  # ret ERRNO(EPERM)
        (0x06, 0, 0, RET_ALLOW),  # ret ALLOW
    ]
)
