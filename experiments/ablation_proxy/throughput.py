"""Training throughput of candidate model sizes on this CPU (issue 29's sizing): one torch thread,
8 x 256-token batches of random token ids over the pool's 8,192-token vocabulary, AdamW, 3 warm-up
steps then the mean of 10 timed steps.

    PYTHONPATH=src python experiments/ablation_proxy/throughput.py [THREADS]
"""

import sys
import time

import torch

from datamates.config.core import ModelConfig
from datamates.core.lm import build_model, n_params

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
SHAPES = [("tiny", 4, 128, 4), ("pythia-14m", 6, 128, 4), ("2L-d64", 2, 64, 2), ("2L-d96", 2, 96, 2), ("4L-d64", 4, 64, 2)]
for name, layers, d, heads in SHAPES:
    cfg = ModelConfig(preset="tiny", n_layers=layers, d_model=d, n_heads=heads, context=256)
    model = build_model(cfg, 8192, 0, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 8192, (8, 256))
    for i in range(13):
        if i == 3:
            t0 = time.time()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    dt = (time.time() - t0) / 10
    print(f"{name}: {n_params(model) / 1e6:.2f}M parameters ({n_params(model, True) / 1e6:.3f}M outside the "
          f"embeddings), {dt:.3f} s/step, {8 * 256 / dt:,.0f} tokens/s", flush=True)
