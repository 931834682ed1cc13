package biot

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

func TestErrorFormat(t *testing.T) {
	body := `{"code":"LOGIN_FAILED","message":"Invalid credentials","serviceName":"ums","traceId":"a07a7e532f3541d8","environment":"develop","details":{}}`
	err := decodeResponse("login", 403, []byte(body), nil)
	want := "biot: login failed: LOGIN_FAILED (403): Invalid credentials [traceId a07a7e532f3541d8]"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	if !isRejected(err) {
		t.Fatal("a 403 is a rejection")
	}

	err = decodeResponse("refresh", 502, []byte("<html>bad gateway</html>"), nil)
	if err == nil || err.Error() != "biot: refresh failed: HTTP 502 Bad Gateway: no BioT error body" {
		t.Fatalf("got %v", err)
	}
	if isRejected(err) {
		t.Fatal("a 502 is not a rejection")
	}

	err = decodeResponse("login", 400, []byte(`{"code":"X\n\u0000Y","message":"`+strings.Repeat("m", 1000)+`"}`), nil)
	if s := err.Error(); strings.ContainsAny(s, "\n\x00") || len(s) > 500 {
		t.Fatalf("error not cleaned: %q", s)
	}
}

func TestDecodeLogin(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	good := `{"userId":"u","ownerOrganizationId":"o","accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30.123Z"},"refreshJwt":{"token":"r","expiration":"2026-12-05T10:00:30.123Z"},"mfaRequired":false,"passwordResetRequired":false}`
	var lr loginResponse
	if err := json.Unmarshal([]byte(good), &lr); err != nil {
		t.Fatal(err)
	}
	tok, err := decodeLogin("login", &lr, now)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "a" || tok.RefreshToken != "r" || tok.UserID != "u" || tok.OrganizationID != "o" ||
		!tok.AccessExpiresAt.Equal(time.Date(2026, 12, 4, 10, 15, 30, 123e6, time.UTC)) || !tok.IssuedAt.Equal(now) {
		t.Fatalf("decoded %+v", tok)
	}

	for name, body := range map[string]string{
		"no refresh":      `{"accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30Z"},"refreshJwt":null}`,
		"no access":       `{"refreshJwt":{"token":"r","expiration":"2026-12-04T10:15:30Z"}}`,
		"bad expiration":  `{"accessJwt":{"token":"a","expiration":"1733300000"},"refreshJwt":{"token":"r","expiration":"2026-12-04T10:15:30Z"}}`,
		"mfa":             `{"mfaRequired":true,"accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30Z"}}`,
		"password reset":  `{"passwordResetRequired":true,"accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30Z"}}`,
		"empty refresh":   `{"accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30Z"},"refreshJwt":{"token":"","expiration":"2026-12-04T10:15:30Z"}}`,
		"missing expires": `{"accessJwt":{"token":"a"},"refreshJwt":{"token":"r","expiration":"2026-12-04T10:15:30Z"}}`,
	} {
		var lr loginResponse
		if err := json.Unmarshal([]byte(body), &lr); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := decodeLogin("login", &lr, now); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
}

func TestParseExpiration(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-12-04T10:15:30.123Z":      time.Date(2026, 12, 4, 10, 15, 30, 123e6, time.UTC),
		"2026-12-04T10:15:30Z":          time.Date(2026, 12, 4, 10, 15, 30, 0, time.UTC),
		"2026-12-04T12:15:30.5+02:00":   time.Date(2026, 12, 4, 10, 15, 30, 5e8, time.UTC),
		"2026-12-04T10:15:30.123456789": time.Date(2026, 12, 4, 10, 15, 30, 123456789, time.UTC),
	} {
		got, err := parseExpiration(in)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Fatalf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "tomorrow", "1733300000", "2026-13-01T00:00:00Z"} {
		if _, err := parseExpiration(in); err == nil {
			t.Fatalf("%q accepted", in)
		}
	}
}

// The fuzz targets below decode what BioT sends. Their seeds run in
// `make test`; `make fuzz` explores further. None may panic, and every
// failure must be an *Error that names the operation.

