package faulttest_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// TestNATSClusterNodeLoss runs two replicas against a three-node NATS cluster, the stream and
// buckets at three replicas, and shuts one node down mid-run, then starts it again: nothing is
// lost, billed twice or created twice. The node is drawn from GEMBATCH_FAULT_SEED (printed); the
// first node, which the ledger listens on, is never the one. One trial, or one in ten of
// GEMBATCH_FAULT_TRIALS in the long mode.
func TestNATSClusterNodeLoss(t *testing.T) {
	seed := envInt("GEMBATCH_FAULT_SEED", uint64(time.Now().UnixNano()))
	n := max(1, int(envInt("GEMBATCH_FAULT_TRIALS", 0))/10)
	rng := rand.New(rand.NewPCG(seed, 1))
	var sum figures
	for i := range n {
		node := 1 + rng.IntN(2)
		t.Run(fmt.Sprintf("%02d-node%d", i, node), func(t *testing.T) {
			w := newWorldWith(t, worldOptions{jobDelay: 300 * time.Millisecond, cluster: true})
			a := w.start("a")
			b := w.start("b")
			w.send(60, "before")
			w.checkReplicas(3)
			time.Sleep(200 * time.Millisecond)
			w.nats.restart(t, node, time.Second)
			w.send(60, "after")
			w.waitAnswered(90 * time.Second)
			a.stop(t)
			b.stop(t)
			f := w.measure()
			sum.add(f)
			if br := f.breaches(true); len(br) > 0 {
				t.Errorf("node %d shut down (seed %d): %v", node, seed, br)
				if os.Getenv("GEMBATCH_FAULT_LOGS") != "" {
					t.Logf("requests the stream holds twice: %v; consumer: %s\n%s", w.streamCopies(), w.consumerState(), w.logs())
				}
			}
		})
	}
	report(t, fmt.Sprintf("nats cluster node loss: seed=%d %s", seed, sum))
}

// checkReplicas fails the test unless every stream (requests, and the buckets' streams) has n
// replicas, all current.
func (w *world) checkReplicas(n int) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	streams := 0
	for info := range w.js.ListStreams(ctx).Info() {
		streams++
		if info.Config.Replicas != n || info.Cluster == nil || len(info.Cluster.Replicas) != n-1 {
			w.t.Fatalf("stream %s: %d replicas configured, cluster %+v; want %d", info.Config.Name, info.Config.Replicas, info.Cluster, n)
		}
	}
	if streams < 3 { // the requests, the records, the ledger at least
		w.t.Fatalf("%d streams", streams)
	}
}
