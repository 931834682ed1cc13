package biot

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

func TestRefreshAtOneThirdLeft(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 30 * time.Minute, refreshTTL: 2 * time.Hour})
	e.writeConfig(e.userConfig())
	first := accessToken(e.creds(e.b))

	// Just before the one-third point: no refresh, even in the background.
	e.clock.Advance(20*time.Minute - time.Second)
	e.b.sess.Load().refreshIfDue()
	if got := accessToken(e.creds(e.b)); got != first || e.fake.Calls(biotfake.EndpointRefresh) != 0 {
		t.Fatalf("refreshed before the one-third point (refreshes=%d)", e.fake.Calls(biotfake.EndpointRefresh))
	}

	// At the point: the read returns the current token at once and starts
	// one background refresh; the next reads get the new token.
	e.clock.Advance(time.Second)
	if got := accessToken(e.creds(e.b)); got != first {
		t.Fatal("a due but valid token was not returned at once")
	}
	waitFor(t, "the background refresh", func() bool { return accessToken(e.creds(e.b)) != first })
	if r, l := e.fake.Calls(biotfake.EndpointRefresh), e.fake.Calls(biotfake.EndpointLogin); r != 1 || l != 1 {
		t.Fatalf("refreshes=%d logins=%d, want 1 and 1", r, l)
	}
	second := accessToken(e.creds(e.b))
	if !e.fake.AccessTokenValid(second) {
		t.Fatal("refreshed token not valid")
	}

	// The background refresh (timer or periodic hook) keeps the pair alive
	// without readers, well past the refresh token's own lifetime.
	for range 12 {
		e.clock.Advance(20 * time.Minute)
		if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
			t.Fatal(err)
		}
	}
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 1 {
		t.Fatalf("logins = %d after 4 hours of refreshes, want 1", l)
	}
	if !e.fake.AccessTokenValid(accessToken(e.creds(e.b))) {
		t.Fatal("token not valid after background refreshes")
	}
}

func TestRefreshRejectedFallsBackToLogin(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	first := accessToken(e.creds(e.b))

	e.fake.RevokeAllRefreshTokens()
	e.clock.Advance(4 * time.Minute)
	e.b.sess.Load().refreshIfDue()
	if r, l := e.fake.Calls(biotfake.EndpointRefresh), e.fake.Calls(biotfake.EndpointLogin); r != 1 || l != 2 {
		t.Fatalf("refreshes=%d logins=%d, want 1 rejected refresh and exactly one more login", r, l)
	}
	if got := accessToken(e.creds(e.b)); got == first || !e.fake.AccessTokenValid(got) {
		t.Fatal("no new valid token after the fallback login")
	}
}

func TestExpiredRefreshTokenLogsInWithoutTryingIt(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute, refreshTTL: 10 * time.Minute})
	e.writeConfig(e.userConfig())
	e.creds(e.b)
	e.clock.Advance(11 * time.Minute)
	e.creds(e.b)
	if r, l := e.fake.Calls(biotfake.EndpointRefresh), e.fake.Calls(biotfake.EndpointLogin); r != 0 || l != 2 {
		t.Fatalf("refreshes=%d logins=%d, want 0 and 2", r, l)
	}
}

