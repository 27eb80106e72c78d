"""The LangChain, LlamaIndex and Haystack integrations of the Python client,
with the real framework packages, against the live `server`: the three
examples (with torch blocked), each integration's blocking and async paths,
metadata, parameters, errors and the passthrough fallback, docs/clients.md
section's snippets, and the overhead benchmark.
"""

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # no usage statistics from the tests

import grpc
import pytest
from conftest import ROOT
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from helpers import assert_faithful

from segpress import AsyncSegpressClient, Retry, SegpressClient, SegpressError, pb
from segpress import _integration

EXAMPLES = ROOT / "clients" / "python" / "examples"
FRAMEWORKS = ("langchain", "llamaindex", "haystack")
QUESTION = "When was the lighthouse at Cape Ardmore first lit?"
TEXTS = [
    "The lighthouse at Cape Ardmore was first lit on the evening of 14 March 1851. "
    "Crowds gathered on the cliffs, and the keeper fired a signal gun when the lamp caught.",
    "Its keeper, Thomas Wren, recorded that the lamp burned eleven pints of oil before dawn. "
    "He trimmed the wicks every four hours and wrote each trimming in the log.",
    "In 1903 the oil lamp was replaced by an incandescent vapour burner, "
    "which doubled the light's range to twenty-two nautical miles on a clear night.",
]
# Runs a script with torch unimportable: the integrations and examples must not need it.
NO_TORCH = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Framework:
    """One integration, driven the same way for every framework: make it,
    wrap texts as the framework's documents, run it (blocking or async),
    read a document's text and metadata."""

    def __init__(self, name: str):
        self.name = name

    def make(self, **kw):
        if self.name == "langchain":
            from segpress.langchain import SegpressCompressor as cls
        elif self.name == "llamaindex":
            from segpress.llamaindex import SegpressNodePostprocessor as cls
        else:
            from segpress.haystack import SegpressDocumentCompressor as cls
        return cls(**kw)

    def docs(self, texts, metas=None):
        metas = metas or [{"source": f"doc-{i}"} for i in range(len(texts))]
        if self.name == "langchain":
            from langchain_core.documents import Document

            return [Document(page_content=t, metadata=m, id=f"id-{i}") for i, (t, m) in enumerate(zip(texts, metas))]
        if self.name == "llamaindex":
            from llama_index.core.schema import NodeWithScore, TextNode

            return [NodeWithScore(node=TextNode(text=t, metadata=m, id_=f"id-{i}"), score=1.0 - i / 10)
                    for i, (t, m) in enumerate(zip(texts, metas))]
        from haystack import Document

        return [Document(content=t, meta=m, id=f"id-{i}") for i, (t, m) in enumerate(zip(texts, metas))]

    def run(self, obj, docs, query=None):
        if self.name == "langchain":
            return list(obj.compress_documents(docs, query or ""))
        if self.name == "llamaindex":
            return obj.postprocess_nodes(docs, query_str=query)
        return obj.run(documents=docs, query=query)["documents"]

    def arun(self, obj, docs, query=None):
        async def main():
            try:
                return await arun_on(self, obj, docs, query)
            finally:
                await obj.aclose()
        return asyncio.run(main())

    def text(self, doc) -> str:
        return {"langchain": lambda: doc.page_content, "llamaindex": lambda: doc.node.get_content(),
                "haystack": lambda: doc.content}[self.name]()

    def meta(self, doc) -> dict:
        return {"langchain": lambda: doc.metadata, "llamaindex": lambda: doc.node.metadata,
                "haystack": lambda: doc.meta}[self.name]()

    def id(self, doc) -> str:
        return doc.node.node_id if self.name == "llamaindex" else doc.id


@pytest.fixture(params=FRAMEWORKS)
def fw(request) -> Framework:
    return Framework(request.param)


