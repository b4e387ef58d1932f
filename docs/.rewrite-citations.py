#!/usr/bin/env python3
"""Rewrite citations of documents that left the repository, or moved inside it.

Run once from anywhere after the merge, then delete this file:

    python3 docs/.rewrite-citations.py [ROOT] [--dry-run]

It rewrites, in src/ tests/ loadtest/ benches/ fuzz/ deploy/ .ci/ and Makefile,
Dockerfile, Cargo.toml, CHANGELOG.md:

- `SPEC §N[.M]` -> `docs/behaviour.md §N[.M]` (the same section numbers), `SPEC.md` ->
  `docs/behaviour.md`, and "what SPEC allows" phrasings;
- `README "Section"` / `README, "Section"` (a section of the old 1669-line README, the
  name possibly wrapped over a comment line) -> where that section lives now;
- `TECH.md` citations -> the docs/ file and section that now hold the fact.

Then it checks that every `docs/<file>.md` cited in those files exists and that every
cited `docs/<file>.md "Section"` / `docs/behaviour.md §N` names a heading of that file.
It prints each citation it cannot map or check and exits 1 if there is any; a second run
changes nothing (no rewritten form matches a pattern again). Standard library only.
"""

import os
import re
import sys

SCAN_DIRS = ["src", "tests", "loadtest", "benches", "fuzz", "deploy", ".ci"]
SCAN_FILES = ["Makefile", "Dockerfile", "Cargo.toml", "CHANGELOG.md"]
SKIP_DIRS = {"target", ".git", "corpus", "artifacts", "node_modules"}

# Sections of the old README -> their place now. A cited name matches a key exactly or
# as a prefix of it (case-insensitive), so `README "Overload protection"` works. None:
# the section stayed in README.md, the citation is left as it is.
README_SECTIONS = {
    "Quick start": None,
    "Configuration": None,
    "Endpoints": None,
    "Memory a client can hold": "docs/behaviour.md §5.6",
    "Choosing an executor": "docs/behaviour.md §4",
    "Runtime affinity (`affinity`)": "docs/behaviour.md §4.2",
    "Overload protection: per-executor cap and queue": "docs/behaviour.md §4.3",
    "Forwarding": "docs/behaviour.md §5",
    "HTTP/2 (h2c, prior knowledge)": "docs/behaviour.md §5.5",
    "Errors": "docs/behaviour.md §7",
    "Health checks": "docs/behaviour.md §6",
    "Passive ejection": "docs/behaviour.md §6.1",
    "Error reporting": "docs/behaviour.md §8.2",
    "Metrics": "docs/behaviour.md §2.3",
    "Alerts and dashboard": 'docs/deploy.md "Alerts and dashboard"',
    "Access log": "docs/behaviour.md §8.3",
    "Why this executor? (`x-opr-route`)": "docs/behaviour.md §4.4",
    "Threads": "docs/behaviour.md §9.1",
    "io driver": "docs/behaviour.md §9.2",
    "Per-core balance": "docs/behaviour.md §9.3",
    "Operating it": 'docs/deploy.md "Operating it"',
    "Deploy": "docs/deploy.md",
    "Container image": 'docs/deploy.md "Container image"',
    "Docker Compose": 'docs/deploy.md "Docker Compose"',
    "Kubernetes": 'docs/deploy.md "Kubernetes"',
    "systemd (bare metal)": 'docs/deploy.md "systemd (bare metal)"',
    "Bare metal": 'docs/deploy.md "systemd (bare metal)"',
    "Scaling out": 'docs/deploy.md "Scaling out"',
    "Kernel settings and limits for high load": 'docs/deploy.md "Kernel settings and limits for high load"',
    "Differences from the original": 'docs/deploy.md "Differences from the original"',
    "Performance and capacity planning": "docs/performance.md",
    "`make compare`": 'docs/performance.md "`make compare`"',
    "Zero-copy bodies, idle memory and the last user-space costs": 'docs/performance.md "Zero-copy bodies"',
    "Pipe size": 'docs/performance.md "Splice through a big pipe"',
    "Memory per connection": 'docs/performance.md "Memory per connection"',
    "One slow executor": 'docs/performance.md "One slow executor"',
    "Cold starts and overload": 'docs/performance.md "Cold starts and overload"',
    "Micro-benchmarks": 'docs/performance.md "Micro-benchmarks"',
    "Capacity planning": 'docs/performance.md "Capacity planning"',
    "Reliability checks": 'docs/performance.md "Reliability checks"',
    "Development": "docs/development.md",
}

