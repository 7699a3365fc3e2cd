"""The generalist: exact mixed packing, the prefix mask, cached decoding after padded audio,
weighted task sampling, growing a trained model, and a tiny run end to end (then grown)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from models import ModalityConfig, freeze_trained, grow
from recipes import generalist as g
from recipes.train import build_optimizer
from tokenizers_mm import TokenSet, collate, pack_examples

TINY = dict(dim=32, depth=2, num_heads=2, n_train=24, n_test=6, eval_utterances=6, eval_episodes=2, n_episodes=30, text_block=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("generalist")
    cfg = g.Config(**TINY, speech_dir=str(root / "speech"), rl_dir=str(root / "rl"), tasks="digits,speech,control,text", weights="1,1,1,1",
                   loss_weights="1,1,1,1", layout="prefix")  # fmt: skip
    tasks, weights = g.build_tasks(cfg)
    torch.manual_seed(0)
    return cfg, tasks, weights, g.build_model(cfg, tasks).eval()


def mixed_examples(tasks, weights, n, seed=0):
    mixed = g.MixedSet([t.train_set for t in tasks], weights)
    return [mixed[int(i)] for i in torch.randperm(len(mixed), generator=torch.Generator().manual_seed(seed))[:n]]


@pytest.fixture(params=["prefix", "encoder-decoder"])
def layout_model(request, tiny):
    """The tiny generalist in each trunk layout (random weights; the null memory token too)."""
    cfg, tasks, weights, model = tiny
    if request.param == "prefix":
        return model
    torch.manual_seed(0)
    cfg = g.Config(**{**vars(cfg), "layout": "encoder-decoder"})
    model = g.build_model(cfg, tasks).eval()
    torch.nn.init.normal_(model.null_memory, std=0.02)
    return model


@torch.no_grad()
def test_packed_examples_of_all_tasks_compute_what_each_computes_alone(tiny, layout_model):
    cfg, tasks, weights, _ = tiny
    model = layout_model
    examples = mixed_examples(tasks, weights, 24)
    assert {m for ex in examples for m in ex} == {"image", "audio", "text", "trajectory", "prose"}
    inputs, placement = pack_examples(examples, 128, g.STRIDE)
    assert max(seg for _, seg in placement) >= 1  # rows really hold several examples
    out = model(inputs)
    checked = 0
    for ex, (row, seg) in zip(examples, placement):
        alone = model({m: collate([ts]) for m, ts in ex.items()})
        for head, logits in alone.logits.items():
            m = model.config.heads[head].modality
            packed = out.logits[head][row][inputs[m].segments[row] == seg]
            torch.testing.assert_close(packed, logits[0], atol=1e-5, rtol=0)
            checked += 1
    assert checked == len(examples)
    report = g.padding_report(examples, 128)
    assert report["padding_packed"] < report["padding_unpacked"]


def test_task_gradient_norms_reach_exactly_the_stacks_each_head_uses(tiny, layout_model):
    """The loss_weights diagnostic: in the encoder-decoder layout the digit head's gradient stays in
    the encoder, the action head's in the decoder, the transcript's and prose's reach what they use."""
    cfg, tasks, weights, _ = tiny
    norms = g.task_gradient_norms(layout_model, mixed_examples(tasks, weights, 24), 128)
    assert set(norms) == {"digit", "lm", "action", "prose_lm"}
    if layout_model.encoder is None:  # prefix: one stack for everything
        assert all(n["decoder"] > 0 and "encoder" not in n for n in norms.values())
    else:
        assert norms["digit"]["encoder"] > 0 and norms["digit"]["decoder"] == 0
        assert norms["lm"]["encoder"] > 0 and norms["lm"]["decoder"] > 0
        assert norms["action"]["encoder"] == 0 and norms["action"]["decoder"] > 0
        assert norms["prose_lm"]["encoder"] == 0 and norms["prose_lm"]["decoder"] > 0


