"""Run under torchrun: score a run as `mmtok eval` does (load_for_eval's accelerator, the test set's
EvalBatches split over the processes), and print which batches this process read and the figures.

    torchrun --nproc_per_node N tests/helpers/eval_split.py gpt_char RUN_DIR TEXT   # mean_loss on TEXT's windows
    torchrun --nproc_per_node N tests/helpers/eval_split.py whisper_folder RUN_DIR  # WER and loss on its validation set

The tests check that the processes read disjoint shares of all the batches and agree on the figures.
"""

import json
import sys

from recipes.train import EvalBatches

made = []  # every EvalBatches this process made, with the batch indices it read


class Recorded(EvalBatches):
    def __init__(self, *args):
        super().__init__(*args)
        self.read = []
        made.append(self)

    def __getitem__(self, i):
        self.read.append(i)
        return super().__getitem__(i)


sys.modules["recipes.train"].EvalBatches = Recorded  # (the recipes import it from there when they make their batches; recipes.train is the function)
recipe, run = sys.argv[1], sys.argv[2]
if recipe == "gpt_char":
    from recipes.gpt_char import read_text, text_windows
    from recipes.runs import load_for_eval
    from recipes.train import mean_loss
    from tokenizers_mm import collate_examples

    cfg, model, toks, accelerator = load_for_eval(run, "auto")
    cfg.data = sys.argv[3]
    text, _ = read_text(cfg)
    figures = {"loss": mean_loss(model, accelerator, Recorded(text_windows(cfg, toks["text"], text, stride=cfg.block_size), collate_examples, cfg.batch_size))}
    rank, of = accelerator.process_index, accelerator.num_processes
else:
    import torch.distributed as dist

    from recipes import whisper_folder

    figures = whisper_folder.evaluate(run, "auto")
    rank, of = dist.get_rank(), dist.get_world_size()
(batches,) = made
print(json.dumps({"rank": rank, "of": of, "batches": len(batches), "read": batches.read, **figures}))
