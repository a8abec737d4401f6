"Sampling: logits processors, seeded generation on the KV cache, boundaries, diversity metrics, in-training samples, and the generate/chat/eval CLI."
import io, json, math, os, random, re, subprocess, sys
from pathlib import Path
import pytest, torch
from chatgot.data import train_tokenizer, token_bytes
from chatgot.learner import Learner
from chatgot.checkpoint import load_for_inference
from chatgot.generate import (DynaTemp, FrequencyPenalty, GenContext, MinP, NoRepeatNGram, PresencePenalty, RepetitionPenalty,
                              Temperature, TopK, TopP, byte_table, decode, find_boundary, finish, generate, generate_text,
                              make_processors, protected_ids, trim_text)
from chatgot.sampling import SampleCallback, bleu, distinct_n, rep_l, self_bleu, seq_rep_n, words
from chatgot.test_utils import tiny_data, tiny_model, tiny_text

inf = math.inf

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py

def ctx(tokens, n_prompt=0, protected=None):
    return GenContext(torch.tensor(tokens), n_prompt, None if protected is None else torch.tensor(protected))

def finite(x): return torch.isfinite(x).tolist()

# ---- processors vs hand-computed tensors
def test_temperature_topk_topp_minp_by_hand():
    x = torch.tensor([[1., -2., 4.], [0., 3., 3.]])
    assert torch.allclose(Temperature(2.)(x), torch.tensor([[.5, -1., 2.], [0., 1.5, 1.5]]))
    assert Temperature(0)(x)[0].tolist() == [-inf, -inf, 0.]
    assert finite(TopK(1)(x)) == [[False, False, True], [False, True, True]]  # the tie with the k-th is kept
    p = torch.tensor([[0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]).log()
    # row 0 sorted 0.6, 0.3, 0.1: mass before = 0, 0.6, 0.9; row 1 sorted 0.5, 0.25, 0.25: 0, 0.5, 0.75
    assert finite(TopP(0.65)(p))[0] == [False, True, True]
    assert finite(TopP(0.45)(p)) == [[False, True, False], [False, False, True]]
    assert finite(TopP(0.95)(p)) == [[True, True, True], [True, True, True]]
    # min-p 0.45: row 0 keeps p >= 0.27 (0.6, 0.3); row 1 keeps p >= 0.225 (all)
    assert finite(MinP(0.45)(p)) == [[False, True, True], [True, True, True]]
    assert finite(MinP(0.55)(p)) == [[False, True, False], [False, False, True]]

def test_topp_row_with_a_tie_at_the_cut():
    p = torch.tensor([[0.25, 0.25, 0.5]]).log()  # sorted 0.5, 0.25, 0.25 with mass before 0, 0.5, 0.75
    kept = finite(TopP(0.6)(p))[0]
    assert kept[2] and sum(kept) == 2  # the top token and exactly one of the tied pair

def test_penalties_by_hand():
    x = torch.tensor([[3., -2., 1., 0.5]])
    # prompt [2], generated [0, 1, 0]
    c = ctx([[2, 0, 1, 0]], n_prompt=1)
    assert torch.allclose(RepetitionPenalty(1.5)(x, c), torch.tensor([[2., -3., 1., 0.5]]))
    assert torch.allclose(RepetitionPenalty(1.5, window=1)(x, c), torch.tensor([[2., -2., 1., 0.5]]))
    assert torch.allclose(RepetitionPenalty(1.5, include_prompt=True)(x, c), torch.tensor([[2., -3., 1 / 1.5, 0.5]]))
    assert torch.allclose(FrequencyPenalty(0.25)(x, c), torch.tensor([[2.5, -2.25, 1., 0.5]]))
    assert torch.allclose(PresencePenalty(1.)(x, c), torch.tensor([[2., -3., 1., 0.5]]))
    cp = ctx([[2, 0, 1, 0]], n_prompt=1, protected=[True, False, False, False])
    assert torch.allclose(RepetitionPenalty(1.5)(x, cp), torch.tensor([[3., -3., 1., 0.5]]))
    assert torch.allclose(RepetitionPenalty(1.0)(x, c), x)  # a penalty of 1 changes nothing

def test_no_repeat_ngram_by_hand():
    x = torch.zeros(1, 6)
    assert finite(NoRepeatNGram(3)(x, ctx([[5, 1, 2, 5, 1]])))[0] == [True, True, False, True, True, True]
    assert finite(NoRepeatNGram(3)(x, ctx([[5, 1, 2, 5, 1]], protected=[False, False, True, False, False, False])))[0] == [True] * 6
    assert finite(NoRepeatNGram(3, include_prompt=False)(x, ctx([[5, 1, 2, 5, 1]], n_prompt=3)))[0] == [True] * 6

def test_dynatemp_by_hand():
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    h = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    t = 0.2 + (1.8 - 0.2) * (h / math.log(4)) ** 0.5
    assert abs(DynaTemp(0.2, 1.8, 0.5).temperature(p.log()).item() - t) < 1e-5
    assert torch.allclose(DynaTemp(0.2, 1.8, 0.5)(p.log()), p.log() / t, atol=1e-5)

def test_chain_and_bad_values():
    assert [type(p).__name__ for p in make_processors(0.5, top_k=5, repetition_penalty=1.2, frequency_penalty=0.1, presence_penalty=0.1)] == \
        ['RepetitionPenalty', 'FrequencyPenalty', 'PresencePenalty', 'Temperature', 'TopK']
    for kw in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.01), dict(min_p=-0.1), dict(repetition_penalty=-1), dict(top_k=-3)):
        with pytest.raises(ValueError, match='--'): make_processors(**kw)

