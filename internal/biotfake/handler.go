package biotfake

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"
)

// Wire types, with the JSON names of BioT's OpenAPI description.

// JwtToken is the spec's JwtToken.
type JwtToken struct {
	Token      string `json:"token"`
	Expiration string `json:"expiration"` // RFC 3339, UTC, milliseconds
}

// LoginResponse is the spec's LoginResponse, answered by login and refresh.
type LoginResponse struct {
	UserID                string    `json:"userId"`
	OwnerOrganizationID   string    `json:"ownerOrganizationId"`
	AccessJwt             JwtToken  `json:"accessJwt"`
	RefreshJwt            *JwtToken `json:"refreshJwt"` // null when MFA or a password reset is required
	MFARequired           bool      `json:"mfaRequired"`
	MFAExpiration         string    `json:"mfaExpiration,omitempty"`
	PasswordResetRequired bool      `json:"passwordResetRequired"`
}

// ServiceUserAccessTokenResponse is the spec's ServiceUserAccessTokenResponse.
type ServiceUserAccessTokenResponse struct {
	AccessToken           string `json:"accessToken"`
	AccessTokenExpiration string `json:"accessTokenExpiration"`
}

// UserResponse is the part of the spec's UserResponse that GET /users/self answers.
type UserResponse struct {
	Username            string `json:"username"`
	ID                  string `json:"id"`
	OwnerOrganizationID string `json:"ownerOrganizationId"`
	Locked              bool   `json:"locked"`
	Active              bool   `json:"active"`
	CredentialType      string `json:"credentialType,omitempty"`
}

// ErrorResponse is BioT's error envelope.
type ErrorResponse struct {
	Code        string         `json:"code"`
	Message     string         `json:"message"`
	ServiceName string         `json:"serviceName"`
	TraceID     string         `json:"traceId"`
	Environment string         `json:"environment"`
	Details     map[string]any `json:"details"`
}

// malformedBody is what a Malformed fault answers: JSON cut short.
const malformedBody = `{"userId":"3fa85f64-5717-4562-b3fc-2c963f66afa6","accessJwt":{"token":"eyJhbGciOiJSUzUxMiJ9.`

const maxBody = 1 << 20

// request is an incoming request with its body already read.
type request struct {
	r       *http.Request
	body    []byte
	bodyErr error
}

// ServeHTTP serves the UMS endpoints under /ums.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ep Endpoint
	var method string
	switch r.URL.Path {
	case PathLogin:
		ep, method = EndpointLogin, http.MethodPost
	case PathRefresh:
		ep, method = EndpointRefresh, http.MethodPost
	case PathLogout:
		ep, method = EndpointLogout, http.MethodPost
	case PathServiceLogin:
		ep, method = EndpointServiceLogin, http.MethodPost
	case PathSelf:
		ep, method = EndpointSelf, http.MethodGet
	case PathPublicKey:
		ep, method = EndpointPublicKey, http.MethodGet
	default:
		f.writeError(w, "", http.StatusNotFound, "NOT_FOUND", "No endpoint "+r.Method+" "+r.URL.Path, nil)
		return
	}
	f.counters[endpointIndex(ep)].calls.Add(1)

	// Read the body first: only once it is consumed does net/http watch the
	// connection, and cancel the request context if the client goes away
	// (which a Delay fault relies on).
	req := request{r: r}
	if r.Body != nil { // nil only when a caller builds the request by hand
		req.body, req.bodyErr = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	}

	var mfa, pwReset bool
	if fault, ok := f.pickFault(ep); ok {
		if fault.Delay > 0 && !sleep(r.Context(), fault.Delay) {
			return // the client is gone or the server is stopping
		}
		switch {
		case fault.Reset:
			reset(w)
			return
		case fault.Malformed:
			f.write(w, ep, http.StatusOK, []byte(malformedBody))
			return
		case fault.Status > 0:
			code := fault.Code
			if code == "" {
				code = defaultCode(ep, fault.Status)
			}
			details := fault.Details
			if details == nil && code == "USER_LOCKED_WITH_TIME" {
				details = map[string]any{"timeLeftInMinutes": 5}
			}
			if fault.RetryAfter != "" {
				w.Header().Set("Retry-After", fault.RetryAfter)
			}
			f.writeError(w, ep, fault.Status, code, fault.Message, details)
			return
		}
		if fault.RetryAfter != "" {
			w.Header().Set("Retry-After", fault.RetryAfter)
		}
		mfa, pwReset = fault.MFARequired, fault.PasswordResetRequired
	}

	if r.Method != method {
		w.Header().Set("Allow", method)
		f.writeError(w, ep, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "Method "+r.Method+" is not supported", nil)
		return
	}

	switch ep {
	case EndpointLogin:
		f.serveLogin(w, req, mfa, pwReset)
	case EndpointRefresh:
		f.serveRefresh(w, req, mfa, pwReset)
	case EndpointLogout:
		f.serveLogout(w, req)
	case EndpointServiceLogin:
		f.serveServiceLogin(w, req)
	case EndpointSelf:
		f.serveSelf(w, r)
	case EndpointPublicKey:
		f.writeJSON(w, ep, http.StatusOK, map[string]any{"publicKey": publicKeyBase64(), "previousPublicKey": nil})
	}
}

