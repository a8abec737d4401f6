"Issue 19, your own corpus: best checkpoint by default, what train() says about the corpus, the overfitting guard, memorisation."
import csv, json, os, re, subprocess, sys
from collections import Counter
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def play_csv(path:Path, play:str='hamlet', n_bytes:int=30_000) -> Path:
    "The first `n_bytes` of a built-in play as a `Name,Sentence` CSV, as a user would bring one"
    from chatgot.data import builtin_files, play_to_dialogue, turn_re
    text = play_to_dialogue(next(p for p in builtin_files('shakespeare') if p.stem == play).read_text(encoding='utf-8'))
    parts, rows, size = turn_re.split(text)[1:], [], 0
    for who, said in zip(parts[::2], parts[1::2]):
        said = ' '.join(said.split())
        if not said: continue
        rows.append((who.title(), said)); size += len(who) + len(said) + 4
        if size >= n_bytes: break
    with open(path, 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['Name', 'Sentence']); w.writerows(rows)
    return path

def cli(*args, env=None):
    e = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', **(env or {})}
    return subprocess.run([sys.executable, '-m', 'chatgot.cli', *map(str, args)], capture_output=True, text=True, env=e, timeout=300)

@pytest.fixture(scope='module')
def hamlet_run(tmp_path_factory):
    "A tiny run on 30 kB of Hamlet, with evals and saves every 10 steps"
    from chatgot.train import train
    tmp = tmp_path_factory.mktemp('corpus')
    os.environ.setdefault('CHATGOT_CACHE', str(tmp/'cache'))
    src = play_csv(tmp/'hamlet.csv')
    learn = train(out=tmp/'run', preset='tiny', data=str(src), steps=20, eval_every=5, save_every=5, eval_batches=2,
                  keep_last=1, device='cpu', quiet=True)
    return tmp, learn

def test_corpus_facts_in_config(hamlet_run):
    tmp, _ = hamlet_run
    d = json.loads((tmp/'run'/'config.json').read_text())['data']
    assert d['tokens'] == d['train_tokens'] + d['val_tokens'] and d['tokens'] > 20_000, d
    assert d['seen_tokens'] == 20 * 8 * 64 and d['epochs'] == round(d['seen_tokens'] / d['train_tokens'], 2)
    assert 'Hamlet'.upper() in d['speakers'] and d['n_speakers'] >= 5, d['speakers']

def test_best_pointer_and_inference_use_it(hamlet_run):
    from chatgot.checkpoint import load_for_inference, _val_loss, list_checkpoints, abandoned_sets
    tmp, _ = hamlet_run
    ck = tmp/'run'/'checkpoints'
    best = ck/(ck/'best').read_text().strip()
    vals = {p: _val_loss(p) for p in list_checkpoints(ck) + [c for s in abandoned_sets(ck) for c in list_checkpoints(s)]}
    assert best.is_dir() and vals[best] == min(v for v in vals.values() if v is not None), vals
    msgs = []
    _, _, meta = load_for_inference(tmp/'run', device='cpu', log=msgs.append)
    assert meta['path'] == str(best) and msgs == [f"checkpoint: {best} (best val loss {vals[best]:.3f})"], msgs
    newest = list_checkpoints(ck)[0]
    assert load_for_inference(newest, device='cpu', log=msgs.append)[2]['path'] == str(newest)
    assert msgs[-1] == f"checkpoint: {newest} (as given)"

def test_generate_says_which_checkpoint(hamlet_run):
    tmp, _ = hamlet_run
    p = cli('generate', '--ckpt', tmp/'run', '--max-new-tokens', 20, '--seed', 1, env={'CHATGOT_CACHE': str(tmp/'cache')})
    assert p.returncode == 0, p.stderr
    assert re.match(r"checkpoint: \S+step-\d{7} \(best val loss \d+\.\d{3}\)$", p.stderr.splitlines()[0]), p.stderr

def test_small_corpus_warns_and_tiny_one_is_refused(tmp_path, capsys):
    from chatgot.train import train
    os.environ.setdefault('CHATGOT_CACHE', str(tmp_path/'cache'))
    src = play_csv(tmp_path/'small.csv', n_bytes=4_000)
    train(out=tmp_path/'run', preset='tiny', data=str(src), steps=10, batch_size=64, eval_every=10, eval_batches=1, device='cpu', quiet=True)
    err = capsys.readouterr().err
    d = json.loads((tmp_path/'run'/'config.json').read_text())['data']
    assert d['epochs'] > 10 and f"warning: this run sees the training text {d['epochs']:g} times" in err, err
    assert 'less than one batch' in err, err
    (tmp_path/'mini.txt').write_text("HAMLET:\nTo be, or not to be.\n\nHORATIO:\nMy lord.\n" * 2)
    p = cli('train', '--preset', 'tiny', '--data', tmp_path/'mini.txt', '--out', tmp_path/'refused', '--device', 'cpu',
            env={'CHATGOT_CACHE': str(tmp_path/'cache')})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and 'too short' in p.stderr, p.stderr
    assert not (tmp_path/'refused').exists()

def test_overfit_event_early_stop_and_best_kept(tmp_path, capsys):
    "2 kB seen ~50 times at a high LR: val loss turns up, an `overfit` event, the run stops there, `best` names the lowest val loss"
    from chatgot.train import train
    from chatgot.runs import plot_run
    os.environ.setdefault('CHATGOT_CACHE', str(tmp_path/'cache'))
    src = play_csv(tmp_path/'s.csv', n_bytes=2_000)
    learn = train(out=tmp_path/'run', preset='tiny', data=str(src), steps=200, batch_size=16, eval_every=10, save_every=10,
                  eval_batches=2, lr=0.02, device='cpu', quiet=True)
    rows = [json.loads(l) for l in open(tmp_path/'run'/'metrics.jsonl')]
    ev = [r for r in rows if r.get('event') == 'overfit']
    assert len(ev) == 1 and ev[0]['stop'] is True and ev[0]['train_loss'] < ev[0]['from_train_loss'], ev
    assert learn.interrupted == 'overfit' and learn.step == ev[0]['step'] < 200, learn.step  # stopped right after that eval
    evals = Counter(r['step'] for r in rows if r.get('kind') == 'eval')
    steps = Counter(r['step'] for r in rows if r.get('kind') == 'step')
    assert set(evals.values()) == {1} and set(steps.values()) == {1}, (evals, steps)  # one eval row per step, one step row per step
    assert max(evals) == max(steps) == learn.step, (max(evals), max(steps))  # no step after the stopping eval
    assert sorted(evals) == list(range(10, learn.step + 1, 10)), sorted(evals)
    assert json.loads((tmp_path/'run'/'config.json').read_text())['flags']['early_stop'] is True  # > 4 epochs: on by default
    best = (tmp_path/'run'/'checkpoints'/'best').read_text().strip()
    assert best == f"step-{ev[0]['best_step']:07d}" and (tmp_path/'run'/'checkpoints'/best).is_dir(), best
    assert 'overfit at step' in capsys.readouterr().err
    assert plot_run(tmp_path/'run').is_file()

def test_early_stop_flags_contradicting_is_one_line(tmp_path):
    p = cli('train', '--early-stop', '--no-early-stop', '--preset', 'tiny', '--out', tmp_path/'r')
    assert p.returncode == 2 and 'contradict' in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
