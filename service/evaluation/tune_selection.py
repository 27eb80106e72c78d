"""Dev-split tuning of query-aware selection's defaults (the numbers in
compressors/relevance.py's comments come from here):

    python -m service.evaluation.tune_selection 14 multidoc 0.33 \\
        1.0:sentence:original:0,1.0:sentence:original:0.75

Each configuration is coarse_factor:granularity:order:min_relevance (- for
the default: the cut where relevances separate); coarse_factor sets
compressors/relevance.py's COARSE_FACTOR for the run, as `separation` sets
hop.SEPARATION (serving code has no tuning-only options);
every example is compressed with each and answered by the reader. Prints the
correct answers per (task, rate, configuration). Tune on dev only.

    python -m service.evaluation.tune_selection separation 50 0.33 0.1,0.25,1.0

sweeps compressors/hop.py's SEPARATION on dev multihop and multidoc without
the reader: evidence kept (multihop: the bridge's role word and the answer;
multidoc: the answer), the achieved ratio, and the contexts kept.
"""

import sys
import time
from pathlib import Path

from compressors import models, relevance
from compressors.training import corpus
from service.config import Config

from .methods import Env, SegpressQuery
from .reader import Reader, contains
from .tasks import TASKS


def separation(argv: list[str]) -> None:
    from compressors import hop

    from .run import evidence_kept

    n, rate, values = int(argv[0]), float(argv[1]), [float(x) for x in argv[2].split(",")]
    cfg = Config()
    reader_dir = str(models.ensure_smollm2(cfg.models_dir))
    env = Env(Path(cfg.models_dir), Reader(reader_dir), reader_dir,
              str(models.ensure_default_llmlingua2(cfg.models_dir)))
    docs = corpus.split(cfg.cache_dir)["dev"]
    method = SegpressQuery(env)
    for task in ("multihop", "multidoc"):
        examples = TASKS[task](docs, n, 0)
        states = [method.prepare(ex) for ex in examples]
        for value in values:
            hop.SEPARATION = value
            kept, ratios, contexts = 0, [], []
            for ex, state in zip(examples, states):
                text = method.compress(ex, state, rate)
                found = evidence_kept(ex, text)
                kept += contains(text, ex.answer) if found is None else found
                ratios.append(env.reader.count(text) / env.reader.count(ex.context))
                total = sum(s.n_tokens for p in state[0] for s in p.segments)
                contexts.append(sum(c.kept for c in method.choices(ex, state, round(rate * total))))
            print(f"{task} rate={rate} SEPARATION={value}: evidence kept {kept}/{n}, ratio "
                  f"{sum(ratios) / n:.3f}, contexts kept {sum(contexts) / n:.2f}", flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "separation":
        return separation(argv[1:])
    n, tasks, rates, configs = int(argv[0]), argv[1].split(","), argv[2].split(","), argv[3]
    cfg = Config()
    reader_dir = str(models.ensure_smollm2(cfg.models_dir))
    env = Env(Path(cfg.models_dir), Reader(reader_dir), reader_dir,
              str(models.ensure_default_llmlingua2(cfg.models_dir)))
    docs = corpus.split(cfg.cache_dir)["dev"]
    method = SegpressQuery(env)
    correct: dict[str, int] = {}
    t0 = time.perf_counter()
    for task in tasks:
        for ex in TASKS[task](docs, n, 0):
            state = method.prepare(ex)
            for rate in map(float, rates):
                for config in configs.split(","):
                    c, g, o, t = config.split(":")
                    relevance.COARSE_FACTOR, method.granularity, method.order = float(c), g, o
                    method.min_relevance = None if t == "-" else float(t)  # -: the cut where scores separate
                    answer = env.reader.answer(method.compress(ex, state, rate), ex.question)
                    key = f"{task} rate={rate} {config}"
                    correct[key] = correct.get(key, 0) + contains(answer, ex.answer)
            print(f"{ex.id} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    for key, k in sorted(correct.items()):
        print(f"{key}: {k}/{n}")


if __name__ == "__main__":
    main(sys.argv[1:])
