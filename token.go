package biot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/sync/singleflight"
)

const (
	// tokenStorageKey holds the cached token pair, so a restart resumes
	// without sending the password again.
	tokenStorageKey = "token"

	// maxSkew is the most a lease ends before its token does.
	maxSkew = 5 * time.Second
	// refreshMargin: a refresh token this close to its expiry is not tried.
	refreshMargin = 5 * time.Second
	// rejectionHold is how long a refused login is remembered, so that a
	// stream of reads with a wrong password cannot lock the BioT user.
	rejectionHold = 30 * time.Second
	// retryMin and retryMax bound the wait before a failed background
	// refresh is tried again.
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// lifetime is the span BioT granted the access token.
func (t *token) lifetime() time.Duration { return t.AccessExpiresAt.Sub(t.IssuedAt) }

// skew is how long before the token's expiry its lease ends: a tenth of the
// lifetime, at most maxSkew.
func (t *token) skew() time.Duration { return min(maxSkew, t.lifetime()/10) }

// refreshAt is when the token becomes due: one third of its lifetime left.
func (t *token) refreshAt() time.Time { return t.AccessExpiresAt.Add(-t.lifetime() / 3) }

// leaseTTL is the lease a token gets at now; a token is usable while it is at
// least a second.
func (t *token) leaseTTL(now time.Time) time.Duration {
	return t.AccessExpiresAt.Sub(now) - t.skew()
}

func (t *token) usable(now time.Time) bool { return t.leaseTTL(now) >= time.Second }

// canRefresh reports whether the refresh token is worth trying at now.
func (t *token) canRefresh(now time.Time) bool {
	if t.RefreshToken == "" {
		return false
	}
	return t.RefreshExpiresAt.IsZero() || now.Before(t.RefreshExpiresAt.Add(-refreshMargin))
}

// session is one config's live state: its BioT client and cached token. A
// config change replaces the whole session, so a refresh in flight for an old
// config can never install its token under a new one.
type session struct {
	b      *backend
	cfg    *biotConfig
	client *client
	logger hclog.Logger

	tok    atomic.Pointer[token]
	flight singleflight.Group
	// refreshing is set while a read-started background refresh runs;
	// retryAt (unix nanoseconds) holds such refreshes back after a failure.
	refreshing atomic.Bool
	retryAt    atomic.Int64

	ctx    context.Context // ends when the session is replaced or cleaned
	cancel context.CancelFunc

	mu       sync.Mutex  // guards timer and rejected
	timer    *time.Timer // next background refresh
	rejected *rejection  // last refused login, while held
}

type rejection struct {
	err   error
	until time.Time
}

// newSession builds a session for cfg, starting from tok (may be nil). It does
// no I/O beyond scheduling the first background refresh.
func (b *backend) newSession(cfg *biotConfig, tok *token) (*session, error) {
	c, err := newClient(cfg.URL, cfg.CACert, b.now)
	if err != nil {
		return nil, err
	}
	return b.newSessionWith(cfg, c, tok), nil
}

// newSessionWith is newSession with a client already built for cfg.
func (b *backend) newSessionWith(cfg *biotConfig, c *client, tok *token) *session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{b: b, cfg: cfg, client: c, logger: b.logger, ctx: ctx, cancel: cancel}
	if tok != nil {
		s.tok.Store(tok)
		s.schedule(tok)
	}
	return s
}

// stop ends the session's background work.
func (s *session) stop() {
	s.cancel()
	s.client.closeIdle()
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
}

// get returns a usable token. A fresh cached token comes straight from memory;
// a due one is returned at once while one background refresh starts; only
// when no usable token exists does the caller wait for BioT.
func (s *session) get(ctx context.Context) (*token, error) {
	now := s.b.now()
	if t := s.tok.Load(); t != nil && t.usable(now) {
		if !now.Before(t.refreshAt()) {
			s.refreshAsync()
		}
		return t, nil
	}
	ch := s.flight.DoChan(tokenStorageKey, s.renew)
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*token), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("biot: gave up waiting for a token: %w", ctx.Err())
	}
}

// refreshAsync starts a background refresh unless one is running or a
// failed one asked to wait, without waiting itself. It costs readers of a due
// token one atomic load while a refresh runs.
func (s *session) refreshAsync() {
	if s.b.now().UnixNano() < s.retryAt.Load() || !s.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.refreshing.Store(false)
		_, _, _ = s.flight.Do(tokenStorageKey, s.renew)
	}()
}

// refreshIfDue is the background refresh (timer and periodic hook): it renews
// a held token once due, waiting for the result; errors are logged by renew.
// Without a token, or after BioT refused the credentials, it leaves BioT
// alone: only reads log in then, so a wrong password is not retried forever.
func (s *session) refreshIfDue() {
	t := s.tok.Load()
	if t == nil || s.b.now().Before(t.refreshAt()) {
		return
	}
	s.mu.Lock()
	refused := s.rejected != nil
	s.mu.Unlock()
	if refused {
		return
	}
	<-s.flight.DoChan(tokenStorageKey, s.renew)
}

