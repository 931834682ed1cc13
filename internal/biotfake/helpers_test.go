package biotfake

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"
	"time"
)

// Wire structs written from the spec, independent of the package's own
// types, so a wrong JSON name in the fake cannot hide behind a matching one.
type specJwt struct {
	Token      string `json:"token"`
	Expiration string `json:"expiration"`
}

type specLogin struct {
	UserID                string   `json:"userId"`
	OwnerOrganizationID   string   `json:"ownerOrganizationId"`
	AccessJwt             *specJwt `json:"accessJwt"`
	RefreshJwt            *specJwt `json:"refreshJwt"`
	MFARequired           *bool    `json:"mfaRequired"`
	PasswordResetRequired *bool    `json:"passwordResetRequired"`
}

type specServiceToken struct {
	AccessToken           string `json:"accessToken"`
	AccessTokenExpiration string `json:"accessTokenExpiration"`
}

type specError struct {
	Code        string         `json:"code"`
	Message     string         `json:"message"`
	ServiceName string         `json:"serviceName"`
	TraceID     string         `json:"traceId"`
	Environment string         `json:"environment"`
	Details     map[string]any `json:"details"`
}

var (
	reTrace      = regexp.MustCompile(`^[0-9a-f]{16}$`)
	reExpiration = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	reUUID       = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %q: %v", r.body, err)
	}
}

// envelope checks r is BioT's error envelope with the status and code.
func (r resp) envelope(t testing.TB, status int, code string) specError {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var raw map[string]json.RawMessage
	r.decode(t, &raw)
	for _, k := range []string{"code", "message", "serviceName", "traceId", "environment", "details"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("envelope lacks %q: %s", k, r.body)
		}
	}
	var e specError
	r.decode(t, &e)
	if e.Code != code {
		t.Errorf("code = %q, want %q", e.Code, code)
	}
	if e.Message == "" || e.ServiceName != "ums" || e.Environment != "sandbox" || e.Details == nil {
		t.Errorf("bad envelope %+v", e)
	}
	if !reTrace.MatchString(e.TraceID) {
		t.Errorf("traceId %q is not 16 hex characters", e.TraceID)
	}
	return e
}

// do sends a request straight to the handler.
func do(f *Fake, method, path string, body any, hdr ...string) resp {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, "http://fake"+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.ServeHTTP(w, req)
	return resp{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
}

// post sends a JSON POST over the network.
func post(ctx context.Context, c *http.Client, url string, body any) (resp, error) {
	data, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		return resp{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}, err
}

func login(f *Fake, user, pass string) resp {
	return do(f, http.MethodPost, PathLogin, map[string]string{"username": user, "password": pass})
}

func mustLogin(t testing.TB, f *Fake, user, pass string) specLogin {
	t.Helper()
	r := login(f, user, pass)
	if r.status != http.StatusOK {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	var l specLogin
	r.decode(t, &l)
	if l.AccessJwt == nil || l.RefreshJwt == nil {
		t.Fatalf("login without token pair: %s", r.body)
	}
	return l
}

func refresh(f *Fake, token string) resp {
	return do(f, http.MethodPost, PathRefresh, map[string]string{"refreshToken": token})
}

func self(f *Fake, access string) resp {
	return do(f, http.MethodGet, PathSelf, nil, "Authorization", "Bearer "+access)
}

var t0 = time.Date(2026, 12, 4, 10, 10, 30, 123456789, time.UTC)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
