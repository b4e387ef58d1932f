#!/usr/bin/env python3
"""Run a command where io_uring answers like Linux 5.4's: rings set up, but
IORING_REGISTER_PROBE fails with EINVAL (it came in 5.6, with send, recv, close and read).

Installs a seccomp filter that fails io_uring_register(fd, IORING_REGISTER_PROBE, ...)
with EINVAL (every other syscall and register opcode is allowed), then execs the command.
Used by tests/it/process.rs to prove the probe's fallback and exit 2.
Usage: old_uring.py PROGRAM [ARGS...]
"""
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from seccomp_wrap import RET_ALLOW, exec_filtered, ret_errno  # noqa: E402

SYS_IO_URING_REGISTER = 427  # same number on x86_64 and aarch64
IORING_REGISTER_PROBE = 8
EINVAL = 22

# BPF over seccomp_data {u32 nr; u32 arch; u64 ip; u64 args[6]}: args[1] (the register
# opcode) starts at byte 24; its low 32 bits hold the opcode on little-endian machines.
exec_filtered(
    [
        (0x20, 0, 0, 0),  # ld  [0]            (seccomp_data.nr)
        (0x15, 0, 3, SYS_IO_URING_REGISTER),  # jeq #427, next, allow
        (0x20, 0, 0, 24),  # ld  [24]           (args[1], low half)
        (0x15, 0, 1, IORING_REGISTER_PROBE),  # jeq #8, next, allow
        (0x06, 0, 0, ret_errno(EINVAL)),  # ret ERRNO(EINVAL)
        (0x06, 0, 0, RET_ALLOW),  # ret ALLOW
    ]
)
