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
print(json.dumps({"rank": int(os.environ["RANK"]), "run_dir": str(resolve_run_dir(Config(), "gpt_char"))}), flush=True)