// renew gets a new token from BioT and installs it. It runs inside the single
// flight: one call at a time per session, its result shared by all waiters.
func (s *session) renew() (any, error) {
	now := s.b.now()
	cur := s.tok.Load()
	// Another flight may have finished just before this one started.
	if cur != nil && cur.usable(now) && now.Before(cur.refreshAt()) {
		return cur, nil
	}
	if err := s.heldRejection(); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.RequestTimeout)
	defer cancel()
	next, err := s.obtain(ctx, cur, now)
	if err != nil {
		if errors.Is(err, context.Canceled) && s.ctx.Err() != nil {
			return nil, errors.New("biot: config changed while a token was being fetched; read again")
		}
		s.failed(err, cur)
		return nil, err
	}
	if err := s.install(next); err != nil {
		return nil, err
	}
	return next, nil
}

// obtain logs in or refreshes, whichever the token at hand allows.
func (s *session) obtain(ctx context.Context, cur *token, now time.Time) (*token, error) {
	if cur != nil && cur.canRefresh(now) {
		next, err := s.client.Refresh(ctx, cur.RefreshToken)
		if err == nil {
			s.logger.Debug("refreshed the BioT token", "expires_at", next.AccessExpiresAt)
		}
		if err == nil || !isRejected(err) {
			return next, err
		}
		s.logger.Info("refresh token rejected by BioT; logging in again", "error", err)
	}
	next, err := login(ctx, s.client, s.cfg)
	if err == nil {
		s.logger.Info("logged in to BioT", "service_user", s.cfg.serviceUser(), "expires_at", next.AccessExpiresAt)
	}
	return next, err
}

// failed records a failed renewal: a refused login is held for a while, a
// transient failure is retried in the background while a token is held.
func (s *session) failed(err error, cur *token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if isRejected(err) {
		s.rejected = &rejection{err: err, until: s.b.now().Add(rejectionHold)}
		s.logger.Error("BioT refused the credentials; rewrite config to try again", "error", err)
		return
	}
	s.logger.Warn("could not renew the BioT token; will retry", "error", err)
	if cur != nil && s.ctx.Err() == nil {
		wait := min(max(cur.lifetime()/20, retryMin), retryMax)
		s.retryAt.Store(s.b.now().Add(wait).UnixNano())
		s.resetTimer(wait)
	}
}

// heldRejection returns the last refused login while it is held.
func (s *session) heldRejection() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejected == nil || !s.b.now().Before(s.rejected.until) {
		return nil
	}
	return fmt.Errorf("%w (not retried for %s after BioT refused it; write biot/config to retry now)",
		s.rejected.err, rejectionHold)
}

// install persists and caches a new token and schedules its refresh. The old
// refresh token is dead already (BioT rotates it), so nothing needs logging out.
func (s *session) install(t *token) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.ctx.Err() != nil {
		// The config changed under us: this token belongs to nobody.
		go s.b.logout(s.client, t)
		return errors.New("biot: config changed while a token was being fetched; read again")
	}
	if err := writeToken(s.ctx, s.b.storage, t); err != nil {
		// Serving from memory still works; a restart will log in again.
		s.logger.Warn("could not persist the BioT token", "error", err)
	}
	s.tok.Store(t)
	s.mu.Lock()
	s.rejected = nil
	s.mu.Unlock()
	s.schedule(t)
	return nil
}

// schedule arms the timer for t's refresh point.
func (s *session) schedule(t *token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetTimer(t.refreshAt().Sub(s.b.now()))
}

// resetTimer (s.mu held) arms the background refresh to fire after d.
func (s *session) resetTimer(d time.Duration) {
	if s.ctx.Err() != nil {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(max(d, 0), func() {
		if s.ctx.Err() == nil {
			s.refreshIfDue()
		}
	})
}

// logout ends t's BioT session, best effort: revoking or disabling never fails
// because of BioT.
func (b *backend) logout(c *client, t *token) {
	defer c.closeIdle() // c belongs to a dropped session
	if t == nil || t.RefreshToken == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Logout(ctx, t.RefreshToken); err != nil {
		b.logger.Debug("best-effort logout of the previous BioT session failed", "error", err)
	}
}

func readToken(ctx context.Context, st logical.Storage) (*token, error) {
	e, err := st.Get(ctx, tokenStorageKey)
	if err != nil || e == nil {
		return nil, err
	}
	var t token
	if err := json.Unmarshal(e.Value, &t); err != nil {
		return nil, fmt.Errorf("decoding stored token: %w", err)
	}
	if t.AccessToken == "" || t.AccessExpiresAt.IsZero() {
		return nil, errors.New("stored token is incomplete")
	}
	return &t, nil
}

func writeToken(ctx context.Context, st logical.Storage, t *token) error {
	e, err := logical.StorageEntryJSON(tokenStorageKey, t)
	if err != nil {
		return err
	}
	return st.Put(ctx, e)
}
