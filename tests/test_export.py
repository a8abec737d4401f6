"`chatgot export`: the Hugging Face folder computes what ChatGoT computes, the GGUF file holds what llama.cpp needs, bad input is refused in one line."
import dataclasses, hashlib, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from safetensors.torch import save_model
from chatgot.cli import main
from chatgot.data import encode_text, load_corpus, train_tokenizer
from chatgot.export import export, gguf_tensors
from chatgot.generate import generate, make_processors
from chatgot.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # every stock architecture, and the variants that change the mapping (fused or split qkv, biases, tied or untied head)
    'gpt2': dict(bias=True),
    'gpt2-split': dict(split_qkv=True),
    'llama': dict(pos='rope', norm='rmsnorm', mlp='swiglu', split_qkv=True, tie_embeddings=False),
    'llama-fused': dict(pos='rope', norm='rmsnorm', mlp='swiglu', rope_theta=500.0),
    'qwen3': dict(pos='rope', norm='rmsnorm', mlp='swiglu', split_qkv=True, qk_norm=True),
    'qwen3-untied': dict(pos='rope', norm='rmsnorm', mlp='swiglu', split_qkv=True, qk_norm=True, tie_embeddings=False, norm_eps=1e-6),
}

@pytest.fixture(scope='module')
def corpus(): return load_corpus('builtin:histories')[:100_000]

@pytest.fixture(scope='module')
def toks(corpus): return {'bpe': train_tokenizer(corpus, 'bpe', 512), 'char': train_tokenizer(corpus, 'char')}

def tiny(recipe, vocab_size, seed=0):
    "A tiny model with every weight random (norm weights around 1): a weight mapped to the wrong place shows in the logits"
    m = GPT(GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=64, **RECIPES[recipe]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            norm = 'norm' in n or 'ln_' in n
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if norm else 0.3) + (1.0 if norm and n.endswith('weight') else 0.0))
    return m.eval()

def save_ckpt(model, tok, path, data='builtin:histories'):
    "A checkpoint folder as training writes it (weights, tokenizer, an empty state, meta with hashes)"
    path = Path(path); path.mkdir(parents=True)
    save_model(model, str(path/'model.safetensors')); torch.save({}, path/'state.pt'); tok.save(str(path/'tokenizer.json'))
    files = {f: hashlib.sha256((path/f).read_bytes()).hexdigest() for f in ('model.safetensors', 'state.pt', 'tokenizer.json')}
    (path/'meta.json').write_text(json.dumps(dict(step=1, model=dataclasses.asdict(model.config), files=files, config=dict(flags=dict(data=data)))))
    return path

def batch(tok, corpus, B=3, T=48):
    return torch.tensor([encode_text(tok, corpus[i*5000:i*5000+1000])[:T].tolist() for i in range(B)])

