#!/usr/bin/env python3
"""The two seccomp profiles of deploy/, made from the container runtime's default profile
plus the three io_uring system calls the default refuses (with ENOSYS, so opr-proxy falls
back to epoll):

  deploy/seccomp.json                    Docker / podman / CRI-O format (archMap,
                                         capability-dependent rules): the default profile
                                         as shipped, one rule appended.
  deploy/kubernetes/seccomp/opr-proxy.json
                                         OCI runtime-spec format for a kubelet Localhost
                                         profile (containerd reads only that format): the
                                         default profile resolved for x86_64 and a container
                                         without capabilities (the Deployment drops ALL),
                                         plus the same rule.

The default profile is containers-common's /usr/share/containers/seccomp.json (podman's
and CRI-O's; Docker's default is the same list). Usage:

  python3 deploy/seccomp.py            rewrite both files from the installed default
  python3 deploy/seccomp.py --check    exit 1 when a file differs (make lint-deploy)
"""

import json
import os
import sys

DEFAULT = os.environ.get("SECCOMP_DEFAULT", "/usr/share/containers/seccomp.json")
HERE = os.path.dirname(os.path.abspath(__file__))
DOCKER_OUT = os.path.join(HERE, "seccomp.json")
OCI_OUT = os.path.join(HERE, "kubernetes", "seccomp", "opr-proxy.json")

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
COMMENT = "opr-proxy: io_uring (the default profile refuses it and the proxy falls back to epoll)"
# The OCI profile is for x86_64 nodes; its rules are resolved for this arch's names.
OCI_ARCH = "amd64"


def docker_profile(default):
    profile = json.loads(json.dumps(default))
    profile["syscalls"].append(
        {
            "names": IO_URING,
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "comment": COMMENT,
            "includes": {},
            "excludes": {},
        }
    )
    return profile


def applies(rule):
    """Whether a rule of the default profile applies on OCI_ARCH to a container with no
    capabilities (what the runtime resolves itself when it reads the Docker format)."""
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") or inc.get("minKernel"):
        return False
    if inc.get("arches") and OCI_ARCH not in inc["arches"]:
        return False
    if exc.get("arches") and OCI_ARCH in exc["arches"]:
        return False
    # excludes.caps: the rule applies unless the container has the capability; it has none.
    return True


def oci_profile(default):
    arches = next(a for a in default["archMap"] if a["architecture"] == "SCMP_ARCH_X86_64")
    # The same rules, in the same order, as podman 4.3 hands runc for a container with
    # --cap-drop ALL on x86_64 (compared with the config.json of such a container).
    syscalls = []
    for rule in default["syscalls"]:
        if not applies(rule):
            continue
        out = {"names": rule["names"], "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        if "errnoRet" in rule:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    syscalls.append({"names": IO_URING, "action": "SCMP_ACT_ALLOW"})
    return {
        "defaultAction": default["defaultAction"],
        "defaultErrnoRet": default["defaultErrnoRet"],
        "architectures": [arches["architecture"], *arches["subArchitectures"]],
        "syscalls": syscalls,
    }


def render(profile):
    return json.dumps(profile, indent="\t") + "\n"


def main():
    check = "--check" in sys.argv[1:]
    if not os.path.exists(DEFAULT):
        # Without containers-common there is nothing to compare against; the files are
        # still JSON-checked by the caller.
        print(f"seccomp.py: {DEFAULT} not found (apt-get install golang-github-containers-common); not compared")
        return 0
    with open(DEFAULT) as f:
        default = json.load(f)
    failed = False
    for path, profile in ((DOCKER_OUT, docker_profile(default)), (OCI_OUT, oci_profile(default))):
        text = render(profile)
        if check:
            with open(path) as f:
                if f.read() != text:
                    print(f"seccomp.py: {os.path.relpath(path)} is not {DEFAULT} plus io_uring; run python3 deploy/seccomp.py")
                    failed = True
        else:
            with open(path, "w") as f:
                f.write(text)
    if check and not failed:
        print(f"seccomp.py: both profiles are {DEFAULT} plus {', '.join(IO_URING)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
