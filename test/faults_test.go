//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// requestTimeout is the request_timeout the reliability tests configure, and
// failSlack what a failing read may take beyond it.
const (
	requestTimeout = 5 * time.Second
	failSlack      = 2 * time.Second
)

// TestReliabilityFaults drives one Vault dev server through the ways BioT
// misbehaves, one mount and one BioT stand-in per scenario. The scenarios
// mostly wait for tokens to fall due or lapse, so they run at the same time.
func TestReliabilityFaults(t *testing.T) {
	t.Parallel()
	v := env.StartDev(t)
	v.Register(t)

	scenarios := []struct {
		name string
		run  func(t *testing.T, v *vaulttest.Vault, mount string)
	}{
		{"biot_down", scenarioBioTDown},
		{"biot_slow", scenarioBioTSlow},
		{"biot_flaky", scenarioBioTFlaky},
		{"refresh_revoked", scenarioRefreshRevoked},
		{"password_changed", scenarioPasswordChanged},
		{"refused", scenarioRefused},
	}
	var wg sync.WaitGroup
	for _, sc := range scenarios {
		wg.Go(func() {
			t.Run(sc.name, func(t *testing.T) { sc.run(t, v, strings.ReplaceAll(sc.name, "_", "-")) })
		})
	}
	wg.Wait()
}

// setupScenario starts a BioT stand-in with opts, enables mount and writes a
// user config for it with request_timeout=5s and the extra fields kv. It
// returns the stand-in and the access token the first read returned.
func setupScenario(t *testing.T, v *vaulttest.Vault, mount string, opts biotfake.Options, kv ...any) (*biotfake.Server, string) {
	t.Helper()
	fake := newFake(t, opts)
	cfg := with(vaulttest.UserConfig(fake), append([]any{"request_timeout", "5s"}, kv...)...)
	enableWithConfig(t, v, mount, cfg)
	s, _, err := readCreds(v.Client, mount)
	if err != nil {
		t.Fatalf("first read of %s/creds: %v", mount, err)
	}
	return fake, s.Data["access_token"].(string)
}

// waitLapsed waits until BioT no longer accepts tok (the engine stops
// handing it out a little earlier).
func waitLapsed(t *testing.T, fake *biotfake.Server, tok string, within time.Duration) {
	t.Helper()
	if !waitUntil(within, func() bool { return !fake.AccessTokenValid(tok) }) {
		t.Fatalf("the access token was still valid after %s", within)
	}
}

// burst runs n concurrent reads of <mount>/creds and records them in st.
func burst(c *api.Client, mount string, n int, st *readStats, check func(s *api.Secret, d time.Duration, err error)) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			s, d, err := readCreds(c, mount)
			st.record(err, d)
			if check != nil {
				check(s, d, err)
			}
		})
	}
	wg.Wait()
}

