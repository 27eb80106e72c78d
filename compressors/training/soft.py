"""What training a soft-token compressor needs, whichever it is: text, examples,
the frozen decoder's loss and dev numbers (the run itself: loop.py).

A soft-token compressor turns a context into rows a frozen decoder reads in
place of the context's token embeddings. One training example is a stretch of
a training document, cut into segments by the segmenter the server uses, and
a task:

    cont  the decoder reads [eot, rows, <cont>] and predicts the next
          `continuation` tokens of the document
    rec   the decoder reads [eot, rows, <rec>] and predicts the context's
          own tokens (reconstruction)
    qa    the context holds one made-up fact (facts.py); the decoder reads a
          chat prompt with [rows, <cont>] where the text would be and a
          question about the fact, and predicts the short answer

The loss is plain cross-entropy on those tokens through the frozen decoder;
gradients flow through it into the rows and from there into the compressor.

Text: the training essays (corpus.py) and, when compressors/training/prose.py
is there, openly licensed prose from packaged documentation; each split by
document, so dev and test text is never trained on.
"""

import random
from typing import Callable

import torch
import torch.nn.functional as F

from ..segmenter import segment_text
from ..soft_tokens import digit_ids, digit_runs
from . import corpus, facts


SOURCES = ("essays", "prose")
DEV_SEED = 1  # the dev examples of every run (what seed 0 always gave)


def documents(cache_dir: str, split: str, sources=SOURCES) -> dict[str, str]:
    """The documents of `split` ("train", "dev" or "test") from `sources`:
    "essays" (corpus.py) and "prose" (prose.py, packaged documentation)."""
    from . import prose

    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown text sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    docs = {}
    if "essays" in sources:
        docs.update({f"essays/{k}": v for k, v in corpus.split(cache_dir)[split].items()})
    if "prose" in sources:
        docs.update(prose.split(cache_dir)[split])
    return docs


def provenance(sources=SOURCES) -> list[dict]:
    """Source and licence of every text `documents` reads from `sources`."""
    from . import prose

    return [p for name, p in (("essays", corpus.PROVENANCE), ("prose", prose.PROVENANCE))
            if name in sources]


def examples(docs: dict[str, str], tok, n: int, seed: int, ctx_min: int, ctx_max: int,
             continuation: int, segment_tokens: int, rec_share: float = 0.0,
             uniform_docs: bool = False, stream: str = "soft") -> list[dict]:
    """`n` examples, fixed by `seed` and `stream`: the context's text, token
    ids and segments' token ids, the `continuation` tokens after it, and the
    task ("rec" with probability `rec_share`, else "cont"). Documents are
    drawn in proportion to their length (each token equally likely), or
    uniformly with `uniform_docs`. (`segpress eval complm|arc` uses
    stream "complm", uniform: the examples complm's evaluation always had.)"""
    rng = random.Random(f"{stream}-{seed}")
    names = sorted(docs)
    weights = None if uniform_docs else [len(docs[k]) for k in names]
    encoded = {}
    out = []
    while len(out) < n:
        name = rng.choice(names) if uniform_docs else rng.choices(names, weights)[0]
        if name not in encoded:
            enc = tok(docs[name], add_special_tokens=False, return_offsets_mapping=True)
            encoded[name] = (enc["input_ids"], enc["offset_mapping"])
        ids, offsets = encoded[name]
        length = rng.randint(ctx_min, ctx_max)
        if len(ids) < length + continuation + 1:
            continue
        s = rng.randrange(0, len(ids) - length - continuation)
        text = docs[name][offsets[s][0] : offsets[s + length - 1][1]].strip()
        if not text:
            continue
        out.append({
            "doc": name,
            "context": text,
            "context_ids": tok(text, add_special_tokens=False)["input_ids"],
            "segments": [tok(seg.text, add_special_tokens=False)["input_ids"]
                         for seg in segment_text(text, tok, segment_tokens)],
            "continuation": ids[s + length : s + length + continuation],
            "task": "rec" if rec_share and rng.random() < rec_share else "cont",
        })
    return out


