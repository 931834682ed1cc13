package e2e

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// TestPluginLifecycle walks one dev server through what an operator and
// clients do, in order: register, enable, configure (wrong then right
// password), read creds, read help and OpenAPI, use a read-only policy,
// revoke leases, and disable the mount while BioT is down. The CLI is used
// where the README tells people to use it.
func TestPluginLifecycle(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{})
	v := env.StartDev(t)
	p := env.Plugin
	c := v.Client
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow() // later steps build on this one
		}
	}

	step("register", func(t *testing.T) {
		if _, err := c.Sys().GetPlugin(&api.GetPluginInput{Name: p.Name, Type: api.PluginTypeSecrets, Version: p.Version}); err == nil {
			t.Fatal("plugin is in the catalog before registration; the test would prove nothing")
		}

		// Vault runs the plugin and refuses a version it does not report.
		_, err := v.CLI(t, "plugin", "register", "-sha256="+p.SHA256, "-version=v9.9.9", "-command="+p.Command, "secret", p.Name)
		if err == nil || !strings.Contains(err.Error(), "v9.9.9") || !strings.Contains(err.Error(), p.Version) {
			t.Errorf("registering as v9.9.9: error %v, want a version mismatch naming v9.9.9 and %s", err, p.Version)
		}

		out := v.MustCLI(t, "plugin", "register", "-sha256="+p.SHA256, "-version="+p.Version, "-command="+p.Command, "secret", p.Name)
		if !strings.Contains(out, "Success! Registered plugin: "+p.Name) {
			t.Errorf("vault plugin register printed %q", out)
		}

		got, err := c.Sys().GetPlugin(&api.GetPluginInput{Name: p.Name, Type: api.PluginTypeSecrets, Version: p.Version})
		if err != nil {
			t.Fatalf("reading sys/plugins/catalog/secret/%s?version=%s: %v", p.Name, p.Version, err)
		}
		if got.Version != p.Version || got.SHA256 != p.SHA256 || got.Command != p.Command || got.Builtin {
			t.Errorf("catalog entry = %+v, want version %s, sha256 %s, command %s, not builtin", got, p.Version, p.SHA256, p.Command)
		}

		list := v.MustCLI(t, "plugin", "list", "-detailed", "secret")
		found := false
		for _, line := range strings.Split(list, "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == p.Name && f[1] == "secret" && f[2] == p.Version {
				found = true
			}
		}
		if !found {
			t.Errorf("vault plugin list -detailed secret has no %q line with version %s:\n%s", p.Name, p.Version, list)
		}
	})

	step("enable", func(t *testing.T) {
		out := v.MustCLI(t, "secrets", "enable", "-path=biot", "-plugin-version="+p.Version, p.Name)
		if !strings.Contains(out, "Success!") || !strings.Contains(out, p.Version) {
			t.Errorf("vault secrets enable printed %q", out)
		}
		mounts, err := c.Sys().ListMounts()
		if err != nil {
			t.Fatal(err)
		}
		m := mounts["biot/"]
		if m == nil {
			t.Fatalf("no biot/ mount after enable; mounts: %v", mounts)
		}
		if m.Type != p.Name || m.PluginVersion != p.Version || m.RunningVersion != p.Version || m.RunningSha256 != p.SHA256 {
			t.Errorf("biot/ mount: type %q plugin_version %q running_plugin_version %q running_sha256 %q; want %s, %s, %s, %s",
				m.Type, m.PluginVersion, m.RunningVersion, m.RunningSha256, p.Name, p.Version, p.Version, p.SHA256)
		}

		// Before any config, creds says what to do.
		_, err = c.Logical().Read("biot/creds")
		if err == nil || !strings.Contains(err.Error(), "biot/config") {
			t.Errorf("creds before config: error %v, want one pointing at biot/config", err)
		}
	})

	step("config rejects a wrong password", func(t *testing.T) {
		cfg := vaulttest.UserConfig(fake)
		cfg["password"] = "not-the-password-4711"
		_, err := c.Logical().Write("biot/config", cfg)
		if err == nil {
			t.Fatal("config with a wrong password was accepted")
		}
		if !strings.Contains(err.Error(), "LOGIN_FAILED") {
			t.Errorf("error %q does not carry BioT's LOGIN_FAILED", err)
		}
		if statusOf(err) != http.StatusBadRequest {
			t.Errorf("status %d, want 400", statusOf(err))
		}
		if strings.Contains(err.Error(), "not-the-password-4711") {
			t.Error("the error repeats the password")
		}
		if s, err := c.Logical().Read("biot/config"); err != nil || s != nil {
			t.Errorf("after a rejected write, config read = %v, %v; want nothing stored", s, err)
		}
		if n := fake.Calls(biotfake.EndpointLogin); n != 1 {
			t.Errorf("login calls = %d, want 1 (the verification)", n)
		}
	})

	step("config", func(t *testing.T) {
		caFile := filepath.Join(v.Dir, "biot-ca.pem")
		writeTestFile(t, caFile, fake.CACertPEM())
		// The way the README has it: ca_cert=@file.
		v.MustCLI(t, "write", "biot/config", "url="+fake.URL, "username="+biotfake.DemoUsername,
			"password="+biotfake.DemoPassword, "ca_cert=@"+caFile)
		s, err := c.Logical().Read("biot/config")
		if err != nil || s == nil {
			t.Fatalf("reading biot/config: %v, %v", s, err)
		}
		if s.Data["url"] != fake.URL || s.Data["username"] != biotfake.DemoUsername || s.Data["ca_cert"] != string(fake.CACertPEM()) {
			t.Errorf("config read = %v", s.Data)
		}
		for k, val := range s.Data {
			if k == "password" || val == biotfake.DemoPassword {
				t.Errorf("config read returns the password (field %q)", k)
			}
		}
	})

	var leaseID string
	step("creds", func(t *testing.T) {
		s := v.ReadCreds(t, "biot")
		tok := checkCreds(t, fake, s, "biot", true)
		leaseID = s.LeaseID
		if s.LeaseDuration < 200 {
			t.Errorf("lease_duration = %ds for a fresh 5-minute token, want most of it", s.LeaseDuration)
		}

		if _, err := c.Sys().Renew(s.LeaseID, 0); err == nil {
			t.Error("renewing a creds lease succeeded; BioT tokens are not renewable")
		}

		// Further reads are served from the cache: same token, no BioT call.
		logins := fake.Calls(biotfake.EndpointLogin)
		for range 5 {
			if got := str(t, v.ReadCreds(t, "biot").Data, "access_token"); got != tok {
				t.Error("a second read returned a different token; want the cached one")
			}
		}
		if n := fake.Calls(biotfake.EndpointLogin) + fake.Calls(biotfake.EndpointRefresh); n != logins {
			t.Errorf("BioT calls grew from %d to %d over 5 cached reads", logins, n)
		}
	})

	step("help and openapi", func(t *testing.T) {
		out := v.MustCLI(t, "path-help", "biot/creds")
		if !strings.Contains(out, "Get a BioT access token") {
			t.Errorf("vault path-help biot/creds:\n%s", out)
		}
		h, err := c.Help("biot/creds")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(h.Help, "Get a BioT access token") {
			t.Errorf("help for biot/creds = %q", h.Help)
		}
		h, err = c.Help("biot/config")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(h.Help, "service_id") {
			t.Errorf("help for biot/config does not mention service_id: %q", h.Help)
		}

		s, err := c.Logical().Read("sys/internal/specs/openapi")
		if err != nil || s == nil {
			t.Fatalf("reading the OpenAPI document: %v", err)
		}
		paths, _ := s.Data["paths"].(map[string]any)
		want := map[string]map[string]string{
			"/biot/creds":  {"get": "biot-generate-credentials"},
			"/biot/config": {"get": "biot-read-configuration", "post": "biot-configure", "delete": "biot-delete-configuration"},
		}
		for path, ops := range want {
			item, ok := paths[path].(map[string]any)
			if !ok {
				t.Errorf("OpenAPI has no path %s", path)
				continue
			}
			for method, id := range ops {
				op, _ := item[method].(map[string]any)
				if op["operationId"] != id {
					t.Errorf("OpenAPI %s %s operationId = %v, want %s", method, path, op["operationId"], id)
				}
			}
		}
	})

	step("read-only policy", func(t *testing.T) {
		if err := c.Sys().PutPolicy("biot-reader", `path "biot/creds" { capabilities = ["read"] }`); err != nil {
			t.Fatal(err)
		}
		tok, err := c.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"biot-reader"}, TTL: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		rc := v.NewClient(tok.Auth.ClientToken)
		s, err := rc.Logical().Read("biot/creds")
		if err != nil || s == nil {
			t.Fatalf("reading creds with the read-only token: %v", err)
		}
		checkCreds(t, fake, s, "biot", true)
		if _, err := rc.Logical().Read("biot/config"); statusOf(err) != http.StatusForbidden {
			t.Errorf("reading config with the read-only token: %v, want 403", err)
		}
		if _, err := rc.Logical().Write("biot/config", vaulttest.UserConfig(fake)); statusOf(err) != http.StatusForbidden {
			t.Errorf("writing config with the read-only token: %v, want 403", err)
		}
	})

	step("revoke-prefix", func(t *testing.T) {
		if _, err := c.Sys().Lookup(leaseID); err != nil {
			t.Fatalf("looking up lease %s before revocation: %v", leaseID, err)
		}
		if _, err := c.Logical().Write("sys/leases/revoke-prefix/biot/creds", nil); err != nil {
			t.Fatalf("revoke-prefix biot/creds: %v", err)
		}
		if _, err := c.Sys().Lookup(leaseID); err == nil {
			t.Errorf("lease %s still exists after revoke-prefix", leaseID)
		}
		// Revoking leases does not break the engine.
		checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	})

	step("disable with BioT down", func(t *testing.T) {
		lease := v.ReadCreds(t, "biot").LeaseID // outstanding at disable
		fake.Stop()
		start := time.Now()
		v.MustCLI(t, "secrets", "disable", "biot")
		t.Logf("disabled in %s with BioT stopped", time.Since(start).Round(time.Millisecond))
		mounts, err := c.Sys().ListMounts()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := mounts["biot/"]; ok {
			t.Error("biot/ still mounted after disable")
		}
		if _, err := c.Sys().Lookup(lease); err == nil {
			t.Errorf("lease %s survived disabling the mount", lease)
		}
	})
}