// scenarioBioTDown: BioT refuses connections. While the cached token is
// valid every read succeeds; once it has lapsed every read fails quickly,
// naming the cause; when BioT is back the next read succeeds.
func scenarioBioTDown(t *testing.T, v *vaulttest.Vault, mount string) {
	const accessTTL = 20 * time.Second
	fake, tok := setupScenario(t, v, mount, biotfake.Options{AccessTTL: accessTTL})
	c := apiClient(t, v, 32, time.Minute)
	fake.Stop()

	// 20 readers for 10 s on the cached token.
	var valid readStats
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	readLoop(ctx, c, mount, 20, 100*time.Millisecond, func(s *api.Secret, d time.Duration, err error) {
		if err == nil && s.Data["access_token"] != tok {
			err = fmt.Errorf("a read returned another token than the cached one")
		}
		valid.record(err, d)
	})
	cancel()
	valid.figure("biot_down.token_valid", fake, fmt.Sprintf("readers=20 max_ms=%d", valid.maxOK.Load()/1e6)).print(t)
	if valid.failed.Load() != 0 || valid.ok.Load() < 100 {
		t.Errorf("BioT down, token valid: %d of %d reads failed (want none, and at least 100 reads): %v",
			valid.failed.Load(), valid.attempted.Load(), valid.errors())
	}

	// Once the token has lapsed, reads fail within request_timeout + slack
	// and say why.
	waitLapsed(t, fake, tok, accessTTL)
	var lapsed readStats
	var mu sync.Mutex
	var bad []string
	for range 2 {
		burst(c, mount, 10, &lapsed, func(_ *api.Secret, d time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				bad = append(bad, "a read succeeded although BioT is down and the token lapsed")
			case d > requestTimeout+failSlack:
				bad = append(bad, fmt.Sprintf("a read took %s to fail, want at most %s", d.Round(time.Millisecond), requestTimeout+failSlack))
			case !strings.Contains(err.Error(), "connection refused"):
				bad = append(bad, fmt.Sprintf("error does not name the cause (connection refused): %v", err))
			case statusOf(err) != http.StatusGatewayTimeout && statusOf(err) != http.StatusBadGateway:
				bad = append(bad, fmt.Sprintf("status %d, want 502 or 504", statusOf(err)))
			}
		})
	}
	lapsed.figure("biot_down.token_lapsed", fake, fmt.Sprintf("max_fail_ms=%d", lapsed.maxFailed.Load()/1e6)).print(t)
	for i, b := range bad {
		if i < 5 {
			t.Error(b)
		}
	}
	if errs := lapsed.errors(); len(errs) > 0 {
		t.Logf("error while BioT is down: %s", errs[0])
	}

	// BioT back: the next read succeeds, with no config change.
	logins, _ := upstream(fake)
	fake.Start()
	var back readStats
	s, d, err := readCreds(c, mount)
	back.record(err, d)
	if err != nil {
		t.Errorf("first read after BioT came back failed after %s: %v", d.Round(time.Millisecond), err)
	} else if s.Data["access_token"] == tok || !fake.AccessTokenValid(s.Data["access_token"].(string)) {
		t.Error("first read after BioT came back did not return a new valid token")
	}
	burst(c, mount, 10, &back, nil)
	back.figure("biot_down.biot_back", fake, fmt.Sprintf("first_read_ms=%d", d.Milliseconds())).print(t)
	if back.failed.Load() != 0 {
		t.Errorf("after BioT came back %d of %d reads failed: %v", back.failed.Load(), back.attempted.Load(), back.errors())
	}
	if l, _ := upstream(fake); l != logins || l != 1 {
		t.Errorf("login calls = %d (was %d before BioT came back), want 1: the refresh token should be used", l, logins)
	}
}

// scenarioBioTSlow: BioT answers after 10 s, twice request_timeout. While the
// token is valid reads stay fast; without a valid token a read fails with a
// timeout (504) within request_timeout + slack.
func scenarioBioTSlow(t *testing.T, v *vaulttest.Vault, mount string) {
	const accessTTL = 15 * time.Second
	fake, tok := setupScenario(t, v, mount, biotfake.Options{AccessTTL: accessTTL})
	issued := time.Now()
	c := apiClient(t, v, 32, time.Minute)
	fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Delay: 10 * time.Second})
	fake.Inject(biotfake.EndpointLogin, biotfake.Fault{Delay: 10 * time.Second})

	// Readers until shortly before the engine stops handing the token out
	// (a lease skew of 1.5 s plus the last second): past the refresh point
	// at 10 s, so a slow background refresh is running meanwhile.
	var valid readStats
	const fastRead = 2 * time.Second
	ctx, cancel := context.WithDeadline(context.Background(), issued.Add(accessTTL-4*time.Second))
	readLoop(ctx, c, mount, 20, 100*time.Millisecond, func(s *api.Secret, d time.Duration, err error) {
		if err == nil && d > fastRead {
			err = fmt.Errorf("a read took %s with a valid token cached, want under %s", d.Round(time.Millisecond), fastRead)
		}
		valid.record(err, d)
	})
	cancel()
	logins, refreshes := upstream(fake)
	valid.figure("biot_slow.token_valid", fake, fmt.Sprintf("max_ms=%d", valid.maxOK.Load()/1e6)).print(t)
	if valid.failed.Load() != 0 || valid.ok.Load() < 100 {
		t.Errorf("BioT slow, token valid: %d of %d reads failed (want none of at least 100): %v", valid.failed.Load(), valid.attempted.Load(), valid.errors())
	}
	if refreshes == 0 {
		t.Error("no refresh was attempted past the refresh point; the scenario proves nothing")
	}

	waitLapsed(t, fake, tok, accessTTL)
	var lapsed readStats
	var mu sync.Mutex
	var bad []string
	burst(c, mount, 5, &lapsed, func(_ *api.Secret, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			bad = append(bad, "a read succeeded although BioT does not answer in time and the token lapsed")
		case d > requestTimeout+failSlack:
			bad = append(bad, fmt.Sprintf("a read took %s to fail, want at most %s", d.Round(time.Millisecond), requestTimeout+failSlack))
		case !strings.Contains(err.Error(), "no answer within the request timeout"):
			bad = append(bad, fmt.Sprintf("error does not say it timed out: %v", err))
		case statusOf(err) != http.StatusGatewayTimeout:
			bad = append(bad, fmt.Sprintf("status %d, want 504", statusOf(err)))
		}
	})
	lapsed.figure("biot_slow.token_lapsed", fake, fmt.Sprintf("max_fail_ms=%d", lapsed.maxFailed.Load()/1e6)).print(t)
	for i, b := range bad {
		if i < 5 {
			t.Error(b)
		}
	}
	if errs := lapsed.errors(); len(errs) > 0 {
		t.Logf("error while BioT is slow: %s", errs[0])
	}

	// BioT fast again: reads recover within one request_timeout.
	fake.ClearFaults()
	var err error
	if !waitUntil(requestTimeout+failSlack, func() bool { _, _, err = readCreds(c, mount); return err == nil }) {
		t.Errorf("reads did not recover within %s of BioT answering in time again: %v", requestTimeout+failSlack, err)
	}
	if l, _ := upstream(fake); l != logins || l != 1 {
		t.Errorf("login calls = %d, want 1: the refresh token should be used", l)
	}
}