def train_and_dev(cache_dir: str, tok, cfg, segment_tokens: int) -> tuple[list[dict], list[dict]]:
    """A run's examples from `cfg.corpus`: `cfg.steps * cfg.batch_size` from
    split "train" (contexts of cfg.ctx_min..ctx_max tokens, documents in
    proportion to their length, reconstruction with cfg.rec_share), and
    `cfg.dev_examples` from split "dev" (cfg.ctx_max tokens, documents
    uniformly, all continuation; the same for every seed, so runs compare).
    With cfg.qa_share, that share of the training examples are qa_examples
    (mixed in by seed; cfg.qa_names of their facts made-up names), and the
    dev examples get as many qa examples more (never names, so every run's
    dev scores compare)."""
    sources = cfg.corpus.split(",")
    train_docs = documents(cache_dir, "train", sources)
    n = cfg.steps * cfg.batch_size
    n_qa = round(n * cfg.qa_share)
    data = examples(train_docs, tok, n - n_qa, cfg.seed,
                    cfg.ctx_min, cfg.ctx_max, cfg.continuation, segment_tokens, cfg.rec_share)
    dev = examples(documents(cache_dir, "dev", sources), tok, cfg.dev_examples, DEV_SEED,
                   cfg.ctx_max, cfg.ctx_max, cfg.continuation, segment_tokens, uniform_docs=True)
    if n_qa:
        data += qa_examples(train_docs, tok, n_qa, cfg.seed, cfg.ctx_min, cfg.ctx_max, segment_tokens,
                            cfg.qa_names)
        random.Random(f"mix-{cfg.seed}").shuffle(data)
        dev += qa_examples(documents(cache_dir, "dev", sources), tok, cfg.dev_examples, DEV_SEED,
                           cfg.ctx_max, cfg.ctx_max, segment_tokens)
    return data, dev


_MARK = "\u2063context\u2063"  # stands in for the rows while the chat template is applied


def qa_examples(docs: dict[str, str], tok, n: int, seed: int, ctx_min: int, ctx_max: int,
                segment_tokens: int, names: float = 0.0) -> list[dict]:
    """`n` "qa" examples (qa_example), fixed by `seed`, on stretches of
    ctx_min..ctx_max tokens of `docs`; `names` as in facts.fact."""
    rng = random.Random(f"qa-{seed}")
    return [qa_example(rng, tok, ex["context"], segment_tokens, ex["doc"], names)
            for ex in examples(docs, tok, n, seed, ctx_min, ctx_max, 0, segment_tokens, stream="qa")]


def qa_example(rng: random.Random, tok, text: str, segment_tokens: int, doc: str = "",
               names: float = 0.0) -> dict:
    """A "qa" example from `text`: a made-up fact inserted (facts.py), the
    token ids of the chat prompt before and after the context (`before`,
    `after`: a question about the fact, then the assistant's turn) and of
    the answer, ended by the end-of-turn token."""
    sentence, question, answer = facts.fact(rng, names)
    text = facts.insert(rng, text, sentence)
    user = facts.prompt(rng, question).replace("{context}", _MARK)
    chat = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)
    before, after = chat.split(_MARK)
    return {
        "doc": doc, "context": text, "task": "qa", "question": question,
        "context_ids": tok(text, add_special_tokens=False)["input_ids"],
        "segments": [tok(seg.text, add_special_tokens=False)["input_ids"]
                     for seg in segment_text(text, tok, segment_tokens)],
        "before": tok(before, add_special_tokens=False)["input_ids"],
        "after": tok(after, add_special_tokens=False)["input_ids"],
        "answer": tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")],
    }


def decoder_logits(decoder, prefixes: list[torch.Tensor], targets: list[list[int]]):
    """The frozen decoder's logits on `targets[i]` after reading `prefixes[i]`
    ([p_i, D] input embeddings), teacher-forced, in one right-padded batch.
    Returns (logits [N, vocab] float32, example index [N], target ids [N]),
    N = every target token of every example, example by example."""
    E = decoder.get_input_embeddings()
    device = prefixes[0].device
    seqs = [torch.cat([p, E(torch.tensor(t, device=device)).to(p.dtype)]) for p, t in zip(prefixes, targets)]
    width = max(len(s) for s in seqs)
    x = seqs[0].new_zeros((len(seqs), width, seqs[0].shape[-1]))  # [B, W, D]
    mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = 1
    h = decoder.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    # position p_i - 1 + j of example i predicts its target token j
    example = torch.tensor([i for i, t in enumerate(targets) for _ in t], device=device)  # [N]
    position = torch.tensor([len(p) - 1 + j for p, t in zip(prefixes, targets) for j in range(len(t))],
                            device=device)  # [N]
    want = torch.tensor([i for t in targets for i in t], device=device)  # [N]
    return decoder.lm_head(h[example, position]).float(), example, want


