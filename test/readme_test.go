package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

// TestReadmeExamples runs the README's install steps with the vault CLI, word
// for word but for paths, then its CLI, HTTP API and Go examples.
func TestReadmeExamples(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{})
	v := env.StartDev(t)
	p := v.Plugin

	// "Install in your Vault"
	v.MustCLI(t, "plugin", "register", "-sha256="+p.SHA256, "-version="+p.Version,
		"-command=vault-plugin-secrets-biot", "secret", "vault-plugin-secrets-biot")
	v.MustCLI(t, "secrets", "enable", "-path=biot", "-plugin-version="+p.Version, "vault-plugin-secrets-biot")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, fake.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	v.MustCLI(t, "write", "biot/config", "url="+fake.URL, "username="+biotfake.DemoUsername,
		"password="+biotfake.DemoPassword, "ca_cert=@"+ca)
	out := v.MustCLI(t, "read", "biot/creds")
	for _, want := range []string{"lease_id", "biot/creds/", "lease_renewable", "false", "access_token", "expires_at", "token_type", "Bearer", "user_id", "organization_id"} {
		if !strings.Contains(out, want) {
			t.Errorf("vault read biot/creds output lacks %q:\n%s", want, out)
		}
	}

	// CLI: TOKEN=$(vault read -field=access_token biot/creds)
	tok := strings.TrimSpace(v.MustCLI(t, "read", "-field=access_token", "biot/creds"))
	if !fake.AccessTokenValid(tok) {
		t.Errorf("vault read -field=access_token printed %q, not a valid BioT token", tok)
	}
	// ... and the token works as a bearer at BioT.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fake.URL+biotfake.PathSelf, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if resp, err := fake.Client().Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /ums/v2/users/self with the token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// HTTP API: curl -H "X-Vault-Token: $VAULT_TOKEN" $VAULT_ADDR/v1/biot/creds
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, v.Addr+"/v1/biot/creds", nil)
	req.Header.Set("X-Vault-Token", v.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		LeaseID   string         `json:"lease_id"`
		Renewable bool           `json:"renewable"`
		Data      map[string]any `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/biot/creds: status %d, %v", resp.StatusCode, err)
	}
	if s, _ := body.Data["access_token"].(string); !fake.AccessTokenValid(s) || !strings.HasPrefix(body.LeaseID, "biot/creds/") || body.Renewable {
		t.Errorf("GET /v1/biot/creds: %+v", body)
	}

	// Go, with github.com/hashicorp/vault/api
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(v.Token)
	secret, err := client.Logical().Read("biot/creds")
	if err != nil {
		t.Fatal(err)
	}
	if s := secret.Data["access_token"].(string); !fake.AccessTokenValid(s) {
		t.Error("Go example: token not valid")
	}
	if n := fake.Calls(biotfake.EndpointLogin); n != 1 {
		t.Errorf("logins = %d, want 1 for the whole walk-through", n)
	}
}
