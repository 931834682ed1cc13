package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startSandbox runs the sandbox with args plus a ready file, waits for it to
// listen and returns what it reported. The sandbox stops at cleanup.
func startSandbox(t *testing.T, args ...string) (readyInfo, *syncBuffer, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	args = append([]string{"-addr", "127.0.0.1:0", "-ready-file", ready, "-ca-file", filepath.Join(dir, "ca.pem")}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("sandbox did not stop within 10s of cancel")
		}
		if _, err := os.Stat(ready); !os.IsNotExist(err) {
			t.Errorf("ready file still present after stop (stat err %v)", err)
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var info readyInfo
			if err := json.Unmarshal(b, &info); err != nil {
				t.Fatalf("ready file is not JSON: %v\n%s", err, b)
			}
			return info, stdout, stderr
		}
		select {
		case err := <-done:
			t.Fatalf("sandbox exited before ready: %v\nstderr: %s", err, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file within 10s\nstdout: %s\nstderr: %s", stdout, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("%s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func post(t *testing.T, c *http.Client, url string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := c.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: decoding the answer: %v", url, err)
	}
	return resp.StatusCode, out
}

func TestServesDemoUserOverTLS(t *testing.T) {
	info, stdout, stderr := startSandbox(t, "-access-ttl", "45s")
	if !strings.HasPrefix(info.URL, "https://127.0.0.1:") || strings.HasSuffix(info.URL, ":0") {
		t.Errorf("url = %q, want https://127.0.0.1:<port>", info.URL)
	}
	if info.Username != biotfake.DemoUsername || info.Password != biotfake.DemoPassword ||
		info.ServiceID != biotfake.DemoServiceID || info.SecretKey != biotfake.DemoServiceSecret {
		t.Errorf("ready file credentials = %+v, want the biotfake demo ones", info)
	}
	if !filepath.IsAbs(info.CAFile) {
		t.Errorf("ca_file = %q, want an absolute path", info.CAFile)
	}
	for _, want := range []string{info.URL, info.CAFile, biotfake.DemoUsername, biotfake.DemoPassword, biotfake.DemoServiceID, "Not BioT"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("banner does not mention %q:\n%s", want, stdout)
		}
	}

	// Without the CA, the certificate is not trusted.
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Post(info.URL+biotfake.PathLogin, "application/json", strings.NewReader("{}")); err == nil {
		t.Error("a client without the sandbox CA connected; want a certificate error")
	}

	c := httpClient(t, info.CAFile)
	status, body := post(t, c, info.URL+biotfake.PathLogin, map[string]string{"username": info.Username, "password": info.Password})
	if status != http.StatusOK {
		t.Fatalf("demo login: status %d, body %v", status, body)
	}
	access := body["accessJwt"].(map[string]any)
	exp, err := time.Parse(time.RFC3339, access["expiration"].(string))
	if err != nil {
		t.Fatalf("accessJwt.expiration: %v", err)
	}
	if left := time.Until(exp); left < 30*time.Second || left > 46*time.Second {
		t.Errorf("access token expires in %s, want about 45s (-access-ttl)", left)
	}

	status, body = post(t, c, info.URL+biotfake.PathServiceLogin, map[string]string{"id": info.ServiceID, "secretKey": info.SecretKey})
	if status != http.StatusOK || body["accessToken"] == "" {
		t.Fatalf("demo service login: status %d, body %v", status, body)
	}

	status, body = post(t, c, info.URL+biotfake.PathLogin, map[string]string{"username": info.Username, "password": "wrong"})
	if status != http.StatusForbidden || body["code"] != "LOGIN_FAILED" {
		t.Errorf("wrong password: status %d, body %v; want 403 LOGIN_FAILED", status, body)
	}
	if log := stderr.String(); !strings.Contains(log, "POST "+biotfake.PathLogin+" -> 403") || strings.Contains(log, "wrong") {
		t.Errorf("request log should name the call and status but no body:\n%s", log)
	}
}

func TestInjectedFailures(t *testing.T) {
	info, _, _ := startSandbox(t, "-http", "-fail-login", "USER_LOCKED", "-fail-times", "1", "-quiet")
	if !strings.HasPrefix(info.URL, "http://127.0.0.1:") || info.CAFile != "" {
		t.Errorf("with -http: url %q ca_file %q, want http:// and no CA", info.URL, info.CAFile)
	}
	c := httpClient(t, "")
	creds := map[string]string{"username": info.Username, "password": info.Password}
	status, body := post(t, c, info.URL+biotfake.PathLogin, creds)
	if status != http.StatusUnauthorized || body["code"] != "USER_LOCKED" {
		t.Errorf("first login: status %d, body %v; want 401 USER_LOCKED", status, body)
	}
	status, body = post(t, c, info.URL+biotfake.PathLogin, creds)
	if status != http.StatusOK {
		t.Errorf("second login (after -fail-times 1): status %d, body %v; want 200", status, body)
	}
}

func TestSlow(t *testing.T) {
	info, _, _ := startSandbox(t, "-http", "-slow", "300ms", "-quiet")
	c := httpClient(t, "")
	start := time.Now()
	status, _ := post(t, c, info.URL+biotfake.PathLogin, map[string]string{"username": info.Username, "password": info.Password})
	if status != http.StatusOK {
		t.Fatalf("login: status %d", status)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("login answered in %s, want at least -slow 300ms", d)
	}
}

func TestHelpSaysItIsNotBioT(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-h"}, &stdout, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"NOT BioT", "without a BioT tenant", "-access-ttl", "-fail-login", "-ready-file"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-fail-login", "NOPE"},
		{"-fail-refresh", "200"},
		{"-access-ttl", "0"},
		{"-fail-rate", "1.5"},
		{"stray"},
	} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, &stdout, &stderr); !errors.Is(err, errUsage) {
			t.Errorf("run %q = %v, want a usage error", args, err)
		}
		if !strings.Contains(stderr.String(), "-h for help") {
			t.Errorf("run %q: stderr %q lacks a pointer to -h", args, stderr.String())
		}
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"-http", "-addr", ln.Addr().String()}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("run on a busy port = %v, want an error saying the port is in use", err)
	}
}

