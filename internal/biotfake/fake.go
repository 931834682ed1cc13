// Package biotfake is an in-process stand-in for BioT's User Management
// Service (UMS), faithful to BioT's published OpenAPI description
// (shared/biot/ums-openapi-2.4.2.json) for the endpoints the plugin uses:
// user login, refresh-token rotation, logout, service-user login and
// GET /users/self. It issues RS512-signed JWTs with an exp claim, expires and
// rotates refresh tokens, can be told to fail the ways BioT fails, and counts
// every call.
//
// A Fake is an http.Handler; Server runs one on 127.0.0.1 over plain HTTP or
// TLS and can be stopped (connection refused) and started again on the same
// address. Everything is safe for concurrent use.
package biotfake

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint names one UMS operation, for Inject, Calls and Successes.
type Endpoint string

// The endpoints the fake serves. Paths are relative to the base URL.
const (
	EndpointLogin        Endpoint = "login"         // POST /ums/v2/users/login
	EndpointRefresh      Endpoint = "refresh"       // POST /ums/v2/users/token/refresh
	EndpointLogout       Endpoint = "logout"        // POST /ums/v2/users/logout
	EndpointServiceLogin Endpoint = "service_login" // POST /ums/v2/services/accessToken
	EndpointSelf         Endpoint = "self"          // GET /ums/v2/users/self (bearer needed)
	EndpointPublicKey    Endpoint = "public_key"    // GET /ums/v1/security/public-key
)

// Paths of the endpoints, as served (the spec's servers entry is /ums).
const (
	PathLogin        = "/ums/v2/users/login"
	PathRefresh      = "/ums/v2/users/token/refresh"
	PathLogout       = "/ums/v2/users/logout"
	PathServiceLogin = "/ums/v2/services/accessToken"
	PathSelf         = "/ums/v2/users/self"
	PathPublicKey    = "/ums/v1/security/public-key"
)

// Demo credentials preloaded by NewFake.
const (
	DemoUsername      = "demo@example.com"
	DemoPassword      = "demo-password"
	DemoServiceID     = "00000000-0000-4000-8000-000000000001"
	DemoServiceSecret = "demo-service-secret"
)

// Default token lifetimes.
const (
	DefaultAccessTTL  = 5 * time.Minute
	DefaultRefreshTTL = time.Hour
)

// Options configures a Fake. The zero value is usable.
type Options struct {
	AccessTTL  time.Duration    // access-token lifetime; default 5m
	RefreshTTL time.Duration    // refresh-token lifetime; default 1h
	Now        func() time.Time // clock for issuing and checking expirations; default time.Now
}

// User identifies a user account of the fake.
type User struct {
	ID             string
	OrganizationID string
}

type userRec struct {
	username string
	password string
	id       string
	org      string
}

type serviceRec struct {
	id     string
	secret string
	org    string
}

// tokenRec describes an issued token (access or refresh).
type tokenRec struct {
	sub      string // user id or service id
	username string // empty for services
	org      string
	service  bool
	limited  bool // an MFA / password-reset access token: not accepted as a bearer
	exp      time.Time
}

// endpoint indexes for the counters.
const (
	idxLogin = iota
	idxRefresh
	idxLogout
	idxServiceLogin
	idxSelf
	idxPublicKey
	numEndpoints
)

func endpointIndex(ep Endpoint) int {
	switch ep {
	case EndpointLogin:
		return idxLogin
	case EndpointRefresh:
		return idxRefresh
	case EndpointLogout:
		return idxLogout
	case EndpointServiceLogin:
		return idxServiceLogin
	case EndpointSelf:
		return idxSelf
	case EndpointPublicKey:
		return idxPublicKey
	}
	return -1
}

type counter struct {
	calls     atomic.Int64
	successes atomic.Int64
	_         [48]byte // keep counters of different endpoints on different cache lines
}

