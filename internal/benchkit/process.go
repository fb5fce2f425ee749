package benchkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gembatch/gembatch/daemon"
)

// process is gembatchd running as a process of its own, configured by environment.
type process struct {
	cmd     *exec.Cmd
	metrics string // URL of its /metrics
	exited  chan error
}

// startProcess runs Options.Gembatchd with cfg in its environment and waits until it logs that
// it is ready. Its error lines go to the progress writer.
func (e *env) startProcess(ctx context.Context, cfg daemon.Config) (*process, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cfg.MetricsAddr = ln.Addr().String()
	ln.Close()
	cfg.LogLevel, cfg.LogFormat = "info", "json"
	cmd := e.opts.Gembatchd()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	for k, v := range cfg.Effective() {
		if v != "" && v != "map[]" { // unset, or an empty token budget
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	setDeathSignal(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gembatchd: %w", err)
	}
	p := &process{cmd: cmd, metrics: "http://" + cfg.MetricsAddr + "/metrics", exited: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		p.watchLog(stderr, ready, e.opts.Progress)
		p.exited <- cmd.Wait()
	}()
	select {
	case <-ready:
		return p, nil
	case err := <-p.exited:
		p.exited <- err
		return nil, fmt.Errorf("gembatchd exited before it was ready: %v", err)
	case <-ctx.Done():
		_ = p.stop()
		return nil, ctx.Err()
	case <-time.After(time.Minute):
		_ = p.stop()
		return nil, errors.New("gembatchd not ready after a minute")
	}
}

// watchLog reads the process's JSON log until it ends: it closes ready at "gembatchd ready" and
// passes error lines on.
func (p *process) watchLog(r io.Reader, ready chan struct{}, out io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if ready != nil && strings.Contains(line, `"gembatchd ready"`) {
			close(ready)
			ready = nil
		}
		if out != nil && strings.Contains(line, `"level":"error"`) {
			fmt.Fprintf(out, "bench: gembatchd process: %s\n", line)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

func (p *process) pid() string { return strconv.Itoa(p.cmd.Process.Pid) }

// stop sends SIGTERM and waits for the process to exit; it kills it after 30 seconds.
func (p *process) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		return err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("gembatchd did not stop within 30s of SIGTERM; killed")
	}
}

// metric sums the samples of a metric on the process's /metrics whose labels include every one
// given (as `name="value"`); an unreadable endpoint reads 0.
func (p *process) metric(name string, labels ...string) float64 {
	resp, err := http.Get(p.metrics)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		matched := true
		for _, l := range labels {
			matched = matched && strings.Contains(rest, l)
		}
		if i := strings.LastIndexByte(rest, ' '); matched && i >= 0 {
			v, _ := strconv.ParseFloat(rest[i+1:], 64)
			sum += v
		}
	}
	return sum
}
