# Records the CPU use (cores) of a background job on this host every 100 ms for 24 s: the job
# sleeps for 6 s, then runs a busy loop (one core wanted) until 16 s, then half a core (busy
# 50 ms of every 100 ms) until 24 s. What it got is what the shared host gave it.
import os, subprocess, time
hz = os.sysconf('SC_CLK_TCK')
job = subprocess.Popen(['python3', '-c', '''
import time
t0=time.time()
time.sleep(6)
while time.time()-t0<16: pass
while time.time()-t0<24:
    t=time.time()
    while time.time()-t<0.05: pass
    time.sleep(0.05)
'''])
def cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
    return (int(f[11]) + int(f[12])) / hz
t0 = time.time(); last_t, last_c = t0, cpu(job.pid)
print('seconds,busy_cores')
while time.time() - t0 < 24:
    time.sleep(0.1)
    try: c = cpu(job.pid)
    except Exception: break
    t = time.time()
    print(f'{t - t0:.2f},{(c - last_c) / (t - last_t):.3f}')
    last_t, last_c = t, c
job.wait()
