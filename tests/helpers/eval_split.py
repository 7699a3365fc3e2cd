"""Run under torchrun: score a gpt_char run on a text as `mmtok eval --data` does (load_for_eval's
accelerator, mean_loss over EvalBatches of its non-overlapping windows), and print which batches
this process read and the loss.

    torchrun --nproc_per_node N tests/helpers/eval_split.py RUN_DIR TEXT

The test checks that the processes read disjoint shares of all the batches and agree on the loss.
"""

import json
import sys

from recipes.gpt_char import read_text, text_windows
from recipes.runs import load_for_eval
from recipes.train import EvalBatches, mean_loss
from tokenizers_mm import collate_examples


class Recorded(EvalBatches):
    def __init__(self, *args):
        super().__init__(*args)
        self.read = []  # the batch indices this process made

    def __getitem__(self, i):
        self.read.append(i)
        return super().__getitem__(i)


run, data = sys.argv[1], sys.argv[2]
cfg, model, toks, accelerator = load_for_eval(run, "auto")
cfg.data = data
text, _ = read_text(cfg)
batches = Recorded(text_windows(cfg, toks["text"], text, stride=cfg.block_size), collate_examples, cfg.batch_size)
loss = mean_loss(model, accelerator, batches)
print(json.dumps({"rank": accelerator.process_index, "of": accelerator.num_processes, "batches": len(batches), "read": batches.read, "loss": loss}))