# Sections of TECH.md (the measured facts, outside the repository) -> where they are now.
TECH_SECTIONS = {
    "monoio 0.2.4": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "io_uring setup flags": 'docs/performance.md "io_uring setup flags"',
    "monoio-http": 'docs/performance.md "Why the proxy frames bodies itself"',
    "core_affinity": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "sonic-rs": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "ureq": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "mimalloc": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "Error providers": "docs/behaviour.md §8.2",
    "The original and today's executors": "docs/behaviour.md §6",
    "Containers on these machines": 'docs/development.md "Containers here"',
    "Checking an idle pooled connection": 'docs/performance.md "monoio 0.2.4 and the other crates"',
    "Other kernels": 'docs/development.md "Kernel matrix"',
}

# Citations without a section name: (regex with one group, the cited word(s), and what
# replaces that group). Only the group is replaced, so wrapped comments keep their shape.
C = r"(?:\s*\n\s*(?://[/!]?|#+|\*)?)?\s*"  # a space, or a line break into a comment
PHRASES = [
    (r"Measured in (TECH\.md):", 'docs/performance.md "io_uring setup flags"'),
    (r"as the proxy" + C + r"does," + C + r"(TECH\.md)\)", 'docs/performance.md "io_uring setup flags"'),
    (r"body" + C + r"framing" + C + r"anyway" + C + r"\((TECH\.md)\)",
     'docs/performance.md "Why the proxy frames bodies itself"'),
    (r"The settings (TECH\.md found to work on these machines)",
     'found to work on these machines (docs/development.md "Containers here")'),
    (r"in ways (SPEC) does not allow", "docs/behaviour.md"),
    (r"outcome (SPEC) does not allow", "docs/behaviour.md"),
    (r"failure (SPEC) (?:does not allow|forbids)", "docs/behaviour.md"),
    (r"(the README's worst case)", 'the worst case in docs/deploy.md "Operating it"'),
    (r"figures printed for (the README)", "docs/performance.md"),
    (r"10000 for (the README) figure", "docs/performance.md's"),
]

# README mentions that are fine as they are: other READMEs, the original's, and the two
# commands README.md still holds.
README_OK = [
    r"(?:loadtest|fuzz|regressions|\.\.)/README\.md",
    r"original README",
    r"README's two commands",
    r"README's test command",
    r"README\.md here",
    r"docs/performance\.md",
]


def files(root):
    for d in SCAN_DIRS:
        for base, dirs, names in os.walk(os.path.join(root, d)):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
            for n in names:
                yield os.path.join(base, n)
    for f in SCAN_FILES:
        p = os.path.join(root, f)
        if os.path.exists(p):
            yield p


def lookup(table, name):
    n = " ".join(name.split()).lower()
    for key, target in table.items():
        if key.lower() == n:
            return True, target
    hits = [t for k, t in table.items() if k.lower().startswith(n) or n.startswith(k.lower())]
    if len(set(hits)) == 1:
        return True, hits[0]
    return False, None


# `README "Name"`, `README, "Name"`, `TECH.md "Name"`; the name may wrap onto a comment
# line. Not `loadtest/README.md "…"` (another file) nor `README's`.
QUOTED = re.compile(
    r"(?<![/\w])(?P<the>(?:the (?:main )?)?)(?P<doc>README(?:\.md)?|TECH\.md),?[ \t]*"
    r"(?:\n[ \t]*(?://[/!]?|#+|\*)?[ \t]*)?"
    r'"(?P<name>[^"\n]{1,80}(?:\n[ \t]*(?://[/!]?|#+|\*)?[ \t]*[^"\n]{1,80})?)"'
)


