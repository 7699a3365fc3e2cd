"""whisper_folder: train or fine-tune the Whisper-style recogniser on your own recordings.

Layout (Hugging Face `audiofolder`): `PATH/metadata.csv` (or `metadata.jsonl`) with `file_name,transcription`
and the audio files beside it (WAV, FLAC, OGG, ... — anything libsndfile decodes), or without metadata a
transcript file beside each audio file (NAME.wav + NAME.txt or NAME.lab, at any depth; val_group=folder); or split
folders `PATH/train/metadata.csv` with `PATH/validation/` (or `valid/`, `val/`, `dev/`, `test/`); or a Common Voice
download (a locale's folder: clips/ beside train.tsv and dev.tsv, or one of its TSV files); or a LibriSpeech
split folder (SPEAKER/CHAPTER/*.trans.txt beside the FLAC files; val_group=speaker / chapter) or its top folder
(train-* splits to train, dev-clean to validate); or a Hugging Face
dataset (`save_to_disk`'s folder, Parquet files; its Audio column and a transcript column, recipes/folders.py).
Without a validation split, `val_fraction` of the utterances are held out (fixed seed); with
`val_group=COLUMN` (a speaker column: speaker_id, client_id, ...), `val_fraction` of its groups are,
every utterance of a held-out speaker with them, so validation hears no training voice.

Every file is decoded once when the run starts, so bad data stops the run before training with a
message naming the file — or, with `skip_bad_samples=true`, is skipped and counted:
- unreadable audio: a missing, empty (0-byte) or non-audio file, or a WAV with a broken header;
- audio that cannot be one training example: NaN / infinite samples, or longer than `max_frames`
  (10 ms frames; 3000 = 30 s) — cut long recordings into utterances first;
- a transcript with characters outside the vocabulary (fine-tuning: the pretrained run's characters;
  from scratch: the characters of the training transcripts), or longer than `max_text` allows.
Any sample rate (8 kHz, 44.1 kHz, 48 kHz, ...) is resampled to 16 kHz; stereo and multi-channel audio
is averaged to mono; silence is valid audio. Transcripts are lower-cased unless `lowercase=false`.

Start from a trained run (e.g. `whisper_digits`) with `init_from=RUN_DIR`: its architecture,
tokenizers and last checkpoint's weights are used, and only the training settings come from here.
Or start from Whisper's weights: openai-whisper's `init_from=tiny.pt` (any size; read without
unpickling) or a Hugging Face Whisper folder (`openai/whisper-small`'s config.json + model.safetensors):
the model reads 30 s windows (shorter clips padded, as Whisper reads them), writes Whisper's own
vocabulary after its prompt — `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` with
`language=`, or `<|startoftranscript|><|notimestamps|>` for `.en` models — and the transcript after
a space, as Whisper writes it; `lowercase=false` keeps Whisper's cased, punctuated text.
`max_steps=0` measures the weights as they are.

    mmtok train whisper_folder data=path/to/recordings max_steps=2000
    mmtok train whisper_folder data=path/to/recordings init_from=runs/whisper_digits-... lr=3e-4
    mmtok train whisper_folder data=path/to/recordings init_from=base.en.pt lowercase=false lr=1e-5 batch_size=16
    mmtok transcribe RUN_DIR recording.wav
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from models import is_hf_whisper_folder, load_hf_whisper_folder, load_openai_whisper
from tokenizers_mm import AudioTokenizer, BPETokenizer, load_audio, load_tokenizer
from tokenizers_mm.audio import HOP_LENGTH, SAMPLE_RATE, AudioError, to_waveform
from tokenizers_mm.text_bpe import WHISPER_LANGUAGES, openai_whisper_file

from . import whisper_digits
from .config import say, take_shape
from .folders import (AUDIO_SUFFIXES, TEXT_COLUMNS, find_metadata, held_out_count, hf_splits, is_hf_dataset, kept_split, no_columns, keep_good, load_hf,
                      hidden, local_data, metadata_column, named_pairs, read_metadata, say_added, say_trained_on, say_unused, scored_data,
                      split_dirs, walk_files, with_own_columns)  # fmt: skip
from .checkpoint import held_checkpoint
from .runs import load_run_info, load_trained
from .whisper_digits import (EOT, MULTILINGUAL_VOCAB, NO_TIMESTAMPS, SOT, TRANSCRIBE, SpeechSet, language_code, prompt_ids, prompt_language,
                             swap_language, text_example)  # fmt: skip


# Characters always in a from-scratch vocabulary, besides those of the training transcripts.
BASE_CHARS = " '-abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class Config(whisper_digits.Config):
    data: str = ""  # the audio folder (metadata.csv with file_name,transcription) or a Hugging Face dataset (required)
    audio_column: str = ""  # a Hugging Face dataset's Audio column; "" = its only one
    text_column: str = ""  # ... its transcript column; "" = the one of transcription / text / sentence / transcript / normalized_text
    init_from: str = ""  # a trained speech run to fine-tune, or Whisper's weights: openai-whisper's tiny.pt, ... or a Hugging Face folder
    language: str = ""  # multilingual Whisper weights: the prompt's language (de, German, ...; "" = en, or the init_from run's)
    val_fraction: float = 0.1  # held out when the folder has no validation split
    val_group: str = ""  # a metadata / dataset column (a speaker's id): whole groups are held out, not single utterances
    # (LibriSpeech: speaker / chapter; transcripts beside the audio files: folder, the top-level one)
    skip_bad_samples: bool = False  # skip (and count) bad files / transcripts instead of stopping
    lowercase: bool = True  # lower-case transcripts (as whisper_digits does)
    max_frames: int = 3000  # 10 ms frames per utterance at most (30 s, Whisper's window)
    max_text: int = 128
    max_steps: int = 1000
    warmup_steps: int = 100
    eval_every: int = 200
    ckpt_every: int = 200
    eval_utterances: int = 200

    NOT_USED = ("data_dir", "n_train", "n_test", *whisper_digits.Config.NOT_USED)  # whisper_digits' synthesized corpus

    def check(self) -> None:
        super().check()
        no_columns(self, ("audio_column",))  # (an audio folder has none; text_column names its metadata's transcript column)


# -- data -----------------------------------------------------------------------------------------
def normalise(text: str, cfg: Config) -> str:
    text = " ".join(text.split())
    return text.lower() if cfg.lowercase else text


def check_utterance(path: Path, transcript: str, audio_tok: AudioTokenizer, text_tok, prompt: list[int]) -> None:
    """Decode the file and tokenize the transcript once; raise with the file's name if either fails."""
    if transcript is None:
        raise ValueError(f"audio {path}: no transcript")
    wave, rate = load_audio(path)
    wave = to_waveform(wave, rate, f"audio {path}")  # (named as load_audio names a file: "skipped audio PATH: ...")
    if audio_tok.chunk and wave.shape[-1] > audio_tok.max_frames * HOP_LENGTH:  # note: chunk mode would cut it to the window silently
        raise AudioError(f"audio {path}: {wave.shape[-1] / SAMPLE_RATE:.1f} s is longer than the model's "
                         f"{audio_tok.max_frames * HOP_LENGTH / SAMPLE_RATE:g} s window; cut long recordings into utterances first")  # fmt: skip
    audio_tok.prepare(wave, f"audio {path}")  # the length check the tokenizer makes, without the spectrogram
    text_example(text_tok, transcript, str(path), prompt)