def test_the_null_memory_tokens_gradient_is_laid_out_as_the_token(tiny, layout_model):
    """One packed row (a process's share of a small step): the null token's gradient has its own
    strides, not the memory's (DDP copied such a gradient into its bucket and warned each process)."""
    if layout_model.null_memory is None:
        pytest.skip("the prefix layout has no null memory token")
    cfg, tasks, weights, _ = tiny
    inputs = pack_examples(mixed_examples(tasks, weights, 4), 512, g.STRIDE)[0]
    assert next(iter(inputs.values())).shape[0] == 1
    layout_model.zero_grad(set_to_none=True)
    sum(layout_model(inputs).losses.values()).backward()
    assert layout_model.null_memory.grad.stride() == layout_model.null_memory.stride()
    layout_model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_prefix_modalities_attend_both_ways_the_rest_causally(tiny):
    _, tasks, _, model = tiny
    image = tasks[0].train_set[0]["image"]
    later = TokenSet("image", values=image.values.clone(), positions=image.positions, types=image.types)
    later.values[-1] += 1.0  # change the last patch
    first = lambda ts: model({"image": collate([ts])}).logits["digit"][0, 0]  # noqa: E731  the CLS token
    assert not torch.allclose(first(image), first(later))  # CLS sees every patch
    traj = tasks[2].train_set[5]["trajectory"]
    moved = TokenSet("trajectory", values=traj.values.clone(), positions=traj.positions, types=traj.types, targets=traj.targets)
    moved.values[-1] += 1.0
    a, b = (model({"trajectory": collate([t])}).logits["action"][0] for t in (traj, moved))
    torch.testing.assert_close(a[:-1], b[:-1], atol=0, rtol=0)  # no token sees a later one


@torch.no_grad()
def test_cached_greedy_decoding_after_padded_audio_matches_each_utterance_alone(tiny, layout_model):
    """Padding in a batch of utterances changes no row's decoding: its tokens and their summed
    log-probability, which differ between utterances (random weights repeat one token for all, so
    the tokens alone would not show a row reading another's audio or padding)."""
    _, tasks, _, _ = tiny
    model = layout_model
    from recipes import whisper_digits as wd

    text_tok = tasks[1].tokenizers["text"]
    audio = [tasks[1].train_set[i]["audio"] for i in range(3)]
    assert len({len(a) for a in audio}) > 1  # different lengths: the batch is padded
    prompt = wd.prompt_ids(text_tok)
    rows, sums = wd.decode_rows(model, text_tok, collate(audio), 12, prompt, scored=True)
    alone = [wd.decode_rows(model, text_tok, collate([a]), 12, prompt, scored=True) for a in audio]
    assert rows == [r[0] for r, _ in alone]
    torch.testing.assert_close(torch.tensor(sums), torch.tensor([s[0] for _, s in alone]), atol=1e-4, rtol=1e-5)
    assert min(abs(a - b) for i, a in enumerate(sums) for b in sums[i + 1 :]) > 1e-3  # each utterance scores its own


def test_tasks_are_drawn_by_weight_and_every_example_is_covered():
    sets = [list(range(10)), list(range(100)), list(range(7))]
    mixed = g.MixedSet(sets, [2.0, 1.0, 1.0])
    assert [b / len(mixed) for b in mixed.blocks] == pytest.approx([0.5, 0.25, 0.25], abs=0.01)
    seen = [set() for _ in sets]
    for i in range(len(mixed)):
        t, j = mixed.locate(i)
        seen[t].add(j)
    assert [len(s) for s in seen] == [10, 100, 7]
    with pytest.raises(ValueError, match="unknown task 'sound'; tasks are digits, speech, control, text"):
        g.task_list(g.Config(tasks="digits,sound"))
    with pytest.raises(ValueError, match="distinct tasks"):
        g.task_list(g.Config(tasks="digits,digits"))
    with pytest.raises(ValueError, match="one non-negative number per task"):
        g.task_list(g.Config(tasks="digits,speech", weights="1"))
    for bad, message in (({"freeze_trained": True}, "freeze_trained=true keeps a grown run's trained parts as they are: it needs init_from"),
                         ({"layout": "prefix", "dec_depth": 7}, "dec_depth=7: layout=prefix is one stack of depth=4 blocks"),
                         ({"env": "Acrobot-v1"}, r"env='Acrobot-v1': the control task trains on the embedded CartPole-v1 episodes \(discrete "
                                                 r"actions\) and takes no data=; to train on your own episodes: mmtok train dt_offline")):  # fmt: skip
        with pytest.raises(ValueError, match=message):  # (accepted and ignored before)
            g.Config(**bad).check()
    from recipes.runs import make_config

    with pytest.raises(ValueError, match="config key 'eval_batches' does not apply to generalist"):
        make_config("generalist", ["eval_batches=7"])


