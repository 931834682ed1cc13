package vaulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

const (
	// DevRootToken is the root token of a dev server.
	DevRootToken = "root"

	startTimeout = 90 * time.Second // a loaded 2-core machine can be slow
	stopTimeout  = 30 * time.Second
	cliTimeout   = 2 * time.Minute
	tailLines    = 120
)

// Vault is a Vault server process started by StartDev or StartServer.
type Vault struct {
	Addr    string      // http://127.0.0.1:<port>
	Port    int         // API port; Port+1 is the cluster port
	Token   string      // root token (dev: DevRootToken; else set by Init)
	Client  *api.Client // talks to Addr with Token
	Dir     string      // working directory: config, storage, log
	LogPath string
	Plugin  *Plugin

	// UnsealKey is the single unseal key, set by Init (not for dev servers).
	UnsealKey string

	bin  string
	dev  bool
	args []string
	home string
	proc *Process
}

// StartDev starts "vault server -dev" with the plugin's directory as its
// plugin_directory (from a config file, so that, unlike -dev-plugin-dir,
// nothing is registered until the test registers it), listening on a free
// loopback port with root token DevRootToken. It is stopped at cleanup.
func (e *Env) StartDev(t testing.TB) *Vault {
	t.Helper()
	v := e.newVault(t, true)
	cfg := fmt.Sprintf("plugin_directory = %s\n", strconv.Quote(e.Plugin.Dir))
	writeFile(t, filepath.Join(v.Dir, "vault.hcl"), cfg)
	v.startFresh(t, func(port int) []string {
		return append([]string{"server", "-dev",
			"-config=" + filepath.Join(v.Dir, "vault.hcl"),
			"-dev-root-token-id=" + DevRootToken,
			"-dev-listen-address=127.0.0.1:" + strconv.Itoa(port),
			"-dev-no-store-token",
		}, logLevelArgs()...)
	})
	v.SetToken(DevRootToken)
	return v
}

// StartDevWithPlugin is StartDev, then Register, then Enable at mount.
func (e *Env) StartDevWithPlugin(t testing.TB, mount string) *Vault {
	t.Helper()
	v := e.StartDev(t)
	v.Register(t)
	v.Enable(t, mount)
	return v
}

// StartServer starts a non-dev Vault server with file storage under its
// directory, a plain-HTTP loopback listener and the plugin's directory as
// plugin_directory. It is left uninitialised: call Init and Unseal. Stop and
// Start (or Restart) keep the storage and the port. It is stopped at cleanup.
func (e *Env) StartServer(t testing.TB) *Vault {
	t.Helper()
	v := e.newVault(t, false)
	v.startFresh(t, func(port int) []string {
		cfg := fmt.Sprintf(`storage "file" {
  path = %s
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr         = "http://127.0.0.1:%d"
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %s
disable_mlock    = true
ui               = false
`, strconv.Quote(filepath.Join(v.Dir, "data")), port, port+1, port, port+1, strconv.Quote(e.Plugin.Dir))
		writeFile(t, filepath.Join(v.Dir, "vault.hcl"), cfg)
		return append([]string{"server", "-config=" + filepath.Join(v.Dir, "vault.hcl")}, logLevelArgs()...)
	})
	return v
}

func (e *Env) newVault(t testing.TB, dev bool) *Vault {
	t.Helper()
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	v := &Vault{Dir: dir, LogPath: filepath.Join(dir, "vault.log"), Plugin: e.Plugin, bin: e.VaultBin, dev: dev, home: home}
	t.Cleanup(func() {
		if v.proc != nil {
			if err := v.proc.Stop(stopTimeout); err != nil {
				t.Errorf("stopping vault: %v", err)
			}
		}
		if problem := logProblem(v.LogPath); problem != "" {
			t.Errorf("the vault server log shows %s", problem)
		}
		if t.Failed() {
			t.Logf("vault server log, last %d lines of %s:\n%s", tailLines, v.LogPath, tailFile(v.LogPath, tailLines))
		}
	})
	return v
}

