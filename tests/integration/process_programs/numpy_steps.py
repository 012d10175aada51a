"""An ordinary numpy program (it knows nothing of snapline): STEPS steps over MIB of state.

Each step changes part of the array and prints the step number and a checksum, so a run
restored from a checkpoint prints exactly what a failure-free run prints.
"""

import sys
import time

import numpy as np

steps, mib = int(sys.argv[1]), int(sys.argv[2])
delay_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
state = np.random.default_rng(7).random(mib * 2**20 // 8)
block = max(1, state.size // 16)
for step in range(steps):
    lo = (step % 16) * block
    state[lo : lo + block] = (state[lo : lo + block] * 1.5 + 0.25) % 1.0
    print(f"step {step} sum {state.sum():.9f}", flush=True)
    time.sleep(delay_s)
print("done", flush=True)
