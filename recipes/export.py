"""`mmtok export RUN_DIR OUT`: a trained run's last checkpoint as the reference library's model folder.

- a text language model (gpt_char, gpt_bpe) → a Hugging Face folder: `GPT2LMHeadModel`
  (config.json + model.safetensors) and the run's tokenizer as tokenizer.json, so
  `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)` give the
  same ids and logits;
- an image classifier (vit_digits, vit_mnist, vit_folder) → a timm folder: `VisionTransformer`
  weights, its model arguments and preprocessing (mean, std, size, interpolation, class names),
  for `timm.create_model("local-dir:OUT", pretrained=True)`;
- a speech recogniser on Whisper's windows and vocabulary (whisper_folder with `init_from=` Whisper's
  weights) → a Hugging Face Whisper folder: `WhisperForConditionalGeneration`, its generation config
  (the run's prompt: language and task, greedy, no token suppression, as `mmtok transcribe`
  decodes), `WhisperTokenizer` files and `WhisperFeatureExtractor`'s preprocessor_config.json, for
  `pipeline("automatic-speech-recognition", model=OUT)`; with OUT ending in `.pt`, an openai-whisper
  checkpoint file (`dims` + `model_state_dict`) for `whisper.load_model(OUT)` and the `whisper` command. Runs that read unpadded utterances
  (whisper_digits, whisper_folder from scratch) are refused: Whisper pads every clip to its window
  with silence and attends to all of it, so they would not compute what they learned.

The folder is written beside OUT and renamed into place, so an interrupted export leaves nothing
half-written; an OUT that exists and is not empty is refused. After writing, the export loads the
folder with the reference library (timm always; transformers when installed) and compares its
outputs with ours on random inputs (the largest difference is printed; one past float32 rounding
is refused); a tokenizer.json must encode a probe text as the run's tokenizer does.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from models import gpt2_export, load_torch_file, openai_whisper_export, timm_vit_export, whisper_export
from tokenizers_mm import BPETokenizer, TokenSet, collate
from tokenizers_mm.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE
from tokenizers_mm.base import cannot_write, umask_mode
from tokenizers_mm.hf import save_hf
from tokenizers_mm.text_bpe import WHISPER_LANGUAGES

from .runs import load_run_info, load_trained
from .vit import read_classes
from .whisper_digits import EOT, NO_TIMESTAMPS, SOT, language_tokens, prompt_ids

# the reference's logits may differ from ours by float32 rounding, which grows with their size (GPT-2's reach ±100s)
TOLERANCE, RELATIVE_TOLERANCE = 1e-4, 2e-6  # allowed: max(TOLERANCE, RELATIVE_TOLERANCE × largest |logit|)
OPENAI_WHISPER_FRAMES = 3000  # openai-whisper pads and cuts audio to 30 s (N_FRAMES)
MEL_TOLERANCE = 1e-3  # WhisperFeatureExtractor's log-mel (numpy, float64 STFT) against ours (torch, float32), on Whisper's (x + 4) / 4 scale


FORMATS = {"gpt2": "transformers GPT2LMHeadModel", "timm": "timm VisionTransformer", "whisper": "transformers WhisperForConditionalGeneration",
           "openai-whisper": "an openai-whisper checkpoint"}  # fmt: skip


def kind_of(model) -> str:
    """"gpt2", "timm" or "whisper": which reference a model exports to (decided by its modalities)."""
    c = model.config
    if list(c.modalities) == ["text"] and c.decoder_inputs == ["text"] and not c.encoder_inputs:
        return "gpt2"
    if list(c.modalities) == ["image"] and c.encoder_inputs == ["image"] and not c.decoder_inputs:
        return "timm"
    if c.encoder_inputs == ["audio"] and c.decoder_inputs == ["text"]:
        return "whisper"
    if list(c.modalities) == ["trajectory"]:  # (README: Export; a generalist with the control task is refused below)
        raise ValueError("export: Decision Transformer runs have no export: Hugging Face's DecisionTransformerModel adds one "
                         "position row to every token after its embed_ln, where this model learns a row per token type (return / "
                         "state / action), so its outputs could not be the run's; the run's checkpoint (model.safetensors) is the model")  # fmt: skip
    raise ValueError(f"export: a model reading {', '.join(c.modalities)} has no reference format here; text language models "
                     "(gpt_char, gpt_bpe) export to Hugging Face GPT-2, image classifiers (vit_*) to timm, speech recognisers on "
                     "Whisper's weights (whisper_folder init_from=...) to Hugging Face Whisper")  # fmt: skip


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_model(folder: Path, config: dict, sd: dict) -> None:
    """config.json + model.safetensors, as transformers' and timm's folders hold them."""
    write_json(folder / "config.json", config)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    umask_mode(folder / "model.safetensors")  # (safetensors writes 0600: a serving process of another user could not read it)


def write_gpt2(model, tokenizers, folder: Path) -> None:
    config, sd = gpt2_export(model, tokenizers["text"].special_ids)
    write_model(folder, config, sd)
    # generate's length limit: the position table (transformers' pipeline would ask 256 new tokens of a 64-position model,
    # past its table: an IndexError; `mmtok generate` slides its window instead)
    write_json(folder / "generation_config.json", {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                                                   "max_length": config["n_positions"]})  # fmt: skip
    save_hf(tokenizers["text"], folder)


def write_timm(model, tokenizers, folder: Path, run_dir: Path) -> None:
    try:
        labels = read_classes(run_dir)  # the ViT recipes' class names
    except FileNotFoundError:
        labels = None
    write_model(folder, *timm_vit_export(model, tokenizers["image"], labels))


def check_whisper_tokenizers(tokenizers, reference: str = "Hugging Face's Whisper") -> None:
    """Refuse what Whisper's feature extractor and tokenizer cannot reproduce."""
    audio, text = tokenizers["audio"], tokenizers["text"]
    if not audio.chunk:
        raise ValueError(f"Whisper export: this run reads each utterance unpadded; {reference} pads every clip to its "
                         "window with silence and attends to all of it, so it would not compute what the run learned. Runs on "
                         "Whisper's weights (whisper_folder init_from=tiny.pt, ...) read Whisper's windows and export")  # fmt: skip
    if audio.slice_frames != 1 or audio.max_frames * HOP_LENGTH % SAMPLE_RATE:
        raise ValueError(f"Whisper export: WhisperFeatureExtractor reads one 10 ms frame per token over whole seconds "
                         f"(this run: {audio.slice_frames} frames per token, a window of {audio.max_frames} frames)")  # fmt: skip
    if not isinstance(text, BPETokenizer) or not {SOT, EOT, NO_TIMESTAMPS} <= set(text.special_ids):
        raise ValueError(f"Whisper export: WhisperTokenizer is byte-level BPE with Whisper's special tokens ({SOT}, {EOT}, "
                         f"{NO_TIMESTAMPS}); this run's text tokenizer is a {type(text).__name__}")  # fmt: skip


