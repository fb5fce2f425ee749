package benchkit

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills the child if the bench dies without stopping it.
func setDeathSignal(c *exec.Cmd) { c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
