// Command segpress-example compresses a file (or stdin) with a segpress
// server and prints the compressed text, then a stats line on stderr.
//
//	go run ./cmd/segpress-example -addr 127.0.0.1:50051 -rate 0.33 document.txt
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"

	"google.golang.org/protobuf/proto"

	"github.com/segpress/segpress/clients/go/segpress"
	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server host:port")
	rate := flag.Float64("rate", 0.33, "fraction of tokens to keep, in (0, 1]")
	token := flag.String("token", "", "auth token (sent as authorization: Bearer <token>)")
	useTLS := flag.Bool("tls", false, "connect over TLS, trusting the system roots")
	ca := flag.String("ca", "", "connect over TLS, trusting this PEM CA file instead")
	flag.Parse()

	text, err := readInput(flag.Arg(0))
	if err != nil {
		log.Fatal(err)
	}
	var opts []segpress.Option
	if *useTLS || *ca != "" {
		opts = append(opts, segpress.WithTLS(*ca))
	}
	if *token != "" {
		opts = append(opts, segpress.WithToken(*token))
	}
	client, err := segpress.NewClient(*addr, opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	resp, err := client.Compress(context.Background(), &pb.CompressRequest{
		Contexts: []string{text},
		Params: &pb.CompressRequest_Llmlingua2{
			Llmlingua2: &pb.LLMLingua2Params{Rate: proto.Float32(float32(*rate))},
		},
	})
	if err != nil {
		log.Fatal(err) // a gRPC status error: status.Code(err) is its code
	}
	fmt.Println(resp.GetText())
	s := resp.GetStats()
	fmt.Fprintf(os.Stderr, "# %d -> %d tokens (%.2fx), cache hits %d/%d\n",
		s.GetOriginalTokens(), s.GetCompressedTokens(), s.GetRatio(), s.GetCacheHits(), s.GetSegments())
}

// readInput reads the named file, or stdin when the name is "" or "-".
func readInput(name string) (string, error) {
	if name == "" || name == "-" {
		b, err := io.ReadAll(os.Stdin)
		return string(b), err
	}
	b, err := os.ReadFile(name)
	return string(b), err
}
