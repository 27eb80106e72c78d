"""Answer a question from complm soft tokens (the README's "Soft tokens" example).

    python clients/python/examples/complm_generate.py [HOST:PORT] [DECODER_DIR]

The server compresses the context into concept embeddings; the decoder they
are made for (SmolLM2-135M-Instruct; `segpress models list` shows where its
directory is) reads them in place of the text and answers. Needs torch and
transformers next to the client.
"""

import os
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

from segpress import SegpressClient
from segpress.soft_tokens import generate, inputs_embeds, vllm_prompt_embeds
from segpress.tensors import split_segments

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
decoder_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser(
    "~/.cache/segpress/models/smollm2-135m-instruct")

context = ("The lighthouse on Skarv Island was built in 1874. Its keeper, Ingrid Dahl, "
           "kept a logbook of every ship that passed. In the winter of 1902 a storm "
           "destroyed the old lamp, and a new one was brought from Bergen.")
question = "Who kept the logbook?"

with SegpressClient(target) as client:
    resp = client.compress([context], compressor="complm", output_dtype="bfloat16")
t = resp.tensor  # [rows, hidden] concept embeddings of every segment
print(f"{resp.stats.original_tokens} tokens -> {list(t.shape)} {t.decoder_id} "
      f"({len(split_segments(t))} segments, cache hits {resp.stats.cache_hits}/{resp.stats.segments})")

tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
model = AutoModelForCausalLM.from_pretrained(decoder_dir)
prompt = ("Answer the question using the text below. Reply with the answer only.\n\n"
          "Text:\n{context}\n\nQuestion: " + question)  # the CEs go where {context} is
answer = generate(t, model, tokenizer, prompt, max_new_tokens=16)
print("answer:", answer)

# The same prompt for vLLM (--enable-prompt-embeds): the whole prompt's embeddings.
embeds = inputs_embeds(t, model, tokenizer, prompt)  # [1, length, hidden]
payload = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt_embeds": vllm_prompt_embeds(embeds[0])}
print("vllm prompt_embeds:", len(payload["prompt_embeds"]), "base64 characters")
