"Fast checks of `chatgot.model`: config validation, presets, forward/loss, KV cache, optimizer groups."
import math
import pytest, torch
import torch.nn.functional as F
from chatgot.model import ARCHS, GPTConfig, PRESETS, preset_config, KVCache, GPT

V = 50
def small(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32), **kw}))


@pytest.mark.parametrize("kw,msg", [
    (dict(n_embd=100, n_head=6), "divisible by n_head"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(n_head=-2), "n_head must be a positive integer"),
    (dict(vocab_size=10.0), "vocab_size must be a positive integer"),
    (dict(block_size=True), "block_size must be a positive integer"),
    (dict(dropout=1.0), "dropout must be in [0, 1)"),
    (dict(dropout=-0.01), "dropout must be in [0, 1)"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg.replace('[', r'\[').replace(')', r'\)')): GPTConfig(**kw)

def test_config_defaults_ok():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == (8192, 256, 6, 6, 384, 0.0, False)

def test_presets():
    assert set(PRESETS) == {'tiny', 'baby', '14m'}
    assert PRESETS['14m']['tokenizer'] == 'bpe' and PRESETS['tiny']['tokenizer'] == PRESETS['baby']['tokenizer'] == 'char'
    b = preset_config('baby', vocab_size=65)
    assert (b.n_layer, b.n_head, b.n_embd, b.block_size, b.vocab_size, b.dropout) == (4, 4, 128, 64, 65, 0.0)
    assert preset_config('14m').vocab_size == 8192
    assert preset_config('14m', vocab_size=300).vocab_size == 300
    assert preset_config('tiny', 65, n_layer=None, n_embd=None, dropout=0.1) == GPTConfig(
        vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.1, **ARCHS['qwen3'])
    assert preset_config('tiny', 65, arch='gpt2') == GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64)
    assert GPTConfig().arch == 'gpt2' and all(PRESETS[k]['arch'] == 'qwen3' for k in PRESETS)  # old configs read as gpt2
    with pytest.raises(ValueError, match="valid presets are: tiny, baby, 14m"): preset_config('big')
    with pytest.raises(ValueError, match="vocab_size"): preset_config('tiny')
    with pytest.raises(ValueError, match="Unknown GPTConfig field"): preset_config('tiny', 65, layers=3)

def test_14m_param_count():
    with torch.device('meta'): q = GPT(preset_config('14m'))
    L, D, V_ = 6, 384, 8192
    assert q.num_params() == L*(12*D*D + 2*D + 2*(D//6)) + V_*D + D  # Qwen3 block: QK-norm gains, no position table
    assert q.num_params(non_embedding=True) == q.num_params()
    with torch.device('meta'): m = GPT(preset_config('14m', arch='gpt2'))
    n = m.num_params()
    assert abs(n - 14_000_000) <= 500_000, n
    L, D, V_, T = 6, 384, 8192, 256
    assert n == L*(12*D*D + 2*D) + V_*D + T*D + D          # tied head counted once
    assert m.num_params(non_embedding=True) == n - T*D
    assert m.flops_per_token() == 6*(n - T*D) + 12*L*D*T

def test_forward_shapes_and_ignore_index():
    m = small().eval()
    idx, tgt = torch.randint(0, V, (3, 20)), torch.randint(0, V, (3, 20))
    logits, loss = m(idx)
    assert logits.shape == (3, 20, V) and loss is None
    tgt[:, :7] = -1
    logits2, loss = m(idx, tgt)
    assert torch.equal(logits, logits2)
    ref = F.cross_entropy(logits[:, 7:].reshape(-1, V), tgt[:, 7:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert m.lm_head.weight is m.transformer.wte.weight

def test_first_loss_near_ln_vocab():
    m = small(vocab_size=512, n_embd=64).eval()
    with torch.no_grad(): loss = m(torch.randint(0, 512, (4, 32)), torch.randint(0, 512, (4, 32)))[1].item()
    assert abs(loss - math.log(512)) < 0.1

def test_overlong_input():
    m = small()
    with pytest.raises(ValueError, match="longer than block_size 32"): m(torch.zeros(1, 33, dtype=torch.long))
    c = m.new_cache(1)
    m(torch.zeros(1, 30, dtype=torch.long), cache=c)
    with pytest.raises(ValueError, match="longer than block_size"): m(torch.zeros(1, 3, dtype=torch.long), cache=c)
    assert c.pos == 30
    with pytest.raises(ValueError, match="max_len"): m.new_cache(1, max_len=33)

def test_cache_overflow_and_reset():
    m = small().eval()
    c = m.new_cache(2, max_len=8)
    assert isinstance(c, KVCache) and c.k.shape == (2, 2, 2, 8, 16) and c.k.dtype == torch.float32
    m(torch.zeros(2, 5, dtype=torch.long), cache=c)
    with pytest.raises(ValueError, match="overflow"): m(torch.zeros(2, 4, dtype=torch.long), cache=c)
    assert c.pos == 5
    c.reset(); assert c.pos == 0
    m(torch.zeros(2, 8, dtype=torch.long), cache=c); assert c.pos == 8

@pytest.mark.parametrize("sizes", [[24], [1]*24, [8] + [1]*16, [5, 3, 9, 1, 6], [12, 12], [1, 23]])
def test_kv_cache_equivalence(sizes):
    m = small(seed=3).eval()
    idx = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        full = m(idx)[0]
        c, out, i = m.new_cache(2), [], 0
        for n in sizes:
            out.append(m(idx[:, i:i+n], cache=c)[0]); i += n
    assert c.pos == 24
    assert (torch.cat(out, 1) - full).abs().max().item() < 1e-5

def test_kv_cache_reuse_after_reset():
    m = small(seed=4).eval()
    a, b = torch.randint(0, V, (1, 10)), torch.randint(0, V, (1, 10))
    with torch.no_grad():
        c = m.new_cache(1)
        m(a, cache=c); c.reset()
        out = torch.cat([m(b[:, :4], cache=c)[0], m(b[:, 4:], cache=c)[0]], 1)
        assert (out - m(b)[0]).abs().max().item() < 1e-5

def test_determinism():
    a, b, c = small(seed=7), small(seed=7), small(seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)

def test_init_scales():
    m = small(n_layer=4, n_embd=64, bias=True)
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(m.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02/math.sqrt(8)) < 0.001
    assert all(mod.bias.abs().sum() == 0 for mod in m.modules() if isinstance(mod, torch.nn.Linear) and mod.bias is not None)

def test_optimizer_groups():
    m = small(bias=True)
    opt = m.configure_optimizer(3e-4, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    dec, nodec = opt.param_groups
    assert dec['weight_decay'] == 0.05 and nodec['weight_decay'] == 0.0
    assert all(p.dim() >= 2 for p in dec['params']) and all(p.dim() < 2 for p in nodec['params'])
    assert sum(p.numel() for g in opt.param_groups for p in g['params']) == m.num_params()
    assert any(p is m.transformer.wte.weight for p in dec['params'])
    assert dec['lr'] == 3e-4 and dec['betas'] == (0.8, 0.9) and dec['eps'] == 1e-6
    assert opt.defaults['fused']  # the fused kernel on CPU and CUDA: faster, and it skips a flagged step on the device

def test_grad_checkpointing_switch():
    assert GPT.grad_checkpointing is False
    m = small(seed=5).train()
    x, y = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    res = []
    for on in (False, True):
        m.grad_checkpointing = on; m.zero_grad()
        loss = m(x, y)[1]; loss.backward()
        res.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(res[0][0], res[1][0])
    assert all(torch.equal(a, b) for a, b in zip(res[0][1], res[1][1]))

def test_grad_checkpointing_uses_checkpoint(monkeypatch):
    import chatgot.model as M
    calls = []
    def spy(fn, *a, **kw): calls.append(kw.get('use_reentrant')); return fn(*a)
    monkeypatch.setattr(M, 'checkpoint', spy)
    m = small(); m.grad_checkpointing = True
    m(torch.zeros(1, 4, dtype=torch.long))
    assert calls == [False, False]
    m.eval(); calls.clear(); m(torch.zeros(1, 4, dtype=torch.long))
    assert calls == []                                   # only while training
