#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention on the CPU: the float peer of `intattention bench`.

Read by scripts/bench-targets.sh, scripts/bench-local.sh and benches/device/xeon-targets.sh.
The arguments mirror `intattention bench` (--L, --kv-len, --d, --heads, --kv-heads, --batch,
--causal, --threads, --kv-cache, --seq-lens, --warmup, --runs, --seed) so that a shell script can
pass one argument list to both.

Two modes:
- plain (default): one SDPA call per run on [batch, heads, L, d] queries and
  [batch, kv_heads, kv_len, d] keys and values (kv_len defaults to L).
- --kv-cache: one decoding step per run, mirroring `intattention bench --kv-cache`. K and V live in
  preallocated [batch, kv_heads, capacity, d] buffers of the timed dtype, filled with --kv-len (or
  --seq-lens) tokens before the clock starts: the best case for torch (nothing is converted per
  step). A timed step writes --L new tokens per sequence into the buffers (the append; ours
  quantizes and packs them in its timed step too) and runs SDPA of the new queries over each
  sequence's cache, causal relative to the sequence's length. Every step writes the same slots,
  as ours truncates back after each step, so every step sees the same cache.

Masks. Ours masks key j for query i when j > i + kv_len - q_len (aligned bottom-right).
torch's `is_causal=True` aligns the mask top-left when q_len != kv_len, so it is used only for
q_len == kv_len; otherwise an explicit boolean mask (True = visible) aligned bottom-right is
built before the clock starts. One query token over a cache sees every key: no mask at all.
Sequences of different lengths (--seq-lens) run as one SDPA call per sequence over its own keys
(--ragged loop, the default: no work on padding) or as one call over the longest length with a
padding mask (--ragged mask, what padded batches in frameworks do).

GQA (kv_heads < heads), the "gqa" field of every JSON line says which way ran:
- auto (default): `enable_gqa=True` (torch >= 2.5). When this torch has no such argument the K and
  V heads are expanded with repeat_interleave inside the timed call instead (and a note goes to
  stderr).
- repeat: always repeat_interleave (what models did before enable_gqa).
- fold: the heads/kv_heads query heads that share a KV head become the rows of one query block:
  Q [batch, heads, L, d] is viewed as [batch, kv_heads, heads/kv_heads * L, d] (no copy) and one
  plain SDPA call runs per KV head, with the mask tiled over the folded rows (an explicit mask
  also when causal with q_len == kv_len). Exact; for decoding (L = 1) it turns each KV head's
  work into one small matrix product, which on some torch builds is several times faster than
  enable_gqa (whose CPU kernel handles each query head on its own). The float baseline a decoding
  engine could have, so scripts time it next to enable_gqa.