// startFresh picks ports and starts the server, trying new ports if the
// chosen ones were taken before Vault could bind them.
func (v *Vault) startFresh(t testing.TB, argsFor func(port int) []string) {
	t.Helper()
	var err error
	for range 3 {
		var port int
		if port, err = FreePortPair(); err != nil {
			t.Fatal(err)
		}
		v.Port = port
		v.Addr = "http://127.0.0.1:" + strconv.Itoa(port)
		v.args = argsFor(port)
		v.Client = v.NewClient("")
		if err = v.start(); !errors.Is(err, errPortInUse) {
			break
		}
		t.Logf("port %d or %d was taken meanwhile; trying others", port, port+1)
	}
	if err != nil {
		t.Fatalf("%v\nvault log, last %d lines:\n%s", err, tailLines, tailFile(v.LogPath, tailLines))
	}
}

// start runs the server with v.args and waits until it answers (dev: until
// it is active).
func (v *Vault) start() error {
	began := time.Now()
	p, err := startProcess("vault", v.LogPath, v.bin, v.args, v.processEnv(), v.Dir)
	if err != nil {
		return err
	}
	v.proc = p
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		if p.Exited() {
			if strings.Contains(p.Log(), "address already in use") {
				return fmt.Errorf("vault exited at start: %w", errPortInUse)
			}
			return fmt.Errorf("vault exited at start (%v)", p.ExitErr())
		}
		hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
		h, err := v.Client.Sys().HealthWithContext(hctx)
		hcancel()
		if err == nil && (!v.dev || (h.Initialized && !h.Sealed && !h.Standby)) {
			return nil
		}
		select {
		case <-ctx.Done():
			_ = p.Stop(stopTimeout)
			return fmt.Errorf("vault did not answer on %s within %s (last error: %v)", v.Addr, time.Since(began).Round(time.Second), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// processEnv is the environment of the server and CLI processes: the test's
// own without VAULT_* variables (VAULT_LOG_LEVEL excepted), with a private HOME.
func (v *Vault) processEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "VAULT_LOG_LEVEL=") {
			continue
		}
		if strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+v.home)
}

// NewClient returns an API client for this server with token (none if empty).
// It does not retry, so tests see Vault's answers as they are.
func (v *Vault) NewClient(token string) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 90 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		panic("vaulttest: " + err.Error()) // only for an invalid address
	}
	c.ClearNamespace()
	if token == "" {
		c.ClearToken()
	} else {
		c.SetToken(token)
	}
	return c
}

// SetToken sets the token v.Client and the CLI use.
func (v *Vault) SetToken(token string) {
	v.Token = token
	v.Client.SetToken(token)
}

// Process is the running server process (nil once stopped).
func (v *Vault) Process() *Process { return v.proc }

// Stop stops the server (SIGTERM, then SIGKILL after 30s) and waits for it.
func (v *Vault) Stop(t testing.TB) {
	t.Helper()
	if v.proc == nil {
		return
	}
	p := v.proc
	v.proc = nil
	if err := p.Stop(stopTimeout); err != nil {
		t.Errorf("stopping vault: %v", err)
	}
}

