"""The Tokenizer contract every modality fulfils, and its versioned JSON save format.

A tokenizer holds no learned weights: it is deterministic preprocessing that turns a raw sample
into a `TokenSet` and declares (`spec`) what the model needs to embed its tokens. It saves itself
as `tokenizer.json` in a directory: `{"format": "tokenizers-mm/tokenizer", "version": 1,
"name": <registered name>, "config": <constructor arguments>}`, plus any extra files a subclass
writes. Loading never unpickles anything: the JSON is read and the registered class rebuilt.
"""

from __future__ import annotations

import json
import numbers
import os
from contextlib import contextmanager, suppress
from pathlib import Path

from .registry import get, name_of
from .tokenset import ModalitySpec, TokenBatch, TokenSet

FORMAT = "tokenizers-mm/tokenizer"
FORMAT_VERSION = 1
FILE_NAME = "tokenizer.json"


def current_umask() -> int:
    """The process's umask now: Linux reports it in /proc/self/status; elsewhere it is read by
    setting it (os.umask's only way), for an instant."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o077)
        os.umask(mask)
        return mask


def umask_mode(path) -> None:
    """Give a file the mode the umask gives new files now (0644 under 022, 0600 under 077), as the
    JSON beside it: safetensors writes its files 0600, which another user (a serving process)
    cannot read. Best effort: a filesystem without modes (vfat, some network mounts) keeps its own."""
    with suppress(OSError):
        os.chmod(path, 0o666 & ~current_umask())


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file and rename, so a reader never sees half a file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write, renamed onto `path` when the block ends: a reader
    (or a kill, or a full disk) never leaves half a file. On failure no temporary stays behind, and
    a full or read-only disk's error names the file meant, not the temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise cannot_write(path, e) from None
        raise


def cannot_write(path, e: OSError, who: str = "") -> OSError:
    """A failed write's error named by the file meant (not a temporary beside it): "cannot write
    PATH: No space left on device"; the CLI prints it without its [Errno N]."""
    return OSError(e.errno, f"{who}cannot write {path}: {e.strerror or e}")


@contextmanager
def locked(path):
    """Hold an exclusive lock on the file `path` (created if missing) for the block. Processes that
    build the same cached data (torchrun's ranks, runs side by side) take turns, and the later ones
    find the cache the first one made instead of rewriting files another is reading. A no-op
    where there is no fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_folder(path, what: str) -> Path:
    """`path` as the folder a cache of `what` lives in, refused in one line where a file stands
    there (a key that names a folder given a file's path): else "[Errno 17] File exists"."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, where the folder that holds {what} should be (give a folder's path: a new one, or the cache's own)")
    return path


def made_once(lock_path, check, make):
    """The cache: `check()` answers (the cache, or None when it is missing or stale; what else the
    check found, e.g. why), and where it is None, `make(answer)` makes it under `locked(lock_path)`,
    given the answer of a check made once more inside the lock: of processes building the same
    cache, the first makes it and the others reuse it. A finished cache is read without the lock
    (it may sit on a read-only disk)."""
    got = check()
    if got[0] is None:
        with locked(lock_path):
            got = check()
            if got[0] is None:
                return make(got)
    return got[0]


def source_bytes(source, what: str, error: type[Exception]) -> bytes:
    """The bytes of a source that is not a file path (an object with `read_bytes()` whose str()
    names it: a row of a Hugging Face dataset), or `error` naming it: "image X[3]: ..."."""
    try:
        data = source.read_bytes()
    except (OSError, ValueError) as e:  # the source says what is missing
        raise error(f"{what} {source}: {e}") from None
    if not data:
        raise error(f"{what} {source}: it is empty (0 bytes)")
    return data


COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"PK\x03\x04": "zip", b"(\xb5/\xfd": "zstd"}  # magic bytes