func (f *Fake) serveLogin(w http.ResponseWriter, r request, mfa, pwReset bool) {
	var req struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if !f.decode(w, r, EndpointLogin, &req, "username", "password") {
		return
	}
	u, ok := f.checkUser(req.Username, req.Password)
	if !ok {
		f.writeError(w, EndpointLogin, http.StatusForbidden, "LOGIN_FAILED", "", nil)
		return
	}
	rec := tokenRec{sub: u.id, username: u.username, org: u.org}
	f.writeJSON(w, EndpointLogin, http.StatusOK, f.loginResponse(rec, mfa, pwReset))
}

func (f *Fake) serveRefresh(w http.ResponseWriter, r request, mfa, pwReset bool) {
	var req struct {
		RefreshToken string `json:"refreshToken"`
	}
	if !f.decode(w, r, EndpointRefresh, &req, "refreshToken") {
		return
	}
	rec, ok := f.takeRefresh(req.RefreshToken)
	if !ok {
		f.writeError(w, EndpointRefresh, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID", "", nil)
		return
	}
	f.writeJSON(w, EndpointRefresh, http.StatusOK, f.loginResponse(rec, mfa, pwReset))
}

func (f *Fake) loginResponse(rec tokenRec, mfa, pwReset bool) LoginResponse {
	now := f.now()
	resp := LoginResponse{UserID: rec.sub, OwnerOrganizationID: rec.org}
	if mfa || pwReset {
		rec.limited = true
		a := f.issueAccess(rec, now)
		resp.AccessJwt = JwtToken{Token: a.token, Expiration: formatTime(a.exp)}
		resp.MFARequired = mfa
		resp.PasswordResetRequired = pwReset
		if mfa {
			resp.MFAExpiration = formatTime(a.exp)
		}
		return resp
	}
	a := f.issueAccess(rec, now)
	rt := f.issueRefresh(rec, now)
	resp.AccessJwt = JwtToken{Token: a.token, Expiration: formatTime(a.exp)}
	resp.RefreshJwt = &JwtToken{Token: rt.token, Expiration: formatTime(rt.exp)}
	return resp
}

func (f *Fake) serveLogout(w http.ResponseWriter, r request) {
	var req struct {
		RefreshToken string `json:"refreshToken"`
	}
	if !f.decode(w, r, EndpointLogout, &req, "refreshToken") {
		return
	}
	if _, ok := f.takeRefresh(req.RefreshToken); !ok {
		f.writeError(w, EndpointLogout, http.StatusForbidden, "REFRESH_TOKEN_NOT_VALID", "", nil)
		return
	}
	// The spec documents 200 SUCCESS with no body.
	f.write(w, EndpointLogout, http.StatusOK, nil)
}

func (f *Fake) serveServiceLogin(w http.ResponseWriter, r request) {
	var req struct {
		ID        string `json:"id"`
		SecretKey string `json:"secretKey"`
	}
	if !f.decode(w, r, EndpointServiceLogin, &req, "id", "secretKey") {
		return
	}
	s, ok := f.checkService(req.ID, req.SecretKey)
	if !ok {
		f.writeError(w, EndpointServiceLogin, http.StatusForbidden, "LOGIN_FAILED", "", nil)
		return
	}
	a := f.issueAccess(tokenRec{sub: s.id, org: s.org, service: true}, f.now())
	f.writeJSON(w, EndpointServiceLogin, http.StatusOK, ServiceUserAccessTokenResponse{
		AccessToken:           a.token,
		AccessTokenExpiration: formatTime(a.exp),
	})
}

func (f *Fake) serveSelf(w http.ResponseWriter, r *http.Request) {
	auth := r.Header.Get("Authorization")
	scheme, token, _ := strings.Cut(auth, " ")
	rec, ok := tokenRec{}, false
	if strings.EqualFold(scheme, "Bearer") {
		rec, ok = f.lookupAccess(strings.TrimSpace(token))
	}
	if !ok {
		f.writeError(w, EndpointSelf, http.StatusUnauthorized, "TOKEN_NOT_VALID", "", nil)
		return
	}
	resp := UserResponse{
		Username:            rec.username,
		ID:                  rec.sub,
		OwnerOrganizationID: rec.org,
		Active:              true,
		CredentialType:      "PASSWORD",
	}
	if rec.service {
		resp.Username = rec.sub
		resp.CredentialType = ""
	}
	f.writeJSON(w, EndpointSelf, http.StatusOK, resp)
}

// decode reads a JSON request body into dst and checks that the named
// string fields are present. On failure it answers 400 and returns false.
func (f *Fake) decode(w http.ResponseWriter, r request, ep Endpoint, dst any, required ...string) bool {
	mt, _, err := mime.ParseMediaType(r.r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		f.writeError(w, ep, http.StatusBadRequest, "BAD_REQUEST", "Content-Type must be application/json", nil)
		return false
	}
	body := r.body
	if r.bodyErr != nil {
		f.writeError(w, ep, http.StatusBadRequest, "BAD_REQUEST", "Could not read the request body", nil)
		return false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		f.writeError(w, ep, http.StatusBadRequest, "BAD_REQUEST", "The request body is not a JSON object", nil)
		return false
	}
	if err := json.Unmarshal(body, dst); err != nil {
		f.writeError(w, ep, http.StatusBadRequest, "BAD_REQUEST", "The request body has a field of the wrong type", nil)
		return false
	}
	var missing []string
	for _, name := range required {
		var s string
		if raw, ok := fields[name]; !ok || json.Unmarshal(raw, &s) != nil || s == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		f.writeError(w, ep, http.StatusBadRequest, "MISSING_PARAMETERS", "Missing parameters: "+strings.Join(missing, ", "),
			map[string]any{"parameters": missing})
		return false
	}
	return true
}

func (f *Fake) writeJSON(w http.ResponseWriter, ep Endpoint, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		f.writeError(w, ep, http.StatusInternalServerError, "INTERNAL_SERVER_ERROR", "", nil)
		return
	}
	f.write(w, ep, status, body)
}