// scenarioBioTFlaky: BioT answers 500 or 504 to half of all login and
// refresh calls. Refreshes still succeed through retries and no read fails.
func scenarioBioTFlaky(t *testing.T, v *vaulttest.Vault, mount string) {
	const (
		accessTTL = 8 * time.Second
		window    = 36 * time.Second // six refresh points
	)
	fake, _ := setupScenario(t, v, mount, biotfake.Options{AccessTTL: accessTTL})
	c := apiClient(t, v, 32, time.Minute)
	for _, ep := range []biotfake.Endpoint{biotfake.EndpointLogin, biotfake.EndpointRefresh} {
		// A quarter of the calls get 500, a third of the rest 504: calls
		// go ok, ok, 504, 500, ok, ok, 504, 500...
		fake.Inject(ep, biotfake.Fault{Status: http.StatusInternalServerError, Rate: 0.25})
		fake.Inject(ep, biotfake.Fault{Status: http.StatusGatewayTimeout, Rate: 1.0 / 3})
	}
	logins0, refreshes0 := upstream(fake)
	okRefresh0 := fake.Successes(biotfake.EndpointRefresh)

	var st readStats
	tokens := map[string]bool{}
	var mu sync.Mutex
	ctx, cancel := context.WithTimeout(context.Background(), window)
	readLoop(ctx, c, mount, 20, 200*time.Millisecond, func(s *api.Secret, d time.Duration, err error) {
		st.record(err, d)
		if err == nil {
			mu.Lock()
			tokens[s.Data["access_token"].(string)] = true
			mu.Unlock()
		}
	})
	cancel()
	logins, refreshes := upstream(fake)
	calls := (logins - logins0) + (refreshes - refreshes0)
	okCalls := fake.Successes(biotfake.EndpointRefresh) - okRefresh0 + fake.Successes(biotfake.EndpointLogin) - 1
	okRefreshes := fake.Successes(biotfake.EndpointRefresh) - okRefresh0
	st.figure("biot_flaky_5xx_half", fake, fmt.Sprintf("upstream_failed=%d/%d ok_refreshes=%d tokens=%d",
		calls-okCalls, calls, okRefreshes, len(tokens))).print(t)
	if st.failed.Load() != 0 || st.ok.Load() < 100 {
		t.Errorf("BioT failing half the calls: %d of %d reads failed (want none of at least 100): %v", st.failed.Load(), st.attempted.Load(), st.errors())
	}
	if calls < 4 || float64(calls-okCalls)/float64(calls) < 0.3 {
		t.Errorf("only %d of %d upstream calls failed; the faults did not apply", calls-okCalls, calls)
	}
	if okRefreshes < 4 || len(tokens) < 5 {
		t.Errorf("%d refreshes succeeded and reads saw %d tokens in %s of %s tokens; want at least 4 and 5", okRefreshes, len(tokens), window, accessTTL)
	}
	if logins != 1 {
		t.Errorf("login calls = %d, want 1: failed refreshes are retried, not replaced by a login", logins)
	}
}

