package vaulttest

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Template is one Vault Agent template.
type Template struct {
	Contents    string // consul-template text, e.g. {{ with secret "biot/creds" }}{{ .Data.access_token }}{{ end }}
	Destination string // file to render to
}

// AgentOptions configures StartAgent.
type AgentOptions struct {
	Token     string     // token for auto_auth's token_file method; default the server's Token
	Templates []Template // at least one
	ExtraHCL  string     // appended to the generated config
}

// Agent is a running "vault agent" process.
type Agent struct {
	*Process
	ConfigPath string
}

// StartAgent starts "vault agent" against v, authenticating with the
// token_file auto-auth method and rendering opts.Templates. It is stopped at
// cleanup; when the test fails the tail of its log is printed.
func (v *Vault) StartAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	if len(opts.Templates) == 0 {
		t.Fatal("vaulttest: StartAgent needs a template")
	}
	dir := t.TempDir()
	token := opts.Token
	if token == "" {
		token = v.Token
	}
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, token+"\n")

	var b strings.Builder
	fmt.Fprintf(&b, "pid_file = %s\n", strconv.Quote(filepath.Join(dir, "agent.pid")))
	fmt.Fprintf(&b, "exit_after_auth = false\n")
	fmt.Fprintf(&b, "vault {\n  address = %s\n}\n", strconv.Quote(v.Addr))
	fmt.Fprintf(&b, "auto_auth {\n  method \"token_file\" {\n    config = {\n      token_file_path = %s\n    }\n  }\n}\n", strconv.Quote(tokenFile))
	for _, tp := range opts.Templates {
		fmt.Fprintf(&b, "template {\n  contents    = %s\n  destination = %s\n}\n", strconv.Quote(tp.Contents), strconv.Quote(tp.Destination))
	}
	b.WriteString(opts.ExtraHCL)
	cfgPath := filepath.Join(dir, "agent.hcl")
	writeFile(t, cfgPath, b.String())

	logPath := filepath.Join(dir, "agent.log")
	p, err := startProcess("vault agent", logPath, v.bin, []string{"agent", "-config=" + cfgPath}, v.processEnv(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(stopTimeout); err != nil {
			t.Errorf("stopping vault agent: %v", err)
		}
		if t.Failed() {
			t.Logf("vault agent config %s:\n%s\nvault agent log, last %d lines of %s:\n%s", cfgPath, b.String(), tailLines, logPath, tailFile(logPath, tailLines))
		}
	})
	return &Agent{Process: p, ConfigPath: cfgPath}
}
