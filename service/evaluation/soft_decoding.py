"""What the decoder does with a soft-token compressor's rows, for `segpress
eval complm|arc` (service/evaluation/soft.py explains the measures): the rows
as the server makes them, prefill time against the text, and greedy
reconstruction from the rows and <Rec>."""

import json
import statistics
import time


def rows_of(comp, text: str, params):
    """`text` through the compressor as the server runs it (segment, encode,
    render), with no cache: its Rendered."""
    from compressors.base import ContextParts

    segs = comp.segment(text)
    return comp.render([ContextParts(text, segs, comp.encode([s.text for s in segs]))], params)[0]


# -- 3. prefill -----------------------------------------------------------------------


def prefill_times(decoder, comp, params, tok, docs: dict[str, str], lengths: list[int],
                  repeats: int, bos_id: int, progress) -> list[dict]:
    import torch

    E = decoder.get_input_embeddings()
    ids = []
    for name in sorted(docs):
        ids += tok(docs[name] + "\n\n", add_special_tokens=False)["input_ids"]

    def forward(x):
        with torch.inference_mode():
            h = decoder.model(inputs_embeds=x[None], use_cache=True).last_hidden_state
            decoder.lm_head(h[:, -1])  # the first token's logits

    def timed(fn):
        """Median seconds of `repeats` calls."""
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    for n in lengths:
        if n > len(ids):
            raise SystemExit(f"--prefill {n}: the test essays hold only {len(ids)} tokens")
        text = tok.decode(ids[:n])
        with torch.inference_mode():
            full = torch.cat([E(torch.tensor([bos_id])), E(torch.tensor(ids[:n]))])
            segs = comp.segment(text)
            ce = torch.from_numpy(rows_of(comp, text, params).tensor)
            soft = torch.cat([E(torch.tensor([bos_id])), ce.to(E.weight.dtype)])
        row = {"context_tokens": n, "ce_rows": len(ce),
               "prefill_full_s": timed(lambda: forward(full)),
               "prefill_ce_s": timed(lambda: forward(soft)),
               "compress_s": timed(lambda: comp.encode([s.text for s in segs]))}
        row["speedup_cached"] = row["prefill_full_s"] / row["prefill_ce_s"]
        row["speedup_uncached"] = row["prefill_full_s"] / (row["prefill_ce_s"] + row["compress_s"])
        rows.append(row)
        progress(f"prefill {json.dumps(row)}")
    return rows



# -- 4. reconstruction ---------------------------------------------------------------


def common_subsequence(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of token lists a and b."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def reconstruction(decoder, comp, params, examples: list[dict], n: int, bos_id: int, progress) -> dict:
    """Greedy regeneration of the first segment of `n` examples from its rows
    (without the <Cont> row) and the <Rec> row. token_accuracy counts tokens
    right at their position (one dropped word shifts the rest);
    in_order_recall counts the segment's tokens the regeneration has in the
    right order (longest common subsequence), whatever their position."""
    import torch

    E = decoder.get_input_embeddings()
    rows = []
    for ex in examples[:n]:
        seg = comp.segment(ex["context"])[0]
        want = comp.tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        rec = comp.model.task("rec").detach().float()[None]  # the <Rec> row [1, hidden]
        soft = torch.cat([torch.from_numpy(rows_of(comp, seg.text, params).tensor[:-1]), rec])
        with torch.inference_mode():
            x = torch.cat([E(torch.tensor([bos_id])), soft.to(E.weight.dtype)])[None]
            got = decoder.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                   max_new_tokens=len(want), min_new_tokens=len(want), do_sample=False,
                                   pad_token_id=bos_id)[0, -len(want):].tolist()
        rows.append({"tokens": len(want), "correct": sum(a == b for a, b in zip(got, want)),
                     "in_order": common_subsequence(got, want), "exact": got == want,
                     "text": comp.tokenizer.decode(got), "want": seg.text})
        progress(f"reconstruction {len(rows)}/{n}: {rows[-1]['correct']}/{len(want)} tokens")
    tokens = max(sum(r["tokens"] for r in rows), 1)
    return {"segments": len(rows),
            "token_accuracy": sum(r["correct"] for r in rows) / tokens,
            "in_order_recall": sum(r["in_order"] for r in rows) / tokens,
            "exact_match": sum(r["exact"] for r in rows) / max(len(rows), 1), "rows": rows}