def check_utterances(pairs, cfg: Config, audio_tok: AudioTokenizer, text_tok, prompt: list[int], what: str) -> tuple[list, int]:
    """`check_utterance` on every (audio, transcript) pair once: the good pairs and how many were skipped."""
    check = lambda path, transcript: check_utterance(path, transcript, audio_tok, text_tok, prompt)  # noqa: E731
    return keep_good(pairs, check, cfg.skip_bad_samples, f"{what} audio")


def whisper_assets() -> Path:
    """openai-whisper's assets folder, which carries Whisper's vocabularies (gpt2.tiktoken, multilingual.tiktoken)."""
    found = openai_whisper_file("assets", "multilingual.tiktoken")
    if found is None:
        raise FileNotFoundError("Whisper's vocabulary comes with the openai-whisper package, which is not installed here: pip install openai-whisper")
    return found.parent


def whisper_weights(cfg: Config):
    """(model, audio tokenizer, text tokenizer) of an openai-whisper checkpoint (or a Hugging Face
    Whisper folder: config.json + model.safetensors): 30 s windows of
    log-mel frames (padded, as Whisper reads them), Whisper's own vocabulary and special tokens,
    and its prompt — <|startoftranscript|><|LANGUAGE|><|transcribe|><|notimestamps|>, or
    <|startoftranscript|><|notimestamps|> for an English-only model — written into cfg.prompt."""
    assets = whisper_assets()  # note: before the weights, which may take a while to read
    model = initial_weights(cfg)
    audio, text = model.config.modalities["audio"], model.config.modalities["text"]
    english_only = text.vocab_size < MULTILINGUAL_VOCAB
    ranks = assets / ("gpt2.tiktoken" if english_only else "multilingual.tiktoken")
    text_tok = BPETokenizer.whisper(ranks, text.vocab_size, max_positions=text.max_positions)
    audio_tok = AudioTokenizer(n_mels=audio.value_dim, slice_frames=1, chunk=True, max_frames=audio.max_positions)
    if english_only:  # no language or task token
        if cfg.language and language_code(cfg.language, None) != "en":
            raise ValueError(f"language={cfg.language!r}: an English-only Whisper model (.en) has no language token; it reads English")
        named = [c for c in WHISPER_LANGUAGES if f"<|{c}|>" in cfg.prompt]  # (its vocabulary carries them, never trained)
        if named:
            raise ValueError(f"prompt={cfg.prompt!r}: an English-only Whisper model (.en) has no language token (<|{named[0]}|>); "
                             f"its prompt is {SOT + NO_TIMESTAMPS}")  # fmt: skip
        cfg.language, cfg.prompt = "", cfg.prompt or SOT + NO_TIMESTAMPS
    elif not cfg.prompt:
        cfg.language = language_code(cfg.language or "en", text_tok)
        cfg.prompt = f"{SOT}<|{cfg.language}|>{TRANSCRIBE}{NO_TIMESTAMPS}"
    else:  # the prompt's own language token (<|de|>): the run's language, for the WER normaliser and transcripts
        cfg.language = prompt_language(prompt_ids(text_tok, cfg.prompt), text_tok)
    warn_fine_tuning(cfg)
    return model, audio_tok, text_tok


