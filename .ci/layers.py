#!/usr/bin/env python3
"""Fails when a lower layer of the crate imports a higher one (docs/design.md, "Layers"), or when
the code map of docs/design.md misses a source file or names one that does not exist.

Every `crate::...` path in src/ (in `use` trees and inline) is resolved to the module it names, and
that module's rank must be below the importing file's rank, or be the same module. `#[cfg(test)]`
items (test modules, test helpers) are not checked: a unit test may assemble whatever it needs.

    python3 .ci/layers.py [SRC_DIR]
"""

import re
import sys
from pathlib import Path

# Lowest first. A module may use modules of a lower rank (and itself), never a higher one.
# Below all of them, outside src/: the workspace's verifier crate (clients/rust, imported as
# `neo_sessions_verify`), which Cargo lets the server depend on and never the reverse.
LAYERS = [
    ["config", "metrics"],
    ["freshness"],  # the change feed's freshness and the caches that follow it
    ["tokens"],
    ["auth::principal"],  # the Principal type: below everything that names a caller
    ["store"],
    ["signing"],  # the signing keys' life cycle: store rows <-> the tokens' key ring
    ["auth"],
    ["ratelimit"],
    ["mint", "directory"],  # the mint rules and Idempotency-Key; the directory's rows and rules
    ["seed", "telemetry"],
    ["http"],
    ["server"],  # the connection loop
    ["app"],  # App::build, App::run_until_stopped, the router
    ["lib"],  # the module list
    ["cli"],
    ["main"],
]
RANK = {module: rank for rank, group in enumerate(LAYERS) for module in group}

TEST_ITEM = re.compile(r"#\[cfg\(test\)\][^{;]*\{")
USE_TREE = re.compile(r"\buse\s+(?:crate|neo_sessions)::(\{.*?\}|[^;]+);", re.S)
INLINE_PATH = re.compile(r"\b(?:crate|neo_sessions)::((?:[A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)")


def module_of_file(src: Path, path: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    if parts == ("auth", "principal"):
        return "auth::principal"
    return parts[0]


def module_of_path(segments: list) -> str:
    head = segments[0]
    if head == "auth" and len(segments) > 1 and segments[1] in ("principal", "Principal"):
        return "auth::principal"
    # Anything that is not a module is an item of lib.rs (`crate::build_state`, ...).
    return head if head in RANK else "lib"


def expand(tree: str, prefix=()):
    """Expands a use tree (`a::{b, c::{d}}`) into its paths, as lists of segments."""
    tree = tree.strip()
    if not tree:
        return []
    if tree.startswith("{") and tree.endswith("}"):
        items, depth, start = [], 0, 1
        for i, ch in enumerate(tree[1:-1], start=1):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(tree[start:i])
                start = i + 1
        items.append(tree[start:-1])
        return [path for item in items for path in expand(item, prefix)]
    head, sep, rest = tree.partition("::")
    head = head.split(" as ")[0].strip()
    if not sep:
        return [list(prefix) + [head]] if head not in ("self", "*") else [list(prefix)]
    return expand(rest, prefix + (head,))


def without_test_items(text: str) -> str:
    """The text with every `#[cfg(test)]` item (module, function, impl) blanked out, line breaks
    kept so line numbers stay right."""
    while True:
        match = TEST_ITEM.search(text)
        if not match:
            return text
        depth, end = 0, len(text)
        for i in range(match.end() - 1, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        blank = "\n" * text.count("\n", match.start(), end)
        text = text[: match.start()] + blank + text[end:]


def imports(text: str):
    """`(line, segments)` of every crate path the text names."""
    found = []
    for match in USE_TREE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found += [(line, path) for path in expand(match.group(1)) if path]
    without_uses = USE_TREE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in INLINE_PATH.finditer(without_uses):
        line = without_uses.count("\n", 0, match.start()) + 1
        found.append((line, match.group(1).split("::")))
    return found


CODE_MAP_ROOTS = ["src", "clients/rust/src"]
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+\.(?:rs|html)\b")


def mapped_files(design: str) -> set:
    """Every file the code map names, as a repository path: a line that starts with a path names
    that file, or opens a folder whose entry (that line and the indented ones under it) names
    files inside it."""
    block = design.split("## Code map", 1)[1].split("```", 2)[1]
    files, folder = set(), None
    for line in block.splitlines():
        if line and not line[0].isspace():
            head, _, rest = line.partition(" ")
            if head.endswith("/"):
                folder = head
            else:
                files.add(head)
                folder = None
                continue
        else:
            rest = line
        if folder:
            files.update(folder + name for name in FILE_NAME.findall(rest))
    return files


def code_map_problems(root: Path) -> list:
    design = root / "docs" / "design.md"
    mapped = mapped_files(design.read_text())
    problems = []
    for top in CODE_MAP_ROOTS:
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".rs", ".html") and path.is_file():
                relative = path.relative_to(root).as_posix()
                if relative not in mapped:
                    problems.append(f"{relative}: not in the code map of docs/design.md")
    for relative in sorted(mapped):
        if any(relative.startswith(top + "/") for top in CODE_MAP_ROOTS) and not (root / relative).is_file():
            problems.append(f"{relative}: in the code map of docs/design.md, but no such file")
    return problems


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "src"
    problems = [] if len(sys.argv) > 1 else code_map_problems(root)
    for path in sorted(src.rglob("*.rs")):
        importer = module_of_file(src, path)
        if importer not in RANK:
            problems.append(f"{path}: module `{importer}` is not in a layer of .ci/layers.py")
            continue
        text = without_test_items(path.read_text())
        for line, segments in imports(text):
            target = module_of_path(segments)
            if target != importer and RANK[target] >= RANK[importer]:
                problems.append(
                    f"{path}:{line}: `{importer}` imports `{'::'.join(segments)}` "
                    f"(layer `{target}` is not below it)"
                )
    for problem in problems:
        print(problem)
    if problems:
        print(f"layer check failed: {len(problems)} problem(s); see docs/design.md")
        return 1
    print("layer check: no upward imports, every source file in the code map")
    return 0


if __name__ == "__main__":
    sys.exit(main())
