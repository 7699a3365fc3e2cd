"""Run under torchrun: one gpt_char optimizer step's gradients (before the update) → safetensors.

    torchrun --nproc_per_node N tests/helpers/ddp_first_grads.py DATA OUT.safetensors [BATCH_SIZE]

Uses the training loop's own pieces (make_loader, forward_backward), so N processes and one
process see the same global batch; the test compares the gradients they produce.
"""

import sys

from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file

from recipes.gpt_char import Config, build_data, build_model
from recipes.train import forward_backward, make_loader

data, out = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
cfg = Config(data=data, block_size=16, dim=32, depth=2, num_heads=2, batch_size=batch, cpu=True)
accelerator = Accelerator(cpu=True)
tokenizer, train_set, _ = build_data(cfg)
set_seed(cfg.seed)
model = build_model(cfg, tokenizer)
model = accelerator.prepare(model)
loader = iter(make_loader(train_set, lambda ex: __import__("tokenizers_mm").collate_examples(ex), cfg, accelerator))
forward_backward(accelerator, model, [next(loader)], cfg.grad_accum)
if accelerator.is_main_process:
    grads = {n: p.grad.contiguous() for n, p in accelerator.unwrap_model(model).named_parameters() if p.grad is not None}
    save_file(grads, out)
print(f"rank {accelerator.process_index}/{accelerator.num_processes} ok")
