package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// TestServiceUser configures the engine with a BioT service user (BioT's
// machine identity) and, on a second mount, a user on a plain-HTTP loopback
// BioT.
func TestServiceUser(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{})
	v := env.StartDevWithPlugin(t, "biot")
	c := v.Client

	t.Run("wrong secret key", func(t *testing.T) {
		cfg := vaulttest.ServiceConfig(fake)
		cfg["secret_key"] = "not-the-secret-4711"
		_, err := c.Logical().Write("biot/config", cfg)
		if err == nil || !strings.Contains(err.Error(), "LOGIN_FAILED") || statusOf(err) != http.StatusBadRequest {
			t.Errorf("config with a wrong secret key: %v; want a 400 carrying LOGIN_FAILED", err)
		}
		if err != nil && strings.Contains(err.Error(), "not-the-secret-4711") {
			t.Error("the error repeats the secret key")
		}
	})

	t.Run("creds", func(t *testing.T) {
		v.WriteConfig(t, "biot", vaulttest.ServiceConfig(fake))
		s, err := c.Logical().Read("biot/config")
		if err != nil || s == nil {
			t.Fatalf("reading biot/config: %v", err)
		}
		if s.Data["service_id"] != biotfake.DemoServiceID {
			t.Errorf("config service_id = %v, want %s", s.Data["service_id"], biotfake.DemoServiceID)
		}
		for k, val := range s.Data {
			if k == "secret_key" || k == "username" || k == "password" || val == biotfake.DemoServiceSecret {
				t.Errorf("config read returns %q", k)
			}
		}

		checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", false)
		if n := fake.Successes(biotfake.EndpointServiceLogin); n != 1 {
			t.Errorf("successful service logins = %d, want 1 (the verification, reused by the read)", n)
		}
		if n := fake.Calls(biotfake.EndpointLogin) + fake.Calls(biotfake.EndpointRefresh); n != 0 {
			t.Errorf("user login/refresh calls = %d, want 0 for a service user", n)
		}
	})

	t.Run("plain http on loopback", func(t *testing.T) {
		plain := biotfake.NewServer(biotfake.Options{})
		t.Cleanup(plain.Close)
		v.Enable(t, "biot-http")
		v.WriteConfig(t, "biot-http", vaulttest.UserConfig(plain))
		checkCreds(t, plain, v.ReadCreds(t, "biot-http"), "biot-http", true)
	})
}
