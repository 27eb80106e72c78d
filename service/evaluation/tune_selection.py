"""Dev-split tuning of query-aware selection's defaults (the numbers in
compressors/relevance.py's comments come from here):

    python -m service.evaluation.tune_selection 14 multidoc 0.33 \\
        1.0:sentence:original:context:0,1.0:sentence:original:context:0.75

Each configuration is coarse_factor:granularity:order:unit:min_relevance;
every example is compressed with each and answered by the reader. Prints the
correct answers per (task, rate, configuration). Tune on dev only.
"""

import sys
import time
from pathlib import Path

from compressors import models
from compressors.training import corpus
from service.config import Config

from .methods import Env, SegpressQuery
from .reader import Reader, contains
from .tasks import TASKS


def main(argv: list[str]) -> None:
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
                    c, g, o, u, t = config.split(":")
                    method.coarse_factor, method.granularity = float(c), g
                    method.order, method.unit, method.min_relevance = o, u, float(t)
                    answer = env.reader.answer(method.compress(ex, state, rate), ex.question)
                    key = f"{task} rate={rate} {config}"
                    correct[key] = correct.get(key, 0) + contains(answer, ex.answer)
            print(f"{ex.id} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    for key, k in sorted(correct.items()):
        print(f"{key}: {k}/{n}")


if __name__ == "__main__":
    main(sys.argv[1:])