// Start starts a stopped server again with the same configuration, storage
// and port. A non-dev server comes back sealed: call Unseal.
func (v *Vault) Start(t testing.TB) {
	t.Helper()
	if v.proc != nil && !v.proc.Exited() {
		t.Fatal("vaulttest: Start on a running server")
	}
	var err error
	for range 5 { // the port can take a moment to be free again
		if err = v.start(); !errors.Is(err, errPortInUse) {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("restarting vault: %v\nvault log, last %d lines:\n%s", err, tailLines, tailFile(v.LogPath, tailLines))
	}
}

// Restart is Stop then Start.
func (v *Vault) Restart(t testing.TB) {
	t.Helper()
	v.Stop(t)
	v.Start(t)
}

// Init initialises a non-dev server with one key share (threshold one), and
// keeps the unseal key and root token.
func (v *Vault) Init(t testing.TB) {
	t.Helper()
	resp, err := v.Client.Sys().InitWithContext(ctx(t), &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vault operator init: %v", err)
	}
	if len(resp.Keys) != 1 || resp.RootToken == "" {
		t.Fatalf("vault operator init: got %d keys, root token %t", len(resp.Keys), resp.RootToken != "")
	}
	v.UnsealKey = resp.Keys[0]
	v.SetToken(resp.RootToken)
}

// Unseal unseals with the key from Init and waits until the server is active.
func (v *Vault) Unseal(t testing.TB) {
	t.Helper()
	st, err := v.Client.Sys().UnsealWithContext(ctx(t), v.UnsealKey)
	if err != nil {
		t.Fatalf("vault operator unseal: %v", err)
	}
	if st.Sealed {
		t.Fatalf("vault operator unseal: still sealed (%d/%d)", st.Progress, st.T)
	}
	v.WaitActive(t)
}

// WaitActive waits (up to 60s) until the server is initialised, unsealed and
// active.
func (v *Vault) WaitActive(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		h, err := v.Client.Sys().HealthWithContext(ctx(t))
		if err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vault not active within 60s: health %+v, error %v", h, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Register registers the plugin in the catalog as a secrets engine, with its
// sha256 and version.
func (v *Vault) Register(t testing.TB) {
	t.Helper()
	p := v.Plugin
	err := v.Client.Sys().RegisterPluginWithContext(ctx(t), &api.RegisterPluginInput{
		Name:    p.Name,
		Type:    api.PluginTypeSecrets,
		Command: p.Command,
		SHA256:  p.SHA256,
		Version: p.Version,
	})
	if err != nil {
		t.Fatalf("registering the plugin: %v", err)
	}
}

// Enable mounts the registered plugin version at path.
func (v *Vault) Enable(t testing.TB, path string) {
	t.Helper()
	err := v.Client.Sys().MountWithContext(ctx(t), path, &api.MountInput{
		Type:        v.Plugin.Name,
		Description: "BioT access tokens",
		Config:      api.MountConfigInput{PluginVersion: v.Plugin.Version},
	})
	if err != nil {
		t.Fatalf("enabling the plugin at %s: %v", path, err)
	}
}

// WriteConfig writes data to <mount>/config and fails the test on error.
func (v *Vault) WriteConfig(t testing.TB, mount string, data map[string]any) {
	t.Helper()
	if _, err := v.Client.Logical().WriteWithContext(ctx(t), mount+"/config", data); err != nil {
		t.Fatalf("writing %s/config: %v", mount, err)
	}
}

// ReadCreds reads <mount>/creds and fails the test on error or no answer.
func (v *Vault) ReadCreds(t testing.TB, mount string) *api.Secret {
	t.Helper()
	s, err := v.Client.Logical().ReadWithContext(ctx(t), mount+"/creds")
	if err != nil {
		t.Fatalf("reading %s/creds: %v", mount, err)
	}
	if s == nil {
		t.Fatalf("reading %s/creds: no answer", mount)
	}
	return s
}

// CLI runs the vault CLI against this server with its token; it returns
// stdout, and an error with stderr when the command fails.
func (v *Vault) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(c, v.bin, args...)
	cmd.Env = append(v.processEnv(), "VAULT_ADDR="+v.Addr, "VAULT_TOKEN="+v.Token)
	cmd.Dir = v.Dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("vault %s: %v\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustCLI is CLI failing the test on error.
func (v *Vault) MustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := v.CLI(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctx is a request context that ends after a minute (or at test cleanup).
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// raceMode reports whether the plugin is built with the race detector.
func raceMode() bool { return os.Getenv("BIOT_E2E_RACE") == "1" }

// logLevelArgs raises Vault's log level to debug in race mode: Vault logs a
// plugin's plain stderr lines, such as a race report, at debug level.
func logLevelArgs() []string {
	if raceMode() {
		return []string{"-log-level=debug"}
	}
	return nil
}

// logProblem returns what in a Vault log shows the plugin misbehaved: a
// race report, a panic or fatal error, or the race detector's exit status;
// "" if none.
func logProblem(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, p := range []struct{ needle, what string }{
		{"WARNING: DATA RACE", "a data race (WARNING: DATA RACE)"},
		{"exit status 66", "a process ending with the race detector's exit status 66"},
		{"panic: ", "a panic"},
		{"fatal error: ", "a Go fatal error"},
	} {
		if i := bytes.Index(b, []byte(p.needle)); i >= 0 {
			start := max(0, bytes.LastIndexByte(b[:i], '\n')+1)
			end := bytes.IndexByte(b[i:], '\n')
			if end < 0 {
				end = len(b) - i
			}
			return p.what + ": " + string(b[start:i+end])
		}
	}
	return ""
}
