package faulttest_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gembatch/gembatch/emulator"
	"github.com/gembatch/gembatch/internal/clock"
	"github.com/gembatch/gembatch/internal/failpoint"
)

// Steps of a trial that are not failpoints.
const (
	// accumulating: kill -9 while batches are open, before any failpoint.
	accumulating = "accumulating"
	// skewedPair: two replicas from the start, one with its clock 60s off; no failpoint.
	skewedPair = "skewed-pair"
)

// trial is one run of the campaign: requests sent to a fresh world, and one fault.
type trial struct {
	step   string           // a failpoint, or accumulating or skewedPair
	action failpoint.Action // kill: start a successor; freeze: resume it later, a second replica running
	hit    int64            // which hit of the step acts
	skew   time.Duration    // the clock offset of the second replica
	// successor is the instance started after a kill: the same name (a restarted pod of a
	// StatefulSet) or another (a Deployment's new pod), which must take the dead one's work over.
	successor string
	requests  int
}

func (tr trial) String() string {
	s := tr.step
	if tr.action != "" {
		s += fmt.Sprintf(":%d:%s", tr.hit, tr.action)
	}
	if tr.successor != "" {
		s += " then " + tr.successor
	}
	if tr.skew != 0 {
		s += fmt.Sprintf(" skew=%s", tr.skew)
	}
	return fmt.Sprintf("%s requests=%d", s, tr.requests)
}

// combos are the faults a campaign covers: every step boundary with both kinds of fault, a kill
// while batches accumulate, and two replicas with skewed clocks.
func combos() []trial {
	var out []trial
	for _, s := range failpoint.Steps {
		out = append(out, trial{step: s, action: failpoint.Kill}, trial{step: s, action: failpoint.Freeze})
	}
	return append(out, trial{step: accumulating}, trial{step: skewedPair})
}

// plan draws n trials from seed: every combo once in each round (only those named in only, as
// step:action, when it is set), in a shuffled order, with the hit, the skew and the number of
// requests drawn too.
func plan(seed uint64, n int, only []string) []trial {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	all := combos()
	if len(only) > 0 {
		all = slices.DeleteFunc(all, func(tr trial) bool { return !slices.Contains(only, tr.step+":"+string(tr.action)) })
		if len(all) == 0 {
			return nil
		}
	}
	var out []trial
	for len(out) < n {
		round := slices.Clone(all)
		rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
		for _, tr := range round {
			tr.hit = 1 + rng.Int64N(2)
			if tr.step == failpoint.MidUpload {
				tr.hit = 1 // only the pro model's batches go by file: maybe one
			}
			tr.requests = 40 + 2*rng.IntN(21) // 40 to 80, even: both models get requests
			tr.successor = []string{"a", "b"}[rng.IntN(2)]
			switch {
			case tr.step == skewedPair:
				tr.skew = []time.Duration{-time.Minute, time.Minute}[rng.IntN(2)]
				tr.successor = ""
			case tr.action == failpoint.Freeze:
				tr.skew = []time.Duration{-time.Minute, 0, time.Minute}[rng.IntN(3)]
				tr.successor = ""
			}
			out = append(out, tr)
		}
	}
	return out[:n]
}

// envInt reads a positive integer setting, or gives def.
func envInt(name string, def uint64) uint64 {
	if v, err := strconv.ParseUint(os.Getenv(name), 10, 64); err == nil && v > 0 {
		return v
	}
	return def
}

// TestFaultCampaign runs seeded trials, each a fresh world with one fault at a step boundary:
// gembatchd killed there and succeeded (by itself or another instance), or frozen there past its
// lease and the create grace while a second replica (its clock perhaps 60s off) takes over,
// then resumed. Each trial measures the replies (every delivery), what the emulator billed per
// request across all jobs, the jobs created per displayName and the tokens gembatchd counted;
// the campaign prints the sums on one line and fails on any loss, double billing, request
// answered two ways, token count unlike the billing, or (after a kill) job created twice.
//
// GEMBATCH_FAULT_TRIALS sets the number of trials (default two rounds of every combo, 36);
// GEMBATCH_FAULT_SEED replays a campaign; GEMBATCH_FAULT_ONLY=step:action[,...] (a step
// without action: "accumulating:", "skewed-pair:") runs only those combos, to hunt one breach.
func TestFaultCampaign(t *testing.T) {
	seed := envInt("GEMBATCH_FAULT_SEED", uint64(time.Now().UnixNano()))
	n := int(envInt("GEMBATCH_FAULT_TRIALS", uint64(2*len(combos()))))
	var only []string
	if v := os.Getenv("GEMBATCH_FAULT_ONLY"); v != "" {
		only = strings.Split(v, ",")
	}
	trials := plan(seed, n, only)
	if len(trials) == 0 {
		t.Fatalf("GEMBATCH_FAULT_ONLY=%s names no combo; they are step:action, e.g. %s:%s", os.Getenv("GEMBATCH_FAULT_ONLY"), failpoint.MidReply, failpoint.Kill)
	}
	t.Logf("fault campaign: seed %d (GEMBATCH_FAULT_SEED=%d replays it), %d trials", seed, seed, n)
	var (
		mu       sync.Mutex
		sum      figures
		breached = map[string]int{} // trials with a breach, by step and action
		failed   int                // trials with a breach
	)
	t.Run("trials", func(t *testing.T) {
		for i, tr := range trials {
			t.Run(fmt.Sprintf("%03d-%s-%s", i, tr.step, tr.action), func(t *testing.T) {
				t.Parallel()
				f, breaches := runTrial(t, tr)
				mu.Lock()
				defer mu.Unlock()
				sum.add(f)
				if len(breaches) > 0 {
					breached[tr.step+":"+string(tr.action)]++
					failed++
					t.Errorf("%s (seed %d): %s", tr, seed, strings.Join(breaches, "; "))
				}
			})
		}
	})
	var where []string
	for k, c := range breached {
		where = append(where, fmt.Sprintf("%s=%d", k, c))
	}
	slices.Sort(where)
	report(t, fmt.Sprintf("fault campaign seed=%d %s breached_trials=%d %s", seed, sum, failed, strings.Join(where, ",")))
}

