"""Run under torchrun (2 processes): our model sharded with FSDP2 on CPU / gloo trains like one
unsharded process on the same global batch.

    torchrun --nproc_per_node 2 tests/helpers/fsdp_cpu.py

Each block and then the whole model are wrapped with `fully_shard` (what Accelerate's FSDP2
plugin does with a transformer wrap policy on GPUs; on the CPU Accelerate keeps DDP). Each process
trains 3 AdamW steps on its half of the batch; rank 0 also trains an unsharded copy on the whole
batch, then compares the gathered weights.
"""

import copy

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import ModalitySpec, collate, next_token_set

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
text = ModalityConfig.from_spec(ModalitySpec("text", ("token",), 16, vocab_size=20))
model = MultimodalTransformer(ModelConfig(TrunkConfig(dim=16, depth=2, num_heads=2), {"text": text}, {"lm": HeadConfig("lm", "text")},
                                          decoder_inputs=["text"]))  # fmt: skip
reference = copy.deepcopy(model)
ids = torch.randint(0, 20, (4, 17), generator=torch.Generator().manual_seed(1))
whole = {"text": collate([next_token_set("text", i) for i in ids])}
share = len(ids) // world
mine = {"text": collate([next_token_set("text", i) for i in ids[rank * share : (rank + 1) * share]])}

for block in model.decoder.blocks:
    fully_shard(block)
fully_shard(model)  # the rest (embeddings, tied LM head, final norm) in the root group
for m, inputs in ((model, mine), (reference, whole)):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        m(inputs).loss.backward()  # FSDP averages the gradients over processes: the global batch's mean
        opt.step()
        opt.zero_grad(set_to_none=True)

full = {n: p.full_tensor() for n, p in model.named_parameters()}  # a collective: every rank gathers
sharded = any(p.to_local().numel() < p.numel() for p in model.parameters())
if rank == 0:
    assert sharded, "fully_shard left every parameter whole"
    for n, p in reference.named_parameters():
        torch.testing.assert_close(full[n], p.detach(), atol=1e-5, rtol=1e-4, msg=n)
    print(f"fsdp: {world} processes match 1")
dist.destroy_process_group()
