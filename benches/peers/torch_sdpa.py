#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention on the CPU: the float peer that our pipelines
are compared with (scripts/bench-targets.sh reads its output).

Prints one JSON object per (L, dtype) on stdout, with the same field names as
`intattention bench --json` where they mean the same thing (median_ms, gmacs, threads, ...).
If torch cannot be imported it prints one line starting with "skipped:" and exits 0, so that
callers can go on without the peer.
"""

import argparse
import json
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--L", type=int, nargs="+", default=[1024], help="sequence lengths (Lq = Lk)")
    p.add_argument("--d", type=int, default=128, help="head dimension")
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--causal", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    if args.runs < 1 or args.threads < 1:
        sys.exit("--runs and --threads must be at least 1")
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # ImportError, or a broken install raising something else
        print(f"skipped: torch cannot be imported ({type(e).__name__}: {e})")
        return 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for L in args.L:
        shape = (args.batch, args.heads, L, args.d)
        q32, k32, v32 = (torch.randn(shape) for _ in range(3))
        for name in args.dtypes:
            dt = dtypes[name]
            q, k, v = q32.to(dt), k32.to(dt), v32.to(dt)
            times = []
            cpu = 0.0
            with torch.inference_mode():
                for i in range(args.warmup + args.runs):
                    c0, t0 = time.process_time(), time.perf_counter()
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
                    t1, c1 = time.perf_counter(), time.process_time()
                    if i >= args.warmup:
                        times.append(t1 - t0)
                        cpu += c1 - c0
            if not torch.isfinite(out.float()).all():
                sys.exit(f"torch sdpa {name} L={L} produced a non-finite output")
            median = statistics.median(times)
            macs = 2.0 * args.batch * args.heads * L * L * args.d
            print(json.dumps({
                "impl": "torch-sdpa",
                "dtype": name,
                "torch": torch.__version__,
                "threads": args.threads,
                "batch": args.batch,
                "heads": args.heads,
                "q_len": L,
                "kv_len": L,
                "head_dim": args.d,
                "causal": args.causal,
                "warmup": args.warmup,
                "runs": args.runs,
                "median_ms": median * 1e3,
                "min_ms": min(times) * 1e3,
                "mean_ms": statistics.fmean(times) * 1e3,
                "gmacs": macs / median / 1e9,
                # CPU seconds of all the process's threads per run: on a busy machine a steadier
                # measure of the work than wall time.
                "cpu_ms": cpu / args.runs * 1e3,
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
