package biot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
)

// BioT UMS endpoints, relative to the configured base URL.
const (
	pathLogin        = "/ums/v2/users/login"
	pathRefresh      = "/ums/v2/users/token/refresh"
	pathLogout       = "/ums/v2/users/logout"
	pathServiceLogin = "/ums/v2/services/accessToken"

	// maxBodyBytes caps how much of a BioT response is read.
	maxBodyBytes = 1 << 20
	// maxMessageLen caps how much of BioT's error message is repeated.
	maxMessageLen = 300
)

// token is one BioT access token, with the refresh token that came with it.
// It is immutable once built: the cache swaps whole tokens.
type token struct {
	AccessToken      string    `json:"access_token"`
	AccessExpiresAt  time.Time `json:"access_expires_at"`
	IssuedAt         time.Time `json:"issued_at"`
	RefreshToken     string    `json:"refresh_token,omitempty"`
	RefreshExpiresAt time.Time `json:"refresh_expires_at,omitzero"`
	UserID           string    `json:"user_id,omitempty"`
	OrganizationID   string    `json:"organization_id,omitempty"`
}

// Error is a failed BioT call. It carries BioT's error envelope fields (never
// a request body), or the transport or decoding failure that stood in for one.
type Error struct {
	Op      string // "login", "refresh", "service login", "logout"
	Status  int    // HTTP status; 0 when no response came
	Code    string // BioT's error code, e.g. LOGIN_FAILED
	Message string // BioT's message, shortened
	TraceID string // BioT's traceId, for support requests
	Err     error  // transport, timeout or decoding cause
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("biot: ")
	b.WriteString(e.Op)
	b.WriteString(" failed: ")
	switch {
	case e.Code != "":
		fmt.Fprintf(&b, "%s (%d)", e.Code, e.Status)
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	case e.Status != 0:
		fmt.Fprintf(&b, "HTTP %d %s", e.Status, http.StatusText(e.Status))
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("unknown error")
	}
	if e.TraceID != "" {
		fmt.Fprintf(&b, " [traceId %s]", e.TraceID)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// rejected reports whether BioT refused the credentials or token outright
// (as opposed to failing transiently): repeating the same call is pointless.
func (e *Error) rejected() bool {
	return e.Status == http.StatusBadRequest || e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// isRejected reports whether err is a BioT answer refusing the credentials.
func isRejected(err error) bool {
	var be *Error
	return errors.As(err, &be) && be.rejected()
}

// errorEnvelope is BioT's error body, the same for every service.
type errorEnvelope struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	TraceID string `json:"traceId"`
}

type jwtField struct {
	Token      string `json:"token"`
	Expiration string `json:"expiration"`
}

type loginResponse struct {
	UserID                string    `json:"userId"`
	OwnerOrganizationID   string    `json:"ownerOrganizationId"`
	AccessJwt             *jwtField `json:"accessJwt"`
	RefreshJwt            *jwtField `json:"refreshJwt"`
	MfaRequired           bool      `json:"mfaRequired"`
	PasswordResetRequired bool      `json:"passwordResetRequired"`
}

type serviceLoginResponse struct {
	AccessToken           string `json:"accessToken"`
	AccessTokenExpiration string `json:"accessTokenExpiration"`
}

// client talks to one BioT UMS. It is safe for concurrent use.
type client struct {
	baseURL string
	http    *retryablehttp.Client
	now     func() time.Time
}

// newClient builds a client for baseURL trusting caPEM (or the system roots
// when empty). Transient failures are retried with jittered exponential
// backoff until the caller's context ends.
func newClient(baseURL, caPEM string, now func() time.Time) (*client, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caPEM)) {
			return nil, errors.New("ca_cert: no PEM certificate found")
		}
		tlsConfig.RootCAs = pool
	}
	hc := cleanhttp.DefaultPooledClient()
	hc.Transport.(*http.Transport).TLSClientConfig = tlsConfig
	// A redirect would resend credentials somewhere else: never follow one.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	rc := &retryablehttp.Client{
		HTTPClient:   hc,
		Logger:       nil, // retryablehttp's log lines are not ours to emit
		RetryWaitMin: 100 * time.Millisecond,
		RetryWaitMax: 3 * time.Second,
		RetryMax:     1000, // bounded by the caller's deadline (request_timeout)
		CheckRetry:   recordingRetryPolicy,
		Backoff:      jitterBackoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	return &client{baseURL: strings.TrimRight(baseURL, "/"), http: rc, now: now}, nil
}

