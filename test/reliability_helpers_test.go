//go:build linux

package e2e

// Helpers for the reliability tests (TestReliability*): figure lines, read
// loops, the plugin's process (pid, goroutines, file descriptors) and a Vault
// dev server started with extra flags.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// figure is one line of the reliability report. Every test prints its
// figures as
//
//	RELIABILITY <name> attempted=N ok=N failed=N logins=N refreshes=N key=value...
//
// so that "make reliability" can show them at a glance. logins and
// refreshes count upstream calls (user and service logins; refreshes), made
// whatever BioT answered.
type figure struct {
	name                  string
	attempted, ok, failed int64
	logins, refreshes     int64
	extra                 string
}

func (f figure) print(t testing.TB) {
	t.Helper()
	line := fmt.Sprintf("RELIABILITY %-34s attempted=%d ok=%d failed=%d logins=%d refreshes=%d %s",
		f.name, f.attempted, f.ok, f.failed, f.logins, f.refreshes, strings.TrimSpace(f.extra))
	line = strings.TrimRight(line, " ")
	fmt.Println(line)
	t.Log(line)
}

// upstream returns the login calls (user and service) and refresh calls BioT
// has seen.
func upstream(fake *biotfake.Server) (logins, refreshes int64) {
	return fake.Calls(biotfake.EndpointLogin) + fake.Calls(biotfake.EndpointServiceLogin), fake.Calls(biotfake.EndpointRefresh)
}

// readStats counts creds reads.
type readStats struct {
	attempted, ok, failed atomic.Int64
	maxOK, maxFailed      atomic.Int64 // longest read, in nanoseconds

	mu   sync.Mutex
	errs []string // the first few distinct error texts
}

func (s *readStats) record(err error, d time.Duration) {
	s.attempted.Add(1)
	max := &s.maxOK
	if err != nil {
		s.failed.Add(1)
		max = &s.maxFailed
		s.mu.Lock()
		msg := err.Error()
		seen := false
		for _, e := range s.errs {
			seen = seen || e == msg
		}
		if !seen && len(s.errs) < 5 {
			s.errs = append(s.errs, msg)
		}
		s.mu.Unlock()
	} else {
		s.ok.Add(1)
	}
	for {
		cur := max.Load()
		if int64(d) <= cur || max.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (s *readStats) errors() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.errs...)
}

func (s *readStats) figure(name string, fake *biotfake.Server, extra string) figure {
	f := figure{name: name, attempted: s.attempted.Load(), ok: s.ok.Load(), failed: s.failed.Load(), extra: extra}
	if fake != nil {
		f.logins, f.refreshes = upstream(fake)
	}
	return f
}

// readCreds reads <mount>/creds once, bounded by a minute, and checks that a
// success carries an access token.
func readCreds(c *api.Client, mount string) (*api.Secret, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	s, err := c.Logical().ReadWithContext(ctx, mount+"/creds")
	d := time.Since(start)
	if err == nil {
		if s == nil || s.Data == nil {
			err = errors.New("creds read answered no data")
		} else if tok, _ := s.Data["access_token"].(string); tok == "" {
			err = errors.New("creds read answered no access_token")
		}
	}
	return s, d, err
}

// readLoop runs readers goroutines reading <mount>/creds, each pausing pause
// between reads, until ctx ends. check (may be nil) sees every result; it
// runs concurrently. It returns when every reader has stopped.
func readLoop(ctx context.Context, c *api.Client, mount string, readers int, pause time.Duration, check func(s *api.Secret, d time.Duration, err error)) {
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for ctx.Err() == nil {
				s, d, err := readCreds(c, mount)
				if check != nil {
					check(s, d, err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		})
	}
	wg.Wait()
}

// apiClient is a client for v with the root token that keeps up to conns
// connections open, does not retry, and waits at most timeout per request.
func apiClient(t testing.TB, v *vaulttest.Vault, conns int, timeout time.Duration) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		t.Fatal(cfg.Error)
	}
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = timeout
	tr := cfg.HttpClient.Transport.(*http.Transport)
	tr.MaxIdleConns = conns
	tr.MaxIdleConnsPerHost = conns
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.ClearNamespace()
	c.SetToken(v.Token)
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

// enableWithConfig enables the plugin at mount and writes cfg to its config.
func enableWithConfig(t testing.TB, v *vaulttest.Vault, mount string, cfg map[string]any) {
	t.Helper()
	v.Enable(t, mount)
	v.WriteConfig(t, mount, cfg)
}

// with returns a copy of m with the pairs kv (key, value, key, value...) set.
func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m)+len(kv)/2)
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// waitUntil polls cond every 100ms until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---- the plugin process ----

