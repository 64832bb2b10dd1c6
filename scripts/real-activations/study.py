#!/usr/bin/env python3
"""FEASIBILITY STUDY, not shipped code: how much accuracy finer quantization scales, K
smoothing, more table bits and other clips would buy Deferred IntAttention on the real-activation
suite (tests/data/real), and what limits head_dim 1-2 on random inputs. Issue 15, part 2; the
numbers are in docs/accuracy-study.md.

It reimplements the integer arithmetic of docs/numerics.md in numpy (quantization, exact i64 scores,
IndexSoftmax with the exact threshold, Deferred/Normalized finish) and extends it with the
variants under study. The reimplementation is checked against the library first (`--check`:
the default settings must reproduce `intattention accuracy --real` head for head). Two
shortcuts, both far below the effects measured: the threshold T = round_half_up(c / (s_q s_k
scale)) is computed in f64 (one rounding; the library's exact rational only differs on exact
ties), and the output O32 s_v / sum is rounded once from f64 to f32 (the library rounds the
exact quotient: at most 1 f32 ulp apart).

Requirements: numpy (and, for the embedding column, what capture.py needs).
Usage: python scripts/real-activations/study.py [--check] [--embed] [--random] [--json FILE]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tests/data/real"
MAX_T = 1 << 30


def load_suite(d=SUITE):
    m = json.loads((d / "manifest.json").read_text())
    calls = []
    for gi, g in enumerate(m["groups"]):
        for f in g["files"]:
            t = {x: np.load(d / f[x]).astype(np.float32) for x in "qkvo"}
            calls.append(dict(group=gi, layer=f["layer"], lens=np.array(g["key_lens"]), **t))
    return m, calls


def key_mask(lens, lk):
    """[B, 1, 1, Lk] True where the key is valid."""
    return (np.arange(lk)[None, :] < lens[:, None])[:, None, None, :]


def reference(q, k, v, lens, scale):
    """f64 attention with key padding (what src/accuracy.rs's reference computes)."""
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * scale
    s = np.where(key_mask(lens, k.shape[2]), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)


def head_errors(out, ref, lens):
    """Relative L2 error per (batch row, head) over the valid query rows."""
    errs = []
    for b in range(out.shape[0]):
        n = lens[b]
        e = out[b, :, :n].astype(np.float64) - ref[b, :, :n]
        errs += list(np.sqrt((e**2).sum((1, 2)) / (ref[b, :, :n] ** 2).sum((1, 2))))
    return errs


def quantize(x, gran, lens=None):
    """docs/numerics.md section 1 at a granularity: 'tensor' (the call), 'input' (one batch row, all its
    heads), 'head' (batch row and head), 'row' (each token's d values) or 'channel' (one
    column of a head over its tokens: for V only, where O32's column c is then dequantized
    with s_v[c] instead of one s_v, still exact integer P x V). Returns int8-valued int64 array and the f32 scales
    broadcastable against x."""
    a = np.abs(x)
    if gran == "tensor":
        mx = a.max(keepdims=True)
    elif gran == "input":
        mx = a.max(axis=(1, 2, 3), keepdims=True)
    elif gran == "head":
        mx = a.max(axis=(2, 3), keepdims=True)
    elif gran == "row":
        mx = a.max(axis=3, keepdims=True)
    elif gran == "channel":
        mx = a.max(axis=2, keepdims=True)
    else:
        raise ValueError(gran)
    s = (mx.astype(np.float32) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(s > 0, np.clip(x / s, -127, 127), 0).astype(np.float32)
    return np.rint(r).astype(np.int64), s


def lut(bits, clip):
    n = 1 << bits
    i = np.arange(n)
    e = np.rint(255 * np.exp(-float(np.float32(clip)) * i / (n - 1)))
    e[0], e[-1] = 255, 0
    return e.astype(np.int64)


def smooth(x, lens):
    """Subtracts each head's mean over its valid tokens (padding stays 0)."""
    valid = (np.arange(x.shape[2])[None, :] < lens[:, None])[:, None, :, None]
    mean = (x.astype(np.float64) * valid).sum(2, keepdims=True) / lens[:, None, None, None]
    return np.where(valid, x - mean, 0).astype(np.float32), mean


def intattn(q, k, v, lens, scale, bits=5, clip=6.6, qg="tensor", kg="tensor", vg="tensor",
            smooth_k=False, smooth_v=False, variant="deferred"):
    """IntAttention per docs/numerics.md sections 1-4 with the study's options. K smoothing is exact for
    softmax (q . mean_k is the same for every key of a row); V smoothing is exact for any
    weights that sum to one (the mean is added back to the output)."""
    if smooth_k:
        k, _ = smooth(k, lens)
    vmean = 0.0
    if smooth_v:
        v, vmean = smooth(v, lens)
    qi, sq = quantize(q, qg)
    ki, sk = quantize(k, kg)
    vi, sv = quantize(v, vg)
    s = np.einsum("bhid,bhjd->bhij", qi, ki)
    prod = sq.astype(np.float64) * sk.astype(np.float64) * np.float64(np.float32(scale))
    with np.errstate(divide="ignore"):
        t = np.where(prod > 0, np.floor(float(np.float32(clip)) / prod + 0.5), MAX_T)
    t = np.clip(t, 1, MAX_T).astype(np.int64)
    t = np.broadcast_to(t, s.shape[:3] + (1,))
    valid = key_mask(lens, k.shape[2])
    m = np.where(valid, s, np.iinfo(np.int64).min).max(-1, keepdims=True)
    dd = np.minimum(m - s, t)
    n1 = (1 << bits) - 1
    idx = (2 * dd * n1 + t) // (2 * t)
    e = np.where(valid, lut(bits, clip)[np.minimum(idx, n1)], 0)
    total = e.sum(-1, keepdims=True)
    if variant == "normalized":
        e = (2 * 255 * e + total) // (2 * total)
        total = np.full_like(total, 255)
    o32 = e @ vi
    out = (o32 * sv.astype(np.float64) / total).astype(np.float32)
    return (out + vmean).astype(np.float32)


def quant_only(q, k, v, lens, scale, qg="tensor", kg="tensor", vg="tensor", smooth_k=False, smooth_v=False,
               which="qkv"):
    """Int8 Q, K, V (dequantized; only the tensors named in `which`, the others stay float)
    with an exact softmax: the floor the quantization alone sets."""
    if smooth_k:
        k, _ = smooth(k, lens)
    vmean = 0.0
    if smooth_v:
        v, vmean = smooth(v, lens)
    deq = [(qi * s).astype(np.float32) if name in which else x
           for name, x, (qi, s) in zip("qkv", (q, k, v), (quantize(q, qg), quantize(k, kg), quantize(v, vg)))]
    return reference(*deq, lens, scale) + vmean


def evaluate(calls, scale, fn, **kw):
    errs, per_layer = [], {}
    for c in calls:
        ref = c.setdefault("ref", reference(c["q"], c["k"], c["v"], c["lens"], scale))
        e = head_errors(fn(c["q"], c["k"], c["v"], c["lens"], scale, **kw), ref, c["lens"])
        errs += e
        per_layer.setdefault(c["layer"], []).extend(e)
    return {"mean": float(np.mean(errs)), "worst": float(np.max(errs)), "heads": errs,
            "per_layer_mean": [float(np.mean(per_layer[i])) for i in sorted(per_layer)]}


def check_against_library(calls, scale, cli):
    """The default settings reproduce `intattention accuracy --real` head for head."""
    out = subprocess.run([cli, "accuracy", "--real", str(SUITE), "--pipes", "intattn", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["variant"]: r for r in json.loads(out)["rows"] if r["pipeline"] == "intattn"}
    for variant in ("deferred", "normalized"):
        ours = evaluate(calls, scale, intattn, variant=variant)["heads"]
        theirs = rows[variant]["heads"]
        diff = max(abs(a - b) / max(b, 1e-12) for a, b in zip(ours, theirs))
        print(f"check {variant}: {len(ours)} heads, largest relative difference to the library {diff:.2e}",
              file=sys.stderr)
        if diff > 1e-4:
            sys.exit("the study's reimplementation does not reproduce the library")


# (label, function, options). Letters follow the brief: (a) per-head scales, (b) per-row Q,
# (c) K smoothing, (d) table bits and clip, (e) combinations.
def configurations():
    base = []
    base.append(("int8 Q,K,V + exact softmax (tensor)", quant_only, {}))
    base.append(("int8 Q,K,V + exact softmax (head)", quant_only, dict(qg="head", kg="head", vg="head")))
    base.append(("int8 Q,K,V + exact softmax (row Q, head K+smooth, head V)", quant_only,
                 dict(qg="row", kg="head", vg="head", smooth_k=True)))
    for t in "qkv":
        base.append((f"int8 {t.upper()} alone (head) + exact softmax", quant_only, dict(qg="head", kg="head", vg="head", which=t)))
    base.append(("int8 V alone (channel) + exact softmax", quant_only, dict(vg="channel", which="v")))
    base.append(("int8 V alone (channel + smooth V) + exact softmax", quant_only,
                 dict(vg="channel", smooth_v=True, which="v")))
    base.append(("normalized b5 c6.6 (paper)", intattn, dict(variant="normalized")))
    base.append(("deferred b5 c6.6 (default)", intattn, {}))
    base.append(("(a0) per input Q,K,V (one call per text)", intattn, dict(qg="input", kg="input", vg="input")))
    base.append(("(a) head Q,K,V", intattn, dict(qg="head", kg="head", vg="head")))
    base.append(("(a) head Q only", intattn, dict(qg="head")))
    base.append(("(a) head K only", intattn, dict(kg="head")))
    base.append(("(a) head V only", intattn, dict(vg="head")))
    base.append(("(b) row Q", intattn, dict(qg="row")))
    base.append(("(b) row Q, head K,V", intattn, dict(qg="row", kg="head", vg="head")))
    base.append(("(c) smooth K", intattn, dict(smooth_k=True)))
    base.append(("(c) smooth K, head K", intattn, dict(smooth_k=True, kg="head")))
    base.append(("(f) smooth V", intattn, dict(smooth_v=True)))
    base.append(("(f) channel V", intattn, dict(vg="channel")))
    base.append(("(f) channel V + smooth V", intattn, dict(vg="channel", smooth_v=True)))
    base.append(("int8 Q,K,V + exact softmax (row Q, head K, channel V + smooth V)", quant_only,
                 dict(qg="row", kg="head", vg="channel", smooth_v=True)))
    for b in (6, 7, 8):
        base.append((f"(d) b{b} c6.6", intattn, dict(bits=b)))
    for b in (5, 6, 8):
        for c in (5.0, 8.0, 10.0, 12.0):
            base.append((f"(d) b{b} c{c:g}", intattn, dict(bits=b, clip=c)))
    best = dict(qg="row", kg="head", vg="head", smooth_k=True)
    base.append(("(e) row Q + head K,V + smooth K, b5 c6.6", intattn, best))
    for b, c in ((5, 8.0), (6, 6.6), (6, 8.0), (7, 8.0), (8, 6.6), (8, 8.0), (8, 10.0)):
        base.append((f"(e) row Q + head K,V + smooth K, b{b} c{c:g}", intattn, dict(best, bits=b, clip=c)))
    best = dict(qg="row", kg="head", vg="channel", smooth_v=True)
    for b, c in ((5, 6.6), (6, 6.6), (6, 8.0), (7, 6.6), (7, 8.0), (8, 6.6), (8, 8.0)):
        base.append((f"(e) row Q + head K + channel V + smooth V, b{b} c{c:g}", intattn, dict(best, bits=b, clip=c)))
    base.append(("(e) head Q,K + channel V + smooth V, b8 c6.6", intattn,
                 dict(qg="head", kg="head", vg="channel", smooth_v=True, bits=8)))
    base.append(("(e) tensor Q,K + channel V + smooth V, b8 c6.6", intattn,
                 dict(vg="channel", smooth_v=True, bits=8)))
    base.append(("(e) head Q,K,V + smooth K, b6 c8", intattn,
                 dict(qg="head", kg="head", vg="head", smooth_k=True, bits=6, clip=8.0)))
    base.append(("(e) head Q,K,V + smooth K, b8 c8", intattn,
                 dict(qg="head", kg="head", vg="head", smooth_k=True, bits=8, clip=8.0)))
    base.append(("(e) row Q + smooth K (tensor K,V), b6 c8", intattn,
                 dict(qg="row", smooth_k=True, bits=6, clip=8.0)))
    return base


def embedding_cosines(fn, kw):
    """Mean and min embedding cosine against the float model with `fn` in every layer."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import capture

    model, tok = embedding_cosines.cache if hasattr(embedding_cosines, "cache") else (capture.Bert(), capture.tokenizer())
    embedding_cosines.cache = (model, tok)
    cos = []
    for _, texts in capture.GROUPS:
        ids, lens = capture.encode_group(tok, texts)
        ref = model.forward(ids, lens, capture.float_attention(model.scale))
        out = model.forward(ids, lens, lambda _l, q, k, v, ln: fn(q, k, v, np.array(ln), model.scale, **kw))
        cos += [capture.cosine(a, b) for a, b in zip(out, ref)]
    return min(cos), float(np.mean(cos))


def random_study(seeds=8):
    """Random inputs like the library's `gaussian` and `flat` families (Q, K, V standard
    normal; flat: Q with std 0.05), one head, L = 128 and 1024, d = 1..64, `seeds` draws each:
    Deferred b5 c6.6 and its error sources one at a time (mean and max over the draws)."""
    rows = []
    for fam in ("gaussian", "flat"):
        for L in (128, 1024):
            for d in (1, 2, 4, 8, 64):
                acc = {}
                for seed in range(seeds):
                    rng = np.random.default_rng(1000 * seed + d)
                    q, k, v = (rng.standard_normal((1, 1, L, d)).astype(np.float32) for _ in range(3))
                    if fam == "flat":
                        q = (q * np.float32(0.05)).astype(np.float32)
                    lens = np.array([L])
                    scale = float(np.float32(1 / np.sqrt(d)))
                    ref = reference(q, k, v, lens, scale)
                    lg = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * scale
                    below = lg.max(-1, keepdims=True) - lg

                    def weights_to_out(w):
                        return (w / w.sum(-1, keepdims=True)) @ v.astype(np.float64)

                    def lut_only(bits, c):
                        n1 = (1 << bits) - 1
                        idx = np.floor(np.minimum(below, c) * n1 / c + 0.5).astype(int)
                        return weights_to_out(lut(bits, c)[np.minimum(idx, n1)].astype(np.float64))

                    outs = {
                        "deferred b5 c6.6": intattn(q, k, v, lens, scale),
                        "table b5 only (float logits)": lut_only(5, 6.6),
                        "int8 QKV only": quant_only(q, k, v, lens, scale),
                        "clip 6.6 only": weights_to_out(np.where(below > 6.6, 0, np.exp(-below))),
                        "deferred b8 c6.6": intattn(q, k, v, lens, scale, bits=8),
                        "deferred b8 c10": intattn(q, k, v, lens, scale, bits=8, clip=10.0),
                    }
                    for name, out in outs.items():
                        acc.setdefault(name, []).append(head_errors(out, ref, lens)[0])
                    # How much the output cancels: ||O|| / ||V|| (1 for one-hot rows, about
                    # 1/sqrt(L) for uniform ones). Relative error grows as this shrinks.
                    acc.setdefault("|O|/|V|", []).append(
                        float(np.linalg.norm(ref) / np.linalg.norm(v.astype(np.float64))))
                row = {"family": fam, "L": L, "d": d}
                for name, xs in acc.items():
                    row[name] = float(np.mean(xs))
                    if name != "|O|/|V|":
                        row[name + " max"] = float(np.max(xs))
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description="IntAttention accuracy feasibility study")
    ap.add_argument("--check", action="store_true", help="first reproduce the library's numbers")
    ap.add_argument("--cli", default=str(REPO / "target/release/intattention"))
    ap.add_argument("--embed", action="store_true", help="also the embedding cosine per configuration")
    ap.add_argument("--random", action="store_true", help="also the d = 1..64 random-input study")
    ap.add_argument("--only", help="substring of the configurations to run")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args()
    m, calls = load_suite()
    scale = m["scale"]
    if args.check:
        check_against_library(calls, scale, args.cli)
    results = {"suite": [], "random": []}
    print("| configuration | mean rel L2 | worst | per-layer mean L0..L5 |" + (" min cos | mean cos |" if args.embed else ""))
    print("|---|---|---|---|" + ("---|---|" if args.embed else ""))
    for label, fn, kw in configurations():
        if args.only and args.only not in label:
            continue
        r = evaluate(calls, scale, fn, **kw)
        line = (f"| {label} | {100 * r['mean']:.2f}% | {100 * r['worst']:.2f}% | "
                + " ".join(f"{100 * x:.2f}" for x in r["per_layer_mean"]) + " |")
        row = {"config": label, "options": kw, "mean": r["mean"], "worst": r["worst"],
               "per_layer_mean": r["per_layer_mean"]}
        if args.embed:
            mn, mean = embedding_cosines(fn, kw)
            line += f" {mn:.6f} | {mean:.6f} |"
            row.update(min_cos=mn, mean_cos=mean)
        print(line, flush=True)
        results["suite"].append(row)
    if args.random:
        rows = random_study()
        results["random"] = rows
        keys = list(rows[0].keys())
        print()
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
