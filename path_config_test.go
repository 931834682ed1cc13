package biot

import (
	"maps"
	neturl "net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

func TestConfigValidation(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	before, err := e.request(e.b, logical.ReadOperation, "config", nil)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		change    map[string]any
		drop      []string
		wantField string
	}{
		{"missing url", nil, []string{"url"}, "url"},
		{"blank url", map[string]any{"url": "  "}, nil, "url"},
		{"relative url", map[string]any{"url": "/ums"}, nil, "url"},
		{"no scheme", map[string]any{"url": "api.example.biot-med.com"}, nil, "url"},
		{"http to a remote host", map[string]any{"url": "http://api.dev.example.biot-med.com"}, nil, "https"},
		{"ftp scheme", map[string]any{"url": "ftp://127.0.0.1"}, nil, "url"},
		{"credentials in url", map[string]any{"url": "https://u:p@api.example.com"}, nil, "url"},
		{"query in url", map[string]any{"url": "https://api.example.com/?x=1"}, nil, "url"},
		{"fragment in url", map[string]any{"url": "https://api.example.com/#x"}, nil, "url"},
		{"both identities", map[string]any{"service_id": biotfake.DemoServiceID, "secret_key": "k"}, nil, "service_id"},
		{"neither identity", nil, []string{"username", "password"}, "identity"},
		{"username without password", nil, []string{"password"}, "password"},
		{"password without username", nil, []string{"username"}, "username"},
		{"blank username", map[string]any{"username": "   "}, nil, "username"},
		{"service_id without secret_key", map[string]any{"service_id": biotfake.DemoServiceID}, []string{"username", "password"}, "secret_key"},
		{"secret_key without service_id", map[string]any{"secret_key": "k"}, []string{"username", "password"}, "service_id"},
		{"bad PEM", map[string]any{"ca_cert": "not a certificate"}, nil, "ca_cert"},
		{"PEM of a key", map[string]any{"ca_cert": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, nil, "ca_cert"},
		{"bad duration", map[string]any{"request_timeout": "soon"}, nil, "request_timeout"},
		{"negative duration", map[string]any{"request_timeout": "-5s"}, nil, "request_timeout"},
		{"zero duration", map[string]any{"request_timeout": 0}, nil, "request_timeout"},
		{"huge duration", map[string]any{"request_timeout": "10h"}, nil, "request_timeout"},
		{"bad bool", map[string]any{"verify_connection": "maybe"}, nil, "verify_connection"},
		{"unknown field", map[string]any{"pasword": "x"}, nil, "pasword"},
		{"oversized username", map[string]any{"username": strings.Repeat("u", 5000)}, nil, "username"},
		{"non-UTF-8 password", map[string]any{"password": "pa\xffss"}, nil, "password"},
		{"U+FFFD in url (what Vault makes of invalid UTF-8)", map[string]any{"url": "https://api.\uFFFD.example.com"}, nil, "url"},
		{"control character in username", map[string]any{"username": "a\x00b"}, nil, "username"},
		{"wrong type", map[string]any{"username": []any{"a", "b"}}, nil, "username"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := e.userConfig()
			maps.Copy(data, tc.change)
			for _, k := range tc.drop {
				delete(data, k)
			}
			// A create on fresh storage: nothing to merge with.
			fresh := &logical.InmemStorage{}
			resp, err := e.b.HandleRequest(t.Context(), &logical.Request{
				Operation: logical.CreateOperation, Path: "config", Data: data, Storage: fresh,
			})
			if err != nil {
				t.Fatalf("want a 400 response, got error %v", err)
			}
			if !resp.IsError() {
				t.Fatalf("want an error response, got %v", resp)
			}
			msg := resp.Error().Error()
			if !strings.Contains(msg, tc.wantField) {
				t.Fatalf("error %q does not name %q", msg, tc.wantField)
			}
			if code, _ := logical.RespondErrorCommon(&logical.Request{Operation: logical.UpdateOperation}, resp, nil); code != 400 {
				t.Fatalf("status %d, want 400", code)
			}
			// The same write as an update must not touch the stored config.
			_, _ = e.request(e.b, logical.UpdateOperation, "config", data)
			after, err := e.request(e.b, logical.ReadOperation, "config", nil)
			if err != nil || !reflect.DeepEqual(before.Data, after.Data) {
				t.Fatalf("stored config changed by a failed write: %v -> %v (%v)", before.Data, after.Data, err)
			}
		})
	}
	// A few of the writes above were valid as updates of a partial config
	// (e.g. dropping url keeps the stored url), so check the password is the
	// original one by logging in with it.
	e.clock.Advance(time.Hour)
	e.creds(e.b)
}

