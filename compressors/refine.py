"""Refining soft tokens at compress time: a few optimizer steps on each
segment's rows against the frozen decoder (issue 25, item 5).

complm's encoder makes a segment's CEs in one forward pass; the decoder,
reading them teacher-forced, gets about 78% of the segment's tokens back
(dev needle contexts). A segment is compressed once and then served from
the cache, so a job over a document store can afford more than one pass:
refinement treats the rows themselves as parameters and takes `steps` Adam
steps on the decoder's reconstruction loss (served for complm only; on
arc's pooled rows it measured worse, docs/soft-tokens.md):

    r_0 = the encoder's rows of the segment          [k, D]
    x   = [E(eot), r, <rec>, E(t_1) .. E(t_n-1)]     the decoder's input
    L(r) = mean_j CE(decoder(x)[k + 1 + j], t_j)     teacher-forced reconstruction
    P(r) = sum_i |r_i - r_0,i|^2 / sum_i |r_0,i|^2     relative drift from the encoder's rows
    r  <- Adam(lr=LR) on L + pull * P, `steps` times    the decoder and <rec> stay fixed

The decoder is the unchanged one that reads the rows (not the server's copy
with the encoder's LoRA folded in), in the compressor's precision. Each
segment's loss is its own mean and the batch's loss their sum, and every
sequence is padded to one width for a given segment length, so a segment's
gradient, and its refined rows, do not depend on which segments share its
batch (up to rounding). Costs: each step is one forward and backward pass of
the decoder over [eot, rows, <rec>, tokens]; measured in docs/soft-tokens.md.
"""

import torch
import torch.nn.functional as F

LR = 0.01  # Adam's step size on the rows, chosen on dev (docs/soft-tokens.md)
PULL = 10.0  # weight of the pull toward the encoder's rows, chosen on dev (docs/soft-tokens.md)


def refine_rows(decoder, bos_id: int, rec: torch.Tensor, rows: list[torch.Tensor], ids: list[list[int]],
                steps: int, width: int, pull: float = PULL,
                fixed: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Each segment's rows after `steps` Adam steps on its reconstruction
    loss. rows[i]: [k_i, D] float32, the encoder's rows of segment i;
    ids[i]: its n_i token ids; rec: the <rec> row [D]; width: the padded
    sequence length, at least 1 + k_i + n_i for every segment; pull: the
    weight of each segment's relative drift from its encoder's rows;
    fixed[i]: bool [k_i], rows of segment i that stay as they are (its
    digits' token embeddings, which pass verbatim). Returns float32 [k_i, D] each."""
    E = decoder.get_input_embeddings()
    dtype = E.weight.dtype
    device = E.weight.device
    with torch.no_grad():
        bos = E(torch.tensor([bos_id], device=device))  # [1, D]
        tokens = [E(torch.tensor(t, device=device)) for t in ids]  # [n_i, D]
    B, D = len(rows), bos.shape[-1]
    mask = torch.zeros((B, width), dtype=torch.long, device=device)
    for i, (r, t) in enumerate(zip(rows, ids)):
        mask[i, : 1 + len(r) + len(t)] = 1  # eot, rows, <rec>, all tokens but the last
    # position 1 + k_i + j (the <rec> row, then token j) predicts token j + 1
    example = torch.tensor([i for i, t in enumerate(ids) for _ in t], device=device)  # [N]
    position = torch.tensor([1 + len(r) + j for r, t in zip(rows, ids) for j in range(len(t))],
                            device=device)  # [N]
    want = torch.tensor([x for t in ids for x in t], device=device)  # [N]
    count = torch.bincount(example, minlength=B).float()  # [B]: tokens per segment

    start = [r.detach().to(device, torch.float32) for r in rows]  # [k_i, D] each
    params = [r.clone().requires_grad_(True) for r in start]
    for p, f in zip(params, fixed or []):
        if bool(f.any()):  # a zero gradient leaves Adam's step at zero
            keep = (~f).to(device, torch.float32)[:, None]  # [k_i, 1]
            p.register_hook(lambda g, keep=keep: g * keep)
    opt = torch.optim.Adam(params, lr=LR)
    with torch.enable_grad():
        for _ in range(steps):
            x = torch.zeros((B, width, D), dtype=dtype, device=device)  # [B, W, D], right-padded
            for i, (r, t) in enumerate(zip(params, tokens)):
                seq = torch.cat([bos, r.to(dtype), rec.to(device, dtype)[None], t[:-1]])
                x[i, : len(seq)] = seq
            h = decoder.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
            logits = decoder.lm_head(h[example, position]).float()  # [N, vocab]
            token_loss = F.cross_entropy(logits, want, reduction="none")  # [N]
            loss = (torch.zeros(B, device=device).index_add(0, example, token_loss) / count).sum()
            if pull:
                loss = loss + pull * sum(((p - r0) ** 2).sum() / (r0 ** 2).sum() for p, r0 in zip(params, start))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return [p.detach().float() for p in params]
