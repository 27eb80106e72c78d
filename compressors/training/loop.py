"""The training run of a soft-token compressor, whichever it is: its shared
settings (SoftTrainConfig; each trainer's TrainConfig adds its own), the
loop with checkpoints that survive a kill and a progress line, and the
weights and card it ends with. compressors/training/soft.py makes the
examples and the losses."""

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..engines import resolve_dtype
from .soft import provenance


@dataclass
class SoftTrainConfig:
    """What `segpress train complm` and `segpress train arc` share."""

    seed: int = 0
    steps: int = 300
    batch_size: int = 8  # examples per step
    lr: float = 5e-4
    warmup: int = 30
    ctx_min: int = 40  # context tokens of an example
    ctx_max: int = 120
    continuation: int = 32  # tokens the continuation loss is on
    rec_share: float = 0.5  # share of reconstruction examples (among those that are not qa)
    qa_share: float = 0.0  # share of question-answering examples (soft.qa_examples)
    qa_names: float = 0.0  # share of those whose answer is a made-up name (facts.name_fact)
    distill: float = 0.0  # weight of the KL to the full-text teacher on continuation tokens (soft.batch_loss)
    verbatim_digits: bool = True  # rows made as the server makes them: digits as the decoder's embeddings
    # Decoder passes in bfloat16 autocast: by default where the CPU has bf16
    # instructions. Elsewhere torch emulates it, ~100x slower than float32
    # (a 1024x576 by 576x1536 matmul on 2 AVX2 cores: 11 ms vs 1.45 s).
    bf16: bool = resolve_dtype("auto") == "bfloat16"
    dev_examples: int = 24  # held-out examples (split "dev") scored before and after
    checkpoint_every: int = 25
    corpus: str = "essays,prose"  # text sources (compressors/training/soft.py)
    stop_after: int = 0  # stop at a checkpoint after this step, to resume later; 0: run to the end
    init_from: str = ""  # start from these trained weights instead of fresh ones


