"""`mmtok`: the command line. Each subcommand's --help says what it does.

    mmtok recipes                       list recipes and named configs
    mmtok tokenizers                    list registered tokenizers (plugins included)
    mmtok train RECIPE_OR_YAML [key=value ...]
    mmtok resume RUN_DIR                continue from the last checkpoint
    mmtok eval RUN_DIR                  evaluate the last checkpoint
    mmtok generate RUN_DIR --prompt ... sample from a generative recipe
    mmtok predict RUN_DIR IMAGE...      classify images
    mmtok transcribe RUN_DIR AUDIO...   transcribe speech
    mmtok show IMAGE [--run RUN_DIR]    draw the patch tokens (and CLS attention)

Errors print one line (`mmtok: error: ...`) and exit with status 2, never a bare traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
from functools import partial
from pathlib import Path

from .config import ConfigError, apply_values, launch_rank, named_configs, parse_overrides


def cmd_recipes(args):
    from .runs import all_recipes, get_recipe

    for name in all_recipes():
        try:
            doc = " ".join((get_recipe(name).__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph, on one line
        except ConfigError as e:  # a broken plugin: named, the others listed
            print(f"mmtok: warning: {e}", file=sys.stderr)
            doc = "(not usable: see the warning)"
        print(f"{name:16s} {doc}")
    print("\nnamed configs (mmtok train NAME):")
    from .config import read_yaml

    for name, path in named_configs().items():
        print(f"  {name:24s} recipe {read_yaml(path)['recipe']}  ({path})")


def cmd_tokenizers(args):
    from tokenizers_mm import get, list_tokenizers

    for name in list_tokenizers():
        cls = get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:16s} modality {cls.modality:12s} {doc[0] if doc else ''}")


def cmd_train(args):
    from .runs import make_config, resolve_run_dir, run_lock

    name, module, cfg = make_config(args.recipe, args.overrides)
    args.run_dir = resolve_run_dir(cfg, name)  # (for Ctrl-C's line: the run to resume)
    with run_lock(args.run_dir):
        module.main(cfg)


def cmd_resume(args):
    from .runs import load_run_info, run_lock

    _, module, cfg = load_run_info(args.run_dir)
    with run_lock(args.run_dir):
        resume_run(args, module, cfg)


def resume_run(args, module, cfg):
    """`mmtok resume` under the run's lock: its overrides checked, recorded, and the run continued."""
    from .checkpoint import checkpoint_step, latest_checkpoint
    from .runs import RESUME_OVERRIDES, launched_processes

    given = parse_overrides(args.overrides)
    for k in given:
        if k not in RESUME_OVERRIDES:
            raise ConfigError(f"resume takes only max_steps=N, lr_decay_steps=N and fsdp=true|false as overrides, got {k!r}")
    apply_values(cfg, given, "the command line")
    # note: every override checked here; train() records them in run.json once training starts (record_resumed), so a
    # refused resume changes nothing; the run's other values were checked when it started (or by older rules)
    if "max_steps" in given:
        last = latest_checkpoint(args.run_dir)
        done = checkpoint_step(last) if last is not None else 0
        if cfg.max_steps < 0:
            raise ConfigError(f"max_steps={cfg.max_steps} must be at least 0")
        if cfg.max_steps < done:
            raise ConfigError(f"max_steps={cfg.max_steps}: the run's last checkpoint is at step {done}; resume trains on to a later step")
    if "lr_decay_steps" in given and cfg.lr_decay_steps < 0:
        raise ConfigError(f"lr_decay_steps={cfg.lr_decay_steps} must be at least 0")
    if getattr(cfg, "fsdp", False):  # (how the run is spread, not what it trains: checkpoints load either way)
        if launched_processes() < 2:
            raise ConfigError(f"fsdp=true{'' if 'fsdp' in given else ' (the run was started so)'} shards the model over processes: "
                              "launch 2 or more with torchrun or accelerate launch, or resume with fsdp=false")  # fmt: skip
        if "fsdp" in given and hasattr(cfg, "check_fsdp"):
            cfg.check_fsdp()  # a recipe whose models cannot be sharded says so now (the generalist), and only that
    if hasattr(cfg, "check_precision"):
        cfg.check_precision(resume=True)  # (on this machine: a run started on a GPU)
    if hasattr(cfg, "check_launch"):
        cfg.check_launch()  # (this launch's processes: another number than the run was started with)
    module.main(cfg, resume=True)


COSMETIC = {"progress", "each"}  # options a recipe's function may go without (a plugin's predict without a progress bar)


def recipe_options(fn, recipe: str, command: str, **given) -> dict:
    """The options given on the command line (not None) for a recipe's function: --device checked
    (`inference_device`), and one the function does not take named rather than passed or ignored
    (COSMETIC ones dropped)."""
    import inspect

    from .runs import inference_device

    takes = inspect.signature(fn).parameters
    given = {k: v for k, v in given.items() if v is not None and (k in takes or k not in COSMETIC)}
    if "device" in given:
        inference_device(given["device"])
    for name in given:
        if name not in takes:
            why = {"device": " (it runs where it was written to)", "data": " (it evaluates on its own data)"}.get(name, "")
            raise ConfigError(f"--{name.replace('_', '-')}: mmtok {command} of a {recipe} run takes no {name}{why}")
    return given