def decoder_loss(decoder, prefixes: list[torch.Tensor], targets: list[list[int]]):
    """Cross-entropy of the frozen decoder on `targets[i]` after reading
    `prefixes[i]` ([p_i, D] input embeddings), teacher-forced, one right-padded
    batch. Returns (mean loss over all target tokens, per-example mean
    losses [B], per-example greedy token accuracy [B])."""
    logits, example, want = decoder_logits(decoder, prefixes, targets)
    return _losses(logits, example, want, len(targets))


def _losses(logits, example, want, n: int):
    token_loss = F.cross_entropy(logits, want, reduction="none")  # [N]
    count = torch.bincount(example, minlength=n).float()  # [B]
    per_example = torch.zeros(n, device=logits.device).index_add_(0, example, token_loss.detach()) / count
    right = (logits.argmax(-1) == want).float()
    accuracy = torch.zeros(n, device=logits.device).index_add_(0, example, right) / count
    return token_loss.mean(), per_example, accuracy


def prefix(embed, bos_id: int, rows: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
    """[eot, rows, task] as decoder input embeddings [1 + r (+ 1), D]."""
    parts = [embed(torch.tensor([bos_id], device=rows.device)).to(rows.dtype), rows]
    if task is not None:
        parts.append(task.to(rows.dtype)[None])
    return torch.cat(parts)


def student_prefix(model, bos_id: int, ex: dict, rows: torch.Tensor) -> torch.Tensor:
    """What the decoder reads before example `ex`'s targets, with `rows`
    [r, D] for its context: [eot, rows, <task>], or for "qa" the chat
    prompt with [rows, <cont>] where the text would be (as a client puts
    the server's rows, which end with <cont>, into its prompt)."""
    if ex["task"] != "qa":
        return prefix(model.embed, bos_id, rows, model.task(ex["task"]))

    def embed(ids: list[int]) -> torch.Tensor:
        return model.embed(torch.tensor(ids, device=rows.device)).to(rows.dtype)

    return torch.cat([embed(ex["before"]), rows, model.task("cont").to(rows.dtype)[None], embed(ex["after"])])


def targets_of(ex: dict) -> list[int]:
    """The tokens example `ex`'s loss is on."""
    if ex["task"] == "rec":
        return ex["context_ids"]
    return ex["answer"] if ex["task"] == "qa" else ex["continuation"]


def teacher_ids(ex: dict, bos_id: int) -> list[int]:
    """What the full-text teacher reads before `ex`'s targets: the context's
    tokens where the student has its rows."""
    if ex["task"] == "qa":
        return ex["before"] + ex["context_ids"] + ex["after"]
    return [bos_id] + ex["context_ids"]


# encode(segments' token ids) -> each segment's rows [k_i, D]
Encode = Callable[[list[list[int]]], list[torch.Tensor]]


def verbatim_ids(tok, verbatim_digits: bool) -> frozenset[int]:
    """The token ids runs_encoder passes verbatim: the digits, or none."""
    return digit_ids(tok) if verbatim_digits else frozenset()


def runs_encoder(encode_runs, embed, digits: frozenset[int]) -> Encode:
    """An Encode that makes rows as the server does (compressors/
    soft_tokens.py): each segment cut into runs of `digits` tokens and runs
    of the rest (digit_runs; one run each when `digits` is empty), a digit's
    row the decoder's input embedding `embed` of it, each other run encoded
    on its own by `encode_runs(runs, owners)` (owners[j]: the index of run
    j's segment), all in one call."""
    def encode(segments: list[list[int]]) -> list[torch.Tensor]:
        cut = [digit_runs(ids, digits) for ids in segments]
        todo = [(k, run) for k, runs in enumerate(cut) for verbatim, run in runs if not verbatim]
        made = iter(encode_runs([run for _, run in todo], [k for k, _ in todo]) if todo else [])
        device = embed.weight.device
        return [torch.cat([embed(torch.tensor(run, device=device)) if verbatim else next(made)
                           for verbatim, run in runs]) for runs in cut]  # [rows_k, D]
    return encode


def autocast(model, bf16: bool):
    """bfloat16 autocast on the device the model's decoder is on."""
    return torch.autocast(model.embed.weight.device.type, dtype=torch.bfloat16, enabled=bf16)


def batches(data: list[dict], size: int) -> Callable[[int], list[dict]]:
    """The batches of a fixed example list: step i gets examples [i * size, (i + 1) * size)."""
    return lambda step: data[step * size : (step + 1) * size]


def batch_loss(model, encode: Encode, batch: list[dict], bos_id: int, bf16: bool, distill: float = 0.0):
    """(mean loss, per-example losses, per-example token accuracy) of a batch
    of examples. `model` has the frozen `decoder`, its `embed` and
    `task(name)` (a learned row, or None).

    With `distill` > 0, the loss adds `distill` times the KL divergence from
    the full-text teacher to the rows on the continuation and qa examples'
    target tokens: the same frozen decoder reading the context's tokens gives the
    next-token distributions the rows should lead it to (dense
    distillation; one extra forward pass without gradients)."""
    with autocast(model, bf16):
        rows = iter(encode([s for ex in batch for s in ex["segments"]]))
        prefixes, targets = [], []
        for ex in batch:
            r = torch.cat([next(rows) for _ in ex["segments"]])  # [rows, D]
            prefixes.append(student_prefix(model, bos_id, ex, r))
            targets.append(targets_of(ex))
        logits, example, want = decoder_logits(model.decoder, prefixes, targets)
        loss, per_example, accuracy = _losses(logits, example, want, len(batch))
        cont = [i for i, ex in enumerate(batch) if ex["task"] != "rec"]
        if distill and cont:
            device = logits.device
            with torch.no_grad():
                full = [model.embed(torch.tensor(teacher_ids(batch[i], bos_id), device=device)) for i in cont]
                teacher = decoder_logits(model.decoder, full, [targets_of(batch[i]) for i in cont])[0]
            is_cont = torch.zeros(len(batch), dtype=torch.bool, device=device)
            is_cont[cont] = True
            student = logits[is_cont[example]]  # [N_cont, vocab], the same tokens in the same order
            kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                          reduction="batchmean")
            loss = loss + distill * kl
        return loss, per_example, accuracy


