package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// The endpoints compared. The KV secret and the SSH role are created by setup.
var (
	targetCreds = target{name: "biot/creds", method: http.MethodGet, path: "/v1/biot/creds"}
	targetKV    = target{name: "kv read", method: http.MethodGet, path: "/v1/kv/data/bench"}
	targetSSH   = target{name: "ssh otp creds", method: http.MethodPost, path: "/v1/ssh/creds/otp", body: []byte(`{"ip":"127.0.0.1"}`)}
)

// stack is one Vault dev server with the plugin at biot/ (configured against
// an in-process BioT stand-in), and optionally KV v2 at kv/ and SSH at ssh/.
type stack struct {
	r         *runner
	v         *vaulttest.Vault
	fake      *biotfake.Server
	base      *url.URL
	pprofAddr string // the plugin's pprof listener
	pluginExe string
	configAt  time.Time // when biot/config was written (the one login)
}

// newStack starts the stack. sshLeaseTTL is the SSH mount's default lease TTL,
// set close to the creds lease so both engines keep leases alike.
//
// pluginEnv is a comma-separated list of KEY=VALUE for the plugin process.
func newStack(r *runner, env *vaulttest.Env, fakeOpts biotfake.Options, comparisons bool, sshLeaseTTL time.Duration, pluginEnv string) *stack {
	fake := biotfake.NewTLSServer(fakeOpts)
	r.Cleanup(fake.Close)

	v := env.StartDev(r)
	base, err := url.Parse(v.Addr)
	if err != nil {
		r.Fatal(err)
	}
	s := &stack{r: r, v: v, fake: fake, base: base, pluginExe: env.Plugin.Path}
	s.pprofAddr = freeLoopbackAddr(r)

	// vaulttest.Register without the plugin's pprof listener; this is it with.
	penv := []string{"BIOT_PLUGIN_PPROF_ADDR=" + s.pprofAddr}
	for kv := range strings.SplitSeq(pluginEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			penv = append(penv, kv)
		}
	}
	p := env.Plugin
	err = v.Client.Sys().RegisterPluginWithContext(context.Background(), &api.RegisterPluginInput{
		Name:    p.Name,
		Type:    api.PluginTypeSecrets,
		Command: p.Command,
		SHA256:  p.SHA256,
		Version: p.Version,
		Env:     penv,
	})
	if err != nil {
		r.Fatalf("registering the plugin: %v", err)
	}
	v.Enable(r, "biot")
	s.configAt = time.Now()
	v.WriteConfig(r, "biot", vaulttest.UserConfig(fake))

	if comparisons {
		s.mount("kv", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}})
		s.retry("writing kv/data/bench", func() error {
			_, err := v.Client.Logical().Write("kv/data/bench", map[string]any{
				"data": map[string]any{"username": "bench", "password": "correct-horse-battery-staple"},
			})
			return err
		})
		s.mount("ssh", &api.MountInput{Type: "ssh", Config: api.MountConfigInput{DefaultLeaseTTL: sshLeaseTTL.String()}})
		s.retry("writing ssh/roles/otp", func() error {
			_, err := v.Client.Logical().Write("ssh/roles/otp", map[string]any{
				"key_type": "otp", "default_user": "ubuntu", "cidr_list": "127.0.0.0/8",
			})
			return err
		})
	}
	return s
}

func (s *stack) mount(path string, in *api.MountInput) {
	if err := s.v.Client.Sys().MountWithContext(context.Background(), path, in); err != nil {
		s.r.Fatalf("enabling %s at %s/: %v", in.Type, path, err)
	}
}

// retry calls f until it succeeds, for up to 30s (a new KV v2 mount answers
// errors until its upgrade finishes).
func (s *stack) retry(what string, f func() error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.r.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// check sends one request to t and fails unless it answers 200 (retrying for
// a while, as a fresh mount may not be ready yet).
func (s *stack) check(rt http.RoundTripper, t target) {
	w, err := newWorker(rt, s.base, s.v.Token, t, 1)
	if err != nil {
		s.r.Fatal(err)
	}
	s.retry("checking "+t.String(), func() error {
		w.lat, w.errs, w.firstErr = w.lat[:0], 0, ""
		w.do()
		if w.errs > 0 {
			return fmt.Errorf("%s", w.firstErr)
		}
		return nil
	})
}

func (s *stack) vaultPID() int {
	if p := s.v.Process(); p != nil {
		return p.PID()
	}
	return 0
}

func (s *stack) pluginPID() int { return pidOfExe(s.pluginExe) }

func (s *stack) probe() *cpuProbe {
	return &cpuProbe{vaultPID: s.vaultPID(), pluginPID: s.pluginPID()}
}

// goroutines is the plugin's goroutine count, from its pprof listener.
func (s *stack) goroutines() (int, error) {
	resp, err := http.Get("http://" + s.pprofAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, err
	}
	// goroutine profile: total 17
	f := strings.Fields(line)
	if len(f) == 0 {
		return 0, fmt.Errorf("unexpected goroutine profile %q", line)
	}
	return strconv.Atoi(f[len(f)-1])
}

// leases counts the leases Vault holds under prefix (e.g. "biot/creds/"), by
// listing sys/leases/lookup/<prefix>. (sys/leases/count counts only
// irrevocable leases, so it cannot answer this.)
func (s *stack) leases(prefix string) (int, error) {
	// The client's own timeout (90s) bounds these calls.
	sec, err := s.v.Client.Logical().ListWithContext(context.Background(), "sys/leases/lookup/"+prefix)
	if err != nil {
		return 0, err
	}
	if sec == nil || sec.Data == nil {
		return 0, nil
	}
	keys, _ := sec.Data["keys"].([]any)
	return len(keys), nil
}

// revokePrefix revokes every lease under prefix and waits for it.
func (s *stack) revokePrefix(prefix string) error {
	_, err := s.v.Client.Logical().WriteWithContext(context.Background(), "sys/leases/revoke-prefix/"+prefix, map[string]any{"sync": true})
	return err
}

// saveProfile fetches a CPU profile from u into path.
func saveProfile(u, token, path string) error {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: HTTP %d: %s", u, resp.StatusCode, b)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func freeLoopbackAddr(r *runner) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