def test_grown_model_keeps_what_it_learned_and_frozen_training_changes_only_the_new(tiny):
    cfg, tasks, weights, big = tiny
    old_tasks = [tasks[0], tasks[2]]  # digits + control
    torch.manual_seed(1)
    old = g.build_model(cfg, old_tasks).eval()
    config = g.model_config(cfg, tasks)  # + speech and text: new embedders, type rows, heads
    config.modalities["image"] = ModalityConfig(**{**vars(config.modalities["image"]), "token_types": [*config.modalities["image"].token_types, "category"]})
    grown = grow(old, config).eval()
    from dataclasses import replace

    with pytest.raises(ValueError, match="grow: the trunk must stay the same"):  # its weights' shapes
        grow(old, replace(config, trunk=replace(config.trunk, depth=config.trunk.depth + 1)))
    wet = grow(old, replace(config, trunk=replace(config.trunk, dropout=0.3, flash=not config.trunk.flash)))  # no weight: free
    assert wet.config.trunk.dropout == 0.3 and old.config.trunk.dropout != 0.3  # (a grown run with another dropout was refused)
    for change, field in ((dict(prefix_inputs=[*config.prefix_inputs, "trajectory"]), "prefix_inputs"),
                          (dict(decoder_inputs=config.decoder_inputs[::-1]), "decoder_inputs"), (dict(subset_inputs=False), "subset_inputs")):  # fmt: skip
        with pytest.raises(ValueError, match=f"grow: .*{field}"):  # each would change what the old inputs compute
            grow(old, replace(config, **change))
    probe = {"image": collate([tasks[0].train_set[i]["image"] for i in range(4)]),
             "trajectory": collate([tasks[2].train_set[i]["trajectory"] for i in range(4)])}  # fmt: skip
    with torch.no_grad():
        before = old(probe).logits
        after = grown(probe).logits
    for head in before:
        assert torch.equal(before[head], after[head])
    import gc

    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    hooks = len(_global_optimizer_pre_hooks), len(_global_optimizer_post_hooks)
    doomed = grow(old, config)
    freeze_trained(doomed, old.config)  # process-wide step hooks, removed with the model
    assert (len(_global_optimizer_pre_hooks), len(_global_optimizer_post_hooks)) == (hooks[0] + 1, hooks[1] + 1)
    del doomed
    gc.collect()
    assert (len(_global_optimizer_pre_hooks), len(_global_optimizer_post_hooks)) == hooks
    freeze_trained(grown, old.config)
    norms = g.task_gradient_norms(grown, mixed_examples(tasks, weights, 8), 256)  # it raised on the frozen parameters
    assert norms and all(per_head == {} for per_head in norms.values())  # the whole trunk is frozen: no stack left to measure
    new_params = {k: p.detach().clone() for k, p in grown.named_parameters() if p.requires_grad}
    assert any(k.startswith("embedders.prose") for k in new_params) and "heads.lm.proj.weight" not in new_params  # tied to text's table
    grown.train()
    plain = torch.optim.AdamW([p for p in grown.parameters() if p.requires_grad], lr=1e-2)  # decays every weight it holds (0.01)
    for step, opt in enumerate([build_optimizer(grown, cfg)] * 2 + [plain] * 2):
        inputs, _ = g.PackCollate(256)(mixed_examples(tasks, weights, 16, seed=step))
        grown(inputs).loss.backward()
        opt.step()
        opt.zero_grad()
    grown.eval()
    with torch.no_grad():
        again = grown(probe).logits
    for head in before:
        assert torch.equal(before[head], again[head])  # old tasks exactly as trained
    changed = [k for k, p in grown.named_parameters() if p.requires_grad and not torch.equal(p, new_params[k])]
    assert any(k.startswith("embedders.prose") for k in changed) and any(k.startswith("embedders.audio") for k in changed)
    half = grow(old.to(torch.bfloat16), config)  # a bf16 model grows into a bf16 model, every trained weight kept
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    from models.grow import TYPE_TABLE

    assert all(torch.equal(half.state_dict()[k], v) for k, v in old.state_dict().items() if k != TYPE_TABLE)
    with pytest.raises(ValueError, match="trunk must stay the same"):
        config.trunk = type(config.trunk)(dim=64, depth=2, num_heads=2, mode="decoder")
        grow(old, config)