Output: one JSON object per (L, dtype) on stdout, with the field names of `intattention bench
--json` where they mean the same thing (threads, batch, heads, kv_heads, q_len, kv_len, d, causal,
kv_cache, seq_lens, cache_bytes, seed, warmup, runs, mean_ms, median_ms, min_ms, max_ms, gmacs).
gmacs is computed as ours does: 2 q_len kv_len d per head (2 q_len (len + q_len) d per sequence
and head with --kv-cache), masks ignored. If torch cannot be imported it prints one line starting
with "skipped:" and exits 0, so that callers can go on without the peer.
"""

import argparse
import json
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--L", type=int, nargs="+", default=[1024],
                   help="query lengths, one row each (with --kv-cache: tokens appended per step)")
    p.add_argument("--kv-len", type=int, default=None,
                   help="key/value length [default: L]; with --kv-cache the cached tokens")
    p.add_argument("--d", type=int, default=128, help="head dimension")
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads [default: --heads]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--causal", action="store_true",
                   help="causal mask aligned bottom-right, as ours (always on with --kv-cache)")
    p.add_argument("--kv-cache", action="store_true", help="time decoding steps (see above)")
    p.add_argument("--seq-lens", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="with --kv-cache: cached tokens per sequence, comma separated")
    p.add_argument("--ragged", choices=["loop", "mask"], default="loop",
                   help="sequences of different lengths: one call each, or one padded masked call")
    p.add_argument("--gqa", choices=["auto", "repeat", "fold"], nargs="+", default=["auto"],
                   help="one row each: auto: enable_gqa where torch has it; repeat: always "
                        "repeat_interleave; fold: each KV head's query heads as rows of one query "
                        "block (see above)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--self-test", action="store_true",
                   help="check masks, GQA and the cache step against a float64 reference; no timing")
    a = p.parse_args(argv)
    if a.kv_heads is None:
        a.kv_heads = a.heads
    if a.runs < 1 or a.threads < 1 or a.warmup < 0:
        p.error("--runs and --threads must be at least 1, --warmup at least 0")
    if min(a.batch, a.heads, a.kv_heads, a.d, *a.L) < 1:
        p.error("--batch, --heads, --kv-heads, --d and --L must be at least 1")
    if a.heads % a.kv_heads:
        p.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    if a.seq_lens is not None:
        if not a.kv_cache:
            p.error("--seq-lens needs --kv-cache (as in `intattention bench`)")
        if len(a.seq_lens) != a.batch:
            p.error(f"--seq-lens has {len(a.seq_lens)} lengths for --batch {a.batch}")
        if min(a.seq_lens) < 0:
            p.error("--seq-lens must not be negative")
    return a


class Peer:
    """SDPA with the GQA handling this torch allows."""

    def __init__(self, torch, F, heads, kv_heads, mode):
        self.torch, self.F = torch, F
        self.groups = heads // kv_heads
        self.gqa = "none"
        force_repeat = mode == "repeat"
        if self.groups > 1 and mode == "fold":
            self.gqa = "fold"
        elif self.groups > 1:
            if not force_repeat and self._has_enable_gqa():
                self.gqa = "enable_gqa"
            else:
                self.gqa = "repeat_interleave" + ("" if force_repeat else " (no enable_gqa: torch < 2.5)")
                if not force_repeat:
                    print(f"note: torch {torch.__version__} has no enable_gqa: K and V heads are "
                          "expanded with repeat_interleave inside the timed call", file=sys.stderr)

    def _has_enable_gqa(self):
        t = self.torch
        q = t.zeros(1, 2, 1, 4)
        kv = t.zeros(1, 1, 1, 4)
        try:
            self.F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
            return True
        except TypeError:
            return False

    def prepare_mask(self, mask, q_len, kv_len, is_causal):
        """The mask to pass for this GQA mode (built before the clock starts). Folding puts the
        query rows of one KV head's query heads one after another, so a [.., L, kv] mask is tiled
        over them, and is_causal becomes an explicit mask."""
        if self.gqa != "fold":
            return mask, is_causal
        if is_causal:
            mask = bottom_right_mask(self.torch, q_len, kv_len)
        if mask is None:
            return None, False
        return mask.repeat(*([1] * (mask.dim() - 2)), self.groups, 1), False

    def __call__(self, q, k, v, mask=None, is_causal=False):
        if self.gqa == "fold":
            b, h, L, d = q.shape
            qf = q.view(b, k.shape[1], self.groups * L, d)
            return self.F.scaled_dot_product_attention(qf, k, v, attn_mask=mask).view(b, h, L, d)
        if self.gqa == "enable_gqa":
            return self.F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                       enable_gqa=True)
        if self.groups > 1:
            k = k.repeat_interleave(self.groups, dim=1)
            v = v.repeat_interleave(self.groups, dim=1)
        return self.F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def bottom_right_mask(torch, q_len, kv_len, valid=None):
    """Boolean [q_len, kv_len] mask, True = visible: key j for query i iff j <= i + kv_len - q_len
    (ours), and j < valid when a sequence fills only `valid` of kv_len slots (padding)."""
    i = torch.arange(q_len).unsqueeze(1)
    j = torch.arange(kv_len).unsqueeze(0)
    end = kv_len if valid is None else valid
    return (j <= i + end - q_len) & (j < end)


class PlainCase:
    """One SDPA call on [batch, heads, L, d] against [batch, kv_heads, kv_len, d]."""

    def __init__(self, torch, peer, a, L, dt):
        kv_len = a.kv_len if a.kv_len is not None else L
        if a.causal and kv_len < L:
            sys.exit(f"--causal with --kv-len {kv_len} < --L {L}: queries would see no key")
        g = torch.Generator().manual_seed(a.seed)
        self.q = torch.randn(a.batch, a.heads, L, a.d, generator=g).to(dt)
        self.k = torch.randn(a.batch, a.kv_heads, kv_len, a.d, generator=g).to(dt)
        self.v = torch.randn(a.batch, a.kv_heads, kv_len, a.d, generator=g).to(dt)
        self.peer = peer
        self.is_causal = a.causal and L == kv_len
        self.mask = bottom_right_mask(torch, L, kv_len) if a.causal and L != kv_len else None
        self.mask_kind = "is_causal" if self.is_causal else ("bottom-right bool" if self.mask is not None else "none")
        self.mask, self.is_causal = peer.prepare_mask(self.mask, L, kv_len, self.is_causal)
        if peer.gqa == "fold" and self.mask is not None:
            self.mask_kind = "bottom-right bool"
        self.kv_len, self.seq_lens, self.cache_bytes = kv_len, None, None
        self.macs = 2.0 * a.batch * a.heads * L * kv_len * a.d

    def step(self):
        return self.peer(self.q, self.k, self.v, self.mask, self.is_causal)


class CacheCase:
    """One decoding step: append L tokens per sequence into preallocated K/V buffers, then SDPA of
    the L new queries over each sequence's cache (causal relative to its length)."""

    def __init__(self, torch, peer, a, L, dt):
        lens = a.seq_lens if a.seq_lens is not None else [a.kv_len if a.kv_len is not None else L] * a.batch
        self.torch, self.peer, self.L, self.lens = torch, peer, L, lens
        cap = max(lens) + L
        g = torch.Generator().manual_seed(a.seed)
        # Buffers of the timed dtype, filled before the clock: nothing is converted per step.
        self.kbuf = torch.zeros(a.batch, a.kv_heads, cap, a.d, dtype=dt)
        self.vbuf = torch.zeros(a.batch, a.kv_heads, cap, a.d, dtype=dt)
        for b, n in enumerate(lens):
            self.kbuf[b, :, :n] = torch.randn(a.kv_heads, n, a.d, generator=g).to(dt)
            self.vbuf[b, :, :n] = torch.randn(a.kv_heads, n, a.d, generator=g).to(dt)
        self.q = torch.randn(a.batch, a.heads, L, a.d, generator=g).to(dt)
        self.k_new = torch.randn(a.batch, a.kv_heads, L, a.d, generator=g).to(dt)
        self.v_new = torch.randn(a.batch, a.kv_heads, L, a.d, generator=g).to(dt)
        self.same = len(set(lens)) == 1
        self.ragged = "equal" if self.same else a.ragged
        n0 = lens[0]
        fold = lambda m: peer.prepare_mask(m, L, None, False)[0]
        if self.same:
            # One call for the whole batch; one query token sees every key: no mask.
            self.mask = None if L == 1 else fold(bottom_right_mask(torch, L, n0 + L))
        elif self.ragged == "mask":
            m = torch.stack([bottom_right_mask(torch, L, cap, n + L) for n in lens])
            self.mask = fold(m.unsqueeze(1))  # [batch, 1, L, cap], broadcast over heads
        else:
            self.masks = [None if L == 1 else fold(bottom_right_mask(torch, L, n + L)) for n in lens]
        self.mask_kind = ("none" if L == 1 else "bottom-right bool") if self.ragged != "mask" else "padding+bottom-right bool"
        self.kv_len = max(lens)
        self.seq_lens = lens
        # Bytes of K and V the step reads (the cached tokens plus the appended ones).
        self.cache_bytes = sum(2 * a.kv_heads * (n + L) * a.d * self.kbuf.element_size() for n in lens)
        self.macs = 2.0 * sum(n + L for n in lens) * a.heads * L * a.d

    def step(self):
        L, kb, vb = self.L, self.kbuf, self.vbuf
        if self.same:
            n = self.lens[0]
            kb[:, :, n:n + L].copy_(self.k_new)
            vb[:, :, n:n + L].copy_(self.v_new)
            return self.peer(self.q, kb[:, :, :n + L], vb[:, :, :n + L], self.mask)
        for b, n in enumerate(self.lens):
            kb[b, :, n:n + L].copy_(self.k_new[b])
            vb[b, :, n:n + L].copy_(self.v_new[b])
        if self.ragged == "mask":
            return self.peer(self.q, kb, vb, self.mask)
        return [self.peer(self.q[b:b + 1], kb[b:b + 1, :, :n + L], vb[b:b + 1, :, :n + L], self.masks[b])
                for b, n in enumerate(self.lens)]


