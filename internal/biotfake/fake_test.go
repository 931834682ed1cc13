package biotfake

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestLoginSuccessShape(t *testing.T) {
	clock := NewClock(t0)
	f := NewFake(Options{AccessTTL: 2 * time.Minute, RefreshTTL: 3 * time.Hour, Now: clock.Now})
	u := f.AddUser("alice@example.com", "s3cret")
	if !reUUID.MatchString(u.ID) || !reUUID.MatchString(u.OrganizationID) {
		t.Fatalf("AddUser ids are not uuids: %+v", u)
	}

	r := login(f, "alice@example.com", "s3cret")
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var raw map[string]json.RawMessage
	r.decode(t, &raw)
	for _, k := range []string{"userId", "ownerOrganizationId", "accessJwt", "refreshJwt", "mfaRequired", "passwordResetRequired"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("LoginResponse lacks %q: %s", k, r.body)
		}
	}
	var l specLogin
	r.decode(t, &l)
	if l.UserID != u.ID || l.OwnerOrganizationID != u.OrganizationID {
		t.Errorf("ids = %q/%q, want %+v", l.UserID, l.OwnerOrganizationID, u)
	}
	if l.MFARequired == nil || *l.MFARequired || l.PasswordResetRequired == nil || *l.PasswordResetRequired {
		t.Errorf("mfaRequired/passwordResetRequired not false: %s", r.body)
	}
	if l.AccessJwt == nil || l.RefreshJwt == nil {
		t.Fatalf("missing token: %s", r.body)
	}
	if got, want := l.AccessJwt.Expiration, "2026-12-04T10:12:30.123Z"; got != want {
		t.Errorf("access expiration = %q, want %q", got, want)
	}
	if got, want := l.RefreshJwt.Expiration, "2026-12-04T13:10:30.123Z"; got != want {
		t.Errorf("refresh expiration = %q, want %q", got, want)
	}
	for _, e := range []string{l.AccessJwt.Expiration, l.RefreshJwt.Expiration} {
		if !reExpiration.MatchString(e) {
			t.Errorf("expiration %q is not RFC 3339 UTC with milliseconds", e)
		}
	}
	if l.AccessJwt.Token == l.RefreshJwt.Token {
		t.Error("access and refresh tokens are equal")
	}

	// JWT shape and signature, checked without the package's own parser.
	checkJWT := func(tok, typ, expiration string) {
		t.Helper()
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("%s token has %d parts", typ, len(parts))
		}
		hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
		if err != nil || string(hdr) != `{"alg":"RS512","typ":"JWT"}` {
			t.Errorf("header = %q, %v", hdr, err)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(payload, &c); err != nil {
			t.Fatal(err)
		}
		exp, _ := time.Parse(time.RFC3339, expiration)
		if c["sub"] != u.ID || c["type"] != typ || c["jti"] == "" ||
			c["iat"] != float64(t0.Unix()) || c["exp"] != float64(exp.Unix()) {
			t.Errorf("%s claims = %v", typ, c)
		}
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil {
			t.Fatal(err)
		}
		digest := sha512.Sum512([]byte(parts[0] + "." + parts[1]))
		if err := rsa.VerifyPKCS1v15(f.PublicKey(), crypto.SHA512, digest[:], sig); err != nil {
			t.Errorf("%s signature: %v", typ, err)
		}
	}
	checkJWT(l.AccessJwt.Token, "access", l.AccessJwt.Expiration)
	checkJWT(l.RefreshJwt.Token, "refresh", l.RefreshJwt.Expiration)

	if !f.AccessTokenValid(l.AccessJwt.Token) {
		t.Error("AccessTokenValid(access) = false")
	}
	if f.AccessTokenValid(l.RefreshJwt.Token) {
		t.Error("a refresh token is accepted as an access token")
	}
	s := self(f, l.AccessJwt.Token)
	if s.status != http.StatusOK || !strings.Contains(string(s.body), `"username":"alice@example.com"`) {
		t.Errorf("self: %d %s", s.status, s.body)
	}
	if got := f.IssuedAccessTokens(); len(got) != 1 || got[0] != l.AccessJwt.Token {
		t.Errorf("IssuedAccessTokens = %v", got)
	}
	if got := f.IssuedRefreshTokens(); len(got) != 1 || got[0] != l.RefreshJwt.Token {
		t.Errorf("IssuedRefreshTokens = %v", got)
	}
}