def test_generalist_trains_end_to_end_then_grows_a_task_without_forgetting(tmp_path, tiny, capsys, monkeypatch):
    cfg, *_ = tiny
    common = [f"{k}={v}" for k, v in TINY.items()] + [f"speech_dir={cfg.speech_dir}", f"rl_dir={cfg.rl_dir}", "row_tokens=256",
                                                      "eval_every=100", "log_every=2", "warmup_steps=2"]  # fmt: skip

    from recipes.cli import main

    def train(*args):  # in this process, as `mmtok train` runs it (the subprocesses' start-up is most of such a tiny run)
        assert main(["train", "generalist", *common, *args]) == 0, capsys.readouterr().err[-3000:]
        return capsys.readouterr()

    first = tmp_path / "first"
    train(f"run_dir={first}", "max_steps=6", "batch_size=12", "weights=4,4,4")
    r1 = json.loads((first / "results.json").read_text())
    assert {"digits_accuracy", "speech_wer", "control_return"} <= set(r1)
    grown = tmp_path / "grown"
    p = train(f"run_dir={grown}", f"init_from={first}", "freeze_trained=true", "tasks=digits,speech,control,text", "weights=1,1,1,3",
              "loss_weights=1,1,1,1", "max_steps=4", "batch_size=12")  # fmt: skip
    assert "new prose, prose_lm" in p.out
    r2 = json.loads((grown / "results.json").read_text())
    assert "text_loss" in r2
    for key in ("digits_accuracy", "speech_wer", "control_return"):
        assert r2[key] == r1[key], key  # frozen: the old tasks are exactly as trained
    first.rename(tmp_path / "moved")  # the grown run resumes without its parent on disk
    assert main(["resume", str(grown), "max_steps=6"]) == 0, capsys.readouterr().err[-3000:]
    r3 = json.loads((grown / "results.json").read_text())
    assert all(r3[key] == r1[key] for key in ("digits_accuracy", "speech_wer", "control_return"))  # still frozen
    capsys.readouterr()
    assert main(["export", str(grown), str(tmp_path / "exported")]) == 2 and not (tmp_path / "exported").exists()
    assert "export: generalist runs have no export: their one trunk reads every task's tokens" in capsys.readouterr().err
    away = [(Path(cfg.speech_dir) / "train", tmp_path / "speech_train"), (Path(cfg.rl_dir), tmp_path / "rl")]
    for there, aside in away:  # an evaluation reads the held-out data alone: the training corpus and episodes are not made again
        there.rename(aside)
    assert main(["eval", str(grown), "--device", "auto"]) == 0  # every task's metric again (auto: the GPU when there is one)
    assert not any(there.exists() for there, _ in away)
    for there, aside in away:
        aside.rename(there)
    again = json.loads(capsys.readouterr().out)
    assert again["digits_accuracy"] == pytest.approx(r3["digits_accuracy"], rel=1e-6) and again["text_loss"] == pytest.approx(r3["text_loss"], rel=1e-4)
    (tmp_path / "moved").rename(first)
    # killed before its first checkpoint (none left): a resume grows it from the parent again, frozen weights and all
    shutil.rmtree(grown / "checkpoints")
    assert main(["resume", str(grown), "max_steps=2"]) == 0, capsys.readouterr().err[-3000:]
    r4 = json.loads((grown / "results.json").read_text())
    assert all(r4[key] == r1[key] for key in ("digits_accuracy", "speech_wer", "control_return"))
    saved = (grown / "run.json").read_text()
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: a generalist refuses fsdp before run.json records it
    assert main(["resume", str(grown), "fsdp=true", "max_steps=8"]) == 2
    assert "fsdp=true needs every process to run every block" in capsys.readouterr().err and (grown / "run.json").read_text() == saved
    assert main(["train", "generalist", *common, f"run_dir={tmp_path / 'refused'}", "weights=5,5,5", "grad_accum=8", "max_steps=1"]) == 2
    assert "batch_size=15 (the sum of weights) is smaller than grad_accum * processes = 8 * 2" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    monkeypatch.delenv("WORLD_SIZE")
    capsys.readouterr()
    assert main(["train", "generalist", *common, f"run_dir={tmp_path / 'other'}", f"init_from={first}", "layout=prefix", "max_steps=1"]) == 2
    assert "was trained with layout=encoder-decoder; grow it with layout=encoder-decoder" in capsys.readouterr().err
    # sizes a grown run cannot change are refused before its run directory is made (they were recorded, then ignored)
    for bad, message in [(f"dim={2 * TINY['dim']}", f"dim={2 * TINY['dim']}: a run grown from init_from={first} keeps its dim={TINY['dim']}"),
                         ("patch_size=4", "patch_size=4: a run grown from"),
                         ("grad_accum=16", "batch_size=15 (the sum of weights) is smaller than grad_accum * processes = 16 * 1")]:
        assert main(["train", "generalist", *common, f"run_dir={tmp_path / 'refused'}", f"init_from={first}", "weights=5,5,5", "max_steps=1", bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_generalist_trains_on_two_processes_though_a_share_lacks_a_task(tmp_path, tiny):
    """Under DDP each process's share of a mixed batch can lack a task, leaving that process's
    encoder or head unused: the loop asks DDP to find unused parameters for such models. Each
    process evaluates its share of the test images and episodes: the figures are one process's."""
    from test_train import torchrun

    cfg, *_ = tiny
    args = [f"{k}={v}" for k, v in TINY.items()] + [f"rl_dir={cfg.rl_dir}", "tasks=digits,control", "weights=2,2", "loss_weights=1,1",
                                                    "layout=encoder-decoder", "batch_size=4", "max_steps=12", "eval_every=12",
                                                    "log_every=4", "warmup_steps=2", "cpu=true", f"run_dir={tmp_path}"]  # fmt: skip
    torchrun(2, "-m", "recipes.cli", "train", "generalist", *args)  # 2 samples per process from 2 tasks: most steps, some miss one
    trained = json.loads((tmp_path / "results.json").read_text())
    alone = g.evaluate(tmp_path)
    assert set(alone) == {"digits_accuracy", "control_return", "control_return_std"} and alone == pytest.approx({k: trained[k] for k in alone})


def test_fsdp_refuses_a_model_whose_batches_can_leave_blocks_unused(tiny):
    from accelerate import Accelerator

    from recipes.fsdp import shard

    with pytest.raises(ValueError, match="fsdp=true needs every process to run every block"):
        shard(tiny[3], Accelerator(cpu=True))


def test_an_encoder_decoder_needs_tasks_on_both_sides_and_says_prefix_serves(tiny):
    cfg, tasks, _, _ = tiny
    decoder_only = [t for t in tasks if t.name in ("control", "text")]
    with pytest.raises(ValueError, match=r"got \['trajectory', 'prose'\]: add such a task \(digits, speech\), or give layout=prefix"):
        g.build_model(g.Config(**{**vars(cfg), "layout": "encoder-decoder"}), decoder_only)
    assert g.build_model(cfg, decoder_only).config.trunk.mode == "decoder"  # prefix: one stack


def test_weights_default_per_task_and_explicit_lists_must_match_the_tasks():
    names, weights, loss_weights = g.task_list(g.Config(tasks="digits,control"))
    assert names == ["digits", "control"] and weights == [32.0, 32.0] and loss_weights == [0.6, 6.0]  # control keeps its own
    assert g.task_list(g.Config(tasks="control,text", loss_weights="2,1"))[2] == [2.0, 1.0]
    with pytest.raises(ValueError, match=r"loss_weights='0.6,2,6' needs one non-negative number per task, in the order of tasks= \(digits, control\)"):
        g.task_list(g.Config(tasks="digits,control", loss_weights="0.6,2,6"))
    assert g.task_list(g.Config(tasks="digits,control", weights="0,4", loss_weights="1,2"))[1:] == ([0.0, 4.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"loss_weights='1,0': at least one task drawn \(weight > 0\) needs a positive loss weight"):
        g.task_list(g.Config(tasks="digits,control", weights="0,4", loss_weights="1,0"))  # (every step's loss 0: nothing learned)


def test_the_text_task_reads_the_column_named_in_a_csv(tmp_path):
    """text_data with several string columns: text_column= picks one (gpt_char's key); it is refused
    for a plain text file, and where no task reads text."""
    from recipes.config import ConfigError

    rows = ["id,body,title"] + [f"{i},the cat sat on mat {i},TITLE" for i in range(60)]
    (tmp_path / "posts.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"text_column="):
        g.text_task(g.Config(tasks="text", text_data=str(tmp_path / "posts.csv"), text_block=8), 1.0, {})
    task = g.text_task(g.Config(tasks="text", text_data=str(tmp_path / "posts.csv"), text_column="body", text_block=8), 1.0, {})
    assert set(task.tokenizers["prose"].chars) == set("the cat sat on mat 0123456789\n")  # the body column's text only
    (tmp_path / "plain.txt").write_text("just text\n" * 50)
    with pytest.raises(ConfigError, match=r"text_column=body: .*plain.txt is not a dataset with columns"):
        g.Config(tasks="text", text_data=str(tmp_path / "plain.txt"), text_column="body").check()
    with pytest.raises(ConfigError, match=r"text_column=body: names the text task's column in text_data; tasks='digits' has no text"):
        g.Config(tasks="digits", text_column="body").check()
    with pytest.raises(ConfigError, match=r"text_column=body: text_data is empty: no dataset, so no columns"):  # (was ignored)
        g.Config(tasks="text", text_column="body").check()
    from recipes import gpt_char

    with pytest.raises(ConfigError, match=r"text_column=body: data is empty: no dataset, so no columns .*give data= a dataset"):
        gpt_char.Config(text_column="body").check()  # (was ignored: the embedded corpus trained, run.json recording the key)


def test_a_grown_run_takes_its_parents_sizes():
    """keep_parent_sizes writes the parent's trunk and tokenizer sizes into the config (run.json
    records what trains) and refuses a different one; a default left alone takes the parent's."""
    from models import TrunkConfig
    from tokenizers_mm import ImageTokenizer

    trunk = TrunkConfig(dim=48, depth=3, num_heads=3, mode="encoder-decoder", dec_depth=2)
    saved = {"image": ImageTokenizer(image_size=8, patch_size=4, channels=1, mean=[0.5], std=[0.5], cls_token=True)}
    cfg = g.Config(init_from="parent", dropout=0.1)
    g.keep_parent_sizes(cfg, trunk, saved)
    assert (cfg.dim, cfg.depth, cfg.num_heads, cfg.dec_depth, cfg.patch_size, cfg.dropout) == (48, 3, 3, 2, 4, 0.1)
    with pytest.raises(ValueError, match="depth=6: a run grown from init_from=parent keeps its depth=3"):
        g.keep_parent_sizes(g.Config(init_from="parent", depth=6), trunk, saved)
    unset = TrunkConfig(dim=48, depth=5, num_heads=3, mode="encoder-decoder")  # dec_depth None: the encoder's depth
    cfg = g.Config(init_from="parent", dec_depth=5)  # the same model, said explicitly (the recipe's default is 3)
    g.keep_parent_sizes(cfg, unset, {})
    assert cfg.dec_depth == 0
