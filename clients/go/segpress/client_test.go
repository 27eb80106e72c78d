package segpress

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

// liveClient connects to the running server named by SEGPRESS_TEST_TARGET
// ("host:port"); the test is skipped when it is unset.
func liveClient(t *testing.T, opts ...Option) *Client {
	t.Helper()
	target := os.Getenv("SEGPRESS_TEST_TARGET")
	if target == "" {
		t.Skip("SEGPRESS_TEST_TARGET is not set: no server to test against")
	}
	c, err := NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func textRequest(text string, rate float32, id string) *pb.CompressRequest {
	return &pb.CompressRequest{
		Contexts:  []string{text},
		RequestId: id,
		Params:    &pb.CompressRequest_Llmlingua2{Llmlingua2: &pb.LLMLingua2Params{Rate: proto.Float32(rate)}},
	}
}

// assertKeptWords checks that every word of the compressed text comes from
// the original, in order.
func assertKeptWords(t *testing.T, original, compressed string) {
	t.Helper()
	rest := original
	for _, word := range strings.Fields(compressed) {
		i := strings.Index(rest, word)
		if i < 0 {
			t.Fatalf("%q is not in the rest of the original", word)
		}
		rest = rest[i+len(word):]
	}
}

func TestCompressText(t *testing.T) {
	c := liveClient(t)
	text := "The Go client sends this paragraph to a real segpress server. " +
		"The server keeps the words its token classifier scores highest, " +
		"and returns them as exact substrings of the input, in order."
	resp, err := c.Compress(context.Background(), textRequest(text, 0.5, "go-1"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRequestId() != "go-1" || resp.GetCompressor() != "llmlingua2" {
		t.Fatalf("request_id %q, compressor %q", resp.GetRequestId(), resp.GetCompressor())
	}
	if resp.GetText() == "" || len(resp.GetContexts()) != 1 || resp.GetText() != resp.GetContexts()[0].GetText() {
		t.Fatalf("unexpected response %v", resp)
	}
	assertKeptWords(t, text, resp.GetText())
	s := resp.GetStats()
	if s.GetCompressedTokens() <= 0 || s.GetCompressedTokens() >= s.GetOriginalTokens() || s.GetSegments() != 1 {
		t.Fatalf("unexpected stats %v", s)
	}
}

func TestCompressStreamIsolatesABadItem(t *testing.T) {
	c := liveClient(t)
	var reqs []*pb.CompressRequest
	for i := range 7 {
		reqs = append(reqs, textRequest(fmt.Sprintf("Go stream item %d is about topic %d.", i, i*13), 0.5, fmt.Sprint(i)))
	}
	reqs[3] = &pb.CompressRequest{Contexts: []string{""}, RequestId: "3"}
	var got []StreamResult
	for r, err := range c.CompressStream(context.Background(), slices.Values(reqs)) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if len(got) != len(reqs) {
		t.Fatalf("got %d results for %d requests", len(got), len(reqs))
	}
	for i, r := range got {
		if r.Index != int64(i) {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
		if i == 3 {
			if status.Code(r.Err) != codes.InvalidArgument || !strings.Contains(r.Err.Error(), "contexts[0] is empty") || r.Response != nil {
				t.Fatalf("bad item: err %v, response %v", r.Err, r.Response)
			}
			continue
		}
		if r.Err != nil || r.Response.GetRequestId() != fmt.Sprint(i) {
			t.Fatalf("item %d: err %v, response %v", i, r.Err, r.Response)
		}
		assertKeptWords(t, reqs[i].GetContexts()[0], r.Response.GetText())
	}
	// Stopping early ends the stream; the client still works.
	for r, err := range c.CompressStream(context.Background(), slices.Values(reqs)) {
		if err != nil || r.Index != 0 {
			t.Fatalf("first result: %v, %v", r, err)
		}
		break
	}
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCompressStreamReportsARequestItCannotSend(t *testing.T) {
	c := liveClient(t)
	reqs := []*pb.CompressRequest{{Contexts: []string{"fine"}}, {Contexts: []string{"\xff is not UTF-8"}}}
	var failure error
	for _, err := range c.CompressStream(context.Background(), slices.Values(reqs)) {
		failure = err
	}
	if failure == nil || !strings.Contains(failure.Error(), "UTF-8") {
		t.Fatalf("got %v, want the marshaling error", failure)
	}
}

func TestErrorsKeepTheGRPCCode(t *testing.T) {
	c := liveClient(t)
	cases := []struct {
		req     *pb.CompressRequest
		code    codes.Code
		message string
	}{
		{&pb.CompressRequest{}, codes.InvalidArgument, "contexts is empty"},
		{textRequest("x", 1.5, ""), codes.InvalidArgument, "llmlingua2.rate must be in (0, 1]"},
		{&pb.CompressRequest{Contexts: make([]string, 1000)}, codes.ResourceExhausted, "max_contexts"},
	}
	for _, tc := range cases {
		_, err := c.Compress(context.Background(), tc.req)
		st, ok := status.FromError(err)
		if !ok || st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
			t.Errorf("got %v, want %v containing %q", err, tc.code, tc.message)
		}
	}
}

func TestDefaultDeadlineApplies(t *testing.T) {
	c := liveClient(t, WithTimeout(time.Nanosecond))
	if _, err := c.Info(context.Background()); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	// A deadline of the caller's own wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestInfo(t *testing.T) {
	c := liveClient(t)
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.GetDefaultCompressor() != "llmlingua2" || info.GetVersion() == "" {
		t.Fatalf("unexpected info %v", info)
	}
	comps := info.GetCompressors()
	if len(comps) == 0 || comps[0].GetName() != "llmlingua2" || comps[0].GetOutput() != pb.OutputKind_OUTPUT_KIND_TEXT ||
		len(comps[0].GetModel().GetFingerprint()) != 64 {
		t.Fatalf("unexpected compressors %v", comps)
	}
	if info.GetLimits().GetMaxContexts() <= 0 {
		t.Fatalf("unexpected limits %v", info.GetLimits())
	}
}

func TestQueryAwareSelection(t *testing.T) {
	c := liveClient(t)
	req := &pb.CompressRequest{
		Contexts: []string{
			"The ferry leaves at seven. Tara Novak moved to Hanoi last spring. The pier is old.",
			"The bakery opens early. Olga Petrov moved to Oslo last spring. The road is new.",
			"The museum keeps maps. Pavel Moreau moved to Porto last spring. The bay froze.",
		},
		Query:     proto.String("Which city did Olga Petrov move to?"),
		Selection: &pb.SelectionOptions{Order: pb.Order_ORDER_RELEVANCE},
		Params:    &pb.CompressRequest_Llmlingua2{Llmlingua2: &pb.LLMLingua2Params{Rate: proto.Float32(0.3)}},
	}
	resp, err := c.Compress(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	best := resp.GetContexts()[1]
	if best.GetRank() != 0 || !best.GetKept() || !strings.Contains(best.GetText(), "Oslo") {
		t.Fatalf("the context about Olga Petrov should come first: %v", resp.GetContexts())
	}
	if !strings.HasPrefix(resp.GetText(), best.GetText()) {
		t.Fatalf("ORDER_RELEVANCE: the text should start with the best context: %q", resp.GetText())
	}
	if resp.GetStats().GetSentenceVectorHits()+resp.GetStats().GetSentenceVectorMisses() != resp.GetStats().GetSegments() {
		t.Fatalf("every segment has sentence vectors: %v", resp.GetStats())
	}
}
