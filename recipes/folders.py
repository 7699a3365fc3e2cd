"""Finding the files of a user's data folder, in the layouts of Hugging Face `datasets`'
`imagefolder` / `audiofolder` builders: a `metadata.csv` (or `metadata.jsonl`, one JSON object per
line) with a `file_name` column plus the label or transcription column, or split folders
`PATH/train/` (or `training/`, any case) with `PATH/validation/` (or `valid/`, `val/`, `dev/`,
`test/`, `testing/`, `eval/`, `evaluation/`). Class sub-folders
(`PATH/<label>/...`) are the image recipes' concern.

A `file_name` that points outside its folder (`../../etc/passwd`, an absolute path) is refused.

A Hugging Face dataset works too: a folder written by `datasets`' `save_to_disk` (read with
`load_from_disk`), one data file (`.parquet`, JSON lines `.jsonl` / `.json`, `.csv`, `.tsv`; all but
Parquet also as `.gz` / `.bz2` / `.xz`), a folder of such files (at its top, in data/ or in split
folders), or a folder of Parquet files as the Hub lays them out
(`data/train-00000-of-00001.parquet`, `data/validation-...`, or `CONFIG/train/*.parquet`; read with
`load_dataset`, offline). A folder holding Parquet files beside other data files is refused as
ambiguous. A `DatasetDict` needs a `train` split and may have one of the validation names above.
Its Image / Audio column is read undecoded (our decoders read the bytes, so no torchcodec is
needed); the media and label / transcript columns are found by type and name, or named by the
recipe's `*_column` keys. Each row becomes an `HFRecord`, which the loaders read as they read a file."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from .config import SHORT, launch_rank, say

VAL_DIRS = ("validation", "valid", "val", "dev", "test")
TRAIN_DIRS = ("train", "training")  # split folders as `datasets` finds them (SPLIT_KEYWORDS), matched in any case
FOLDER_VAL_DIRS = (*VAL_DIRS, "testing", "eval", "evaluation")  # the first present is the validation split
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64", ".rf64")  # what libsndfile reads


def inside(root: Path, name: str, where: str) -> Path:
    """root / name, refused when it points outside root: through `..`, an absolute path or a folder
    that links out of it. The file itself may be a link (the Hugging Face cache's snapshots link
    each file to its blob)."""
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(os.path.normpath(root)) or not path.parent.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{where}: file_name {name!r} points outside the data folder {root}")
    return path


HUB_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(/(?P<config>[\w.-]+))?")  # a Hugging Face dataset id: owner/name[/CONFIG]


FILE_SUFFIXES = {".txt", ".text", ".md", ".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".bz2", ".xz", ".zip",
                 ".npz", ".hdf5", ".h5", ".wav", ".flac", ".mp3", ".ogg", ".png", ".jpg", ".jpeg"}  # fmt: skip  # a path's, not a dataset id's


def local_data(data: str) -> Path:
    """data= as a path: itself when it exists; else a Hugging Face dataset id (`owner/name`, or
    `owner/name/CONFIG` for one config of several) → its snapshot in the local Hugging Face cache, as
    `hf download --repo-type dataset ID` (or `load_dataset` / `snapshot_download`) left it. Nothing
    is downloaded."""
    path = Path(data)
    found = None if path.exists() else HUB_ID.fullmatch(data)
    if found is not None and path.suffix.lower() in FILE_SUFFIXES:  # data/shakespeare_char/input.txt: a file path mistyped, no dataset id
        raise FileNotFoundError(f"data={data}: no such file")
    if found is None:
        return path
    from huggingface_hub import constants, snapshot_download

    repo, config = found["repo"], found["config"]
    try:
        snapshot = Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception as e:  # noqa: BLE001  # huggingface_hub raises several kinds (not cached, incomplete, bad id)
        reason = str(e).splitlines()[0] if "incomplete" in str(e) else f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
        raise FileNotFoundError(f"data={data}: no such file or folder, and as a Hugging Face dataset id it is {reason}; "
                                f"download it where there is a network (`hf download {repo} --repo-type dataset`), "
                                "or give the path of its files") from None
    if config is not None and not (snapshot / config).is_dir():
        raise FileNotFoundError(f"data={data}: the cached dataset {repo} has no config folder {config!r} ({snapshot})")
    return snapshot / config if config else snapshot


METADATA_FILES = ("metadata.csv", "metadata.jsonl")  # imagefolder / audiofolder's metadata, one per folder


def find_metadata(folder: Path) -> Path | None:
    """The folder's metadata.csv or metadata.jsonl; None when it has neither; refused when it has both."""
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder} holds both metadata.csv and metadata.jsonl: keep one")
    return found[0] if found else None


