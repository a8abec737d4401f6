"""Generation speed: new tokens per second with the KV cache vs recomputing the whole context every token.

python bench/generate_speed.py [--new-tokens 500] [--repeats 3] [--batch 1] [--preset 14m]
    -> prints a table, writes bench/results/generate_speed.json
Same model (random weights: speed does not depend on them), same prompt, same sampler (temperature 0.8,
top-k 200, as nanoGPT's sample.py) and same seed in both loops. `cached` is `chatgot.generate.generate`: one
token per step on the KV cache, the window sliding (re-prefilling 3/4 of it) when the context is full.
`recompute` is nanoGPT's `generate`: crop to the last block_size tokens, run the full forward, use the last
position's logits (computed for that position only, as nanoGPT does). Each figure is the median over repeats.
The 14m context is 256 tokens, so 500 new tokens exercise the sliding window.
"""
import argparse, json, statistics, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from chatgot.model import GPT, preset_config, rope_cos_sin
from chatgot.generate import generate, make_processors

@torch.inference_mode()
def recompute(model, idx, n, procs, g):
    "nanoGPT's generate: full forward over the cropped context for every new token"
    tr, c = model.transformer, model.config
    for _ in range(n):
        x = idx[:, -c.block_size:]
        pos = torch.arange(x.size(1), device=x.device)
        h, rope = tr.wte(x), None  # learned positions (GPT-2 block) or rotary ones (Llama/Qwen3 blocks)
        if c.pos == 'learned': h = h + tr.wpe(pos)
        else: rope = rope_cos_sin(pos, c.head_dim, c.rope_theta)
        h = tr.drop(h)
        for block in tr.h: h = block(h, None, rope)
        logits = model.lm_head(tr.ln_f(h[:, -1]))
        for p in procs: logits = p(logits, None)
        idx = torch.cat([idx, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    return idx

def timed(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--new-tokens', type=int, default=500); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--batch', type=int, default=1); ap.add_argument('--prompt-tokens', type=int, default=16)
    ap.add_argument('--preset', default='14m'); ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(preset_config(a.preset, vocab_size=8192)).to(a.device).eval()
    procs = make_processors(0.8, top_k=200)
    idx = torch.randint(0, 8192, (a.batch, a.prompt_tokens), device=a.device)
    gen = lambda: torch.Generator(device=a.device).manual_seed(0)
    generate(model, idx, 8, procs, generator=gen()); recompute(model, idx, 8, procs, gen())  # warm-up
    cached = [timed(lambda: generate(model, idx, a.new_tokens, procs, generator=gen())) for _ in range(a.repeats)]
    full = [timed(lambda: recompute(model, idx, a.new_tokens, procs, gen())) for _ in range(a.repeats)]
    n = a.batch * a.new_tokens
    row = dict(preset=a.preset, batch=a.batch, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens,
               block_size=model.config.block_size, cached_tok_s=n / statistics.median(cached),
               recompute_tok_s=n / statistics.median(full))
    row['speedup'] = row['cached_tok_s'] / row['recompute_tok_s']
    print(f"{a.preset} batch {a.batch}, {a.new_tokens} new tokens (context {row['block_size']}): "
          f"KV cache {row['cached_tok_s']:8.1f} tok/s   recompute {row['recompute_tok_s']:8.1f} tok/s   speedup {row['speedup']:.1f}x", flush=True)
    out = Path(__file__).parent/'results'/'generate_speed.json'
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(machine=describe(), rows=[row]), indent=1)); print('wrote', out)
