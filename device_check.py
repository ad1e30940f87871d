"""One-off GPU check (not committed): timm models, uniform 0.3 and two random selections, verify_pruning on CUDA."""
import random
import sys
import time
import traceback

import timm
import torch

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
from pruning_ir.errors import LabelError


def rsel(ir, seed):
    gen = random.Random(seed)
    for _ in range(20):
        out = []
        for g in ir.prunable_label_groups():
            n = int(gen.uniform(0.05, 0.9) * g.size)
            n = min(n, g.size - g.step)
            n -= -(g.size - n) % g.step
            if n > 0:
                out += gen.sample(ir.labels(g), n)
        try:
            ir.check_labels(out)
            return out
        except LabelError:
            continue
    return []


names = sys.argv[1].split(",")
for name in names:
    t0 = time.time()
    try:
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=False).eval().cuda()
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(2, *size, device="cuda")
        ir = PruningIR(m, example_inputs=(x,))
        print(f"{name}: {len(ir.prunable_label_groups())}/{len(ir.label_groups())} prunable, build {time.time()-t0:.1f}s", flush=True)
    except Exception as e:
        print(f"{name}: BUILD {type(e).__name__}: {str(e)[:200]}", flush=True)
        continue
    for sel, pick in (("uniform0.3", lambda: UniformLabelSelector(0.3).select(ir)), ("random0", lambda: rsel(ir, 0)), ("random1", lambda: rsel(ir, 1))):
        try:
            labels = pick()
            rep = verify_pruning(ir, labels)
            errs = [c.name + ": " + c.error[:120] for c in rep.checks if c.error]
            print(f"  {sel}: exact={rep.exact} reasons={len(rep.inexact_reasons)} diff={rep.max_abs_diff:.2e} grad={max((c.max_grad_diff or 0) for c in rep.checks):.2e} errors={errs}", flush=True)
        except Exception as e:
            print(f"  {sel}: {type(e).__name__}: {str(e)[:300]}", flush=True)
