import sys, time, statistics, torch
sys.path.insert(0, "bench")
from merge import make_inputs
from panfpn.modeling import merge as m
torch.set_num_threads(1)
captured = {}
orig = m._resolve_loop
def cap(masks, weight, limit):
    captured['a'] = (masks, weight, limit); return orig(masks, weight, limit)
for n in (100, 300):
    for seed in range(2):
        p, s, l, sem = make_inputs(800, 1216, n, 54, seed, "cpu")
        m._resolve_loop = cap
        m._merge(p, s, l, sem, [53], score_thresh=0.5 if n == 100 else 0.05, overlap_thresh=0.5, stuff_area=4096, strategy="loop")
        m._resolve_loop = orig
        a = captured['a']
        tl, tf = [], []
        for _ in range(20):
            t = time.perf_counter(); m._resolve_loop(*a); tl.append(time.perf_counter() - t)
            t = time.perf_counter(); m._resolve_fixpoint(*a); tf.append(time.perf_counter() - t)
        print(f"n={a[0].shape[0]} U={a[0].shape[1]} loop {statistics.median(tl)*1e3:.2f} ms fixpoint {statistics.median(tf)*1e3:.2f} ms")
