#!/usr/bin/env python3
"""Run a command where io_uring is refused, as Docker's default seccomp profile does.

Installs a seccomp filter that fails io_uring_setup with EPERM (every other syscall is
allowed), then execs the command. Used by tests/process.rs to prove the epoll fallback.
Usage: no_uring.py PROGRAM [ARGS...]
"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SYS_IO_URING_SETUP = 425  # same number on x86_64 and aarch64
EPERM = 1

# BPF: load the syscall number; io_uring_setup -> ERRNO(EPERM); anything else -> ALLOW.
program = [
    (0x20, 0, 0, 0),  # ld  [0]            (seccomp_data.nr)
    (0x15, 0, 1, SYS_IO_URING_SETUP),  # jeq #425, next, skip
    (0x06, 0, 0, 0x00050000 | EPERM),  # ret ERRNO(EPERM)
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
