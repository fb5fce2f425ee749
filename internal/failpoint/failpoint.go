// Package failpoint lets the fault tests stop gembatchd at a named step, as a crash or a stall
// would. The environment variable GEMBATCH_FAILPOINT=name[:n][:freeze] arms one step: its n-th
// hit (default the first) SIGKILLs the process, or with ":freeze" SIGSTOPs it, so that the test
// can SIGCONT it later (a GC pause, a frozen VM), and the process goes on from that very step.
// Before acting it writes one JSON line to stderr, so the test knows the step was reached. With
// the variable unset, Hit costs one comparison.
package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// The step boundaries the fault tests stop at, in the order a batch passes them.
const (
	// AfterSealBeforeAck: the sealed batch is recorded, its requests not yet acknowledged.
	AfterSealBeforeAck = "after-seal-before-ack"
	// MidUpload: half of a file batch's input is written to the upload.
	MidUpload = "mid-upload"
	// BeforeCreate: the create intent is recorded, the create not yet sent.
	BeforeCreate = "before-create"
	// AfterCreateBeforeRec: the job exists, the record does not name it yet.
	AfterCreateBeforeRec = "after-create-before-record"
	// WhilePolling: a poll's answer is in hand, not yet acted on.
	WhilePolling = "while-polling"
	// MidReply: half of a batch's replies are published.
	MidReply = "mid-reply"
	// AfterReplyBeforeReplied: every reply is published, the record is not yet marked replied.
	AfterReplyBeforeReplied = "after-reply-before-replied-record"
	// AfterResultObjectBeforeReply: an answer too large for a NATS message is written to the
	// results bucket, the reply naming it not yet published. Only big answers pass it, so it
	// is not in Steps.
	AfterResultObjectBeforeReply = "after-result-object-before-reply"
	// BeforeClean: the record is marked replied, its input file and record not yet removed.
	BeforeClean = "before-clean"
)

// Steps lists the step boundaries every batch passes, in that order.
var Steps = []string{
	AfterSealBeforeAck, MidUpload, BeforeCreate, AfterCreateBeforeRec,
	WhilePolling, MidReply, AfterReplyBeforeReplied, BeforeClean,
}

// Action is what an armed step does to the process.
type Action string

// The actions.
const (
	Kill   Action = "kill"   // SIGKILL: the process ends at once, as in a crash
	Freeze Action = "freeze" // SIGSTOP: the process stands still until SIGCONT
)

// Spec is an armed failpoint.
type Spec struct {
	Name   string
	After  int64 // the hit that acts, from 1
	Action Action
}

// String is the spec as GEMBATCH_FAILPOINT takes it.
func (s Spec) String() string {
	return fmt.Sprintf("%s:%d:%s", s.Name, s.After, s.Action)
}

// Parse reads a GEMBATCH_FAILPOINT value: name[:n][:kill|:freeze], in any order after the name.
func Parse(v string) (Spec, error) {
	parts := strings.Split(v, ":")
	s := Spec{Name: parts[0], After: 1, Action: Kill}
	if s.Name == "" {
		return s, fmt.Errorf("failpoint %q: no step name", v)
	}
	for _, p := range parts[1:] {
		switch a := Action(p); {
		case a == Kill || a == Freeze:
			s.Action = a
		default:
			n, err := strconv.ParseInt(p, 10, 64)
			if err != nil || n < 1 {
				return s, fmt.Errorf("failpoint %q: %q is neither a hit count nor kill or freeze", v, p)
			}
			s.After = n
		}
	}
	return s, nil
}

var (
	armed Spec
	hits  atomic.Int64
)

func init() {
	v := os.Getenv("GEMBATCH_FAILPOINT")
	if v == "" {
		return
	}
	s, err := Parse(v)
	if err != nil { // a test's mistake: say so rather than run a trial that proves nothing
		fmt.Fprintln(os.Stderr, "GEMBATCH_FAILPOINT:", err)
		os.Exit(2)
	}
	armed = s
}

// Hit kills or freezes the process if the named step is armed and this is its n-th hit.
func Hit(name string) {
	if armed.Name == "" || armed.Name != name {
		return
	}
	if hits.Add(1) != armed.After {
		return
	}
	fmt.Fprintf(os.Stderr, "{\"level\":\"warn\",\"failpoint\":%q,\"action\":%q,\"message\":\"failpoint reached\"}\n", name, armed.Action)
	if armed.Action == Freeze {
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP) // returns once the test sends SIGCONT
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// Stopped reports whether process pid is stopped by a signal, for a test that waits for a frozen
// failpoint. It reads /proc/<pid>/stat, so it says false where there is no /proc.
func Stopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'T'
}
