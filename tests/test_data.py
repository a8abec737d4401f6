"Tests of chatgot.data: corpus sources, bad input, tokenizers, cache, split, samplers."
import json
import numpy as np, pytest, torch
from chatgot import data
from chatgot.data import (CorpusError, BatchSampler, eval_batches, load_corpus, load_tokenizer, play_to_dialogue,
                          prepare_data, speakers, split_tokens, token_bytes, train_tokenizer, encode_text)

TRICKY = "ROMEO:\nBut soft!  What light — through yonder\twindow breaks?\n\n\n  JULIET:\nAy me. 🙂 naïve café 日本\n\nNURSE:\n'tis 's  x\n\n"
TURNS = [("TYRION", "I drink and I know things."), ("CERSEI", "When you play the game of thrones, you win or you die."),
         ("JON", "I know nothing."), ("ARYA", "Not today."), ("NED", "Winter is coming.")]
TEXT = ''.join(f'{w}:\n{s} ({i})\n\n' for i in range(60) for w, s in TURNS)  # ~14 KB of dialogue


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    "Every test gets its own empty cache folder through CHATGOT_CACHE."
    d = tmp_path/'cache'
    monkeypatch.setenv('CHATGOT_CACHE', str(d))
    return d


@pytest.fixture
def txt(tmp_path):
    p = tmp_path/'corpus.txt'; p.write_text(TEXT, encoding='utf-8'); return p


def corpus_error(fn, *needles):
    "Call `fn`, expect a one-line CorpusError that contains every needle."
    with pytest.raises(CorpusError) as e: fn()
    msg = str(e.value)
    assert '\n' not in msg and msg.strip(), msg
    for n in needles: assert n in msg, (n, msg)
    return msg


# ---- bad input ----
def test_missing_path(tmp_path):
    corpus_error(lambda: load_corpus(str(tmp_path/'nope.txt')), 'nope.txt', 'does not exist')

def test_empty_file(tmp_path):
    (tmp_path/'e.txt').write_text('  \n\n')
    corpus_error(lambda: load_corpus(str(tmp_path/'e.txt')), 'e.txt', 'is empty')

def test_empty_folder(tmp_path):
    (tmp_path/'d').mkdir(); (tmp_path/'d'/'notes.csv').write_text('a,b\n1,2\n'); (tmp_path/'d'/'blank.md').write_text('')
    corpus_error(lambda: load_corpus(str(tmp_path/'d')), str(tmp_path/'d'), 'no non-empty .txt or .md')

def test_binary_file(tmp_path):
    (tmp_path/'b.txt').write_bytes(b'\x00\x01\x02PK' * 100)  # valid UTF-8, but NUL bytes
    corpus_error(lambda: load_corpus(str(tmp_path/'b.txt')), 'b.txt', 'looks like a binary file')

def test_non_utf8_file(tmp_path):
    (tmp_path/'l.txt').write_bytes('ROMEO:\nAdieu, ma chère\n'.encode('latin-1'))
    corpus_error(lambda: load_corpus(str(tmp_path/'l.txt')), 'l.txt', 'is not valid UTF-8 text')

def test_csv_without_columns(tmp_path):
    (tmp_path/'t.csv').write_text('Season,Episode,Words\n1,1,hello\n')
    corpus_error(lambda: load_corpus(str(tmp_path/'t.csv')), 't.csv', 'found: Season, Episode, Words')

def test_table_without_lines(tmp_path):
    (tmp_path/'t.csv').write_text('Name,Sentence\nARYA,\nJON,  \n')
    corpus_error(lambda: load_corpus(str(tmp_path/'t.csv')), 't.csv', 'has no dialogue lines in column Sentence')

def test_jsonl_without_columns(tmp_path):
    (tmp_path/'t.jsonl').write_text('{"who": "A", "said": "hi"}\n')
    corpus_error(lambda: load_corpus(str(tmp_path/'t.jsonl')), 't.jsonl', 'found: who, said')

def test_jsonl_bad_line(tmp_path):
    (tmp_path/'t.jsonl').write_text('{"speaker": "A", "text": "hi"}\nnot json\n')
    corpus_error(lambda: load_corpus(str(tmp_path/'t.jsonl')), 'line 2 of', 't.jsonl')

def test_unknown_builtin():
    corpus_error(lambda: load_corpus('builtin:sonnets'), 'builtin:sonnets', 'builtin:shakespeare', 'builtin:histories')

def test_too_short(tmp_path):
    (tmp_path/'s.txt').write_text('A:\nhello there\n\n')
    corpus_error(lambda: prepare_data(str(tmp_path/'s.txt'), 'char', seq_len=64), 's.txt', 'is too short: ', 'need at least 130')

