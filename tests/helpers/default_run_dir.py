"""Run under torchrun: the default run directory each process names when run_dir is not given,
process 1 starting 1.5 s after process 0 (as on another node); prints {"rank", "run_dir"}.

    torchrun --nproc_per_node 2 tests/helpers/default_run_dir.py
"""

import json
import os
import time

from recipes.gpt_char import Config
from recipes.runs import resolve_run_dir

if os.environ["RANK"] != "0":
    time.sleep(1.5)  # (a clock's second later: its own name would differ)
first = str(resolve_run_dir(Config(), "gpt_char"))
if os.environ["RANK"] == "0":
    time.sleep(1.5)  # (a sweep's second run: process 0 still busy with the first when process 1 asks for the next name)
second = str(resolve_run_dir(Config(), "gpt_bpe"))
print(json.dumps({"rank": int(os.environ["RANK"]), "run_dir": first, "second": second}), flush=True)