# ---- generation
@pytest.fixture(scope='module')
def model_data():
    torch.manual_seed(0)
    d = tiny_data()
    return tiny_model(d).eval(), d

def test_generate_seeded_batched(model_data):
    m, d = model_data
    idx = torch.randint(0, d.vocab_size, (4, 5), generator=torch.Generator().manual_seed(0))
    a = generate(m, idx, 80, make_processors(0.9, top_p=0.95), seed=7)
    assert a == generate(m, idx, 80, make_processors(0.9, top_p=0.95), seed=7)
    assert a != generate(m, idx, 80, make_processors(0.9, top_p=0.95), seed=8)
    assert len({tuple(r) for r in a}) == 4 and all(len(r) == 80 for r in a)
    t = generate_text(m, d.tokenizer, ['KING:\n', 'QUEEN:\nMy lord'], n=3, max_new_tokens=50, seed=3, temperature=0.8)
    assert len(t) == 6 and t == generate_text(m, d.tokenizer, ['KING:\n', 'QUEEN:\nMy lord'], n=3, max_new_tokens=50, seed=3, temperature=0.8)

def test_cache_matches_full_recompute_across_slides(model_data):
    m, d = model_data
    bs, keep = m.config.block_size, 40
    prompt = torch.randint(0, d.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    toks, start = prompt[0].tolist(), 0
    with torch.no_grad():
        for _ in range(150):
            toks.append(int(m(torch.tensor([toks[start:]]))[0][0, -1].argmax()))
            if len(toks) - 1 - start == bs: start = len(toks) - keep
    assert generate(m, prompt, 150, [Temperature(0)], keep=keep)[0] == toks[7:]

def test_stop_and_turns(model_data):
    m, d = model_data
    for t in generate_text(m, d.tokenizer, 'YORK:\n', n=6, max_new_tokens=120, seed=0, stop_at=('turn',)):
        assert not re.search(r"\S\n\n", t) and not re.search(r"\S\n[A-Z]+:\n", t), t

def test_generation_leaves_global_rng_and_mode(model_data):
    m, d = model_data
    m.train()
    s = torch.get_rng_state()
    generate(m, torch.zeros(2, 3, dtype=torch.long), 20, seed=0)
    assert torch.equal(s, torch.get_rng_state()) and m.training
    m.eval()

# ---- bytes and boundaries on tricky text
TRICKY = "Ça va? Naïve — déjà vu! 🐉🏰 «guillemets» KING HENRY VI:\nO God… thy will.\n\n"

def test_decode_prefixes_are_whole_characters():
    tok = train_tokenizer(TRICKY * 30, 'bpe', vocab_size=280)
    table = byte_table(tok)
    assert [len(b) for b in table] == token_bytes(tok).tolist()
    byte_id = {b: i for i, b in enumerate(table) if len(b) == 1}
    for text in (TRICKY, "🐉é—"):
        for ids in (tok.encode(text).ids, [byte_id[bytes([c])] for c in text.encode()]):  # merged, and one token per byte
            full = decode(ids, table)
            assert full == text
            for k in range(len(ids) + 1):
                s = decode(ids[:k], table)
                assert text.startswith(s) and '\ufffd' not in s

@pytest.mark.parametrize('text,at,want', [
    ("Go now.\n\nLADY ANNE:\nStay", ('turn',), "Go now."),
    ("To arms\nFIRST MURDERER:\nHere", ('turn',), "To arms"),
    ("Thus: we go\nand THEN we stay", ('turn',), None),
    ("Stay, I pray you... the king comes! And", ('sentence',), "Stay, I pray you..."),
    ("Is it so?!\" quoth he", ('sentence',), "Is it so?!\""),
    ("Mr. Page and Dr. Caius went. Then", ('sentence',), "Mr. Page and Dr. Caius went."),
    ("Naïve café, déjà vu. Encore", ('sentence',), "Naïve café, déjà vu."),
    ("one\ntwo. three\n\nYORK:\nno", ('turn', 'sentence'), "one\ntwo."),
])
def test_boundaries(text, at, want):
    cut = find_boundary(text, at)
    assert (None if cut is None else text[:cut]) == want

def test_trim_never_cuts_a_word():
    r = random.Random(0)
    alphabet = list("abcdé ’'—.!?\n🐉 XY:")
    for _ in range(300):
        text = ''.join(r.choice(alphabet) for _ in range(r.randint(0, 30)))
        for to in ('word', 'sentence'):
            t = trim_text(text, to)
            assert text.startswith(t)
            rest = text[len(t):]
            assert not (t and rest and re.match(r"[\w'’-]", t[-1]) and re.match(r"[\w'’-]", rest[0])), (text, to, t)
    assert trim_text("The crown is mi", 'word') == "The crown is"
    assert trim_text("Hark! The crown is mi", 'sentence') == "Hark!"
    assert finish("Ay.\n\nYORK:\nNo", ('turn',)) == "Ay."

def test_protected_ids_cover_names_and_turns():
    tok = train_tokenizer(TRICKY * 30, 'bpe', vocab_size=280)
    pm = protected_ids(tok)
    assert pm[tok.encode("KING HENRY VI:\n\n").ids].all()
    assert not pm[tok.encode("thy").ids].any() and pm[tok.encode(" ").ids].all()  # lower-case words are penalised, spaces not

# ---- metrics on tiny known inputs
def test_metrics():
    assert words("O God… thy will!") == ['O', 'God', '…', 'thy', 'will', '!']
    assert distinct_n(["x y x", "y z"], 1) == 3 / 5
    assert distinct_n(["x y x", "y z"], 2) == 3 / 3  # (x,y) (y,x) from the first, (y,z) from the second: no n-gram spans two samples
    assert seq_rep_n("a a a a a".split(), 2) == 1 - 1 / 4
    assert rep_l("a b c a".split(), 2) == 0 and rep_l("a b c a".split(), 3) == 1 / 3
    # BLEU-2 by hand: hyp "a b c d", ref "a b x d": p1 = 3/4, p2 = 1/3, equal length
    assert abs(bleu("a b c d".split(), ["a b x d".split()], max_n=2) - math.sqrt(3 / 4 * 1 / 3)) < 1e-12
    # brevity: hyp of 2 words, closest reference 4 words: BP = exp(1 - 4/2)
    assert abs(bleu("a b".split(), ["a b c d".split(), "q r s t u v".split()], max_n=1) - math.exp(-1)) < 1e-12
    # clipping: "a a a" against "a": 1 match of 3
    assert abs(bleu("a a a".split(), [["a"]], max_n=1) - 1 / 3) < 1e-12  # longer than the reference: no brevity penalty
    assert self_bleu(["a b c d e"] * 2 + ["v w x y z"]) == pytest.approx((1 + 1 + 0) / 3)

# ---- in-training samples
def test_sample_callback_leaves_training_bitwise_identical(tmp_path):
    d = tiny_data()
    def fit(cbs, out=None):
        torch.manual_seed(0)
        l = Learner(tiny_model(d, dropout=0.1), d, cbs=cbs, batch_size=4, seq_len=32, eval_every=5, eval_batches=2, out=out)
        l.fit(10)
        return l
    a = fit([])
    err = io.StringIO()
    b = fit([SampleCallback(every=3, n=2, max_new_tokens=16, file=err)], out=tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.recorder.losses == b.recorder.losses
    rows = [json.loads(l) for l in (tmp_path/'samples.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [3, 6, 9] and all(len(r['samples']) == 2 for r in rows)
    assert err.getvalue().count('sample step') == 3 and b.model.training

# ---- the CLI on a tiny trained run
@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from chatgot.train import train
    tmp = tmp_path_factory.mktemp('sampling')
    (tmp/'c.txt').write_text(tiny_text(800))
    CACHE['CHATGOT_CACHE'] = str(tmp/'cache')
    old = os.environ.get('CHATGOT_CACHE'); os.environ['CHATGOT_CACHE'] = str(tmp/'cache')
    try: train(out=tmp/'run', preset='tiny', data=str(tmp/'c.txt'), steps=40, batch_size=8, seq_len=64, quiet=True)
    finally:
        if old is None: os.environ.pop('CHATGOT_CACHE')
        else: os.environ['CHATGOT_CACHE'] = old
    return tmp/'run'

CACHE = {}

def cli(*args, stdin=''):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', **CACHE}
    return subprocess.run([sys.executable, '-m', 'chatgot.cli', *map(str, args)], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120)

def test_chat_through_stdin(run_dir):
    r = cli('chat', '--ckpt', run_dir, '--as', 'queen', stdin="Where is the king?\n\nWhat says York?\n/quit\nignored\n")
    assert r.returncode == 0, r.stderr
    assert sum(l.startswith('QUEEN: ') for l in r.stdout.splitlines()) == 2, r.stdout
    r = cli('chat', '--ckpt', run_dir / 'checkpoints' / 'step-0000040', stdin="Hail\n")  # EOF ends it too
    assert r.returncode == 0 and r.stdout.count(': ') >= 1, r.stderr

def test_generate_same_seed_same_text(run_dir):
    a = cli('generate', '--ckpt', run_dir, '--seed', '5', '--max-new-tokens', '60', '--top-k', '20', '--repetition-penalty', '1.2')
    b = cli('generate', '--ckpt', run_dir, '--seed', '5', '--max-new-tokens', '60', '--top-k', '20', '--repetition-penalty', '1.2')
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip(), a.stderr

def test_eval_prints_metrics(run_dir):
    r = cli('eval', '--ckpt', run_dir)
    assert r.returncode == 0, r.stderr
    assert re.search(r"val loss \d+\.\d+ nats/token, \d+\.\d+ bits/byte \(lower is better\)", r.stdout) and 'self_bleu' in r.stdout

@pytest.mark.parametrize('args', [['generate', '--temperature', '-0.5'], ['generate', '--top-p', '0'], ['generate', '--top-p', '1.5'],
                                  ['generate', '--ckpt', '/no/such/run'], ['chat', '--ckpt', '/no/such/run'], ['eval'],
                                  ['generate', '--ckpt', '{tmp}']])
def test_bad_flags_exit_2_with_one_line(args, run_dir):
    args = [a.replace('{tmp}', str(run_dir.parent / 'c.txt')) for a in args]
    if '--ckpt' not in args and args[0] != 'eval': args += ['--ckpt', str(run_dir)]
    r = cli(*args)
    assert r.returncode == 2, (args, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr

def test_corrupt_checkpoint_is_one_value_error(run_dir, tmp_path):
    import shutil
    ck = tmp_path/'ck'
    shutil.copytree(run_dir/'checkpoints'/'step-0000040', ck)
    (ck/'tokenizer.json').write_text('{}')
    with pytest.raises(ValueError, match='corrupt'): load_for_inference(ck)