func TestConfigAcceptsLoopbackHTTPAndTrims(t *testing.T) {
	for _, raw := range []string{"http://127.0.0.1:8080/", "http://localhost:1", "http://[::1]:2", "https://api.dev.example.biot-med.com/"} {
		got, err := validateURL(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if strings.HasSuffix(got, "/") {
			t.Fatalf("%s: trailing slash kept: %s", raw, got)
		}
	}
}

func TestConfigReadNeverShowsSecrets(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	resp, err := e.request(e.b, logical.ReadOperation, "config", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"url": e.fake.URL, "username": biotfake.DemoUsername, "ca_cert": string(e.fake.CACertPEM()),
		"request_timeout": int64(30), "verify_connection": true,
	}
	if !reflect.DeepEqual(resp.Data, want) {
		t.Fatalf("config read = %v, want %v", resp.Data, want)
	}

	e.writeConfig(e.serviceConfig())
	resp, _ = e.request(e.b, logical.ReadOperation, "config", nil)
	if resp.Data["service_id"] != biotfake.DemoServiceID || resp.Data["username"] != nil {
		t.Fatalf("service config read = %v", resp.Data)
	}
	for k, v := range resp.Data {
		if s, _ := v.(string); strings.Contains(s, biotfake.DemoServiceSecret) || strings.Contains(s, biotfake.DemoPassword) {
			t.Fatalf("config read shows a secret in %s", k)
		}
	}
}

func TestConfigFailedVerificationKeepsOldConfig(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	tok := accessToken(e.creds(e.b))

	resp, err := e.request(e.b, logical.UpdateOperation, "config", map[string]any{"password": "Wr0ng-Pa55word"})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.IsError() || !strings.Contains(resp.Error().Error(), "LOGIN_FAILED (403)") {
		t.Fatalf("want LOGIN_FAILED, got %v", resp)
	}
	if strings.Contains(resp.Error().Error(), "Wr0ng-Pa55word") {
		t.Fatal("error repeats the password")
	}
	// The cached token is still served, and a new backend (restart) logs in
	// with the old, good password.
	if got := accessToken(e.creds(e.b)); got != tok {
		t.Fatal("a failed write dropped the cached token")
	}
	e.clock.Advance(2 * time.Hour)
	e.creds(e.newBackend())
}

func TestConfigUpdateKeepsUnnamedFieldsAndToken(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	tok := accessToken(e.creds(e.b))
	logins := e.fake.Calls(biotfake.EndpointLogin)

	e.writeConfig(map[string]any{"request_timeout": "20s"}) // verify_connection stays on
	if n := e.fake.Calls(biotfake.EndpointLogin); n != logins {
		t.Fatalf("a request_timeout change logged in: logins %d -> %d", logins, n)
	}
	if got := accessToken(e.creds(e.b)); got != tok {
		t.Fatal("a request_timeout change dropped the token")
	}
	e.writeConfig(map[string]any{"verify_connection": true}) // asked for by name
	if n := e.fake.Calls(biotfake.EndpointLogin); n != logins+1 {
		t.Fatalf("verify_connection=true did not log in: logins %d -> %d", logins, n)
	}
	tok = accessToken(e.creds(e.b))
	logins++
	e.writeConfig(map[string]any{"request_timeout": "10s", "verify_connection": false})
	resp, _ := e.request(e.b, logical.ReadOperation, "config", nil)
	if resp.Data["request_timeout"] != int64(10) || resp.Data["username"] != biotfake.DemoUsername || resp.Data["verify_connection"] != false {
		t.Fatalf("update lost fields: %v", resp.Data)
	}
	if got := accessToken(e.creds(e.b)); got != tok {
		t.Fatal("an update that changes neither URL nor identity dropped the token")
	}
	if n := e.fake.Calls(biotfake.EndpointLogin); n != logins {
		t.Fatalf("logins %d -> %d, want none", logins, n)
	}
	// The password stayed: after the token and refresh token lapse, a login works.
	e.clock.Advance(3 * time.Hour)
	e.creds(e.b)
}

func TestConfigIdentityChangeDropsTokenAndLogsOut(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	userTok := e.creds(e.b)
	refresh := e.b.sess.Load().tok.Load().RefreshToken

	e.writeConfig(map[string]any{"service_id": biotfake.DemoServiceID, "secret_key": biotfake.DemoServiceSecret})
	svcTok := e.creds(e.b)
	if accessToken(svcTok) == accessToken(userTok) {
		t.Fatal("identity change kept the old token")
	}
	if _, ok := svcTok.Data["user_id"]; ok {
		t.Fatal("service-user creds carry a user_id")
	}
	waitFor(t, "logout of the old session", func() bool { return !e.fake.RefreshTokenValid(refresh) })
	if e.fake.Calls(biotfake.EndpointLogout) != 1 {
		t.Fatalf("logouts = %d, want 1", e.fake.Calls(biotfake.EndpointLogout))
	}
}

func TestConfigWithoutVerification(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	data := e.userConfig()
	data["verify_connection"] = false
	data["password"] = "wrong"
	e.writeConfig(data)
	if n := e.fake.Calls(biotfake.EndpointLogin); n != 0 {
		t.Fatalf("verify_connection=false logged in %d times", n)
	}
	resp, err := e.request(e.b, logical.ReadOperation, "creds", nil)
	if err == nil || !strings.Contains(err.Error(), "LOGIN_FAILED") {
		t.Fatalf("want LOGIN_FAILED on read, got %v %v", resp, err)
	}
}

func TestConfigDeleteRemovesTokensAndLogsOut(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	e.creds(e.b)
	refresh := e.b.sess.Load().tok.Load().RefreshToken

	if _, err := e.request(e.b, logical.DeleteOperation, "config", nil); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{configStorageKey, tokenStorageKey} {
		if entry, _ := e.storage.Get(t.Context(), k); entry != nil {
			t.Fatalf("%s still stored after delete", k)
		}
	}
	resp, err := e.request(e.b, logical.ReadOperation, "creds", nil)
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "write biot/config") {
		t.Fatalf("creds after delete: %v %v", resp, err)
	}
	waitFor(t, "logout", func() bool { return !e.fake.RefreshTokenValid(refresh) })
}