// writeError answers BioT's error envelope. ep may be empty (unknown path).
func (f *Fake) writeError(w http.ResponseWriter, ep Endpoint, status int, code, message string, details map[string]any) {
	if message == "" {
		message = defaultMessage(code, status)
	}
	if details == nil {
		details = map[string]any{}
	}
	body, err := json.Marshal(ErrorResponse{
		Code:        code,
		Message:     message,
		ServiceName: "ums",
		TraceID:     randomHex(8),
		Environment: "sandbox",
		Details:     details,
	})
	if err != nil { // details that do not marshal
		body, _ = json.Marshal(ErrorResponse{Code: code, Message: message, ServiceName: "ums",
			TraceID: randomHex(8), Environment: "sandbox", Details: map[string]any{}})
	}
	f.write(w, ep, status, body)
}

// write answers status with body and counts a 200 as a success of ep.
func (f *Fake) write(w http.ResponseWriter, ep Endpoint, status int, body []byte) {
	h := w.Header()
	if body != nil {
		h.Set("Content-Type", "application/json")
	}
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if len(body) > 0 {
		_, _ = w.Write(body)
	}
	if status == http.StatusOK && ep != "" {
		f.counters[endpointIndex(ep)].successes.Add(1)
	}
}

// sleep waits for d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// reset closes the connection without answering. On a TCP connection it
// sets SO_LINGER to 0 so the peer sees a reset (RST), not an orderly close.
func reset(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		conn, _, err := hj.Hijack()
		if err == nil {
			raw := conn
			if tc, ok := conn.(*tls.Conn); ok {
				raw = tc.NetConn()
			}
			if tcp, ok := raw.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0)
			}
			_ = raw.Close()
			return
		}
		if !errors.Is(err, http.ErrNotSupported) {
			return
		}
	}
	// No hijacking (HTTP/2, or a recorder): abort the response instead.
	panic(http.ErrAbortHandler)
}