def initial_weights(cfg: Config):
    """The model init_from names: Whisper's weights (an openai-whisper file, a Hugging Face folder) or a speech run's."""
    if Path(cfg.init_from).is_file():
        return load_openai_whisper(cfg.init_from)
    if is_hf_whisper_folder(cfg.init_from):
        return load_hf_whisper_folder(cfg.init_from)
    return init_run(cfg)[0]


def init_run(cfg: Config):
    """load_trained of the speech run init_from names; a folder that is no run (nor Whisper's) named as such."""
    if not (Path(cfg.init_from) / "run.json").is_file():  # (not "no checkpoint in ...: train first")
        raise FileNotFoundError(f"init_from={cfg.init_from}: expected an openai-whisper .pt file, a Hugging Face Whisper folder "
                                "(config.json of model_type whisper + model.safetensors) or a speech run's directory (run.json)")  # fmt: skip
    return load_trained(cfg.init_from)


def warn_fine_tuning(cfg: Config) -> None:
    """On Whisper's weights (or a run on them), the from-scratch defaults undo what the model knows: say so."""
    if cfg.lr == Config.lr or cfg.lowercase:
        say(f"whisper_folder: on Whisper's weights, lr={cfg.lr:g}{' and lowercase=true' if cfg.lowercase else ''} may undo what it knows; "
            "fine-tuning usually takes lr=1e-5 lowercase=false")  # fmt: skip  # (a warning: stdout stays the output)


def run_prompt(cfg: Config, run_cfg, text_tok) -> tuple[str, str]:
    """(prompt, language) when fine-tuning a run: the run's, its language token replaced by an explicit `language=`."""
    prompt, language = cfg.prompt or getattr(run_cfg, "prompt", ""), getattr(run_cfg, "language", "")
    if not cfg.language:  # (a prompt of its own: the language its language token names, "" without one, as on Whisper's weights)
        return prompt, prompt_language(prompt_ids(text_tok, cfg.prompt), text_tok) if cfg.prompt else language
    ids = swap_language(prompt_ids(text_tok, prompt), text_tok, cfg.language, f"init_from={cfg.init_from}")
    return text_tok.decode(ids), language_code(cfg.language, None)


def layout_hint(folder: Path) -> str:
    """What to give instead of a folder above or below a layout read here: LibriSpeech's top folder
    (its splits named) or one of its speaker / chapter folders, a Common Voice release's top folder
    (its locales named); "" for any other."""
    if splits := librispeech_splits(folder):
        return f"; it holds LibriSpeech splits: give data= one of them ({', '.join(sorted(splits))})"
    if any(folder.glob("*.trans.txt")) or any(folder.glob("*/*.trans.txt")):
        return "; it is a LibriSpeech speaker or chapter folder: give data= its split folder (test-clean, train-clean-100, ...)"
    if locales := sorted(p.parent.name for p in folder.glob("*/train.tsv") if (p.parent / CV_CLIPS).is_dir()):
        return f"; it holds Common Voice locales: give data= one of them ({', '.join(locales)})"
    return ""


