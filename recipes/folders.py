"""Finding the files of a user's data folder, in the layouts of Hugging Face `datasets`'
`imagefolder` / `audiofolder` builders: a `metadata.csv` with a `file_name` column (plus the label or
transcription column), or split folders `PATH/train/` with `PATH/validation/` (or `valid/`, `val/`,
`test/`). Class sub-folders (`PATH/<label>/...`) are the image recipes' concern.

A `file_name` that points outside its folder (`../../etc/passwd`, an absolute path) is refused.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tqdm.auto import tqdm

VAL_DIRS = ("validation", "valid", "val", "test")


def inside(root: Path, name: str, where: str) -> Path:
    """root / name, refused when it resolves outside root."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where}: file_name {name!r} points outside the data folder {root}")
    return path


def read_metadata(meta: Path, column: str) -> list[tuple[Path, str]]:
    """(file, value of `column`) pairs of a metadata.csv, files resolved inside its folder."""
    with open(meta, newline="", encoding="utf-8-sig") as f:  # note: -sig: spreadsheet programs start the file with a BOM
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        rows = list(reader)
    if not rows or "file_name" not in rows[0] or column not in rows[0]:
        raise ValueError(f"{meta}: needs the columns file_name and {column}")
    for n, r in enumerate(rows, start=2):
        if r[column] is None or r["file_name"] is None:
            raise ValueError(f"{meta}, line {n}: expected a value in every column")
    return [(inside(meta.parent, r["file_name"], str(meta)), str(r[column])) for r in rows]


def hidden(path: Path, root: Path) -> bool:
    """A file or folder under `root` that a folder dataset skips: any part of its path starting
    with "." or "__" (.ipynb_checkpoints, .DS_Store, __MACOSX), as Hugging Face's imagefolder."""
    return any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(training folder, validation folder or None) of a data folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if (root / "train").is_dir():
        return root / "train", next((root / v for v in VAL_DIRS if (root / v).is_dir()), None)
    return root, None


def keep_good(pairs: list, check, skip_bad: bool, what: str) -> tuple[list, int]:
    """Run check(path, label) on every pair once: (the pairs that passed, how many were skipped).
    A ValueError stops the run with the sample's message unless skip_bad."""
    good, bad = [], 0
    for path, label in tqdm(pairs, desc=f"checking {what}", leave=False, disable=len(pairs) < 200):
        try:
            check(path, label)
        except ValueError as e:
            if not skip_bad:
                raise type(e)(f"{e} (set skip_bad_samples=true to skip such files)") from None
            bad += 1
            continue
        good.append((path, label))
    return good, bad