func FuzzDecodeUserTokens(f *testing.F) {
	f.Add(200, `{"userId":"u","ownerOrganizationId":"o","accessJwt":{"token":"a","expiration":"2026-12-04T10:15:30.123Z"},"refreshJwt":{"token":"r","expiration":"2026-12-05T10:00:30.123Z"}}`)
	f.Add(200, `{"accessJwt":null}`)
	f.Add(200, `{"mfaRequired":true,"accessJwt":{"token":"a","expiration":"x"}}`)
	f.Add(200, `not json`)
	f.Add(403, `{"code":"REFRESH_TOKEN_NOT_VALID","message":"expired","traceId":"abc"}`)
	f.Add(401, `{"code":"USER_LOCKED_WITH_TIME","message":"locked","traceId":"abc","details":{"minutesLeft":5}}`)
	f.Add(504, ``)
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, body string) {
		var out loginResponse
		err := decodeResponse("refresh", status, []byte(body), &out)
		if err == nil {
			var tok *token
			tok, err = decodeLogin("refresh", &out, now)
			if err == nil && (tok.AccessToken == "" || tok.RefreshToken == "" || tok.AccessExpiresAt.IsZero()) {
				t.Fatalf("accepted an incomplete token: %+v", tok)
			}
		}
		checkDecodeError(t, "refresh", err)
	})
}

func FuzzDecodeServiceLogin(f *testing.F) {
	f.Add(200, `{"accessToken":"a","accessTokenExpiration":"2026-12-04T10:15:30.123Z"}`)
	f.Add(200, `{"accessToken":"","accessTokenExpiration":""}`)
	f.Add(403, `{"code":"LOGIN_FAILED","message":"bad","traceId":"t"}`)
	f.Add(401, `{"code":"SERVICE_LOCKED"}`)
	f.Fuzz(func(t *testing.T, status int, body string) {
		var out serviceLoginResponse
		err := decodeResponse("service login", status, []byte(body), &out)
		if err == nil && out.AccessToken != "" {
			if _, perr := parseExpiration(out.AccessTokenExpiration); perr != nil {
				return
			}
		}
		checkDecodeError(t, "service login", err)
	})
}

func FuzzErrorEnvelope(f *testing.F) {
	f.Add(403, `{"code":"LOGIN_FAILED","message":"Invalid credentials","traceId":"a07a7e532f3541d8"}`)
	f.Add(500, `{"code":"INTERNAL_SERVER_ERROR"}`)
	f.Add(429, `{}`)
	f.Add(400, `{"code":1}`)
	f.Fuzz(func(t *testing.T, status int, body string) {
		if status == 200 {
			status = 500
		}
		err := decodeResponse("login", status, []byte(body), nil)
		if err == nil {
			t.Fatal("a non-200 answer decoded as success")
		}
		checkDecodeError(t, "login", err)
		if s := err.Error(); !utf8.ValidString(s) || strings.ContainsAny(s, "\n\r\x00") || len(s) > 600 {
			t.Fatalf("unsafe error text: %q", s)
		}
	})
}

func FuzzParseExpiration(f *testing.F) {
	f.Add("2026-12-04T10:15:30.123Z")
	f.Add("2026-12-04T10:15:30")
	f.Add("")
	f.Add("9999-99-99T99:99:99Z")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseExpiration(s)
		if err == nil && got.Location() != time.UTC {
			t.Fatalf("%q parsed to a non-UTC time", s)
		}
		if err != nil && got != (time.Time{}) {
			t.Fatalf("%q: error with a time", s)
		}
	})
}

func checkDecodeError(t *testing.T, op string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var be *Error
	if !errors.As(err, &be) || be.Op != op || !strings.HasPrefix(err.Error(), "biot: "+op+" failed: ") {
		t.Fatalf("error %q is not a BioT %s error", err, op)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer target.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()

	c, err := newClient(redirector.URL, "", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Login(t.Context(), "user", "Pa55-not-forwarded")
	if err == nil || !strings.Contains(err.Error(), "307") {
		t.Fatalf("want an error naming the 307, got %v", err)
	}
	if strings.Contains(err.Error(), "Pa55-not-forwarded") {
		t.Fatal("error repeats the password")
	}
	if elsewhere.Load() != 0 {
		t.Fatal("the login (and its password) followed a redirect")
	}
}
