"What machine a benchmark ran on: imported by every bench script so each JSON says so."
import os, platform, subprocess
import torch

def describe() -> dict:
    cpu = platform.processor() or ''
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    d = dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
             cpu_capability=torch.backends.cpu.get_cpu_capability(), python=platform.python_version())
    if torch.cuda.is_available(): d['gpu'] = torch.cuda.get_device_name()
    try: d['load_avg_1m'] = os.getloadavg()[0]
    except OSError: pass
    return d