def read_split(folder: Path, text_column: str = "") -> list[tuple[Path, str]]:
    """(file, transcript) pairs of an audio folder: its metadata's `transcription` column (audiofolder's
    name), else its one column of TEXT_COLUMNS (text, sentence, ...), or `text_column`; without
    metadata, the transcript files beside the audio files (`read_sidecars`: a text_column is refused)."""
    meta = find_metadata(folder)
    if meta is None:
        if (pairs := read_sidecars(folder)) is not None:
            if text_column:
                raise ValueError(f"text_column={text_column}: {folder}'s transcripts are the text files beside its audio files: leave it out")
            return pairs
        raise FileNotFoundError(f"{folder}/metadata.csv does not exist: an audio folder needs metadata.csv with "
                                f"file_name,transcription (or metadata.jsonl, one JSON object per file), or a transcript "
                                f"beside each audio file (NAME.wav and NAME.txt){layout_hint(folder)}")  # fmt: skip
    column = metadata_column(meta, text_column, TEXT_COLUMNS, "text_column", "the transcript")
    pairs = read_metadata(meta, column, empty_ok=True)  # an empty transcript: a clip of silence
    say_empty(pairs, str(meta))
    return pairs


SIDECARS = (".txt", ".lab")  # a transcript file beside its audio (talk.wav, talk.txt; .lab: Montreal Forced Aligner's corpora)
SIDECAR_GROUP = "folder"  # val_group= for such a folder: the top-level folder each file lies in (a speaker's, in MFA's layout)