def cmd_eval(args):
    from .runs import load_run_info

    recipe, module, _ = load_run_info(args.run_dir)
    if not hasattr(module, "evaluate"):  # (a plugin recipe may leave it out)
        raise ConfigError(f"recipe {recipe!r} defines no evaluate(run_dir, device=None): mmtok eval cannot score its runs")
    # note: float32 figures shown to 7 significant digits (0.1, not 0.10000000149)
    if args.data is not None and not args.data.strip():  # (an unset shell variable: not the run's own data, silently)
        raise ConfigError("--data: expected a file, a folder or a dataset, got an empty string")
    metrics = module.evaluate(args.run_dir, **recipe_options(module.evaluate, recipe, "eval", device=args.device, data=args.data))
    figures = {k: (float(f"{v:.7g}") if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in metrics.items()}
    print(json.dumps(figures, indent=2))  # JSON: a figure without a value (a WER of no reference words) is null


def recipe_function(args, name: str, what: str, **options):
    """The run's recipe's `name` function (generate / predict / transcribe), with --device and the
    other `options` given (not None) bound (`recipe_options`), or a clear error."""
    import functools

    from .runs import load_run_info

    recipe, module, _ = load_run_info(args.run_dir)
    if not hasattr(module, name):
        raise ConfigError(f"recipe {recipe!r} does not {what}")
    one_process(args.command)
    fn = getattr(module, name)
    return functools.partial(fn, **recipe_options(fn, recipe, args.command, device=args.device, **options))


def cmd_generate(args):
    generate = recipe_function(args, "generate", "generate text", num_samples=args.num_samples if args.num_samples > 1 else None)
    prompt = args.prompt
    if args.prompt_file is not None:  # nanoGPT's sample.py start="FILE:prompt.txt"
        from tokenizers_mm.base import read_utf8

        prompt = read_utf8(args.prompt_file, "--prompt-file")  # (missing, a folder, not UTF-8: named)
    out = generate(args.run_dir, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    print(out if args.num_samples == 1 else "\n---------------\n".join(out))  # several: nanoGPT's sample.py separator


def cmd_predict(args):
    out = Path(args.output_file) if args.output_file else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--output-file {out}: write .csv (file, then label and probability for each of the top k) or .json")
    predict = recipe_function(args, "predict", "classify images", batch_size=args.batch_size, progress=True)
    results = predict(args.run_dir, args.images, args.top_k)
    for r in results:
        print(r["file"] + ": " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"]))
    if out is not None:
        from tokenizers_mm.base import write_json_atomic, write_text_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            write_json_atomic(out, results)
        else:  # as timm's inference.py writes its results: a row per image
            import csv
            import io

            k = max((len(r["top"]) for r in results), default=0)
            text = io.StringIO()
            rows = csv.writer(text, lineterminator="\n")
            rows.writerow(["file", *[f"{c}_{n}" for n in range(1, k + 1) for c in ("label", "prob")]])
            rows.writerows([r["file"], *[v for t in r["top"] for v in (t["label"], t["prob"])]] for r in results)
            write_text_atomic(out, text.getvalue())
        print(f"wrote {out} ({len(results)} image{'s' if len(results) != 1 else ''})", file=sys.stderr)


def as_flags(message: str, options) -> str:
    """A recipe function's error in its command's terms: a keyword of several words, or one the
    error is about (`margin:`), as its flag (`word_timestamps` → `--word-timestamps`), any one given a
    value as the flag and that value (`windows=seek` → `--windows seek`). options: the command's
    parsed arguments (their names)."""
    names = sorted((n for n in options if n not in ("command", "run_dir", "audio")), key=len, reverse=True)

    def flag(m: re.Match) -> str:
        rest = m.string[m.end() :]
        if m[2] is None and (("_" not in m[1] and not rest.startswith(":")) or re.match(r"\w", rest)):  # (a plain word of the prose)
            return m[0]
        return "--" + m[1].replace("_", "-") + (" " if m[2] else "")

    return re.sub(rf"(?<![\w./-])({'|'.join(map(re.escape, names))})(=)?", flag, message) if names else message  # (not in a path)


def cmd_transcribe(args):
    from .transcripts import SUBTITLE_OPTIONS, write_transcripts

    transcribe = recipe_function(args, "transcribe_files", "transcribe audio", length_penalty=args.length_penalty, each=True)
    if args.threads:  # as openai-whisper's --threads: the CPU threads torch computes with
        import torch

        torch.set_num_threads(args.threads)
    stems = [Path(a).stem for a in args.audio]
    if args.output_dir and not args.output_format:  # as openai-whisper: an output folder alone gets every format
        args.output_format = "all"
    if args.output_format and len(set(stems)) < len(stems):
        raise ConfigError(f"--output-format: two audio files share a name ({next(s for s in stems if stems.count(s) > 1)}); their "
                          "transcripts would overwrite each other in one folder")  # fmt: skip
    options = {k: getattr(args, k) for k in SUBTITLE_OPTIONS if getattr(args, k)}
    if options and not args.word_timestamps:
        raise ConfigError(f"--{next(iter(options)).replace('_', '-')}: subtitle lines are made of words; it needs --word-timestamps")
    if args.output_dir:  # made now, after the other checks: a path that cannot be a folder fails before the work
        if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
            raise ConfigError(f"--output-dir {args.output_dir}: a file, not a folder")
        try:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--output-dir {args.output_dir}: cannot make the folder ({e.strerror})") from None
    failed, unwritten = [], []  # as openai-whisper's command: a file that cannot be read, or written, is skipped, the others' kept
    try:  # (the options are checked as the first result is asked for)
        results = transcribe(args.run_dir, args.audio, args.beam_size, args.min_pause, args.margin, args.language, args.task, fallback_options(args),
                             args.suppress if args.suppress_tokens is None else args.suppress_tokens, args.initial_prompt, args.condition_on_previous_text,
                             args.timestamps, word_timestamps=args.word_timestamps, alignment_heads=args.alignment_heads, windows=args.windows,
                             hallucination_silence_threshold=args.hallucination_silence_threshold, clip_timestamps=args.clip_timestamps,
                             carry_initial_prompt=args.carry_initial_prompt, prepend_punctuations=args.prepend_punctuations,
                             append_punctuations=args.append_punctuations, patience=args.patience)  # fmt: skip
        for path, result in results if "each" in transcribe.keywords else zip(args.audio, results):  # (a plugin's: the whole list)
            if isinstance(result, Exception):
                failed.append(path)
                print(f"transcribe: skipped {path}: {result}", file=sys.stderr)
                continue
            print(f"{path}: {result['text']}", flush=True)
            if args.output_format:
                try:
                    files = write_transcripts(result, path, args.output_format, args.output_dir or ".", options)
                except OSError as e:  # (a full disk, a folder in a file's place: this file's transcript files, not the others')
                    unwritten.append(path)
                    print(f"transcribe: {path}: transcript not written: {e.strerror or e}", file=sys.stderr)
                    continue
                print(f"  wrote {', '.join(str(f) for f in files)}", file=sys.stderr)
    except ValueError as e:  # the Python function's keywords as this command's flags
        raise ValueError(as_flags(str(e), vars(args))) from None
    said = [f"{len(paths)} of {len(args.audio)} audio files {what} ({', '.join(paths)})"
            for paths, what in ((failed, "not transcribed"), (unwritten, "transcribed but their transcripts not written")) if paths]  # fmt: skip
    if said:
        raise ValueError(f"{'; '.join(said)}: each named above")


def one_process(command: str) -> None:
    """Refuse a command that does its whole work in each process, launched as several (on one GPU)."""
    from .config import launched_processes

    if launched_processes() > 1:
        raise ConfigError(f"mmtok {command} runs in one process: launch it without torchrun / accelerate launch "
                          "(mmtok eval splits its batches over processes)")  # fmt: skip


def cmd_export(args):
    import shlex

    from .export import export

    one_process("export")  # (each would write the folder; all but one would find it there)
    r = export(args.run_dir, args.out)
    checked = "not checked (its library is not installed here)" if r["max_difference"] is None else f"max |difference| {r['max_difference']:.2g}"
    print(f"{r['folder']}: {r['recipe']} run as {r['format']} ({', '.join(r['files'])}); outputs against the run's: {checked}")
    if r["kind"] == "timm":
        print(f'load it: timm.create_model("local-dir:{r["folder"]}", pretrained=True)')
    elif r["kind"] == "openai-whisper":
        language = f" --language {r['language']}" if r.get("language") else ""
        print(f'load it: whisper.load_model("{r["folder"]}"), or: whisper AUDIO --model {shlex.quote(str(r["folder"]))}{language}')  # (a shell line)
    elif r["kind"] == "whisper":
        print(f'load it: pipeline("automatic-speech-recognition", model="{r["folder"]}"), or WhisperForConditionalGeneration / '
              f'WhisperProcessor.from_pretrained("{r["folder"]}")')  # fmt: skip
    else:
        print(f'load it: AutoModelForCausalLM.from_pretrained("{r["folder"]}"), AutoTokenizer.from_pretrained("{r["folder"]}")')


def cmd_show(args):
    from .folders import AUDIO_SUFFIXES

    one_process("show")  # (each would write the same picture)
    given = [f"--{k.replace('_', '-')}" for k in ("image_size", "patch_size") if getattr(args, k) is not None]  # an image's
    if Path(args.image).suffix.lower() in AUDIO_SUFFIXES:
        from .speech import show_audio

        if given:  # (they were ignored)
            raise ConfigError(f"{' / '.join(given)}: an image's; {args.image} is audio (its tokens: --slice-frames)")

        slice_frames, n_mels = args.slice_frames or 10, 80
        if args.run:  # a speech run: its audio tokenizer's mel bins and slices (unless --slice-frames says otherwise)
            audio = Path(args.run) / "tokenizers" / "audio"
            if not audio.is_dir():
                raise ConfigError(f"--run {args.run}: not a run with an audio tokenizer ({audio} is missing)")
            from tokenizers_mm import load_tokenizer

            run_tok = load_tokenizer(audio)
            slice_frames, n_mels = args.slice_frames or run_tok.slice_frames, run_tok.n_mels
        out = args.out or str(Path(args.image).with_suffix("").name + "_mel.png")
        print(show_audio(args.image, out, slice_frames, n_mels))
        return
    from .vit import show

    if args.slice_frames is not None:  # (ignored)
        raise ConfigError(f"--slice-frames: audio's; {args.image} is an image (its tokens: --patch-size)")
    if args.run and given:  # (they were ignored)
        raise ConfigError(f"{' / '.join(given)}: the run's image tokenizer sets its size and patches; leave {' and '.join(given)} out with --run")
    out = args.out or str(Path(args.image).with_suffix("").name + "_patches.png")
    print(show(args.image, out, args.run, args.image_size or 224, args.patch_size or 16))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def top_k_int(text: str) -> int | None:
    """generate's --top-k: a positive integer, or 0 for no cut (the whole vocabulary, as top_k=None)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, or 0 for no cut, got {text}")
    return value or None


def seed_int(text: str) -> int:
    """A random seed as training takes one (NumPy's legacy seeding, under Accelerate's set_seed, needs < 2**32)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**32 - 1}, got {text}")
    return value


def float_type(name: str, minimum: float, above: bool, expected: str):
    """An argparse type: a finite number above `minimum` (above=True) or at least it."""

    def parse(text: str) -> float:
        value = float(text)
        if not (value > minimum if above else value >= minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = name  # argparse names it in "invalid ... value"
    return parse


positive_float = float_type("positive number", 0.0, True, "a positive number")
nonnegative_float = float_type("number", 0.0, False, "a number >= 0")
seconds = float_type("seconds", 0.0, False, "seconds >= 0")
positive_int.__name__, seed_int.__name__, top_k_int.__name__ = "positive whole number", "seed", "whole number"  # argparse names them in "invalid ... value: 'ten'"


def optional_float(text: str) -> float | None:
    """A number, or none (a check turned off, as openai-whisper's command line reads None)."""
    if text.lower() == "none":
        return None
    if math.isnan(value := float(text)):
        raise argparse.ArgumentTypeError(f"expected a number, or none for no check, got {text}")
    return value


def optional_probability(text: str) -> float | None:
    """A probability, or none (the no-speech check turned off)."""
    value = optional_float(text)
    if value is not None and not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, or none for no check, got {text}")
    return value


def given_text(text: str) -> str:
    """A value that must say something: an empty one is most often an unset shell variable."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a value, got {text!r} (an unset shell variable?)")
    return text


optional_float.__name__ = optional_probability.__name__ = "number"  # argparse names them in "invalid ... value: 'abc'"


FALLBACK_FLAGS = ("temperature", "temperature_increment_on_fallback", "best_of", "compression_ratio_threshold", "logprob_threshold", "no_speech_threshold")


def fallback_options(args) -> bool | dict:
    """--fallback and its tuning flags (each implies it) as transcribe_files' `fallback`: True, False,
    or the options that differ from openai-whisper's defaults."""
    given = {k: getattr(args, k) for k in FALLBACK_FLAGS if hasattr(args, k)}  # flags not given are left out (argparse.SUPPRESS)
    if not given:
        return args.fallback
    if "temperature" in given or "temperature_increment_on_fallback" in given:
        # openai-whisper's temperatures: --temperature (0), then up by the increment (0.2) to 1.0; increment none: that one alone
        first, step = given.pop("temperature", 0.0), given.pop("temperature_increment_on_fallback", 0.2)
        if step is not None and not 0 < step <= 1:
            raise ConfigError(f"--temperature-increment-on-fallback {step}: expected a step in (0, 1], or none")
        if step is not None and first > 1:
            raise ConfigError(f"--temperature {first}: the fallback's temperatures go up to 1.0; a hotter one needs "
                              "--temperature-increment-on-fallback none")  # fmt: skip
        import numpy as np

        given["temperatures"] = (first,) if step is None else tuple(round(float(t), 6) for t in np.arange(first, 1.0 + 1e-6, step))
    return given


def add_device(s) -> None:
    s.add_argument("--device", default=None, help="where the model runs: cpu (the default), cuda, cuda:N, mps, or auto (this machine's "
                   "GPU when it has one, else the CPU), as openai-whisper's --device; a GPU computes in float32, as the CPU")  # fmt: skip


def version_line() -> str:
    import platform

    import torch

    import tokenizers_mm

    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    return f"mmtok (tokenizers-mm) {tokenizers_mm.__version__}; torch {torch.__version__}{cuda}; Python {platform.python_version()}; {platform.platform()}"


class VersionAction(argparse.Action):
    """--version: the line made when asked (torch's version needs its import, which other commands put off)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())  # (on stdout, as argparse's own version action)
        parser.exit()


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as the commands' own are (not the usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mmtok", description="tokenizers-mm: tokenize anything, train one transformer on it.")
    p.add_argument("--version", action=VersionAction, nargs=0,
                   help="print tokenizers-mm's version with torch's, Python's and the platform's (for a bug report), then exit")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.commands = sub.choices  # command -> its parser (main reports an argument it does not know through that parser's error)
    s = sub.add_parser("recipes", help="list recipes and named configs", description="List recipes and named YAML configs.")
    s.set_defaults(fn=cmd_recipes)
    s = sub.add_parser("tokenizers", help="list registered tokenizers", description="List registered tokenizers, plugins included.")
    s.set_defaults(fn=cmd_tokenizers)
    s = sub.add_parser("train", help="train a recipe", description="Train a recipe (by name, named config or YAML file) with key=value overrides.")
    s.add_argument("recipe", metavar="RECIPE_OR_YAML")
    s.add_argument("overrides", nargs="*", metavar="key=value", default=[], help="config keys (max_steps=100 lr=3e-4 ...); an unknown "
                   "one is refused, listing the recipe's keys")  # fmt: skip  # note: a default keeps it out of "required"
    s.set_defaults(fn=cmd_train)
    s = sub.add_parser("resume", help="continue a run from its last checkpoint", description="Continue a run from its last checkpoint (optionally max_steps=N to train longer, lr_decay_steps=N to keep the schedule's length, fsdp=true|false).")
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[], help="max_steps=N, lr_decay_steps=N, fsdp=true|false")
    s.set_defaults(fn=cmd_resume)
    s = sub.add_parser("eval", help="evaluate a run's last checkpoint", description="Evaluate a run's last checkpoint with its recipe's metric; prints JSON.")
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    s.add_argument("--data", default=None, metavar="PATH", help="score it on this data instead (vit_folder, whisper_folder, gpt_char, "
                   "gpt_bpe: data in the layout the recipe trains on, its validation split when it has one, else all of it)")  # fmt: skip
    add_device(s)
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("generate", help="sample from a trained generative model", description="Sample a continuation of --prompt from a run's last checkpoint.")
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    prompt = s.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n", help="the text to continue (default: a newline, as nanoGPT's sample.py)")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE", help="the prompt is this UTF-8 file's text (nanoGPT's start=FILE:...)")
    s.add_argument("--num-samples", type=positive_int, default=1, help="continuations drawn side by side, separated by a line of dashes "
                   "(default: 1)")  # fmt: skip
    s.add_argument("--max-new-tokens", type=positive_int, default=300, help="tokens to sample (default: 300)")
    s.add_argument("--temperature", type=nonnegative_float, default=0.8, help="0: the likeliest token each step (greedy) (default: 0.8)")
    s.add_argument("--top-k", type=top_k_int, default=200, help="sample among the k likeliest tokens; 0: all of them (default: 200)")
    s.add_argument("--seed", type=seed_int, default=0, help="the sampling's random seed (default: 0)")
    add_device(s)
    s.set_defaults(fn=cmd_generate)
    s = sub.add_parser("predict", help="classify images with a trained image run", description="Classify image files (or every image in "
                       "a folder) with a run's last checkpoint: top-k labels and probabilities, printed and optionally written as CSV or JSON.")  # fmt: skip
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders: their image files at any depth, sorted")
    s.add_argument("--top-k", type=positive_int, default=3, help="labels printed per image, likeliest first (default: 3)")
    s.add_argument("--batch-size", type=positive_int, default=None, help="images classified together (default: the recipe's, 64)")
    s.add_argument("--output-file", default=None, metavar="FILE", help="also write the results: .csv (a row per image: file, "
                   "label_1, prob_1, ...) or .json")  # fmt: skip
    add_device(s)
    s.set_defaults(fn=cmd_predict)
    s = sub.add_parser("transcribe", help="transcribe audio files with a trained speech run", description="Transcribe audio files (WAV, FLAC, ...) with a speech run's last checkpoint: each file is cut at its pauses into segments no longer than the model's window, silence skipped.")
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    s.add_argument("audio", nargs="+", type=given_text, metavar="AUDIO")
    s.add_argument("--beam-size", type=positive_int, default=None, help="beam search width (default: the run's beam_size; 1 = greedy)")
    s.add_argument("--patience", type=positive_float, default=None, help="with beam search: stop once beam size × this many beams have "
                   "ended, the likeliest then kept (openai-whisper's --patience; default: the run's patience, 1.0)")  # fmt: skip
    s.add_argument("--length-penalty", type=nonnegative_float, default=None, metavar="ALPHA", help="openai-whisper's --length_penalty: rank "
                   "beams (and the fallback's samples) by log-probability / ((5 + tokens) / 6) ** ALPHA, GNMT's; 0 to 1 (default: the run's "
                   "ranking, log-probability / tokens ** length_penalty; its default 1.0 is openai-whisper's)")  # fmt: skip
    s.add_argument("--windows", choices=["pauses", "seek"], default="pauses", help="pauses: cut each file at its pauses, silence "
                   "skipped, the stretches of speech joined into windows; seek (runs on Whisper's weights): openai-whisper's own 30 s "
                   "windows, each starting where the text before it ended, for its results on the same weights")  # fmt: skip
    s.add_argument("--hallucination-silence-threshold", type=seconds, default=None, metavar="SECONDS", help="with --windows seek and "
                   "--word-timestamps: skip silences longer than this around words that look made up (openai-whisper's option)")  # fmt: skip
    s.add_argument("--prepend-punctuations", default=None, metavar="CHARS", help="with --word-timestamps: punctuation joined to the "
                   "word after it (default: openai-whisper's)")  # fmt: skip
    s.add_argument("--append-punctuations", default=None, metavar="CHARS", help="with --word-timestamps: punctuation joined to the "
                   "word before it (default: openai-whisper's)")  # fmt: skip
    s.add_argument("--carry-initial-prompt", action="store_true", help="with --windows seek: read the initial prompt before every "
                   "window, not only the first (openai-whisper's option; --windows pauses always does)")  # fmt: skip
    s.add_argument("--clip-timestamps", default=None, metavar="START,END,...", help="with --windows seek: read only these clips of "
                   "each file (seconds; an odd last start runs to the end; openai-whisper's option)")  # fmt: skip
    s.add_argument("--min-pause", type=seconds, default=None, help="--windows pauses: files are cut into segments at pauses at least "
                   "this long (seconds; default 0.1)")  # fmt: skip
    s.add_argument("--margin", type=seconds, default=None, help="--windows pauses: seconds kept around each segment's sound "
                   "(default 0: cut tight, as whisper_digits' clips)")  # fmt: skip
    s.add_argument("--output-format", choices=["txt", "vtt", "srt", "tsv", "json", "all"], default=None,
                   help="also write each file's transcript as openai-whisper does: txt, vtt / srt subtitles (a cue per segment), tsv, json, or all")  # fmt: skip
    s.add_argument("--output-dir", type=given_text, default=None, help="where the transcript files go (default: here; with --output-dir alone, every "
                                                     "format is written); files are named after the audio")  # fmt: skip
    s.add_argument("--language", type=given_text, default=None, help="the language token for runs on multilingual Whisper weights (de; names such as German "
                                                   "with openai-whisper installed), or auto to detect each file's language on its first "
                                                   "window; English-only and from-scratch runs take en only (default: the run's)")  # fmt: skip
    s.add_argument("--fallback", action="store_true", help="openai-whisper's temperature fallback: a window whose text repeats itself "
                   "or is unlikely is decoded again, hotter (0.2 ... 1.0, best of 5); one that looks like silence is skipped")  # fmt: skip
    s.add_argument("--temperature", type=nonnegative_float, default=argparse.SUPPRESS, metavar="T", help="the fallback's first "
                   "temperature (default 0: greedy or beam search; above 0, the likeliest of --best-of samples; implies --fallback)")  # fmt: skip
    s.add_argument("--temperature-increment-on-fallback", type=optional_float, default=argparse.SUPPRESS, metavar="STEP", help="the fallback's "
                   "temperatures: --temperature, then up by STEP to 1.0 (default 0.2; none: --temperature alone; implies --fallback)")  # fmt: skip
    s.add_argument("--best-of", type=positive_int, default=argparse.SUPPRESS, metavar="N", help="the fallback's samples per hotter decoding; the "
                   "likeliest is kept (default 5; implies --fallback)")  # fmt: skip
    s.add_argument("--compression-ratio-threshold", type=optional_float, default=argparse.SUPPRESS, metavar="RATIO", help="a window whose text "
                   "compresses more than this is retried hotter (default 2.4; none: no check; implies --fallback)")  # fmt: skip
    s.add_argument("--logprob-threshold", type=optional_float, default=argparse.SUPPRESS, metavar="LOGPROB", help="a window whose average "
                   "log-probability is below this is retried hotter (default -1.0; none: no check; implies --fallback)")  # fmt: skip
    s.add_argument("--no-speech-threshold", type=optional_probability, default=argparse.SUPPRESS, metavar="P", help="a window whose no-speech "
                   "probability is above this, with a low log-probability, is skipped as silence (default 0.6; none: never; implies --fallback)")  # fmt: skip
    s.add_argument("--initial-prompt", default=None, metavar="TEXT", help="runs on Whisper's weights: text the model reads as said "
                   "before each window (names, spellings, a style), as openai-whisper's --initial_prompt")  # fmt: skip
    s.add_argument("--condition-on-previous-text", action="store_true", help="runs on Whisper's weights: each window reads the text "
                   "decoded before it in the file, as openai-whisper's transcribe does by default (windows decoded one at a time)")  # fmt: skip
    s.add_argument("--timestamps", action="store_true", help="runs on Whisper's weights: decode its timestamp tokens, so each window's "
                   "text comes in the segments they time (finer subtitle cues), as openai-whisper's transcribe does by default")  # fmt: skip
    s.add_argument("--word-timestamps", action="store_true", help="runs on Whisper's weights: a start, end and probability for each "
                   "word, aligned by the decoder's cross-attention (openai-whisper's --word_timestamps; in the json output)")  # fmt: skip
    s.add_argument("--alignment-heads", default=None, metavar="HEADS", help="with --word-timestamps: the decoder heads that align, as "
                   "layer:head,layer:head or the released Whisper model the weights are (tiny, base.en, small, large-v3, ...: the heads "
                   "openai-whisper lists for it); default: every head of the decoder's second half, openai-whisper's for a file")  # fmt: skip
    s.add_argument("--max-line-width", type=positive_int, default=None, help="with --word-timestamps: subtitle lines of at most this "
                   "many characters (with --max-line-count too, the words flow across segments into cues of that many lines)")  # fmt: skip
    s.add_argument("--max-line-count", type=positive_int, default=None, help="with --word-timestamps and --max-line-width: lines per cue "
                   "(alone it does nothing, as in openai-whisper)")
    s.add_argument("--max-words-per-line", type=positive_int, default=None, help="with --word-timestamps: at most this many words per cue "
                   "(a segment's words are cut into cues of this many; no effect with --max-line-width and --max-line-count, as in openai-whisper)")
    s.add_argument("--highlight-words", action="store_true", help="with --word-timestamps: a cue per word said, underlined (<u>) in its line")
    s.add_argument("--suppress", action="store_true", help="openai-whisper's default token suppression (runs on Whisper's weights): "
                   "no non-speech symbols or task tokens, no blank first token")  # fmt: skip
    s.add_argument("--suppress-tokens", default=None, metavar="IDS", help="token ids never decoded, separated by commas, -1 for "
                   "openai-whisper's non-speech symbols (its --suppress_tokens; implies --suppress: task tokens and a blank first token too; an "
                   "empty value, --suppress-tokens=, the blank first token alone)")  # fmt: skip
    s.add_argument("--threads", type=positive_int, default=None, help="CPU threads torch computes with (openai-whisper's --threads; "
                   "default: torch's, one per core)")  # fmt: skip
    s.add_argument("--task", choices=["transcribe", "translate"], default=None,
                   help="runs on multilingual Whisper weights: translate speech in any language into English text (default: the run's task)")
    add_device(s)
    s.set_defaults(fn=cmd_transcribe)
    s = sub.add_parser("export", help="write a run as a Hugging Face GPT-2 / Whisper or timm ViT folder",
                       description="Write a run's last checkpoint in its reference library's format: a text language model as a Hugging Face "
                                   "GPT2LMHeadModel folder with its tokenizer, an image classifier as a timm VisionTransformer folder, a "
                                   "speech recogniser on Whisper's weights as a Hugging Face Whisper folder (model, tokenizer, "
                                   "feature extractor, generation config), or with OUT ending in .pt as an openai-whisper checkpoint. "
                                   "What is written is loaded back with the reference library, when it is installed (transformers, "
                                   "timm, openai-whisper), and its outputs compared with the run's; otherwise it is marked unchecked.")  # fmt: skip
    s.add_argument("run_dir", type=given_text, metavar="RUN_DIR")
    s.add_argument("out", metavar="OUT", help="a new (or empty) folder; for an openai-whisper checkpoint, a new file ending in .pt")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("show", help="draw an image's patch tokens (and CLS attention), or audio's mel slices", description="Save a PNG of an image cut into patch tokens with their indices (with --run, also where the trained model's CLS token attends), or of an audio file's waveform and log-mel spectrogram with its token slices marked.")
    s.add_argument("image", metavar="IMAGE_OR_AUDIO")
    s.add_argument("--run", metavar="RUN_DIR", help="an image run: use its tokenizer and draw its CLS attention; a speech run: mark its audio token slices")
    s.add_argument("--out", help="output PNG (default: <image's name>_patches.png, or _mel.png for audio, in the current directory; "
                   "an existing file is replaced)")
    s.add_argument("--image-size", type=positive_int, default=None, help="without --run: the size images are resized to (default 224)")
    s.add_argument("--patch-size", type=positive_int, default=None, help="without --run: the patch size (default 16)")
    s.add_argument("--slice-frames", type=positive_int, help="audio: frames of 10 ms per token slice to mark (default: --run's, else 10)")
    s.set_defaults(fn=cmd_show)
    return p


def close_progress_bars() -> None:
    """Close the progress bars an error left open, so that its message starts a line of its own."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(std.tqdm, "_instances", ())) if std else []:  # note: tqdm's registry of live bars
        bar.close()


def main(argv=None) -> int:
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = partial(one_line_warning, shown)
    try:
        return run_command(argv)
    finally:
        warnings.showwarning = shown


def lone_accelerate_process() -> str | None:
    """What to say when `accelerate launch --num_processes N` (N > 1) may have started this one
    process alone: without --multi_gpu its simple launcher starts one, setting MASTER_ADDR for the N
    it was asked for but no process count (an MPI launch sets its own: not this). A MASTER_ADDR set
    before a one-process launch reads the same, so it is said as a condition. None otherwise."""
    from .config import launched_processes

    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and launched_processes() == 1:
        return ("this runs as one process: if accelerate launch was asked for several, it started one alone (on a machine "
                "without GPUs it needs --multi_gpu, without --cpu; or use torchrun --nproc_per_node N)")  # fmt: skip
    return None


def one_line_warning(shown, message, category, filename, lineno, file=None, line=None):
    """The toolkit's own warnings (`tokenizers_mm: ...`) as one line, `mmtok: warning: ...`, as its
    errors are; any other as Python shows it (`shown`)."""
    text = str(message)
    if text.startswith("tokenizers_mm: "):
        print(f"mmtok: warning: {text.removeprefix('tokenizers_mm: ')}", file=sys.stderr if file is None else file)
    else:
        shown(message, category, filename, lineno, file, line)


def run_command(argv) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # (argparse's own message sends one to `mmtok --help`, not to the command's)
        hint = ""
        if args.command in ("train", "resume") and extra[0].startswith("-"):
            key = extra[0].lstrip("-").split("=")[0].replace("-", "_")
            hint = f"; config keys are given as key=value ({key}=...), not as options"
        elif given := next((e.split("=")[0] for e in extra if e.startswith("--")), None):  # (nanoGPT's --max_new_tokens, a typo)
            flags = [f for a in parser.commands[args.command]._actions for f in a.option_strings if f.startswith("--")]
            near = [f for f in [given.replace("_", "-")] if f in flags] or difflib.get_close_matches(given, flags, n=2, cutoff=0.7)
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if args.command in ("train", "resume", "eval") and (lone := lone_accelerate_process()):
        print(f"mmtok: warning: {lone}", file=sys.stderr)
    if launch_rank() != 0:  # under torchrun, one process reports: the others' lines would repeat it
        sys.stdout = open(os.devnull, "w")  # (errors still go to stderr, from every process)
    try:
        args.fn(args)
        dist = sys.modules.get("torch.distributed")  # note: not imported here, so `mmtok --help` stays fast
        if dist is not None and dist.is_initialized():  # under torchrun / accelerate launch: every process got here
            dist.barrier()  # none leaves while another still talks to it
            dist.destroy_process_group()
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"mmtok: interrupted{interrupted_run(args)}", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, KeyError, TypeError, OSError, FloatingPointError) as e:
        close_progress_bars()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.filename is None and e.strerror:  # our own "cannot write OUT: ..." (no "[Errno 30]")
            msg = e.strerror
        say_error(msg)
        return 2
    except RuntimeError as e:
        if (oom := out_of_memory(e)) is not None:
            close_progress_bars()
            text = str(oom)
            if asked := re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text):  # (the CPU allocator's, after its source line)
                said = f"the CPU could not allocate {int(asked[1]) / 2**30:,.1f} GiB more"
            else:  # (CUDA's and MPS's name the amount and the device's memory on their first line)
                said = next((line.strip() for line in text.splitlines() if "out of memory" in line.lower()), (text.strip().splitlines() or [type(oom).__name__])[0])
            less = "a smaller batch_size (grad_accum=N keeps the batch), dim or depth, or grad_checkpoint=true, needs less"
            tip = {"train": f"; {less}", "resume": f"; a resumed run keeps its sizes: in a new run {less}",
                   "predict": "; a smaller --batch-size needs less"}.get(args.command, "")  # fmt: skip
            say_error(f"out of memory: {said}{tip}")
            return 2
        if not peer_stopped(e):
            raise
        close_progress_bars()  # (the process that failed printed its own line)
        print(f"mmtok: error: process {launch_rank()}: another process stopped (its error is printed above; one killed prints none, "
              f"its launcher names its exit code); this one stopped with it ({(str(e).splitlines() or [''])[0][:160]})", file=sys.stderr)  # fmt: skip
        return 2
    return 0


def interrupted_run(args) -> str:
    """What Ctrl-C during `mmtok train` / `resume` leaves to go on from: its last checkpoint, or a run
    started but not yet checkpointed, which resume starts again (a refused run leaves no folder)."""
    from .checkpoint import latest_checkpoint
    from .runs import RUN_FILE

    run_dir = getattr(args, "run_dir", None) if getattr(args, "command", None) in ("train", "resume") else None
    started = run_dir is not None and Path(run_dir, RUN_FILE).is_file()
    try:
        ckpt = latest_checkpoint(run_dir) if started else None
    except OSError:
        ckpt = None
    if ckpt is None:  # (a run stopped before its first checkpoint: its run.json, tokenizers and metrics so far)
        return f"; {run_dir} holds no checkpoint yet: `mmtok resume {run_dir}` starts it again from step 0" if started else ""
    return f"; {ckpt} is kept: `mmtok resume {run_dir}` goes on from it"


def say_error(msg) -> None:
    """`mmtok: error: MSG` on stderr, on a line of its own: another process's progress bar may hold the
    terminal's line, so a process other than the first starts its own."""
    print(f"{chr(10) if launch_rank() != 0 and sys.stderr.isatty() else ''}mmtok: error: {msg}", file=sys.stderr)


def out_of_memory(e: BaseException) -> BaseException | None:
    """The allocation failure `e` is or wraps (torch.compile and a DataLoader worker re-raise it), or
    None: a GPU's torch.OutOfMemoryError, a "CUDA error: out of memory" or MPS's "out of memory", or
    the CPU allocator's "can't allocate memory" (e.g. a model of dim=100000000). benchmarks/gpu_check.py
    asks it too."""
    import torch

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower() if isinstance(e, RuntimeError) else ""
        if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text:
            return e
        e = e.__cause__
    return None


def peer_stopped(e: RuntimeError) -> bool:
    """Whether `e` is this process losing its peers (launched as several: one of them stopped on an
    error of its own), not an error of this process."""
    from .config import launched_processes

    if launched_processes() < 2:
        return False
    text = str(e)  # (only the peer-loss messages: a process's own NCCL / gloo error is its own, printed as it is)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "communicator was aborted"))


if __name__ == "__main__":
    sys.exit(main())
