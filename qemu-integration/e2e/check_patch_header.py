"""Checks that the QEMU patch's include/qemu/heki-plugin.h is the plugin's
include/heki_plugin.h byte for byte (the patch carries the header QEMU
compiles against; the repository's is the contract).

Usage: check_patch_header.py PATCH HEADER
"""

import sys

TARGET = "include/qemu/heki-plugin.h"


def new_file(patch, path):
    """The content of a file the patch creates (a single '@@ -0,0' hunk)."""
    lines = patch.split("\n")
    start = lines.index(f"+++ b/{path}")
    hunk = lines[start + 1]
    assert hunk.startswith("@@ -0,0 +1,"), hunk
    count = int(hunk.split("+1,")[1].split(" ")[0])
    body = lines[start + 2:start + 2 + count]
    assert all(l.startswith("+") for l in body), f"{path}: not a new file's hunk"
    text = "\n".join(l[1:] for l in body) + "\n"
    if start + 2 + count < len(lines) and lines[start + 2 + count].startswith("\\ No newline"):
        text = text[:-1]
    return text


def main():
    patch_path, header_path = sys.argv[1:3]
    with open(patch_path, encoding="utf-8") as f:
        patch = f.read()
    with open(header_path, encoding="utf-8") as f:
        header = f.read()
    try:
        carried = new_file(patch, TARGET)
    except ValueError:
        sys.exit(f"{patch_path} does not create {TARGET}")
    if carried != header:
        sys.exit(f"{patch_path}: {TARGET} differs from {header_path}; "
                 "regenerate the patch (the header is the contract)")
    print(f"{TARGET} in {patch_path} is {header_path}, byte for byte "
          f"({len(header.encode())} bytes)")


if __name__ == "__main__":
    main()
