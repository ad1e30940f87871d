"""Worker for tests/test_workflows.py's distributed test (one process per rank).

``python dist_workflow_worker.py CACHE_DIR RANK WORLD PORT [ana|search]``: every rank builds the
same model and runner and runs ``ana`` (or a one-step ``search``) in ``CACHE_DIR`` (with WORLD=1
and no process group: the single-process reference), then prints how many times its eval_fn ran.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from workflow_models import Fidelity, calib_batches, calibration_fn, data, make_bn_model, make_model

from pruning_ir.workflows import get_pruning_runner


def main() -> None:
    cache, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "ana"
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    if mode == "ana":
        model, x = make_model(), data()
        runner = get_pruning_runner(model, (x,), "iterative", cache_dir=cache)
        fn = Fidelity(model, x)
        runner.ana(fn, (x,), ratios=(0.25, 0.5, 0.75))
    else:
        model, x = make_bn_model(), data()
        one = get_pruning_runner(model, (x,), "one_step", cache_dir=cache)
        fn = Fidelity(model, x)
        one.search(calibration_fn=calibration_fn, calib_args=(calib_batches(),), eval_fn=fn, eval_args=(x,),
                   num_subnet=12, removal_ratio=0.5, strategy="evolution")
    print(f"calls {fn.calls}")
    if world > 1:
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
        dist.destroy_process_group()
        sys.stdout.flush()
        # gloo's threads can abort the interpreter's teardown ('terminate called without an active
        # exception', seen under load): everything is written, so leave without it
        os._exit(0)


if __name__ == "__main__":
    main()