@pytest.mark.parametrize('kind', ['bpe', 'char'])
@pytest.mark.parametrize('recipe', list(RECIPES))
def test_hf_same_logits_and_greedy_tokens(recipe, kind, toks, corpus, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM
    tok = toks[kind]
    m = tiny(recipe, tok.get_vocab_size())
    assert m.config.arch == recipe.split('-')[0]
    out = export(save_ckpt(m, tok, tmp_path/'ck'), 'hf', tmp_path/'hf', log=lambda s: None)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == {'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}[m.config.arch]
    x = batch(tok, corpus)
    with torch.no_grad(): ours, theirs = m(x)[0], hf(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    prompt = x[:1, :20]
    want = generate(m, prompt, 50, make_processors(temperature=0))[0]
    got = hf.generate(prompt, max_new_tokens=50, min_new_tokens=50, do_sample=False, repetition_penalty=1.0)[0, 20:].tolist()
    assert got == want

@pytest.mark.parametrize('kind', ['bpe', 'char'])
def test_hf_tokenizer_same_ids_and_chat_template(kind, toks, corpus, tmp_path):
    from transformers import AutoTokenizer
    tok = toks[kind]
    out = export(save_ckpt(tiny('qwen3', tok.get_vocab_size()), tok, tmp_path/'ck'), 'hf', tmp_path/'hf', character='King Henry', log=lambda s: None)
    ht = AutoTokenizer.from_pretrained(out)
    ids = ht(corpus, add_special_tokens=False)['input_ids']
    assert len(ids) > 1000 and ids == encode_text(tok, corpus).tolist()
    assert ht.decode(ids[:500]) == tok.decode(ids[:500]) == corpus[:len(tok.decode(ids[:500]))]
    msgs = [dict(role='system', content='A room in the palace.'), dict(role='user', content='Who goes there?'),
            dict(role='assistant', content='A friend.'), dict(role='user', content='Speak!', name='Hamlet')]
    assert ht.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "A room in the palace.\n\nYOU:\nWho goes there?\n\nKING HENRY:\nA friend.\n\nHAMLET:\nSpeak!\n\nKING HENRY:\n"
    assert ht.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True, character='York', user='Exeter') == "EXETER:\nWho goes there?\n\nYORK:\n"
    files = {p.name for p in out.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'} <= files

@pytest.mark.parametrize('dtype', ['f32', 'f16', 'bf16', 'q8_0'])
@pytest.mark.parametrize('kind', ['bpe', 'char'])
@pytest.mark.parametrize('recipe', ['gpt2', 'llama', 'qwen3-untied'])
def test_gguf_holds_weights_tokenizer_and_template(recipe, kind, dtype, toks, tmp_path):
    import gguf
    tok = toks[kind]
    m = tiny(recipe, tok.get_vocab_size())
    path = export(save_ckpt(m, tok, tmp_path/'ck'), 'gguf', tmp_path/'m.gguf', dtype=dtype, log=lambda s: None)
    r = gguf.GGUFReader(str(path))
    f = lambda k: r.fields[k].contents()
    arch, c = m.config.arch, m.config
    assert f('general.architecture') == arch and f(f'{arch}.block_count') == c.n_layer and f(f'{arch}.context_length') == c.block_size
    assert f(f'{arch}.embedding_length') == c.n_embd and f(f'{arch}.feed_forward_length') == c.mlp_hidden
    assert f(f'{arch}.attention.head_count') == f(f'{arch}.attention.head_count_kv') == c.n_head
    if arch != 'gpt2': assert f(f'{arch}.rope.freq_base') == c.rope_theta and abs(f(f'{arch}.attention.layer_norm_rms_epsilon') - c.norm_eps) < 1e-12
    assert f('tokenizer.ggml.model') == 'gpt2' and f('tokenizer.ggml.pre') == 'gpt-2' and f('tokenizer.ggml.add_bos_token') is False
    assert 'KING' in f('tokenizer.chat_template') or 'GLOUCESTER' in f('tokenizer.chat_template')
    tokens = f('tokenizer.ggml.tokens')
    assert len(tokens) == c.vocab_size
    if kind == 'bpe': assert tokens == [tok.id_to_token(i) for i in range(c.vocab_size)] and len(f('tokenizer.ggml.merges')) > 200
    else: assert tokens[tok.token_to_id('\n')] == 'Ċ' and tokens[tok.token_to_id(' ')] == 'Ġ' and tokens[0] == '<unk>'
    assert f('tokenizer.ggml.eos_token_id') == f('tokenizer.ggml.bos_token_id')
    assert tokens[f('tokenizer.ggml.eos_token_id')] in ('ÿ', '<unk>')  # a token text never produces, not llama.cpp's default 11
    want = gguf_tensors(m)
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(want)
    qtype = {'f32': 'F32', 'f16': 'F16', 'bf16': 'BF16', 'q8_0': 'Q8_0'}[dtype]
    for n, t in got.items():
        assert tuple(int(s) for s in reversed(t.shape)) == tuple(want[n].shape), n  # ggml lists dims innermost first
        assert t.tensor_type.name == (qtype if want[n].dim() > 1 else 'F32'), n
        if dtype == 'f32': assert np.array_equal(np.asarray(t.data).reshape(want[n].shape), want[n].detach().numpy()), n
    if recipe != 'gpt2': assert 'output.weight' in got if not c.tie_embeddings else 'output.weight' not in got

def test_char_gguf_vocab_spells_each_character_in_bytes(tmp_path):
    from chatgot.export import gguf_vocab
    tok = train_tokenizer("Ay, ça sonne — c'est l'été.\n\n", 'char')
    v = gguf_vocab(tok, tok.get_vocab_size())
    b2u = {b: c for c, b in __import__('chatgot.generate', fromlist=['x'])._unicode_to_byte().items()}
    for s, i in tok.get_vocab().items():
        if s != '<unk>': assert v['tokens'][i] == ''.join(b2u[b] for b in s.encode('utf-8')), s
    assert 'Ã ©' in v['merges'] and 'â Ģ' in v['merges'] and 'âĢ Ķ' in v['merges']  # é, and — in two merges

MAIN = "import sys; from chatgot.cli import main; sys.argv[0] = 'chatgot'; sys.exit(main())"

def chatgot(*args, cwd=None):
    e = {**os.environ, 'PYTHONPATH': str(ROOT), 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, '-c', MAIN, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=300)

def test_cli_exports_and_refuses_bad_input(toks, tmp_path, capsys):
    tok = toks['bpe']
    save_ckpt(tiny('llama', tok.get_vocab_size()), tok, tmp_path/'run'/'checkpoints'/'step-0000001')
    p = chatgot('export', '--ckpt', tmp_path/'run', '--format', 'gguf', '--out', tmp_path/'m.gguf', '--dtype', 'q8_0')
    assert p.returncode == 0, p.stderr
    assert f"checkpoint: {tmp_path/'run'/'checkpoints'/'step-0000001'}" in p.stderr and f"wrote {tmp_path/'m.gguf'}" in p.stdout
    p = chatgot('export', '--ckpt', tmp_path/'run', '--format', 'gguf', '--out', tmp_path/'m.gguf')  # no overwrite without --force
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and 'Traceback' not in p.stderr and 'already exists' in p.stderr
    before = (tmp_path/'m.gguf').read_bytes()
    def err(*argv):
        assert main(['export', *map(str, argv)]) == 2
        e = capsys.readouterr().err.strip().splitlines()
        assert len(e) == 1 or (len(e) == 2 and e[0].startswith('checkpoint: ')), e  # the checkpoint line, then one error line
        return e[-1]
    (tmp_path/'empty').mkdir()
    assert 'no usable checkpoint' in err('--ckpt', tmp_path/'empty', '--format', 'hf', '--out', tmp_path/'x')
    assert 'no such folder' in err('--ckpt', tmp_path/'nowhere', '--format', 'hf', '--out', tmp_path/'x')
    assert '--ckpt DIR is required' in err('--format', 'hf', '--out', tmp_path/'x')
    assert '--format hf|gguf is required' in err('--ckpt', tmp_path/'run', '--out', tmp_path/'x')
    assert '--format must be one of hf, gguf' in err('--ckpt', tmp_path/'run', '--format', 'onnx', '--out', tmp_path/'x')
    assert '--dtype for hf must be one of' in err('--ckpt', tmp_path/'run', '--format', 'hf', '--out', tmp_path/'x', '--dtype', 'q8_0')
    assert 'is a folder' in err('--ckpt', tmp_path/'run', '--format', 'gguf', '--out', tmp_path/'empty', '--force')
    odd = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, n_embd=64, mlp='relu2'))
    save_ckpt(odd, tok, tmp_path/'odd')
    assert 'not a stock architecture' in err('--ckpt', tmp_path/'odd', '--format', 'hf', '--out', tmp_path/'x')
    wl = train_tokenizer('KING:\nHello there.\n\n', 'char')
    cfg = json.loads(wl.to_str()); cfg['normalizer'] = {'type': 'Lowercase'}  # a tokenizer llama.cpp would not reproduce
    from tokenizers import Tokenizer
    save_ckpt(tiny('qwen3', wl.get_vocab_size()), Tokenizer.from_str(json.dumps(cfg)), tmp_path/'lower')
    assert 'not one llama.cpp tokenizes identically' in err('--ckpt', tmp_path/'lower', '--format', 'gguf', '--out', tmp_path/'x.gguf')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'lower', 'm.gguf', 'odd', 'run']  # nothing half-written
    assert (tmp_path/'m.gguf').read_bytes() == before
    assert main(['export', '--ckpt', str(tmp_path/'run'), '--format', 'hf', '--out', str(tmp_path/'m.gguf'), '--force']) == 2  # a file is no folder
    assert main(['export', '--ckpt', str(tmp_path/'run'), '--format', 'gguf', '--out', str(tmp_path/'m.gguf'), '--force', '--dtype', 'f16']) == 0
    assert (tmp_path/'m.gguf').read_bytes() != before

