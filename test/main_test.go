// Package e2e drives a real Vault server (and Vault Agent) with the real
// plugin binary against an in-process BioT stand-in (internal/biotfake).
//
// Vault comes from $VAULT_BIN or scripts/vault.sh (which builds the pinned
// Vault once); the plugin is built afresh by TestMain. These tests never
// skip: without Vault they fail and say how to get it.
package e2e

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// env is the Vault binary and plugin shared by every test.
var env *vaulttest.Env

func TestMain(m *testing.M) {
	os.Exit(vaulttest.Main(m, &env))
}

// newFake starts an HTTPS BioT stand-in, closed at cleanup.
func newFake(t testing.TB, opts biotfake.Options) *biotfake.Server {
	t.Helper()
	srv := biotfake.NewTLSServer(opts)
	t.Cleanup(srv.Close)
	return srv
}

// statusOf is the HTTP status of a Vault API error, or 0.
func statusOf(err error) int {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// str returns data[key] as a string, failing the test if it is not one.
func str(t testing.TB, data map[string]any, key string) string {
	t.Helper()
	v, ok := data[key].(string)
	if !ok {
		t.Fatalf("data[%q] = %#v (%T), want a string; data keys %v", key, data[key], data[key], keys(data))
	}
	return v
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// checkCreds asserts what every biot/creds answer must satisfy and returns
// the access token.
func checkCreds(t testing.TB, fake *biotfake.Server, s *api.Secret, mount string, user bool) string {
	t.Helper()
	if !strings.HasPrefix(s.LeaseID, mount+"/creds/") {
		t.Errorf("lease_id = %q, want prefix %s/creds/", s.LeaseID, mount)
	}
	if s.Renewable {
		t.Error("renewable = true, want false: a BioT token cannot be extended")
	}
	expiresAt, err := time.Parse(time.RFC3339, str(t, s.Data, "expires_at"))
	if err != nil {
		t.Fatalf("expires_at: %v", err)
	}
	if expiresAt.Location() != time.UTC {
		t.Errorf("expires_at = %q, want UTC", s.Data["expires_at"])
	}
	left := time.Until(expiresAt)
	if s.LeaseDuration <= 0 || float64(s.LeaseDuration) > left.Seconds() {
		t.Errorf("lease_duration = %ds, want > 0 and <= %.1fs left until expires_at %s", s.LeaseDuration, left.Seconds(), expiresAt)
	}
	tok := str(t, s.Data, "access_token")
	if !fake.AccessTokenValid(tok) {
		t.Errorf("access_token is not a valid BioT access token (per the fake)")
	}
	if got := str(t, s.Data, "token_type"); got != "Bearer" {
		t.Errorf("token_type = %q, want Bearer", got)
	}
	if user {
		if str(t, s.Data, "user_id") == "" {
			t.Error("user_id is empty")
		}
		if got := str(t, s.Data, "organization_id"); got != fake.OrganizationID() {
			t.Errorf("organization_id = %q, want the fake's %q", got, fake.OrganizationID())
		}
	} else {
		for _, k := range []string{"user_id", "organization_id"} {
			if _, ok := s.Data[k]; ok {
				t.Errorf("service-user creds carry %s = %v; want none", k, s.Data[k])
			}
		}
	}
	for k := range s.Data {
		switch k {
		case "access_token", "token_type", "expires_at", "user_id", "organization_id":
		default:
			t.Errorf("creds carry unexpected field %q", k)
		}
	}
	return tok
}

func writeTestFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startConfiguredServer starts a file-storage Vault, initialises and unseals
// it, registers the plugin and enables it at biot/ configured with cfg.
func startConfiguredServer(t *testing.T, cfg map[string]any) *vaulttest.Vault {
	t.Helper()
	v := env.StartServer(t)
	v.Init(t)
	v.Unseal(t)
	v.Register(t)
	v.Enable(t, "biot")
	v.WriteConfig(t, "biot", cfg)
	return v
}