def train_loop(model, cfg, batches: Callable[[int], list[dict]], step_loss, dev: Callable[[], dict],
               ckpt_path: Path, minutes: float = 0.0, on_checkpoint: Callable[[int, dict], None] | None = None):
    """Trains `model.trainable()` on `batches(step)` (`cfg.batch_size`
    examples) for `cfg.steps` steps: AdamW (no weight decay), linear warmup
    over `cfg.warmup` steps then cosine decay from `cfg.lr`, gradients
    clipped at norm 1. `step_loss(step, batch)` returns batch_loss's triple.
    A checkpoint every `cfg.checkpoint_every` steps (then
    `on_checkpoint(step, record)`, if given); a run started again resumes from it.
    With `minutes`, the run fits itself into that much training time (from
    its start or restart): after 25 steps it sets `cfg.steps` to the steps
    the measured speed allows (at most the configured ones), so the
    schedule still ends at zero.
    Returns (finished, record): finished is False when the run stopped at
    `cfg.stop_after` (its dev numbers printed then); record has the dev
    numbers before (and after) training, the loss history and the seconds
    trained."""
    params = model.trained_state()
    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    ckpt = Checkpoint(ckpt_path)
    resumed = ckpt.load(params, opt, sched)
    if resumed:
        start, record = resumed
        cfg.steps = record.get("steps", cfg.steps)  # as fitted by `minutes` before the restart
        print(f"resumed at step {start} from {ckpt.path}", file=sys.stderr, flush=True)
    else:
        start = 0
        record = {"dev_before": dev(), "history": [], "seconds_before_resume": 0.0}
        print(json.dumps({"dev_before": record["dev_before"]}), file=sys.stderr, flush=True)
    progress = Progress(cfg.steps, start)
    t0 = time.time() - record["seconds_before_resume"]
    t_restart = time.time()
    model.train()
    window = []
    step = start
    while step < cfg.steps:
        batch = batches(step)
        loss, _, acc = step_loss(step, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable(), 1.0)
        opt.step()
        sched.step()
        window.append((loss.item(), *[a.item() for a, ex in zip(acc, batch) if ex["task"] == "rec"]))
        step = done = step + 1
        if done == start + 5:
            t5 = time.time()  # the first steps (allocations, kernel choices) are slower: not timed
        if minutes and done == start + 25:
            per_step = (time.time() - t5) / 20
            cfg.steps = record["steps"] = min(cfg.steps, done + int((minutes * 60 - (time.time() - t_restart))
                                                                 / per_step))
            progress.total = cfg.steps
            print(json.dumps({"fitted_steps": cfg.steps, "seconds_per_step": round(per_step, 3)}),
                  file=sys.stderr, flush=True)
        at_checkpoint = done % cfg.checkpoint_every == 0 and done < cfg.steps
        if done % 10 == 0 or at_checkpoint or done == cfg.steps:
            losses = [w[0] for w in window]
            accs = [a for w in window for a in w[1:]]
            row = progress.line(done, loss=sum(losses) / len(losses),
                                rec_accuracy=sum(accs) / max(len(accs), 1), lr=sched.get_last_lr()[0])
            record["history"].append(dict(row, seconds=round(time.time() - t0, 1)))
            window = []
        if at_checkpoint:
            record["seconds_before_resume"] = time.time() - t0
            ckpt.save(done, params, opt, sched, record)
            if on_checkpoint:
                on_checkpoint(done, record)
            if done == cfg.stop_after:  # the dev numbers at this step, for runs compared part-way
                model.eval()
                print(json.dumps({"step": done, "dev_at_stop": dev()}), file=sys.stderr, flush=True)
                return False, record
    model.eval()
    record["dev_after"] = dev()
    record["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({"dev_after": record["dev_after"]}), file=sys.stderr, flush=True)
    del record["seconds_before_resume"]
    return True, record


class Checkpoint:
    """The trained tensors, the optimizer, the schedule and the history at a
    step, in one file, written atomically; a killed run resumes from it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def save(self, step: int, params: dict[str, torch.Tensor], opt, sched, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"step": step, "params": {k: v.detach().clone() for k, v in params.items()},
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "record": record}, tmp)
        tmp.replace(self.path)

    def load(self, params: dict[str, torch.Tensor], opt, sched) -> tuple[int, dict] | None:
        """(step, record) of the saved state, now in `params`, `opt` and `sched`;
        None when there is no checkpoint."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        return state["step"], state["record"]


class Progress:
    """One line per report: step, losses, elapsed and remaining time."""

    def __init__(self, total: int, start_step: int = 0):
        self.total, self.start_step, self.t0 = total, start_step, time.time()

    def line(self, step: int, **values) -> dict:
        elapsed = time.time() - self.t0
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done else 0.0
        row = {"step": step, **{k: round(float(v), 4) for k, v in values.items()},
               "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row


def export(model, cfg, record: dict, out: Path, decoder_dir) -> dict:
    """Writes the trained tensors (float16) to `out` with their config, the
    decoder they are for and the training flags, and a JSON card beside
    them: flags, data (source and licence), model config, dev numbers,
    loss history. Returns the card."""
    from dataclasses import asdict

    from .. import artifacts, models
    from .cards import write_card

    out.parent.mkdir(parents=True, exist_ok=True)
    decoder_fingerprint = artifacts.fingerprint(decoder_dir)
    model.save(out, {"decoder": models.SMOLLM2, "decoder_fingerprint": decoder_fingerprint,
                     "train": json.dumps(asdict(cfg), sort_keys=True)})
    return write_card(
        out, asdict(cfg),
        decoder_fingerprint=decoder_fingerprint,
        parameters=sum(p.numel() for p in model.trainable()),
        model=json.loads(model.config.to_json()),
        data=provenance(cfg.corpus.split(",")),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        **record,
    )


def finish(finished: bool, model, cfg, record: dict, out: Path, decoder_dir) -> int:
    """The end of `segpress train <soft compressor>`: export a finished run
    (and drop its checkpoint) and print its summary, or say how to resume."""
    ckpt = out.with_suffix(".ckpt")
    if not finished:
        print(f"stopped after step {cfg.stop_after}; run again to resume from {ckpt}", file=sys.stderr)
        return 0
    card = export(model, cfg, record, out, decoder_dir)
    ckpt.unlink(missing_ok=True)
    print(json.dumps({k: card[k] for k in ("file", "sha256", "bytes", "parameters", "seconds",
                                           "dev_before", "dev_after")}, indent=2))
    return 0