func TestRestartReusesPersistedToken(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	tok := accessToken(e.creds(e.b))
	e.b.Cleanup(t.Context())

	b2 := e.newBackend()
	if err := b2.Initialize(t.Context(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if got := accessToken(e.creds(b2)); got != tok {
		t.Fatal("restarted backend did not serve the persisted token")
	}
	// Due after the restart: refreshed with the persisted refresh token.
	e.clock.Advance(4 * time.Minute)
	b2.sess.Load().refreshIfDue()
	if l, r := e.fake.Calls(biotfake.EndpointLogin), e.fake.Calls(biotfake.EndpointRefresh); l != 1 || r != 1 {
		t.Fatalf("logins=%d refreshes=%d, want 1 and 1", l, r)
	}
	// And the rotated pair was persisted: a third instance refreshes with it.
	e.clock.Advance(4 * time.Minute)
	b3 := e.newBackend()
	e.creds(b3)
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 1 {
		t.Fatalf("logins = %d, want 1", l)
	}
}

func TestUnusableLogins(t *testing.T) {
	cases := []struct {
		name  string
		fault biotfake.Fault
		want  []string
	}{
		{"mfa", biotfake.Fault{MFARequired: true}, []string{"multi-factor", "service user"}},
		{"password reset", biotfake.Fault{PasswordResetRequired: true}, []string{"password reset", "service user"}},
		{"locked", biotfake.Fault{Status: 401, Code: "USER_LOCKED_WITH_TIME", Details: map[string]any{"minutesLeft": 5}}, []string{"USER_LOCKED_WITH_TIME (401)", "traceId"}},
		{"malformed", biotfake.Fault{Malformed: true}, []string{"not the JSON BioT documents"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, envOptions{})
			e.fake.Inject(biotfake.EndpointLogin, tc.fault)
			resp, err := e.request(e.b, logical.CreateOperation, "config", e.userConfig())
			if err != nil || !resp.IsError() {
				t.Fatalf("want an error response, got %v %v", resp, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(resp.Error().Error(), w) {
					t.Fatalf("error %q lacks %q", resp.Error(), w)
				}
			}
		})
	}
}

func TestRejectedLoginIsNotRepeated(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	e.fake.SetPassword(biotfake.DemoUsername, "changed-at-biot")
	e.fake.RevokeAllRefreshTokens()
	e.clock.Advance(10 * time.Minute)

	for range 10 {
		_, err := e.request(e.b, logical.ReadOperation, "creds", nil)
		if err == nil || !strings.Contains(err.Error(), "LOGIN_FAILED") {
			t.Fatalf("want LOGIN_FAILED, got %v", err)
		}
		if code := httpStatus(err); code != 502 {
			t.Fatalf("status %d, want 502", code)
		}
	}
	// Ten reads, one failed login: a wrong password must not lock the user.
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 2 {
		t.Fatalf("logins = %d, want 2 (config write + one refused)", l)
	}
	e.b.sess.Load().refreshIfDue() // the background leaves BioT alone too
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 2 {
		t.Fatalf("background retried a refused login: logins = %d", l)
	}

	// After the hold, reads try again; a config write retries at once.
	e.clock.Advance(rejectionHold)
	_, _ = e.request(e.b, logical.ReadOperation, "creds", nil)
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 3 {
		t.Fatalf("logins = %d after the hold, want 3", l)
	}
	e.writeConfig(map[string]any{"password": "changed-at-biot"})
	e.creds(e.b)
}

func TestTransientFailuresRetried(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Status: 504, Code: "GATEWAY_TIMEOUT", Times: 1})
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Status: 500, Code: "INTERNAL_SERVER_ERROR", Times: 1})
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Status: 429, Code: "TOO_MANY_REQUESTS", RetryAfter: "0", Times: 1})
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Reset: true, Times: 1})
	e.clock.Advance(6 * time.Minute) // expired: the read must wait for the refresh
	e.creds(e.b)
	if r, s := e.fake.Calls(biotfake.EndpointRefresh), e.fake.Successes(biotfake.EndpointRefresh); r != 5 || s != 1 {
		t.Fatalf("refresh calls=%d successes=%d, want 5 and 1", r, s)
	}
	if l := e.fake.Calls(biotfake.EndpointLogin); l != 1 {
		t.Fatalf("a transient failure caused a login: logins=%d", l)
	}
}

func TestSlowBioTTimesOut(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	data := e.userConfig()
	data["request_timeout"] = "1s"
	e.writeConfig(data)
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Delay: 10 * time.Second})
	e.clock.Advance(6 * time.Minute)
	began := time.Now()
	_, err := e.request(e.b, logical.ReadOperation, "creds", nil)
	if err == nil || !strings.Contains(err.Error(), "request timeout") {
		t.Fatalf("want a timeout error, got %v", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("took %v with request_timeout=1s", took)
	}
	if code := httpStatus(err); code != 504 {
		t.Fatalf("status %d, want 504", code)
	}
}

func TestDueTokenReadsStartOneRefresh(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	cfg := e.userConfig()
	cfg["request_timeout"] = "5s"
	e.writeConfig(cfg)
	tok := accessToken(e.creds(e.b))
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Delay: 3 * time.Second, Times: 1})
	e.clock.Advance(4 * time.Minute)
	for range 500 {
		if accessToken(e.creds(e.b)) != tok {
			t.Fatal("a due token was not served while its refresh ran")
		}
	}
	waitFor(t, "the refresh", func() bool { return accessToken(e.creds(e.b)) != tok })
	if r := e.fake.Calls(biotfake.EndpointRefresh); r != 1 {
		t.Fatalf("500 reads of a due token caused %d refreshes, want 1", r)
	}

	// A failed background refresh holds further read-started ones back.
	tok = accessToken(e.creds(e.b))
	e.fake.Inject(biotfake.EndpointRefresh, biotfake.Fault{Status: 503, Code: "SERVICE_UNAVAILABLE"})
	e.clock.Advance(4 * time.Minute)
	e.creds(e.b)
	waitFor(t, "the failed refresh", func() bool { return strings.Contains(e.logs.String(), "could not renew") })
	calls := e.fake.Calls(biotfake.EndpointRefresh)
	for range 100 {
		if accessToken(e.creds(e.b)) != tok {
			t.Fatal("the valid token was not served after a failed refresh")
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := e.fake.Calls(biotfake.EndpointRefresh); n != calls {
		t.Fatalf("reads retried at once after a failed refresh: refresh calls %d -> %d", calls, n)
	}
	if e.fake.Calls(biotfake.EndpointLogin) != 1 {
		t.Fatal("a transient refresh failure caused a login")
	}
}
