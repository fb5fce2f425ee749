package daemon_test

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
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/gembatch/gembatch/daemon"
	"github.com/gembatch/gembatch/internal/embedded"
	"github.com/gembatch/gembatch/metrics"
)

// runAgainst starts gembatchd against a NATS server with opts and reports Run's start-up error
// (nil once ready). The API is not needed to connect.
func runAgainst(t *testing.T, opts *server.Options, url func(*server.Server) string, set func(*daemon.Config)) error {
	t.Helper()
	ns, err := embedded.NATSWith(opts, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	cfg := testConfig()
	cfg.NATSURL = url(ns)
	cfg.GeminiBaseURL = "http://127.0.0.1:1"
	set(&cfg)
	m := daemon.NewMain(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), metrics.Build{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-m.Ready:
		cancel()
		return <-done
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("neither ready nor failed after 20s")
		return nil
	}
}

func plainURL(ns *server.Server) string { return ns.ClientURL() }

func TestNATSAuthentication(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		opts   server.Options
		good   func(*daemon.Config)
		bad    func(*daemon.Config)
		secret string // must not appear in the error
	}{
		{"user and password", server.Options{Username: "gb", Password: "s3cret-pw"},
			func(c *daemon.Config) { c.NATSUser, c.NATSPassword = "gb", "s3cret-pw" },
			func(c *daemon.Config) { c.NATSUser, c.NATSPassword = "gb", "wrong-pw" }, "wrong-pw"},
		{"token", server.Options{Authorization: "tok-123456"},
			func(c *daemon.Config) { c.NATSToken = "tok-123456" },
			func(c *daemon.Config) { c.NATSToken = "tok-bad-999" }, "tok-bad-999"},
		{"nkey", server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}},
			func(c *daemon.Config) { c.NATSNKeyFile = seedFile },
			func(c *daemon.Config) { c.NATSNKeyFile = otherFile }, string(otherSeed)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := runAgainst(t, &tt.opts, plainURL, tt.good); err != nil {
				t.Fatalf("good credentials: %v", err)
			}
			err := runAgainst(t, &tt.opts, plainURL, tt.bad)
			if err == nil {
				t.Fatal("bad credentials accepted")
			}
			if !strings.Contains(err.Error(), "refused the credentials") || strings.Contains(err.Error(), tt.secret) {
				t.Fatalf("bad credentials: %q; want a clear refusal without the secret", err)
			}
			if err := runAgainst(t, &tt.opts, plainURL, func(*daemon.Config) {}); err == nil {
				t.Fatal("no credentials accepted")
			}
		})
	}
}

// TestNATSCredentialsFile runs the server in operator mode (JWTs) and connects with a .creds file.
func TestNATSCredentialsFile(t *testing.T) {
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	skp, _ := nkeys.CreateAccount() // the system account operator mode needs
	spub, _ := skp.PublicKey()
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(apub, ajwt); err != nil {
		t.Fatal(err)
	}
	if err := resolver.Store(spub, sjwt); err != nil {
		t.Fatal(err)
	}
	creds := func(signer nkeys.KeyPair) string {
		ukp, _ := nkeys.CreateUser()
		upub, _ := ukp.PublicKey()
		useed, _ := ukp.Seed()
		ujwt, err := jwt.NewUserClaims(upub).Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		b, err := jwt.FormatUserConfig(ujwt, useed)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "user.creds")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stranger, _ := nkeys.CreateAccount() // an account the server does not know signs the bad one
	opts := server.Options{TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: resolver, SystemAccount: spub}
	goodFile, badFile := creds(akp), creds(stranger)
	if err := runAgainst(t, &opts, plainURL, func(c *daemon.Config) { c.NATSCredsFile = goodFile }); err != nil {
		t.Fatalf("good credentials file: %v", err)
	}
	err = runAgainst(t, &opts, plainURL, func(c *daemon.Config) { c.NATSCredsFile = badFile })
	if err == nil || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("credentials file of an unknown account: %v", err)
	}
}

func TestNATSTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCert(t, nil, nil, "gembatch test CA", true)
	srvCert, srvKey := newCert(t, ca, caKey, "nats.test", false)
	cliCert, cliKey := newCert(t, ca, caKey, "gembatchd", false)
	write := func(name string, der []byte, typ string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.Raw, "CERTIFICATE")
	cliFile := write("client.pem", cliCert.Raw, "CERTIFICATE")
	cliKeyFile := write("client-key.pem", marshalKey(t, cliKey), "EC PRIVATE KEY")

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	opts := server.Options{
		TLS: true, TLSVerify: true, TLSTimeout: 5,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey}},
			ClientCAs:    pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		},
	}
	tlsURL := func(ns *server.Server) string { return "tls://" + ns.Addr().String() }
	full := func(c *daemon.Config) {
		c.NATSTLSCA, c.NATSTLSCert, c.NATSTLSKey, c.NATSTLSServerName = caFile, cliFile, cliKeyFile, "nats.test"
	}
	if err := runAgainst(t, &opts, tlsURL, full); err != nil {
		t.Fatalf("TLS with CA, client certificate and server name: %v", err)
	}
	noCert := func(c *daemon.Config) { c.NATSTLSCA, c.NATSTLSServerName = caFile, "nats.test" }
	if err := runAgainst(t, &opts, tlsURL, noCert); err == nil {
		t.Fatal("connected without the client certificate the server requires")
	}
	wrongName := func(c *daemon.Config) { full(c); c.NATSTLSServerName = "elsewhere.test" }
	if err := runAgainst(t, &opts, tlsURL, wrongName); err == nil {
		t.Fatal("connected to a server whose certificate names another host")
	}
}

// newCert makes a certificate signed by parent (self-signed when parent is nil).
func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, name string, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		IsCA: isCA, BasicConstraintsValid: true,
	}
	if isCA {
		tmpl.DNSNames, tmpl.IPAddresses = nil, nil
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func marshalKey(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
