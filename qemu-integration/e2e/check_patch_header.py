"""Checks that the QEMU patch's include/qemu/heki-plugin.h is the plugin's
include/heki_plugin.h byte for byte (the patch carries the header QEMU
compiles against; the repository's is the contract).

Usage: check_patch_header.py [--update] PATCH HEADER
--update rewrites the patch's copy (its hunk and blob id) from HEADER, for
when the contract changed; the diffstat line of the file may then be stale.
"""

import hashlib
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


def update(patch, path, text):
    """The patch with `path`'s new-file hunk (and index line) made `text`."""
    lines = patch.split("\n")
    start = lines.index(f"+++ b/{path}")
    count = int(lines[start + 1].split("+1,")[1].split(" ")[0])
    body = text.split("\n")
    if body[-1] == "":
        body.pop()
    index = start - 2
    assert lines[index].startswith("index 0000000"), lines[index]
    old_id = lines[index].split("..")[1].split(" ")[0]
    blob = hashlib.sha1(b"blob %d\0" % len(text.encode()) + text.encode()).hexdigest()
    lines[index] = lines[index].replace(".." + old_id, ".." + blob[:len(old_id)])
    lines[start + 1:start + 2 + count] = [f"@@ -0,0 +1,{len(body)} @@"] + ["+" + l for l in body]
    return "\n".join(lines)


def main():
    if sys.argv[1] == "--update":
        patch_path, header_path = sys.argv[2:4]
        with open(patch_path, encoding="utf-8") as f:
            patch = f.read()
        with open(header_path, encoding="utf-8") as f:
            header = f.read()
        with open(patch_path, "w", encoding="utf-8") as f:
            f.write(update(patch, TARGET, header))
    patch_path, header_path = sys.argv[-2:]
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
