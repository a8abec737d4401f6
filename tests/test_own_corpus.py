"A surprise check on a play nobody tuned on: the first 30 kB of Macbeth as a `Name,Sentence` CSV, `chatgot train --preset baby` with its defaults, then 100 chat turns with a scripted user (slow: a few minutes on 2 CPU cores; `13a_own_corpus` does the same on Hamlet)."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from chatgot.test_utils import play_csv, turn_faults

ROOT = Path(__file__).resolve().parents[1]
USER = ["Where is the king?", "What news, my lord?", "I pray you, speak.", "Who goes there?", "Is he dead?",
        "Come, let us go.", "What say you to that?", "Good morrow.", "Tell me more.", "Why do you weep?"]

@pytest.mark.slow
def test_macbeth_trains_and_chats_100_turns_cleanly(tmp_path):
    csv = play_csv('macbeth', tmp_path/'macbeth.csv', limit=30_000)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'CHATGOT_CACHE': str(tmp_path/'cache')}
    p = subprocess.run([sys.executable, '-m', 'chatgot.cli', 'train', '--data', str(csv), '--preset', 'baby', '--out', str(tmp_path/'run')],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'small corpus' in p.stdout and 'early stop: on' in p.stdout  # the corpus facts and the defaults it chose, said first
    rows = [json.loads(l) for l in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()]
    evals = {r['step']: r['val_loss'] for r in rows if r.get('kind') == 'eval'}
    best = (tmp_path/'run'/'checkpoints'/'best').read_text().strip()
    assert best == f"step-{min(evals, key=evals.get):07d}"  # the best pointer names the lowest val loss
    from chatgot.chat import ChatSession, character_lengths, pick_character
    from chatgot.checkpoint import load_for_inference
    model, tok, meta = load_for_inference(tmp_path/'run', 'cpu')
    assert meta['path'].endswith(best)  # chat loads it by default
    name, _ = pick_character(meta)
    s = ChatSession(model, tok, name, seed=0, trim='word', lengths=character_lengths(meta, tok, name))
    replies = [s.say(USER[i % len(USER)]) for i in range(100)]
    faults = turn_faults(replies)
    assert all(v == 0 for v in faults.values()), (faults, replies)