def read_utf8(path, what: str, compressed: str = "decompress it") -> str:
    """A UTF-8 text file's text (a leading byte-order mark dropped: editors on Windows write one), or
    one clear error naming `what` file and why: missing, a folder, compressed (`compressed`: what
    to do instead), or the offset of its first invalid byte."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {p} is a folder; expected a UTF-8 text file") from None
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        kind = next((k for magic, k in COMPRESSED_MAGIC.items() if raw.startswith(magic)), None)
        if kind:  # (a .txt.gz: compressed text, not text with a bad byte)
            raise ValueError(f"{what} {p} is {kind}-compressed; {compressed}") from None
        raise ValueError(f"{what} {p} is not UTF-8 (invalid byte 0x{raw[bom + e.start]:02x} at offset {bom + e.start})") from None


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, or raise one clear error naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _json_ok(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def id_list(tokens, who: str) -> list[int]:
    """One sequence of token ids as a list of ints, for a text decoder: a TokenSet, a 1-D tensor or
    array, or a list of ints (a 0-d tensor is one id). A (B, N) batch, float or bool ids are refused
    in one line naming `who` (a row of them reads `[tok.decode(row) for row in ids]`)."""
    if isinstance(tokens, TokenBatch):
        raise TypeError(f"{who}: decode reads one sequence of ids; a TokenBatch holds {tokens.shape[0]} rows, padded: decode each "
                        "sample's TokenSet, or the rows of its ids without their padding")  # fmt: skip
    ids = tokens.ids if isinstance(tokens, TokenSet) else tokens
    if ids is None:
        raise TypeError(f"{who}: decode reads ids; this TokenSet holds values")
    if hasattr(ids, "dtype") and hasattr(ids, "tolist"):  # a tensor or a numpy array
        kind = str(ids.dtype)
        if "int" not in kind and not (len(ids.shape) == 1 and ids.shape[0] == 0):  # (an empty array is float by default: no ids)
            raise TypeError(f"{who}: decode reads integer token ids, got {kind}")
        if len(ids.shape) > 1:
            raise ValueError(f"{who}: decode reads one sequence of ids, got shape {tuple(ids.shape)}; decode a batch row by row "
                             "([tok.decode(row) for row in ids])")  # fmt: skip
        ids = ids.tolist()
        return [ids] if isinstance(ids, int) else ids
    ids = list(ids)
    bad = next((i for i in ids if not isinstance(i, numbers.Integral) or isinstance(i, bool)), None)
    if bad is not None:
        raise TypeError(f"{who}: decode reads integer token ids, got {type(bad).__name__} {bad!r}")
    return [int(i) for i in ids]


class Tokenizer:
    """Base class: set the declarations, implement `encode`, `decode` and `config`."""

    name: str = ""  # set by @register
    modality: str = ""  # which embedder reads the tokens
    token_types: tuple[str, ...] = ("token",)
    vocab_size: int | None = None
    value_dim: int | None = None
    max_positions: int = 0

    @property
    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.modality, self.token_types, self.max_positions, self.vocab_size, self.value_dim)

    def encode(self, sample) -> TokenSet:
        raise NotImplementedError

    def decode(self, tokens):
        raise NotImplementedError(f"{type(self).__name__} does not decode")

    def config(self) -> dict:
        """JSON-able constructor arguments: `type(self)(**self.config())` rebuilds it."""
        raise NotImplementedError

    def save(self, directory) -> Path:
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "name": name_of(type(self)), "config": self.config()}
        bad = next((k for k, v in doc["config"].items() if not _json_ok(v)), None)  # e.g. a NumPy number or array
        if bad is not None:
            raise TypeError(f"tokenizer {doc['name']!r}: config() must hold JSON values (numbers, strings, lists, dicts); "
                            f"{bad!r} holds a {type(doc['config'][bad]).__name__}; convert it, e.g. with float() or .tolist()")  # fmt: skip
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"tokenizer {doc['name']!r}: {directory} is a file; save writes a folder (tokenizer.json and its files)")
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / FILE_NAME, doc)
        return directory

    @classmethod
    def from_config(cls, directory: Path, config: dict) -> "Tokenizer":
        """Rebuild from the saved config; subclasses with extra files read them from `directory`."""
        return cls(**config)

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        return load_tokenizer(directory, expect=cls)


def load_tokenizer(directory, expect: type | None = None) -> Tokenizer:
    """Rebuild a saved tokenizer of any registered kind (plugins included) from its JSON."""
    path = Path(directory) / FILE_NAME
    doc = read_json(path, "tokenizer")
    if doc.get("format") != FORMAT:
        raise ValueError(f"tokenizer: {path} is not a tokenizers-mm tokenizer file (format {doc.get('format')!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"tokenizer: {path} has format version {doc.get('version')}, this release reads {FORMAT_VERSION}")
    if not isinstance(doc.get("name", ""), str):
        raise ValueError(f"tokenizer: {path} names its tokenizer with a {type(doc['name']).__name__}; expected a registered name (a string)")
    cls = get(doc.get("name", ""))
    if expect is not None and expect is not Tokenizer and not issubclass(cls, expect):
        raise ValueError(f"tokenizer: {path} holds a {doc['name']!r} tokenizer, expected {expect.__name__}")
    try:
        return cls.from_config(Path(directory), doc["config"])
    except FileNotFoundError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"tokenizer: {path} has a bad config for {doc['name']!r}: {e}") from None