def test_importing_segpress_imports_no_framework():
    r = subprocess.run([sys.executable, "-c", "import sys, segpress, segpress._integration; print(sorted("
                        "m for m in sys.modules if m.split('.')[0] in "
                        "('langchain_core', 'llama_index', 'haystack', 'torch', 'pydantic')))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --- the examples, as a user runs them -----------------------------------------

@pytest.mark.parametrize("name", FRAMEWORKS)
def test_example_runs_against_the_server_without_torch(server, name):
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(EXAMPLES / f"{name}_rag.py"),
                        "--server", server.target], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    compressed = [line for line in lines if " -> " in line]
    assert 1 <= len(compressed) <= 3, r.stdout
    # The log that answers the question first, with its token counts (selection
    # may keep it whole when it fits the budget and drop the others).
    source, before, _, after = compressed[0].split()[:4]
    assert source == "log-0" and int(after) <= int(before)
    assert "1851" in compressed[0]
    # The async part (target_tokens=60, whole sentences) keeps the answer too.
    assert any(line.startswith("log-0 ") and "1851" in line for line in lines if " -> " not in line), r.stdout


# --- each integration, in-process ----------------------------------------------

def test_documents_come_back_compressed_with_their_metadata(server, fw):
    obj = fw.make(target=server.target, rate=0.5)
    docs = fw.docs(TEXTS, [{"source": "a", "page": 1}, {"source": "b"}, {"source": "c"}])
    out = fw.run(obj, docs)
    assert [fw.id(d) for d in out] == ["id-0", "id-1", "id-2"]
    for original, doc, text in zip(docs, out, TEXTS):
        m = fw.meta(doc)
        assert m["source"] == fw.meta(original)["source"]
        assert 0 < m["segpress_compressed_tokens"] < m["segpress_original_tokens"]
        assert m["segpress_segments"] >= 1 and m["segpress_compressor"] == "llmlingua2"
        assert m["segpress_cache_hits"] + m["segpress_cache_misses"] >= 3
        assert len(fw.text(doc)) < len(text)
        assert_faithful(text, fw.text(doc))
        assert fw.text(original) == text and "segpress_original_tokens" not in fw.meta(original)
    assert fw.meta(out[0])["page"] == 1
    if fw.name == "llamaindex":
        from llama_index.core.schema import MetadataMode

        assert [d.score for d in out] == [d.score for d in docs]
        llm_view = out[0].node.get_content(metadata_mode=MetadataMode.LLM)
        assert "source: a" in llm_view and "segpress" not in llm_view
        assert "segpress" not in out[0].node.get_content(metadata_mode=MetadataMode.EMBED)
    obj.close()


def test_second_request_is_served_from_the_cache(server, fw):
    obj = fw.make(target=server.target, rate=0.4)
    fw.run(obj, fw.docs(TEXTS))
    again = fw.meta(fw.run(obj, fw.docs(TEXTS))[0])
    assert again["segpress_cache_misses"] == 0 and again["segpress_cache_hits"] >= 3


def test_async_path_uses_the_async_client(server, fw):
    obj = fw.make(target=server.target, rate=0.5)
    out = fw.arun(obj, fw.docs(TEXTS))
    assert [fw.id(d) for d in out] == ["id-0", "id-1", "id-2"]
    assert all(fw.meta(d)["segpress_compressed_tokens"] < fw.meta(d)["segpress_original_tokens"] for d in out)
    assert obj._clients._client is None  # the blocking client was never made
    assert fw.text(out[0]) == fw.text(fw.run(obj, fw.docs(TEXTS))[0])  # same answer both ways


async def arun_on(fw: Framework, obj, docs, query=None):
    """The integration's async method, awaited on the running loop."""
    if fw.name == "langchain":
        return list(await obj.acompress_documents(docs, query or ""))
    if fw.name == "llamaindex":
        return await obj.apostprocess_nodes(docs, query_str=query)
    return (await obj.run_async(documents=docs, query=query))["documents"]


def test_async_path_on_given_clients(server, fw):
    async def with_async_client():
        async with AsyncSegpressClient(server.target) as client:
            return await arun_on(fw, fw.make(async_client=client, rate=0.5), fw.docs(TEXTS))

    out = asyncio.run(with_async_client())
    assert [fw.meta(d)["segpress_compressor"] for d in out] == ["llmlingua2"] * 3
    with SegpressClient(server.target) as client:  # only a blocking client: the async path runs it in a thread
        out = asyncio.run(arun_on(fw, fw.make(client=client, rate=0.5), fw.docs(TEXTS)))
        assert [fw.meta(d)["segpress_compressor"] for d in out] == ["llmlingua2"] * 3
    with pytest.raises(ValueError, match="async_client"):  # only an async client: no blocking path
        fw.run(fw.make(async_client=AsyncOnNoLoop(), rate=0.5), fw.docs(TEXTS))


class AsyncOnNoLoop:
    """Stands for an AsyncSegpressClient; the blocking path must refuse it."""


def test_compressor_parameters_pass_through(server, fw):
    out = fw.run(fw.make(target=server.target, target_tokens=30), fw.docs(TEXTS))
    assert sum(fw.meta(d)["segpress_compressed_tokens"] for d in out) <= 30
    out = fw.run(fw.make(target=server.target, target_tokens=60, granularity="sentence"), fw.docs(TEXTS))
    first = fw.text(out[0])
    assert first in TEXTS[0] and first.endswith(".")  # one whole sentence
    out = fw.run(fw.make(target=server.target, rate=0.3, force_tokens=["Wren"], namespace="fw-test"),
                 fw.docs(TEXTS))
    assert "Wren" in fw.text(out[1])
    # Threshold mode: the words scoring at least 0.6, as the client's own call keeps them.
    out = fw.run(fw.make(target=server.target, threshold=0.6, granularity="word"), fw.docs(TEXTS))
    with SegpressClient(server.target) as client:
        want = client.compress(TEXTS[:1], threshold=0.6, granularity="word")
    assert fw.text(out[0]) == want.text and fw.meta(out[0])["segpress_compressed_tokens"] > 0


def test_other_request_keywords_pass_through_options(server, fw):
    off = fw.make(target=server.target, rate=0.3, options=dict(selection=False))
    out = fw.run(off, fw.docs(TEXTS), query=QUESTION)  # selection off: every document comes back
    assert [fw.id(d) for d in out] == ["id-0", "id-1", "id-2"]
    assert not any("segpress_kept" in fw.meta(d) for d in out)
    with pytest.raises(ValueError, match="own arguments"):
        fw.make(target="127.0.0.1:1", options=dict(rate=0.5))
    with pytest.raises(ValueError, match="own arguments"):
        fw.make(target="127.0.0.1:1", options=dict(query="q"))
    with pytest.raises(ValueError, match="soft-token"):
        fw.make(target="127.0.0.1:1", options=dict(output_dtype="bfloat16"))
    with pytest.raises(ValueError, match="no_such_option"):
        fw.make(target="127.0.0.1:1", options=dict(no_such_option=1))


def test_documents_without_text_are_passed_through_unsent(server, fw):
    obj = fw.make(target=server.target, rate=0.5)
    docs = fw.docs(["  \n", TEXTS[0], ""])
    out = fw.run(obj, docs)
    assert [fw.id(d) for d in out] == ["id-0", "id-1", "id-2"]
    assert out[0] is docs[0] and out[2] is docs[2]
    assert "segpress_original_tokens" in fw.meta(out[1])
    assert fw.run(obj, fw.docs(["", " "])) == fw.docs(["", " "])  # no call at all
    assert fw.run(obj, []) == []


def test_the_query_goes_with_the_documents(server, fw):
    """With a query the server may run query-aware selection: what comes back
    is then a subset, in order, with relevance, rank and kept; the document
    that answers the question is among them. An empty query is no query."""
    obj = fw.make(target=server.target, rate=0.5)
    out = fw.run(obj, fw.docs(TEXTS), query=QUESTION)
    ids = [fw.id(d) for d in out]
    assert ids[0] == "id-0" and ids == sorted(ids)
    assert "1851" in fw.text(out[0])
    reported = ["segpress_kept" in fw.meta(d) for d in out]
    assert all(reported) or not any(reported)
    if "kept" not in pb.CompressedContext.DESCRIPTOR.fields_by_name:
        assert not any(reported)
    for d in out:
        m = fw.meta(d)
        assert not reported[0] or (m["segpress_kept"] is True and "segpress_relevance" in m), m
    for blank in ("", "  "):
        out = fw.run(obj, fw.docs(TEXTS), query=blank)
        assert len(out) == 3 and not any("segpress_kept" in fw.meta(d) for d in out)


@pytest.mark.parametrize("compressor", ["complm", "arc"])
def test_soft_token_compressors_are_refused(fw, compressor):
    with pytest.raises(ValueError, match="soft tokens"):
        fw.make(target="127.0.0.1:1", compressor=compressor)


def test_bad_options_are_refused_when_built(fw):
    with pytest.raises(ValueError, match="granularity"):
        fw.make(target="127.0.0.1:1", granularity="paragraph")
    with pytest.raises(ValueError, match="on_error"):
        fw.make(target="127.0.0.1:1", on_error="ignore")
    with pytest.raises(ValueError, match="target"):
        fw.make(rate=0.5)


def failures(server):
    """(options, expected code, text in the message) for each way a call fails."""
    unreachable = "127.0.0.1:1"  # not an ephemeral port: nothing listens, and no self-connect
    return [
        (dict(target=unreachable, client_options=dict(retry=Retry(attempts=1))),
         grpc.StatusCode.UNAVAILABLE, ""),
        # grpc rounds a deadline up to 1 ms, and a cached answer can come
        # back sooner: bypassing the cache makes every call run the model.
        (dict(target=server.target, timeout_s=1e-4, cache="bypass"),
         grpc.StatusCode.DEADLINE_EXCEEDED, ""),
        (dict(target=server.target, rate=1.5), grpc.StatusCode.INVALID_ARGUMENT, "rate"),
    ]


def test_failures_raise_with_status_and_message(server, fw):
    for options, code, text in failures(server):
        obj = fw.make(**options)
        with pytest.raises(SegpressError) as e:
            fw.run(obj, fw.docs(TEXTS))
        assert e.value.code == code and text in e.value.details, (options, e.value)
        with pytest.raises(SegpressError) as e:
            fw.arun(obj, fw.docs(TEXTS))
        assert e.value.code == code


def test_passthrough_returns_the_documents_and_logs(server, fw, caplog):
    for options, code, _ in failures(server):
        obj = fw.make(on_error="passthrough", **options)
        docs = fw.docs(TEXTS)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="segpress.integration"):
            assert fw.run(obj, docs) == docs
            assert fw.arun(obj, docs) == docs
        warnings = [r for r in caplog.records if r.name == "segpress.integration"]
        assert len(warnings) >= 2 and code.name in warnings[0].getMessage()
        assert "3 documents through uncompressed" in warnings[0].getMessage()


