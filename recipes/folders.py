"""Finding the files of a user's data folder, in the layouts of Hugging Face `datasets`'
`imagefolder` / `audiofolder` builders: a `metadata.csv` with a `file_name` column (plus the label or
transcription column), or split folders `PATH/train/` with `PATH/validation/` (or `valid/`, `val/`,
`test/`). Class sub-folders (`PATH/<label>/...`) are the image recipes' concern.

A `file_name` that points outside its folder (`../../etc/passwd`, an absolute path) is refused.

A Hugging Face dataset works too: a folder written by `datasets`' `save_to_disk` (read with
`load_from_disk`), a `.parquet` file, or a folder of Parquet files as the Hub lays them out
(`data/train-00000-of-00001.parquet`, `data/validation-...`; read with `load_dataset`, offline).
A `DatasetDict` needs a `train` split and may have one of the validation names above. Its Image /
Audio column is read undecoded (our decoders read the bytes, so no torchcodec is needed), its label
(a ClassLabel, or a `label` column) or transcript column by name. Each row becomes an `HFRecord`,
which the loaders read as they read a file.
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


# -- Hugging Face datasets: save_to_disk folders, Parquet files --------------------------------------
TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text")  # audio datasets' usual names
LABEL_COLUMNS = ("label", "labels")


def is_saved(root: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


def is_hf_dataset(root: Path) -> bool:
    """save_to_disk's folder, a .parquet file, or a folder with Parquet files in it or one level down
    (the Hub's `data/`)."""
    if root.is_file():
        return root.suffix == ".parquet"
    return root.is_dir() and (is_saved(root) or any(True for _ in root.glob("*.parquet")) or any(True for _ in root.glob("*/*.parquet")))


def load_hf(root: Path):
    """A Dataset or DatasetDict, read from local files only."""
    import datasets

    if is_saved(root):
        return datasets.load_from_disk(str(root))
    try:
        if root.is_file():
            return datasets.load_dataset("parquet", data_files=str(root))
        return datasets.load_dataset(str(root))  # the Hub's layout: splits from the file names, or the card's configs
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{root}: not a dataset `datasets` can read here ({(str(e).splitlines() or [''])[0]})") from None


class HFRecord:
    """One row's image or audio of a Hugging Face dataset: `read_bytes()` and, as str(), its name
    (`PATH[split][row]`) — what a file's Path is to `open_image` / `load_audio`."""

    def __init__(self, dataset, row: int, column: str, name: str):
        self.dataset, self.row, self.column, self.name = dataset, row, column, name

    def read_bytes(self) -> bytes:
        value = self.dataset[self.row][self.column]  # undecoded: {"bytes": ..., "path": ...}
        if value is None:
            raise ValueError(f"{self}: no {self.column} in this row")
        if value.get("bytes") is not None:
            return value["bytes"]
        if not value.get("path"):
            raise ValueError(f"{self}: its {self.column} has neither bytes nor a path")
        return Path(value["path"]).read_bytes()  # a dataset that refers to files beside it

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def hf_splits(root: Path, kind: str) -> tuple:
    """(train, validation or None) of a Hugging Face dataset: lists of (HFRecord, label) for kind
    "image", (HFRecord, transcript) for "audio"; for "text", the text column's rows joined by
    newlines."""
    import datasets

    read = hf_text if kind == "text" else lambda ds, name: hf_pairs(ds, kind, name)
    loaded = load_hf(root)
    if not isinstance(loaded, datasets.DatasetDict):
        return read(loaded, str(root)), None
    if "train" not in loaded:
        raise ValueError(f"{root}: a saved DatasetDict needs a 'train' split (it has {', '.join(loaded) or 'none'})")
    val = next((v for v in VAL_DIRS if v in loaded), None)
    return read(loaded["train"], f"{root}[train]"), read(loaded[val], f"{root}[{val}]") if val else None


def hf_text(ds, name: str) -> str:
    """The `text` column (or the only string column) of a Hugging Face dataset, rows joined by newlines."""
    import datasets

    strings = [c for c, f in ds.features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")]
    column = "text" if "text" in strings else strings[0] if len(strings) == 1 else None
    if column is None:
        raise ValueError(f"{name}: needs a 'text' column (string columns: {', '.join(strings) or 'none'})")
    return "\n".join(t for t in ds[column] if t)


def hf_pairs(ds, kind: str, name: str) -> list:
    import datasets

    feature = datasets.Image if kind == "image" else datasets.Audio
    columns = ", ".join(f"{c} ({type(f).__name__})" for c, f in ds.features.items())
    media = next((c for c, f in ds.features.items() if isinstance(f, feature)), None)
    if media is None:
        raise ValueError(f"{name}: no {feature.__name__} column (columns: {columns})")
    if kind == "image":
        wanted = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)] + [c for c in LABEL_COLUMNS if c in ds.features]
    else:
        wanted = [c for c in TEXT_COLUMNS if c in ds.features]
    if not wanted:
        what = "a ClassLabel or label column" if kind == "image" else f"a transcript column ({', '.join(TEXT_COLUMNS)})"
        raise ValueError(f"{name}: needs {what} (columns: {columns})")
    values, label_feature = list(ds[wanted[0]]), ds.features[wanted[0]]
    for row, v in enumerate(values):
        if v is None or (isinstance(label_feature, datasets.ClassLabel) and not 0 <= v < label_feature.num_classes):
            raise ValueError(f"{name}[{row}]: {wanted[0]} is {v!r}; expected {'a class' if kind == 'image' else 'a transcript'}")
    if isinstance(label_feature, datasets.ClassLabel):
        values = label_feature.int2str(values)
    ds = ds.select_columns([media]).cast_column(media, feature(decode=False))
    return [(HFRecord(ds, row, media, f"{name}[{row}]"), str(v)) for row, v in enumerate(values)]
