#!/usr/bin/env python3
"""Run a command where io_uring answers like Linux 5.4's: rings set up, but
IORING_REGISTER_PROBE fails with EINVAL (it came in 5.6, with send, recv, close and read).

Installs a seccomp filter that fails io_uring_register(fd, IORING_REGISTER_PROBE, ...)
with EINVAL (every other syscall and register opcode is allowed), then execs the command.
Used by tests/process.rs to prove the probe's fallback and exit 2.
Usage: old_uring.py PROGRAM [ARGS...]
"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SYS_IO_URING_REGISTER = 427  # same number on x86_64 and aarch64
IORING_REGISTER_PROBE = 8
EINVAL = 22

# BPF over seccomp_data {u32 nr; u32 arch; u64 ip; u64 args[6]}: args[1] (the register
# opcode) starts at byte 24; its low 32 bits hold the opcode on little-endian machines.
program = [
    (0x20, 0, 0, 0),  # ld  [0]            (seccomp_data.nr)
    (0x15, 0, 3, SYS_IO_URING_REGISTER),  # jeq #427, next, allow
    (0x20, 0, 0, 24),  # ld  [24]           (args[1], low half)
    (0x15, 0, 1, IORING_REGISTER_PROBE),  # jeq #8, next, allow
    (0x06, 0, 0, 0x00050000 | EINVAL),  # ret ERRNO(EINVAL)
    (0x06, 0, 0, 0x7FFF0000),  # ret ALLOW
]
filters = b"".join(struct.pack("HBBI", *insn) for insn in program)
buf = ctypes.create_string_buffer(filters)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


fprog = SockFprog(len(program), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit(f"prctl(SECCOMP) failed: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