func TestDemoCredentials(t *testing.T) {
	f := NewFake(Options{})
	mustLogin(t, f, DemoUsername, DemoPassword)
	r := do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": DemoServiceID, "secretKey": DemoServiceSecret})
	if r.status != http.StatusOK {
		t.Fatalf("demo service login: %d %s", r.status, r.body)
	}
}

func TestLoginFailed(t *testing.T) {
	f := NewFake(Options{})
	f.AddUser("bob@example.com", "right-password")
	for _, c := range [][2]string{
		{"bob@example.com", "wrong-password"},
		{"nobody@example.com", "right-password"},
		{"BOB@example.com", "right-password"},
	} {
		r := login(f, c[0], c[1])
		r.envelope(t, http.StatusForbidden, "LOGIN_FAILED")
		if strings.Contains(string(r.body), c[1]) {
			t.Errorf("error body echoes the password: %s", r.body)
		}
	}
	// Trace ids differ per error.
	a := login(f, "bob@example.com", "x").envelope(t, 403, "LOGIN_FAILED")
	b := login(f, "bob@example.com", "x").envelope(t, 403, "LOGIN_FAILED")
	if a.TraceID == b.TraceID {
		t.Errorf("two errors share traceId %s", a.TraceID)
	}
	if n := len(f.IssuedAccessTokens()); n != 0 {
		t.Errorf("failed logins issued %d tokens", n)
	}
}

func TestBadRequests(t *testing.T) {
	f := NewFake(Options{})
	cases := []struct {
		name, path, body, ctype, code string
	}{
		{"invalid json", PathLogin, `{"username":`, "application/json", "BAD_REQUEST"},
		{"not an object", PathLogin, `["a"]`, "application/json", "BAD_REQUEST"},
		{"empty body", PathLogin, ``, "application/json", "BAD_REQUEST"},
		{"wrong type", PathLogin, `{"username":1,"password":"x"}`, "application/json", "BAD_REQUEST"},
		{"no content type", PathLogin, `{"username":"a","password":"b"}`, "", "BAD_REQUEST"},
		{"form content", PathLogin, `username=a&password=b`, "application/x-www-form-urlencoded", "BAD_REQUEST"},
		{"missing username", PathLogin, `{"password":"x"}`, "application/json", "MISSING_PARAMETERS"},
		{"missing password", PathLogin, `{"username":"demo@example.com"}`, "application/json", "MISSING_PARAMETERS"},
		{"missing refresh token", PathRefresh, `{}`, "application/json", "MISSING_PARAMETERS"},
		{"missing logout token", PathLogout, `{"refreshToken":""}`, "application/json", "MISSING_PARAMETERS"},
		{"missing secret", PathServiceLogin, `{"id":"` + DemoServiceID + `"}`, "application/json", "MISSING_PARAMETERS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(f, http.MethodPost, c.path, c.body, "Content-Type", c.ctype)
			e := r.envelope(t, http.StatusBadRequest, c.code)
			if c.code == "MISSING_PARAMETERS" && e.Details["parameters"] == nil {
				t.Errorf("MISSING_PARAMETERS without details.parameters: %+v", e)
			}
		})
	}
	// application/json with a charset is fine.
	r := do(f, http.MethodPost, PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword},
		"Content-Type", "application/json; charset=utf-8")
	if r.status != http.StatusOK {
		t.Errorf("charset content type: %d %s", r.status, r.body)
	}
}