func TestConfigDeleteSucceedsWithBioTDown(t *testing.T) {
	e := newTestEnv(t, envOptions{})
	e.writeConfig(e.userConfig())
	e.fake.Stop()
	if _, err := e.request(e.b, logical.DeleteOperation, "config", nil); err != nil {
		t.Fatal(err)
	}
}

// FuzzConfigValidation feeds arbitrary values to a config write: no panic,
// and whatever is accepted keeps the config's invariants.
func FuzzConfigValidation(f *testing.F) {
	f.Add("https://api.dev.example.biot-med.com", "user@example.com", "pw", "", "", "", "30s")
	f.Add("http://127.0.0.1:8080/", "", "", "00000000-0000-4000-8000-000000000001", "key", "", "1m")
	f.Add("http://example.com", "u", "p", "", "", "", "5")
	f.Add("https://u:p@host/?q#f", "u", "", "s", "k", "-----BEGIN CERTIFICATE-----\n", "-1s")
	f.Add("", " ", "\xff", "", "", "", "")
	b := newBackend(&logical.BackendConfig{StorageView: &logical.InmemStorage{}, System: &logical.StaticSystemView{}})
	schema := b.pathConfig().Fields
	f.Fuzz(func(t *testing.T, url, username, password, serviceID, secretKey, caCert, timeout string) {
		raw := map[string]any{"url": url, "request_timeout": timeout}
		for k, v := range map[string]string{"username": username, "password": password, "service_id": serviceID, "secret_key": secretKey, "ca_cert": caCert} {
			if v != "" {
				raw[k] = v
			}
		}
		cfg, err := mergeConfig(nil, &framework.FieldData{Raw: raw, Schema: schema})
		if err != nil {
			return
		}
		u, perr := neturl.Parse(cfg.URL)
		switch {
		case perr != nil || u.Host == "" || u.User != nil || u.RawQuery != "":
			t.Fatalf("accepted url %q", cfg.URL)
		case u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())):
			t.Fatalf("accepted url %q", cfg.URL)
		case (cfg.Username != "") == (cfg.ServiceID != ""):
			t.Fatalf("accepted %d identities", map[bool]int{true: 2, false: 0}[cfg.Username != ""])
		case cfg.Username != "" && cfg.Password == "", cfg.ServiceID != "" && cfg.SecretKey == "":
			t.Fatal("accepted half an identity")
		case cfg.RequestTimeout < minRequestTimeout || cfg.RequestTimeout > maxRequestTimeout:
			t.Fatalf("accepted request_timeout %v", cfg.RequestTimeout)
		}
	})
}