// pluginPIDs returns the pids of the plugin processes that are children of
// the process vaultPID.
func pluginPIDs(vaultPID int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppidOf(pid) != vaultPID {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte(vaulttest.PluginName)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ppidOf is the parent pid of pid, or -1.
func ppidOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return -1
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return ppid
}

// pluginPID waits (up to 30s) for exactly one plugin process under vaultPID
// and returns it.
func pluginPID(t testing.TB, vaultPID int) int {
	t.Helper()
	var pids []int
	if !waitUntil(30*time.Second, func() bool { pids = pluginPIDs(vaultPID); return len(pids) == 1 }) {
		t.Fatalf("want one plugin process under vault (pid %d), found %v", vaultPID, pids)
	}
	return pids[0]
}

// fdCount is the number of open file descriptors of pid.
func fdCount(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("counting file descriptors of pid %d: %v", pid, err)
	}
	return len(ents)
}

// goroutineCount reads the plugin's goroutine total from its pprof listener.
func goroutineCount(t testing.TB, pprofAddr string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pprofAddr+"/debug/pprof/goroutine?debug=1", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("reading the plugin's goroutine profile: %v", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil && err != io.EOF {
		t.Fatalf("reading the plugin's goroutine profile: %v", err)
	}
	var n int
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		t.Fatalf("goroutine profile starts %q, want \"goroutine profile: total N\"", line)
	}
	return n
}

// freePort is a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// registerWithEnv registers the plugin like v.Register, with extra
// environment variables for the plugin process.
func registerWithEnv(t testing.TB, v *vaulttest.Vault, envVars ...string) {
	t.Helper()
	p := v.Plugin
	err := v.Client.Sys().RegisterPlugin(&api.RegisterPluginInput{
		Name:    p.Name,
		Type:    api.PluginTypeSecrets,
		Command: p.Command,
		SHA256:  p.SHA256,
		Version: p.Version,
		Env:     envVars,
	})
	if err != nil {
		t.Fatalf("registering the plugin with env %v: %v", envVars, err)
	}
}

// ---- a dev server with extra flags ----

// ownDev is a Vault dev server started by this file rather than by
// vaulttest, for flags the harness does not pass (e.g. -log-level=trace).
type ownDev struct {
	*vaulttest.Vault
	cmd  *exec.Cmd
	done chan struct{}
}

// startOwnDev starts "vault server -dev" with the plugin directory, root
// token "root" and extraArgs, and stops it (and its plugins) at cleanup.
func startOwnDev(t testing.TB, extraArgs ...string) *ownDev {
	t.Helper()
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	hcl := filepath.Join(dir, "vault.hcl")
	writeTestFile(t, hcl, []byte("plugin_directory = "+strconv.Quote(env.Plugin.Dir)+"\n"))
	port, err := vaulttest.FreePortPair()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "vault.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"server", "-dev", "-config=" + hcl,
		"-dev-root-token-id=" + vaulttest.DevRootToken,
		"-dev-listen-address=127.0.0.1:" + strconv.Itoa(port),
		"-dev-no-store-token"}, extraArgs...)
	cmd := exec.Command(env.VaultBin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+home)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatal(err)
	}
	d := &ownDev{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(d.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Errorf("vault (pid %d) did not stop within 30s of SIGTERM; killing it", cmd.Process.Pid)
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftovers, e.g. plugins
		<-d.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 16<<10 {
				b = b[len(b)-16<<10:]
			}
			t.Logf("vault log tail (%s):\n%s", logPath, b)
		}
	})

	v := &vaulttest.Vault{
		Addr:    "http://127.0.0.1:" + strconv.Itoa(port),
		Port:    port,
		Token:   vaulttest.DevRootToken,
		Dir:     dir,
		LogPath: logPath,
		Plugin:  env.Plugin,
	}
	v.Client = apiClient(t, v, 16, 90*time.Second)
	d.Vault = v
	ok := waitUntil(90*time.Second, func() bool {
		select {
		case <-d.done:
			return true
		default:
		}
		h, err := v.Client.Sys().Health()
		return err == nil && h.Initialized && !h.Sealed && !h.Standby
	})
	select {
	case <-d.done:
		b, _ := os.ReadFile(logPath)
		t.Fatalf("vault exited at start:\n%s", b)
	default:
	}
	if !ok {
		t.Fatalf("vault dev server on %s not active within 90s", v.Addr)
	}
	return d
}

// PID is the Vault server's pid.
func (d *ownDev) PID() int { return d.cmd.Process.Pid }
