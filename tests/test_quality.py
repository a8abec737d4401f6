"Memorisation and per-speaker quality: known answers on hand-made texts, and `chatgot eval` end to end on a tiny run."
import json, math, re
import numpy as np
import pytest, torch
from chatgot.quality import TrainIndex, copy_stats, mark_copies, memorisation, speaker_losses
from chatgot.test_utils import tiny_data, tiny_model, tiny_text
from test_cli import chatgot

TRAIN = ("KING:\nNow is the winter of our discontent made glorious summer by this sun of York.\n\n"
         "QUEEN:\nAnd all the clouds that loured upon our house in the deep bosom of the ocean buried.\n")
LINE = "And all the clouds that loured upon our house in the deep bosom of the ocean buried."

def test_copy_of_a_train_line_and_fresh_text():
    ix = TrainIndex(TRAIN)
    m = memorisation([LINE], ix)
    assert m['ngram_share'] == 1 and m['longest'] == len(LINE) and m['char_share'] == 1
    m = memorisation(["Something entirely new, which no script of this corpus ever said to anyone here."], ix)
    assert (m['ngram_share'], m['longest'], m['char_share']) == (0, 0, 0)
    s = copy_stats("Hark! " + LINE + " So be it, then.", ix)
    assert s['longest'] == len(LINE) and s['longest_at'] == (6, 6 + len(LINE))

def test_marked_spans():
    ix = TrainIndex(TRAIN)
    assert mark_copies(f"Hark! {LINE} So be it.", ix) == f"Hark! «{LINE}» So be it."
    assert mark_copies("Nothing here is copied.", ix, '[[', ']]') == "Nothing here is copied."

def test_stitched_passages_are_not_one_copy():
    "Two training passages that share a word: one marked run, but the longest copy is the longer passage alone"
    a, b = "Now is the winter of our discontent made glorious summer", "summer by this sun of York and all the clouds"
    ix = TrainIndex(f"{a} one two three four five six seven eight nine ten {b}.")
    s = copy_stats("Now is the winter of our discontent made glorious summer by this sun of York and all", ix, spans=True)
    assert len(s['spans']) == 1 and s['longest'] == len(a)

def test_speaker_losses_shape(one_thread):
    torch.manual_seed(0)
    d = tiny_data(200)
    rows = speaker_losses(tiny_model(d), d.val, d.tokenizer, top=['KING', 'QUEEN', 'NOBODY'], max_tokens=1000)
    assert [r['speaker'] for r in rows] == ['KING', 'QUEEN', 'NOBODY', '(all turns)']
    assert rows[2]['tokens'] == 0 and rows[2]['loss'] is None
    assert 0 < rows[0]['tokens'] + rows[1]['tokens'] <= rows[-1]['tokens'] <= 1000
    for r in rows[:2] + rows[-1:]: assert abs(r['loss'] - math.log(d.vocab_size)) < 0.6  # a random model

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny run of 30 steps on a toy dialogue with in-training samples"
    tmp = tmp_path_factory.mktemp('quality')
    (tmp/'c.txt').write_text(tiny_text(800))
    env = {'CHATGOT_CACHE': str(tmp/'cache')}
    p = chatgot('train', '--preset', 'tiny', '--data', tmp/'c.txt', '--steps', 30, '--batch-size', 4, '--seq-len', 32,
                '--eval-every', 15, '--sample-every', 15, '--eval-batches', 2, '--device', 'cpu', '--out', tmp/'run', cwd=tmp, env=env)
    assert p.returncode == 0, p.stderr
    return tmp, env

def test_samples_log_memorisation(run):
    tmp, _ = run
    rows = [json.loads(l) for l in (tmp/'run'/'samples.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows] == [15, 30]
    for r in rows:
        for k in ('metrics', 'reference'): assert 0 <= r[k]['copied_8grams'] <= 1 and r[k]['longest_copy'] >= 0

def test_eval_end_to_end(run):
    tmp, env = run
    p = chatgot('eval', '--ckpt', tmp/'run', cwd=tmp, env=env)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert re.search(r"^  8-grams found in train +\d\.\d{3} +\d\.\d{3} +\d\.\d{3}$", out, re.M), out
    assert re.search(r"^  longest copy \(chars\) +\d+ +\d+ +\d+$", out, re.M), out
    sp = re.findall(r"^  (KING|QUEEN|YORK|LANCASTER) +\d+ +(\d+) +(\d+\.\d{3}) +\d+\.\d{3}$", out, re.M)
    assert len(sp) == 4 and all(int(n) > 0 for _, n, _ in sp), out
    assert re.search(r"^  \(all turns\) +\d+ +\d+ +\d+\.\d{3}", out, re.M), out

def test_eval_as(run, monkeypatch, capsys, one_thread):
    "--as samples that character; an unknown name is one line and exit 2 (in this process: no second torch import)"
    from chatgot.cli import main
    tmp, env = run
    monkeypatch.setenv('CHATGOT_CACHE', env['CHATGOT_CACHE'])
    assert main(['eval', '--ckpt', str(tmp/'run'), '--as', 'queen']) == 0
    out = capsys.readouterr().out
    assert 'as QUEEN' in out and len(re.findall(r"^  QUEEN: / ", out, re.M)) == 3, out
    assert main(['eval', '--ckpt', str(tmp/'run'), '--as', 'HAMLET']) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and not cap.out, cap
    assert '--as HAMLET: no speaker of that name' in err and 'top speakers' in err and 'YORK (' in err, err