// Fake is the BioT UMS state machine. It is an http.Handler. Create it with
// NewFake.
type Fake struct {
	accessTTL  time.Duration
	refreshTTL time.Duration
	now        func() time.Time
	org        string

	amu      sync.RWMutex
	users    map[string]*userRec // by username
	services map[string]*serviceRec

	tmu           sync.RWMutex
	access        map[string]*tokenRec // every access token ever issued
	refresh       map[string]*tokenRec // refresh tokens that still work (unexpired ones, until used/logged out/revoked)
	issuedAccess  []string
	issuedRefresh []string

	fmu     sync.Mutex
	faults  []*faultRec
	nfaults atomic.Int64

	counters [numEndpoints]counter
}

// NewFake returns a Fake with the demo user and demo service preloaded.
func NewFake(opts Options) *Fake {
	f := &Fake{
		accessTTL:  opts.AccessTTL,
		refreshTTL: opts.RefreshTTL,
		now:        opts.Now,
		org:        newUUID(),
		users:      make(map[string]*userRec),
		services:   make(map[string]*serviceRec),
		access:     make(map[string]*tokenRec),
		refresh:    make(map[string]*tokenRec),
	}
	if f.accessTTL <= 0 {
		f.accessTTL = DefaultAccessTTL
	}
	if f.refreshTTL <= 0 {
		f.refreshTTL = DefaultRefreshTTL
	}
	if f.now == nil {
		f.now = time.Now
	}
	signingKey() // generate the process-wide key now, not inside the first request
	f.AddUser(DemoUsername, DemoPassword)
	f.AddService(DemoServiceID, DemoServiceSecret)
	return f
}

// OrganizationID is the owner organization of every user and service of this fake.
func (f *Fake) OrganizationID() string { return f.org }

// AddUser creates a user, or replaces the password of an existing one (its
// ID and sessions are kept).
func (f *Fake) AddUser(username, password string) User {
	f.amu.Lock()
	defer f.amu.Unlock()
	u, ok := f.users[username]
	if !ok {
		u = &userRec{username: username, id: newUUID(), org: f.org}
		f.users[username] = u
	}
	u.password = password
	return User{ID: u.id, OrganizationID: u.org}
}

// SetPassword changes a user's password, as if changed at BioT. Like BioT, it
// does not revoke the user's sessions: issued refresh tokens keep working.
// An unknown username creates the user.
func (f *Fake) SetPassword(username, password string) {
	f.AddUser(username, password)
}

// RemoveUser deletes a user: logins fail with LOGIN_FAILED. Issued tokens are
// not revoked.
func (f *Fake) RemoveUser(username string) {
	f.amu.Lock()
	defer f.amu.Unlock()
	delete(f.users, username)
}

// AddService creates a service user, or replaces its secret key.
func (f *Fake) AddService(id, secretKey string) {
	f.amu.Lock()
	defer f.amu.Unlock()
	f.services[id] = &serviceRec{id: id, secret: secretKey, org: f.org}
}

// RemoveService deletes a service user.
func (f *Fake) RemoveService(id string) {
	f.amu.Lock()
	defer f.amu.Unlock()
	delete(f.services, id)
}

// RevokeAllRefreshTokens makes every refresh token issued so far stop
// working, as if every session were revoked at BioT. Access tokens stay valid
// until they expire (they are stateless JWTs).
func (f *Fake) RevokeAllRefreshTokens() {
	f.tmu.Lock()
	defer f.tmu.Unlock()
	f.refresh = make(map[string]*tokenRec)
}

// Calls counts every request to an endpoint, whatever the answer.
func (f *Fake) Calls(ep Endpoint) int64 {
	if i := endpointIndex(ep); i >= 0 {
		return f.counters[i].calls.Load()
	}
	return 0
}

// Successes counts the requests to an endpoint that were answered 200.
func (f *Fake) Successes(ep Endpoint) int64 {
	if i := endpointIndex(ep); i >= 0 {
		return f.counters[i].successes.Load()
	}
	return 0
}

// ResetCounts sets every counter to zero.
func (f *Fake) ResetCounts() {
	for i := range f.counters {
		f.counters[i].calls.Store(0)
		f.counters[i].successes.Store(0)
	}
}

// IssuedRefreshTokens returns every refresh token issued so far, in order,
// whether still valid or not.
func (f *Fake) IssuedRefreshTokens() []string {
	f.tmu.RLock()
	defer f.tmu.RUnlock()
	return slices.Clone(f.issuedRefresh)
}

