"""RMSNorm on the CPU: torch's `F.rms_norm` against chatgot's `_RMSNormFn`, in a whole `14m` forward + backward.

python bench/rmsnorm.py [--repeats 5]   -> prints a table, writes bench/results/rmsnorm.json
The `14m` model (Qwen3 block: 25 RMSNorms) under bf16 autocast, forward + chunked loss + backward, on random
tokens at batch x seq 16 x 128 (the default run until 2026-12-07, now 32 x 128), 16 x 256 and 64 x 256 (the throughput benchmark's shape).
`torch`: `RMSNorm.forward` as it was (`F.rms_norm`, fp32 out of an fp32 residual stream); `chatgot`: today's.
The two alternate within each repeat; seconds are medians.
"""
import argparse, json, statistics, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.model import GPT, RMSNorm, preset_config

def torch_forward(self, x): return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0]); ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'rmsnorm.json'))
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = preset_config('14m'); model = GPT(cfg)
    variants = dict(torch=torch_forward, chatgot=RMSNorm.forward)
    res = dict(machine=describe(), command='python bench/rmsnorm.py ' + ' '.join(sys.argv[1:]), rows=[])
    for B, T in ((16, 128), (16, 256), (64, 256)):
        idx, tgt = (torch.randint(0, cfg.vocab_size, (B, T)) for _ in range(2))
        def step():
            with torch.autocast('cpu', dtype=torch.bfloat16): _, loss = model(idx, tgt)
            loss.backward(); model.zero_grad(set_to_none=True)
        times = {k: [] for k in variants}
        for r in range(a.repeats + 1):
            for k, f in variants.items():
                RMSNorm.forward = f
                t0 = time.perf_counter(); step(); t = time.perf_counter() - t0
                if r: times[k].append(t)  # the first round warms up
        row = dict(batch=B, seq=T, **{f'{k}_s': statistics.median(v) for k, v in times.items()})
        row['speedup'] = row['torch_s'] / row['chatgot_s']
        res['rows'].append(row)
        print(f"{B:>3} x {T:<4} torch {row['torch_s']:.3f} s   chatgot {row['chatgot_s']:.3f} s   {row['speedup']:.2f}x", flush=True)
    RMSNorm.forward = variants['chatgot']
    Path(a.out).write_text(json.dumps(res, indent=1))