func TestRefreshRotation(t *testing.T) {
	f := NewFake(Options{})
	l := mustLogin(t, f, DemoUsername, DemoPassword)

	r := refresh(f, l.RefreshJwt.Token)
	if r.status != http.StatusOK {
		t.Fatalf("refresh: %d %s", r.status, r.body)
	}
	var n specLogin
	r.decode(t, &n)
	if n.AccessJwt == nil || n.RefreshJwt == nil {
		t.Fatalf("refresh without a token pair: %s", r.body)
	}
	if n.AccessJwt.Token == l.AccessJwt.Token || n.RefreshJwt.Token == l.RefreshJwt.Token {
		t.Error("refresh did not issue a new access and refresh token")
	}
	if n.UserID != l.UserID || n.OwnerOrganizationID != l.OwnerOrganizationID {
		t.Errorf("refresh changed ids: %+v vs %+v", n, l)
	}
	if !f.AccessTokenValid(n.AccessJwt.Token) || !f.AccessTokenValid(l.AccessJwt.Token) {
		t.Error("access tokens should stay valid until they expire")
	}

	// The used refresh token is dead.
	refresh(f, l.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	refresh(f, "not-a-token").envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	// The new one works, once.
	if r := refresh(f, n.RefreshJwt.Token); r.status != http.StatusOK {
		t.Fatalf("second refresh: %d %s", r.status, r.body)
	}
	refresh(f, n.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	if got := len(f.IssuedRefreshTokens()); got != 3 {
		t.Errorf("IssuedRefreshTokens has %d, want 3", got)
	}
}

func TestExpiryWithClock(t *testing.T) {
	clock := NewClock(t0)
	f := NewFake(Options{AccessTTL: time.Minute, RefreshTTL: 10 * time.Minute, Now: clock.Now})
	l := mustLogin(t, f, DemoUsername, DemoPassword)
	l2 := mustLogin(t, f, DemoUsername, DemoPassword)

	clock.Advance(59 * time.Second)
	if !f.AccessTokenValid(l.AccessJwt.Token) {
		t.Fatal("access token expired early")
	}
	clock.Advance(time.Second)
	if f.AccessTokenValid(l.AccessJwt.Token) {
		t.Fatal("access token still valid at its expiration")
	}
	self(f, l.AccessJwt.Token).envelope(t, http.StatusUnauthorized, "TOKEN_NOT_VALID")

	// Refresh token still good at 9m59s, not at 10m.
	clock.Set(t0.Add(10*time.Minute - time.Second))
	if r := refresh(f, l.RefreshJwt.Token); r.status != http.StatusOK {
		t.Fatalf("refresh before expiry: %d %s", r.status, r.body)
	}
	clock.Set(t0.Add(10 * time.Minute))
	if f.RefreshTokenValid(l2.RefreshJwt.Token) {
		t.Error("RefreshTokenValid true for an expired token")
	}
	refresh(f, l2.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	// Setting the clock back does not revive it: a rejected token is gone.
	clock.Set(t0)
	refresh(f, l2.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
}

func TestSetPasswordKeepsSessions(t *testing.T) {
	f := NewFake(Options{})
	u1 := f.AddUser("carol@example.com", "old")
	l := mustLogin(t, f, "carol@example.com", "old")
	f.SetPassword("carol@example.com", "new")
	login(f, "carol@example.com", "old").envelope(t, http.StatusForbidden, "LOGIN_FAILED")
	n := mustLogin(t, f, "carol@example.com", "new")
	if n.UserID != u1.ID {
		t.Errorf("password change changed the user id")
	}
	if r := refresh(f, l.RefreshJwt.Token); r.status != http.StatusOK {
		t.Errorf("refresh after password change: %d %s", r.status, r.body)
	}
	// AddUser again replaces the password and keeps the id.
	if u2 := f.AddUser("carol@example.com", "newer"); u2 != u1 {
		t.Errorf("AddUser again = %+v, want %+v", u2, u1)
	}
	mustLogin(t, f, "carol@example.com", "newer")
}

func TestRevokeAllRefreshTokens(t *testing.T) {
	f := NewFake(Options{})
	f.AddUser("dave@example.com", "pw")
	a := mustLogin(t, f, DemoUsername, DemoPassword)
	b := mustLogin(t, f, "dave@example.com", "pw")
	f.RevokeAllRefreshTokens()
	refresh(f, a.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	refresh(f, b.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	if !f.AccessTokenValid(a.AccessJwt.Token) {
		t.Error("revoking refresh tokens killed an access token")
	}
	// Logging in again works, and its refresh token does.
	c := mustLogin(t, f, DemoUsername, DemoPassword)
	if r := refresh(f, c.RefreshJwt.Token); r.status != http.StatusOK {
		t.Errorf("refresh after re-login: %d %s", r.status, r.body)
	}
}

func TestLogout(t *testing.T) {
	f := NewFake(Options{})
	l := mustLogin(t, f, DemoUsername, DemoPassword)
	other := mustLogin(t, f, DemoUsername, DemoPassword)
	r := do(f, http.MethodPost, PathLogout, map[string]string{"refreshToken": l.RefreshJwt.Token})
	if r.status != http.StatusOK {
		t.Fatalf("logout: %d %s", r.status, r.body)
	}
	if f.Successes(EndpointLogout) != 1 {
		t.Errorf("logout successes = %d", f.Successes(EndpointLogout))
	}
	refresh(f, l.RefreshJwt.Token).envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	do(f, http.MethodPost, PathLogout, map[string]string{"refreshToken": l.RefreshJwt.Token}).
		envelope(t, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID")
	// Another session of the same user is untouched.
	if r := refresh(f, other.RefreshJwt.Token); r.status != http.StatusOK {
		t.Errorf("other session after logout: %d %s", r.status, r.body)
	}
}

func TestServiceLogin(t *testing.T) {
	clock := NewClock(t0)
	f := NewFake(Options{AccessTTL: 7 * time.Minute, Now: clock.Now})
	const id = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
	f.AddService(id, "key-1")
	r := do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": id, "secretKey": "key-1"})
	if r.status != http.StatusOK {
		t.Fatalf("service login: %d %s", r.status, r.body)
	}
	var raw map[string]json.RawMessage
	r.decode(t, &raw)
	if len(raw) != 2 || raw["accessToken"] == nil || raw["accessTokenExpiration"] == nil {
		t.Errorf("service token response = %s", r.body)
	}
	var s specServiceToken
	r.decode(t, &s)
	if s.AccessTokenExpiration != "2026-12-04T10:17:30.123Z" {
		t.Errorf("accessTokenExpiration = %q", s.AccessTokenExpiration)
	}
	c, err := ParseToken(s.AccessToken)
	if err != nil || c.Subject != id || c.UserType != "SERVICE" {
		t.Errorf("claims %+v, %v", c, err)
	}
	if !f.AccessTokenValid(s.AccessToken) {
		t.Error("service token not valid")
	}
	if r := self(f, s.AccessToken); r.status != http.StatusOK {
		t.Errorf("self with service token: %d %s", r.status, r.body)
	}
	if len(f.IssuedRefreshTokens()) != 0 {
		t.Error("service login issued a refresh token")
	}
	do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": id, "secretKey": "key-2"}).
		envelope(t, http.StatusForbidden, "LOGIN_FAILED")
	do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": "00000000-0000-4000-8000-00000000ffff", "secretKey": "key-1"}).
		envelope(t, http.StatusForbidden, "LOGIN_FAILED")
	// Replacing the secret.
	f.AddService(id, "key-2")
	if r := do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": id, "secretKey": "key-2"}); r.status != 200 {
		t.Errorf("new secret: %d", r.status)
	}
}

func TestSelf(t *testing.T) {
	f := NewFake(Options{})
	l := mustLogin(t, f, DemoUsername, DemoPassword)
	self(f, "garbage").envelope(t, http.StatusUnauthorized, "TOKEN_NOT_VALID")
	self(f, l.RefreshJwt.Token).envelope(t, http.StatusUnauthorized, "TOKEN_NOT_VALID")
	do(f, http.MethodGet, PathSelf, nil).envelope(t, http.StatusUnauthorized, "TOKEN_NOT_VALID")
	do(f, http.MethodGet, PathSelf, nil, "Authorization", "Basic "+l.AccessJwt.Token).
		envelope(t, http.StatusUnauthorized, "TOKEN_NOT_VALID")
	// A token from another Fake (same signing key, different state) is not ours.
	g := NewFake(Options{})
	other := mustLogin(t, g, DemoUsername, DemoPassword)
	if f.AccessTokenValid(other.AccessJwt.Token) {
		t.Error("token of another fake accepted")
	}
	r := do(f, http.MethodGet, PathSelf, nil, "Authorization", "bearer "+l.AccessJwt.Token)
	if r.status != http.StatusOK {
		t.Fatalf("self: %d %s", r.status, r.body)
	}
	var u map[string]any
	r.decode(t, &u)
	if u["id"] != l.UserID || u["ownerOrganizationId"] != l.OwnerOrganizationID || u["username"] != DemoUsername {
		t.Errorf("self = %v", u)
	}
}

func TestRoutingErrors(t *testing.T) {
	f := NewFake(Options{})
	do(f, http.MethodGet, "/ums/v2/nothing", nil).envelope(t, http.StatusNotFound, "NOT_FOUND")
	do(f, http.MethodPost, "/v2/users/login", map[string]string{}).envelope(t, http.StatusNotFound, "NOT_FOUND")
	r := do(f, http.MethodGet, PathLogin, nil)
	r.envelope(t, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	if r.header.Get("Allow") != http.MethodPost {
		t.Errorf("Allow = %q", r.header.Get("Allow"))
	}
	do(f, http.MethodPost, PathSelf, map[string]string{}).envelope(t, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	if f.Calls(EndpointLogin) != 1 || f.Successes(EndpointLogin) != 0 {
		t.Errorf("login calls/successes = %d/%d", f.Calls(EndpointLogin), f.Successes(EndpointLogin))
	}
}

func TestPublicKey(t *testing.T) {
	f := NewFake(Options{})
	r := do(f, http.MethodGet, PathPublicKey, nil)
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var pk struct {
		PublicKey string `json:"publicKey"`
	}
	r.decode(t, &pk)
	if _, err := base64.StdEncoding.DecodeString(pk.PublicKey); err != nil || pk.PublicKey == "" {
		t.Errorf("publicKey %q: %v", pk.PublicKey, err)
	}
}

func TestCounters(t *testing.T) {
	f := NewFake(Options{})
	mustLogin(t, f, DemoUsername, DemoPassword)
	login(f, DemoUsername, "wrong")
	login(f, DemoUsername, "wrong")
	refresh(f, "nope")
	do(f, http.MethodGet, "/unknown", nil)
	if got := f.Calls(EndpointLogin); got != 3 {
		t.Errorf("login calls = %d, want 3", got)
	}
	if got := f.Successes(EndpointLogin); got != 1 {
		t.Errorf("login successes = %d, want 1", got)
	}
	if got, ok := f.Calls(EndpointRefresh), f.Successes(EndpointRefresh); got != 1 || ok != 0 {
		t.Errorf("refresh calls/successes = %d/%d", got, ok)
	}
	if f.Calls(EndpointServiceLogin) != 0 || f.Calls("bogus") != 0 {
		t.Error("untouched counters are not zero")
	}
	f.ResetCounts()
	if f.Calls(EndpointLogin) != 0 || f.Successes(EndpointLogin) != 0 || f.Calls(EndpointRefresh) != 0 {
		t.Error("ResetCounts left counts")
	}
	mustLogin(t, f, DemoUsername, DemoPassword)
	if f.Calls(EndpointLogin) != 1 || f.Successes(EndpointLogin) != 1 {
		t.Error("counting after reset")
	}
}

func TestTokensUnique(t *testing.T) {
	f := NewFake(Options{})
	f.AddUser("u1@example.com", "p")
	f.AddUser("u2@example.com", "p")
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		for _, u := range []string{"u1@example.com", "u2@example.com"} {
			l := mustLogin(t, f, u, "p")
			for _, tok := range []string{l.AccessJwt.Token, l.RefreshJwt.Token} {
				if seen[tok] {
					t.Fatalf("token issued twice")
				}
				seen[tok] = true
			}
		}
	}
}