// IssuedAccessTokens returns every access token issued so far, in order,
// whether still valid or not (including the limited tokens of MFA or
// password-reset logins, which are never valid as bearers).
func (f *Fake) IssuedAccessTokens() []string {
	f.tmu.RLock()
	defer f.tmu.RUnlock()
	return slices.Clone(f.issuedAccess)
}

// AccessTokenValid reports whether token is an access token issued by this
// fake that is not expired (per Options.Now) and would be accepted as a bearer.
func (f *Fake) AccessTokenValid(token string) bool {
	_, ok := f.lookupAccess(token)
	return ok
}

// RefreshTokenValid reports whether token is a refresh token issued by this
// fake that would be accepted by the refresh endpoint now.
func (f *Fake) RefreshTokenValid(token string) bool {
	now := f.now()
	f.tmu.RLock()
	defer f.tmu.RUnlock()
	rec, ok := f.refresh[token]
	return ok && now.Before(rec.exp)
}

func (f *Fake) lookupAccess(token string) (tokenRec, bool) {
	now := f.now()
	f.tmu.RLock()
	rec, ok := f.access[token]
	f.tmu.RUnlock()
	if !ok || rec.limited || !now.Before(rec.exp) {
		return tokenRec{}, false
	}
	return *rec, true
}

// checkUser returns the user if the credentials match.
func (f *Fake) checkUser(username, password string) (userRec, bool) {
	f.amu.RLock()
	u, ok := f.users[username]
	var rec userRec
	if ok {
		rec = *u
	}
	f.amu.RUnlock()
	if !ok || subtle.ConstantTimeCompare([]byte(rec.password), []byte(password)) != 1 {
		return userRec{}, false
	}
	return rec, true
}

func (f *Fake) checkService(id, secret string) (serviceRec, bool) {
	f.amu.RLock()
	s, ok := f.services[id]
	var rec serviceRec
	if ok {
		rec = *s
	}
	f.amu.RUnlock()
	if !ok || subtle.ConstantTimeCompare([]byte(rec.secret), []byte(secret)) != 1 {
		return serviceRec{}, false
	}
	return rec, true
}

// takeRefresh consumes a refresh token: it returns its record and makes the
// token stop working. ok is false for an unknown, used, revoked, logged-out
// or expired token.
func (f *Fake) takeRefresh(token string) (tokenRec, bool) {
	now := f.now()
	f.tmu.Lock()
	defer f.tmu.Unlock()
	rec, ok := f.refresh[token]
	if !ok {
		return tokenRec{}, false
	}
	delete(f.refresh, token)
	if !now.Before(rec.exp) {
		return tokenRec{}, false
	}
	return *rec, true
}

// issued is a freshly minted token.
type issued struct {
	token string
	exp   time.Time
}

// issueAccess mints and records an access token for rec (rec.exp is ignored).
func (f *Fake) issueAccess(rec tokenRec, now time.Time) issued {
	rec.exp = expiry(now, f.accessTTL)
	typ := "access"
	if rec.limited {
		typ = "mfa"
	}
	tok := mint(rec, typ, now)
	f.tmu.Lock()
	f.access[tok] = &rec
	f.issuedAccess = append(f.issuedAccess, tok)
	f.tmu.Unlock()
	return issued{token: tok, exp: rec.exp}
}

// issueRefresh mints and records a working refresh token for rec.
func (f *Fake) issueRefresh(rec tokenRec, now time.Time) issued {
	rec.exp = expiry(now, f.refreshTTL)
	tok := mint(rec, "refresh", now)
	f.tmu.Lock()
	f.refresh[tok] = &rec
	f.issuedRefresh = append(f.issuedRefresh, tok)
	f.tmu.Unlock()
	return issued{token: tok, exp: rec.exp}
}

// expiry is now+ttl at millisecond precision, the precision of BioT's
// expiration strings, so the string and the check agree.
func expiry(now time.Time, ttl time.Duration) time.Time {
	return now.Add(ttl).Truncate(time.Millisecond)
}

// formatTime renders t as BioT does: RFC 3339 in UTC with milliseconds.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// newUUID returns a random version-4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
