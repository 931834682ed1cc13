package biot

import (
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// systemViewTTL is how long cachedSystemView keeps an answer.
const systemViewTTL = time.Second

// cachedSystemView is Vault's SystemView with the two answers every creds
// read needs kept for systemViewTTL. In a plugin each SystemView call is a
// gRPC round trip into Vault, and a creds read made two: the SDK's router
// asks ReplicationState on every request to a path with Operations, and the
// read handler asks MaxLeaseTTL. Both change only when an operator tunes the
// mount or the cluster's replication state changes; Vault caps every lease at
// the mount's max TTL itself in any case.
type cachedSystemView struct {
	logical.SystemView
	maxLeaseTTL cachedAnswer[time.Duration]
	replState   cachedAnswer[consts.ReplicationState]
}

func newCachedSystemView(sv logical.SystemView) logical.SystemView {
	if sv == nil {
		return nil
	}
	return &cachedSystemView{SystemView: sv}
}

func (v *cachedSystemView) MaxLeaseTTL() time.Duration {
	return v.maxLeaseTTL.get(v.SystemView.MaxLeaseTTL)
}

func (v *cachedSystemView) ReplicationState() consts.ReplicationState {
	return v.replState.get(v.SystemView.ReplicationState)
}

// cachedAnswer holds one answer until it is systemViewTTL old. Readers never
// lock; concurrent misses may each ask, and the last answer wins.
type cachedAnswer[T any] struct{ p atomic.Pointer[answer[T]] }

type answer[T any] struct {
	v     T
	until time.Time
}

func (c *cachedAnswer[T]) get(ask func() T) T {
	now := time.Now()
	if a := c.p.Load(); a != nil && now.Before(a.until) {
		return a.v
	}
	v := ask()
	c.p.Store(&answer[T]{v: v, until: now.Add(systemViewTTL)})
	return v
}
