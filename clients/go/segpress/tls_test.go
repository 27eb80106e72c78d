package segpress

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/segpress/segpress/clients/go/segpressv1"
)

// These tests dial an in-process gRPC server over TLS to check the
// client's transport options; the service itself is tested live elsewhere.

// echoServer answers Info with what it saw of the caller: the authorization
// metadata as Version, the client certificate's common name as
// DefaultCompressor.
type echoServer struct {
	pb.UnimplementedSegpressServer
}

func (echoServer) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	resp := &pb.InfoResponse{Version: first(md.Get("authorization"))}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
			resp.DefaultCompressor = info.State.PeerCertificates[0].Subject.CommonName
		}
	}
	return resp, nil
}

func first(values []string) string {
	if len(values) == 0 {
		return ""
	}
	return values[0]
}

type testPKI struct {
	caFile, clientCert, clientKey string
	server                        tls.Certificate
	pool                          *x509.CertPool
}

// newPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, under a temporary directory.
func newPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, caDER := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	pki := testPKI{caFile: filepath.Join(dir, "ca.pem"), pool: x509.NewCertPool()}
	pki.pool.AddCert(caCert)
	writePEM(t, pki.caFile, "CERTIFICATE", caDER)

	serverKey, serverDER := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "test server"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, caCert, caKey)
	pki.server = tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}

	clientKey, clientDER := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "test client"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, caCert, caKey)
	pki.clientCert, pki.clientKey = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	writePEM(t, pki.clientCert, "CERTIFICATE", clientDER)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, pki.clientKey, "EC PRIVATE KEY", keyDER)
	return pki
}

// issue makes a key and a certificate for it, signed by parent (self-signed
// when parent is nil).
func issue(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveTLS starts the echo server; with requireClientCert it is mutual TLS.
func serveTLS(t *testing.T, pki testPKI, requireClientCert bool) string {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{pki.server}}
	if requireClientCert {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pki.pool
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	pb.RegisterSegpressServer(srv, echoServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func info(t *testing.T, addr string, opts ...Option) (*pb.InfoResponse, error) {
	t.Helper()
	c, err := NewClient(addr, append(opts, WithTimeout(5*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Info(context.Background())
}

func TestTLSWithCAFileAndToken(t *testing.T) {
	pki := newPKI(t)
	addr := serveTLS(t, pki, false)
	resp, err := info(t, addr, WithTLS(pki.caFile), WithToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() != "Bearer s3cret" {
		t.Fatalf("server saw authorization %q", resp.GetVersion())
	}
	// The test CA is not among the system roots; plaintext is no TLS at all.
	for name, opts := range map[string][]Option{"system roots": {WithTLS("")}, "plaintext": nil} {
		if _, err := info(t, addr, opts...); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: got %v, want Unavailable", name, err)
		}
	}
}

func TestMutualTLS(t *testing.T) {
	pki := newPKI(t)
	addr := serveTLS(t, pki, true)
	resp, err := info(t, addr, WithTLS(pki.caFile), WithClientCert(pki.clientCert, pki.clientKey))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDefaultCompressor() != "test client" {
		t.Fatalf("server saw client certificate %q", resp.GetDefaultCompressor())
	}
	if _, err := info(t, addr, WithTLS(pki.caFile)); status.Code(err) != codes.Unavailable {
		t.Fatalf("without a client certificate: got %v, want Unavailable", err)
	}
}

func TestBadCertificateFilesAreErrors(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, opt := range map[string]Option{
		"missing CA":  WithTLS(filepath.Join(t.TempDir(), "missing.pem")),
		"CA not PEM":  WithTLS(notPEM),
		"client cert": WithClientCert(notPEM, notPEM),
	} {
		if _, err := NewClient("127.0.0.1:1", opt); err == nil {
			t.Errorf("%s: NewClient succeeded", name)
		}
	}
}
