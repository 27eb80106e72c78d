"""An XLM-R (SentencePiece) checkpoint in the LLMLingua-2 format loads and
compresses faithfully.

The published xlm-roberta-large checkpoint is not available offline, so this
builds a small one of the same architecture and tokenizer type: a Unigram
SentencePiece tokenizer trained on the sample text (Metaspace "▁" word
markers, <s> ... </s> around the text) and an XLMRobertaForTokenClassification
with 2 labels. Weights are random (seeded): this checks the code path, not
quality.
"""

import numpy as np
import pytest
import torch
from helpers import assert_faithful
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForTokenClassification

from compressors.base import ContextParts
from compressors.llmlingua2 import LLMLingua2, Params


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, sample_text):
    out = tmp_path_factory.mktemp("xlm-roberta-tiny")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        sample_text.splitlines() * 3,
        trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>"),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=512,
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=514, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, num_labels=2, type_vocab_size=1,
    )
    XLMRobertaForTokenClassification(config).save_pretrained(out)
    return str(out)


def test_xlmr_checkpoint_compresses_faithfully(xlmr_dir, sample_text):
    c = LLMLingua2(xlmr_dir)
    assert c.prefix_ids == [0] and c.suffix_ids == [2]
    assert c.window == 510
    text = sample_text + "\nÜber São Paulo: 東京 🍜 “quoted” (parenthesised) words."
    segs = c.segment(text)
    enc = c.encode([s.text for s in segs])
    for s, e in zip(segs, enc):
        words = [s.text[a:b] for a, b in e["spans"]]
        assert all(w.strip() == w and w for w in words)
        # Words are in order, do not overlap, and cover every non-space char.
        assert all(a[1] <= b[0] for a, b in zip(e["spans"], e["spans"][1:]))
        covered = np.zeros(len(s.text), dtype=bool)
        for a, b in e["spans"]:
            covered[a:b] = True
        assert all(covered[i] or ch.isspace() for i, ch in enumerate(s.text))
    parts = [ContextParts(text, segs, enc)]
    for rate in (0.33, 0.5):
        (r,) = c.render(parts, Params(rate=rate))
        assert_faithful(text, r.text)
        assert r.compressed_tokens <= round(rate * r.original_tokens)
    (full,) = c.render(parts, Params(rate=1.0))
    assert full.text == text.strip()
    assert np.isclose(sum(e["tokens"].sum() for e in enc), full.original_tokens)