def prompt_words(prompt: list[int], text_tok) -> list[str]:
    """The prompt's special tokens as text."""
    names = {i: s for s, i in text_tok.special_ids.items()}
    return [names[i] for i in prompt]


def prompt_parts(prompt: list[int], text_tok) -> tuple[str | None, str | None] | None:
    """(language code, task) of a Whisper prompt <|startoftranscript|> [LANGUAGE] [TASK] <|notimestamps|>
    (None for a part it lacks), as transformers' WhisperTokenizer writes its prefix; None for another prompt."""
    words = prompt_words(prompt, text_tok)
    if words[-1] != NO_TIMESTAMPS:
        return None
    inner = words[1:-1]
    language = inner.pop(0)[2:-2] if inner and inner[0][2:-2] in WHISPER_LANGUAGES else None
    task = inner.pop(0)[2:-2] if inner and inner[0] in ("<|transcribe|>", "<|translate|>") else None
    return None if inner else (language, task)


def whisper_generation(prompt: list[int], parts, text_tok, model, run_cfg) -> dict:
    """generation_config.json that makes transformers' Whisper `generate` start from the run's
    prompt and decode as `mmtok transcribe`: greedy, or the run's beam search as transformers' own
    (num_beams and length_penalty; it ranks by a length that counts the end token, stops by its own
    rule and has no patience: its text can differ), no token suppression, at most max_positions // 2
    new tokens after the prompt (openai-whisper's sample_len; `max_length`, to which Whisper's
    generate adds the prompt's length). Only a multilingual model
    gets a language table, and only Whisper's own prompt (language, task) leaves the language to
    it: any other prompt is forced as it is, since a multilingual model without one detects the
    language. parts: `prompt_parts(prompt)`."""
    specials = text_tok.special_ids
    words = prompt_words(prompt, text_tok)
    if words[-1] != NO_TIMESTAMPS:
        raise ValueError(f"Whisper export: transformers' Whisper ends its prompt with {NO_TIMESTAMPS} (this run's: {''.join(words)})")
    eot, t = specials[EOT], model.config.trunk
    languages = language_tokens(text_tok)  # none for an English-only model
    multilingual = bool(languages)
    layers = t.decoder_depth
    config = {"decoder_start_token_id": specials[SOT], "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
              # openai-whisper's sample_len, as transcribe: Whisper's generate adds the prompt's length to max_length (as the
              # Hub's Whisper configs, max_length 448); max_new_tokens met the max_length of 20 it sets and warned at every call
              "max_length": text_tok.max_positions // 2,
              "no_timestamps_token_id": specials[NO_TIMESTAMPS], "return_timestamps": False,
              "begin_suppress_tokens": None, "suppress_tokens": None, "do_sample": False, "num_beams": run_cfg.beam_size,
              "length_penalty": run_cfg.length_penalty, "is_multilingual": multilingual, "max_initial_timestamp_index": 50,
              "prev_sot_token_id": specials.get("<|startofprev|>"),
              # openai-whisper's alignment heads for a model it has no table for: every head of the upper half of the decoder
              "alignment_heads": [[i, h] for i in range(layers // 2, layers) for h in range(t.num_heads)]}  # fmt: skip
    if multilingual:
        config["lang_to_id"] = {f"<|{c}|>": i for c, i in languages.items()}
        config["task_to_id"] = {k: specials[f"<|{k}|>"] for k in ("transcribe", "translate")}
    if multilingual and parts is not None and None not in parts:  # Whisper's own prompt: language and task, changeable in generate
        config["language"], config["task"] = parts
    elif words[1:] != [NO_TIMESTAMPS] or multilingual:
        config["forced_decoder_ids"] = [[i, t] for i, t in enumerate(prompt[1:], 1)]
    return config


def feature_extractor_config(audio_tok) -> dict:
    """WhisperFeatureExtractor's preprocessor_config.json for the run's log-mel window."""
    seconds = audio_tok.max_frames * HOP_LENGTH // SAMPLE_RATE
    return {"feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor", "feature_size": audio_tok.n_mels,
            "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "n_fft": N_FFT, "chunk_length": seconds,
            "n_samples": seconds * SAMPLE_RATE, "nb_max_frames": audio_tok.max_frames, "padding_side": "right", "padding_value": 0.0,
            "return_attention_mask": False, "dither": 0.0}  # fmt: skip


def write_whisper(model, tokenizers, folder: Path, run_cfg) -> None:
    check_whisper_tokenizers(tokenizers)
    text_tok = tokenizers["text"]
    write_model(folder, *whisper_export(model, text_tok.special_ids))
    prompt = prompt_ids(text_tok, run_cfg.prompt)
    parts = prompt_parts(prompt, text_tok)
    write_json(folder / "generation_config.json", whisper_generation(prompt, parts, text_tok, model, run_cfg))
    write_json(folder / "preprocessor_config.json", feature_extractor_config(tokenizers["audio"]))
    if parts is None:
        print(f"export: WhisperTokenizer's prefix cannot write this run's prompt ({''.join(prompt_words(prompt, text_tok))}); its label "
              "ids will start otherwise than the run's training targets (generation is not affected)")  # fmt: skip
    if run_cfg.beam_size > 1:
        print(f"export: num_beams={run_cfg.beam_size}: transformers' beam search ranks finished beams by a length that counts "
              "<|endoftext|> and stops by its own rule (no patience), so its text can differ from mmtok transcribe's; greedy "
              "decoding (generate_kwargs={'num_beams': 1}) agrees with the run's greedy decoding")  # fmt: skip
    language, task = parts or (None, None)
    save_hf(text_tok, folder, whisper=True, language=language, task=task)


def whisper_probe(model, tokenizers, run_cfg):
    """(log-mel window of 3 s of random audio, decoder ids: the run's prompt + random tokens, our logits) for the Whisper checks."""
    audio_tok, text_tok = tokenizers["audio"], tokenizers["text"]
    wave = torch.randn(SAMPLE_RATE * 3, generator=torch.Generator().manual_seed(0)).numpy() * 0.1
    mel = audio_tok.encode(wave, SAMPLE_RATE)
    prompt = prompt_ids(text_tok, run_cfg.prompt)
    tail = torch.randint(0, text_tok.special_ids[EOT], (min(text_tok.max_positions, 16) - len(prompt),), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.tensor(prompt), tail])
    logits = model({"audio": collate([mel]), "text": collate([TokenSet("text", ids=ids)])}).logits
    return wave, mel.values.T[None], ids[None], next(iter(logits.values()))


@contextlib.contextmanager
def quiet_loading():
    """transformers' progress bar ("Loading weights") off while the check loads the export back."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def check_whisper(model, tokenizers, folder: Path, run_cfg) -> float | None:
    """Largest |logit difference| between transformers' Whisper loaded from `folder` and ours on
    the log-mel window of random audio and the run's prompt + random tokens; the folder's feature
    extractor must give our log-mel window. None without transformers."""
    try:
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    except ImportError:
        return None
    wave, mel, ids, ours = whisper_probe(model, tokenizers, run_cfg)
    theirs_mel = WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    gap = float((mel - theirs_mel).abs().max())
    if not gap <= MEL_TOLERANCE:
        raise ValueError(f"export: WhisperFeatureExtractor's log-mel window differs from the run's by {gap:.3g} (allowed {MEL_TOLERANCE:g})")
    with quiet_loading():
        ref = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    return difference(ours, ref(input_features=mel, decoder_input_ids=ids).logits)


def write_openai_whisper(model, tokenizers, path: Path) -> None:
    check_whisper_tokenizers(tokenizers, "openai-whisper")
    if tokenizers["audio"].max_frames != OPENAI_WHISPER_FRAMES:
        raise ValueError(f"openai-whisper export: openai-whisper reads 30 s windows ({OPENAI_WHISPER_FRAMES} frames); this run reads "
                         f"{tokenizers['audio'].max_frames}")  # fmt: skip
    dims, sd = openai_whisper_export(model, tokenizers["text"].special_ids)
    torch.save({"dims": dims, "model_state_dict": sd}, path)  # note: as openai-whisper saves; we read such files without unpickling


@torch.no_grad()
def check_openai_whisper(model, tokenizers, path: Path, run_cfg) -> float | None:
    """Largest |logit difference| between openai-whisper's model built from the file (read back
    without unpickling) and ours; None without openai-whisper."""
    try:
        from whisper.model import ModelDimensions, Whisper
    except ImportError:
        return None
    ckpt = load_torch_file(path)
    ref = Whisper(ModelDimensions(**ckpt["dims"]))
    ref.load_state_dict(ckpt["model_state_dict"])
    _, mel, ids, ours = whisper_probe(model, tokenizers, run_cfg)
    return difference(ours, ref.eval()(mel, ids))


@torch.no_grad()
def check_gpt2(model, tokenizers, folder: Path) -> float | None:
    """Largest |logit difference| between transformers' model loaded from `folder` and ours; None without transformers."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        return None
    with quiet_loading():
        ref = GPT2LMHeadModel.from_pretrained(folder).eval()
    m = model.config.modalities["text"]
    ids = torch.randint(0, m.vocab_size, (2, min(m.max_positions, 32)), generator=torch.Generator().manual_seed(0))
    ours = model({"text": collate([TokenSet("text", ids=row) for row in ids])}).logits
    return difference(next(iter(ours.values())), ref(ids).logits)


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest |ours - theirs|, refused past the tolerance for logits of this size."""
    found = float((ours - theirs).abs().max())
    allowed = max(TOLERANCE, RELATIVE_TOLERANCE * float(ours.abs().max()))
    if not found <= allowed:  # note: NaN fails too
        raise ValueError(f"export: the exported model's outputs differ from the run's by {found:.3g} (allowed {allowed:.3g})")
    return found


@torch.no_grad()
def check_timm(model, tokenizers, folder: Path) -> float:
    import timm

    ref = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    tok = tokenizers["image"]
    x = torch.randn(2, tok.channels, *tok.image_size, generator=torch.Generator().manual_seed(0))  # preprocessed pixels
    ours = model({"image": tok.tokens_batch(x)}).logits
    return difference(next(iter(ours.values())), ref(x))


HOST = socket.gethostname().replace(".", "_")


def remove_stale(out: Path) -> None:
    """Remove what earlier exports to `out` killed mid-write left: their temporary folders
    (`.OUT.PID@HOST.*.partial`) and, in a folder they were filling (`fill`), the files its marker
    lists, when OUT holds nothing else. Only this machine's, whose process is gone: a live export's, or
    another machine's, is left alone."""
    pattern = f".{glob.escape(out.name)}.*@{HOST}.*"
    stale = [*out.parent.glob(pattern + ".partial"), *(out.glob(pattern + ".filling") if out.is_dir() and not out.is_symlink() else [])]
    for path in stale:
        pid = path.name[len(out.name) + 2 :].split("@", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if path.suffix == ".partial":
                shutil.rmtree(path, ignore_errors=True)
                continue
            listed = {n for n in path.read_text().split("\n") if n and "/" not in n and n not in (".", "..")}
            present = {p.name for p in out.iterdir()} - {path.name}
            if not present <= listed:  # other files beside them: not ours to judge (the export is then refused: OUT is not empty)
                continue
            for name in present:  # (only what the killed export was moving in: the folder was empty when it began)
                target = out / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def fill(out: Path, tmp: Path) -> None:
    """Move the export written in `tmp` into the empty folder `out`, file by file (it may be the
    shell's current folder, which a rename cannot replace). A marker in `out` lists the files while
    they move, so that what a killed export left there is removed by the next (`remove_stale`)."""
    names = sorted(p.name for p in tmp.iterdir())
    marker = out / f".{out.name}.{os.getpid()}@{HOST}.{tmp.name.rsplit('.', 2)[-2]}.filling"  # (the temporary's own id)
    with os.fdopen(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as f:
        f.write("\n".join(names) + "\n")
    if sorted(p.name for p in out.iterdir()) != [marker.name]:  # filled meanwhile
        marker.unlink()
        raise FileExistsError(out)
    for name in names:
        (tmp / name).rename(out / name)
    marker.unlink()


def export(run_dir, out) -> dict:
    """Write the run's last checkpoint to `out` in its reference format (a folder; an OUT ending in
    .pt: an openai-whisper checkpoint file); returns what was written (format, folder, files, the
    checked difference)."""
    if not str(out).strip():  # (an unset shell variable: not the current folder, silently)
        raise ValueError("export: OUT is an empty string; give the path of a new folder (or of a .pt file)")
    run_dir, out = Path(run_dir), Path(os.path.abspath(out))  # (absolute: "." has no name to make a temporary folder beside it from)
    one_file = out.suffix.lower() == ".pt"
    if out.parent == out:
        raise FileExistsError(f"export: {out} is the file system's root; give the path of a new folder")
    managed = [Path(run_dir).resolve() / d for d in ("checkpoints", "tokenizers")]  # (what the run reads as its own, and prunes)
    if inside := next((d for d in managed if out.resolve().is_relative_to(d)), None):
        raise ValueError(f"export: {out} is inside the run's {inside.name}/ folder, which the run manages and reads as its own; "
                         f"give a folder outside it")  # fmt: skip
    if out.is_symlink():
        raise FileExistsError(f"export: {out} is a symbolic link; give the path of a new {'file' if one_file else 'folder'}")
    above = next((d for d in out.parents if d.exists() or d.is_symlink()), out)  # (none: OUT is the root, which exists)
    if not above.is_dir():
        raise NotADirectoryError(f"export: {above} is not a folder; {out.name} cannot be made inside it")
    if out.parent.is_dir():
        remove_stale(out)  # (a killed export's leftovers, first: they are not the user's files)
    if one_file and out.exists():
        raise FileExistsError(f"export: {out} exists; choose a new file name")
    if not one_file and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"export: {out} exists and is not an empty folder; choose a new one")
    empty_folder = not one_file and out.is_dir()  # (filled, not replaced: it may be the shell's ".")
    recipe, _, run_cfg = load_run_info(run_dir)
    if recipe == "generalist":
        raise ValueError("export: generalist runs have no export: their one trunk reads every task's tokens with a type embedding per "
                         "modality (as a prefix LM or an encoder-decoder), which no GPT-2, timm or Whisper model computes; the run's "
                         "checkpoint (model.safetensors) is the model")  # fmt: skip
    model, tokenizers = load_trained(run_dir)
    model = model.float().eval()
    kind = kind_of(model)
    if one_file:
        if kind != "whisper":
            raise ValueError(f"export: {out.name}: a .pt file is openai-whisper's checkpoint, for speech runs on Whisper's weights; "
                             f"this run exports to a folder ({FORMATS[kind]})")  # fmt: skip
        kind = "openai-whisper"
    tmp = out.parent / f".{out.name}.{os.getpid()}@{HOST}.{uuid.uuid4().hex[:8]}.partial"  # one of its own per export
    made = [d for d in out.parents if not d.exists()]  # (removed again when the export fails: a refused export leaves nothing)
    done = False
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()  # note: with the umask's mode (mkdtemp's 0700 would stay on the exported folder)
        except OSError as e:  # a read-only or full disk: the folder meant, not its temporary
            raise cannot_write(out, e, "export: ") from None
        try:
            if kind == "gpt2":
                write_gpt2(model, tokenizers, tmp)
                found = check_gpt2(model, tokenizers, tmp)
            elif kind == "timm":
                write_timm(model, tokenizers, tmp, run_dir)
                found = check_timm(model, tokenizers, tmp)
            elif kind == "whisper":
                write_whisper(model, tokenizers, tmp, run_cfg)
                found = check_whisper(model, tokenizers, tmp, run_cfg)
            else:
                write_openai_whisper(model, tokenizers, tmp / out.name)
                found = check_openai_whisper(model, tokenizers, tmp / out.name, run_cfg)
        except OSError as e:
            if e.filename is not None or not e.strerror:  # (a named file's error, or one of ours, says what it is)
                raise
            raise cannot_write(out, e, "export: ") from None  # a full disk found as a file closes: no file in its error
        try:  # note: never over what another export put there meanwhile (a rename replaces a file)
            if one_file:
                try:
                    os.link(tmp / out.name, out)  # fails when out exists
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links
                    (tmp / out.name).rename(out)
            else:
                if empty_folder:
                    fill(out, tmp)
                else:
                    tmp.rename(out)  # fails onto a folder that is not empty
        except OSError:
            if not out.exists():
                raise
            how = "was filled" if empty_folder else "appeared"
            raise FileExistsError(f"export: {out} {how} while exporting (another export?); choose a new "
                                  f"{'file name' if one_file else 'folder'}") from None  # fmt: skip
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            with contextlib.suppress(OSError):
                for d in made:
                    d.rmdir()
    files = [out.name] if one_file else sorted(p.name for p in out.iterdir())
    language = None  # a Whisper run's prompt's, for openai-whisper's command line
    if kind in ("whisper", "openai-whisper"):
        language = (prompt_parts(prompt_ids(tokenizers["text"], run_cfg.prompt), tokenizers["text"]) or (None,))[0]
    return {"recipe": recipe, "kind": kind, "format": FORMATS[kind], "folder": str(out), "files": files, "max_difference": found,
            "language": language}  # fmt: skip
