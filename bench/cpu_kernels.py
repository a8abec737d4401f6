"""The kernels behind chatgot's CPU precision choices: matmul throughput and attention forward+backward, fp32 vs bf16.

python bench/cpu_kernels.py [--repeats 20]   -> prints two tables, writes bench/results/cpu_kernels.json
Matmuls at the shapes of a `baby` step (12 x 64 = 768 rows, width 128) and of a `14m` one (16384 rows, width
384), in GFLOP/s. `F.scaled_dot_product_attention` (causal) forward + backward at `B,H,T,D` of `baby`
(12,4,64,32), the default `14m` run (16,6,128,64) and the `14m` benchmark (64,6,256,64), in ms. These are the
numbers behind running the attention in fp32 under bf16 autocast on the CPU (nbs/01_model.ipynb).
"""
import argparse, json, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe

def seconds(f, n):
    for _ in range(3): f()
    t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0]); ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'cpu_kernels.json'))
    a = ap.parse_args()
    res = dict(machine=describe(), matmul=[], attention=[])
    for M, K, N in [(768, 128, 512), (768, 512, 128), (16384, 384, 1536)]:
        row = dict(shape=[M, K, N])
        for dt in ('fp32', 'bf16'):
            x, w = (torch.randn(*s, dtype=getattr(torch, {'fp32': 'float32', 'bf16': 'bfloat16'}[dt])) for s in ((M, K), (K, N)))
            row[f'{dt}_gflops'] = 2 * M * K * N / seconds(lambda: x @ w, 10 * a.repeats) / 1e9
        res['matmul'].append(row)
        print(f"matmul {M}x{K} @ {K}x{N}: fp32 {row['fp32_gflops']:.0f} GFLOP/s, bf16 {row['bf16_gflops']:.0f}", flush=True)
    for B, H, T, D in [(12, 4, 64, 32), (16, 6, 128, 64), (64, 6, 256, 64)]:
        row = dict(shape=[B, H, T, D])
        for dt in ('fp32', 'bf16'):
            q, k, v = (torch.randn(B, H, T, D, dtype=torch.float32 if dt == 'fp32' else torch.bfloat16, requires_grad=True) for _ in range(3))
            g = torch.randn_like(q)
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)
            row[f'{dt}_ms'] = 1000 * seconds(f, max(2, a.repeats // (1 if T < 256 else 4)))
        res['attention'].append(row)
        print(f"attention fwd+bwd B,H,T,D={B},{H},{T},{D}: fp32 {row['fp32_ms']:.2f} ms, bf16 {row['bf16_ms']:.2f} ms", flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1)); print('wrote', out)