# --- framework-specific use ------------------------------------------------------

def test_langchain_contextual_compression_retriever(server):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from segpress.langchain import SegpressCompressor

    class Fixed(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(TEXTS)]

    retriever = ContextualCompressionRetriever(
        base_compressor=SegpressCompressor(target=server.target, rate=0.5), base_retriever=Fixed())
    docs = retriever.invoke(QUESTION)  # selection, where the server has it, may leave some out
    kept = [d.metadata["n"] for d in docs]
    assert kept[0] == 0 and kept == sorted(kept)
    assert all(len(d.page_content) <= len(TEXTS[d.metadata["n"]]) for d in docs)
    assert sum(len(d.page_content) for d in docs) < sum(len(t) for t in TEXTS)
    docs = asyncio.run(retriever.ainvoke(QUESTION))
    assert [d.metadata["n"] for d in docs] == kept
    assert all(d.metadata["segpress_cache_misses"] == 0 for d in docs)


def test_llamaindex_query_engine_reads_compressed_nodes(server):
    from llama_index.core import Document, SummaryIndex
    from llama_index.core.llms import MockLLM

    from segpress.llamaindex import SegpressNodePostprocessor

    index = SummaryIndex.from_documents([Document(text=t, metadata={"n": i}) for i, t in enumerate(TEXTS)])
    engine = index.as_query_engine(
        llm=MockLLM(), node_postprocessors=[SegpressNodePostprocessor(target=server.target, rate=0.3)])
    response = engine.query(QUESTION)  # selection, where the server has it, may leave some out
    kept = [n.node.metadata["n"] for n in response.source_nodes]
    assert kept[0] == 0 and kept == sorted(kept)
    assert "1851" in response.response  # MockLLM echoes its prompt: the compressed nodes
    for n in response.source_nodes:
        assert n.node.metadata["segpress_compressed_tokens"] < n.node.metadata["segpress_original_tokens"]
        assert len(n.node.get_content()) < len(TEXTS[n.node.metadata["n"]])
        assert n.node.get_content() in response.response


