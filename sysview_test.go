package biot

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
)

// countingSystemView counts the SystemView calls that, in a plugin, are gRPC
// round trips into Vault.
type countingSystemView struct {
	logical.StaticSystemView
	maxLeaseTTL, replState atomic.Int64
}

func (c *countingSystemView) MaxLeaseTTL() time.Duration {
	c.maxLeaseTTL.Add(1)
	return c.StaticSystemView.MaxLeaseTTL()
}

func (c *countingSystemView) ReplicationState() consts.ReplicationState {
	c.replState.Add(1)
	return c.StaticSystemView.ReplicationState()
}

// TestCredsReadsSpareVault: a burst of creds reads asks Vault for the mount's
// max lease TTL and the replication state at most once per systemViewTTL,
// not once per read.
func TestCredsReadsSpareVault(t *testing.T) {
	e := newTestEnv(t, envOptions{accessTTL: time.Hour, refreshTTL: 2 * time.Hour})
	sv := &countingSystemView{StaticSystemView: logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 30 * time.Minute}}
	lb, err := Factory(context.Background(), &logical.BackendConfig{StorageView: e.storage, Logger: hclog.NewNullLogger(), System: sv})
	if err != nil {
		t.Fatal(err)
	}
	b := lb.(*backend)
	b.now = e.clock.Now
	t.Cleanup(func() { b.Cleanup(context.Background()) })
	e.b = b
	e.writeConfig(e.userConfig())

	sv.maxLeaseTTL.Store(0)
	sv.replState.Store(0)
	start := time.Now()
	const reads = 500
	for range reads {
		if resp := e.creds(b); resp.Secret.TTL != 30*time.Minute {
			t.Fatalf("lease TTL %s, want the mount's max 30m", resp.Secret.TTL)
		}
	}
	limit := 1 + int64(time.Since(start)/systemViewTTL)
	if n := sv.maxLeaseTTL.Load(); n > limit {
		t.Errorf("%d reads asked Vault for MaxLeaseTTL %d times, want at most %d", reads, n, limit)
	}
	if n := sv.replState.Load(); n > limit {
		t.Errorf("%d reads asked Vault for ReplicationState %d times, want at most %d", reads, n, limit)
	}
}
