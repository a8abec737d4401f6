"""Peak memory and time of one training forward/backward of a preset model, measured in a fresh process.

`measure_step(...)` (used by bench/memory.py and notebook 04) runs this file as a child:
python bench/step_memory.py '{"preset": "tiny", "seq_len": 64, "batch_size": 16, "grad_checkpoint": false, "steps": 2,
                              "vocab_size": 65, "device": "cpu"}'   -> one JSON line
The child builds the model, resets the peak (CUDA allocator peak, else the CPU's VmHWM via /proc/self/clear_refs),
runs `steps` forward/backward passes and reads the peak again; large blocks go back to the system
(`MALLOC_MMAP_THRESHOLD_`) so RSS follows the live tensors. Time is the median over the passes after the first.
"""
import json, os, re, statistics, subprocess, sys, time
from pathlib import Path

def measure_step(preset:str='14m', seq_len:int=128, batch_size:int=8,
                 grad_checkpoint:bool=False, # gradient checkpointing on?
                 steps:int=3, # forward/backward passes (the first is not timed)
                 vocab_size:int|None=None, device:str='cpu', threads:int|None=None) -> dict:
    "Peak memory of one training forward/backward (total, activations) and median step time, in a fresh process"
    a = dict(preset=preset, seq_len=seq_len, batch_size=batch_size, grad_checkpoint=bool(grad_checkpoint),
             steps=steps, vocab_size=vocab_size, device=device)
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'}
    if threads: env['OMP_NUM_THREADS'] = str(threads)
    r = subprocess.run([sys.executable, __file__, json.dumps(a)], capture_output=True, text=True, env=env)
    if r.returncode: raise RuntimeError(f"measure_step failed: {r.stderr.strip().splitlines()[-1:]}")
    return {**a, **json.loads(r.stdout.strip().splitlines()[-1])}

def _child(a:dict) -> dict:
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from chatgot.model import GPT, preset_config
    dev = torch.device(a['device'])
    def hwm(): return int(re.search(r'^VmHWM:\s+(\d+) kB', open('/proc/self/status').read(), re.M).group(1)) * 1024
    def peak(): return torch.cuda.max_memory_allocated(dev) if dev.type == 'cuda' else hwm()
    torch.manual_seed(0)
    m = GPT(preset_config(a['preset'], vocab_size=a['vocab_size'])).to(dev).train()
    m.grad_checkpointing = a['grad_checkpoint']
    x, y = (torch.randint(0, m.config.vocab_size, (a['batch_size'], a['seq_len']), device=dev) for _ in range(2))
    with torch.no_grad(): m(x[:1, :8])
    if dev.type == 'cuda': torch.cuda.synchronize(dev); torch.cuda.reset_peak_memory_stats(dev)
    else: open('/proc/self/clear_refs', 'w').write('5')  # reset the peak RSS (VmHWM) to the current RSS
    p0, ts = peak(), []
    for _ in range(a['steps']):
        t = time.perf_counter()
        m.zero_grad(set_to_none=True); m(x, y)[1].backward()
        if dev.type == 'cuda': torch.cuda.synchronize(dev)
        ts.append(time.perf_counter() - t)
    grad_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    return dict(peak_bytes=peak() - p0, grad_bytes=grad_bytes, act_bytes=peak() - p0 - grad_bytes,
                step_s=statistics.median(ts[1:] or ts), step_times=ts)

if __name__ == '__main__': print(json.dumps(_child(json.loads(sys.argv[1]))))
