#!/usr/bin/env python3
"""CPU time of edge-run's sampling thread against the whole process: the cost of measuring power.

Runs `generate` decoding for a while with a power sensor and reads the `power-meter` thread's and
the process's time on CPU from /proc/PID/task/TID/schedstat (nanoseconds). Linux only.

    EDGE_RUN=target/release/edge-run MODEL=smollm2.edge benches/meter-cpu.py 20 [extra flags...]

The sensor defaults to a file holding 4 W (`--power-sensor file:...`); extra flags (e.g.
`--power 100W`) are passed on.
"""
import glob, os, subprocess, sys, tempfile, time

exe = os.environ.get('EDGE_RUN', 'target/release/edge-run')
model = os.environ['MODEL']
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
watts = tempfile.NamedTemporaryFile('w', suffix='.w', delete=False)
watts.write('4 W\n'); watts.close()
p = subprocess.Popen([exe, '-m', model, '-p', 'Once upon a time', '-n', '100000', '--ignore-eos', '--temp', '0', '-t', '2',
                      '--ctx', '4096', '--kv-window', '1024', '--power-sensor', 'file:' + watts.name] + sys.argv[2:],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def on_cpu(path):
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None

def snap():
    meter = total = 0
    for t in glob.glob(f'/proc/{p.pid}/task/*'):
        v = on_cpu(t + '/schedstat')
        if v is None:
            continue
        total += v
        try:
            if open(t + '/comm').read().strip() == 'power-meter':
                meter += v
        except OSError:
            pass
    return meter, total, time.time()

time.sleep(3)  # loading, the idle measurement
m0, t0, w0 = snap()
time.sleep(seconds)
m1, t1, w1 = snap()
p.terminate(); p.wait()
os.unlink(watts.name)
wall = w1 - w0
print(f'wall {wall:.1f} s; process CPU {(t1 - t0) / 1e9:.3f} s; power-meter thread CPU {(m1 - m0) / 1e6:.2f} ms '
      f'= {100 * (m1 - m0) / max(t1 - t0, 1):.3f}% of the process CPU, {100 * (m1 - m0) / 1e9 / wall:.3f}% of one core')
