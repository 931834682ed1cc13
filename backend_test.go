package biot

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

// testEnv is a backend on in-memory storage talking to a BioT stand-in over
// TLS, with one manual clock shared by both.
type testEnv struct {
	t       testing.TB
	b       *backend
	storage logical.Storage
	fake    *biotfake.Server
	clock   *biotfake.Clock
	logs    *syncBuffer
	maxTTL  time.Duration
}

type envOptions struct {
	accessTTL, refreshTTL time.Duration
	maxLeaseTTL           time.Duration
}

func newTestEnv(t testing.TB, o envOptions) *testEnv {
	t.Helper()
	clock := biotfake.NewClock(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	fake := biotfake.NewTLSServer(biotfake.Options{AccessTTL: o.accessTTL, RefreshTTL: o.refreshTTL, Now: clock.Now})
	t.Cleanup(fake.Close)
	env := &testEnv{t: t, storage: &logical.InmemStorage{}, fake: fake, clock: clock, logs: &syncBuffer{}, maxTTL: o.maxLeaseTTL}
	env.b = env.newBackend()
	return env
}

// newBackend builds a backend on the env's storage, as a Vault restart or a
// plugin reload would.
func (e *testEnv) newBackend() *backend {
	e.t.Helper()
	maxTTL := e.maxTTL
	if maxTTL == 0 {
		maxTTL = 768 * time.Hour
	}
	conf := &logical.BackendConfig{
		StorageView: e.storage,
		Logger: hclog.New(&hclog.LoggerOptions{
			Output: e.logs, Level: hclog.Trace, Name: "biot",
		}),
		System: &logical.StaticSystemView{DefaultLeaseTTLVal: maxTTL, MaxLeaseTTLVal: maxTTL},
	}
	lb, err := Factory(context.Background(), conf)
	if err != nil {
		e.t.Fatalf("Factory: %v", err)
	}
	b := lb.(*backend)
	b.now = e.clock.Now
	e.t.Cleanup(func() { b.Cleanup(context.Background()) })
	return b
}

// userConfig is a complete config for the stand-in's demo user.
func (e *testEnv) userConfig() map[string]any {
	return map[string]any{
		"url":      e.fake.URL,
		"username": biotfake.DemoUsername,
		"password": biotfake.DemoPassword,
		"ca_cert":  string(e.fake.CACertPEM()),
	}
}

func (e *testEnv) serviceConfig() map[string]any {
	return map[string]any{
		"url":        e.fake.URL,
		"service_id": biotfake.DemoServiceID,
		"secret_key": biotfake.DemoServiceSecret,
		"ca_cert":    string(e.fake.CACertPEM()),
	}
}

func (e *testEnv) request(b *backend, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	return b.HandleRequest(context.Background(), &logical.Request{
		Operation: op, Path: path, Data: data, Storage: e.storage,
	})
}

// writeConfig writes data to config and fails the test on any error.
func (e *testEnv) writeConfig(data map[string]any) {
	e.t.Helper()
	op := logical.CreateOperation
	if exists, _ := e.b.pathConfigExists(context.Background(), &logical.Request{Storage: e.storage}, nil); exists {
		op = logical.UpdateOperation
	}
	resp, err := e.request(e.b, op, "config", data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("config write: err=%v resp=%v", err, resp)
	}
}

// creds reads creds from b and fails the test on any error.
func (e *testEnv) creds(b *backend) *logical.Response {
	e.t.Helper()
	resp, err := e.request(b, logical.ReadOperation, "creds", nil)
	if err != nil || resp == nil || resp.IsError() {
		e.t.Fatalf("creds read: err=%v resp=%v", err, resp)
	}
	return resp
}

func accessToken(resp *logical.Response) string { return resp.Data["access_token"].(string) }

// waitFor polls cond for up to fifteen seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func TestFactoryDoesNoIO(t *testing.T) {
	st := &countingStorage{Storage: &logical.InmemStorage{}}
	b, err := Factory(context.Background(), &logical.BackendConfig{StorageView: st, System: &logical.StaticSystemView{}})
	if err != nil {
		t.Fatal(err)
	}
	if st.ops != 0 {
		t.Fatalf("Factory touched storage %d times", st.ops)
	}
	if v := b.(*backend).RunningVersion; !strings.HasPrefix(v, "v") || v == "v" {
		t.Fatalf("RunningVersion = %q, want v<semver>", v)
	}
}

func TestRunningVersionAddsPrefix(t *testing.T) {
	defer func(v string) { Version = v }(Version)
	Version = "1.2.3"
	if got := RunningVersion(); got != "v1.2.3" {
		t.Fatalf("RunningVersion() = %q, want v1.2.3", got)
	}
}

type countingStorage struct {
	logical.Storage
	mu  sync.Mutex
	ops int
}

func (c *countingStorage) count() {
	c.mu.Lock()
	c.ops++
	c.mu.Unlock()
}

func (c *countingStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	c.count()
	return c.Storage.Get(ctx, k)
}

func (c *countingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	c.count()
	return c.Storage.Put(ctx, e)
}

func TestSecretsNeverLogged(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute, refreshTTL: time.Hour})
	// A failed verification, a good config, reads, a refresh, a refresh
	// rejection with a fallback login, a failed login, a service user.
	bad := e.userConfig()
	bad["password"] = "wrong-password-Zq9"
	if resp, _ := e.request(e.b, logical.CreateOperation, "config", bad); !resp.IsError() {
		t.Fatal("bad password accepted")
	}
	e.writeConfig(e.userConfig())
	e.creds(e.b)
	e.clock.Advance(4 * time.Minute)
	e.b.sess.Load().refreshIfDue()
	e.fake.RevokeAllRefreshTokens()
	e.clock.Advance(4 * time.Minute)
	e.b.sess.Load().refreshIfDue()
	e.fake.SetPassword(biotfake.DemoUsername, "changed")
	e.fake.RevokeAllRefreshTokens()
	e.clock.Advance(10 * time.Minute)
	_, _ = e.request(e.b, logical.ReadOperation, "creds", nil)
	e.writeConfig(e.serviceConfig())
	e.creds(e.b)

	logs := e.logs.String()
	if !strings.Contains(logs, "LOGIN_FAILED") {
		t.Fatalf("expected the failed login in the logs, got:\n%s", logs)
	}
	secrets := append([]string{biotfake.DemoPassword, "wrong-password-Zq9", biotfake.DemoServiceSecret},
		e.fake.IssuedRefreshTokens()...)
	secrets = append(secrets, e.fake.IssuedAccessTokens()...)
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Fatalf("a secret reached the log: %.12s...", s)
		}
	}
}

// httpStatus is the status Vault's HTTP layer gives a handler's error.
func httpStatus(err error) int {
	code := 500
	logical.AdjustErrorStatusCode(&code, err)
	return code
}
