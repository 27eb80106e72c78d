"""Would one encoder pass do for selection? Sentence vectors pooled inside a
segment against the per-sentence vectors selection caches now (issue 24).

    python -m service.evaluation.shared_pass [--examples 50] [--rate 0.33]

The token classifier's embeddings and lower 4 layers are all-MiniLM-L6-v2's
own (checked here: identical tensors), so sentence vectors could come from the
classifier's pass plus MiniLM's top 2 layers, if vectors computed over a
whole segment (each sentence's tokens mean-pooled from one pass, then
normalised) rank as well as each sentence encoded alone. This runs MiniLM's
6 layers over each segment (the same vectors such a shared pass would
give) and compares, on the dev split's needle, multidoc and multihop tasks
(the reader is not run): where selection ranks the gold passage (recall@1),
whether the answer string survives compression at `--rate` (retention), and
for multihop whether both evidence strings do; each for the hybrid ranker
(as served) and the dense ranker alone (the vectors' own quality).
"""

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
import torch

from compressors import models
from compressors.base import ContextParts
from compressors.llmlingua2 import LLMLingua2, Params
from compressors.relevance import Options, choose
from compressors.segmenter import sentence_spans
from compressors.sentence_vectors import default_model_dir
from compressors.training import corpus
from service.assemble import sentence_vectors
from service.config import Config

from .reader import contains
from .run import evidence_kept
from .tasks import TASKS


class SegmentPooled:
    """Sentence vectors from one MiniLM pass over a whole segment: each
    sentence's tokens mean-pooled, then normalised (the layout of
    SentenceVectors.encode's values)."""

    def __init__(self):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        self.model = AutoModel.from_pretrained(default_model_dir()).eval()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[dict]:
        out = []
        for text in texts:
            spans = sentence_spans(text)
            enc = self.tokenizer(text, return_offsets_mapping=True, truncation=True,
                                 max_length=512, return_tensors="pt")
            offsets = enc.pop("offset_mapping")[0].numpy()            # [tokens, 2]
            hidden = self.model(**enc).last_hidden_state[0].numpy()    # [tokens, 384]
            vectors = []
            for s, e in spans:
                inside = (offsets[:, 0] >= s) & (offsets[:, 1] <= e) & (offsets[:, 1] > offsets[:, 0])
                v = hidden[inside].mean(0) if inside.any() else hidden[0]
                vectors.append(v / np.linalg.norm(v))
            out.append({"spans": np.asarray(spans, np.int32).reshape(len(spans), 2),
                        "vectors": np.asarray(vectors, np.float16).reshape(len(spans), -1)})
        return out


def shared_layers(classifier_dir) -> list[int]:
    """The encoder layers the classifier shares with all-MiniLM-L6-v2 exactly."""
    from transformers import AutoModel

    a = AutoModel.from_pretrained(classifier_dir).state_dict()
    b = AutoModel.from_pretrained(default_model_dir()).state_dict()
    same = []
    for layer in range(6):
        keys = [k for k in b if k.startswith(f"encoder.layer.{layer}.")]
        if all(torch.equal(a[k], b[k]) for k in keys):
            same.append(layer)
    return same


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m service.evaluation.shared_pass")
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--rate", type=float, default=0.33)
    ap.add_argument("--tasks", default="needle,multidoc,multihop")
    ap.add_argument("--json", default="", help="also write the summary here")
    args = ap.parse_args(argv)
    cfg = Config()
    classifier_dir = models.ensure_default_llmlingua2(cfg.models_dir)
    print(f"layers identical to all-MiniLM-L6-v2's: {shared_layers(classifier_dir)}", flush=True)
    comp = LLMLingua2(str(classifier_dir))
    alone, pooled = sentence_vectors(cfg), SegmentPooled()
    docs = corpus.split(cfg.cache_dir)["dev"]
    rows = []
    for task in args.tasks.split(","):
        for ex in TASKS[task](docs, args.examples, 0):
            parts = []
            for p in ex.passages:
                segs = comp.segment(p)
                parts.append(ContextParts(p, segs, comp.encode([s.text for s in segs])))
            q = alone.query(ex.question)
            total = sum(s.n_tokens for p in parts for s in p.segments)
            params = Params(rate=args.rate, granularity="word")
            for vectors_name, encoder in (("alone", alone), ("pooled", pooled)):
                vectors = [encoder.encode([s.text for s in p.segments]) for p in parts]
                for ranker in ("hybrid", "dense"):
                    options = Options(ranker=ranker)
                    chosen = choose(parts, vectors, ex.question, q, comp.budget(params, total), options)
                    selected = [replace(p, allowed=c.allowed, budget=c.budget) for p, c in zip(parts, chosen)]
                    text = "\n\n".join(r.text for r, c in zip(comp.render(selected, params), chosen) if c.kept)
                    gold = ex.meta.get("gold")
                    first = (choose(parts, vectors, ex.question, q, None, options)[gold].rank == 0
                             if isinstance(gold, int) else None)
                    rows.append({"task": task, "vectors": vectors_name, "ranker": ranker,
                                 "retained": contains(text, ex.answer), "evidence": evidence_kept(ex, text),
                                 "recall_at_1": first})
        print(f"{task}: done", flush=True)
    summary = []
    for task in args.tasks.split(","):
        for ranker in ("hybrid", "dense"):
            for vectors_name in ("alone", "pooled"):
                rs = [r for r in rows if (r["task"], r["ranker"], r["vectors"]) == (task, ranker, vectors_name)]
                mean = lambda k: (float(np.mean([r[k] for r in rs if r[k] is not None]))
                                  if any(r[k] is not None for r in rs) else None)
                summary.append({"task": task, "ranker": ranker, "vectors": vectors_name, "n": len(rs),
                                **{k: mean(k) for k in ("retained", "evidence", "recall_at_1")}})
                s = summary[-1]
                print(f"| {task} | {ranker} | {vectors_name} | {s['n']} | " + " | ".join(
                    "-" if s[k] is None else f"{100 * s[k]:.0f}%" for k in ("recall_at_1", "retained", "evidence"))
                      + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python -m service.evaluation.shared_pass " + " ".join(argv),
                       "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