def read_sidecars(folder: Path) -> list[tuple[Path, str | None]] | None:
    """(audio file, transcript) of a folder whose audio files (any depth) each have their transcript
    beside them in a UTF-8 text file of the same name, NAME.txt or NAME.lab; None when none has.
    An audio file without one gets None, refused (or skipped) by name with the rest of the bad data."""
    audio = [p for p in walk_files(folder) if not hidden(p, folder) and p.suffix.lower() in AUDIO_SUFFIXES]
    sidecar = {p: next((q for q in (p.with_suffix(s) for s in SIDECARS) if q.is_file()), None) for p in audio}
    if not any(sidecar.values()):
        return None
    pairs = []
    for p, q in sidecar.items():
        try:
            pairs.append((p, None if q is None else q.read_text(encoding="utf-8-sig")))
        except UnicodeDecodeError as e:
            raise ValueError(f"{q}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if missing := sum(q is None for q in sidecar.values()):
        say(f"{folder}: {missing} of {len(audio)} audio files have no transcript beside them ({SIDECARS[0]} or {SIDECARS[1]})")
    say_empty(pairs, str(folder))
    return pairs


CV_CLIPS = "clips"  # Common Voice's download: clips/ beside train.tsv, dev.tsv, test.tsv, validated.tsv, ...


def common_voice(data: Path) -> tuple[Path, Path | None] | None:
    """(training TSV, validation TSV or None) of a Common Voice download (a locale's folder: clips/
    beside train.tsv and dev.tsv), or for one of its TSV files (`test.tsv`: all of it); None when
    `data` is neither."""
    if data.is_dir() and (data / "train.tsv").is_file() and (data / CV_CLIPS).is_dir():
        dev = data / "dev.tsv"
        return data / "train.tsv", dev if dev.is_file() and has_rows(dev) else None  # (a small locale's dev.tsv: a header alone)
    if data.is_file() and data.suffix == ".tsv" and (data.parent / CV_CLIPS).is_dir():
        return data, None
    return None


def has_rows(tsv: Path) -> bool:
    """Whether a TSV holds a row below its header."""
    with open(tsv, encoding="utf-8", errors="replace") as f:
        next(f, None)
        return any(line.strip() for line in f)


def read_common_voice(tsv: Path, column: str, empty_ok: bool = True) -> list[tuple[Path, str]]:
    """(clip, value of `column`) of each row of a Common Voice TSV (tab-separated, no quoting, as
    Common Voice writes it and its Hugging Face loader reads it): `path` names the clip in clips/."""
    import csv

    try:
        with open(tsv, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if not {"path", column} <= set(reader.fieldnames or []):
                raise ValueError(f"{tsv}: needs the columns path and {column} (Common Voice's; its header has "
                                 f"{', '.join(reader.fieldnames or []) or 'nothing'})")  # fmt: skip
            rows = list(enumerate(reader, start=2))
    except UnicodeDecodeError as e:
        raise ValueError(f"{tsv}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        raise ValueError(f"{tsv}: not readable as TSV ({e})") from None
    for n, r in rows:
        if None in r:  # (fields past the header's: a tab inside a sentence would shift the columns)
            raise ValueError(f"{tsv}, line {n}: {len(reader.fieldnames) + len(r[None])} fields, and the header names "
                             f"{len(reader.fieldnames)}: a tab inside a value?")  # fmt: skip
    more = " (a small locale's train.tsv may be empty: give data=its validated.tsv val_group=client_id)" if tsv.name == "train.tsv" else ""
    return named_pairs(rows, tsv, tsv.parent / CV_CLIPS, column, empty_ok, "path", more)


LIBRISPEECH_GROUPS = ("speaker", "chapter")  # val_group= for a LibriSpeech folder: its first and second folder levels


def librispeech(data: Path) -> tuple[list[Path], list[Path] | None, int] | None:
    """(training transcript files, validation ones or None, how many folders lie above the speakers')
    of LibriSpeech as it unpacks: a split folder (`LibriSpeech/test-clean`: SPEAKER/CHAPTER/
    SPEAKER-CHAPTER.trans.txt beside SPEAKER-CHAPTER-NNNN.flac), all of it; or its top folder
    (`LibriSpeech`), its train-* splits, and dev-clean (else dev-other) to validate. None otherwise."""
    if not data.is_dir() or find_metadata(data) is not None:
        return None
    if own := librispeech_splits(data, depth=0).get(""):
        return own, None, 0
    splits = librispeech_splits(data)
    train = [p for name in sorted(splits) if name.startswith("train") for p in splits[name]]
    val = next((splits[name] for name in ("dev-clean", "dev-other") if name in splits), None)
    return (train, val, 1) if train else None  # (splits without a train-*: layout_hint names them)


def librispeech_splits(folder: Path, depth: int = 1) -> dict[str, list[Path]]:
    """A folder's LibriSpeech transcript files (SPEAKER/CHAPTER/*.trans.txt, `depth` folders down) by
    the split folder they lie in ("" at depth 0), macOS's ._NAME copies passed over."""
    splits: dict[str, list[Path]] = {}
    for p in sorted(folder.glob("*/" * depth + "*/*/*.trans.txt")):
        if not hidden(p, folder):
            splits.setdefault("/".join(p.relative_to(folder).parts[:depth]), []).append(p)
    return splits


def read_librispeech(transcripts: list[Path]) -> list[tuple[Path, str]]:
    """(FLAC file, transcript) for each `ID TEXT` line of the transcript files."""
    pairs = []
    for trans in transcripts:
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{trans}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            name, _, text = line.strip().partition(" ")
            if not text.strip() or "/" in name or "\\" in name:
                raise ValueError(f"{trans}, line {n}: expected 'ID TRANSCRIPT' (LibriSpeech's: 19-198-0001 TEXT ...), got {line[:80]!r}")
            pairs.append((trans.parent / f"{name}.flac", text.strip()))
    return pairs


def say_empty(pairs: list, where: str) -> None:
    """Count the empty transcripts on stderr: taken as silence (nothing to write), but a blank cell
    may be a transcript left out by mistake. (None: a dataset row without one, not counted.)"""
    if empty := sum(1 for _, t in pairs if t is not None and not str(t).strip()):
        say(f"{where}: {empty} of {len(pairs)} files have an empty transcription, taken as silence (nothing to write)")


class Speech(NamedTuple):
    """A speech folder's or dataset's utterances, as its layout gives them: (audio, normalised
    transcript) pairs to train on, those to validate on (None: no validation split), and
    `groups(pairs)`: the `val_group` value (a speaker) of each of the training pairs."""

    train: list
    val: list | None
    groups: Callable[[list], list[str]]


def read_pairs(cfg: Config) -> Speech:
    """The utterances of cfg.data: a Common Voice download, a LibriSpeech folder, a Hugging Face
    dataset, or an audio folder (its metadata or its transcript files, or split folders of them)."""
    if not cfg.data:
        raise ValueError("whisper_folder needs data=PATH, a folder with metadata.csv (file_name,transcription) and audio files")
    data = local_data(cfg.data)
    if cv := common_voice(data):  # Common Voice's download: train.tsv (sentence) and dev.tsv, or one TSV of it
        train_tsv, val_tsv = cv
        if val_tsv is None and (data / "dev.tsv").is_file():
            say(f"{data / 'dev.tsv'} has no rows: holding out part of train.tsv instead")
        if cfg.audio_column:
            raise ValueError(f"audio_column={cfg.audio_column}: {data} is Common Voice's (its clips named by the path column): leave it out")
        train_pairs = read_common_voice(train_tsv, cfg.text_column or "sentence")
        val_pairs = read_common_voice(val_tsv, cfg.text_column or "sentence") if val_tsv else None
        for tsv, pairs in ((train_tsv, train_pairs), (val_tsv, val_pairs or [])):
            say_empty(pairs, str(tsv))
        groups = lambda pairs: by_file(pairs, dict(read_common_voice(train_tsv, cfg.val_group, empty_ok=False)))  # noqa: E731
    elif ls := librispeech(data):  # a LibriSpeech split folder (all of it: val_fraction held out), or its top folder
        if cfg.text_column:
            raise ValueError(f"text_column={cfg.text_column}: {data} is a LibriSpeech folder (its transcripts in *.trans.txt): leave it out")
        train_pairs, val_pairs = read_librispeech(ls[0]), read_librispeech(ls[1]) if ls[1] else None
        if ls[2]:  # (the top folder: which splits serve, said)
            name = lambda files: ", ".join(sorted({f.relative_to(data).parts[0] for f in files}))  # noqa: E731
            say(f"{data}: LibriSpeech's {name(ls[0])} to train, {name(ls[1]) if ls[1] else 'val_fraction of it'} to validate")
        groups = lambda pairs: librispeech_groups(pairs, data, cfg.val_group, ls[2])  # noqa: E731
    elif is_hf_dataset(data):  # a Hugging Face dataset: save_to_disk's folder, Parquet files
        train_pairs, val_pairs = hf_splits(data, "audio", (cfg.audio_column, cfg.text_column))
        for name, pairs in (("train", train_pairs), ("validation", val_pairs or [])):
            say_empty(pairs, f"{data}[{name}]")
        groups = lambda pairs: hf_groups(pairs, data, cfg.val_group)  # noqa: E731
    else:
        train_dir, val_dir = split_dirs(data)
        train_pairs = read_split(train_dir, cfg.text_column)
        val_pairs = read_split(val_dir, cfg.text_column) if val_dir else None
        groups = lambda pairs: metadata_groups(pairs, train_dir, cfg.val_group)  # noqa: E731
    norm = lambda pairs: [(f, t if t is None else normalise(t, cfg)) for f, t in pairs]  # noqa: E731  # None: a row without one
    return Speech(norm(train_pairs), norm(val_pairs) if val_pairs is not None else None, groups)


def by_file(pairs: list, groups: dict) -> list[str]:
    return [groups[f] for f, _ in pairs]


def librispeech_groups(pairs: list, data: Path, given: str, above: int) -> list[str]:
    """LibriSpeech's groups, named by its folders (SPEAKER/CHAPTER, `above` folders below `data`)."""
    if given not in LIBRISPEECH_GROUPS:
        raise ValueError(f"val_group={given}: {data} is a LibriSpeech folder, whose folders name the groups: "
                         f"val_group={' or val_group='.join(LIBRISPEECH_GROUPS)}")  # fmt: skip
    level = above + LIBRISPEECH_GROUPS.index(given)
    return ["/".join(f.relative_to(data).parts[above : level + 1]) for f, _ in pairs]


def hf_groups(pairs: list, data: Path, column: str) -> list[str]:
    import datasets

    ds = load_hf(data)
    ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds  # (read_pairs checked it has one)
    if column not in ds.features:
        raise ValueError(f"{data}[train]: no column {column!r} (val_group=); columns: {', '.join(ds.features)}")
    values = list(ds[column])  # (one read of the column: a row at a time is slow)
    if bad := next((p for p, _ in pairs if values[p.row] is None or not str(values[p.row]).strip()), None):
        raise ValueError(f"{bad}: no {column} value (val_group=): every row needs its group")
    return [str(values[p.row]) for p, _ in pairs]


def metadata_groups(pairs: list, folder: Path, column: str) -> list[str]:
    """An audio folder's groups: its metadata's `column`, or without metadata (transcript files beside
    the audio), each file's top-level folder ("." for the files at the top)."""
    if (meta := find_metadata(folder)) is None:
        if column != SIDECAR_GROUP:
            raise ValueError(f"val_group={column}: {folder} has no metadata (its transcripts lie beside the audio files): "
                             f"val_group={SIDECAR_GROUP} holds out whole folders (a speaker's each, say)")  # fmt: skip
        return [f.relative_to(folder).parts[0] if f.parent != folder else "." for f, _ in pairs]  # (SPEAKER/CHAPTER/...: the speaker)
    try:
        return by_file(pairs, dict(read_metadata(meta, column)))
    except ValueError as e:
        raise ValueError(f"val_group={column}: {e}") from None


def group_split(pairs: list, groups: list[str], cfg: Config) -> tuple[list, list]:
    """(training, held out): val_fraction of the groups held out whole (scikit-learn's
    GroupShuffleSplit, fixed seed), at least one and all but one."""
    from sklearn.model_selection import GroupShuffleSplit

    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"val_group={cfg.val_group}: the training data has {len(names)} group ({names[0]!r}); holding out whole "
                         "groups needs at least 2 (or leave val_group unset to hold out utterances)")  # fmt: skip
    n_val = held_out_count(len(names), cfg.val_fraction)
    train, held = next(GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=0).split(pairs, groups=groups))
    say(f"whisper_folder: held out {n_val} of {len(names)} {cfg.val_group} groups ({len(held)} of {len(pairs)} utterances)")
    return [pairs[i] for i in train], [pairs[i] for i in held]


def held_out(data: str):
    """build_data for scoring a run on another speech folder or dataset (`evaluate(run_dir,
    data=...)`): its validation split when it has one, else all of it, read with the run's
    tokenizers and prompt (a transcript the run's vocabulary cannot write is an error naming it,
    or with the run's skip_bad_samples a counted skip)."""

    def build(cfg: Config, run_dir: Path):
        trained, cfg.data = cfg.data, data
        train_pairs, val_pairs, _ = with_own_columns(read_pairs, cfg, ("audio_column", "text_column"), data)
        audio_tok, text_tok = load_tokenizer(run_dir / "tokenizers" / "audio"), load_tokenizer(run_dir / "tokenizers" / "text")
        prompt = prompt_ids(text_tok, cfg.prompt)
        pairs, bad = check_utterances(val_pairs if val_pairs is not None else train_pairs, cfg, audio_tok, text_tok, prompt, "evaluation")
        if bad:
            say(f"whisper_folder: skipped {bad} utterance(s) (skip_bad_samples=true)")  # (stdout: eval's JSON)
        if not pairs:
            raise ValueError(f"{data}: no usable utterances to evaluate on")
        say_trained_on(run_dir, trained, pairs, lambda root: read_pairs(replace(cfg, data=str(root))).train)
        return audio_tok, text_tok, None, SpeechSet(pairs, audio_tok, text_tok, prompt), None

    return build


def build_data(cfg: Config, run_dir: Path | None = None, evaluating: bool = False):
    """-> (audio tokenizer, text tokenizer, train set, test set, model to fine-tune or None).
    run_dir: a run being resumed or evaluated, whose saved tokenizers are used; `evaluating`: its
    training files are not read (an evaluation needs the held-out ones alone)."""
    speech = read_pairs(cfg)
    train_pairs, val_pairs = speech.train, speech.val
    if val_pairs is not None and not evaluating:
        say_unused(cfg, "whisper_folder", ("val_fraction", "val_group"))
    root = local_data(cfg.data)
    kept = kept_split(train_pairs, run_dir, root, evaluating) if val_pairs is None else None  # resume / eval: the run's own split, in its order
    drawn = val_pairs is None and kept is None
    if kept is not None:
        train_pairs, val_pairs = kept
        if cfg.val_group and not evaluating:  # rows added since the run began (trained on after the rest): none of a held-out group
            groups = speech.groups(train_pairs + val_pairs)  # (one read of the column)
            held = set(groups[len(train_pairs) :])
            keep = [g not in held for g in groups[: len(train_pairs)]]
            if left := keep.count(False):
                say(f"whisper_folder: {left} utterance(s) added since the run began are of held-out {cfg.val_group} groups: not trained on")
            train_pairs = [p for p, k in zip(train_pairs, keep) if k]
    elif val_pairs is None:
        from sklearn.model_selection import train_test_split

        if len(train_pairs) < 2:
            raise ValueError(f"{cfg.data}: {len(train_pairs)} utterance(s); need at least 2 to hold one out")
        if cfg.val_group:
            train_pairs, val_pairs = group_split(train_pairs, speech.groups(train_pairs), cfg)
        else:
            n_val = held_out_count(len(train_pairs), cfg.val_fraction)
            train_pairs, val_pairs = train_test_split(train_pairs, test_size=n_val, random_state=0)
    model = None
    if cfg.init_from and cfg.prompt and cfg.language and run_dir is None:
        raise ValueError("give language= or prompt=, not both (the prompt holds the language token)")
    if run_dir is not None:  # resuming: the tokenizers this run was started with
        audio_tok, text_tok = load_tokenizer(run_dir / "tokenizers" / "audio"), load_tokenizer(run_dir / "tokenizers" / "text")
        if cfg.init_from and held_checkpoint(run_dir) is None:  # killed before its first checkpoint: from init_from's weights again
            if not Path(cfg.init_from).exists():
                raise FileNotFoundError(f"{run_dir} was stopped before its first checkpoint: resuming starts again from "
                                        f"init_from={cfg.init_from}, which no longer exists")  # fmt: skip
            model = initial_weights(cfg)
    elif cfg.init_from and (Path(cfg.init_from).is_file() or is_hf_whisper_folder(cfg.init_from)):  # Whisper's weights
        model, audio_tok, text_tok = whisper_weights(cfg)
    elif cfg.init_from:
        model, toks = init_run(cfg)
        if set(toks) != {"audio", "text"} or SOT not in toks["text"].special_ids:
            raise ValueError(f"init_from={cfg.init_from} is not a speech run (it has tokenizers {sorted(toks)})")
        audio_tok, text_tok = toks["audio"], toks["text"]
        cfg.prompt, cfg.language = run_prompt(cfg, load_run_info(cfg.init_from)[2], text_tok)
        if isinstance(text_tok, BPETokenizer):  # a run on Whisper's weights (a from-scratch run reads characters)
            warn_fine_tuning(cfg)
    if model is not None:  # fine-tuning: the architecture is the model's (a value given for another is refused, not replaced)
        t = model.config.trunk
        take_shape(cfg, {"dim": t.dim, "depth": t.depth, "dec_depth": t.dec_depth, "num_heads": t.num_heads, "n_mels": audio_tok.n_mels,
                         "max_frames": audio_tok.max_frames, "max_text": text_tok.max_positions},  # (its windows and decoder positions)
                   f"init_from={cfg.init_from}", "whisper_folder")  # fmt: skip
        model.set_dropout(cfg.dropout).train()  # (the weights' model was built without the run's dropout)
    elif run_dir is None:
        from tokenizers_mm import CharTokenizer

        if cfg.language:  # (from scratch it names the transcripts' language: the WER normaliser's and transcribe's, no token)
            cfg.language = language_code(cfg.language, None)
            if cfg.language not in WHISPER_LANGUAGES:
                raise ValueError(f"language={cfg.language!r}: not a Whisper language code ({', '.join(WHISPER_LANGUAGES[:8])}, ...)")
        seen = {c for _, t in train_pairs + val_pairs for c in t or ""}  # (a character only in the held-out split: a token, not a refusal)
        chars = BASE_CHARS + "".join(sorted(seen - set(BASE_CHARS)))
        audio_tok = AudioTokenizer(n_mels=cfg.n_mels, slice_frames=1, chunk=False, max_frames=cfg.max_frames)
        text_tok = CharTokenizer(chars=chars, specials=(SOT, TRANSCRIBE, NO_TIMESTAMPS, EOT), max_positions=cfg.max_text)
    prompt = prompt_ids(text_tok, cfg.prompt)
    train_pairs, bad = ([], 0) if evaluating else check_utterances(train_pairs, cfg, audio_tok, text_tok, prompt, "training")
    val_pairs, bad_val = check_utterances(val_pairs, cfg, audio_tok, text_tok, prompt, "evaluation" if evaluating else "validation")
    if bad or bad_val:
        say(f"whisper_folder: skipped {bad} training and {bad_val} validation utterance(s) (skip_bad_samples=true)")
    if kept is not None and not evaluating:
        say_added(train_pairs, run_dir, root)
    if (not train_pairs and not evaluating) or not val_pairs:
        raise ValueError(f"{cfg.data}: no usable {'training' if not train_pairs else 'validation'} utterances left")
    test_set = SpeechSet(val_pairs, audio_tok, text_tok, prompt)
    if drawn:  # (recorded in RUN_DIR/split.json: resume and eval read these shares, whatever the folder holds by then)
        test_set.drawn_from = root
    return audio_tok, text_tok, SpeechSet(train_pairs, audio_tok, text_tok, prompt), test_set, model


# -- main -----------------------------------------------------------------------------------------
def main(cfg: Config, resume: bool = False) -> dict:
    return whisper_digits.run(cfg, "whisper_folder", build_data, resume)


def evaluate(run_dir, device=None, data=None) -> dict:
    """The run's validation WER and loss, or with data= (a speech folder or dataset) on that (`held_out`)."""
    own, data = (lambda cfg, run_dir: build_data(cfg, run_dir, evaluating=True)), scored_data(run_dir, data)  # noqa: E731
    return whisper_digits.evaluate_run(run_dir, own if data is None else held_out(data), device)


transcribe, transcribe_files = whisper_digits.transcribe, whisper_digits.transcribe_files