// lastAttemptKey carries a *lastAttempt in a request's context, so that a
// timeout can say what the last try ran into.
type lastAttemptKey struct{}

type lastAttempt struct{ cause string }

// recordingRetryPolicy is retryablehttp's default policy, remembering the
// last failure of the request.
func recordingRetryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if la, ok := ctx.Value(lastAttemptKey{}).(*lastAttempt); ok {
		switch {
		case err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled):
			la.cause = transportCause(err).Error()
		case resp != nil && resp.StatusCode != http.StatusOK:
			la.cause = "HTTP " + resp.Status
		}
	}
	return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
}

// jitterBackoff waits what a 429 or 503 Retry-After asks (capped at max), or
// else a random time up to the exponential step ("full jitter").
func jitterBackoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && secs >= 0 {
				return min(time.Duration(secs)*time.Second, hi)
			}
			if t, err := http.ParseTime(s); err == nil {
				return min(max(time.Until(t), lo), hi)
			}
		}
	}
	step := hi
	if attempt < 30 {
		step = min(lo<<attempt, hi)
	}
	return lo/2 + rand.N(step)
}

// Login exchanges a BioT user's password for a token pair.
func (c *client) Login(ctx context.Context, username, password string) (*token, error) {
	body := map[string]string{"username": username, "password": password}
	return c.userTokens(ctx, "login", pathLogin, body)
}

// Refresh exchanges a refresh token for a new token pair (BioT rotates both).
func (c *client) Refresh(ctx context.Context, refreshToken string) (*token, error) {
	body := map[string]string{"refreshToken": refreshToken}
	return c.userTokens(ctx, "refresh", pathRefresh, body)
}

// ServiceLogin exchanges a service user's secret key for an access token.
func (c *client) ServiceLogin(ctx context.Context, id, secretKey string) (*token, error) {
	const op = "service login"
	var out serviceLoginResponse
	body := map[string]string{"id": id, "secretKey": secretKey}
	if err := c.post(ctx, op, pathServiceLogin, body, &out); err != nil {
		return nil, err
	}
	if out.AccessToken == "" {
		return nil, &Error{Op: op, Status: http.StatusOK, Err: errors.New("response has no accessToken")}
	}
	exp, err := parseExpiration(out.AccessTokenExpiration)
	if err != nil {
		return nil, &Error{Op: op, Status: http.StatusOK, Err: fmt.Errorf("accessTokenExpiration: %w", err)}
	}
	return &token{AccessToken: out.AccessToken, AccessExpiresAt: exp, IssuedAt: c.now().UTC()}, nil
}

// closeIdle closes the client's idle keep-alive connections. Call it when
// the client is dropped: otherwise each one holds a socket and two goroutines
// until the transport's idle timeout (90s).
func (c *client) closeIdle() { c.http.HTTPClient.CloseIdleConnections() }

// Logout ends the session of a refresh token.
func (c *client) Logout(ctx context.Context, refreshToken string) error {
	return c.post(ctx, "logout", pathLogout, map[string]string{"refreshToken": refreshToken}, nil)
}

func (c *client) userTokens(ctx context.Context, op, path string, body any) (*token, error) {
	var out loginResponse
	if err := c.post(ctx, op, path, body, &out); err != nil {
		return nil, err
	}
	return decodeLogin(op, &out, c.now())
}