// scenarioRefreshRevoked: BioT rejects the refresh token; exactly one
// password login follows and reads never fail.
func scenarioRefreshRevoked(t *testing.T, v *vaulttest.Vault, mount string) {
	const (
		accessTTL = 12 * time.Second
		window    = 22 * time.Second // the rejected refresh at 8 s, a good one at about 16 s
	)
	fake, _ := setupScenario(t, v, mount, biotfake.Options{AccessTTL: accessTTL})
	c := apiClient(t, v, 8, time.Minute)
	fake.RevokeAllRefreshTokens()

	var st readStats
	ctx, cancel := context.WithTimeout(context.Background(), window)
	readLoop(ctx, c, mount, 4, 200*time.Millisecond, func(_ *api.Secret, d time.Duration, err error) { st.record(err, d) })
	cancel()
	okRefreshes := fake.Successes(biotfake.EndpointRefresh)
	st.figure("refresh_token_revoked", fake, fmt.Sprintf("ok_refreshes=%d", okRefreshes)).print(t)
	if st.failed.Load() != 0 {
		t.Errorf("%d of %d reads failed: %v", st.failed.Load(), st.attempted.Load(), st.errors())
	}
	if logins, _ := upstream(fake); logins != 2 {
		t.Errorf("login calls = %d, want 2: the first, and exactly one after BioT rejected the refresh token", logins)
	}
	if okRefreshes < 1 {
		t.Error("no refresh succeeded after the new login; want the new refresh token used")
	}
}

// scenarioPasswordChanged: the password changes at BioT and its sessions are
// revoked. Once the token lapses reads fail with LOGIN_FAILED, quickly and
// without hammering BioT; writing the new password to config fixes it.
func scenarioPasswordChanged(t *testing.T, v *vaulttest.Vault, mount string) {
	const accessTTL = 12 * time.Second
	fake, tok := setupScenario(t, v, mount, biotfake.Options{AccessTTL: accessTTL})
	issued := time.Now()
	c := apiClient(t, v, 8, time.Minute)
	newPassword := "changed-" + randomHex(8)
	fake.SetPassword(biotfake.DemoUsername, newPassword)
	fake.RevokeAllRefreshTokens()

	// While the token is valid (the engine hands it out until its lease
	// skew, 1.2 s, plus a second before it expires), past the refresh point
	// at 8 s where the refresh and then the login are refused.
	var before readStats
	ctx, cancel := context.WithDeadline(context.Background(), issued.Add(accessTTL-4*time.Second))
	readLoop(ctx, c, mount, 4, 200*time.Millisecond, func(_ *api.Secret, d time.Duration, err error) { before.record(err, d) })
	cancel()
	waitLapsed(t, fake, tok, accessTTL)

	var after readStats // token lapsed, password wrong
	var mu sync.Mutex
	var bad []string
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	readLoop(ctx, c, mount, 4, 100*time.Millisecond, func(_ *api.Secret, d time.Duration, err error) {
		after.record(err, d)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			bad = append(bad, "a read succeeded with the old password and a lapsed token")
		case !strings.Contains(err.Error(), "LOGIN_FAILED"):
			bad = append(bad, fmt.Sprintf("error does not carry LOGIN_FAILED: %v", err))
		case d > 2*time.Second:
			bad = append(bad, fmt.Sprintf("a refused read took %s; a held refusal should answer at once", d.Round(time.Millisecond)))
		}
	})
	cancel()
	for i, b := range bad {
		if i < 5 {
			t.Error(b)
		}
	}
	if errs := after.errors(); len(errs) > 0 {
		t.Logf("error with the old password: %s", errs[0])
	}
	failedLogins := fake.Calls(biotfake.EndpointLogin) - fake.Successes(biotfake.EndpointLogin)
	if failedLogins != 1 {
		t.Errorf("failed login calls = %d over %d refused reads, want 1: a refused password is held, not retried", failedLogins, after.attempted.Load())
	}
	if before.failed.Load() != 0 {
		t.Errorf("%d reads failed while the token was still valid: %v", before.failed.Load(), before.errors())
	}

	// The operator writes the new password; reads succeed again.
	if _, err := v.Client.Logical().Write(mount+"/config", map[string]any{"password": newPassword}); err != nil {
		t.Fatalf("writing the new password: %v", err)
	}
	var fixed readStats
	burst(c, mount, 10, &fixed, nil)
	all := readStats{}
	all.attempted.Store(before.attempted.Load() + after.attempted.Load() + fixed.attempted.Load())
	all.ok.Store(before.ok.Load() + after.ok.Load() + fixed.ok.Load())
	all.failed.Store(before.failed.Load() + after.failed.Load() + fixed.failed.Load())
	all.figure("password_changed", fake, fmt.Sprintf("refused_reads=%d failed_logins=%d reads_after_fix_ok=%d/%d",
		after.failed.Load(), failedLogins, fixed.ok.Load(), fixed.attempted.Load())).print(t)
	if fixed.failed.Load() != 0 {
		t.Errorf("after writing the new password %d of %d reads failed: %v", fixed.failed.Load(), fixed.attempted.Load(), fixed.errors())
	}
	if logins, _ := upstream(fake); logins != 3 {
		t.Errorf("login calls = %d, want 3: the first, one refused, one with the new password", logins)
	}
}