slow = pytest.mark.skipif(os.environ.get('CHATGOT_SLOW') != '1', reason='slow (llama.cpp): set CHATGOT_SLOW=1')

@pytest.mark.slow
@slow
@pytest.mark.parametrize('kind', ['bpe', 'char'])
@pytest.mark.parametrize('recipe', ['gpt2', 'llama', 'qwen3'])
def test_llama_cpp_tokenizes_and_generates_like_us(recipe, kind, toks, corpus, tmp_path, one_thread):
    "llama.cpp (llama-cpp-python) loads the f32 GGUF, tokenizes the corpus's first 100 kB like us and generates the same 50 greedy tokens"
    llama_cpp = pytest.importorskip('llama_cpp')
    tok = toks[kind]
    m = tiny(recipe, tok.get_vocab_size())
    path = export(save_ckpt(m, tok, tmp_path/'ck'), 'gguf', tmp_path/'m.gguf', dtype='f32', log=lambda s: None)
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_batch=128, n_threads=1, type_k=0, type_v=0, flash_attn=False, verbose=False)  # 0: f32 KV cache
    assert llm.tokenize(corpus.encode('utf-8'), add_bos=False, special=False) == encode_text(tok, corpus).tolist()
    prompt = batch(tok, corpus, B=1)[:, :20]
    want = generate(m, prompt, 50, make_processors(temperature=0))[0]
    llm.reset(); llm.eval(prompt[0].tolist())
    got, gap = [], []
    with torch.no_grad(): ref = m(torch.tensor([prompt[0].tolist() + want]))[0][0, 19:-1]
    for i in range(50):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        gap.append(float(np.abs(logits - ref[i].numpy()).max()))
        got.append(int(logits.argmax())); llm.eval([got[-1]])
    print(f"{recipe} {kind}: max |logit difference| over 50 steps {max(gap):.2e}")
    assert got == want