def rewrite_quoted(text, path, problems):
    out, pos = [], 0
    for m in QUOTED.finditer(text):
        table = README_SECTIONS if m.group("doc").startswith("README") else TECH_SECTIONS
        name = re.sub(r"\n[ \t]*(?://[/!]?|#+|\*)?[ \t]*", " ", m.group("name"))
        found, target = lookup(table, name)
        if not found:
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{path}:{line}: {m.group('doc')} \"{name}\": no known section")
            continue
        if target is None:
            continue
        out.append(text[pos:m.start()])
        if "\n" in m.group(0):
            # The citation goes whole onto the first line with the punctuation that
            # closed it; the rest of the continuation line stays there, with its prefix.
            lead = re.search(r"\n[ \t]*(?://[/!]?|#+|\*)?[ \t]*", m.group(0)).group(0)
            end = text.find("\n", m.end())
            end = len(text) if end == -1 else end
            punct = re.match(r"[^\s\w`]*", text[m.end():end]).group(0)
            rest = text[m.end() + len(punct):end].lstrip()
            out.append(target + punct + (lead + rest if rest else ""))
            pos = end
            continue
        out.append(target)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def rewrite(text, path, problems):
    for pattern, repl in PHRASES:
        text = re.sub(pattern, lambda m, r=repl: m.group(0).replace(m.group(1), r), text)
    text = rewrite_quoted(text, path, problems)
    text = re.sub(r"\bSPEC(?:\.md)?,? ?§ ?(\d+(?:\.\d+)?)", r"docs/behaviour.md §\1", text)
    text = re.sub(r"(?<![/\w])SPEC\.md\b", "docs/behaviour.md", text)
    return text


def headings(root, doc):
    p = os.path.join(root, doc)
    if not os.path.exists(p):
        return None
    out, fence = [], False
    for line in open(p, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.append(line.lstrip("#").strip())
    return out


def check(text, path, root, problems):
    def at(i):
        return f"{path}:{text.count(chr(10), 0, i) + 1}"

    for m in re.finditer(r"\bSPEC\b|\bTECH(?:\.md)?\b|\bDESIGN(?:\.md)?\b", text):
        problems.append(f"{at(m.start())}: unmapped citation {m.group(0)!r}")
    for m in re.finditer(r"README", text):
        around = text[max(0, m.start() - 20):m.end() + 30]
        if not any(re.search(ok, around) for ok in README_OK) and not path.startswith(
            os.path.join(root, "fuzz")
        ):
            if re.search(r"README,?\s*\"", text[m.start():m.start() + 12]):
                problems.append(f"{at(m.start())}: README section citation left: {around!r}")
    for m in re.finditer(r"docs/([\w.-]+\.md)(?: §(\d+(?:\.\d+)?)| \"([^\"\n]+)\")?", text):
        doc = "docs/" + m.group(1)
        hs = headings(root, doc)
        if hs is None:
            problems.append(f"{at(m.start())}: {doc} does not exist")
        elif m.group(2) and not any(h.split(" ")[0].rstrip(".") == m.group(2) for h in hs):
            problems.append(f"{at(m.start())}: {doc} has no section {m.group(2)}")
        elif m.group(3) and not any(h.lower().startswith(m.group(3).lower()) for h in hs):
            problems.append(f"{at(m.start())}: {doc} has no section \"{m.group(3)}\"")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dry = "--dry-run" in sys.argv
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(args[0]) if args else os.path.dirname(here)
    problems, changed = [], []
    for path in sorted(files(root)):
        try:
            text = open(path, encoding="utf-8").read()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        new = rewrite(text, path, problems)
        check(new, path, root, problems)
        if new != text:
            changed.append(os.path.relpath(path, root))
            if not dry:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    for c in changed:
        print(("would rewrite " if dry else "rewrote ") + c)
    for p in problems:
        print("UNMAPPED " + os.path.relpath(p, root) if p.startswith(root) else "UNMAPPED " + p)
    print(f"{len(changed)} file(s) {'to rewrite' if dry else 'rewritten'}, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