// scenarioRefused: BioT refuses to log in for reasons a machine cannot fix
// (user or service user locked, MFA required, password reset required). A
// config write with verify_connection and a read each fail with an error
// naming BioT's code or the condition, after one BioT call.
func scenarioRefused(t *testing.T, v *vaulttest.Vault, mount string) {
	fake := newFake(t, biotfake.Options{})
	v.Enable(t, mount)
	user := with(vaulttest.UserConfig(fake), "request_timeout", "5s")
	service := with(vaulttest.ServiceConfig(fake), "request_timeout", "5s")
	cases := []struct {
		name  string
		ep    biotfake.Endpoint
		fault biotfake.Fault
		cfg   map[string]any
		want  string
	}{
		{"user_locked", biotfake.EndpointLogin, biotfake.Fault{Status: http.StatusUnauthorized, Code: "USER_LOCKED_WITH_TIME"}, user, "USER_LOCKED_WITH_TIME"},
		{"mfa_required", biotfake.EndpointLogin, biotfake.Fault{MFARequired: true}, user, "multi-factor authentication"},
		{"password_reset_required", biotfake.EndpointLogin, biotfake.Fault{PasswordResetRequired: true}, user, "password reset"},
		{"service_locked", biotfake.EndpointServiceLogin, biotfake.Fault{Status: http.StatusUnauthorized}, service, "SERVICE_LOCKED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var st readStats // here: one config write, one read
			calls := func() int64 { return fake.Calls(tc.ep) }
			logins0, refreshes0 := upstream(fake)
			prev, err := v.Client.Logical().Read(mount + "/config")
			if err != nil {
				t.Fatal(err)
			}

			// A verifying config write.
			f := tc.fault
			f.Times = 1
			fake.Inject(tc.ep, f)
			n := calls()
			_, err = v.Client.Logical().Write(mount+"/config", with(tc.cfg, "verify_connection", true))
			st.record(err, 0)
			switch {
			case err == nil:
				t.Errorf("config write succeeded although BioT refused the login (%s)", tc.name)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("config write error does not name %q: %v", tc.want, err)
			case statusOf(err) != http.StatusBadRequest:
				t.Errorf("config write status %d, want 400", statusOf(err))
			default:
				t.Logf("config write: %v", err)
			}
			if got := calls() - n; got != 1 {
				t.Errorf("the config write made %d %s calls, want 1 (a refusal is not retried)", got, tc.ep)
			}
			if now, err := v.Client.Logical().Read(mount + "/config"); err != nil || fmt.Sprint(dataOf(now)) != fmt.Sprint(dataOf(prev)) {
				t.Errorf("a rejected config write changed the stored config: %v -> %v (%v)", dataOf(prev), dataOf(now), err)
			}

			// A read with a stored, unverified config.
			v.WriteConfig(t, mount, with(tc.cfg, "verify_connection", false))
			fake.Inject(tc.ep, f)
			n = calls()
			_, d, err := readCreds(v.Client, mount)
			st.record(err, d)
			switch {
			case err == nil:
				t.Errorf("creds read succeeded although BioT refused the login (%s)", tc.name)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("creds read error does not name %q: %v", tc.want, err)
			case statusOf(err) != http.StatusBadGateway:
				t.Errorf("creds read status %d, want 502", statusOf(err))
			default:
				t.Logf("creds read: %v", err)
			}
			if got := calls() - n; got != 1 {
				t.Errorf("the read made %d %s calls, want 1", got, tc.ep)
			}
			logins, refreshes := upstream(fake)
			fig := st.figure("refused."+tc.name, nil, "want="+strings.ReplaceAll(tc.want, " ", "_"))
			fig.logins, fig.refreshes = logins-logins0, refreshes-refreshes0
			fig.print(t)
		})
	}
}

// dataOf is a secret's data, or nil.
func dataOf(s *api.Secret) map[string]any {
	if s == nil {
		return nil
	}
	return s.Data
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