def test_bad_tokenizer_inputs(tmp_path, txt):
    corpus_error(lambda: prepare_data(str(txt), 'wordpiece'), "unknown tokenizer 'wordpiece'")
    corpus_error(lambda: load_tokenizer(tmp_path/'none.json'), 'none.json', 'does not exist')
    (tmp_path/'bad.json').write_text('{"x": 1}')
    corpus_error(lambda: load_tokenizer(tmp_path/'bad.json'), 'bad.json', 'not a valid tokenizer.json')


# ---- sources ----
def test_csv_dialogue(tmp_path):
    (tmp_path/'got.csv').write_text('Release Date,Season,Name,Sentence\n'
                                    '2011-04-17,1,waymar royce,"What do you expect? They\'re savages, you know."\n'
                                    '2011-04-17,1,will,"I\'ve never seen wildlings\ndo a thing like this."\n'
                                    '2011-04-17,1,will,Never.\n', encoding='utf-8')
    assert load_corpus(str(tmp_path/'got.csv')) == ("WAYMAR ROYCE:\nWhat do you expect? They're savages, you know.\n\n"
                                                    "WILL:\nI've never seen wildlings\ndo a thing like this.\nNever.\n\n")

def test_jsonl_dialogue(tmp_path):
    rows = [dict(Name='Arya', Sentence='Not today.'), dict(Name='jon snow', Sentence='I know nothing.')]
    (tmp_path/'got.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    text = load_corpus(str(tmp_path/'got.jsonl'))
    assert text == 'ARYA:\nNot today.\n\nJON SNOW:\nI know nothing.\n\n'
    assert speakers(text) == {'ARYA': 1, 'JON SNOW': 1}

def test_folder_source(tmp_path):
    d = tmp_path/'plays'; (d/'sub').mkdir(parents=True)
    (d/'b.txt').write_text('B text\n'); (d/'a.txt').write_text('A text')
    (d/'sub'/'c.md').write_text('# Title\n\n**HAMLET**  \nTo be, or not to be  \n_\\[Aside]_  \nthat is the question.\n')
    (d/'skip.py').write_text('print(1)')
    assert load_corpus(str(d)) == 'A text\n\nB text\n\nHAMLET:\nTo be, or not to be\n[Aside]\nthat is the question.\n\n'

def test_plain_markdown_kept(tmp_path):
    (tmp_path/'n.md').write_text('# Notes\n\nsome *plain* text\n')
    assert load_corpus(str(tmp_path/'n.md')) == '# Notes\n\nsome *plain* text\n'

def test_builtin_histories():
    text = load_corpus('builtin:histories')
    assert abs(len(text) - 1.54e6) < 0.01e6
    assert not any(c in text for c in '*_\\#')
    assert speakers(text)['KING RICHARD III'] > 100

def test_play_to_dialogue_rules():
    md = '## ACT I\n\n*Enter King,\nand Lords.*\n\n**KING**  \nline one  \n\\-line two\\.\n\n_\\[Aside]_  \nthree\n\n**ROSENCRANTZ: & GUILDENSTERN:**  \nAy.\n'
    assert play_to_dialogue(md) == 'Enter King,\nand Lords.\n\nKING:\nline one\n-line two.\n[Aside]\nthree\n\nROSENCRANTZ & GUILDENSTERN:\nAy.\n\n'


# ---- tokenizers ----
@pytest.mark.parametrize('kind', ['bpe', 'char'])
def test_round_trip_and_save_load(tmp_path, kind):
    tok = train_tokenizer(TRICKY * 10 + TEXT, kind, 300)
    for t in (TRICKY, TEXT, 'a\n\n\nb  c\n  \n'):
        ids = tok.encode(t).ids
        assert tok.decode(ids) == t
        assert encode_text(tok, t).tolist() == ids
        assert token_bytes(tok)[ids].sum() == len(t.encode('utf-8'))
    tok.save(str(tmp_path/'tokenizer.json'))
    for src in (tmp_path/'tokenizer.json', tmp_path):
        assert load_tokenizer(src).encode(TRICKY).ids == tok.encode(TRICKY).ids

def test_bpe_covers_unseen_bytes():
    tok = train_tokenizer(TEXT, 'bpe', 300)
    assert tok.get_vocab_size() == 300
    t = 'unseen 🐉 ǅ ümlaut\r\n'
    assert tok.decode(tok.encode(t).ids) == t

def test_char_unknown():
    tok = train_tokenizer('abc\n', 'char')
    assert tok.get_vocab_size() == 5
    ids = encode_text(tok, 'abz\n')
    assert ids.tolist() == tok.encode('abz\n').ids == [1 + 1, 1 + 2, 0, 1 + 0]  # '\n' < 'a' < 'b'; 'z' -> <unk> = 0


# ---- prepare_data, cache, split ----
def test_prepare_data_and_cache_hit(txt, cache, monkeypatch):
    d = prepare_data(str(txt), 'bpe', 300, seq_len=32)
    assert d.vocab_size == 300 and d.train.dtype == np.uint16 and d.source == str(txt)
    assert d.train_bytes + d.val_bytes == len(TEXT.encode())
    assert sorted(p.suffix for p in cache.iterdir()) == ['.json', '.npy', '.npy']  # no temp files left
    def boom(*a, **k): raise AssertionError('cache miss')
    monkeypatch.setattr(data, 'train_tokenizer', boom); monkeypatch.setattr(data, 'encode_text', boom)
    d2 = prepare_data(str(txt), 'bpe', 300, seq_len=32)
    assert isinstance(d2.train, np.memmap)
    assert np.array_equal(d2.train, d.train) and np.array_equal(d2.val, d.val)
    assert d2.tokenizer.to_str() == d.tokenizer.to_str()
    with pytest.raises(AssertionError, match='cache miss'): prepare_data(str(txt), 'bpe', 301, seq_len=32)

def test_cache_dir_argument(txt, tmp_path, cache):
    prepare_data(str(txt), 'char', seq_len=32, cache_dir=tmp_path/'elsewhere')
    assert not cache.exists() and len(list((tmp_path/'elsewhere').iterdir())) == 3

def test_tokenizer_path(txt, tmp_path):
    tok = train_tokenizer(TEXT, 'bpe', 280); tok.save(str(tmp_path/'tokenizer.json'))
    d = prepare_data(str(txt), 'char', seq_len=32, tokenizer_path=tmp_path/'tokenizer.json')
    assert d.vocab_size == 280

def test_split_sizes_no_overlap(txt):
    ids = np.arange(50_000)
    tr, va = split_tokens(ids, 0.1, seq_len=255, seed=0)
    assert len(va) == 5000 and len(tr) == 45000
    assert not set(tr.tolist()) & set(va.tolist()) and np.array_equal(np.sort(np.concatenate([tr, va])), ids)
    assert (np.diff(va) > 0).all() and (np.diff(va) != 1).sum() < 10  # ordered whole chunks
    assert not np.array_equal(split_tokens(ids, 0.1, 255, seed=1)[1], va)
    d = prepare_data(str(txt), 'char', val_frac=0.2, seq_len=32)
    assert len(d.train) + len(d.val) == len(TEXT) and abs(len(d.val) / len(TEXT) - 0.2) < 0.03  # whole chunks of ~1000 chars
    assert d.train_bytes == len(d.train) and d.val_bytes == len(d.val)


# ---- samplers ----
def test_sampler_determinism_and_resume():
    toks = np.arange(5000, dtype=np.uint16)
    a, b = BatchSampler(toks, 8, 16, seed=7), BatchSampler(toks, 8, 16, seed=7)
    ref = [a.next_batch() for _ in range(10)]
    x, y = ref[0]
    assert x.shape == (8, 16) and x.dtype == y.dtype == torch.int64 and torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    for k in range(4): assert torch.equal(b.next_batch()[0], ref[k][0])
    sd = b.state_dict()
    assert all(type(v) is int for v in sd.values()) and sd['k'] == 4
    c = BatchSampler(toks, 8, 16, seed=0); c.load_state_dict(json.loads(json.dumps(sd)))
    for k in range(4, 10):
        xc, yc = c.next_batch(); assert torch.equal(xc, ref[k][0]) and torch.equal(yc, ref[k][1])
    assert not torch.equal(BatchSampler(toks, 8, 16, seed=8).next_batch()[0], ref[0][0])

def test_sampler_refuses_other_shape():
    toks = np.arange(5000, dtype=np.uint16)
    sd = BatchSampler(toks, 8, 16).state_dict()
    with pytest.raises(ValueError, match='batch_size=8 but this sampler has batch_size=4'): BatchSampler(toks, 4, 16).load_state_dict(sd)
    with pytest.raises(ValueError, match='seq_len=16'): BatchSampler(toks, 8, 32).load_state_dict(sd)
    with pytest.raises(ValueError, match='n_tokens=5000'): BatchSampler(toks[:4000], 8, 16).load_state_dict(sd)

def test_eval_batches_deterministic():
    toks = np.arange(1000, dtype=np.uint16)
    first = [(x.clone(), y.clone()) for x, y in eval_batches(toks, 16, 10)]
    again = list(eval_batches(toks, 16, 10))
    assert len(first) == 7 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert torch.equal(torch.cat([x for x, _ in first]).flatten(), torch.arange(990))
    few = list(eval_batches(toks, 4, 10, max_batches=2))
    assert len(few) == 2 and few[-1][0][-1, 0].item() == 980
