//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

// recordingTransport keeps every response body a client receives.
type recordingTransport struct {
	base http.RoundTripper

	mu     sync.Mutex
	bodies []recordedBody
}

type recordedBody struct {
	method, path string
	status       int
	body         []byte
}

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	rt.mu.Lock()
	rt.bodies = append(rt.bodies, recordedBody{req.Method, req.URL.Path, resp.StatusCode, b})
	rt.mu.Unlock()
	return resp, err
}

func (rt *recordingTransport) all() []recordedBody {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return append([]recordedBody(nil), rt.bodies...)
}

// TestReliabilitySecretsNeverLeak runs a Vault dev server at trace log level
// with a file audit device through config writes (user and service user,
// wrong and right secrets), failed logins, refreshes, a rejected refresh
// token, BioT down, creds reads and a config delete. Afterwards no password,
// secret key or refresh token appears in Vault's log, the audit log, or any
// response or error body received; no access token appears in either log.
func TestReliabilitySecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const accessTTL = 6 * time.Second
	fake := newFake(t, biotfake.Options{AccessTTL: accessTTL})
	d := startOwnDev(t, "-log-level=trace")
	v := d.Vault

	var (
		username  = "leakcheck-" + randomHex(4) + "@example.com"
		password  = "pw-LEAKCHECK-" + randomHex(12)
		wrongPW   = "pw-LEAKCHECK-wrong-" + randomHex(12)
		password2 = "pw-LEAKCHECK-new-" + randomHex(12)
		serviceID = "5e0f4a52-1c7d-4b8e-9a3f-" + randomHex(6)
		secretKey = "sk-LEAKCHECK-" + randomHex(12)
		wrongSK   = "sk-LEAKCHECK-wrong-" + randomHex(12)
	)
	fake.AddUser(username, password)
	fake.AddService(serviceID, secretKey)

	// Every answer the test gets goes through rec.
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = time.Minute
	rec := &recordingTransport{base: cfg.HttpClient.Transport}
	cfg.HttpClient.Transport = rec
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.Token)
	v.Client = c

	auditPath := filepath.Join(v.Dir, "audit.log")
	if err := c.Sys().EnableAuditWithOptions("file", &api.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": auditPath}}); err != nil {
		t.Fatalf("enabling the file audit device: %v", err)
	}
	v.Register(t)
	v.Enable(t, "biot")

	base := map[string]any{"url": fake.URL, "ca_cert": string(fake.CACertPEM()), "request_timeout": "5s"}
	user := func(pw string) map[string]any { return with(base, "username", username, "password", pw) }
	service := func(sk string) map[string]any { return with(base, "service_id", serviceID, "secret_key", sk) }
	var errs []string // every error the client saw, as text
	write := func(data map[string]any, wantOK bool, what string) {
		t.Helper()
		_, err := c.Logical().Write("biot/config", data)
		if err != nil {
			errs = append(errs, err.Error())
		}
		if (err == nil) != wantOK {
			t.Fatalf("%s: error %v, want success %t", what, err, wantOK)
		}
	}
	var st readStats
	read := func() error {
		_, d, err := readCreds(c, "biot")
		st.record(err, d)
		if err != nil {
			errs = append(errs, err.Error())
		}
		return err
	}
	readFor := func(dur time.Duration) {
		for end := time.Now().Add(dur); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			_ = read()
		}
	}

	// A wrong password, then the right one; reads through a few refreshes.
	write(user(wrongPW), false, "config with a wrong password")
	write(user(password), true, "config with the right password")
	readFor(2*accessTTL + time.Second)
	if n := fake.Successes(biotfake.EndpointRefresh); n < 2 {
		t.Errorf("successful refreshes = %d, want at least 2 to check refresh tokens", n)
	}

	// BioT rejects the refresh token: the engine logs in again (and logs why).
	fake.RevokeAllRefreshTokens()
	readFor(accessTTL)

	// The password changes at BioT: the background login fails, then reads.
	fake.SetPassword(username, password2)
	fake.RevokeAllRefreshTokens()
	readFor(accessTTL + time.Second)
	if st.failed.Load() == 0 {
		t.Error("no read failed after the password changed at BioT; the failed-login path was not exercised")
	}
	write(map[string]any{"password": password2}, true, "config with the new password")
	if err := read(); err != nil {
		t.Errorf("read after writing the new password: %v", err)
	}

	// BioT down: a verifying write and (once the token lapses) reads fail.
	fake.Stop()
	write(with(user(password2), "verify_connection", true), false, "config write with BioT down")
	fake.Start()

	// A service user: wrong secret key, then the right one.
	write(service(wrongSK), false, "config with a wrong secret key")
	write(service(secretKey), true, "config with the right secret key")
	readFor(2 * time.Second)
	if _, err := c.Logical().Read("biot/config"); err != nil {
		t.Errorf("reading biot/config: %v", err)
	}

	// Back to the user, then delete (logs the session out).
	write(user(password2), true, "config back to the user")
	if err := read(); err != nil {
		t.Errorf("read: %v", err)
	}
	if _, err := c.Logical().Read("biot/config"); err != nil {
		t.Errorf("reading biot/config: %v", err)
	}
	if _, err := c.Logical().Delete("biot/config"); err != nil {
		t.Errorf("deleting biot/config: %v", err)
	}
	if err := read(); err == nil {
		t.Error("read after deleting the config succeeded")
	}
	waitUntil(5*time.Second, func() bool { return fake.Calls(biotfake.EndpointLogout) > 0 })
	time.Sleep(time.Second) // let the last log and audit lines land

	// Scan.
	vaultLog, err := os.ReadFile(v.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	auditLog, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	bodies := rec.all()
	var bodyText, nonCredsText bytes.Buffer
	for _, b := range bodies {
		bodyText.Write(b.body)
		bodyText.WriteByte('\n')
		if !(b.method == http.MethodGet && strings.HasSuffix(b.path, "/biot/creds") && b.status == http.StatusOK) {
			nonCredsText.Write(b.body)
			nonCredsText.WriteByte('\n')
		}
	}
	errText := strings.Join(errs, "\n")

	// Sanity: the scanned texts hold what they should, so a zero means
	// something.
	for _, want := range []string{"[TRACE]", "refresh token rejected by BioT", "logged in to BioT", "BioT refused the credentials"} {
		if !bytes.Contains(vaultLog, []byte(want)) {
			t.Errorf("Vault's log has no %q line; the scan would prove less than it claims", want)
		}
	}
	if !bytes.Contains(auditLog, []byte("biot/creds")) || !bytes.Contains(auditLog, []byte("hmac-sha256:")) {
		t.Error("the audit log has no HMAC'd biot/creds entries")
	}
	access := fake.IssuedAccessTokens()
	if len(access) == 0 || !bytes.Contains(bodyText.Bytes(), []byte(access[len(access)-1])) {
		t.Error("the recorded bodies do not hold the access tokens handed out; the recording is broken")
	}

	secrets := map[string]string{
		"password": password, "wrong password": wrongPW, "new password": password2,
		"secret key": secretKey, "wrong secret key": wrongSK,
	}
	refreshTokens := fake.IssuedRefreshTokens()
	for i, rt := range refreshTokens {
		secrets[fmt.Sprintf("refresh token #%d", i+1)] = rt
	}
	places := map[string][]byte{
		"vault log":  vaultLog,
		"audit log":  auditLog,
		"a response": bodyText.Bytes(),
		"an error":   []byte(errText),
	}
	leaks := 0
	for what, secret := range secrets {
		for where, text := range places {
			if n := bytes.Count(text, []byte(secret)); n > 0 {
				leaks += n
				t.Errorf("the %s appears %d times in %s", what, n, where)
			}
		}
	}
	accessLeaks := 0
	for i, at := range access {
		for where, text := range map[string][]byte{"vault log": vaultLog, "audit log": auditLog, "a non-creds response": nonCredsText.Bytes()} {
			if n := bytes.Count(text, []byte(at)); n > 0 {
				accessLeaks += n
				t.Errorf("access token #%d appears %d times in %s", i+1, n, where)
			}
		}
	}
	logins, refreshes := upstream(fake)
	st.figure("secrets_never_leak", fake, fmt.Sprintf("secrets_checked=%d refresh_tokens=%d access_tokens=%d secret_occurrences=%d access_token_occurrences_in_logs=%d vault_log_bytes=%d audit_log_bytes=%d bodies=%d",
		len(secrets), len(refreshTokens), len(access), leaks, accessLeaks, len(vaultLog), len(auditLog), len(bodies))).print(t)
	if len(refreshTokens) < 3 || logins < 5 || refreshes < 2 {
		t.Errorf("BioT issued %d refresh tokens over %d logins and %d refreshes; want at least 3, 5, 2", len(refreshTokens), logins, refreshes)
	}
}