def reference(torch, q, k, v, valid_len):
    """float64 attention of q [heads, L, d] over the first valid_len keys of k, v [kv_heads, *, d],
    causal bottom-right, written out without SDPA."""
    q, k, v = q.double(), k[:, :valid_len].double(), v[:, :valid_len].double()
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    v = v.repeat_interleave(q.shape[0] // v.shape[0], dim=0)
    s = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    L = q.shape[1]
    for i in range(L):  # written out apart from bottom_right_mask, which it checks
        for j in range(valid_len):
            if j > i + valid_len - L:
                s[:, i, j] = float("-inf")
    return torch.softmax(s, dim=-1) @ v


def self_test(torch, F):
    """Checks the cache steps (equal and ragged lengths, both --ragged forms, L = 1 and L > 1, GQA
    both ways) and the plain causal case with q_len != kv_len against the float64 reference."""
    worst = 0.0
    for mode in ("auto", "repeat", "fold"):
        for lens, L, ragged in (([7, 7], 1, "loop"), ([7, 7], 3, "loop"), ([5, 9, 2], 1, "loop"),
                                ([5, 9, 2], 1, "mask"), ([5, 9, 2], 4, "loop"), ([5, 9, 2], 4, "mask")):
            a = parse_args(["--kv-cache", "--heads", "4", "--kv-heads", "2", "--d", "8", "--batch",
                            str(len(lens)), "--seq-lens", ",".join(map(str, lens)), "--ragged", ragged,
                            "--L", str(L)])
            peer = Peer(torch, F, 4, 2, mode)
            c = CacheCase(torch, peer, a, L, torch.float32)
            out = c.step()
            out = torch.cat(out) if isinstance(out, list) else out
            for b, n in enumerate(lens):
                ref = reference(torch, c.q[b], c.kbuf[b], c.vbuf[b], n + L)
                worst = max(worst, (out[b].double() - ref).abs().max().item())
        for L, kv in ((3, 10), (6, 6)):  # explicit bottom-right mask; is_causal
            a = parse_args(["--heads", "4", "--kv-heads", "1", "--d", "8", "--L", str(L), "--kv-len", str(kv),
                            "--causal"])
            c = PlainCase(torch, Peer(torch, F, 4, 1, mode), a, L, torch.float32)
            ref = reference(torch, c.q[0], c.k[0], c.v[0], kv)
            worst = max(worst, (c.step()[0].double() - ref).abs().max().item())
    ok = worst < 1e-4
    print(f"self-test {'passed' if ok else 'FAILED'}: largest difference from the float64 reference {worst:.2e}")
    return 0 if ok else 1


def main():
    a = parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # ImportError, or a broken install raising something else
        print(f"skipped: torch cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return 0
    torch.set_num_threads(a.threads)
    if a.self_test:
        with torch.inference_mode():
            return self_test(torch, F)

    # Without GQA every mode is the same plain call: time it once.
    modes = list(dict.fromkeys(a.gqa)) if a.kv_heads < a.heads else ["auto"]
    peers = [Peer(torch, F, a.heads, a.kv_heads, m) for m in modes]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for L, name, peer in ((L, n, p) for L in a.L for n in a.dtypes for p in peers):
        dt = dtypes[name]
        with torch.inference_mode():
            case = (CacheCase if a.kv_cache else PlainCase)(torch, peer, a, L, dt)
            times, cpu = [], 0.0
            for i in range(a.warmup + a.runs):
                c0, t0 = time.process_time(), time.perf_counter()
                out = case.step()
                t1, c1 = time.perf_counter(), time.process_time()
                if i >= a.warmup:
                    times.append(t1 - t0)
                    cpu += c1 - c0
            outs = out if isinstance(out, list) else [out]
            if not all(bool(torch.isfinite(o.float()).all()) for o in outs):
                sys.exit(f"torch sdpa {name} L={L} produced a non-finite output")
        median = statistics.median(times)
        print(json.dumps({
            "impl": "torch-sdpa",
            "dtype": name,
            "torch": torch.__version__,
            "threads": a.threads,
            "batch": a.batch,
            "heads": a.heads,
            "kv_heads": a.kv_heads,
            "q_len": L,
            "kv_len": case.kv_len,
            "d": a.d,
            "causal": a.causal or a.kv_cache,
            "kv_cache": a.kv_cache,
            "seq_lens": case.seq_lens,
            "cache_bytes": case.cache_bytes,
            "gqa": peer.gqa,
            "mask": case.mask_kind,
            "ragged": getattr(case, "ragged", None),
            "seed": a.seed,
            "warmup": a.warmup,
            "runs": a.runs,
            "mean_ms": statistics.fmean(times) * 1e3,
            "median_ms": median * 1e3,
            "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3,
            "gmacs": case.macs / median / 1e9,
            # CPU seconds of all the process's threads per run: on a busy machine a steadier
            # measure of the work than wall time.
            "cpu_ms": cpu / a.runs * 1e3,
        }), flush=True)
        del case, out
    return 0


if __name__ == "__main__":
    sys.exit(main())