// runTrial runs one trial in a fresh world and returns its figures and breaches.
func runTrial(t *testing.T, tr trial) (figures, []string) {
	w := newWorld(t, emulator.Faults{})
	if err := inject(w, tr); err != nil {
		return figures{trials: 1}, []string{err.Error()}
	}
	w.answered(30 * time.Second) // the figures say how many were not
	var problems []string
	// Every reply can be out while a record still waits for its successor (a kill between the
	// last reply and the replied record): its tokens are counted when the successor, once it
	// judges the lease dead, finishes it. What a resumed replica still does (a create, a
	// reply) is measured too.
	if live := w.settled(30 * time.Second); len(live) > 0 {
		problems = append(problems, fmt.Sprintf("records never finished: %v", live))
	}
	time.Sleep(time.Second)
	for _, d := range w.daemons {
		if d.running() {
			if err := d.finish(); err != nil {
				problems = append(problems, "unclean stop: "+err.Error())
			}
		}
	}
	f := w.measure()
	breaches := f.breaches(tr.action != failpoint.Freeze)
	if v := os.Getenv("GEMBATCH_FAULT_LOGS"); v == "all" || v != "" && len(breaches) > 0 {
		t.Log(w.logs())
	}
	return f, append(breaches, problems...)
}

// inject sends the trial's requests and applies its fault, leaving the world to answer them.
func inject(w *world, tr trial) error {
	skewed := clock.OffsetEnv + "=" + tr.skew.String()
	switch {
	case tr.step == accumulating:
		w.start("a")
		w.send(tr.requests, "r")
		time.Sleep(100 * time.Millisecond)
		w.daemons[0].kill()
		w.start(tr.successor)
	case tr.step == skewedPair:
		w.start("a")
		w.start("b", skewed)
		w.send(tr.requests, "r")
	default:
		spec := failpoint.Spec{Name: tr.step, After: tr.hit, Action: tr.action}
		a := w.start("a", "GEMBATCH_FAILPOINT="+spec.String())
		w.send(tr.requests, "r")
		if tr.action == failpoint.Kill {
			if !a.died(20 * time.Second) {
				return fmt.Errorf("failpoint never reached\n%s", w.logs())
			}
			w.start(tr.successor)
			return nil
		}
		if !a.frozen(20 * time.Second) {
			return fmt.Errorf("failpoint never reached\n%s", w.logs())
		}
		w.start("b", skewed)
		// Long enough for b to take over however it judges a lease dead: b first sees a's lease
		// at its start, may wait a whole TTL on its own clock from then, and then the create
		// grace from its own first sighting of a record.
		time.Sleep(2*leaseTTL + createGrace + time.Second)
		return a.cmd.Process.Signal(syscall.SIGCONT)
	}
	return nil
}

// TestPlanCoversEveryStep: the default campaign has at least 30 trials, each round of a plan
// holds every step boundary with both kinds of fault, and a seed gives the same plan again.
func TestPlanCoversEveryStep(t *testing.T) {
	n := 2 * len(combos())
	if n < 30 {
		t.Fatalf("the default campaign has %d trials, fewer than 30", n)
	}
	p := plan(7, n, nil)
	for round := range 2 {
		seen := map[string]bool{}
		for _, tr := range p[round*len(combos()) : (round+1)*len(combos())] {
			seen[tr.step+":"+string(tr.action)] = true
		}
		for _, s := range failpoint.Steps {
			for _, a := range []failpoint.Action{failpoint.Kill, failpoint.Freeze} {
				if !seen[s+":"+string(a)] {
					t.Errorf("round %d has no %s:%s", round, s, a)
				}
			}
		}
		if !seen[accumulating+":"] || !seen[skewedPair+":"] {
			t.Errorf("round %d lacks the kill while accumulating or the skewed pair", round)
		}
	}
	if !slices.Equal(p, plan(7, n, nil)) || slices.Equal(p, plan(8, n, nil)) {
		t.Error("a seed does not give one plan")
	}
	only := plan(7, 5, []string{failpoint.MidReply + ":" + string(failpoint.Kill)})
	if len(only) != 5 || slices.ContainsFunc(only, func(tr trial) bool { return tr.step != failpoint.MidReply || tr.action != failpoint.Kill }) {
		t.Errorf("a plan of only mid-reply kills: %v", only)
	}
	if plan(7, 5, []string{"no-such-step:kill"}) != nil {
		t.Error("a plan of no combo is not empty")
	}
}
