// Package segpress is a small client for the segpress context-compression
// service, over the generated gRPC code in package segpressv1.
//
//	c, err := segpress.NewClient("127.0.0.1:50051")
//	if err != nil { ... }
//	defer c.Close()
//	resp, err := c.Compress(ctx, &segpressv1.CompressRequest{Contexts: []string{text}})
//
// Errors are gRPC status errors: status.Code(err) gives their code.
package segpress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

// DefaultTimeout is the deadline of a unary call whose context has none.
const DefaultTimeout = 60 * time.Second

// Client calls one segpress server. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	stub    pb.SegpressClient
	timeout time.Duration
}

type options struct {
	tls         bool
	caFile      string
	certFile    string
	keyFile     string
	token       string
	timeout     time.Duration
	dialOptions []grpc.DialOption
}

// Option configures NewClient.
type Option func(*options)

// WithTLS connects over TLS, verifying the server against the PEM CA
// certificates in caFile, or the system roots when caFile is "".
// Without WithTLS or WithClientCert the connection is plaintext.
func WithTLS(caFile string) Option {
	return func(o *options) { o.tls, o.caFile = true, caFile }
}

// WithClientCert presents this PEM certificate and key to the server
// (mutual TLS); it implies TLS.
func WithClientCert(certFile, keyFile string) Option {
	return func(o *options) { o.tls, o.certFile, o.keyFile = true, certFile, keyFile }
}

// WithToken sends "authorization: Bearer <token>" metadata on every call.
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithTimeout sets the deadline of unary calls whose context has none
// (DefaultTimeout otherwise). Streams have only their context's deadline.
func WithTimeout(d time.Duration) Option {
	return func(o *options) { o.timeout = d }
}

// WithDialOptions adds raw gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// NewClient creates a client for addr ("host:port"). It does not connect
// yet: the first call does.
func NewClient(addr string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	creds := insecure.NewCredentials()
	if o.tls {
		cfg, err := tlsConfig(o)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(o.token)))
	}
	conn, err := grpc.NewClient(addr, append(dial, o.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: pb.NewSegpressClient(conn), timeout: o.timeout}, nil
}

func tlsConfig(o options) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("segpress: no PEM certificate in %s", o.caFile)
		}
	}
	if o.certFile != "" || o.keyFile != "" {
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// bearer is per-call credentials sending an auth token. It is allowed on
// plaintext connections too, for servers behind a trusted proxy.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// withDeadline applies the client's timeout when ctx has no deadline.
func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// Compress compresses the contexts of one request.
func (c *Client) Compress(ctx context.Context, req *pb.CompressRequest) (*pb.CompressResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	return c.stub.Compress(ctx, req)
}

// Info describes the server: version, compressors, models and limits.
func (c *Client) Info(ctx context.Context) (*pb.InfoResponse, error) {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	return c.stub.Info(ctx, &pb.InfoRequest{})
}

// StreamResult is the outcome of one request of a stream.
type StreamResult struct {
	// Index is the request's position in the stream, from 0.
	Index int64
	// Response is set when Err is nil.
	Response *pb.CompressResponse
	// Err is this request's failure, a gRPC status error (status.Code works).
	Err error
}

// CompressStream sends reqs on one stream and yields one result per request,
// in request order, each with its own status. A non-nil error in the second
// value means the stream itself failed; it is the last thing yielded.
// Stopping the iteration early cancels the stream.
func (c *Client) CompressStream(ctx context.Context, reqs iter.Seq[*pb.CompressRequest]) iter.Seq2[StreamResult, error] {
	return func(yield func(StreamResult, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.stub.CompressStream(ctx)
		if err != nil {
			yield(StreamResult{}, err)
			return
		}
		sendErr := make(chan error, 1)
		go func() {
			err := send(stream, reqs)
			sendErr <- err // before cancel, so that Recv's caller sees it
			if err != nil {
				cancel() // ends Recv below
			}
		}()
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				// The server ends the stream once all requests are sent.
				if err := <-sendErr; err != nil {
					yield(StreamResult{}, err)
				}
				return
			}
			if err != nil {
				select { // a failed send explains the failure best
				case sendFailure := <-sendErr:
					if sendFailure != nil {
						err = sendFailure
					}
				default:
				}
				yield(StreamResult{}, err)
				return
			}
			if !yield(result(msg), nil) {
				return
			}
		}
	}
}

// send writes every request, then half-closes the stream.
func send(stream pb.Segpress_CompressStreamClient, reqs iter.Seq[*pb.CompressRequest]) error {
	for req := range reqs {
		if err := stream.Send(req); err != nil {
			// io.EOF: the server ended the stream; Recv reports why.
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
	return stream.CloseSend()
}

func result(msg *pb.CompressStreamResponse) StreamResult {
	r := StreamResult{Index: msg.GetIndex(), Response: msg.GetResponse()}
	if st := msg.GetStatus(); st.GetCode() != int32(codes.OK) {
		r.Response = nil
		r.Err = status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return r
}
