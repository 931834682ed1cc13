//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// timedRead is one creds read of a loop, with when it started.
type timedRead struct {
	start time.Time
	d     time.Duration
	err   error
	tok   string
}

// recordLoop runs readLoop and keeps every read, in no particular order.
func recordLoop(ctx context.Context, c *api.Client, mount string, readers int, pause time.Duration) func() []timedRead {
	var mu sync.Mutex
	var reads []timedRead
	done := make(chan struct{})
	go func() {
		defer close(done)
		readLoop(ctx, c, mount, readers, pause, func(s *api.Secret, d time.Duration, err error) {
			r := timedRead{start: time.Now().Add(-d), d: d, err: err}
			if err == nil {
				r.tok, _ = s.Data["access_token"].(string)
			}
			mu.Lock()
			reads = append(reads, r)
			mu.Unlock()
		})
	}()
	return func() []timedRead {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return reads
	}
}

// TestReliabilityVaultRestart restarts a Vault server with file storage in
// the middle of a read loop, then kills the plugin process with SIGKILL: in
// both cases reads succeed again as soon as Vault (or the plugin) is back,
// served from the token pair in storage, without a new login.
func TestReliabilityVaultRestart(t *testing.T) {
	t.Parallel()
	fake := newFake(t, biotfake.Options{AccessTTL: 3 * time.Minute}) // nothing falls due during the test
	v := startConfiguredServer(t, with(vaulttest.UserConfig(fake), "request_timeout", "5s"))
	tok := checkCreds(t, fake, v.ReadCreds(t, "biot"), "biot", true)
	c := apiClient(t, v, 8, 10*time.Second)

	t.Run("vault_restart", func(t *testing.T) {
		logins0, refreshes0 := upstream(fake)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wait := recordLoop(ctx, c, "biot", 4, 50*time.Millisecond)
		time.Sleep(2 * time.Second)
		stopped := time.Now()
		v.Restart(t)
		v.Unseal(t)
		unsealed := time.Now()
		s, d, err := readCreds(c, "biot")
		if err != nil {
			t.Errorf("first read after unseal failed after %s: %v", d.Round(time.Millisecond), err)
		} else if s.Data["access_token"] != tok {
			t.Error("first read after unseal returned another token than the stored one")
		}
		time.Sleep(3 * time.Second)
		cancel()
		reads := wait()

		var st readStats
		var before, down, after int
		for _, r := range reads {
			st.record(r.err, r.d)
			switch {
			case r.start.Add(r.d).Before(stopped):
				before++
				if r.err != nil {
					t.Errorf("a read before the restart failed: %v", r.err)
				}
			case r.start.Before(unsealed): // overlapping the downtime
				down++
			default:
				after++
				if r.err != nil {
					t.Errorf("a read after unseal failed: %v", r.err)
				} else if r.tok != tok {
					t.Error("a read after unseal returned another token than the stored one")
				}
			}
		}
		st.record(err, d)
		logins, refreshes := upstream(fake)
		fig := st.figure("vault_restart", nil, fmt.Sprintf("reads_before=%d reads_while_down_or_sealed=%d reads_after_unseal=%d first_read_after_unseal_ms=%d down_ms=%d",
			before, down, after+1, d.Milliseconds(), unsealed.Sub(stopped).Milliseconds()))
		fig.logins, fig.refreshes = logins-logins0, refreshes-refreshes0
		fig.print(t)
		if before == 0 || after == 0 {
			t.Errorf("reads before the restart %d, after unseal %d; want some of each", before, after)
		}
		if logins != logins0 {
			t.Errorf("login calls went from %d to %d across the restart; want none", logins0, logins)
		}
	})

	t.Run("plugin_killed", func(t *testing.T) {
		vaultPID := v.Process().PID()
		pid := pluginPID(t, vaultPID)
		logins0, refreshes0 := upstream(fake)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wait := recordLoop(ctx, c, "biot", 4, 50*time.Millisecond)
		time.Sleep(time.Second)
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
		// Vault reaps its child; from then on it knows the plugin is gone.
		if !waitUntil(10*time.Second, func() bool { _, err := os.Stat("/proc/" + strconv.Itoa(pid)); return os.IsNotExist(err) }) {
			t.Fatalf("plugin pid %d still exists 10s after SIGKILL", pid)
		}
		reaped := time.Now()
		// Reads from half a second after the reap on must all succeed;
		// before that Vault may not yet have noticed the plugin exit.
		recovered := reaped.Add(500 * time.Millisecond)
		time.Sleep(3 * time.Second)
		cancel()
		reads := wait()

		var st readStats
		var failedMeanwhile int
		var afterReap int
		for _, r := range reads {
			st.record(r.err, r.d)
			switch {
			case r.start.Add(r.d).Before(killed):
				if r.err != nil {
					t.Errorf("a read before the kill failed: %v", r.err)
				}
			case r.start.Before(recovered):
				if r.err != nil {
					failedMeanwhile++
					t.Logf("read between the kill and Vault restarting the plugin: %v", r.err)
				}
			default:
				afterReap++
				if r.err != nil {
					t.Errorf("a read %s after the killed plugin was reaped failed: %v", r.start.Sub(reaped).Round(time.Millisecond), r.err)
				} else if r.tok != tok {
					t.Error("a read after the plugin restart returned another token than the stored one")
				}
			}
		}
		newPIDs := pluginPIDs(vaultPID)
		logins, refreshes := upstream(fake)
		fig := st.figure("plugin_killed", nil, fmt.Sprintf("failed_within_500ms_of_reap=%d reads_after=%d reaped_after_ms=%d new_plugin_pid=%v",
			failedMeanwhile, afterReap, reaped.Sub(killed).Milliseconds(), newPIDs))
		fig.logins, fig.refreshes = logins-logins0, refreshes-refreshes0
		fig.print(t)
		if afterReap == 0 {
			t.Error("no read after the plugin was killed")
		}
		if len(newPIDs) != 1 || newPIDs[0] == pid {
			t.Errorf("plugin processes after the kill: %v, want one new one (old pid %d)", newPIDs, pid)
		}
		if logins != logins0 {
			t.Errorf("login calls went from %d to %d after the plugin restart; want none: the token is in storage", logins0, logins)
		}
	})
}

