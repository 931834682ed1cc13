// Package biot is a HashiCorp Vault secrets engine that hands out BioT access
// tokens. An operator writes BioT credentials once to config; every client
// reads creds and gets a leased, short-lived access token while the engine
// logs in, caches and refreshes the token pair on its own.
package biot

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const backendHelp = `
The BioT secrets engine hands out short-lived BioT access tokens.

Write a BioT user's (or service user's) credentials once to "config"; then
"creds" returns an access token as a lease that ends before the token does.
The engine logs in, caches the token pair, refreshes it before it expires and
logs in again only when the refresh token is gone. It never returns the
password, the secret key or the refresh token.
`

// Factory returns a configured backend. It does no I/O: Vault calls it at
// registration time too.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend(conf)
	c := *conf
	c.System = newCachedSystemView(conf.System)
	if err := b.Setup(ctx, &c); err != nil {
		return nil, err
	}
	return b, nil
}

type backend struct {
	*framework.Backend

	// storage is the mount's storage view, for background refreshes that
	// run outside any request.
	storage logical.Storage
	logger  hclog.Logger
	now     func() time.Time

	// mu serialises config changes, session loading and token installs.
	// Only a config write holds it across a call to BioT (its verification
	// login, bounded by request_timeout); reads of a cached token never take it.
	mu sync.Mutex
	// sess is the live session (config, client, cached token), nil until
	// loaded from storage. Reads load it without locking.
	sess atomic.Pointer[session]
	// loaded is true once sess reflects storage (a nil sess then means no config).
	loaded atomic.Bool
}

func newBackend(conf *logical.BackendConfig) *backend {
	b := &backend{
		storage: conf.StorageView,
		logger:  conf.Logger,
		now:     time.Now,
	}
	if b.logger == nil {
		b.logger = hclog.NewNullLogger()
	}
	b.Backend = &framework.Backend{
		Help:        strings.TrimSpace(backendHelp),
		BackendType: logical.TypeLogical,
		PathsSpecial: &logical.Paths{
			SealWrapStorage: []string{configStorageKey, tokenStorageKey},
		},
		Paths: []*framework.Path{
			b.pathConfig(),
			b.pathCreds(),
		},
		Secrets:        []*framework.Secret{b.secretToken()},
		InitializeFunc: b.initialize,
		PeriodicFunc:   b.periodic,
		Clean:          b.clean,
		Invalidate:     b.invalidate,
		RunningVersion: RunningVersion(),
	}
	return b
}

// initialize runs once the mount is set up (not at registration): it loads the
// persisted config and token so background refreshes resume after a restart
// without waiting for the first read.
func (b *backend) initialize(ctx context.Context, _ *logical.InitializationRequest) error {
	if _, err := b.session(ctx); err != nil {
		b.logger.Warn("could not load stored config", "error", err)
	}
	return nil
}

// periodic is Vault's once-a-minute hook: a backstop for the refresh timer.
func (b *backend) periodic(ctx context.Context, _ *logical.Request) error {
	s, err := b.session(ctx)
	if err != nil || s == nil {
		return err
	}
	s.refreshIfDue()
	return nil
}

// clean stops all background work when the mount is disabled or the plugin
// shuts down.
func (b *backend) clean(context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.sess.Swap(nil); s != nil {
		s.stop()
	}
	b.loaded.Store(false)
}

// invalidate drops in-memory state when another node changed storage.
func (b *backend) invalidate(_ context.Context, key string) {
	if key != configStorageKey && key != tokenStorageKey {
		return
	}
	b.clean(context.Background())
}

// session returns the live session, loading config and token from storage on
// first use. It returns nil, nil when no config has been written.
func (b *backend) session(ctx context.Context) (*session, error) {
	if b.loaded.Load() {
		return b.sess.Load(), nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.loaded.Load() {
		return b.sess.Load(), nil
	}
	cfg, err := readConfig(ctx, b.storage)
	if err != nil {
		return nil, err
	}
	var s *session
	if cfg != nil {
		tok, err := readToken(ctx, b.storage)
		if err != nil {
			b.logger.Warn("ignoring unreadable stored token; will log in again", "error", err)
			tok = nil
		}
		if s, err = b.newSession(cfg, tok); err != nil {
			return nil, err
		}
	}
	b.sess.Store(s)
	b.loaded.Store(true)
	return s, nil
}