func TestParseFault(t *testing.T) {
	tests := []struct {
		in   string
		want biotfake.Fault
	}{
		{"LOGIN_FAILED", biotfake.Fault{Status: 403, Code: "LOGIN_FAILED"}},
		{"user_locked", biotfake.Fault{Status: 401, Code: "USER_LOCKED"}},
		{"GATEWAY_TIMEOUT", biotfake.Fault{Status: 504, Code: "GATEWAY_TIMEOUT"}},
		{"TOO_MANY_REQUESTS", biotfake.Fault{Status: 429, Code: "TOO_MANY_REQUESTS", RetryAfter: "1"}},
		{"503", biotfake.Fault{Status: 503}},
		{"reset", biotfake.Fault{Reset: true}},
		{"malformed", biotfake.Fault{Malformed: true}},
		{"mfa", biotfake.Fault{MFARequired: true}},
		{"password-reset", biotfake.Fault{PasswordResetRequired: true}},
	}
	for _, tt := range tests {
		got, err := parseFault(tt.in)
		if err != nil {
			t.Errorf("parseFault(%q): %v", tt.in, err)
			continue
		}
		if got.Status != tt.want.Status || got.Code != tt.want.Code || got.RetryAfter != tt.want.RetryAfter ||
			got.Reset != tt.want.Reset || got.Malformed != tt.want.Malformed ||
			got.MFARequired != tt.want.MFARequired || got.PasswordResetRequired != tt.want.PasswordResetRequired {
			t.Errorf("parseFault(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"", "200", "600", "SOMETHING"} {
		if _, err := parseFault(bad); err == nil {
			t.Errorf("parseFault(%q) succeeded, want an error", bad)
		}
	}
}
