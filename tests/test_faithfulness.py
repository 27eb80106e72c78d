"""Faithfulness for every script (issue 22): llmlingua2's output is pieces of
the input, exact, in order, never overlapping, and rate 1.0 gives the input
back (less the whitespace around it).

Tokenizers can map several tokens to one character: an uncased WordPiece
tokenizer splits a Hangul syllable into jamo tokens that all point at the
syllable, a byte-level BPE tokenizer an emoji into byte tokens. Cutting
segments or words between such tokens repeated characters
("대한민국의" -> "대한한민국의의"). Checked here with three kinds of tokenizer: the
default checkpoint (uncased WordPiece), a tiny XLM-R (SentencePiece
Unigram) and a tiny RoBERTa (byte-level BPE), the last two with random
weights (faithfulness does not depend on the scores); through the
compressor, through the real server with and without a query, and over
random Unicode (hypothesis).
"""

import uuid

import numpy as np
import pytest
import torch
from helpers import assert_pieces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForTokenClassification

from compressors.base import ContextParts, check_word_scores
from compressors.llmlingua2 import LLMLingua2, Params
from compressors.segmenter import segment_text

TEXTS = {
    "korean": "대한민국의 수도는 서울특별시이다. 한국어는 한글로 적는다. 부산은 큰 항구 도시이다.",
    "japanese": "東京は日本の首都です。富士山は日本で一番高い山です。ひらがなとカタカナを使います。",
    "chinese": "北京是中国的首都。长城非常长。我们今天学习中文和历史。",
    "arabic": "القاهرة هي عاصمة مصر. يتحدث الناس اللغة العربية. النيل نهر طويل جدا.",
    "hebrew": "ירושלים היא עיר עתיקה. העברית נכתבת מימין לשמאל. תל אביב שוכנת על חוף הים.",
    "thai": "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "devanagari": "नई दिल्ली भारत की राजधानी है। हिन्दी देवनागरी लिपि में लिखी जाती है। गंगा एक नदी है।",
    "emoji": "Ramen 🍜 is hot. The scientist 👩‍🔬 smiled 😀😀😀. Flags 🇯🇵🇰🇷 wave! A family 👨‍👩‍👧‍👦 came.",
    "mixed": ("Seoul (서울) and Tokyo (東京) are capitals; Москва too. مرحبا and שלום say hello. "
              "e\u0301te\u0301 has combining marks, ﬁ a ligature."),
    "json": '{"city": "서울", "population": 9668465, "tags": ["capital", "한강"], '
            '"nested": {"ok": true, "pi": 3.14159}}',
    "code": 'def area(r):\n    """원의 넓이."""\n    return 3.14159 * r ** 2  # π r²\n\nprint(area(2.5))',
    "invisible": "\ufeffA byte order mark starts this.\u200b Zero\u200bwidth spaces\u00adand a soft hyphen.",
}
RATES = (1.0, 0.5, 0.2)
GRANULARITIES = ("word", "sentence", "sentence_then_word")


def check_values(text, segments, encoded):
    """The cached values' contract: segments are pieces of the text in order,
    never overlapping; each segment's words are inside it, increasing and
    not overlapping; together the words cover every character that is not
    whitespace (of a text with any word: a text of only characters the
    tokenizer drops has none)."""
    covered = np.zeros(len(text), dtype=bool)
    prev = 0
    for seg, enc in zip(segments, encoded):
        assert seg.start >= prev and text[seg.start:seg.end] == seg.text
        assert check_word_scores(enc, seg), (seg.text, enc["spans"].tolist())
        for s, e in enc["spans"]:
            covered[seg.start + s : seg.start + e] = True
        prev = seg.end
    if not covered.any():
        return
    lost = [c for c, ok in zip(text, covered) if not ok and not c.isspace()]
    assert not lost, f"characters in no word: {lost!r}"


def check_output(text, out, rate, exact=True):
    assert_pieces(text, out)
    if rate == 1.0 and exact:
        assert out == text.strip()


def compress_all(c, text, rate, granularity):
    segs = c.segment(text)
    enc = c.encode([s.text for s in segs])
    check_values(text, segs, enc)
    (r,) = c.render([ContextParts(text, segs, enc)], Params(rate=rate, granularity=granularity))
    return r


# -- tokenizers other than the default's --------------------------------------------


def _save(out, tok, model):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=512)
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
                           type_vocab_size=1)
    model(config).save_pretrained(out)
    return LLMLingua2(str(out))


SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory, sample_text):
    """A RoBERTa token classifier with a byte-level BPE tokenizer trained on
    the sample (English): every other script is byte tokens that overlap."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sample_text.splitlines(), trainers.BpeTrainer(
        vocab_size=800, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return _save(tmp_path_factory.mktemp("byte-bpe"), tok, RobertaForTokenClassification)


@pytest.fixture(scope="module")
def unigram(tmp_path_factory, sample_text):
    """A token classifier with an XLM-R-style tokenizer: SentencePiece
    Unigram, NFKC, "▁" word markers."""
    from tokenizers import normalizers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(sample_text.splitlines() + list(TEXTS.values()), trainers.UnigramTrainer(
        vocab_size=700, special_tokens=SPECIALS, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return _save(tmp_path_factory.mktemp("unigram"), tok, RobertaForTokenClassification)


def test_byte_level_tokens_overlap_as_this_module_assumes(byte_bpe):
    """The premise: this tokenizer's tokens share characters (else the
    tests below would check nothing)."""
    enc = byte_bpe.tokenizer("대한민국 🍜", add_special_tokens=False, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_other_tokenizers_are_faithful_in_every_script(byte_bpe, unigram, name):
    text = TEXTS[name]
    for c in (byte_bpe, unigram):
        for rate in RATES:
            for g in GRANULARITIES:
                check_output(text, compress_all(c, text, rate, g).text, rate)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7])
def test_segments_never_cut_inside_a_character(byte_bpe, llmlingua2, max_tokens):
    """Segments of a few tokens cut mid-word all the time; never between two
    tokens of one character, and together they hold every visible one.
    (A byte-level BPE segment can start with a line break: its token is
    zero-width once trimmed, and joins the next token.)"""
    for tok in (byte_bpe.tokenizer, llmlingua2.tokenizer):
        for text in TEXTS.values():
            segs = segment_text(text, tok, max_tokens, unknown_pieces=True)
            prev = 0
            for s in segs:
                assert s.start >= prev and text[s.start:s.end] == s.text == s.text.rstrip() != ""
                assert text[prev:s.start].strip() == ""
                prev = s.end
            assert text[prev:].strip() == ""


# -- the default checkpoint ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_script_comes_back_exactly(llmlingua2, name):
    text = TEXTS[name]
    for rate in RATES:
        for g in GRANULARITIES:
            check_output(text, compress_all(llmlingua2, text, rate, g).text, rate)


def test_the_korean_sentence_of_the_issue(llmlingua2):
    text = "대한민국의 수도는 서울특별시이다."
    for rate in RATES:
        out = compress_all(llmlingua2, text, rate, "word").text
        assert "한한" not in out and "의의" not in out and "다다" not in out
        check_output(text, out, rate)
    assert compress_all(llmlingua2, text, 1.0, "word").text == text


# -- random Unicode -----------------------------------------------------------------

# Pieces of every kind above, mixed with arbitrary code points (no surrogates:
# a request cannot carry them).
PIECES = st.one_of(
    st.sampled_from([w for t in TEXTS.values() for w in t.split()] + [" ", "\n", "\n\n", "\t", "。"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
)
TEXT = st.lists(PIECES, min_size=1, max_size=40).map("".join).filter(lambda t: t.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=TEXT, rate=st.sampled_from(RATES), granularity=st.sampled_from(GRANULARITIES))
def test_random_unicode_is_faithful_with_every_tokenizer(byte_bpe, unigram, text, rate, granularity):
    for c in (byte_bpe, unigram):
        check_output(text, compress_all(c, text, rate, granularity).text, rate, exact=_visible(c, text))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=TEXT, rate=st.sampled_from(RATES), granularity=st.sampled_from(GRANULARITIES))
def test_random_unicode_is_faithful_on_the_default_checkpoint(llmlingua2, text, rate, granularity):
    check_output(text, compress_all(llmlingua2, text, rate, granularity).text, rate,
                 exact=_visible(llmlingua2, text))


def _visible(c, text) -> bool:
    """Whether the tokenizer sees anything of `text`: a text of only
    characters it drops (a zero-width space, a control character) has no
    words, and comes back empty."""
    return bool(c.tokenizer(text, add_special_tokens=False)["input_ids"])


# -- through the server, with and without a query ---------------------------------

QUERIES = [None, "What is the capital city?", "Is it there?"]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_every_script_through_the_server(query_server, query, granularity):
    from segpress import SegpressClient

    names = sorted(TEXTS)
    contexts = [TEXTS[n] for n in names]
    ns = "faith-" + uuid.uuid4().hex[:8]
    with SegpressClient(query_server.target, timeout_s=60) as client:
        for rate in RATES:
            extra = {} if query is None else dict(query=query)
            resp = client.compress(contexts, rate=rate, granularity=granularity, namespace=ns, **extra)
            for text, ctx in zip(contexts, resp.contexts):
                check_output(text, ctx.text, rate, exact=query is None)
                if query is not None:
                    assert ctx.kept == bool(ctx.text)
            # rate 1.0, every sentence: not a token is dropped
            if rate == 1.0 and query is not None:
                full = client.compress(contexts, rate=1.0, granularity=granularity, namespace=ns,
                                       query=query, keep_rate=1.0, min_relevance=0.0)
                assert [c.text for c in full.contexts] == [t.strip() for t in contexts]
                assert all(c.kept for c in full.contexts)
                assert full.stats.compressed_tokens == full.stats.original_tokens
