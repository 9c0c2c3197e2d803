#!/usr/bin/env python
"""Check that no config setting changed since a git revision.

    python dev/check_config_resolution.py [--against REV] [--verbose]

Every YAML file of REV's configs/ that loads on its own is resolved (with the current code, which
defines the keys) and compared with its equivalent in the working tree: the same path, or, for a
COCO / shapes ablation pair that became one delta (issue 28), the old file's _BASE_ followed by
the delta named after it (the old name ends in _<delta> or _<delta>_shapes, and the delta's header
documents that composition), or, for a config whose name became a composition (protocol v3's
configs/Benchmark/ overlays: a method config with configs/Protocols/shapes_v3.yaml), the
composition cascade_zoo.model_zoo.RENAMED_CONFIGS names. The whole resolved config is compared
as text (cfg.dump(), values shared by two keys written out), one line per config; the exit
status is 1 on any difference or on a config without an equivalent.

REV defaults to the commit before the ablation pairs became deltas. Its configs/ is read with
`git archive` into a temporary directory: the working tree, the index and HEAD are left alone.
"""

import argparse
import difflib
import io
import logging
import posixpath
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
# The commit before the COCO / shapes ablation pairs became deltas (issue 28).
BEFORE_DELTAS = "0e7394f206b49e36b6ada6b7ba4d65e5c7e51be8"


def extract_configs(rev: str, into: Path) -> List[str]:
    """REV's configs/ written under ``into``; its YAML files, relative to configs/."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "configs"], cwd=REPO,
                             capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # git's own archive; the "data" filter where this Python has it (3.8.17+, 3.11.4+)
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    configs = into / "configs"
    return sorted(p.relative_to(configs).as_posix() for p in configs.rglob("*.yaml"))


def current_deltas() -> Dict[str, List[List[str]]]:
    """Delta file (relative to configs/) -> the compositions its header documents (base, delta)."""
    from cascade_zoo.config import documented_compositions

    configs = REPO / "configs"
    out = {}
    for path in sorted(configs.rglob("*.yaml")):
        rel = path.relative_to(configs).as_posix()
        found = [c for c in documented_compositions(path) if len(c) == 2 and c[1] == rel]
        if found:
            out[rel] = found
    return out


def old_base(configs: Path, rel: str) -> Optional[str]:
    """The _BASE_ of REV's ``rel``, relative to configs/ (None without one)."""
    base = (yaml.safe_load((configs / rel).read_text()) or {}).get("_BASE_")
    if not base:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(rel), base))


def equivalent(rel: str, base: Optional[str], deltas: Dict[str, List[List[str]]]) -> Optional[list]:
    """The files (relative to configs/) that replace REV's ``rel``: itself if it is still there,
    else its base and the delta of the same paper whose name ends its name (the longest such)
    and which documents that composition; None if none does."""
    if (REPO / "configs" / rel).is_file():
        return [rel]
    from cascade_zoo.model_zoo import RENAMED_CONFIGS, config_parts

    renamed = RENAMED_CONFIGS.get(posixpath.splitext(rel)[0])
    if renamed:
        return config_parts(renamed)
    stem = posixpath.splitext(posixpath.basename(rel))[0]
    found = []
    for delta, compositions in deltas.items():
        name = posixpath.splitext(posixpath.basename(delta))[0]
        if delta.split("/")[0] != rel.split("/")[0] or [base, delta] not in compositions:
            continue
        if stem.endswith((f"_{name}", f"_{name}_shapes")):
            found.append((len(name), [base, delta]))
    found.sort()
    if not found or (len(found) > 1 and found[-1][0] == found[-2][0]):
        return None
    return found[-1][1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument(
        "--against", default=BEFORE_DELTAS, metavar="REV",
        help=f"the git revision to compare with (default {BEFORE_DELTAS[:10]})",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="print the diff of a difference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # Detectron2's "no VERSION" warnings, once a file
    warnings.simplefilter("ignore", FutureWarning)  # old key names in old files, which still load
    rev = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.against}^{{commit}}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    from cascade_zoo import setup_cfg
    from cascade_zoo.config import flat_dump

    deltas = current_deltas()
    counts = {"same": 0, "composed": 0, "DIFFERS": 0, "MISSING": 0, "skipped": 0}
    with tempfile.TemporaryDirectory() as tmp:
        old_configs = Path(tmp) / "configs"
        for rel in extract_configs(rev, Path(tmp)):
            try:
                old = flat_dump(setup_cfg(str(old_configs / rel)))
            except Exception as e:  # a file that is not a whole config (none at REV so far)
                print(f"skipped   {rel}: does not load on its own ({type(e).__name__}: {e})")
                counts["skipped"] += 1
                continue
            files = equivalent(rel, old_base(old_configs, rel), deltas)
            if files is None:
                print(f"MISSING   {rel}: gone, and no delta documents its base")
                counts["MISSING"] += 1
                continue
            new = flat_dump(setup_cfg([str(REPO / "configs" / f) for f in files]))
            shown = rel if files == [rel] else f"{rel} -> {' + '.join(files)}"
            if new == old:
                counts["same" if files == [rel] else "composed"] += 1
                print(f"same      {shown}")
                continue
            counts["DIFFERS"] += 1
            diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), rev[:10],
                                             "now", lineterm="", n=1))  # fmt: skip
            print(f"DIFFERS   {shown}: {sum(d[:1] in '+-' for d in diff[2:])} lines")
            if args.verbose:
                print("\n".join("          " + d for d in diff))
    compared = counts["same"] + counts["composed"] + counts["DIFFERS"]
    print(
        f"\nagainst {rev}: {compared} configs compared, {counts['same']} the same at the same "
        f"path, {counts['composed']} the same as base + delta, {counts['DIFFERS']} differ; "
        f"{counts['MISSING']} without an equivalent, {counts['skipped']} not loadable on their own"
    )
    return 1 if counts["DIFFERS"] or counts["MISSING"] else 0


if __name__ == "__main__":
    sys.exit(main())
