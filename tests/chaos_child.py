"""One life of a chaos-test run: `python tests/chaos_child.py RUN_DIR CORPUS FAULTS_JSON [--resume]`.

Faults come from outside the library: monkeypatches of torch and safetensors, and callbacks passed to
`train(cbs=...)` the way a user's own code would. Each fault fires once, at the step it names:
  oom_fwd, oom_bwd  an out-of-memory error in a block's forward / when backward reaches it (micro-batch > 1)
  oom_clip          in `torch.nn.utils.clip_grad_norm_`
  oom_opt           in the optimizer's `step`
  oom_eval          in the first forward of an evaluation
  oom_sample        in the in-training sampler's generation
  nan, inf, spike   the step's loss times NaN / inf / 50
  enospc            the k-th checkpoint write (`torch.save`) fails with "No space left on device"
  kill_in_save      SIGKILL inside the k-th checkpoint write (after model.safetensors, before the rename)
  observer          an observer (the ETA) raises at that step
The parent (tests/test_chaos.py) adds what a process cannot do to itself: kill -9 at a random moment and
torn lines at the end of metrics.jsonl.
"""
import json, os, signal, sys
from pathlib import Path
import torch

STEPS, FLAGS = 40, dict(preset='tiny', steps=40, batch_size=8, seq_len=32, save_every=5, eval_every=10, eval_batches=2,
                        log_every=5, keep_last=2, sample_every=20)

def oom(): return RuntimeError("CPU: DefaultCPUAllocator: can't allocate memory: you tried to allocate 1048576 bytes (injected)")

def main(run, corpus, faults, resume):
    import chatgot.checkpoint as ckm
    import chatgot.sampling as smp
    from chatgot.learner import Callback
    from chatgot.train import train
    log = run.parent/f'{run.name}.fired'
    def hit(kind, key):  # this fault fires now (once): note it for the parent's table
        at[kind].remove(key)
        with open(log, 'a') as f: f.write(kind + '\n')
    at = {}
    for f in faults: at.setdefault(f['kind'], []).append(f['at'])
    state = dict(step=0, saves=0, clips=0)

    class Faults(Callback):
        order = -30
        def before_step(self): state['step'] = self.learn.step + 1
        def before_fit(self):
            from chatgot.model import Block
            [m for m in self.learn.model.modules() if isinstance(m, Block)][-1].register_forward_hook(self._fwd)
            real_step = self.learn.opt.step
            def step(*a, **k):
                if state['step'] in at.get('oom_opt', ()): hit('oom_opt', state['step']); raise oom()
                return real_step(*a, **k)
            self.learn.opt.step = step
        def _fwd(self, mod, inp, out):
            s, train = state['step'], self.learn.model.training
            if train and s in at.get('oom_fwd', ()) and inp[0].shape[0] > 1: hit('oom_fwd', s); raise oom()
            if train and s in at.get('oom_bwd', ()) and inp[0].shape[0] > 1 and out.requires_grad:
                hit('oom_bwd', s)
                out.register_hook(lambda g: (_ for _ in ()).throw(oom()))
            if not train and s in at.get('oom_eval', ()) and getattr(self.learn, '_in_eval', False):
                hit('oom_eval', s); raise oom()
        def before_eval(self): self.learn._in_eval = True
        def after_eval(self): self.learn._in_eval = False
        def after_loss(self):
            s = state['step']
            for kind, f in (('nan', float('nan')), ('inf', float('inf')), ('spike', 50.)):
                if s in at.get(kind, ()): hit(kind, s); self.learn.loss = self.learn.loss * f

    real_clip = torch.nn.utils.clip_grad_norm_
    def clip(*a, **k):
        if state['step'] in at.get('oom_clip', ()): hit('oom_clip', state['step']); raise oom()
        return real_clip(*a, **k)
    torch.nn.utils.clip_grad_norm_ = clip

    real_gen = smp.generate_text
    def gen(*a, **k):
        if state['step'] in at.get('oom_sample', ()): hit('oom_sample', state['step']); raise oom()
        return real_gen(*a, **k)
    smp.generate_text = gen

    real_save = torch.save
    def save(obj, f, *a, **k):
        state['saves'] += 1
        if state['saves'] in at.get('enospc', ()): hit('enospc', state['saves']); raise OSError(28, 'No space left on device')
        real_save(obj, f, *a, **k)
        if state['saves'] in at.get('kill_in_save', ()): hit('kill_in_save', state['saves']); os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save

    import chatgot.eta as eta
    real_fields = eta.EtaCallback.fields
    def fields(self, st):
        if st in at.get('observer', ()): hit('observer', st); raise ZeroDivisionError('injected observer failure')
        return real_fields(self, st)
    eta.EtaCallback.fields = fields

    flags = {} if resume else dict(FLAGS, data=str(corpus))
    learn = train(out=run, resume=resume, quiet=True, cbs=[Faults()], **flags)
    return 130 if learn.interrupted else 0

if __name__ == '__main__':
    torch.set_num_threads(1)
    run, corpus, faults = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    sys.exit(main(run, corpus, faults, '--resume' in sys.argv))
