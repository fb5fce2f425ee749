package failpoint_test

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gembatch/gembatch/internal/failpoint"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want failpoint.Spec
		bad  bool
	}{
		{in: "mid-reply", want: failpoint.Spec{Name: "mid-reply", After: 1, Action: failpoint.Kill}},
		{in: "mid-reply:3", want: failpoint.Spec{Name: "mid-reply", After: 3, Action: failpoint.Kill}},
		{in: "mid-reply:freeze", want: failpoint.Spec{Name: "mid-reply", After: 1, Action: failpoint.Freeze}},
		{in: "mid-reply:2:freeze", want: failpoint.Spec{Name: "mid-reply", After: 2, Action: failpoint.Freeze}},
		{in: "mid-reply:kill:4", want: failpoint.Spec{Name: "mid-reply", After: 4, Action: failpoint.Kill}},
		{in: "", bad: true},
		{in: ":2", bad: true},
		{in: "mid-reply:0", bad: true},
		{in: "mid-reply:pause", bad: true},
	} {
		got, err := failpoint.Parse(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("Parse(%q) error %v, want error %v", tc.in, err, tc.bad)
			continue
		}
		if !tc.bad && got != tc.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if !tc.bad {
			if again, err := failpoint.Parse(got.String()); err != nil || again != got {
				t.Errorf("Parse(%q.String()) = %+v, %v", tc.in, again, err)
			}
		}
	}
}

// The child mode: hit the armed step three times, saying so after each hit.
func TestMain(m *testing.M) {
	if os.Getenv("FAILPOINT_CHILD") != "" {
		for i := 1; i <= 3; i++ {
			failpoint.Hit(failpoint.MidReply)
			println("passed", i)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child runs this test binary as a process that hits mid-reply three times under spec.
func child(t *testing.T, spec string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1", "GEMBATCH_FAILPOINT="+spec)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, bufio.NewScanner(stderr)
}

func TestKillAtTheNthHit(t *testing.T) {
	cmd, out := child(t, failpoint.MidReply+":2")
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	err := cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL", err)
	}
	if len(lines) != 2 || lines[0] != "passed 1" || !strings.Contains(lines[1], `"failpoint":"mid-reply","action":"kill"`) {
		t.Fatalf("child said %q", lines)
	}
}

func TestFreezeStopsUntilContinued(t *testing.T) {
	cmd, out := child(t, failpoint.MidReply+":freeze")
	if !out.Scan() || !strings.Contains(out.Text(), `"action":"freeze"`) {
		t.Fatalf("no failpoint line: %q", out.Text())
	}
	if !stopped(cmd.Process.Pid, 10*time.Second) {
		t.Fatal("the child did not stop")
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for out.Scan() {
		lines = append(lines, out.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child ended with %v after SIGCONT", err)
	}
	if strings.Join(lines, ",") != "passed 1,passed 2,passed 3" {
		t.Fatalf("after SIGCONT the child said %q", lines)
	}
}

// stopped waits until /proc says the process is stopped (state T).
func stopped(pid int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if failpoint.Stopped(pid) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}