def metadata_rows(meta: Path, column: str) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata.csv (a header line, which must name file_name and `column`)
    or metadata.jsonl (one JSON object per line)."""
    try:
        text = meta.read_text(encoding="utf-8-sig")  # note: -sig: spreadsheet programs start the file with a BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{meta}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    if meta.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        if not {"file_name", column} <= set(reader.fieldnames):
            found = ", ".join(reader.fieldnames) or "none: an empty first line"
            raise ValueError(f"{meta}: needs the columns file_name and {column} (its header has {found})")
        try:
            rows = list(enumerate(reader, start=2))  # note: line numbers count rows (a quoted value may hold a line break)
        except csv.Error as e:  # (a field over csv's 128 KiB limit, a NUL byte)
            raise ValueError(f"{meta}, line {reader.line_num}: not readable as CSV ({e})") from None
        for n, r in rows:
            if None in r:  # (DictReader's key for fields past the header's)
                raise ValueError(f"{meta}, line {n}: {len(reader.fieldnames) + len(r[None])} fields, and the header names "
                                 f"{len(reader.fieldnames)}; a value holding a comma needs quotes (\"one, two\")")  # fmt: skip
        return rows
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):  # note: not splitlines(): U+2028 and kin may stand inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta}, line {n}: not valid JSON ({e.msg}); expected one object per line") from None
        except RecursionError:
            raise ValueError(f"{meta}, line {n}: JSON nested too deep to read; expected one flat object per line") from None
        if not isinstance(row, dict):
            raise ValueError(f"{meta}, line {n}: a JSON {type(row).__name__}; expected one object per line")
        rows.append((n, row))
    return rows


def metadata_column(meta: Path, given: str, candidates: tuple[str, ...], key: str, what: str) -> str:
    """Which column of a metadata.csv / metadata.jsonl holds the values: `given` (`key=`), else the
    first candidate when the file has it (audiofolder's own name), else the only one it has; refused
    naming the file's columns when it has none of them, or several others (it asks)."""
    columns: list[str] = []
    try:
        with open(meta, encoding="utf-8-sig", newline="") as f:
            if meta.suffix == ".csv":
                columns = [c.strip() for c in next(csv.reader(f), [])]
            else:  # (every row's keys: one may leave the transcript out, and is named when the rows are read)
                for line in f:
                    try:
                        row = json.loads(line) if line.strip() else {}
                    except (ValueError, RecursionError):
                        continue
                    columns += [k for k in (row if isinstance(row, dict) else {}) if k not in columns]
    except (UnicodeDecodeError, csv.Error):
        pass
    if not columns:  # (an unreadable file or first row: named when its rows are read)
        return given or candidates[0]
    if given:
        if given not in columns:
            raise ValueError(f"{meta}: no column {given!r} ({key}=); its columns: {', '.join(columns)}")
        return given
    present = [c for c in candidates if c in columns]
    if present and (present[0] == candidates[0] or len(present) == 1):
        return present[0]
    found = f"could be any of {', '.join(present)}" if present else f"is in none of the columns {', '.join(candidates)}"
    raise ValueError(f"{meta}: {what} {found}; name it with {key}= (its columns: {', '.join(columns)})")


def read_metadata(meta: Path, column: str, empty_ok: bool = False) -> list[tuple[Path, str]]:
    """(file, value of `column`) pairs of a metadata.csv / metadata.jsonl, files resolved inside its
    folder. An empty or blank file_name, or `column` unless `empty_ok` (a silent clip's transcript),
    is no value (an empty CSV cell would otherwise make a label "")."""
    return named_pairs(metadata_rows(meta, column), meta, meta.parent, column, empty_ok)


def named_pairs(rows: list[tuple[int, dict]], where: Path, base: Path, column: str, empty_ok: bool = False, name: str = "file_name",
                more: str = "") -> list[tuple[Path, str]]:  # fmt: skip
    """(file, value of `column`) of (line number, row) rows of a metadata file `where`, each row's
    `name` a file inside `base` (a metadata.csv's folder, Common Voice's clips/), named once; a
    missing or blank value (`column`'s allowed blank with `empty_ok`) is named with its line, and no
    rows at all are refused (`more`: what to say then besides)."""
    if not rows:
        raise ValueError(f"{where}: no rows; needs {name} and {column} for each file{more}")
    for n, r in rows:
        blank = {c for c in (name, column) if isinstance(r.get(c), str) and not r[c].strip()} - ({column} if empty_ok else set())
        missing = [c for c in (name, column) if r.get(c) is None or c in blank]
        if missing:
            raise ValueError(f"{where}, line {n}: expected a value for {' and '.join(missing)}")
        if not isinstance(r[name], str) or isinstance(r[column], (dict, list)):
            raise ValueError(f"{where}, line {n}: expected a {name} string and one {column}")
    first: dict[Path, int] = {}
    pairs = []
    for n, r in rows:
        path = inside(base, r[name], str(where))
        if path in first:  # (it could land in both the training and the held-out split)
            raise ValueError(f"{where}, line {n}: {r[name]} is named again (first on line {first[path]}); one row per file")
        first[path] = n
        pairs.append((path, str(r[column])))
    return pairs


def walk_files(root: Path) -> list[Path]:
    """Every file under `root`, into linked folders too (Path.rglob passes them over before Python
    3.13), each real folder once (a link back up does not loop)."""
    seen, files = set(), []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        files += [Path(folder) / n for n in sorted(names)]
    return [q for q in files if q.is_file()]


def image_files(root: Path) -> list[Path]:
    """The image files under `root` (any depth, by the extensions PIL reads), sorted, hidden ones
    (`hidden`) left out, as an image folder dataset finds them."""
    extensions = image_extensions()
    return sorted(p for p in walk_files(root) if not hidden(p, root) and p.suffix.lower() in extensions)


def image_extensions() -> set[str]:
    """The file extensions PIL reads (".png", ".jpg", ...)."""
    from PIL import Image

    # note: formats PIL only writes (.pdf, .palm) are not images to read; .mpo opens through the JPEG reader
    return {e.lower() for e, f in Image.registered_extensions().items() if f in Image.OPEN or f == "MPO"}


def hidden(path: Path, root: Path) -> bool:
    """A file or folder under `root` that a folder dataset skips: any part of its path starting
    with "." or "__" (.ipynb_checkpoints, .DS_Store, __MACOSX), as Hugging Face's imagefolder."""
    return any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


def say_unused(cfg, recipe: str, keys: tuple[str, ...]) -> None:
    """Data with its own validation split holds nothing out: the `keys` given (other than their
    defaults: val_fraction, val_group) are said to be unused, on stderr, once (torchrun), when a run
    starts."""
    from .runs import RUN_FILE

    given = [f"{k}={getattr(cfg, k)}" for k in keys if getattr(cfg, k) != getattr(type(cfg), k)]
    started = bool(cfg.run_dir) and Path(cfg.run_dir, RUN_FILE).is_file()  # (a resume or an eval: said when the run started)
    if given and not started:
        say(f"{recipe}: {', '.join(given)} unused: {cfg.data} has a validation split")


def held_out_count(n: int, fraction: float) -> int:
    """How many of n examples a validation split holds for `fraction`: sklearn's count (ceil), at
    least 1 (val_fraction=0 too) and at most n - 1."""
    return min(n - 1, max(1, math.ceil(fraction * n)))


SPLIT_FILE = "split.json"  # RUN_DIR's record of the split a run drew from data without a validation split


def sample_key(sample, root: Path) -> str:
    """A sample's name within its data, the same whether data= was given relative, absolute or
    through `..`: a file's path relative to the data folder; a dataset row's name less the dataset's
    path (`[train][12]`: a row by its number)."""
    if isinstance(sample, Path):
        return os.path.relpath(os.path.normpath(sample), os.path.normpath(root))
    return str(sample).removeprefix(str(root))


def scored_data(run_dir, data: str | None) -> str | None:
    """data= of `evaluate(run_dir, data=...)` (`mmtok eval RUN --data PATH`), or None where it names
    the data the run trained on: its held-out share then scores it, as without data= (all of it
    would hold the training samples too), and stderr says so."""
    from .runs import load_run_info

    if data is None:
        return None
    trained = getattr(load_run_info(run_dir)[2], "data", "")
    try:
        same = bool(trained) and local_data(data).resolve() == local_data(trained).resolve()
    except (OSError, ValueError):  # (a dataset id not in the cache: not the run's)
        same = False
    if same:
        say(f"{data} is the data {run_dir} trained on: scoring its held-out share, as eval does without other data")
        return None
    return data


def say_trained_on(run_dir, trained: str, pairs: list, training: Callable[[Path], list]) -> None:
    """Say on stderr how many of the files `pairs` scores (`mmtok eval RUN --data OTHER`) the run
    trained on (Common Voice's validated.tsv holds train.tsv's clips): those its split.json records
    as its training share, or for data with its own validation split its training split's, read by
    `training(root)` from the run's data at `trained` (what that says on stderr is not said). Best
    effort: a dataset's rows are not files, and data moved or unreadable is not compared."""
    from tokenizers_mm.base import read_json

    files = {os.path.realpath(p) for p, _ in pairs if isinstance(p, Path)}
    if not files or not trained or launch_rank() != 0:  # (said once: torchrun)
        return
    try:
        root, split = local_data(trained), Path(run_dir) / SPLIT_FILE
        if split.is_file():  # a drawn split: the training share it recorded (files added since are not counted)
            seen = {os.path.realpath(os.path.join(root, n)) for n in read_json(split, "split").get("train", []) if isinstance(n, str)}
        elif is_hf_dataset(root):
            return
        else:
            with contextlib.redirect_stderr(io.StringIO()):
                seen = {os.path.realpath(p) for p, _ in training(root) if isinstance(p, Path)}
    except Exception:  # noqa: BLE001  # (a check that only informs: the run's data moved, changed or unreadable is not compared)
        return
    if both := len(files & seen):
        say(f"{both} of the {len(files)} files scored are among those the run trained on ({trained}): not a held-out score")


def kept_split(pairs: list, run_dir, root: Path, evaluating: bool = False) -> tuple[list, list] | None:
    """(training, held out) pairs in the order RUN_DIR/split.json records them, for a run resumed or
    evaluated on data without a validation split: drawn again from what the folder holds by then, a
    row removed or added would move samples between the shares, and a resumed run would read other
    batches than an uninterrupted one (samples are taken by their place in the training list). None
    where the run has no checkpoint (a new run, or one killed before its first: drawn anew) or no
    record. A held-out sample gone from the data is named; a training one gone is said, but for an
    evaluation (the batches from there differ from an uninterrupted run's); samples added since
    train, after the rest (said by `say_added`, once they are checked)."""
    from .checkpoint import held_checkpoint

    path = Path(run_dir) / SPLIT_FILE if run_dir else None
    if path is None or not path.is_file() or held_checkpoint(run_dir) is None:
        return None
    from tokenizers_mm.base import read_json

    record = read_json(path, "split")
    if not all(isinstance(record.get(k), list) and all(isinstance(n, str) for n in record[k]) for k in ("train", "held_out")):
        raise ValueError(f"split: {path} must hold {{\"train\": [NAME, ...], \"held_out\": [NAME, ...]}}, as a run writes it")
    by_key = {sample_key(p[0], root): p for p in pairs}
    if gone := [k for k in record["held_out"] if k not in by_key]:
        raise ValueError(f"{root}: {len(gone)} of the {len(record['held_out'])} samples the run held out ({path}) are no longer in the "
                         f"data, e.g. {gone[0]}: a run is scored on the samples it held out; put them back")  # fmt: skip
    held = set(record["held_out"])
    if (gone := [k for k in record["train"] if k not in by_key]) and not evaluating:
        say(f"{root}: {len(gone)} of the {len(record['train'])} training samples the run recorded ({path}) are no longer in the data, "
            f"e.g. {gone[0]}: it trains on without them, so its batches from here differ from an uninterrupted run's")  # fmt: skip
    train = [by_key[k] for k in record["train"] if k in by_key]
    listed = held | set(record["train"])
    train += [p for k, p in by_key.items() if k not in listed]
    return train, [by_key[k] for k in record["held_out"]]


def say_added(train: list, run_dir, root: Path) -> None:
    """Say how many of a resumed run's training samples (checked: the unreadable ones it skipped
    are not in its record either) are not in its RUN_DIR/split.json: added since, they train after
    the recorded ones, and the batches from there differ from an uninterrupted run's."""
    from tokenizers_mm.base import read_json

    recorded = set(read_json(Path(run_dir) / SPLIT_FILE, "split")["train"])
    if added := [k for p, _ in train if (k := sample_key(p, root)) not in recorded]:
        say(f"{root}: {len(added)} sample(s) added since the run began (e.g. {added[0]}) train too, after the recorded ones: its batches "
            "from here differ from an uninterrupted run's")  # fmt: skip


def save_split(run_dir: Path, train_set, test_set) -> None:
    """Record a split build_data drew from data at `test_set.drawn_from` (its root) in
    RUN_DIR/split.json: both shares' sample names, in their order (JSON: any file name)."""
    root = getattr(test_set, "drawn_from", None)
    if root is not None:
        from tokenizers_mm.base import write_json_atomic

        write_json_atomic(Path(run_dir) / SPLIT_FILE, {"train": [sample_key(p, root) for p, _ in train_set.pairs],
                                                        "held_out": [sample_key(p, root) for p, _ in test_set.pairs]})  # fmt: skip


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(training folder, validation folder or None) of a data folder: its `train/` (or `training/`,
    any case) and the first of `validation/`, `valid/`, `val/`, `dev/`, `test/`, `testing/`, `eval/`,
    `evaluation/` present (an empty one is refused), or the folder itself and None."""
    if root.is_file():  # (a dataset file, .parquet / .jsonl / .csv, is read before this: hf_source)
        raise ValueError(f"data {root} is a file, not a data folder: expected a folder (its class or split sub-folders, "
                         "or metadata.csv / metadata.jsonl) or a dataset file (.parquet, .jsonl, .csv)")  # fmt: skip
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    folders = {p.name.lower(): p for p in sorted(root.iterdir(), reverse=True) if p.is_dir() and not hidden(p, root)}
    train = next((folders[t] for t in TRAIN_DIRS if t in folders), None)  # as `datasets` names splits, in any case (Train/, training/)
    if train is None:
        return root, None
    val = [folders[v] for v in FOLDER_VAL_DIRS if v in folders]
    if val and not any(walk_files(val[0])):
        raise ValueError(f"validation folder {val[0]} is empty; put the held-out data there, or remove it (training then holds out "
                         f"val_fraction of {train})")  # fmt: skip
    return train, val[0] if val else None


NAMED_SKIPS = 10  # skipped samples named one by one; the rest are counted


class Labelled(list):
    """(file or record, label) pairs from a source that numbers its classes: `classes`, a ClassLabel's
    names in the dataset's order; `numeric`, labels read from a column (metadata.csv, a dataset's
    int column), integer ones numbered as numbers. Class folders are a plain list (sorted by name, as
    torchvision's ImageFolder)."""

    def __init__(self, pairs, classes: list[str] | None = None, numeric: bool = True):
        super().__init__(pairs)
        self.classes, self.numeric = classes, numeric


def class_order(labels, source) -> list[str]:
    """The classes in output order (classes.txt): `source`'s declared names (a ClassLabel's: output i is
    the dataset's label i); integer labels of a column as numbers (0, 1, 2, ..., 10, not 0, 1, 10, 2);
    else by name."""
    if getattr(source, "classes", None):
        return list(source.classes)
    if getattr(source, "numeric", False) and labels and all(re.fullmatch(r"-?[0-9]+", label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))  # ("1", "01": one order in every process, not the hash seed's)
    return sorted(labels)


def keep_good(pairs: list, check, skip_bad: bool, what: str) -> tuple[list, int]:
    """Run check(path, label) on every pair once: (the pairs that passed, how many were skipped).
    A ValueError stops the run with the sample's message unless skip_bad; the first NAMED_SKIPS
    skipped samples are named on stderr with their reason. what: "training images", "evaluation
    audio", ... (an evaluation's files are mended, not skipped by a key `mmtok eval` does not take)."""
    good, bad = [], 0
    for path, label in tqdm(pairs, desc=f"checking {what}", leave=False, disable=len(pairs) < 200):
        try:
            check(path, label)
        except ValueError as e:
            if not skip_bad:
                hint = ("mend or remove it: evaluation skips such files only for a run trained with skip_bad_samples=true"
                        if what.split()[0] == "evaluation" else "set skip_bad_samples=true to skip such files")  # fmt: skip
                raise type(e)(f"{e} ({hint})") from None
            bad += 1
            if bad <= NAMED_SKIPS:
                say(f"skipped {e}" + (" (the further ones are only counted)" if bad == NAMED_SKIPS else ""))
            continue
        good.append((path, label))
    return good, bad


# -- Hugging Face datasets: save_to_disk folders, Parquet files --------------------------------------
TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text")  # audio datasets' usual names
LABEL_COLUMNS = ("label", "labels")
SPLITS = ("train", *VAL_DIRS)
META_SUFFIXES = {".parquet", ".md", ".json", ".txt", ".yaml", ".yml", ".py", ".lock", ".cff", ""}  # a dataset repository's other files (LICENSE)


DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv"}  # suffix -> `datasets` builder
# builders with arguments: CSV / TSV cells are text as written ("NA", "null" stay words); TSV has no quoting (a quote is a character)
BUILDERS = {"csv": ("csv", {"keep_default_na": False}),
            "tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, "keep_default_na": False})}  # fmt: skip
NOT_DATA = {"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"}  # `datasets`' own JSON files
COMPRESSED = (".gz", ".bz2", ".xz")  # a .jsonl.gz / .csv.xz is read decompressed


def file_builder(path: Path) -> str | None:
    """The `datasets` builder that reads a data file (corpus.jsonl, rows.csv.gz, part.parquet), or None."""
    suffixes = [q.lower() for q in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # Parquet compresses inside
    return DATA_FILES.get(suffixes[-1]) if suffixes else None


def is_saved(root: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


def loose_files(root: Path, folders=("", "data")) -> list[Path]:
    """Data files (by suffix) at the top of `root` or in `root/data` (or the `folders` given): a dataset repository's places
    for them; `datasets`' own JSON files and imagefolder / audiofolder metadata are not data."""
    near = [q for folder in (root / f for f in folders) if folder.is_dir() for q in folder.iterdir()]
    return sorted(q for q in near if q.is_file() and not hidden(q, root) and file_builder(q) and q.name not in NOT_DATA
                  and not q.name.startswith("metadata."))  # fmt: skip


def split_folders() -> list[str]:
    """The folders `datasets` reads a split from (train/, training/, validation/, dev/, eval/, ...; also under data/)."""
    from datasets.data_files import SPLIT_KEYWORDS

    names = [k for keywords in SPLIT_KEYWORDS.values() for k in keywords]
    return names + [f"data/{k}" for k in names]


def repository_files(root: Path) -> list[Path]:
    """Data files where a dataset repository holds them: at its top, in data/, in split folders (train/, validation/, ...)."""
    return sorted(set(loose_files(root)) | set(loose_files(root, split_folders())))


def strays(root: Path, data: list[Path]) -> list[Path]:
    """Files under root that are neither `data` nor a repository's other files (README, LICENSE, ...)."""
    keep = set(data)
    return [q for q in walk_files(root) if not hidden(q, root) and q not in keep and q.suffix.lower() not in META_SUFFIXES]


def text_files(root: Path) -> list[Path]:
    """A folder that holds JSON lines / CSV / TSV data files (`train.jsonl`, `data/validation.csv.gz`,
    or in split folders: `train/part-0.jsonl`, `validation/part-0.jsonl`) and nothing else but a
    repository's other files: its data files; [] for any other folder (an image folder's
    metadata.csv or a stray notes.csv keeps it an image folder)."""
    data = repository_files(root)
    if any(q.suffix.lower() != ".json" for q in data):  # beside JSON lines or CSV, a .json file is the repository's (info.json)
        data = [q for q in data if q.suffix.lower() != ".json"]
    if not data or strays(root, data):  # note: loose files first; the scan would read a whole image folder's listing
        return []
    if len(kinds := sorted({file_builder(q) for q in data})) > 1:
        raise ValueError(f"{root} holds data files of several formats ({', '.join(kinds)}); keep one")
    loose = [q for q in data if q.parent in (root, root / "data")]  # named by split, not in a split folder
    if loose and len(loose) < len(data):  # note: `datasets` names splits from file names or from folders, not both
        inner = next(q for q in data if q not in loose)
        raise ValueError(f"{root} holds data files both in split folders ({inner.relative_to(root)}) and named by split "
                         f"({loose[0].relative_to(root)}); keep one layout")  # fmt: skip
    return data


def not_a_dataset(root: Path) -> str:
    """Why a folder is not read as a dataset of data files, for the text recipes' error."""
    data = repository_files(root)
    if not data:
        return "it holds no .jsonl / .json / .csv / .tsv / .parquet file at its top, in data/ or in split folders (train/, validation/)"
    return (f"beside {data[0].relative_to(root)} it holds {strays(root, data)[0].relative_to(root)}, which is not a data file "
            "(a dataset folder holds its data files at its top, in data/ or in split folders such as train/ and validation/, "
            "besides README / LICENSE / .txt / .json files)")


def split_files(root: Path, files: list[Path]) -> dict[str, list[str]]:
    """`files` by split, as `datasets` names splits from file names (train / validation, valid, dev /
    test, ...; other names are train), so files that are not data (a README.txt) are never read."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    keep = {q.resolve() for q in files}
    resolved = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    by_split = {str(split): sorted(f for f in found if Path(f).resolve() in keep) for split, found in resolved.items()}
    placed = {Path(f).resolve() for found in by_split.values() for f in found}
    unplaced = [q for q in files if q.resolve() not in placed]  # beside files named by split, datasets' patterns pass over them
    if unplaced:
        named = ", ".join(split for split, found in by_split.items() if found)
        raise ValueError(f"{root}: {unplaced[0].relative_to(root)} is named by no split beside the {named} files, and would "
                         "not be read; name it by its split (train-..., test-...) or move it out")  # fmt: skip
    return {split: found for split, found in by_split.items() if found}


def card_configs(root: Path) -> bool:
    """The dataset card (README.md) declares `configs:` in its YAML header: `load_dataset` reads it.
    Its data_files and data_dir must stay inside the folder: a path that is absolute, climbs out
    (..) or names a protocol (hf://, https://) is refused, so the card cannot make a local run read
    other files or the network."""
    from huggingface_hub.repocard import metadata_load

    card = root / "README.md"
    try:
        configs = (metadata_load(card) or {}).get("configs") if card.is_file() else None
    except Exception:  # noqa: BLE001  # a card whose YAML header does not parse declares nothing load_dataset could read
        return False
    if configs is None:
        return False

    def patterns(value):  # data_files: a pattern, a list of them, {split: ...} or [{split, path}, ...]
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from patterns(value.get("path", []) if "path" in value else list(value.values()))
        elif isinstance(value, list):
            for v in value:
                yield from patterns(v)

    for config in configs if isinstance(configs, list) else [configs]:
        config = config if isinstance(config, dict) else {}
        for pattern in [*patterns(config.get("data_files", [])), *patterns(config.get("data_dir", []))]:
            if "://" in pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise ValueError(f"{card}: data_files / data_dir {pattern!r} points outside {root}; a local dataset's card names its own files")
    return True


def hf_source(root: Path) -> tuple[str, dict | None] | None:
    """How to read `root` as a Hugging Face dataset, or None when it is not one:
    ("saved", None) for save_to_disk's folder; ("hub", None) for a repository whose card declares
    its configs; (builder, {split: files}) for Parquet, JSON lines or CSV files as a dataset
    repository holds them (`*.parquet` or `data/*.parquet`, splits from the file names), for split
    folders (`train/*.parquet`, ...), the Hub's converted layout (`CONFIG/train/*.parquet`, one
    config), or one data file — .parquet, .jsonl / .ndjson / .json, .csv, the last ones also
    compressed (.gz, .bz2, .xz)."""
    if root.is_file():
        builder = file_builder(root)
        return (builder, {"train": str(root)}) if builder else None
    if not root.is_dir():
        return None
    if is_saved(root):
        return "saved", None
    has = lambda pattern: next(root.glob(pattern), None) is not None  # noqa: E731
    splits = lambda folder: {s: str(root / folder / s / "*.parquet") for s in SPLITS if has(f"{folder}/{s}/*.parquet")}  # noqa: E731
    configs = sorted({q.parent.parent.name for q in root.glob("*/train/*.parquet")})
    if has("*.parquet") or has("data/*.parquet"):  # note: the files are named, so a README.txt beside them is not read as data
        found = ("hub", None) if card_configs(root) else ("parquet", split_files(root, [q for q in loose_files(root) if q.suffix.lower() == ".parquet"]))
    elif splits("."):  # SPLIT/*.parquet
        found = "parquet", splits(".")
    elif len(configs) == 1:  # the Hub's converted layout, CONFIG/SPLIT/*.parquet
        found = "parquet", splits(configs[0])
    elif configs:
        raise ValueError(f"{root} holds the dataset configs {', '.join(configs)}: give data={root}/CONFIG "
                         "(for a dataset id from the Hugging Face cache: data=OWNER/NAME/CONFIG)")  # fmt: skip
    else:
        data = text_files(root)
        return (file_builder(data[0]), split_files(root, data)) if data else None
    others = strays(root, [])
    if others:  # note: an image or audio folder with a stray .parquet file is not read as a dataset in disguise
        raise ValueError(f"{root} mixes Parquet files with other files ({others[0].relative_to(root)}, ...): "
                         "give data= the Parquet files' folder, or move them out of the image / audio folder")  # fmt: skip
    return found


def open_text(path: Path):
    """A data file as text, decompressed by its suffix (COMPRESSED: .gz, .bz2, .xz)."""
    import bz2
    import gzip
    import lzma

    opener = dict(zip(COMPRESSED, (gzip.open, bz2.open, lzma.open))).get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8", errors="replace")


def first_bad_json_line(files: dict) -> str | None:
    """"FILE line N: what is wrong" for the first line of JSON-lines files that is not JSON (a file
    holding one JSON document — an array, or an object over several lines — is parsed whole), or
    None when every file parses (or cannot be re-read: the caller keeps its own reason)."""
    try:
        names = [name for found in files.values() for name in ([found] if isinstance(found, str) else found)]
        return next(filter(None, map(bad_json_line, names)), None)
    except Exception:  # noqa: BLE001  # a truncated or damaged compressed file: datasets' own reason stands
        return None


def bad_json_line(name: str) -> str | None:
    """first_bad_json_line of one file."""
    with open_text(Path(name)) as f:
        for n, line in enumerate(f, 1):  # note: file lines end at newlines only, not at U+2028 inside a string
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as e:
                if n > 1:
                    return f"{name} line {n}: {e.msg}"
                f.seek(0)  # perhaps one document over several lines: its own error, unless it is JSON lines
                try:
                    json.load(f)
                    return None
                except json.JSONDecodeError as whole:
                    where = e if whole.msg == "Extra data" else whole  # "Extra data": JSON lines after all, line 1 is at fault
                    return f"{name} line {where.lineno}: {where.msg}"
    return None


def is_hf_dataset(root: Path) -> bool:
    return hf_source(root) is not None


def quoted_tsv_cells(files: dict, rows: int = 10_000) -> list[tuple[str, int]]:
    """(file, count) for each plain .tsv file among `files` ({split: file or files}) with cells in
    CSV quoting in its first `rows` lines: wrapped in quotes with a quote doubled inside, or `""`
    (a sentence that is a quotation, "Who's there?", is not counted). Best effort: a file it cannot
    read is passed over (the load names what is wrong with it)."""
    found = []
    for path in [f for fs in files.values() for f in ([fs] if isinstance(fs, str) else fs)]:
        if not path.lower().endswith(".tsv"):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                cells = (c for _, line in zip(range(rows), f) for c in line.rstrip("\r\n").split("\t"))
                wrapped = sum(c == '""' or (len(c) > 3 and c[0] == c[-1] == '"' and '""' in c[1:-1]) for c in cells)
        except OSError:
            continue
        found += [(path, wrapped)] if wrapped else []
    return found


def say_quoted_tsv(files: dict, rows: int = 10_000) -> None:
    """A TSV is read without quoting (as Common Voice's are: a quote is a character); one written
    with CSV quoting (pandas' `to_csv(sep="\\t")` wraps a cell holding a tab, a newline or a quote in
    quotes) is then read with its quotes, and a quoted newline splits its row: said on stderr."""
    for path, wrapped in quoted_tsv_cells(files, rows):
        say(f"{path}: {wrapped:,} cells (in its first {rows:,} lines) are in CSV quoting (\"...\"\"...\"), read as written: a TSV has no "
            "quoting here (as Common Voice's); if it was written with CSV quoting (pandas' to_csv(sep='\\t') quotes a cell holding "
            "a tab, a newline or a quote), save it as .csv or .parquet")  # fmt: skip


def load_hf(root: Path):
    """A Dataset or DatasetDict, from local files only, without a saved output format."""
    import datasets

    how, files = hf_source(root)
    # note: datasets' file builders log a bad file before raising: the error below says it, in one line
    logs = {log: log.level for log in (logging.getLogger(f"datasets.packaged_modules.{b}.{b}") for b in ("json", "csv", "parquet"))}
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        if how == "saved":
            loaded = datasets.load_from_disk(str(root))
        elif files is not None:  # parquet / json / csv / tsv files by split
            builder, options = BUILDERS.get(how, (how, {}))
            loaded = datasets.load_dataset(builder, data_files=files, **options)
        else:
            loaded = datasets.load_dataset(str(root))  # the Hub's layout: splits from the file names, or the card's configs
    except Exception as e:  # noqa: BLE001  # datasets raises many kinds; the user needs one line naming the data
        while isinstance(e, datasets.exceptions.DatasetGenerationError) and (e.__cause__ or e.__context__):
            e = e.__cause__ or e.__context__  # note: "An error occurred while generating the dataset" hides the reason
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
        empty = isinstance(e, StopIteration) or "corresponds to no data" in str(e)  # note: a CSV / TSV of a header only
        reason = "no rows: an empty file?" if empty else " ".join(lines[:2])[:300]  # note: line 2 names the columns of a cast error
        if how == "json" and not empty:  # note: pyarrow counts rows from 0 within a block: name the file and line instead
            reason = first_bad_json_line(files) or reason
        hint = f"; a dataset with several configs: give data={root}/CONFIG, the config's folder" if "Config name is missing" in reason else ""
        if how == "tsv" and (quoted := quoted_tsv_cells(files)):
            hint += f"; {quoted[0][1]:,} cells of {Path(quoted[0][0]).name} are in CSV quoting: a quoted tab? (save it as .csv)"
        raise ValueError(f"{root}: not a dataset `datasets` can read here ({reason}){hint}") from None
    finally:
        for log, level in logs.items():
            log.setLevel(level)
    if how == "tsv":
        say_quoted_tsv(files)
    return loaded.with_format(None)  # note: a format saved with it (torch, pandas, arrow) would change what rows are


class HFRecord:
    """One row's image or audio of a Hugging Face dataset: `read_bytes()` and, as str(), its name
    (`PATH[split][row]`) — what a file's Path is to `open_image` / `load_audio`. A row holding a
    relative path (no bytes) refers to a file under `base`, the dataset's folder."""

    def __init__(self, dataset, row: int, column: str, name: str, base: Path):
        self.dataset, self.row, self.column, self.name, self.base = dataset, row, column, name, base

    def read_bytes(self) -> bytes:
        value = self.dataset[self.row][self.column]  # undecoded: {"bytes": ..., "path": ...}
        if value is None:
            raise ValueError(f"no {self.column} in this row")
        if value.get("bytes") is not None:
            return value["bytes"]
        if not value.get("path"):
            raise ValueError(f"its {self.column} has neither bytes nor a path")
        path = self.base / value["path"]  # note: an absolute path stays itself (datasets stores local files' paths so)
        if not path.is_file():
            raise FileNotFoundError(f"its file {path} does not exist")
        return path.read_bytes()

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def with_own_columns(read: Callable, cfg, keys: tuple[str, ...], data: str):
    """read(cfg) for `mmtok eval RUN --data DATA`, where cfg is the run's: with its `*_column` keys
    (its own data's, which eval cannot change), else, when DATA lacks them, with the columns found as
    in any data (said on stderr, with the first error); the first error where neither reads it."""
    try:
        return read(cfg)
    except ValueError as e:
        if not any(getattr(cfg, k, "") for k in keys):
            raise
        try:
            out = read(dataclasses.replace(cfg, **dict.fromkeys(keys, "")))
        except ValueError:
            raise e from None
        say(f"{data}: read with the columns found as in any data, not the run's ({e})")
        return out


def no_columns(cfg, keys: tuple[str, ...], data_key: str = "data") -> None:
    """Refuse `*_column` keys given for data that has no columns (a plain file or folder, or no data:
    a built-in corpus): they would be ignored. (Config.check, when a run starts: a run's later
    `eval --data` on a plain file leaves its column keys unread.) data_key: the key cfg.data was given as."""
    from .config import ConfigError

    given = [f"{k}={getattr(cfg, k)}" for k in keys if getattr(cfg, k, "")]
    if given and not cfg.data:
        raise ConfigError(f"{', '.join(given)}: {data_key} is empty: no dataset, so no columns to name; leave the column keys out, or "
                          f"give {data_key}= a dataset with columns")  # fmt: skip
    if not given or not (data := local_data(cfg.data)).exists() or is_hf_dataset(data):
        return
    raise ConfigError(f"{', '.join(given)}: {data} is not a dataset with columns (a Hugging Face dataset, Parquet, JSON lines or "
                      "CSV file); leave the column keys out")  # fmt: skip


def hf_splits(root: Path, kind: str, columns: tuple[str, str] = ("", "")) -> tuple:
    """(train, validation or None) of a Hugging Face dataset: lists of (HFRecord, label) for kind
    "image", (HFRecord, transcript) for "audio" (None where a row has none); for "text", the text
    column's rows joined by newlines. columns: (media, label) for images / audio, (text, "") for
    text; "" = found by type and name. A validation split without labels (the Hub's -1) is not used."""
    import datasets

    base = root if root.is_dir() else root.parent
    read = (lambda ds, name: hf_text(ds, name, columns[0])) if kind == "text" else lambda ds, name: hf_pairs(ds, kind, name, base, *columns)
    loaded = load_hf(root)
    if not isinstance(loaded, datasets.DatasetDict):
        return read(loaded, str(root)), None
    if "train" not in loaded:
        raise ValueError(f"{root}: a DatasetDict needs a 'train' split (it has {', '.join(loaded) or 'none'})")
    val = next((v for v in VAL_DIRS if v in loaded), None)
    train, held = read(loaded["train"], f"{root}[train]"), read(loaded[val], f"{root}[{val}]") if val else None
    if kind != "text" and held is not None and all(label is None or (kind == "audio" and not str(label).strip()) for _, label in held):
        what = "no labels (the Hub's -1)" if kind == "image" else "no transcripts (all empty: withheld?)"
        say(f"{root}[{val}] has {what}: holding out part of the training split instead")
        held = None
    return train, held


def pick_column(ds, name: str, given: str, candidates: list, key: str, what: str) -> str:
    """The column named by `key=` (`given`), else the one candidate; refused when none or several."""
    columns = ", ".join(f"{c} ({type(f).__name__})" for c, f in ds.features.items())
    if given:
        if given not in ds.features:
            raise ValueError(f"{name}: no column {given!r} ({key}=); columns: {columns}")
        return given
    if len(candidates) != 1:
        found = f"could be any of {', '.join(candidates)}" if candidates else "is missing"
        raise ValueError(f"{name}: {what} {found}; name it with {key}= (columns: {columns})")
    return candidates[0]


def hf_text(ds, name: str, column: str = "") -> str:
    """The text column (`text`, or the only string column) of a Hugging Face dataset, rows joined by newlines."""
    import datasets

    is_text = lambda f: isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")  # noqa: E731
    if column and column not in ds.features and "." in column:
        ds = ds.flatten()  # a nested field, `meta.text`, as `datasets` names it once flattened
    strings = [c for c, f in ds.features.items() if is_text(f)]
    if not column and "text" in ds.features and not is_text(ds.features["text"]):
        column = "text"  # refused below with what it holds, rather than called missing
    column = pick_column(ds, name, column, ["text"] if "text" in strings else strings, "text_column", "the text column")
    feature = ds.features[column]
    if not is_text(feature):
        if isinstance(feature, dict):
            holds = f"objects with the fields {', '.join(feature)} (name one: text_column={column}.FIELD)"
        else:
            mixed = type(feature).__name__ == "Json"  # (`datasets`' type for a JSON column of several types)
            holds = ("only nulls" if getattr(feature, "dtype", "") == "null" else "values of mixed types" if mixed
                     else f"{getattr(feature, 'dtype', type(feature).__name__)} values")  # fmt: skip
            row = None
            if mixed or isinstance(feature, datasets.Value):  # (not media: reading them decodes them)
                with contextlib.suppress(Exception):  # (best effort: the error below stands without it)
                    row = next(((i, v) for i, v in enumerate(ds[column]) if v is not None and not isinstance(v, str)), None)
            if row is not None:  # (the first row that is not text, named)
                holds += f", e.g. row {row[0]}: {type(row[1]).__name__} {SHORT.repr(row[1])}"
        raise ValueError(f"{name}: column {column!r} holds {holds}; expected text (a string in every row)")
    try:
        rows = list(ds[column])  # (read here: a Column decodes as it is iterated)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: column {column!r} is not UTF-8 text (invalid byte at offset {e.start} of a row)") from None
    text = "\n".join(t for t in rows if t)
    if empty := sum(1 for t in rows if not t):  # (no text to learn from: left out, and counted)
        say(f"{name}: {empty:,} of {len(rows):,} rows have no {column!r} text (null or empty); left out")
    if not text:
        raise ValueError(f"{name}: its text column {column!r} is empty")
    return text


def hf_pairs(ds, kind: str, name: str, base: Path, media: str = "", label: str = "") -> list:
    import datasets

    if len(ds) == 0:
        raise ValueError(f"{name}: no rows")
    feature = datasets.Image if kind == "image" else datasets.Audio
    typed = [c for c, f in ds.features.items() if isinstance(f, feature)]
    media = pick_column(ds, name, media, typed, f"{kind}_column", f"the {feature.__name__} column")
    if typed and media not in typed:  # (a column of file paths serves only a dataset without such a column)
        raise ValueError(f"{name}: {kind}_column={media} holds {getattr(ds.features[media], 'dtype', type(ds.features[media]).__name__)} values, and the dataset's "
                         f"{feature.__name__} column is {' or '.join(typed)}: give {kind}_column={typed[0]}")  # fmt: skip
    if kind == "image":
        found = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
        found += [c for c in LABEL_COLUMNS if c in ds.features and c not in found]
        label = pick_column(ds, name, label, found, "label_column", "the label column (a ClassLabel or label)")
    else:
        label = pick_column(ds, name, label, [c for c in TEXT_COLUMNS if c in ds.features], "text_column", "the transcript column")
    labels = ds.features[label]
    if not isinstance(labels, (datasets.ClassLabel, datasets.Value)):
        raise ValueError(f"{name}: column {label!r} holds {type(labels).__name__} values (several labels per row?); "
                         f"expected one {'class' if kind == 'image' else 'transcript'} per row")  # fmt: skip
    values = list(ds[label])
    if isinstance(labels, datasets.ClassLabel):  # -1: the Hub's "no label"
        values = [labels.int2str(v) if v is not None and 0 <= v < labels.num_classes else None for v in values]
    elif labels.dtype.startswith("int"):
        values = [None if v is not None and v < 0 else v for v in values]
    ds = ds.select_columns([media]).cast_column(media, feature(decode=False))
    pairs = [(HFRecord(ds, row, media, f"{name}[{row}]", base), None if v is None else str(v)) for row, v in enumerate(values)]
    return Labelled(pairs, labels.names if isinstance(labels, datasets.ClassLabel) else None)
