"Issue 19, chat on any corpus: unknown characters, plain text, turns that stay turns, small-corpus defaults, the closing summary."
import io, json, re, sys
from pathlib import Path
import pytest
from chatgot.test_utils import tiny_text

def tiny_run(tmp:Path, name:str, text:str, **kw):
    "Train `tiny` briefly on `text`; returns the run folder and what train() printed"
    from chatgot.train import train
    (tmp/f'{name}.txt').write_text(text)
    out, buf = tmp/name, io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try: learn = train(out=out, **{**dict(preset='tiny', data=str(tmp/f'{name}.txt'), steps=6, batch_size=4, seq_len=32,
                                         eval_batches=2, device='cpu'), **kw})
    finally: sys.stdout = old
    return out, buf.getvalue(), learn

def run_chat(monkeypatch, capsys, *args, said="Where is the crown?\n"):
    "`chatgot chat ARGS` in this process, the user typing `said`: (exit code, stdout, stderr)"
    from chatgot.cli import main
    monkeypatch.setattr(sys, 'stdin', io.StringIO(said))
    code = main(['chat', *map(str, args)])
    o = capsys.readouterr()
    return code, o.out, o.err

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    import os
    tmp = tmp_path_factory.mktemp('turns')
    os.environ.setdefault('CHATGOT_CACHE', str(tmp/'cache'))
    dia, _, _ = tiny_run(tmp, 'dialogue', tiny_text(200))
    plain, _, _ = tiny_run(tmp, 'plain', "The rain fell on the roofs of the town, and the river rose in the night.\n" * 60)
    return tmp, dia, plain

def test_unknown_character_warns_with_top_speakers(runs, monkeypatch, capsys):
    _, dia, _ = runs
    code, out, err = run_chat(monkeypatch, capsys, '--ckpt', dia, '--as', 'dromio')
    assert code == 0, err
    warn = [l for l in err.splitlines() if 'DROMIO' in l]
    assert len(warn) == 1 and warn[0].startswith('warning: DROMIO never speaks in this corpus'), err
    assert all(f"{n} (" in warn[0] for n in ('KING', 'QUEEN', 'YORK', 'LANCASTER')), warn  # the top speakers, with turn counts
    assert out.count('DROMIO: ') == 1, out  # chat still runs, as the name asked for
    code, out, err = run_chat(monkeypatch, capsys, '--ckpt', dia, '--as', 'york')
    assert code == 0 and 'warning' not in err and 'YORK: ' in out, (out, err)

def test_plain_text_corpus_continues_text(runs, monkeypatch, capsys):
    _, _, plain = runs
    code, out, err = run_chat(monkeypatch, capsys, '--ckpt', plain, said="The rain fell\nAnd the river\n")
    assert code == 0, err
    note = [l for l in err.splitlines() if 'no speakers' in l]
    assert len(note) == 1 and 'continues your text' in note[0], err
    assert sum(l.startswith('... ') for l in out.splitlines()) == 2 and 'KING:' not in out, out  # no fallback character, one continuation per line
    code, out, err = run_chat(monkeypatch, capsys, '--ckpt', plain, '--as', 'hamlet', said="The rain\n")
    assert code == 0 and 'no HAMLET to play' in err and 'HAMLET:' not in out, (out, err)

