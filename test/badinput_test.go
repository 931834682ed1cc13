//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// rawPut sends body as is to PUT /v1/<path> with the root token and returns
// the status and response body.
func rawPut(t *testing.T, v *vaulttest.Vault, path string, body []byte) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, v.Addr+"/v1/"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT /v1/%s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// rawGet is GET /v1/<path>; it returns the status and the response's data.
func rawGet(t *testing.T, v *vaulttest.Vault, path string) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", v.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /v1/%s: %v", path, err)
	}
	defer resp.Body.Close()
	var out struct {
		Data map[string]any `json:"data"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("GET /v1/%s: decoding: %v", path, err)
		}
	}
	return resp.StatusCode, out.Data
}

// TestReliabilityBadInput sends invalid config writes through Vault's HTTP
// API as raw JSON (so that wrong JSON types and invalid UTF-8 can be sent).
// Each gets a 4xx with a message naming the field at fault (or, for a body
// Vault itself cannot parse, Vault's own 4xx), and leaves the stored config
// as it was; creds keep working.
func TestReliabilityBadInput(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{})
	v := env.StartDevWithPlugin(t, "biot")
	v.WriteConfig(t, "biot", with(vaulttest.UserConfig(fake), "request_timeout", "7s"))
	tok := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	status, stored := rawGet(t, v, "biot/config")
	if status != http.StatusOK || stored["username"] != biotfake.DemoUsername || stored["request_timeout"] != float64(7) {
		t.Fatalf("config read back = %d %v", status, stored)
	}
	want := fmt.Sprint(stored)
	logins0 := fake.Calls(biotfake.EndpointLogin)

	q := strconv.Quote
	url := q(fake.URL)
	ca := q(string(fake.CACertPEM()))
	// Bodies are complete configs (url, identity, ca_cert) with one thing
	// wrong, or partial updates whose result is wrong.
	user := func(extra string) string {
		return `{"url":` + url + `,"ca_cert":` + ca + `,"username":"` + biotfake.DemoUsername + `","password":"` + biotfake.DemoPassword + `"` + extra + `}`
	}
	badPEM := "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
	// want names the field at fault; the message must name it the way the
	// engine or Vault's field parser does ("url:", "url/...", the quoted
	// "url", "url;"), not merely use the word. vaultJSON marks bodies that
	// Vault itself cannot parse as JSON, which never reach the plugin.
	cases := []struct {
		name      string
		body      string
		want      string
		vaultJSON bool
	}{
		{name: "url not a URL", body: `{"url":"not a url"}`, want: "url"},
		{name: "url relative", body: `{"url":"/ums/v2"}`, want: "url"},
		{name: "url host only", body: `{"url":"api.dev.example.biot-med.com"}`, want: "url"},
		{name: "url scheme ftp", body: `{"url":"ftp://api.dev.example.biot-med.com"}`, want: "url"},
		{name: "url http non-loopback", body: `{"url":"http://api.dev.example.biot-med.com"}`, want: "url"},
		{name: "url http private address", body: `{"url":"http://10.0.0.1:8080"}`, want: "url"},
		{name: "url with credentials", body: `{"url":"https://me:secret@api.dev.example.biot-med.com"}`, want: "url"},
		{name: "url with query", body: `{"url":"https://api.dev.example.biot-med.com/?tenant=x"}`, want: "url"},
		{name: "url with fragment", body: `{"url":"https://api.dev.example.biot-med.com/#x"}`, want: "url"},
		{name: "url empty", body: `{"url":""}`, want: "url"},
		{name: "url unparsable", body: `{"url":"https://[::1"}`, want: "url"},
		{name: "username empty", body: `{"username":"","password":"x"}`, want: "username"},
		{name: "username whitespace", body: `{"username":"   \t","password":"x"}`, want: "username"},
		{name: "username control character", body: `{"username":"a\u0000b","password":"x"}`, want: "username"},
		{name: "password empty", body: `{"username":"someone@example.com","password":""}`, want: "password"},
		{name: "half a service identity (id)", body: `{"service_id":"` + biotfake.DemoServiceID + `"}`, want: "secret_key"},
		{name: "half a service identity (key)", body: `{"secret_key":"k"}`, want: "service_id"},
		{name: "both identities", body: `{"username":"a@example.com","password":"p","service_id":"` + biotfake.DemoServiceID + `","secret_key":"k"}`, want: "service_id"},
		{name: "ca_cert not PEM", body: `{"ca_cert":"hello"}`, want: "ca_cert"},
		{name: "ca_cert bad certificate", body: `{"ca_cert":` + q(badPEM) + `}`, want: "ca_cert"},
		{name: "ca_cert private key", body: `{"ca_cert":` + q("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n") + `}`, want: "ca_cert"},
		{name: "ca_cert trailing junk", body: `{"ca_cert":` + q(string(fake.CACertPEM())+"junk") + `}`, want: "ca_cert"},
		{name: "request_timeout negative", body: `{"request_timeout":"-5s"}`, want: "request_timeout"},
		{name: "request_timeout negative number", body: `{"request_timeout":-5}`, want: "request_timeout"},
		{name: "request_timeout zero", body: `{"request_timeout":0}`, want: "request_timeout"},
		{name: "request_timeout too long", body: `{"request_timeout":"6m"}`, want: "request_timeout"},
		{name: "request_timeout unparsable", body: `{"request_timeout":"soon"}`, want: "request_timeout"},
		{name: "request_timeout wrong type (bool)", body: `{"request_timeout":true}`, want: "request_timeout"},
		{name: "request_timeout wrong type (object)", body: `{"request_timeout":{"s":5}}`, want: "request_timeout"},
		{name: "verify_connection wrong type (string)", body: `{"verify_connection":"perhaps"}`, want: "verify_connection"},
		{name: "verify_connection wrong type (list)", body: `{"verify_connection":[true]}`, want: "verify_connection"},
		{name: "username wrong type (object)", body: `{"username":{"name":"x"},"password":"p"}`, want: "username"},
		{name: "password wrong type (list)", body: `{"password":["a","b"]}`, want: "password"},
		{name: "unknown field (typo)", body: user(`,"pasword":"x"`), want: "pasword"},
		{name: "unknown field only", body: `{"tenant":"x"}`, want: "tenant"},
		{name: "oversized password", body: `{"password":"` + strings.Repeat("p", 2000) + `"}`, want: "password"},
		{name: "oversized username", body: `{"username":"` + strings.Repeat("u", 2000) + `@example.com","password":"p"}`, want: "username"},
		{name: "oversized url", body: `{"url":"https://` + strings.Repeat("a", 1100) + `.example.com"}`, want: "url"},
		{name: "oversized ca_cert", body: `{"ca_cert":"` + strings.Repeat("A", 300<<10) + `"}`, want: "ca_cert"},
		// Vault's JSON decoder turns invalid UTF-8 into U+FFFD.
		{name: "non-UTF-8 byte in username", body: "{\"username\":\"a\xffb\",\"password\":\"p\"}", want: "username"},
		{name: "non-UTF-8 byte in url", body: "{\"url\":\"https://api.\xff.example.com\"}", want: "url"},
		{name: "non-UTF-8 byte in password", body: "{\"password\":\"\xfe\xff\"}", want: "password"},
		{name: "JSON \\xff escape", body: `{"password":"\xff"}`, vaultJSON: true},
		{name: "malformed JSON", body: `{"url":`, vaultJSON: true},
		{name: "JSON array body", body: `["url","https://x"]`, vaultJSON: true},
	}
	var rejected, accepted, fourxx, vault500, unchanged int
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			status, body := rawPut(t, v, "biot/config", []byte(tc.body))
			took := time.Since(start)
			var envelope struct {
				Errors []string `json:"errors"`
			}
			_ = json.Unmarshal([]byte(body), &envelope)
			msg := strings.Join(envelope.Errors, "; ")
			t.Logf("%d in %s: %s", status, took.Round(time.Millisecond), truncateForLog(msg, 300))
			switch {
			case status >= 200 && status < 300:
				accepted++
				t.Errorf("status %d: the invalid write was accepted", status)
			case status >= 400 && status < 500:
				rejected++
				fourxx++
			case tc.vaultJSON && status == http.StatusInternalServerError && msg != "":
				// Vault v1.21's JSON-limits handler (http/util.go,
				// wrapJSONLimitsHandler) answers any JSON syntax error
				// with 500 before the request reaches a plugin.
				rejected++
				vault500++
			default:
				t.Errorf("status %d, want 4xx; body %s", status, truncateForLog(body, 300))
			}
			if msg == "" {
				t.Errorf("no error message; body %s", truncateForLog(body, 300))
			} else if tc.want != "" && !namesField(msg, tc.want) {
				t.Errorf("error %q does not name the field %s", truncateForLog(msg, 300), tc.want)
			}
			if took > 5*time.Second {
				t.Errorf("the rejection took %s; invalid input should be rejected before any BioT call", took.Round(time.Millisecond))
			}
			if strings.Contains(msg, biotfake.DemoPassword) {
				t.Error("the error repeats the password")
			}
			status, got := rawGet(t, v, "biot/config")
			if status != http.StatusOK || fmt.Sprint(got) != want {
				t.Errorf("after the rejected write config reads %d %v, want %v", status, got, stored)
			} else {
				unchanged++
			}
		})
	}

	// The engine still serves the cached token: nothing was replaced.
	s := v.ReadCreds(t, "biot")
	if s.Data["access_token"] != tok {
		t.Error("after the rejected writes creds returned another token; a rejected write must not touch the session")
	}
	logins := fake.Calls(biotfake.EndpointLogin) - logins0
	figure{name: "bad_input", attempted: int64(len(cases)), ok: int64(accepted), failed: int64(rejected), logins: logins,
		refreshes: fake.Calls(biotfake.EndpointRefresh),
		extra:     fmt.Sprintf("rejected_4xx=%d vault_json_syntax_500=%d config_unchanged=%d/%d", fourxx, vault500, unchanged, len(cases))}.print(t)
	if logins != 0 {
		t.Errorf("the rejected writes made %d BioT logins, want 0: invalid input is rejected before any call", logins)
	}
}

// namesField reports whether msg names field the way the engine ("url:",
// "username/service_id:", "unknown field(s): pasword;") or Vault's field
// parser ("field \"request_timeout\"") does.
func namesField(msg, field string) bool {
	for _, form := range []string{field + ":", field + "/", "/" + field, field + ";", `"` + field + `"`} {
		if strings.Contains(msg, form) {
			return true
		}
	}
	return false
}

func truncateForLog(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
