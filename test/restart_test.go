package e2e

import (
	"testing"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// TestRestartKeepsTokens restarts a Vault server with file storage: after
// the restart and unseal, creds are served from the token pair the engine
// stored, without logging in to BioT again.
func TestRestartKeepsTokens(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{}) // 5-minute tokens: nothing falls due during the test
	v := startConfiguredServer(t, vaulttest.UserConfig(fake))
	before := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	logins := fake.Calls(biotfake.EndpointLogin)

	v.Restart(t)
	v.Unseal(t)

	mounts, err := v.Client.Sys().ListMounts()
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts["biot/"]; m == nil || m.RunningVersion != env.Plugin.Version {
		t.Fatalf("after restart biot/ mount = %+v, want running version %s", m, env.Plugin.Version)
	}
	after := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	if n := fake.Calls(biotfake.EndpointLogin); n != logins {
		t.Errorf("login calls went from %d to %d across the restart; want none: the stored token pair should be reused", logins, n)
	}
	if after != before {
		t.Errorf("the access token changed across the restart although it was far from expiry; want the stored one")
	}
}

// TestRestartAfterTokenExpired keeps Vault down until the cached access token
// has expired: after the restart the engine renews it with the stored refresh
// token, still without sending the password.
func TestRestartAfterTokenExpired(t *testing.T) {
	t.Parallel()
	const accessTTL = 8 * time.Second
	fake := newFake(t, biotfake.Options{AccessTTL: accessTTL})
	v := startConfiguredServer(t, vaulttest.UserConfig(fake))
	before := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	logins := fake.Calls(biotfake.EndpointLogin)

	v.Stop(t)
	for fake.AccessTokenValid(before) {
		time.Sleep(250 * time.Millisecond)
	}
	refreshes := fake.Successes(biotfake.EndpointRefresh)
	v.Start(t)
	v.Unseal(t)

	after := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	if after == before {
		t.Error("creds after the restart returned the expired token")
	}
	if n := fake.Calls(biotfake.EndpointLogin); n != logins {
		t.Errorf("login calls went from %d to %d across the restart; want none: the stored refresh token should be used", logins, n)
	}
	if n := fake.Successes(biotfake.EndpointRefresh); n <= refreshes {
		t.Errorf("successful refreshes stayed at %d across the restart; want the stored refresh token used", n)
	}
}
