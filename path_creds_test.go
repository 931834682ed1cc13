package biot

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

func TestCredsFieldsAndLease(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	resp := e.creds(e.b)

	tok := accessToken(resp)
	if !e.fake.AccessTokenValid(tok) {
		t.Fatal("creds returned a token BioT does not accept")
	}
	if resp.Data["token_type"] != "Bearer" {
		t.Fatalf("token_type = %v", resp.Data["token_type"])
	}
	exp, err := time.Parse(time.RFC3339, resp.Data["expires_at"].(string))
	if err != nil {
		t.Fatalf("expires_at: %v", err)
	}
	if want := e.clock.Now().Add(5 * time.Minute); exp.Sub(want).Abs() > time.Second {
		t.Fatalf("expires_at = %v, want about %v", exp, want)
	}
	if exp.Location() != time.UTC || !strings.HasSuffix(resp.Data["expires_at"].(string), "Z") {
		t.Fatalf("expires_at not UTC: %v", resp.Data["expires_at"])
	}
	if resp.Data["user_id"] == "" || resp.Data["organization_id"] != e.fake.OrganizationID() {
		t.Fatalf("user_id/organization_id = %v/%v", resp.Data["user_id"], resp.Data["organization_id"])
	}
	if _, ok := resp.Data["refresh_token"]; ok {
		t.Fatal("creds hand out the refresh token")
	}
	for k, v := range resp.Secret.InternalData {
		if s, _ := v.(string); strings.Contains(s, ".") && len(s) > 40 {
			t.Fatalf("lease internal data holds a token in %s", k)
		}
	}

	s := resp.Secret
	if s.Renewable {
		t.Fatal("lease is renewable")
	}
	// 5 minutes of life, minus a 5 s skew.
	if s.TTL != 295*time.Second {
		t.Fatalf("lease TTL = %v, want 4m55s", s.TTL)
	}
	if until := exp.Sub(e.clock.Now()); s.TTL >= until {
		t.Fatalf("lease TTL %v does not end before the token (%v)", s.TTL, until)
	}

	// Later reads get the same token with a shorter lease.
	e.clock.Advance(time.Minute)
	resp2 := e.creds(e.b)
	if accessToken(resp2) != tok || resp2.Secret.TTL != 235*time.Second {
		t.Fatalf("second read: same=%v ttl=%v", accessToken(resp2) == tok, resp2.Secret.TTL)
	}
}

func TestCredsLeaseCappedByMountMax(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: time.Hour, refreshTTL: 2 * time.Hour, maxLeaseTTL: time.Minute})
	e.writeConfig(e.userConfig())
	if ttl := e.creds(e.b).Secret.TTL; ttl != time.Minute {
		t.Fatalf("lease TTL = %v, want the mount max 1m", ttl)
	}
}

func TestCredsWithoutConfig(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	resp, err := e.request(e.b, logical.ReadOperation, "creds", nil)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "biot/config") {
		t.Fatalf("want a 400 naming biot/config, got %v %v", resp, err)
	}
}

func TestCredsRenewRefusedRevokeSucceeds(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	resp := e.creds(e.b)
	calls := e.fake.Calls(biotfake.EndpointLogout)
	e.fake.Stop() // revoking must not need BioT

	renew, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.RenewOperation, Storage: e.storage, Secret: resp.Secret, Data: resp.Data,
	})
	if err == nil && !renew.IsError() {
		t.Fatalf("renew succeeded: %v", renew)
	}
	revoke, err := e.b.HandleRequest(t.Context(), &logical.Request{
		Operation: logical.RevokeOperation, Storage: e.storage, Secret: resp.Secret, Data: resp.Data,
	})
	if err != nil || revoke.IsError() {
		t.Fatalf("revoke: %v %v", revoke, err)
	}
	if e.fake.Calls(biotfake.EndpointLogout) != calls {
		t.Fatal("revoke called BioT")
	}
	// The shared token is still served to others.
	if accessToken(e.creds(e.b)) != accessToken(resp) {
		t.Fatal("revoke dropped the shared token")
	}
}

func TestCredsServiceUser(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 10 * time.Minute})
	e.writeConfig(e.serviceConfig())
	resp := e.creds(e.b)
	if !e.fake.AccessTokenValid(accessToken(resp)) {
		t.Fatal("service token not accepted by BioT")
	}
	if _, ok := resp.Data["user_id"]; ok {
		t.Fatal("service creds carry user_id")
	}
	if n := e.fake.Calls(biotfake.EndpointServiceLogin); n != 1 {
		t.Fatalf("service logins = %d, want 1 (the verification seeds the cache)", n)
	}
	// Service users have no refresh token: past the one-third point, log in again.
	e.clock.Advance(7 * time.Minute)
	e.b.sess.Load().refreshIfDue()
	if n := e.fake.Calls(biotfake.EndpointServiceLogin); n != 2 {
		t.Fatalf("service logins = %d, want 2", n)
	}
	if e.fake.Calls(biotfake.EndpointRefresh) != 0 || e.fake.Calls(biotfake.EndpointLogin) != 0 {
		t.Fatal("service user used the user endpoints")
	}
	if accessToken(e.creds(e.b)) == accessToken(resp) {
		t.Fatal("token not replaced")
	}
}

func TestCredsConcurrentColdCacheOneLogin(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	data := e.userConfig()
	data["verify_connection"] = false // leave the cache cold
	e.writeConfig(data)
	// A fresh backend, as after a restart with nothing cached: the session
	// must be loaded and the token fetched once for all.
	b := e.newBackend()

	const n = 1000
	tokens := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			resp, err := e.request(b, logical.ReadOperation, "creds", nil)
			if err == nil && resp.IsError() {
				err = resp.Error()
			}
			if err == nil {
				tokens[i] = accessToken(resp)
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if tokens[i] != tokens[0] {
			t.Fatalf("read %d got a different token", i)
		}
	}
	if got := e.fake.Calls(biotfake.EndpointLogin); got != 1 {
		t.Fatalf("logins = %d, want exactly 1", got)
	}
}

func TestCredsServedWhileBioTDown(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: 5 * time.Minute})
	e.writeConfig(e.userConfig())
	tok := accessToken(e.creds(e.b))
	e.fake.Stop()

	// Due for refresh (under a third left) but valid: served at once while the
	// background refresh fails.
	e.clock.Advance(4 * time.Minute)
	for range 20 {
		if got := accessToken(e.creds(e.b)); got != tok {
			t.Fatal("a different token while BioT is down")
		}
	}

	// Expired: the read fails, naming the cause, within request_timeout.
	e.writeConfig(map[string]any{"request_timeout": "1s", "verify_connection": false})
	e.clock.Advance(time.Minute)
	began := time.Now()
	_, err := e.request(e.b, logical.ReadOperation, "creds", nil)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("want a connection-refused error, got %v", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("failed read took %v with a 1s request_timeout", took)
	}
	if code := httpStatus(err); code != 504 && code != 502 {
		t.Fatalf("status %d, want 502 or 504", code)
	}

	// BioT back: the next read succeeds without a config change.
	e.fake.Start()
	if got := accessToken(e.creds(e.b)); got == tok || !e.fake.AccessTokenValid(got) {
		t.Fatal("no fresh valid token after BioT came back")
	}
}