def test_reply_stops_before_glued_names_fragments_and_directions():
    from chatgot.chat import ReplyText
    from chatgot.data import train_tokenizer
    from chatgot.generate import byte_table
    cases = {"Will you have not the chain?notDROMIO OF EPHESUS:\nI will.": "Will you have not the chain?not",
             "Go, sirrah.\nCraIA:\nNo.": "Go, sirrah.",
             "I am gone, sir.\nDUKE OF YORK:\nStay.": "I am gone, sir.",
             "Farewell, my lord.\nExit\n\nEnter Antony.": "Farewell, my lord.",
             "Peace!\n[Aside]\nThe king is mad.": "Peace!",
             "Mark me: the crown is mine.\nO Romeo:\nAway.\n\nKING:": "Mark me: the crown is mine.\nO Romeo:\nAway."}
    tok = train_tokenizer(''.join(cases) + 'KING: Go to my lord; saynotDRO', 'char')
    table = byte_table(tok)
    for text, want in cases.items():
        ids, rt, shown = tok.encode(text).ids, ReplyText(table), []
        for i in range(1, len(ids) + 1):
            shown.append(rt.update(ids[:i]))
            assert want.startswith(''.join(shown)), (text, ''.join(shown))  # nothing shown that a later token takes back
            if rt.ended: break
        shown.append(rt.update(ids, final=True))
        assert ''.join(shown) == want and rt.shown == want, (text, rt.shown)
    for start in ("CraIA:\nNo.", "Exit\nNo.", "KING:\nNo."):  # a reply that starts off the turn is sampled again
        assert ReplyText(table).handed_on(tok.encode(start).ids), start
    rt = ReplyText(table)  # the token limit inside a glued name: the name never shows
    ids = tok.encode("Go to my lord; saynotDRO").ids
    assert ''.join([rt.update(ids[:i]) for i in range(1, len(ids) + 1)] + [rt.update(ids, final=True)]) == "Go to my lord;"

def test_small_corpus_defaults_printed_and_overridable(tmp_path):
    text = tiny_text(25)  # about 900 characters: 24 steps of 8 x 64 tokens pass over it more than 10 times
    out, said, learn = tiny_run(tmp_path, 'small', text, steps=24, batch_size=8, seq_len=64)
    lines = said.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith('small corpus:'))
    assert i <= 5, lines[:8]  # among the first lines, before training
    assert 'dropout 0.2' in lines[i] and 'nanoGPT' in lines[i] and '--dropout' in lines[i], lines[i]
    flags = json.loads((out/'config.json').read_text())['flags']
    assert flags['dropout'] == 0.2 and flags['eval_every'] == flags['save_every'] == flags['steps'] // 8, flags
    assert learn.model.config.dropout == 0.2
    # given flags win, and say nothing about themselves
    out2, said2, learn2 = tiny_run(tmp_path, 'given', text, steps=24, batch_size=8, seq_len=64, dropout=0.05, weight_decay=0.3,
                                   eval_every=10, save_every=10)
    f2 = json.loads((out2/'config.json').read_text())['flags']
    assert (f2['dropout'], f2['weight_decay'], f2['eval_every'], f2['save_every']) == (0.05, 0.3, 10, 10), f2
    assert all(g['weight_decay'] in (0.3, 0.0) for g in learn2.opt.param_groups if 'weight_decay' in g)
    assert 'dropout 0.2' not in said2
    # on --resume the stored flags win: nothing is decided again
    out3, said3, learn3 = tiny_run(tmp_path, 'small', text, steps=28, batch_size=None, seq_len=None, preset=None,
                                   data=None, resume=True)
    f3 = json.loads((out/'config.json').read_text())['flags']
    assert 'small corpus:' not in said3 and f3['dropout'] == 0.2 and f3['eval_every'] == flags['eval_every'], (said3, f3)

def test_summary_after_early_stop_names_best_checkpoint(tmp_path):
    from chatgot.learner import Callback
    class ValRises(Callback):  # val loss rises at every eval after the first while the real train loss falls
        order = 80
        def after_eval(self): self.learn.val_loss = 5.0 + self.learn.step / 100
    out, said, learn = tiny_run(tmp_path, 'early', tiny_text(200), steps=40, eval_every=5, save_every=5, early_stop=True, eval_batches=1,
                                loss_trend=False, cbs=[ValRises()])
    assert learn.interrupted == 'overfit' and learn.step < 40, (learn.step, said)
    best = (out/'checkpoints'/'best').read_text().strip()
    assert best == 'step-0000005', best
    stop = [l for l in said.splitlines() if l.startswith('stopped early')]
    assert len(stop) == 1 and f"at step {learn.step} of 40" in stop[0] and 'val loss rose 2 evals in a row' in stop[0], said
    named = [l for l in said.splitlines() if l.startswith('best checkpoint:')]
    assert len(named) == 1 and str(out/'checkpoints'/'step-0000005') in named[0] and 'chat, generate, eval and export use it' in named[0]
    assert '--no-early-stop' in said, said