// TestReliabilityColdCache sends 1,000 concurrent creds reads through Vault
// to a mount whose config was stored without logging in: every read
// succeeds, with the same token, from exactly one BioT login.
func TestReliabilityColdCache(t *testing.T) {
	t.Parallel()
	const n = 1000
	fake := newFake(t, biotfake.Options{})
	v := env.StartDev(t)
	v.Register(t)
	enableWithConfig(t, v, "biot", with(vaulttest.UserConfig(fake), "verify_connection", false, "request_timeout", "30s"))
	if logins, _ := upstream(fake); logins != 0 {
		t.Fatalf("login calls = %d after an unverified config write, want 0", logins)
	}
	// Hold the login for a second, so that the reads pile up behind it.
	fake.Inject(biotfake.EndpointLogin, biotfake.Fault{Delay: time.Second, Times: 1})
	c := apiClient(t, v, n, 2*time.Minute)

	var st readStats
	var mu sync.Mutex
	tokens := map[string]int{}
	var wg sync.WaitGroup
	gate := make(chan struct{})
	start := time.Now()
	for range n {
		wg.Go(func() {
			<-gate
			s, d, err := readCreds(c, "biot")
			st.record(err, d)
			if err == nil {
				mu.Lock()
				tokens[s.Data["access_token"].(string)]++
				mu.Unlock()
			}
		})
	}
	close(gate)
	wg.Wait()
	elapsed := time.Since(start)
	st.figure("cold_cache_1000_concurrent", fake, fmt.Sprintf("distinct_tokens=%d max_ms=%d wall_ms=%d",
		len(tokens), st.maxOK.Load()/1e6, elapsed.Milliseconds())).print(t)
	if st.failed.Load() != 0 {
		t.Errorf("%d of %d concurrent reads failed: %v", st.failed.Load(), n, st.errors())
	}
	if logins, refreshes := upstream(fake); logins != 1 || refreshes != 0 {
		t.Errorf("%d concurrent reads on a cold cache made %d logins and %d refreshes, want 1 and 0", n, logins, refreshes)
	}
	if len(tokens) != 1 {
		t.Errorf("the reads got %d distinct tokens, want 1", len(tokens))
	}
	for tok := range tokens {
		if !fake.AccessTokenValid(tok) {
			t.Error("the token handed out is not valid at BioT")
		}
	}
}