// decodeLogin turns a LoginResponse into a token, or says why it cannot serve.
func decodeLogin(op string, out *loginResponse, now time.Time) (*token, error) {
	bad := func(format string, args ...any) error {
		return &Error{Op: op, Status: http.StatusOK, Err: fmt.Errorf(format, args...)}
	}
	switch {
	case out.MfaRequired:
		return nil, bad("BioT requires multi-factor authentication for this user, which a machine cannot complete; use a BioT service user (service_id, secret_key) instead")
	case out.PasswordResetRequired:
		return nil, bad("BioT requires a password reset for this user; reset it in BioT and write the new password to config, or use a BioT service user (service_id, secret_key)")
	case out.AccessJwt == nil || out.AccessJwt.Token == "":
		return nil, bad("response has no accessJwt.token")
	case out.RefreshJwt == nil || out.RefreshJwt.Token == "":
		return nil, bad("response has no refreshJwt, so the token could not be refreshed; use a BioT service user (service_id, secret_key) instead")
	}
	accessExp, err := parseExpiration(out.AccessJwt.Expiration)
	if err != nil {
		return nil, bad("accessJwt.expiration: %w", err)
	}
	refreshExp, err := parseExpiration(out.RefreshJwt.Expiration)
	if err != nil {
		return nil, bad("refreshJwt.expiration: %w", err)
	}
	return &token{
		AccessToken:      out.AccessJwt.Token,
		AccessExpiresAt:  accessExp,
		IssuedAt:         now.UTC(),
		RefreshToken:     out.RefreshJwt.Token,
		RefreshExpiresAt: refreshExp,
		UserID:           out.UserID,
		OrganizationID:   out.OwnerOrganizationID,
	}, nil
}

// parseExpiration reads BioT's ISO-8601 date-times; one without a zone is UTC.
func parseExpiration(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing")
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("not an ISO-8601 date-time: %q", truncate(s, 40))
}

// post sends body as JSON and decodes a 200 answer into out (when not nil).
// Any other answer becomes an *Error built from BioT's envelope.
func (c *client) post(ctx context.Context, op, path string, body, out any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return &Error{Op: op, Err: errors.New("cannot encode request")}
	}
	last := &lastAttempt{}
	ctx = context.WithValue(ctx, lastAttemptKey{}, last)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, c.baseURL+path, bytes.NewReader(payload))
	if err != nil {
		return &Error{Op: op, Err: errors.New("cannot build request")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		err = transportCause(err)
		if ctxErr := ctx.Err(); ctxErr != nil {
			if last.cause == "" && !errors.Is(err, ctxErr) {
				last.cause = err.Error()
			}
			if last.cause == "" {
				err = fmt.Errorf("no answer within the request timeout (%w)", ctxErr)
			} else {
				err = fmt.Errorf("no answer within the request timeout (%w); last try: %s", ctxErr, last.cause)
			}
		}
		if resp == nil {
			return &Error{Op: op, Err: err}
		}
	}
	defer resp.Body.Close()

	data, readErr := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes+1))
	switch {
	case readErr != nil:
		return &Error{Op: op, Status: resp.StatusCode, Err: fmt.Errorf("reading response: %w", transportCause(readErr))}
	case len(data) > maxBodyBytes:
		return &Error{Op: op, Status: resp.StatusCode, Err: fmt.Errorf("response larger than %d bytes", maxBodyBytes)}
	}

	return decodeResponse(op, resp.StatusCode, data, out)
}

// decodeResponse turns a BioT answer into out (status 200) or an *Error built
// from BioT's error envelope.
func decodeResponse(op string, status int, data []byte, out any) error {
	if status != http.StatusOK {
		e := &Error{Op: op, Status: status}
		var env errorEnvelope
		if json.Unmarshal(data, &env) == nil && env.Code != "" {
			e.Code = printable(env.Code, 64)
			e.Message = printable(env.Message, maxMessageLen)
			e.TraceID = printable(env.TraceID, 64)
		} else {
			e.Err = errors.New("no BioT error body")
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &Error{Op: op, Status: status, Err: errors.New("response is not the JSON BioT documents")}
	}
	return nil
}

// transportCause strips the request URL that net/http wraps around errors:
// the URL is already known to the operator and only adds noise.
func transportCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// printable makes text from BioT safe to repeat in one log or error line:
// valid UTF-8, no control characters, at most n bytes.
func printable(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return truncate(s, n)
}

// truncate shortens s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