@torch.no_grad()
def dev_report(model, dev: list[dict], encoders: dict[str, Encode], bos_id: int, bf16: bool) -> dict:
    """The continuation loss of `dev` with the full text and with no context,
    and for each of `encoders`: with its rows, the share of the gap closed,
    and teacher-forced reconstruction token accuracy. With "qa" examples in
    `dev`, also the answers' loss and teacher-forced token accuracy from the
    text and from each encoder's rows."""
    E = model.embed
    device = E.weight.device
    qa = [ex for ex in dev if ex["task"] == "qa"]
    dev = [ex for ex in dev if ex["task"] != "qa"]
    cont = [dict(ex, task="cont") for ex in dev]
    rec = [dict(ex, task="rec") for ex in dev]
    full, none = [], []
    for i in range(0, len(dev), 8):
        b = cont[i : i + 8]
        targets = [ex["continuation"] for ex in b]
        with autocast(model, bf16):
            full += decoder_loss(model.decoder, [E(torch.tensor([bos_id] + ex["context_ids"], device=device))
                                                 for ex in b], targets)[1].tolist()
            none += decoder_loss(model.decoder, [E(torch.tensor([bos_id], device=device)) for _ in b],
                                 targets)[1].tolist()
    out = {"loss_full": sum(full) / len(dev), "loss_none": sum(none) / len(dev)}
    if qa:
        def from_text(b: list[dict]):
            with autocast(model, bf16):
                return decoder_loss(model.decoder, [E(torch.tensor(teacher_ids(ex, bos_id), device=device))
                                                    for ex in b], [ex["answer"] for ex in b])

        out["qa_text"] = _answer_scores(qa, from_text)
    for name, encode in encoders.items():
        loss, acc = [], []
        for i in range(0, len(dev), 8):
            loss += batch_loss(model, encode, cont[i : i + 8], bos_id, bf16)[1].tolist()
            acc += batch_loss(model, encode, rec[i : i + 8], bos_id, bf16)[2].tolist()
        mean = sum(loss) / len(dev)
        out[name] = {"loss_rows": mean, "rec_token_accuracy": sum(acc) / len(dev),
                     "gap_closed": (out["loss_none"] - mean) / (out["loss_none"] - out["loss_full"])}
        if qa:
            out[name]["qa"] = _answer_scores(qa, lambda b: batch_loss(model, encode, b, bos_id, bf16))
    return out


def _answer_scores(qa: list[dict], score) -> dict:
    """The mean per-example loss and token accuracy of `score(batch)` (the
    triple of decoder_loss and batch_loss) over `qa`, 8 examples a batch."""
    loss, acc = [], []
    for i in range(0, len(qa), 8):
        _, per_example, accuracy = score(qa[i : i + 8])
        loss, acc = loss + per_example.tolist(), acc + accuracy.tolist()
    return {"loss": sum(loss) / len(qa), "token_accuracy": sum(acc) / len(qa)}
