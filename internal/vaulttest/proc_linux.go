package vaulttest

import (
	"os/exec"
	"syscall"
)

// setProcAttr puts the child in its own process group (so Stop can sweep the
// plugin processes Vault starts) and has the kernel send it SIGTERM if the
// test binary dies without cleaning up (a test timeout, say): Vault then
// shuts down and stops its plugins, which a SIGKILL would orphan.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalGroup sends sig to the child's process group.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
}
