// Package failpoint lets the crash tests kill gembatchd at a named step. The environment variable
// GEMBATCH_FAILPOINT=name[:n] makes the n-th hit (default the first) of that step SIGKILL the
// process, as a crash would; with the variable unset, Hit costs one comparison.
package failpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// The steps the crash tests kill at.
const (
	AfterSealBeforeAck   = "after-seal-before-ack"
	BeforeCreate         = "before-create"
	MidUpload            = "mid-upload"
	AfterCreateBeforeRec = "after-create-before-record"
	WhilePolling         = "while-polling"
	MidReply             = "mid-reply"
	BeforeClean          = "before-clean"
)

var (
	armed string
	after int64 = 1
	hits  atomic.Int64
)

func init() {
	spec := os.Getenv("GEMBATCH_FAILPOINT")
	name, n, found := strings.Cut(spec, ":")
	armed = name
	if found {
		if v, err := strconv.ParseInt(n, 10, 64); err == nil && v > 0 {
			after = v
		}
	}
}

// Hit kills the process if the named step is armed and this is its n-th hit.
func Hit(name string) {
	if armed == "" || armed != name {
		return
	}
	if hits.Add(1) == after {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