def test_haystack_pipeline_errors_and_serialization(server):
    from haystack import Pipeline
    from haystack.core.errors import PipelineRuntimeError

    from segpress.haystack import SegpressDocumentCompressor

    pipeline = Pipeline()
    pipeline.add_component("compressor", SegpressDocumentCompressor(
        target=server.target, rate=0.5, granularity="sentence",
        options=dict(keep_duplicates=True, keep_rate=1.0, min_relevance=0.0),
        client_options=dict(token="secret")))
    loaded = Pipeline.loads(pipeline.dumps(), allowed_modules=["segpress.haystack"])
    assert "secret" not in pipeline.dumps()
    component = loaded.get_component("compressor")
    assert (component.target, component.rate, component.granularity, component.options) == \
        (server.target, 0.5, "sentence", {"keep_duplicates": True, "keep_rate": 1.0,
                                          "min_relevance": 0.0})
    docs = Framework("haystack").docs(TEXTS)
    result = loaded.run({"compressor": {"documents": docs, "query": QUESTION}})
    assert len(result["compressor"]["documents"]) == 3
    result = asyncio.run(loaded.run_async({"compressor": {"documents": docs, "query": QUESTION}}))
    assert len(result["compressor"]["documents"]) == 3

    bad = Pipeline()
    bad.add_component("compressor", SegpressDocumentCompressor(target=server.target, rate=1.5))
    with pytest.raises(PipelineRuntimeError) as e:
        bad.run({"compressor": {"documents": docs}})
    cause = e.value.__cause__
    assert isinstance(cause, SegpressError) and cause.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rate" in str(e.value)