NODE_SCRIPT = r'''
import fs from "node:fs";
import {getLlama} from "node-llama-cpp";
const [modelPath, textPath, promptJson, eosJson] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const ids = Array.from(model.tokenize(fs.readFileSync(textPath, "utf8"), false));
const ctx = await model.createContext({contextSize: 128, batchSize: 128, threads: 1, flashAttention: false});
const seq = ctx.getSequence(), eos = JSON.parse(eosJson), out = [];
let next = JSON.parse(promptJson);
while (out.length < 50) {  // greedy; evaluate() ends at the end-of-text token: write it down and go on after it
    for await (const t of seq.evaluate(next, {temperature: 0})) { out.push(t); if (out.length >= 50) break; }
    if (out.length < 50) { out.push(eos); next = [eos]; }
}
process.stdout.write(JSON.stringify({ids, out}));
'''

@pytest.mark.slow
@slow
@pytest.mark.parametrize('kind', ['bpe', 'char'])
@pytest.mark.parametrize('recipe', list(RECIPES))
def test_node_llama_cpp_tokenizes_and_generates_like_us(recipe, kind, toks, corpus, tmp_path, one_thread):
    "The same through llama.cpp's prebuilt binaries in node-llama-cpp (`npm install node-llama-cpp` in $CHATGOT_NODE_LLAMA_CPP)"
    home = os.environ.get('CHATGOT_NODE_LLAMA_CPP')
    if not home or not (Path(home)/'node_modules'/'node-llama-cpp').is_dir(): pytest.skip('set CHATGOT_NODE_LLAMA_CPP to a folder where node-llama-cpp is installed')
    tok = toks[kind]
    m = tiny(recipe, tok.get_vocab_size())
    path = export(save_ckpt(m, tok, tmp_path/'ck'), 'gguf', tmp_path/'m.gguf', dtype='f32', log=lambda s: None)
    (tmp_path/'c.txt').write_text(corpus); script = Path(home)/'chatgot_check.mjs'; script.write_text(NODE_SCRIPT)
    prompt, eos = batch(tok, corpus, B=1)[0, :20].tolist(), gguf_eos(path)
    p = subprocess.run(['node', str(script), str(path), str(tmp_path/'c.txt'), json.dumps(prompt), str(eos)], capture_output=True, text=True, cwd=home, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout)
    assert res['ids'] == encode_text(tok, corpus).tolist()
    want = generate(m, torch.tensor([prompt]), 50, make_processors(temperature=0))[0]
    assert res['out'] == want, (res['out'], want)
    print(f"{recipe} {kind}: 100 kB tokenized the same, 50 greedy tokens the same ({want.count(eos)} of them the end-of-text id {eos})")

def gguf_eos(path):
    import gguf
    return gguf.GGUFReader(str(path)).fields['tokenizer.ggml.eos_token_id'].contents()

def test_hf_half_precision_and_q8_0_fallback(toks, corpus, tmp_path, one_thread):
    "--dtype f16/bf16 for hf loads and stays close; q8_0 writes rows that are no multiple of 32 in f16"
    from transformers import AutoModelForCausalLM
    import gguf
    tok = toks['bpe']
    m = tiny('llama', tok.get_vocab_size())
    ck = save_ckpt(m, tok, tmp_path/'ck')
    x = batch(tok, corpus, B=1)
    for dt, torch_dt in (('f16', torch.float16), ('bf16', torch.bfloat16)):
        hf = AutoModelForCausalLM.from_pretrained(export(ck, 'hf', tmp_path/dt, dtype=dt, log=lambda s: None), dtype=torch.float32).eval()
        assert json.loads((tmp_path/dt/'config.json').read_text())['torch_dtype'] == str(torch_dt).split('.')[1]
        with torch.no_grad(): assert (hf(x).logits - m(x)[0]).abs().max().item() < 0.5
    odd = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, n_embd=48, pos='rope', norm='rmsnorm', mlp='swiglu'))
    lines = []
    path = export(save_ckpt(odd, tok, tmp_path/'odd'), 'gguf', tmp_path/'odd.gguf', dtype='q8_0', log=lines.append)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types['token_embd.weight'] == 'F16' and types['blk.0.ffn_down.weight'] == 'Q8_0'  # rows of 48 values; of 128 (mlp_hidden)
    assert any('written in f16' in l for l in lines)
