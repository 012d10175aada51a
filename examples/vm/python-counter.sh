# Runs in the guest on the Python disk: python3 and numpy are there, the program comes with
# this script. It prints a count and the sum of its 8 MiB array every 0.1 s, 3000 times.
cat > /tmp/counter.py <<'PY'
import time

import numpy as np

state = np.zeros(1 << 20)
for i in range(1, 3001):
    state[i] = i
    print("count", i, "sum", int(state.sum()), flush=True)
    time.sleep(0.1)
PY
exec python3 /tmp/counter.py