# --- what the server may report: selection (relevance, kept), soft tokens ---------

def response_class(relevance_presence: bool):
    """A stand-in for CompressResponse with just the fields the integrations
    read, its contexts with relevance (optional or plain float), rank and
    kept, as query-aware selection reports them."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="selection_test.proto", package="t", syntax="proto3")
    ctx = file.message_type.add(name="Ctx")
    for number, (name, kind) in enumerate([("text", F.TYPE_STRING), ("original_tokens", F.TYPE_INT64),
                                           ("compressed_tokens", F.TYPE_INT64), ("segments", F.TYPE_INT32),
                                           ("relevance", F.TYPE_FLOAT), ("rank", F.TYPE_INT32),
                                           ("kept", F.TYPE_BOOL)], 1):
        field = ctx.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        if name == "relevance" and relevance_presence:
            field.proto3_optional, field.oneof_index = True, 0
            ctx.oneof_decl.add(name="_relevance")
    stats = file.message_type.add(name="Stats")
    stats.field.add(name="cache_hits", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    stats.field.add(name="cache_misses", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    resp = file.message_type.add(name="Resp")
    resp.field.add(name="contexts", number=1, type=F.TYPE_MESSAGE, type_name=".t.Ctx", label=F.LABEL_REPEATED)
    resp.field.add(name="compressor", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    resp.field.add(name="stats", number=3, type=F.TYPE_MESSAGE, type_name=".t.Stats", label=F.LABEL_OPTIONAL)
    resp.field.add(name="tensor", number=4, type=F.TYPE_MESSAGE, type_name=".t.Stats", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Resp"))


@pytest.mark.parametrize("relevance_presence", [True, False])
def test_selection_fields_are_read_and_dropped_contexts_left_out(relevance_presence):
    resp = response_class(relevance_presence)(compressor="llmlingua2")
    for rank, (text, relevance, kept) in enumerate([("kept one", 0.9, True), ("", 0.1, False),
                                                    ("kept two", 0.5, True)]):
        resp.contexts.add(text=text, original_tokens=5, compressed_tokens=2, relevance=relevance,
                          rank=rank, kept=kept)
    texts = ["a", "b", " ", "c"]
    out = _integration._results(texts, [0, 1, 3], resp, had_query=True)
    assert [(c.index, c.text) for c in out] == [(0, "kept one"), (2, " "), (3, "kept two")]
    assert out[0].metadata["segpress_relevance"] == pytest.approx(0.9)
    assert out[0].metadata["segpress_kept"] is True and out[2].metadata["segpress_rank"] == 2
    assert out[1].metadata is None  # not sent: no text
    # Without a query no selection ran: nothing is dropped, nothing reported.
    out = _integration._results(texts, [0, 1, 3], resp, had_query=False)
    assert len(out) == 4 and "segpress_kept" not in out[0].metadata
    # Nothing kept: a server from before selection (kept is false by default).
    old = response_class(relevance_presence)(compressor="llmlingua2")
    for text in ("x", "y"):
        old.contexts.add(text=text)
    out = _integration._results(["a", "b"], [0, 1], old, had_query=True)
    assert [c.text for c in out] == ["x", "y"] and "segpress_kept" not in out[0].metadata
    # An unset optional relevance is not reported; a plain one always is.
    resp.contexts[0].ClearField("relevance")
    first = _integration._results(texts, [0, 1, 3], resp, had_query=True)[0].metadata
    assert ("segpress_relevance" in first) == (not relevance_presence)


def test_a_soft_token_response_is_refused():
    resp = pb.CompressResponse(compressor="complm", contexts=[pb.CompressedContext(row_end=2)],
                               tensor=pb.Tensor(shape=[2, 4]))
    with pytest.raises(ValueError, match="soft tokens"):
        _integration._results(["x"], [0], resp, had_query=False)


# --- docs/clients.md and the benchmark -------------------------------------------

SECTION = "Use it from your RAG framework"


def readme_blocks(section: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / "clients.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.split("\n", 1)[1] for b in body.split("```")[1::2] if b.startswith(lang + "\n")]


def test_readme_section_follows_the_python_client_section():
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "clients.md").read_text(), flags=re.M)
    assert headings[headings.index("Python client") + 1] == SECTION


def test_readme_snippets_are_cut_from_the_examples():
    code = [(EXAMPLES / f"{name}_rag.py").read_text() for name in FRAMEWORKS]
    blocks = readme_blocks(SECTION, "python")
    assert len(blocks) >= 3
    for block in blocks:
        indented = [textwrap.indent(block, prefix) for prefix in ("", "    ", "        ")]
        assert any(b in c for b in indented for c in code), f"not in the examples:\n{block}"


def test_overhead_benchmark(server):
    r = subprocess.run([sys.executable, EXAMPLES / "bench_frameworks.py", "--server", server.target,
                        "--requests", "40", "--json"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    import json

    result = json.loads(r.stdout)
    assert set(result) == {"bare client", *FRAMEWORKS}
    for name in FRAMEWORKS:
        # The target in docs/clients.md is < 1 ms (measured with --requests 200); a loose
        # bound here, as other work may share these CPUs.
        assert result[name]["overhead_ms"] < 3, result
