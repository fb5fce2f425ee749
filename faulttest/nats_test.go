package faulttest_test

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gembatch/gembatch/internal/embedded"
)

// natsWorld is one NATS server, or a cluster of three with JetStream, each with its own ports
// and store, that a test can stop and start again.
type natsWorld struct {
	nodes []*natsNode
}

// natsNode is one server of the world, with what it needs to start again as itself.
type natsNode struct {
	opts server.Options
	dir  string
	srv  *server.Server
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port) }

func startNATS(t *testing.T, size int, maxPayload int32) *natsWorld {
	t.Helper()
	dir := t.TempDir()
	w := &natsWorld{}
	clusterPorts := make([]int, size)
	for i := range clusterPorts {
		clusterPorts[i] = freePort(t)
	}
	for i := range size {
		n := &natsNode{dir: filepath.Join(dir, fmt.Sprintf("n%d", i))}
		n.opts = server.Options{Port: freePort(t), ServerName: fmt.Sprintf("n%d", i), MaxPayload: maxPayload}
		if size > 1 {
			n.opts.Cluster = server.ClusterOpts{Name: "faulttest", Host: "127.0.0.1", Port: clusterPorts[i]}
			for j, p := range clusterPorts {
				if j != i {
					n.opts.Routes = append(n.opts.Routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
				}
			}
		}
		w.nodes = append(w.nodes, n)
	}
	for _, n := range w.nodes {
		n.start(t)
	}
	return w
}

func (n *natsNode) start(t *testing.T) {
	t.Helper()
	srv, err := embedded.NATSWith(&n.opts, n.dir)
	if err != nil {
		t.Fatal(err)
	}
	n.srv = srv
}

func (n *natsNode) stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// urls lists every server, as GEMBATCH_NATS_URL takes them.
func (w *natsWorld) urls() string {
	us := make([]string, len(w.nodes))
	for i, n := range w.nodes {
		us[i] = n.url()
	}
	return strings.Join(us, ",")
}

// restart stops server i and starts it again on the same ports and store after down.
func (w *natsWorld) restart(t *testing.T, i int, down time.Duration) {
	t.Helper()
	w.nodes[i].stop()
	time.Sleep(down)
	w.nodes[i].start(t)
}

func (w *natsWorld) shutdown() {
	for _, n := range w.nodes {
		n.stop()
	}
}

// waitJetStream waits until JetStream answers: at once on one server, once the cluster has
// elected its meta leader on three.
func (w *natsWorld) waitJetStream(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream not available after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
